//! OpenAI Responses API wire format (`POST /v1/responses`) <-> canonical types.
//!
//! Shapes follow the official `openai` Python SDK's models (openai-python
//! `src/openai/types/responses/`): `response.py` (the `Response` object),
//! `response_output_message.py`, `response_output_text.py`,
//! `response_function_tool_call.py`, `response_code_interpreter_tool_call.py`,
//! `response_usage.py`, and one module per stream event
//! (`response_created_event.py`, `response_output_item_added_event.py`,
//! `response_content_part_added_event.py`, `response_text_delta_event.py`,
//! `response_code_interpreter_call_*_event.py`, …). The SDK's stream
//! accumulator (`lib/streaming/responses/_responses.py`) requires
//! `response.created` first, `response.output_item.added` before any event for
//! that output index, `response.content_part.added` before text deltas, and
//! every added item to be done before `response.completed`; the encoder below
//! keeps that order.

use crate::canonical::*;
use crate::error::GatewayError;
use serde_json::{Map, Value, json};

fn bad(msg: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest(msg.into())
}

/// Name of the function tool a `code_interpreter` tool becomes.
pub const CODE_TOOL: &str = "code_interpreter";

/// A Responses request decoded for translation, plus what the encoder echoes back.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub request: ChatRequest,
    /// The `code_interpreter` tool's `container`, when the request declares one.
    pub code_interpreter: Option<Value>,
    /// Echoed in the response object (as OpenAI does).
    pub echo: Echo,
}

/// Request fields the `Response` object repeats.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub instructions: Value,
    pub tools: Value,
    pub tool_choice: Value,
    pub temperature: Value,
    pub top_p: Value,
    pub max_output_tokens: Value,
    pub parallel_tool_calls: bool,
    pub metadata: Value,
    pub user: Value,
}

fn text_parts(content: &Value, out: &mut Vec<Part>) -> Result<(), GatewayError> {
    match content {
        Value::String(s) => out.push(Part::Text(s.clone())),
        Value::Array(parts) => {
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            out.push(Part::Text(t.to_owned()));
                        }
                    }
                    Some("refusal") => {
                        if let Some(t) = p.get("refusal").and_then(Value::as_str) {
                            out.push(Part::Text(t.to_owned()));
                        }
                    }
                    Some("input_image") => match p.get("image_url").and_then(Value::as_str) {
                        Some(url) => out.push(Part::Image {
                            url: url.to_owned(),
                        }),
                        None => {
                            return Err(bad(
                                "input_image needs `image_url` here (`file_id` refers to OpenAI's file store, \
                                 which only OpenAI deployments can read)",
                            ));
                        }
                    },
                    Some(t) => {
                        return Err(bad(format!(
                            "input content type `{t}` is only supported for OpenAI deployments"
                        )));
                    }
                    None => return Err(bad("input content part without `type`")),
                }
            }
        }
        Value::Null => {}
        _ => return Err(bad("message `content` must be a string or an array")),
    }
    Ok(())
}

fn push_part(msgs: &mut Vec<Message>, role: Role, part: Part) {
    match msgs.last_mut() {
        Some(m) if m.role == role => m.content.push(part),
        _ => msgs.push(Message {
            role,
            content: vec![part],
        }),
    }
}

/// The text the model sees for an earlier `code_interpreter_call` item's outputs.
pub fn outputs_as_text(outputs: &Value) -> String {
    let mut s = String::new();
    for o in outputs.as_array().into_iter().flatten() {
        match o.get("type").and_then(Value::as_str) {
            Some("logs") => s.push_str(o.get("logs").and_then(Value::as_str).unwrap_or("")),
            Some("image") => s.push_str("\n[image]\n"),
            _ => {}
        }
    }
    s
}

/// Decode a Responses `create` body into a canonical chat request.
pub fn decode_request(v: &Value) -> Result<Decoded, GatewayError> {
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`model` is required"))?
        .to_owned();
    if v.get("previous_response_id").is_some_and(|p| !p.is_null()) {
        return Err(bad(
            "`previous_response_id` needs OpenAI's response store, which only OpenAI deployments have; \
             send the whole conversation in `input` instead",
        ));
    }
    if v.get("conversation").is_some_and(|p| !p.is_null()) {
        return Err(bad(
            "`conversation` needs OpenAI's conversation store, which only OpenAI deployments have",
        ));
    }
    let mut system: Vec<String> = Vec::new();
    if let Some(i) = v.get("instructions").and_then(Value::as_str)
        && !i.is_empty()
    {
        system.push(i.to_owned());
    }
    let mut msgs: Vec<Message> = Vec::new();
    match v.get("input") {
        Some(Value::String(s)) => msgs.push(Message::user(s.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                decode_item(item, &mut msgs, &mut system)?;
            }
        }
        None | Some(Value::Null) => return Err(bad("`input` is required")),
        Some(_) => return Err(bad("`input` must be a string or an array of items")),
    }
    let mut tools = Vec::new();
    let mut code_interpreter = None;
    for t in v
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => tools.push(Tool {
                name: t
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("function tool without `name`"))?
                    .to_owned(),
                description: t
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: t
                    .get("parameters")
                    .cloned()
                    .filter(|p| !p.is_null())
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            }),
            Some("code_interpreter") => {
                code_interpreter = Some(t.get("container").cloned().unwrap_or(Value::Null));
            }
            Some(other) => {
                return Err(bad(format!(
                    "tool type `{other}` is hosted by OpenAI and only works with OpenAI deployments"
                )));
            }
            None => return Err(bad("tool without `type`")),
        }
    }
    let tool_choice = match v.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            o => return Err(bad(format!("unknown tool_choice `{o}`"))),
        },
        Some(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") => Some(ToolChoice::Tool(
                o.get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("tool_choice function without `name`"))?
                    .to_owned(),
            )),
            Some("code_interpreter") => Some(ToolChoice::Tool(CODE_TOOL.to_owned())),
            _ => return Err(bad("unsupported `tool_choice`")),
        },
    };
    let request = ChatRequest {
        model,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages: msgs,
        tools,
        tool_choice,
        max_tokens: v.get("max_output_tokens").and_then(Value::as_u64),
        temperature: v.get("temperature").and_then(Value::as_f64),
        top_p: v.get("top_p").and_then(Value::as_f64),
        stop: Vec::new(),
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        parallel_tool_calls: v.get("parallel_tool_calls").and_then(Value::as_bool),
        user: v.get("user").and_then(Value::as_str).map(str::to_owned),
        reasoning_effort: v
            .pointer("/reasoning/effort")
            .and_then(Value::as_str)
            .map(str::to_owned),
        response_format: v.pointer("/text/format").and_then(text_format_to_chat),
        ..Default::default()
    };
    let g = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    let echo = Echo {
        instructions: g("instructions"),
        tools: v.get("tools").cloned().unwrap_or_else(|| json!([])),
        tool_choice: v
            .get("tool_choice")
            .cloned()
            .filter(|t| !t.is_null())
            .unwrap_or_else(|| "auto".into()),
        temperature: g("temperature"),
        top_p: g("top_p"),
        max_output_tokens: g("max_output_tokens"),
        parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
        metadata: v
            .get("metadata")
            .cloned()
            .filter(|m| m.is_object())
            .unwrap_or_else(|| json!({})),
        user: g("user"),
    };
    Ok(Decoded {
        request,
        code_interpreter,
        echo,
    })
}

fn decode_item(
    item: &Value,
    msgs: &mut Vec<Message>,
    system: &mut Vec<String>,
) -> Result<(), GatewayError> {
    let ty = item.get("type").and_then(Value::as_str);
    match ty {
        // EasyInputMessage has no `type`; input/output messages say "message".
        None | Some("message") => {
            let role = item
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("input message without `role`"))?;
            let mut parts = Vec::new();
            text_parts(item.get("content").unwrap_or(&Value::Null), &mut parts)?;
            match role {
                "system" | "developer" => {
                    let mut s = String::new();
                    for p in parts {
                        if let Part::Text(t) = p {
                            s.push_str(&t);
                        }
                    }
                    system.push(s);
                }
                "user" => parts
                    .into_iter()
                    .for_each(|p| push_part(msgs, Role::User, p)),
                "assistant" => parts
                    .into_iter()
                    .for_each(|p| push_part(msgs, Role::Assistant, p)),
                o => return Err(bad(format!("unknown message role `{o}`"))),
            }
        }
        Some("function_call") => {
            let s = |k: &str| {
                item.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("function_call item without `{k}`")))
            };
            push_part(
                msgs,
                Role::Assistant,
                Part::ToolCall(ToolCall {
                    id: s("call_id")?,
                    name: s("name")?,
                    arguments: s("arguments")?,
                }),
            );
        }
        Some("function_call_output") => {
            let id = item
                .get("call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("function_call_output item without `call_id`"))?;
            let content = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(o @ Value::Array(_)) => {
                    let mut parts = Vec::new();
                    text_parts(o, &mut parts)?;
                    parts
                        .into_iter()
                        .filter_map(|p| match p {
                            Part::Text(t) => Some(t),
                            _ => None,
                        })
                        .collect()
                }
                _ => String::new(),
            };
            push_part(
                msgs,
                Role::User,
                Part::ToolResult {
                    tool_call_id: id.to_owned(),
                    content,
                    is_error: false,
                },
            );
        }
        Some("code_interpreter_call") => {
            // An earlier turn's code run, replayed by the client: the model saw it as
            // a call of the `code_interpreter` function and its result.
            let id = item
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("code_interpreter_call item without `id`"))?;
            let code = item.get("code").and_then(Value::as_str).unwrap_or("");
            push_part(
                msgs,
                Role::Assistant,
                Part::ToolCall(ToolCall {
                    id: id.to_owned(),
                    name: CODE_TOOL.to_owned(),
                    arguments: json!({ "code": code }).to_string(),
                }),
            );
            push_part(
                msgs,
                Role::User,
                Part::ToolResult {
                    tool_call_id: id.to_owned(),
                    content: outputs_as_text(item.get("outputs").unwrap_or(&Value::Null)),
                    is_error: false,
                },
            );
        }
        // Reasoning items are the provider's own; other providers cannot use them.
        Some("reasoning") => {}
        Some(o) => {
            return Err(bad(format!(
                "input item type `{o}` is only supported for OpenAI deployments"
            )));
        }
    }
    Ok(())
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Responses `usage` object.
pub fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// Usage of a Responses object (`usage.input_tokens`, …) as canonical usage.
pub fn decode_usage(u: Option<&Value>) -> Usage {
    let Some(u) = u else {
        return Usage::default();
    };
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("/input_tokens"),
        output_tokens: n("/output_tokens"),
        cache_read_tokens: n("/input_tokens_details/cached_tokens"),
        cache_creation_tokens: 0,
    }
}

pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id, "type": "message", "role": "assistant", "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

pub fn function_call_item(id: &str, c: &ToolCall, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "call_id": c.id, "name": c.name,
           "arguments": c.arguments, "status": status})
}

/// The output items of one model turn (text → a message, tool calls → function calls).
pub fn output_items(r: &ChatResponse, out: &mut Vec<Value>) {
    let text = r.text();
    if !text.is_empty() {
        out.push(message_item(&new_id("msg"), &text, "completed"));
    }
    for c in r.tool_calls() {
        out.push(function_call_item(&new_id("fc"), c, "completed"));
    }
}

/// The `Response` object.
pub struct ResponseObject<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub created_at: i64,
    pub echo: &'a Echo,
    pub output: Vec<Value>,
    pub usage: Option<Usage>,
    /// `None` = completed; else the incomplete reason (`max_output_tokens`).
    pub incomplete: Option<&'static str>,
    pub status: &'a str,
}

impl ResponseObject<'_> {
    pub fn to_json(&self) -> Value {
        let e = self.echo;
        let mut o = Map::new();
        o.insert("id".into(), self.id.into());
        o.insert("object".into(), "response".into());
        o.insert("created_at".into(), self.created_at.into());
        o.insert("status".into(), self.status.into());
        o.insert("background".into(), false.into());
        o.insert("error".into(), Value::Null);
        o.insert(
            "incomplete_details".into(),
            match self.incomplete {
                Some(r) => json!({ "reason": r }),
                None => Value::Null,
            },
        );
        o.insert("instructions".into(), e.instructions.clone());
        o.insert("max_output_tokens".into(), e.max_output_tokens.clone());
        o.insert("model".into(), self.model.into());
        o.insert("output".into(), Value::Array(self.output.clone()));
        o.insert("parallel_tool_calls".into(), e.parallel_tool_calls.into());
        o.insert("previous_response_id".into(), Value::Null);
        o.insert("reasoning".into(), json!({"effort": null, "summary": null}));
        o.insert("store".into(), false.into());
        o.insert("temperature".into(), e.temperature.clone());
        o.insert("text".into(), json!({"format": {"type": "text"}}));
        o.insert("tool_choice".into(), e.tool_choice.clone());
        o.insert("tools".into(), e.tools.clone());
        o.insert("top_p".into(), e.top_p.clone());
        o.insert("truncation".into(), "disabled".into());
        o.insert(
            "usage".into(),
            self.usage.map(usage_json).unwrap_or(Value::Null),
        );
        o.insert("user".into(), e.user.clone());
        o.insert("metadata".into(), e.metadata.clone());
        Value::Object(o)
    }
}

/// A complete (non-streamed) translated answer as a `Response` object.
pub fn encode_response(r: &ChatResponse, model: &str, echo: &Echo) -> Value {
    let mut output = Vec::new();
    output_items(r, &mut output);
    let incomplete = (r.stop_reason == StopReason::MaxTokens).then_some("max_output_tokens");
    ResponseObject {
        id: &new_id("resp"),
        model,
        created_at: chrono::Utc::now().timestamp(),
        echo,
        output,
        usage: Some(r.usage),
        incomplete,
        status: if incomplete.is_some() {
            "incomplete"
        } else {
            "completed"
        },
    }
    .to_json()
}

/// Which item a stream has open.
enum Open {
    Message { id: String, text: String },
    Call { id: String, call: ToolCall },
}

/// Writes Responses stream events: lifecycle (`response.created`,
/// `response.in_progress`, `response.completed`), message and function-call
/// items from canonical model events, and code interpreter call items.
pub struct StreamEncoder {
    pub id: String,
    model: String,
    created_at: i64,
    echo: Echo,
    seq: u64,
    /// Finished output items, in output order.
    pub output: Vec<Value>,
    open: Option<Open>,
    /// Usage summed over every model turn.
    pub usage: Usage,
    incomplete: Option<&'static str>,
    done: bool,
}

impl StreamEncoder {
    pub fn new(model: &str, echo: Echo) -> Self {
        Self {
            id: new_id("resp"),
            model: model.to_owned(),
            created_at: chrono::Utc::now().timestamp(),
            echo,
            seq: 0,
            output: Vec::new(),
            open: None,
            usage: Usage::default(),
            incomplete: None,
            done: false,
        }
    }

    fn event(&mut self, ty: &str, mut data: Value, out: &mut Vec<u8>) {
        data["type"] = ty.into();
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(ty.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // Serializing a Value cannot fail.
        let _ = serde_json::to_writer(&mut *out, &data);
        out.extend_from_slice(b"\n\n");
    }

    fn snapshot(&self, status: &str) -> Value {
        ResponseObject {
            id: &self.id,
            model: &self.model,
            created_at: self.created_at,
            echo: &self.echo,
            output: if status == "in_progress" {
                Vec::new()
            } else {
                self.output.clone()
            },
            usage: (status != "in_progress").then_some(self.usage),
            incomplete: self.incomplete,
            status,
        }
        .to_json()
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        let r = self.snapshot("in_progress");
        self.event("response.created", json!({ "response": r }), out);
        self.event("response.in_progress", json!({ "response": r }), out);
    }

    fn index(&self) -> usize {
        self.output.len()
    }

    fn close_open(&mut self, out: &mut Vec<u8>) {
        let idx = self.index();
        match self.open.take() {
            None => {}
            Some(Open::Message { id, text }) => {
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": idx, "content_index": 0, "text": text, "logprobs": []}),
                    out,
                );
                self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": idx, "content_index": 0, "part": part}),
                    out,
                );
                let item = message_item(&id, &text, "completed");
                self.event(
                    "response.output_item.done",
                    json!({"output_index": idx, "item": item}),
                    out,
                );
                self.output.push(item);
            }
            Some(Open::Call { id, call }) => {
                self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": idx, "arguments": call.arguments, "name": call.name}),
                    out,
                );
                let item = function_call_item(&id, &call, "completed");
                self.event(
                    "response.output_item.done",
                    json!({"output_index": idx, "item": item}),
                    out,
                );
                self.output.push(item);
            }
        }
    }

    /// One canonical model event. `Finish` closes the open item and adds the
    /// turn's usage; the response itself completes with [`StreamEncoder::complete`].
    pub fn push(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        let idx = self.index();
        match ev {
            StreamEvent::Start { .. } | StreamEvent::SignatureDelta(_) => {}
            // Reasoning text of other providers has no faithful Responses item.
            StreamEvent::ThinkingDelta(_) => {}
            StreamEvent::TextDelta(t) => {
                if !matches!(self.open, Some(Open::Message { .. })) {
                    self.close_open(out);
                    let id = new_id("msg");
                    let idx = self.index();
                    let item = json!({"id": id, "type": "message", "role": "assistant",
                                      "status": "in_progress", "content": []});
                    self.event(
                        "response.output_item.added",
                        json!({"output_index": idx, "item": item}),
                        out,
                    );
                    self.event(
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": idx, "content_index": 0,
                               "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
                        out,
                    );
                    self.open = Some(Open::Message {
                        id,
                        text: String::new(),
                    });
                }
                let idx = self.index();
                if let Some(Open::Message { id, text }) = &mut self.open {
                    text.push_str(t);
                    let id = id.clone();
                    self.event(
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": idx, "content_index": 0, "delta": t, "logprobs": []}),
                        out,
                    );
                }
            }
            StreamEvent::ToolCallStart { id, name, .. } => {
                self.close_open(out);
                let item_id = new_id("fc");
                let call = ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments: String::new(),
                };
                let idx = self.index();
                self.event(
                    "response.output_item.added",
                    json!({"output_index": idx, "item": function_call_item(&item_id, &call, "in_progress")}),
                    out,
                );
                self.open = Some(Open::Call { id: item_id, call });
            }
            StreamEvent::ToolCallDelta { arguments, .. } => {
                if let Some(Open::Call { id, call }) = &mut self.open {
                    call.arguments.push_str(arguments);
                    let id = id.clone();
                    self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": idx, "delta": arguments}),
                        out,
                    );
                }
            }
            StreamEvent::Finish { stop_reason, usage } => {
                self.close_open(out);
                self.add_usage(*usage);
                if *stop_reason == StopReason::MaxTokens {
                    self.incomplete = Some("max_output_tokens");
                }
            }
        }
    }

    pub fn add_usage(&mut self, u: Usage) {
        self.usage.input_tokens += u.input_tokens;
        self.usage.output_tokens += u.output_tokens;
        self.usage.cache_read_tokens += u.cache_read_tokens;
        self.usage.cache_creation_tokens += u.cache_creation_tokens;
    }

    /// A whole model turn at once (the interception loop calls models unstreamed).
    pub fn push_turn(&mut self, r: &ChatResponse, out: &mut Vec<u8>) {
        let text = r.text();
        if !text.is_empty() {
            self.push(&StreamEvent::TextDelta(text), out);
        }
        for (i, c) in r.tool_calls().enumerate() {
            self.push(
                &StreamEvent::ToolCallStart {
                    index: i,
                    id: c.id.clone(),
                    name: c.name.clone(),
                },
                out,
            );
            self.push(
                &StreamEvent::ToolCallDelta {
                    index: i,
                    arguments: c.arguments.clone(),
                },
                out,
            );
        }
        self.push(
            &StreamEvent::Finish {
                stop_reason: r.stop_reason,
                usage: r.usage,
            },
            out,
        );
    }

    /// A code interpreter call begins: the item is added, its code streamed,
    /// and it is marked interpreting. Returns its output index.
    pub fn code_call_start(
        &mut self,
        item_id: &str,
        code: &str,
        container_id: &str,
        out: &mut Vec<u8>,
    ) -> usize {
        self.close_open(out);
        let idx = self.index();
        let item = json!({"id": item_id, "type": "code_interpreter_call", "status": "in_progress",
                          "code": "", "container_id": container_id, "outputs": null});
        self.event(
            "response.output_item.added",
            json!({"output_index": idx, "item": item}),
            out,
        );
        self.event(
            "response.code_interpreter_call.in_progress",
            json!({"item_id": item_id, "output_index": idx}),
            out,
        );
        self.event(
            "response.code_interpreter_call_code.delta",
            json!({"item_id": item_id, "output_index": idx, "delta": code}),
            out,
        );
        self.event(
            "response.code_interpreter_call_code.done",
            json!({"item_id": item_id, "output_index": idx, "code": code}),
            out,
        );
        self.event(
            "response.code_interpreter_call.interpreting",
            json!({"item_id": item_id, "output_index": idx}),
            out,
        );
        idx
    }

    /// The code ran: `item` is the finished `code_interpreter_call`.
    pub fn code_call_done(&mut self, item: Value, out: &mut Vec<u8>) {
        let idx = self.index();
        let item_id = item.get("id").cloned().unwrap_or(Value::Null);
        self.event(
            "response.code_interpreter_call.completed",
            json!({"item_id": item_id, "output_index": idx}),
            out,
        );
        self.event(
            "response.output_item.done",
            json!({"output_index": idx, "item": item}),
            out,
        );
        self.output.push(item);
    }

    /// `response.completed` (or `response.incomplete`) with the whole response.
    pub fn complete(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.close_open(out);
        self.done = true;
        let (ty, status) = match self.incomplete {
            Some(_) => ("response.incomplete", "incomplete"),
            None => ("response.completed", "completed"),
        };
        let r = self.snapshot(status);
        self.event(ty, json!({ "response": r }), out);
    }

    /// An `error` event (openai-python `response_error_event.py`: `code`,
    /// `message`, `param`), then `response.failed`.
    pub fn error(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        let body = err.body(crate::error::WireFormat::OpenAi);
        let code = body
            .pointer("/error/code")
            .cloned()
            .filter(|c| !c.is_null())
            .or_else(|| body.pointer("/error/type").cloned())
            .unwrap_or(Value::Null);
        let message = err.to_string();
        self.event(
            "error",
            json!({"code": code, "message": message, "param": null}),
            out,
        );
        let mut r = self.snapshot("failed");
        r["error"] = json!({"code": "server_error", "message": message});
        self.event("response.failed", json!({ "response": r }), out);
    }
}

/// Responses' `text.format` as Chat Completions' `response_format` (the Responses API puts
/// `name`/`schema`/`strict` beside `type`; chat nests them under `json_schema`). `text` (the
/// default) is no format at all.
fn text_format_to_chat(f: &Value) -> Option<Value> {
    match f.get("type").and_then(Value::as_str)? {
        "json_object" => Some(json!({"type": "json_object"})),
        "json_schema" => {
            let mut inner = f.as_object()?.clone();
            inner.remove("type");
            Some(json!({"type": "json_schema", "json_schema": inner}))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_items_and_tools() {
        let v = json!({
            "model": "m", "instructions": "be brief",
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "ok"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
                {"role": "developer", "content": "more rules"}
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}},
                      {"type": "code_interpreter", "container": {"type": "auto"}}],
            "max_output_tokens": 50, "tool_choice": "required"
        });
        let d = decode_request(&v).unwrap();
        let r = &d.request;
        assert_eq!(r.system.as_deref(), Some("be brief\n\nmore rules"));
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.messages[1].role, Role::Assistant);
        assert!(
            matches!(&r.messages[2].content[0], Part::ToolResult { tool_call_id, .. } if tool_call_id == "c1")
        );
        assert_eq!(r.tools.len(), 1);
        assert_eq!(d.code_interpreter, Some(json!({"type": "auto"})));
        assert_eq!(r.max_tokens, Some(50));
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
        let e =
            decode_request(&json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}))
                .unwrap_err();
        assert!(e.to_string().contains("web_search"), "{e}");
        assert!(decode_request(&json!({"model": "m"})).is_err());
        assert!(
            decode_request(&json!({"model": "m", "input": "x", "previous_response_id": "r"}))
                .is_err()
        );
    }

    #[test]
    fn stream_events_are_ordered_for_the_sdk() {
        let mut e = StreamEncoder::new("m", Echo::default());
        let mut out = Vec::new();
        e.start(&mut out);
        e.push(&StreamEvent::TextDelta("a".into()), &mut out);
        e.push(&StreamEvent::TextDelta("b".into()), &mut out);
        e.push(
            &StreamEvent::Finish {
                stop_reason: StopReason::EndTurn,
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 2,
                    ..Default::default()
                },
            },
            &mut out,
        );
        e.complete(&mut out);
        let s = String::from_utf8(out).unwrap();
        let types: Vec<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let last: Value = serde_json::from_str(
            s.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .next_back()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(last["sequence_number"], 9);
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "ab");
        assert_eq!(last["response"]["usage"]["total_tokens"], 5);
    }
}
