//! Gemini `generateContent` wire format <-> canonical types (Google AI Studio
//! and Vertex AI share it: ai.google.dev/api/generate-content,
//! cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.publishers.models/generateContent).

use crate::canonical::*;
use serde_json::{Map, Value, json};

/// JSON-Schema keys Gemini's `Schema` object rejects (LiteLLM strips the same
/// ones before sending tools to Gemini).
const UNSUPPORTED_SCHEMA_KEYS: &[&str] = &["$schema", "additionalProperties", "strict", "$id"];

fn clean_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !UNSUPPORTED_SCHEMA_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), clean_schema(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean_schema).collect()),
        other => other.clone(),
    }
}

fn image_part(url: &str) -> Value {
    match url
        .strip_prefix("data:")
        .and_then(|r| r.split_once(";base64,"))
    {
        Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
        None => {
            let mime = if url.ends_with(".png") {
                "image/png"
            } else {
                "image/jpeg"
            };
            json!({"fileData": {"mimeType": mime, "fileUri": url}})
        }
    }
}

/// Encode a canonical request as a `generateContent` body.
pub fn encode_request(req: &ChatRequest) -> Value {
    // functionResponse needs the function's name; canonical results carry the call id.
    let mut names: std::collections::HashMap<&str, &str> = Default::default();
    for m in &req.messages {
        for p in &m.content {
            if let Part::ToolCall(c) = p {
                names.insert(&c.id, &c.name);
            }
        }
    }
    let mut contents: Vec<Value> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let mut parts = Vec::new();
        for p in &m.content {
            match p {
                Part::Text(t) if !t.is_empty() => parts.push(json!({"text": t})),
                Part::Text(_) => {}
                Part::Image { url } => parts.push(image_part(url)),
                Part::ToolCall(c) => {
                    let args: Value = serde_json::from_str(&c.arguments).unwrap_or(json!({}));
                    parts.push(json!({"functionCall": {"name": c.name, "args": args}}));
                }
                Part::ToolResult {
                    tool_call_id,
                    content,
                    ..
                } => {
                    let name = names
                        .get(tool_call_id.as_str())
                        .copied()
                        .unwrap_or(tool_call_id);
                    parts.push(json!({"functionResponse": {"name": name, "response": {"content": content}}}));
                }
                Part::Thinking { .. } => {}
            }
        }
        if parts.is_empty() {
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "model",
        };
        // Gemini wants alternating turns: merge consecutive same-role messages.
        if let Some(last) = contents.last_mut()
            && last["role"] == role
            && let Some(Value::Array(prev)) = last.get_mut("parts")
        {
            prev.extend(parts);
            continue;
        }
        contents.push(json!({"role": role, "parts": parts}));
    }
    let mut o = Map::new();
    o.insert("contents".into(), contents.into());
    if let Some(s) = &req.system
        && !s.is_empty()
    {
        o.insert("systemInstruction".into(), json!({"parts": [{"text": s}]}));
    }
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "parameters": clean_schema(&t.parameters)});
                if let Some(desc) = &t.description {
                    d["description"] = desc.clone().into();
                }
                d
            })
            .collect();
        o.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(tc) = &req.tool_choice {
        let cfg = match tc {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(n) => json!({"mode": "ANY", "allowedFunctionNames": [n]}),
        };
        o.insert("toolConfig".into(), json!({"functionCallingConfig": cfg}));
    }
    let mut g = Map::new();
    if let Some(m) = req.max_tokens {
        g.insert("maxOutputTokens".into(), m.into());
    }
    if let Some(t) = req.temperature {
        g.insert("temperature".into(), t.into());
    }
    if let Some(t) = req.top_p {
        g.insert("topP".into(), t.into());
    }
    if !req.stop.is_empty() {
        g.insert("stopSequences".into(), req.stop.clone().into());
    }
    // JSON mode is native: a MIME type, and the schema when one is given.
    match req.response_format.as_ref().and_then(ResponseFormat::parse) {
        Some(ResponseFormat::JsonObject) => {
            g.insert("responseMimeType".into(), "application/json".into());
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            g.insert("responseMimeType".into(), "application/json".into());
            g.insert("responseSchema".into(), clean_schema(&schema));
        }
        None => {}
    }
    // OpenAI sampling parameters Gemini has (LiteLLM's VertexGeminiConfig mapping).
    for (openai, gemini) in [
        ("seed", "seed"),
        ("frequency_penalty", "frequencyPenalty"),
        ("presence_penalty", "presencePenalty"),
        ("n", "candidateCount"),
        ("logprobs", "responseLogprobs"),
        ("top_logprobs", "logprobs"),
        ("top_k", "topK"),
    ] {
        if let Some(v) = req.extra.get(openai) {
            g.insert(gemini.into(), v.clone());
        }
    }
    let budget = match (&req.reasoning_effort, &req.thinking) {
        (Some(e), _) => match e.as_str() {
            "none" | "disable" => Some(0),
            "minimal" => Some(128),
            "low" => Some(1024),
            "medium" => Some(2048),
            "high" => Some(4096),
            _ => None,
        },
        (None, Some(t)) => t.get("budget_tokens").and_then(Value::as_u64),
        (None, None) => None,
    };
    if let Some(b) = budget {
        g.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": b, "includeThoughts": b > 0}),
        );
    }
    if !g.is_empty() {
        o.insert("generationConfig".into(), Value::Object(g));
    }
    Value::Object(o)
}

fn stop_reason(s: &str, has_tool_calls: bool) -> StopReason {
    if has_tool_calls {
        return StopReason::ToolUse;
    }
    match s {
        "MAX_TOKENS" => StopReason::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            StopReason::Refusal
        }
        _ => StopReason::EndTurn,
    }
}

pub fn decode_usage(u: Option<&Value>) -> Usage {
    let Some(u) = u else {
        return Usage::default();
    };
    let g = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: g("promptTokenCount"),
        // Thinking tokens are billed as output.
        output_tokens: g("candidatesTokenCount") + g("thoughtsTokenCount"),
        // Gemini counts cached tokens inside promptTokenCount.
        cache_read_tokens: g("cachedContentTokenCount"),
        cache_creation_tokens: 0,
    }
}

/// The parts of one candidate as canonical parts; `calls` numbers tool calls.
fn decode_parts(parts: &[Value], calls: &mut usize, out: &mut Vec<Part>) {
    for p in parts {
        if let Some(fc) = p.get("functionCall") {
            let id = fc
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("call_{}_{}", uuid::Uuid::new_v4().simple(), *calls));
            *calls += 1;
            out.push(Part::ToolCall(ToolCall {
                id,
                name: fc
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments: fc.get("args").map(Value::to_string).unwrap_or("{}".into()),
            }));
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                out.push(Part::Thinking {
                    text: t.to_owned(),
                    signature: String::new(),
                });
            } else {
                out.push(Part::Text(t.to_owned()));
            }
        }
    }
}

/// Decode a (non-streamed) `GenerateContentResponse`.
pub fn decode_response(v: &Value) -> Result<ChatResponse, String> {
    let cand = v.pointer("/candidates/0");
    let Some(cand) = cand else {
        // A blocked prompt has no candidates, only promptFeedback.
        if let Some(r) = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            return Ok(ChatResponse {
                id: String::new(),
                model: String::new(),
                content: vec![Part::Text(String::new())],
                stop_reason: stop_reason(r, false),
                usage: decode_usage(v.get("usageMetadata")),
            });
        }
        return Err("response has no candidates".into());
    };
    let mut content = Vec::new();
    let mut calls = 0;
    if let Some(parts) = cand.pointer("/content/parts").and_then(Value::as_array) {
        decode_parts(parts, &mut calls, &mut content);
    }
    Ok(ChatResponse {
        id: v
            .get("responseId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        model: v
            .get("modelVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        content,
        stop_reason: stop_reason(
            cand.get("finishReason")
                .and_then(Value::as_str)
                .unwrap_or(""),
            calls > 0,
        ),
        usage: decode_usage(v.get("usageMetadata")),
    })
}

/// Turns `streamGenerateContent?alt=sse` chunks (each a whole
/// `GenerateContentResponse` holding the new parts) into canonical events.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    calls: usize,
    usage: Usage,
    finish: Option<String>,
    finished: bool,
}

impl StreamDecoder {
    pub fn push(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        if let Some(e) = v.get("error") {
            return Err(e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream stream error")
                .to_owned());
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = decode_usage(Some(u));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: v
                    .get("responseId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                model: v
                    .get("modelVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                input_tokens: self.usage.input_tokens,
            });
        }
        if let Some(cand) = v.pointer("/candidates/0") {
            let mut parts = Vec::new();
            let first_call = self.calls;
            if let Some(ps) = cand.pointer("/content/parts").and_then(Value::as_array) {
                decode_parts(ps, &mut self.calls, &mut parts);
            }
            let mut idx = first_call;
            for p in parts {
                match p {
                    Part::Text(t) if !t.is_empty() => out.push(StreamEvent::TextDelta(t)),
                    Part::Thinking { text, .. } => out.push(StreamEvent::ThinkingDelta(text)),
                    // Gemini sends each function call whole, in one chunk.
                    Part::ToolCall(c) => {
                        out.push(StreamEvent::ToolCallStart {
                            index: idx,
                            id: c.id,
                            name: c.name,
                        });
                        out.push(StreamEvent::ToolCallDelta {
                            index: idx,
                            arguments: c.arguments,
                        });
                        idx += 1;
                    }
                    _ => {}
                }
            }
            if let Some(f) = cand.get("finishReason").and_then(Value::as_str) {
                self.finish = Some(f.to_owned());
            }
        }
        Ok(())
    }

    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        self.finished = true;
        out.push(StreamEvent::Finish {
            stop_reason: stop_reason(self.finish.as_deref().unwrap_or(""), self.calls > 0),
            usage: self.usage,
        });
    }
}
