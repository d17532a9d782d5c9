//! Canonical request/response/stream types: the one internal shape every wire
//! format converts to and from. Providers only ever see these (or, on the
//! pass-through path, bytes already in their own format).

use serde_json::Value;

/// A chat request independent of any wire format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// Model name as the client asked for it (a `model_name` of the config).
    pub model: String,
    /// System prompt (OpenAI `system`/`developer` messages, Anthropic top-level `system`).
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub parallel_tool_calls: Option<bool>,
    /// End-user id (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// OpenAI `response_format` as sent (`{"type": "json_object"}`, `{"type": "json_schema",
    /// "json_schema": {...}}`); see [`ResponseFormat`].
    pub response_format: Option<Value>,
    /// OpenAI `reasoning_effort` (`minimal`/`low`/`medium`/`high`), or the effort an
    /// Anthropic `thinking` budget maps to.
    pub reasoning_effort: Option<String>,
    /// Anthropic `thinking` config as sent (`{"type": "enabled", "budget_tokens": N}`).
    pub thinking: Option<Value>,
    /// Request parameters with no canonical field (`seed`, `frequency_penalty`, `n`,
    /// `top_k`, …), by their OpenAI name; each provider takes the ones it supports
    /// (`crate::params`), the rest are refused or dropped (`drop_params`).
    pub extra: serde_json::Map<String, Value>,
    /// LiteLLM's per-request `drop_params`.
    pub drop_params: Option<bool>,
    /// LiteLLM's per-request `additional_drop_params`.
    pub additional_drop_params: Vec<String>,
}

/// What `response_format` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON matching `schema`.
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
    },
}

impl ResponseFormat {
    /// Read an OpenAI `response_format` value; `None` for `text` (the default) or unknown types.
    pub fn parse(v: &Value) -> Option<ResponseFormat> {
        match v.get("type").and_then(Value::as_str)? {
            "json_object" => Some(ResponseFormat::JsonObject),
            "json_schema" => {
                let js = v.get("json_schema").unwrap_or(&Value::Null);
                Some(ResponseFormat::JsonSchema {
                    name: js
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("response")
                        .to_owned(),
                    schema: js
                        .get("schema")
                        .cloned()
                        .unwrap_or_else(|| serde_json::json!({"type": "object"})),
                    strict: js.get("strict").and_then(Value::as_bool),
                })
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One conversation turn. Tool results travel in `User` messages (as Anthropic
/// does); the OpenAI format splits them into `role: tool` messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
}

impl Message {
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: vec![Part::Text(text.into())],
        }
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: vec![Part::Text(text.into())],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    /// An image: `url` is either `http(s)://…` or a `data:<mime>;base64,<data>` URL.
    Image {
        url: String,
    },
    ToolCall(ToolCall),
    ToolResult {
        tool_call_id: String,
        content: String,
        is_error: bool,
    },
    /// Anthropic extended thinking; round-tripped to Anthropic, dropped for OpenAI.
    Thinking {
        text: String,
        signature: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Arguments as JSON text (OpenAI's representation; Anthropic's `input` object is serialized).
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// OpenAI `required`, Anthropic `any`.
    Required,
    Tool(String),
}

/// Why generation stopped (Anthropic's vocabulary, which is the richer one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopReason {
    #[default]
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    Refusal,
}

impl StopReason {
    pub fn openai(self) -> &'static str {
        match self {
            StopReason::EndTurn | StopReason::StopSequence => "stop",
            StopReason::MaxTokens => "length",
            StopReason::ToolUse => "tool_calls",
            StopReason::Refusal => "content_filter",
        }
    }
    pub fn anthropic(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::ToolUse => "tool_use",
            StopReason::Refusal => "refusal",
        }
    }
    pub fn from_openai(s: &str) -> Self {
        match s {
            "length" => StopReason::MaxTokens,
            "tool_calls" | "function_call" => StopReason::ToolUse,
            "content_filter" => StopReason::Refusal,
            _ => StopReason::EndTurn,
        }
    }
    pub fn from_anthropic(s: &str) -> Self {
        match s {
            "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
            "stop_sequence" => StopReason::StopSequence,
            "tool_use" => StopReason::ToolUse,
            "refusal" => StopReason::Refusal,
            _ => StopReason::EndTurn,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// All prompt tokens (for Anthropic: input + cache creation + cache read).
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, read from the prompt cache (Anthropic `cache_read_input_tokens`,
    /// OpenAI `prompt_tokens_details.cached_tokens`); priced at the cache-read price.
    pub cache_read_tokens: u64,
    /// Of `input_tokens`, written to the prompt cache (Anthropic `cache_creation_input_tokens`).
    pub cache_creation_tokens: u64,
}

/// A complete (non-streamed) answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    /// Text, tool calls and thinking blocks, in order.
    pub content: Vec<Part>,
    pub stop_reason: StopReason,
    pub usage: Usage,
}

impl ChatResponse {
    /// All text parts joined.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for p in &self.content {
            if let Part::Text(t) = p {
                s.push_str(t);
            }
        }
        s
    }
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.content.iter().filter_map(|p| match p {
            Part::ToolCall(c) => Some(c),
            _ => None,
        })
    }
}

/// One streamed event in canonical form. A stream is `Start`, then deltas,
/// then exactly one `Finish` (or an `Error`).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Start {
        id: String,
        model: String,
        input_tokens: u64,
    },
    TextDelta(String),
    ThinkingDelta(String),
    SignatureDelta(String),
    /// A tool call begins; `index` counts tool calls from 0 in this response.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolCallDelta {
        index: usize,
        arguments: String,
    },
    Finish {
        stop_reason: StopReason,
        usage: Usage,
    },
}

/// Collects a canonical stream into a response (used by the in-process API and tests).
#[derive(Debug, Default)]
pub struct StreamCollector {
    pub response: ChatResponse,
    tool_slots: Vec<usize>,
}

impl StreamCollector {
    pub fn push(&mut self, ev: StreamEvent) {
        let r = &mut self.response;
        match ev {
            StreamEvent::Start {
                id,
                model,
                input_tokens,
            } => {
                r.id = id;
                r.model = model;
                r.usage.input_tokens = input_tokens;
            }
            StreamEvent::TextDelta(t) => match r.content.last_mut() {
                Some(Part::Text(s)) => s.push_str(&t),
                _ => r.content.push(Part::Text(t)),
            },
            StreamEvent::ThinkingDelta(t) => match r.content.last_mut() {
                Some(Part::Thinking { text, .. }) => text.push_str(&t),
                _ => r.content.push(Part::Thinking {
                    text: t,
                    signature: String::new(),
                }),
            },
            StreamEvent::SignatureDelta(sig) => {
                if let Some(Part::Thinking { signature, .. }) = r.content.last_mut() {
                    signature.push_str(&sig);
                }
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                if self.tool_slots.len() <= index {
                    self.tool_slots.resize(index + 1, usize::MAX);
                }
                self.tool_slots[index] = r.content.len();
                r.content.push(Part::ToolCall(ToolCall {
                    id,
                    name,
                    arguments: String::new(),
                }));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(&slot) = self.tool_slots.get(index)
                    && let Some(Part::ToolCall(c)) = r.content.get_mut(slot)
                {
                    c.arguments.push_str(&arguments);
                }
            }
            StreamEvent::Finish { stop_reason, usage } => {
                r.stop_reason = stop_reason;
                if usage.input_tokens > 0 {
                    r.usage.input_tokens = usage.input_tokens;
                }
                r.usage.output_tokens = usage.output_tokens;
                r.usage.cache_read_tokens = usage.cache_read_tokens;
                r.usage.cache_creation_tokens = usage.cache_creation_tokens;
            }
        }
    }
}
