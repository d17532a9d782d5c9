//! OpenAI Chat Completions wire format <-> canonical types.

use crate::canonical::*;
use crate::error::GatewayError;
use serde_json::{Map, Value, json};

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
                    s.push_str(t);
                }
            }
            s
        }
        _ => String::new(),
    }
}

fn content_parts(content: &Value) -> Vec<Part> {
    match content {
        Value::String(s) => vec![Part::Text(s.clone())],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|t| Part::Text(t.to_owned())),
                Some("image_url") => {
                    let url = p.get("image_url").and_then(|u| match u {
                        Value::String(s) => Some(s.clone()),
                        o => o.get("url").and_then(Value::as_str).map(str::to_owned),
                    })?;
                    Some(Part::Image { url })
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Decode an OpenAI request body into a canonical request.
pub fn decode_request(v: &Value) -> Result<ChatRequest, GatewayError> {
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`model` is required"))?
        .to_owned();
    let msgs = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be an array"))?;
    let mut system: Option<String> = None;
    let mut messages: Vec<Message> = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("messages[{i}].role is required")))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                let t = text_of(content);
                match &mut system {
                    Some(s) => {
                        s.push_str("\n\n");
                        s.push_str(&t);
                    }
                    None => system = Some(t),
                }
            }
            "user" => push(&mut messages, Role::User, content_parts(content)),
            "assistant" => {
                let mut parts = Vec::new();
                // LiteLLM's `thinking_blocks` (signed Anthropic thinking) come first, as
                // Anthropic wants them replayed before the text and tool calls.
                if let Some(blocks) = m.get("thinking_blocks").and_then(Value::as_array) {
                    for b in blocks {
                        if b.get("type").and_then(Value::as_str) != Some("thinking") {
                            continue;
                        }
                        let g = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or_default();
                        parts.push(Part::Thinking {
                            text: g("thinking").to_owned(),
                            signature: g("signature").to_owned(),
                        });
                    }
                }
                parts.extend(content_parts(content));
                parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for c in calls {
                        let f = c.get("function").unwrap_or(&Value::Null);
                        parts.push(Part::ToolCall(ToolCall {
                            id: c
                                .get("id")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            name: f
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            arguments: match f.get("arguments") {
                                Some(Value::String(s)) => s.clone(),
                                Some(Value::Null) | None => "{}".to_owned(),
                                Some(o) => o.to_string(),
                            },
                        }));
                    }
                }
                push(&mut messages, Role::Assistant, parts);
            }
            "tool" | "function" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                push(
                    &mut messages,
                    Role::User,
                    vec![Part::ToolResult {
                        tool_call_id: id,
                        content: text_of(content),
                        is_error: false,
                    }],
                );
            }
            other => {
                return Err(bad(format!(
                    "messages[{i}].role `{other}` is not supported"
                )));
            }
        }
    }
    let tools = match v.get("tools").and_then(Value::as_array) {
        Some(ts) => ts
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                Some(Tool {
                    name: f.get("name")?.as_str()?.to_owned(),
                    description: f
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    parameters: f
                        .get("parameters")
                        .cloned()
                        .unwrap_or_else(|| json!({"type":"object","properties":{}})),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    let tool_choice = match v.get("tool_choice") {
        Some(Value::String(s)) => match s.as_str() {
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => Some(ToolChoice::Auto),
        },
        Some(o @ Value::Object(_)) => o
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Tool(n.to_owned())),
        _ => None,
    };
    let stop = match v.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok(ChatRequest {
        model,
        system,
        messages,
        tools,
        tool_choice,
        max_tokens: v
            .get("max_completion_tokens")
            .or_else(|| v.get("max_tokens"))
            .and_then(Value::as_u64),
        temperature: v.get("temperature").and_then(Value::as_f64),
        top_p: v.get("top_p").and_then(Value::as_f64),
        stop,
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        parallel_tool_calls: v.get("parallel_tool_calls").and_then(Value::as_bool),
        user: v.get("user").and_then(Value::as_str).map(str::to_owned),
        response_format: v.get("response_format").filter(|f| !f.is_null()).cloned(),
        reasoning_effort: v
            .get("reasoning_effort")
            .and_then(Value::as_str)
            .map(str::to_owned),
        thinking: v.get("thinking").filter(|t| t.is_object()).cloned(),
        extra: extra_params(v, OPENAI_EXTRA_PARAMS),
        drop_params: v.get("drop_params").and_then(Value::as_bool),
        additional_drop_params: string_list(v.get("additional_drop_params")),
    })
}

/// OpenAI chat parameters with no canonical field: carried in `ChatRequest::extra`
/// so each provider takes, refuses or drops them (LiteLLM's `drop_params`).
pub const OPENAI_EXTRA_PARAMS: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "n",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "store",
    "web_search_options",
    "verbosity",
    "top_k",
];

/// The top-level fields of `v` named in `names` (nulls left out: LiteLLM treats a
/// `null` parameter as not sent).
pub(crate) fn extra_params(v: &Value, names: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(o) = v.as_object() {
        for n in names {
            if let Some(x) = o.get(*n).filter(|x| !x.is_null()) {
                m.insert((*n).to_owned(), x.clone());
            }
        }
    }
    m
}

pub(crate) fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Append parts to the last message if it has the same role, else start a new one.
fn push(messages: &mut Vec<Message>, role: Role, parts: Vec<Part>) {
    match messages.last_mut() {
        Some(last) if last.role == role && role == Role::User && is_tool_results(&parts) => {
            last.content.extend(parts)
        }
        _ => messages.push(Message {
            role,
            content: parts,
        }),
    }
}

fn is_tool_results(parts: &[Part]) -> bool {
    parts.iter().all(|p| matches!(p, Part::ToolResult { .. }))
}

/// Encode a canonical request as an OpenAI request body for `upstream_model`.
pub fn encode_request(req: &ChatRequest, upstream_model: &str, stream: bool) -> Value {
    let mut msgs: Vec<Value> = Vec::with_capacity(req.messages.len() + 1);
    if let Some(s) = &req.system {
        msgs.push(json!({"role": "system", "content": s}));
    }
    for m in &req.messages {
        match m.role {
            Role::User => {
                let mut parts: Vec<Value> = Vec::new();
                for p in &m.content {
                    match p {
                        Part::ToolResult {
                            tool_call_id,
                            content,
                            ..
                        } => msgs.push(
                            json!({"role": "tool", "tool_call_id": tool_call_id, "content": content}),
                        ),
                        Part::Text(t) => parts.push(json!({"type": "text", "text": t})),
                        Part::Image { url } => {
                            parts.push(json!({"type": "image_url", "image_url": {"url": url}}))
                        }
                        _ => {}
                    }
                }
                if parts.len() == 1 && parts[0].get("type") == Some(&json!("text")) {
                    let t = parts[0]["text"].clone();
                    msgs.push(json!({"role": "user", "content": t}));
                } else if !parts.is_empty() {
                    msgs.push(json!({"role": "user", "content": parts}));
                }
            }
            Role::Assistant => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for p in &m.content {
                    match p {
                        Part::Text(t) => text.push_str(t),
                        Part::ToolCall(c) => calls.push(json!({
                            "id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}
                        })),
                        _ => {}
                    }
                }
                let mut o = Map::new();
                o.insert("role".into(), "assistant".into());
                o.insert(
                    "content".into(),
                    if text.is_empty() && !calls.is_empty() {
                        Value::Null
                    } else {
                        text.into()
                    },
                );
                if !calls.is_empty() {
                    o.insert("tool_calls".into(), calls.into());
                }
                msgs.push(Value::Object(o));
            }
        }
    }
    let mut o = Map::new();
    o.insert("model".into(), upstream_model.into());
    o.insert("messages".into(), msgs.into());
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = d.clone().into();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        o.insert("tools".into(), tools.into());
    }
    if let Some(tc) = &req.tool_choice {
        let v = match tc {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(n) => json!({"type": "function", "function": {"name": n}}),
        };
        o.insert("tool_choice".into(), v);
    }
    if let Some(p) = req.parallel_tool_calls {
        o.insert("parallel_tool_calls".into(), p.into());
    }
    if let Some(m) = req.max_tokens {
        // OpenAI's reasoning models reject `max_tokens` (LiteLLM renames it the same way).
        let key = if is_reasoning_model(upstream_model) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        o.insert(key.into(), m.into());
    }
    if let Some(t) = req.temperature {
        o.insert("temperature".into(), t.into());
    }
    if let Some(t) = req.top_p {
        o.insert("top_p".into(), t.into());
    }
    if !req.stop.is_empty() {
        o.insert("stop".into(), req.stop.clone().into());
    }
    if let Some(u) = &req.user {
        o.insert("user".into(), u.clone().into());
    }
    if let Some(f) = &req.response_format {
        o.insert("response_format".into(), f.clone());
    }
    if let Some(e) = req
        .reasoning_effort
        .clone()
        .or_else(|| req.thinking.as_ref().and_then(effort_of_thinking))
    {
        o.insert("reasoning_effort".into(), e.into());
    }
    for (k, v) in &req.extra {
        o.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if stream {
        o.insert("stream".into(), true.into());
        o.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(o)
}

/// An Anthropic `thinking` budget as an OpenAI `reasoning_effort` (LiteLLM's
/// thresholds: up to 1024 tokens is low, up to 2048 medium, above high).
pub fn effort_of_thinking(t: &Value) -> Option<String> {
    if t.get("type").and_then(Value::as_str) != Some("enabled") {
        return None;
    }
    let b = t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0);
    Some(
        match b {
            0..=1024 => "low",
            1025..=2048 => "medium",
            _ => "high",
        }
        .to_owned(),
    )
}

/// o-series and gpt-5 models take `max_completion_tokens` only.
pub fn is_reasoning_model(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    m.starts_with("gpt-5")
        || (m.len() >= 2 && m.as_bytes()[0] == b'o' && m.as_bytes()[1].is_ascii_digit())
}

/// Decode an OpenAI (non-streamed) response.
pub fn decode_response(v: &Value) -> Result<ChatResponse, String> {
    let choice = v
        .pointer("/choices/0")
        .ok_or_else(|| "response has no choices".to_owned())?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(blocks) = msg.get("thinking_blocks").and_then(Value::as_array)
        && !blocks.is_empty()
    {
        for b in blocks {
            let g = |k: &str| b.get(k).and_then(Value::as_str).unwrap_or_default();
            content.push(Part::Thinking {
                text: g("thinking").to_owned(),
                signature: g("signature").to_owned(),
            });
        }
    } else if let Some(r) = msg
        .get("reasoning_content")
        .or_else(|| msg.get("reasoning"))
        .and_then(Value::as_str)
        && !r.is_empty()
    {
        content.push(Part::Thinking {
            text: r.to_owned(),
            signature: String::new(),
        });
    }
    let t = text_of(msg.get("content").unwrap_or(&Value::Null));
    if !t.is_empty() {
        content.push(Part::Text(t));
    }
    if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
        for c in calls {
            content.push(Part::ToolCall(ToolCall {
                id: c
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                name: c
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments: match c.pointer("/function/arguments") {
                    Some(Value::String(s)) => s.clone(),
                    Some(o) => o.to_string(),
                    None => "{}".to_owned(),
                },
            }));
        }
    }
    let stop_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(StopReason::from_openai)
        .unwrap_or_default();
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
        content,
        stop_reason,
        usage: decode_usage(v.get("usage")),
    })
}

pub fn decode_usage(u: Option<&Value>) -> Usage {
    let Some(u) = u else {
        return Usage::default();
    };
    Usage {
        input_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        output_tokens: u
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        cache_read_tokens: u
            .pointer("/prompt_tokens_details/cached_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        // LiteLLM's own field (another LiteLLM, or a gateway like this one, upstream).
        cache_creation_tokens: u
            .get("cache_creation_input_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    }
}

/// OpenAI usage, with cache counts where LiteLLM puts them: OpenAI's
/// `prompt_tokens_details.cached_tokens`, plus Anthropic-style
/// `cache_read_input_tokens` / `cache_creation_input_tokens` (LiteLLM's `Usage`).
pub(crate) fn usage_json(u: Usage) -> Value {
    let mut v = json!({"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
           "total_tokens": u.input_tokens + u.output_tokens,
           "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens}});
    if u.cache_read_tokens > 0 || u.cache_creation_tokens > 0 {
        v["cache_read_input_tokens"] = u.cache_read_tokens.into();
        v["cache_creation_input_tokens"] = u.cache_creation_tokens.into();
    }
    v
}

/// Reasoning as LiteLLM returns it: all thinking text joined in `reasoning_content`,
/// and `thinking_blocks` keeping each block's signature (so the client can send
/// them back to an Anthropic model).
fn reasoning_fields(parts: &[Part], msg: &mut Value) {
    let mut text = String::new();
    let mut blocks = Vec::new();
    for p in parts {
        if let Part::Thinking { text: t, signature } = p {
            text.push_str(t);
            let mut b = json!({"type": "thinking", "thinking": t});
            if !signature.is_empty() {
                b["signature"] = signature.clone().into();
            }
            blocks.push(b);
        }
    }
    if !blocks.is_empty() {
        msg["reasoning_content"] = text.into();
        msg["thinking_blocks"] = blocks.into();
    }
}

fn openai_id(id: &str) -> String {
    if id.starts_with("chatcmpl-") {
        id.to_owned()
    } else {
        format!("chatcmpl-{}", id.trim_start_matches("msg_"))
    }
}

/// Encode a canonical response as an OpenAI `chat.completion` object.
pub fn encode_response(r: &ChatResponse, model: &str) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in &r.content {
        match p {
            Part::Text(t) => text.push_str(t),
            Part::ToolCall(c) => calls.push(json!({
                "id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.arguments}
            })),
            _ => {}
        }
    }
    let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { text.into() }});
    if !calls.is_empty() {
        msg["tool_calls"] = calls.into();
    }
    reasoning_fields(&r.content, &mut msg);
    json!({
        "id": openai_id(&r.id),
        "object": "chat.completion",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{"index": 0, "message": msg, "logprobs": null, "finish_reason": r.stop_reason.openai()}],
        "usage": usage_json(r.usage),
    })
}

/// Turns OpenAI stream chunks into canonical events.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    stop: Option<StopReason>,
    usage: Usage,
    /// OpenAI tool index -> canonical index (they are the same, but we only
    /// announce a tool once).
    tools_seen: Vec<bool>,
    finished: bool,
}

impl StreamDecoder {
    /// Feed one `data:` payload. `[DONE]` finishes the stream.
    pub fn push(&mut self, data: &str, out: &mut Vec<StreamEvent>) -> Result<(), String> {
        if data == "[DONE]" {
            self.finish(out);
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        if let Some(err) = v.get("error") {
            return Err(err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream stream error")
                .to_owned());
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
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
                input_tokens: 0,
            });
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = decode_usage(Some(u));
        }
        if let Some(choice) = v.pointer("/choices/0") {
            if let Some(d) = choice.get("delta") {
                if let Some(t) = d
                    .get("reasoning_content")
                    .or_else(|| d.get("reasoning"))
                    .and_then(Value::as_str)
                    && !t.is_empty()
                {
                    out.push(StreamEvent::ThinkingDelta(t.to_owned()));
                }
                // A LiteLLM upstream streams the thinking signature in `thinking_blocks`.
                if let Some(blocks) = d.get("thinking_blocks").and_then(Value::as_array) {
                    for b in blocks {
                        if let Some(sig) = b.get("signature").and_then(Value::as_str)
                            && !sig.is_empty()
                        {
                            out.push(StreamEvent::SignatureDelta(sig.to_owned()));
                        }
                    }
                }
                if let Some(t) = d.get("content").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    out.push(StreamEvent::TextDelta(t.to_owned()));
                }
                if let Some(calls) = d.get("tool_calls").and_then(Value::as_array) {
                    for c in calls {
                        let index = c.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                        if self.tools_seen.len() <= index {
                            self.tools_seen.resize(index + 1, false);
                        }
                        if !self.tools_seen[index] {
                            self.tools_seen[index] = true;
                            out.push(StreamEvent::ToolCallStart {
                                index,
                                id: c
                                    .get("id")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_owned(),
                                name: c
                                    .pointer("/function/name")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_owned(),
                            });
                        }
                        if let Some(a) = c.pointer("/function/arguments").and_then(Value::as_str)
                            && !a.is_empty()
                        {
                            out.push(StreamEvent::ToolCallDelta {
                                index,
                                arguments: a.to_owned(),
                            });
                        }
                    }
                }
            }
            if let Some(fr) = choice.get("finish_reason").and_then(Value::as_str) {
                self.stop = Some(StopReason::from_openai(fr));
            }
        }
        Ok(())
    }

    /// End of stream (also on EOF without `[DONE]`).
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

/// Turns canonical events into OpenAI `data:` SSE frames.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    /// The answer's cost, set by the gateway before `Finish`: LiteLLM's
    /// `include_cost_in_streaming_usage` puts it in the usage chunk as `cost`, since
    /// a streamed response's headers leave before the cost is known.
    pub cost: Option<f64>,
}

impl StreamEncoder {
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            model: model.to_owned(),
            created: chrono::Utc::now().timestamp(),
            include_usage,
            cost: None,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        frame(&v, out);
    }

    pub fn push(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match ev {
            StreamEvent::Start { .. } => {
                self.chunk(json!({"role": "assistant", "content": ""}), None, out)
            }
            StreamEvent::TextDelta(t) => self.chunk(json!({"content": t}), None, out),
            // As LiteLLM streams them: the text in `reasoning_content`, and the same
            // delta (then the signature) in `thinking_blocks`, matching the unstreamed shape.
            StreamEvent::ThinkingDelta(t) => self.chunk(
                json!({"reasoning_content": t,
                       "thinking_blocks": [{"type": "thinking", "thinking": t}]}),
                None,
                out,
            ),
            StreamEvent::SignatureDelta(sig) => self.chunk(
                json!({"reasoning_content": "",
                       "thinking_blocks": [{"type": "thinking", "thinking": "", "signature": sig}]}),
                None,
                out,
            ),
            StreamEvent::ToolCallStart { index, id, name } => self.chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                        "function": {"name": name, "arguments": ""}}]}),
                None,
                out,
            ),
            StreamEvent::ToolCallDelta { index, arguments } => self.chunk(
                json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}),
                None,
                out,
            ),
            StreamEvent::Finish { stop_reason, usage } => {
                self.chunk(json!({}), Some(stop_reason.openai()), out);
                if self.include_usage {
                    let mut u = usage_json(*usage);
                    if let Some(c) = self.cost {
                        u["cost"] = c.into();
                    }
                    let v = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": u,
                    });
                    frame(&v, out);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
        }
    }

    /// A mid-stream error frame (OpenAI style), followed by `[DONE]`.
    pub fn error(&self, err: &GatewayError, out: &mut Vec<u8>) {
        frame(&err.body(crate::error::WireFormat::OpenAi), out);
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

fn frame(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}
