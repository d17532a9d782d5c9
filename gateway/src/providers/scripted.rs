//! `scripted/<file.json>`: replays a canned sequence of responses so demos and
//! tests run without any API key.
//!
//! File format (a bare list of steps is also accepted):
//!
//! ```json
//! {
//!   "when_exhausted": "repeat_last",
//!   "responses": [
//!     {"tool_calls": [{"id": "call_1", "name": "sandbox_execute",
//!                      "arguments": {"command": "ls"}}]},
//!     {"text": "Done: the directory is empty.",
//!      "usage": {"input_tokens": 120, "output_tokens": 9}},
//!     {"error": {"status": 429, "message": "slow down"}}
//!   ]
//! }
//! ```
//!
//! Each step has optional `text`, `tool_calls` (`id` optional, `arguments` an
//! object or a JSON string), `stop_reason` (`end_turn`, `tool_use`,
//! `max_tokens`, `stop_sequence`; default `tool_use` when there are tool calls,
//! else `end_turn`), `usage` (default: estimated at ~4 characters per token),
//! `delay_ms`, or instead an `error` `{status, message, type?}` that is returned
//! as an upstream error.
//!
//! **Position:** the step played is the number of assistant turns already in the
//! request, so every conversation walks the script from the start and concurrent
//! sessions never disturb each other. Past the end, `when_exhausted` decides:
//! `repeat_last` (default), `cycle`, or `error` (HTTP 400).

use super::{CallOpts, EventStream, Provider};
use crate::canonical::*;
use crate::config::ConfigError;
use crate::error::ProviderError;
use async_trait::async_trait;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum File {
    Full {
        responses: Vec<Step>,
        #[serde(default)]
        when_exhausted: Exhausted,
    },
    List(Vec<Step>),
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Exhausted {
    #[default]
    RepeatLast,
    Cycle,
    Error,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ScriptedCall>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<ScriptedUsage>,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    error: Option<ScriptedError>,
}

#[derive(Debug, Deserialize, Clone)]
struct ScriptedCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

#[derive(Debug, Deserialize, Clone, Copy)]
struct ScriptedUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Debug, Deserialize, Clone)]
struct ScriptedError {
    status: u16,
    message: String,
    #[serde(default, rename = "type")]
    error_type: Option<String>,
}

pub struct Scripted {
    id: String,
    steps: Vec<Step>,
    exhausted: Exhausted,
}

impl Scripted {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    pub fn from_json(text: &str, name: &str) -> Result<Self, ConfigError> {
        let file: File = serde_json::from_str(text).map_err(|e| ConfigError::Invalid {
            path: format!("scripted/{name}"),
            message: e.to_string(),
        })?;
        let (steps, exhausted) = match file {
            File::Full {
                responses,
                when_exhausted,
            } => (responses, when_exhausted),
            File::List(s) => (s, Exhausted::RepeatLast),
        };
        if steps.is_empty() {
            return Err(ConfigError::Invalid {
                path: format!("scripted/{name}"),
                message: "the script has no responses".into(),
            });
        }
        Ok(Self {
            id: format!("scripted:{name}"),
            steps,
            exhausted,
        })
    }

    fn step_for(&self, req: &ChatRequest) -> Result<&Step, ProviderError> {
        let pos = req
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        let n = self.steps.len();
        let i = if pos < n {
            pos
        } else {
            match self.exhausted {
                Exhausted::RepeatLast => n - 1,
                Exhausted::Cycle => pos % n,
                Exhausted::Error => {
                    return Err(ProviderError::Status {
                        status: 400,
                        error_type: "invalid_request_error".into(),
                        message: format!("scripted provider: script exhausted after {n} responses"),
                        retry_after: None,
                    });
                }
            }
        };
        Ok(&self.steps[i])
    }

    fn respond(
        &self,
        req: &ChatRequest,
        pos_id: usize,
    ) -> Result<(ChatResponse, u64), ProviderError> {
        let step = self.step_for(req)?;
        if let Some(e) = &step.error {
            return Err(ProviderError::Status {
                status: e.status,
                error_type: e.error_type.clone().unwrap_or_default(),
                message: e.message.clone(),
                retry_after: None,
            });
        }
        let mut content = Vec::new();
        if let Some(t) = &step.text {
            content.push(Part::Text(t.clone()));
        }
        for (i, c) in step.tool_calls.iter().enumerate() {
            content.push(Part::ToolCall(ToolCall {
                id: c
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("call_scripted_{pos_id}_{i}")),
                name: c.name.clone(),
                arguments: match &c.arguments {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "{}".into(),
                    o => o.to_string(),
                },
            }));
        }
        let stop_reason = match step.stop_reason.as_deref() {
            Some(s) => StopReason::from_anthropic(s),
            None if !step.tool_calls.is_empty() => StopReason::ToolUse,
            None => StopReason::EndTurn,
        };
        let usage = match step.usage {
            Some(u) => Usage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                ..Default::default()
            },
            None => Usage {
                input_tokens: estimate_input(req),
                output_tokens: content
                    .iter()
                    .map(part_len)
                    .sum::<usize>()
                    .div_ceil(4)
                    .max(1) as u64,
                ..Default::default()
            },
        };
        Ok((
            ChatResponse {
                id: format!("scripted-{}", uuid::Uuid::new_v4().simple()),
                model: String::new(),
                content,
                stop_reason,
                usage,
            },
            step.delay_ms,
        ))
    }
}

fn part_len(p: &Part) -> usize {
    match p {
        Part::Text(t) => t.len(),
        Part::ToolCall(c) => c.name.len() + c.arguments.len(),
        Part::ToolResult { content, .. } => content.len(),
        Part::Thinking { text, .. } => text.len(),
        Part::Image { .. } => 1000,
    }
}

fn estimate_input(req: &ChatRequest) -> u64 {
    let chars: usize = req.system.as_ref().map_or(0, |s| s.len())
        + req
            .messages
            .iter()
            .flat_map(|m| m.content.iter())
            .map(part_len)
            .sum::<usize>();
    chars.div_ceil(4).max(1) as u64
}

fn pos_of(req: &ChatRequest) -> usize {
    req.messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count()
}

#[async_trait]
impl Provider for Scripted {
    fn id(&self) -> &str {
        &self.id
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<ChatResponse, ProviderError> {
        let (mut r, delay) = self.respond(req, pos_of(req))?;
        if delay > 0 {
            let d = Duration::from_millis(delay);
            if d > o.timeout {
                tokio::time::sleep(o.timeout).await;
                return Err(ProviderError::Timeout(o.timeout));
            }
            tokio::time::sleep(d).await;
        }
        r.model = o.model.to_owned();
        Ok(r)
    }

    async fn stream(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<EventStream, ProviderError> {
        let r = self.complete(req, o).await?;
        let mut events = vec![StreamEvent::Start {
            id: r.id.clone(),
            model: r.model.clone(),
            input_tokens: r.usage.input_tokens,
        }];
        let mut tool_index = 0;
        for p in &r.content {
            match p {
                Part::Text(t) => {
                    // A few deltas, split on char boundaries, like a real stream.
                    let mut chunk = String::new();
                    for ch in t.chars() {
                        chunk.push(ch);
                        if chunk.len() >= 16 {
                            events.push(StreamEvent::TextDelta(std::mem::take(&mut chunk)));
                        }
                    }
                    if !chunk.is_empty() {
                        events.push(StreamEvent::TextDelta(chunk));
                    }
                }
                Part::ToolCall(c) => {
                    events.push(StreamEvent::ToolCallStart {
                        index: tool_index,
                        id: c.id.clone(),
                        name: c.name.clone(),
                    });
                    let mid = (0..=c.arguments.len() / 2)
                        .rev()
                        .find(|&i| c.arguments.is_char_boundary(i))
                        .unwrap_or(0);
                    for piece in [&c.arguments[..mid], &c.arguments[mid..]] {
                        if !piece.is_empty() {
                            events.push(StreamEvent::ToolCallDelta {
                                index: tool_index,
                                arguments: piece.to_owned(),
                            });
                        }
                    }
                    tool_index += 1;
                }
                _ => {}
            }
        }
        events.push(StreamEvent::Finish {
            stop_reason: r.stop_reason,
            usage: r.usage,
        });
        Ok(Box::pin(futures_util::stream::iter(
            events.into_iter().map(Ok),
        )))
    }
}
