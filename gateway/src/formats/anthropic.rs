//! Anthropic Messages wire format <-> canonical types.

use crate::canonical::*;
use crate::error::GatewayError;
use serde_json::{Map, Value, json};

/// Anthropic requires `max_tokens`; used when an OpenAI client gives none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

fn bad(msg: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest(msg.into())
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    if !s.is_empty() {
                        s.push('\n');
                    }
                    s.push_str(t);
                }
            }
            s
        }
        _ => String::new(),
    }
}

/// Decode an Anthropic Messages request body.
pub fn decode_request(v: &Value) -> Result<ChatRequest, GatewayError> {
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("model: Field required"))?
        .to_owned();
    let msgs = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages: Field required"))?;
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            _ => return Err(bad(format!("messages.{i}.role: must be user or assistant"))),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => vec![Part::Text(s.clone())],
            Some(Value::Array(blocks)) => blocks.iter().filter_map(decode_block).collect(),
            _ => return Err(bad(format!("messages.{i}.content: Field required"))),
        };
        messages.push(Message { role, content });
    }
    let system = match v.get("system") {
        Some(s @ (Value::String(_) | Value::Array(_))) => Some(text_of(s)),
        _ => None,
    };
    let tools = v
        .get("tools")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    Some(Tool {
                        name: t.get("name")?.as_str()?.to_owned(),
                        description: t
                            .get("description")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        parameters: t
                            .get("input_schema")
                            .cloned()
                            .unwrap_or_else(|| json!({"type":"object","properties":{}})),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let (tool_choice, parallel) = match v.get("tool_choice") {
        Some(tc) => {
            let choice = match tc.get("type").and_then(Value::as_str) {
                Some("any") => Some(ToolChoice::Required),
                Some("none") => Some(ToolChoice::None),
                Some("tool") => tc
                    .get("name")
                    .and_then(Value::as_str)
                    .map(|n| ToolChoice::Tool(n.to_owned())),
                _ => Some(ToolChoice::Auto),
            };
            let parallel = tc
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                .map(|d| !d);
            (choice, parallel)
        }
        None => (None, None),
    };
    Ok(ChatRequest {
        model,
        system,
        messages,
        tools,
        tool_choice,
        max_tokens: v.get("max_tokens").and_then(Value::as_u64),
        temperature: v.get("temperature").and_then(Value::as_f64),
        top_p: v.get("top_p").and_then(Value::as_f64),
        stop: v
            .get("stop_sequences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        parallel_tool_calls: parallel,
        user: v
            .pointer("/metadata/user_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        // Anthropic structured outputs (`output_format`) read as OpenAI's `response_format`.
        response_format: v
            .get("output_format")
            .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
            .map(|f| {
                json!({"type": "json_schema", "json_schema": {"name": "output",
                    "schema": f.get("schema").cloned().unwrap_or(json!({"type": "object"}))}})
            }),
        reasoning_effort: None,
        thinking: v.get("thinking").filter(|t| t.is_object()).cloned(),
        extra: crate::formats::openai::extra_params(v, &["top_k"]),
        drop_params: v.get("drop_params").and_then(Value::as_bool),
        additional_drop_params: crate::formats::openai::string_list(
            v.get("additional_drop_params"),
        ),
    })
}

/// LiteLLM's `reasoning_effort` → Anthropic `thinking` budgets.
fn thinking_for_effort(effort: &str) -> Option<Value> {
    let budget = match effort {
        "minimal" => 128,
        "low" => 1024,
        "medium" => 2048,
        "high" => 4096,
        _ => return None,
    };
    Some(json!({"type": "enabled", "budget_tokens": budget}))
}

fn decode_block(b: &Value) -> Option<Part> {
    match b.get("type")?.as_str()? {
        "text" => Some(Part::Text(b.get("text")?.as_str()?.to_owned())),
        "image" => {
            let src = b.get("source")?;
            let url = match src.get("type").and_then(Value::as_str) {
                Some("base64") => format!(
                    "data:{};base64,{}",
                    src.get("media_type")?.as_str()?,
                    src.get("data")?.as_str()?
                ),
                _ => src.get("url")?.as_str()?.to_owned(),
            };
            Some(Part::Image { url })
        }
        "tool_use" => Some(Part::ToolCall(ToolCall {
            id: b.get("id")?.as_str()?.to_owned(),
            name: b.get("name")?.as_str()?.to_owned(),
            arguments: b
                .get("input")
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".to_owned()),
        })),
        "tool_result" => Some(Part::ToolResult {
            tool_call_id: b.get("tool_use_id")?.as_str()?.to_owned(),
            content: text_of(b.get("content").unwrap_or(&Value::Null)),
            is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
        }),
        "thinking" => Some(Part::Thinking {
            text: b
                .get("thinking")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            signature: b
                .get("signature")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }),
        _ => None,
    }
}

/// Anthropic tool ids must match `^[a-zA-Z0-9_-]+$`; OpenAI ids usually do already.
pub fn tool_id(id: &str) -> String {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return id.to_owned();
    }
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        format!("toolu_{}", uuid::Uuid::new_v4().simple())
    } else {
        s
    }
}

/// Tool arguments (JSON text) as an Anthropic `input` object.
fn input_of(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        // Anthropic requires an object; keep what the model produced rather than dropping it.
        Ok(other) => json!({ "value": other }),
        Err(_) => json!({ "arguments": arguments }),
    }
}

/// A content block for a request (replayed history): unsigned thinking cannot be replayed.
fn encode_block(p: &Part) -> Option<Value> {
    encode_block_for(p, false)
}

/// A content block of an answer: thinking is shown even without a signature (an
/// OpenAI-compatible model's `reasoning_content`), as the streamed answer shows it.
fn encode_answer_block(p: &Part) -> Option<Value> {
    encode_block_for(p, true)
}

fn encode_block_for(p: &Part, answer: bool) -> Option<Value> {
    Some(match p {
        Part::Text(t) if t.is_empty() => return None,
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image { url } => match url
            .strip_prefix("data:")
            .and_then(|r| r.split_once(";base64,"))
        {
            Some((mime, data)) => {
                json!({"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}})
            }
            None => json!({"type": "image", "source": {"type": "url", "url": url}}),
        },
        Part::ToolCall(c) => {
            json!({"type": "tool_use", "id": tool_id(&c.id), "name": c.name, "input": input_of(&c.arguments)})
        }
        Part::ToolResult {
            tool_call_id,
            content,
            is_error,
        } => {
            let mut v = json!({"type": "tool_result", "tool_use_id": tool_id(tool_call_id), "content": content});
            if *is_error {
                v["is_error"] = true.into();
            }
            v
        }
        Part::Thinking { text, signature } => {
            if signature.is_empty() && !answer {
                // Thinking without a signature (e.g. OpenAI reasoning) cannot be replayed.
                return None;
            }
            json!({"type": "thinking", "thinking": text, "signature": signature})
        }
    })
}

/// Encode a canonical request as an Anthropic Messages body for `upstream_model`.
pub fn encode_request(req: &ChatRequest, upstream_model: &str, stream: bool) -> Value {
    let mut msgs: Vec<Value> = Vec::with_capacity(req.messages.len());
    let mut last_role: Option<Role> = None;
    for m in &req.messages {
        // Tool results first within a user turn, as Anthropic requires.
        let mut blocks: Vec<Value> = Vec::with_capacity(m.content.len());
        for p in m
            .content
            .iter()
            .filter(|p| matches!(p, Part::ToolResult { .. }))
        {
            blocks.extend(encode_block(p));
        }
        for p in m
            .content
            .iter()
            .filter(|p| !matches!(p, Part::ToolResult { .. }))
        {
            blocks.extend(encode_block(p));
        }
        if blocks.is_empty() {
            continue;
        }
        // Merge consecutive same-role turns (Anthropic wants alternation).
        if last_role == Some(m.role)
            && let Some(Value::Array(prev)) = msgs.last_mut().and_then(|v| v.get_mut("content"))
        {
            prev.extend(blocks);
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        msgs.push(json!({"role": role, "content": blocks}));
        last_role = Some(m.role);
    }
    let mut o = Map::new();
    o.insert("model".into(), upstream_model.into());
    o.insert("messages".into(), msgs.into());
    o.insert(
        "max_tokens".into(),
        req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).into(),
    );
    if let Some(s) = &req.system
        && !s.is_empty()
    {
        o.insert("system".into(), s.clone().into());
    }
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "input_schema": t.parameters});
                if let Some(d) = &t.description {
                    v["description"] = d.clone().into();
                }
                v
            })
            .collect();
        o.insert("tools".into(), tools.into());
    }
    let disable_parallel = req.parallel_tool_calls.map(|p| !p);
    if req.tool_choice.is_some() || disable_parallel.is_some() {
        let mut tc = match req.tool_choice.as_ref().unwrap_or(&ToolChoice::Auto) {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(n) => json!({"type": "tool", "name": n}),
        };
        if let Some(d) = disable_parallel
            && !matches!(req.tool_choice, Some(ToolChoice::None))
            && !req.tools.is_empty()
        {
            tc["disable_parallel_tool_use"] = d.into();
        }
        if !req.tools.is_empty() || matches!(req.tool_choice, Some(ToolChoice::None)) {
            o.insert("tool_choice".into(), tc);
        }
    }
    if let Some(t) = req.temperature {
        // OpenAI allows 0..2, Anthropic 0..1.
        o.insert("temperature".into(), t.min(1.0).into());
    }
    if let Some(t) = req.top_p {
        o.insert("top_p".into(), t.into());
    }
    if !req.stop.is_empty() {
        o.insert("stop_sequences".into(), req.stop.clone().into());
    }
    if let Some(u) = &req.user {
        o.insert("metadata".into(), json!({"user_id": u}));
    }
    if let Some(t) = req.thinking.clone().or_else(|| {
        req.reasoning_effort
            .as_deref()
            .and_then(thinking_for_effort)
    }) {
        // Anthropic wants max_tokens above the thinking budget.
        if let Some(b) = t.get("budget_tokens").and_then(Value::as_u64)
            && o.get("max_tokens").and_then(Value::as_u64).unwrap_or(0) <= b
        {
            o.insert("max_tokens".into(), (b + DEFAULT_MAX_TOKENS).into());
        }
        o.insert("thinking".into(), t);
    }
    if let Some(k) = req.extra.get("top_k") {
        o.insert("top_k".into(), k.clone());
    }
    if stream {
        o.insert("stream".into(), true.into());
    }
    Value::Object(o)
}

/// Anthropic's usage object: `input_tokens` excludes the cache, which is counted apart.
fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens.saturating_sub(u.cache_read_tokens + u.cache_creation_tokens),
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_creation_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
    })
}

pub fn decode_usage(u: Option<&Value>) -> Usage {
    let Some(u) = u else {
        return Usage::default();
    };
    let g = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: g("input_tokens")
            + g("cache_creation_input_tokens")
            + g("cache_read_input_tokens"),
        output_tokens: g("output_tokens"),
        cache_read_tokens: g("cache_read_input_tokens"),
        cache_creation_tokens: g("cache_creation_input_tokens"),
    }
}

/// Decode an Anthropic (non-streamed) response.
pub fn decode_response(v: &Value) -> Result<ChatResponse, String> {
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| "response has no content".to_owned())?;
    Ok(ChatResponse {
        id: v
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        content: blocks.iter().filter_map(decode_block).collect(),
        stop_reason: v
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(StopReason::from_anthropic)
            .unwrap_or_default(),
        usage: decode_usage(v.get("usage")),
    })
}

fn msg_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{}", id.trim_start_matches("chatcmpl-"))
    }
}

/// Encode a canonical response as an Anthropic `message` object.
pub fn encode_response(r: &ChatResponse, model: &str) -> Value {
    let content: Vec<Value> = r.content.iter().filter_map(encode_answer_block).collect();
    json!({
        "id": msg_id(&r.id), "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": r.stop_reason.anthropic(), "stop_sequence": null,
        "usage": usage_json(r.usage),
    })
}

/// Turns Anthropic SSE events into canonical events.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// Anthropic block index -> canonical tool index (for tool_use blocks).
    block_tool: Vec<Option<usize>>,
    tools: usize,
    input_tokens: u64,
    usage: Usage,
    stop: Option<StopReason>,
    finished: bool,
}

impl StreamDecoder {
    /// Feed one event's `data:` payload (the `type` field inside names the event).
    pub fn push(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        match v.get("type").and_then(Value::as_str).unwrap_or_default() {
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                self.usage = decode_usage(m.get("usage"));
                self.input_tokens = self.usage.input_tokens;
                out.push(StreamEvent::Start {
                    id: m
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    model: m
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    input_tokens: self.input_tokens,
                });
            }
            "content_block_start" => {
                let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                if self.block_tool.len() <= idx {
                    self.block_tool.resize(idx + 1, None);
                }
                let b = v.get("content_block").unwrap_or(&Value::Null);
                match b.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let ti = self.tools;
                        self.tools += 1;
                        self.block_tool[idx] = Some(ti);
                        out.push(StreamEvent::ToolCallStart {
                            index: ti,
                            id: b
                                .get("id")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            name: b
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                        });
                    }
                    Some("text") => {
                        if let Some(t) = b.get("text").and_then(Value::as_str)
                            && !t.is_empty()
                        {
                            out.push(StreamEvent::TextDelta(t.to_owned()));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let idx = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                let d = v.get("delta").unwrap_or(&Value::Null);
                let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or_default();
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => out.push(StreamEvent::TextDelta(s("text").to_owned())),
                    Some("input_json_delta") => {
                        if let Some(Some(ti)) = self.block_tool.get(idx) {
                            let a = s("partial_json");
                            if !a.is_empty() {
                                out.push(StreamEvent::ToolCallDelta {
                                    index: *ti,
                                    arguments: a.to_owned(),
                                });
                            }
                        }
                    }
                    Some("thinking_delta") => {
                        out.push(StreamEvent::ThinkingDelta(s("thinking").to_owned()))
                    }
                    Some("signature_delta") => {
                        out.push(StreamEvent::SignatureDelta(s("signature").to_owned()))
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(sr) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = Some(StopReason::from_anthropic(sr));
                }
                if let Some(u) = v.get("usage") {
                    let nu = decode_usage(Some(u));
                    self.usage.output_tokens = nu.output_tokens;
                    // Newer API versions repeat the (cumulative) input and cache counts here.
                    if nu.input_tokens > 0 {
                        self.usage.input_tokens = nu.input_tokens;
                        self.usage.cache_read_tokens = nu.cache_read_tokens;
                        self.usage.cache_creation_tokens = nu.cache_creation_tokens;
                    }
                }
            }
            "message_stop" => self.finish(out),
            "error" => {
                return Err(v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream stream error")
                    .to_owned());
            }
            _ => {} // ping, content_block_stop
        }
        Ok(())
    }

    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        self.finished = true;
        out.push(StreamEvent::Finish {
            stop_reason: self.stop.unwrap_or_default(),
            usage: self.usage,
        });
    }
}

#[derive(Debug, PartialEq)]
enum Open {
    None,
    Text,
    Thinking,
    Tool,
}

/// Turns canonical events into Anthropic named SSE events:
/// `message_start`, `ping`, (`content_block_start`, `content_block_delta`*, `content_block_stop`)*,
/// `message_delta`, `message_stop`.
#[derive(Debug)]
pub struct StreamEncoder {
    model: String,
    next_block: usize,
    open: Open,
    /// canonical tool index -> block index
    tool_blocks: Vec<usize>,
    /// The answer's cost, set by the gateway before `Finish`: LiteLLM's
    /// `include_cost_in_streaming_usage` puts it in `message_delta`'s usage.
    pub cost: Option<f64>,
}

impl StreamEncoder {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            next_block: 0,
            open: Open::None,
            tool_blocks: Vec::new(),
            cost: None,
        }
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open != Open::None {
            event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.next_block - 1}),
                out,
            );
            self.open = Open::None;
        }
    }

    fn open_block(&mut self, kind: Open, block: Value, out: &mut Vec<u8>) -> usize {
        self.close(out);
        let idx = self.next_block;
        self.next_block += 1;
        self.open = kind;
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": idx, "content_block": block}),
            out,
        );
        idx
    }

    pub fn push(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match ev {
            StreamEvent::Start {
                id, input_tokens, ..
            } => {
                let msg = json!({
                    "id": msg_id(id), "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 0},
                });
                event(
                    "message_start",
                    &json!({"type": "message_start", "message": msg}),
                    out,
                );
                event("ping", &json!({"type": "ping"}), out);
            }
            StreamEvent::TextDelta(t) => {
                if self.open != Open::Text {
                    self.open_block(Open::Text, json!({"type": "text", "text": ""}), out);
                }
                event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": self.next_block - 1,
                            "delta": {"type": "text_delta", "text": t}}),
                    out,
                );
            }
            StreamEvent::ThinkingDelta(t) => {
                if self.open != Open::Thinking {
                    self.open_block(
                        Open::Thinking,
                        json!({"type": "thinking", "thinking": ""}),
                        out,
                    );
                }
                event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": self.next_block - 1,
                            "delta": {"type": "thinking_delta", "thinking": t}}),
                    out,
                );
            }
            StreamEvent::SignatureDelta(s) => {
                if self.open == Open::Thinking {
                    event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": self.next_block - 1,
                                "delta": {"type": "signature_delta", "signature": s}}),
                        out,
                    );
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                let b = self.open_block(
                    Open::Tool,
                    json!({"type": "tool_use", "id": tool_id(id), "name": name, "input": {}}),
                    out,
                );
                if self.tool_blocks.len() <= *index {
                    self.tool_blocks.resize(index + 1, usize::MAX);
                }
                self.tool_blocks[*index] = b;
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(&b) = self.tool_blocks.get(*index)
                    && b != usize::MAX
                {
                    event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": b,
                                "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                        out,
                    );
                }
            }
            StreamEvent::Finish { stop_reason, usage } => {
                self.close(out);
                let mut u = usage_json(*usage);
                if let Some(c) = self.cost {
                    u["cost"] = c.into();
                }
                event(
                    "message_delta",
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": stop_reason.anthropic(), "stop_sequence": null},
                            "usage": u}),
                    out,
                );
                event("message_stop", &json!({"type": "message_stop"}), out);
            }
        }
    }

    /// A block sent whole between model events (a server tool's call, with its
    /// input as one `input_json_delta`, or its result, complete in
    /// `content_block_start`), after closing the block that is open.
    pub fn push_block(&mut self, block: Value, delta: Option<Value>, out: &mut Vec<u8>) {
        let idx = self.open_block(Open::Tool, block, out);
        if let Some(d) = delta {
            event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": idx, "delta": d}),
                out,
            );
        }
        self.close(out);
    }

    /// The message's end with `extra` merged into `message_delta`'s `delta`
    /// (Anthropic sends a code execution container there: SDK
    /// `beta_raw_message_delta_event.py`, `Delta.container`).
    pub fn finish_with(
        &mut self,
        stop_reason: StopReason,
        usage: Usage,
        extra: Value,
        out: &mut Vec<u8>,
    ) {
        self.close(out);
        let mut delta = json!({"stop_reason": stop_reason.anthropic(), "stop_sequence": null});
        if let (Some(d), Value::Object(x)) = (delta.as_object_mut(), extra) {
            d.extend(x);
        }
        let mut u = usage_json(usage);
        if let Some(c) = self.cost {
            u["cost"] = c.into();
        }
        event(
            "message_delta",
            &json!({"type": "message_delta", "delta": delta, "usage": u}),
            out,
        );
        event("message_stop", &json!({"type": "message_stop"}), out);
    }

    /// A mid-stream `error` event.
    pub fn error(&self, err: &GatewayError, out: &mut Vec<u8>) {
        event("error", &err.body(crate::error::WireFormat::Anthropic), out);
    }
}

fn event(name: &str, data: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}
