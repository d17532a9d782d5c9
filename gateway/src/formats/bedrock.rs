//! AWS Bedrock Converse wire format <-> canonical types
//! (docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html,
//! API_runtime_ConverseStream.html), and the `application/vnd.amazon.eventstream`
//! framing ConverseStream answers in (docs.aws.amazon.com/transcribe/latest/dg/event-stream.html:
//! total length u32, headers length u32, prelude CRC32, headers, payload, message CRC32).

use crate::canonical::*;
use base64::Engine;
use serde_json::{Map, Value, json};

fn image_block(url: &str) -> Option<Value> {
    let (mime, data) = url.strip_prefix("data:")?.split_once(";base64,")?;
    let format = mime.strip_prefix("image/")?;
    Some(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

/// Encode a canonical request as a Converse body (the model id goes in the URL).
pub fn encode_request(req: &ChatRequest) -> Value {
    let mut msgs: Vec<Value> = Vec::new();
    for m in &req.messages {
        let mut blocks = Vec::new();
        for p in &m.content {
            match p {
                Part::Text(t) if !t.is_empty() => blocks.push(json!({"text": t})),
                Part::Text(_) => {}
                Part::Image { url } => blocks.extend(image_block(url)),
                Part::ToolCall(c) => {
                    let input: Value = serde_json::from_str(&c.arguments).unwrap_or(json!({}));
                    blocks.push(json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": input}}));
                }
                Part::ToolResult {
                    tool_call_id,
                    content,
                    is_error,
                } => {
                    let mut r = json!({"toolUseId": tool_call_id, "content": [{"text": content}]});
                    if *is_error {
                        r["status"] = "error".into();
                    }
                    blocks.push(json!({"toolResult": r}));
                }
                Part::Thinking { text, signature } if !signature.is_empty() => blocks.push(
                    json!({"reasoningContent": {"reasoningText": {"text": text, "signature": signature}}}),
                ),
                Part::Thinking { .. } => {}
            }
        }
        if blocks.is_empty() {
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        if let Some(last) = msgs.last_mut()
            && last["role"] == role
            && let Some(Value::Array(prev)) = last.get_mut("content")
        {
            prev.extend(blocks);
            continue;
        }
        msgs.push(json!({"role": role, "content": blocks}));
    }
    let mut o = Map::new();
    o.insert("messages".into(), msgs.into());
    if let Some(s) = &req.system
        && !s.is_empty()
    {
        o.insert("system".into(), json!([{"text": s}]));
    }
    let mut inf = Map::new();
    if let Some(m) = req.max_tokens {
        inf.insert("maxTokens".into(), m.into());
    }
    if let Some(t) = req.temperature {
        inf.insert("temperature".into(), t.into());
    }
    if let Some(t) = req.top_p {
        inf.insert("topP".into(), t.into());
    }
    if !req.stop.is_empty() {
        inf.insert("stopSequences".into(), req.stop.clone().into());
    }
    if !inf.is_empty() {
        o.insert("inferenceConfig".into(), Value::Object(inf));
    }
    // Model-specific fields go in additionalModelRequestFields (Claude's `thinking`,
    // `top_k`), as LiteLLM's Converse transformation sends them.
    let mut add = Map::new();
    if let Some(t) = req.thinking.clone().or_else(|| {
        let budget = match req.reasoning_effort.as_deref()? {
            "minimal" => 128,
            "low" => 1024,
            "medium" => 2048,
            "high" => 4096,
            _ => return None,
        };
        Some(json!({"type": "enabled", "budget_tokens": budget}))
    }) {
        add.insert("thinking".into(), t);
    }
    if let Some(k) = req.extra.get("top_k") {
        add.insert("top_k".into(), k.clone());
    }
    if !add.is_empty() {
        o.insert("additionalModelRequestFields".into(), Value::Object(add));
    }
    // Converse has no "none" tool choice: leaving the tools out is the equivalent.
    if !req.tools.is_empty() && req.tool_choice != Some(ToolChoice::None) {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut spec = json!({"name": t.name, "inputSchema": {"json": t.parameters}});
                if let Some(d) = &t.description {
                    spec["description"] = d.clone().into();
                }
                json!({"toolSpec": spec})
            })
            .collect();
        let mut tc = json!({"tools": tools});
        match &req.tool_choice {
            Some(ToolChoice::Required) => tc["toolChoice"] = json!({"any": {}}),
            Some(ToolChoice::Tool(n)) => tc["toolChoice"] = json!({"tool": {"name": n}}),
            Some(ToolChoice::Auto) => tc["toolChoice"] = json!({"auto": {}}),
            _ => {}
        }
        o.insert("toolConfig".into(), tc);
    }
    Value::Object(o)
}

pub fn stop_reason(s: &str) -> StopReason {
    match s {
        "tool_use" => StopReason::ToolUse,
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "guardrail_intervened" | "content_filtered" => StopReason::Refusal,
        _ => StopReason::EndTurn,
    }
}

pub fn decode_usage(u: Option<&Value>) -> Usage {
    let Some(u) = u else {
        return Usage::default();
    };
    let g = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: g("inputTokens") + g("cacheReadInputTokens") + g("cacheWriteInputTokens"),
        output_tokens: g("outputTokens"),
        cache_read_tokens: g("cacheReadInputTokens"),
        cache_creation_tokens: g("cacheWriteInputTokens"),
    }
}

/// Decode a Converse response.
pub fn decode_response(v: &Value, model: &str) -> Result<ChatResponse, String> {
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or("response has no output.message.content")?;
    let mut content = Vec::new();
    for b in blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            content.push(Part::Text(t.to_owned()));
        } else if let Some(t) = b.get("toolUse") {
            content.push(Part::ToolCall(ToolCall {
                id: t
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                name: t
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments: t.get("input").map(Value::to_string).unwrap_or("{}".into()),
            }));
        } else if let Some(r) = b.pointer("/reasoningContent/reasoningText") {
            content.push(Part::Thinking {
                text: r
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                signature: r
                    .get("signature")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    Ok(ChatResponse {
        id: format!("bedrock-{}", uuid::Uuid::new_v4().simple()),
        model: model.to_owned(),
        content,
        stop_reason: stop_reason(v.get("stopReason").and_then(Value::as_str).unwrap_or("")),
        usage: decode_usage(v.get("usage")),
    })
}

/// CRC-32 (IEEE), as the event-stream framing uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One event-stream message: its string headers and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Encode (string headers only, type 7).
    pub fn encode(&self) -> Vec<u8> {
        let mut h = Vec::new();
        for (k, v) in &self.headers {
            h.push(k.len() as u8);
            h.extend_from_slice(k.as_bytes());
            h.push(7);
            h.extend_from_slice(&(v.len() as u16).to_be_bytes());
            h.extend_from_slice(v.as_bytes());
        }
        let total = 12 + h.len() + self.payload.len() + 4;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let pc = crc32(&out);
        out.extend_from_slice(&pc.to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&self.payload);
        let mc = crc32(&out);
        out.extend_from_slice(&mc.to_be_bytes());
        out
    }
}

/// Take one complete frame off the front of `buf`; `Ok(None)` when more bytes are needed.
pub fn decode_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, String> {
    if buf.len() < 12 {
        return Ok(None);
    }
    let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let hlen = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if total < 16 + hlen || total > 16 * 1024 * 1024 {
        return Err(format!("event-stream: bad lengths {total}/{hlen}"));
    }
    if crc32(&buf[..8]) != u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) {
        return Err("event-stream: prelude CRC mismatch".into());
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mc = u32::from_be_bytes([
        buf[total - 4],
        buf[total - 3],
        buf[total - 2],
        buf[total - 1],
    ]);
    if crc32(&buf[..total - 4]) != mc {
        return Err("event-stream: message CRC mismatch".into());
    }
    let mut headers = Vec::new();
    let h = &buf[12..12 + hlen];
    let mut i = 0;
    while i < h.len() {
        let n = h[i] as usize;
        let name = String::from_utf8_lossy(h.get(i + 1..i + 1 + n).ok_or("event-stream: header")?)
            .into_owned();
        i += 1 + n;
        let ty = *h.get(i).ok_or("event-stream: header type")?;
        i += 1;
        let value = match ty {
            0 | 1 => String::from(if ty == 0 { "true" } else { "false" }),
            2 => {
                i += 1;
                String::new()
            }
            3 => {
                i += 2;
                String::new()
            }
            4 => {
                i += 4;
                String::new()
            }
            5 | 8 => {
                i += 8;
                String::new()
            }
            6 | 7 => {
                let l = u16::from_be_bytes([
                    *h.get(i).ok_or("event-stream: header")?,
                    *h.get(i + 1).ok_or("event-stream: header")?,
                ]) as usize;
                let v = h
                    .get(i + 2..i + 2 + l)
                    .ok_or("event-stream: header value")?;
                i += 2 + l;
                if ty == 7 {
                    String::from_utf8_lossy(v).into_owned()
                } else {
                    base64::engine::general_purpose::STANDARD.encode(v)
                }
            }
            9 => {
                i += 16;
                String::new()
            }
            t => return Err(format!("event-stream: unknown header type {t}")),
        };
        headers.push((name, value));
    }
    let payload = buf[12 + hlen..total - 4].to_vec();
    buf.drain(..total);
    Ok(Some(Frame { headers, payload }))
}

/// ConverseStream events -> canonical events.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    model: String,
    started: bool,
    /// Converse content block index -> canonical tool index.
    block_tool: std::collections::HashMap<u64, usize>,
    tools: usize,
    stop: Option<StopReason>,
    usage: Usage,
    finished: bool,
}

impl StreamDecoder {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            ..Default::default()
        }
    }

    pub fn push(&mut self, f: &Frame, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let v: Value = serde_json::from_slice(&f.payload).unwrap_or(Value::Null);
        if f.header(":message-type") == Some("exception") {
            let ty = f.header(":exception-type").unwrap_or("exception");
            let msg = v.get("message").and_then(Value::as_str).unwrap_or("");
            return Err(format!("{ty}: {msg}"));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: format!("bedrock-{}", uuid::Uuid::new_v4().simple()),
                model: self.model.clone(),
                input_tokens: 0,
            });
        }
        let idx = v
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match f.header(":event-type").unwrap_or("") {
            "contentBlockStart" => {
                if let Some(t) = v.pointer("/start/toolUse") {
                    let ti = self.tools;
                    self.tools += 1;
                    self.block_tool.insert(idx, ti);
                    out.push(StreamEvent::ToolCallStart {
                        index: ti,
                        id: t
                            .get("toolUseId")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        name: t
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    });
                }
            }
            "contentBlockDelta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    out.push(StreamEvent::TextDelta(t.to_owned()));
                } else if let Some(a) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    if let Some(&ti) = self.block_tool.get(&idx) {
                        out.push(StreamEvent::ToolCallDelta {
                            index: ti,
                            arguments: a.to_owned(),
                        });
                    }
                } else if let Some(r) = d.get("reasoningContent") {
                    if let Some(t) = r.get("text").and_then(Value::as_str) {
                        out.push(StreamEvent::ThinkingDelta(t.to_owned()));
                    }
                    if let Some(s) = r.get("signature").and_then(Value::as_str) {
                        out.push(StreamEvent::SignatureDelta(s.to_owned()));
                    }
                }
            }
            "messageStop" => {
                self.stop = Some(stop_reason(
                    v.get("stopReason").and_then(Value::as_str).unwrap_or(""),
                ));
            }
            "metadata" => {
                self.usage = decode_usage(v.get("usage"));
                self.finish(out);
            }
            _ => {} // messageStart, contentBlockStop
        }
        Ok(())
    }

    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished || !self.started {
            return;
        }
        self.finished = true;
        out.push(StreamEvent::Finish {
            stop_reason: self.stop.unwrap_or_default(),
            usage: self.usage,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The standard CRC-32/ISO-HDLC check value.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn frames_round_trip_across_chunk_boundaries() {
        let f = Frame {
            headers: vec![
                (":event-type".into(), "contentBlockDelta".into()),
                (":message-type".into(), "event".into()),
            ],
            payload: br#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#.to_vec(),
        };
        let bytes = f.encode();
        let mut buf = bytes[..10].to_vec();
        assert_eq!(decode_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(&bytes[10..]);
        assert_eq!(decode_frame(&mut buf).unwrap(), Some(f));
        assert!(buf.is_empty());
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        assert!(decode_frame(&mut bad).is_err());
    }
}
