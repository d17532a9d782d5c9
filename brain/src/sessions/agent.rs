//! The agent loop of one session, driven from (and into) its event log.
//!
//! Order of writes, each committed before the action it describes:
//! `model_request` → call → `model_response`; `tool_started` → run → `tool_result`.
//! On resume the conversation is rebuilt from the events alone: a tool call with a
//! `tool_started` but no `tool_result` is never re-run — the model is told it was interrupted
//! and may or may not have taken effect; tool calls never started are run; a model request
//! without a response is simply asked again (model calls have no side effects).

use std::time::Duration;

use gateway::canonical::{ChatRequest, Message, Part, Role, ToolCall};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::store::{EventRow, Patch, SessionRow, SessionStatus};
use super::tools::{self, ToolOutput};
use crate::state::AppState;
use crate::store::{StoreError, now_ms};

pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a background coding agent working on a ticket. \
You cannot run anything yourself: create a sandbox with sandbox_provision, run shell commands in \
it with sandbox_execute, and read or write files with read_file and write_file. Credentials in \
the sandbox are stubs that the egress proxy swaps for real ones only toward the hosts they are \
bound to. When the task is done, answer with a short summary of what you did and found.";

const INTERRUPTED: &str = "interrupted: the brain stopped while this tool call was running; \
it may or may not have taken effect. Check the state before repeating it.";

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another process holds the session now (our lease expired): stop without writing.
    #[error("claim lost")]
    ClaimLost,
}

#[derive(Debug, Clone)]
struct PendingCall {
    call: ToolCall,
    started: bool,
    done: bool,
}

/// The model's view of a session, rebuilt from events.
#[derive(Debug, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub steps: u32,
    pub last_sandbox: Option<String>,
    /// Tool calls of the latest model response.
    calls: Vec<PendingCall>,
}

impl Conversation {
    pub fn replay(events: &[EventRow]) -> Self {
        let mut conv = Conversation::default();
        for event in events {
            conv.apply(event);
        }
        conv
    }

    fn apply(&mut self, event: &EventRow) {
        let d = &event.data;
        match event.kind.as_str() {
            "user_message" => {
                let text = d.get("text").and_then(Value::as_str).unwrap_or_default();
                self.messages.push(Message::user(text));
            }
            "model_response" => {
                self.steps += 1;
                let mut content = Vec::new();
                if let Some(text) = d.get("text").and_then(Value::as_str)
                    && !text.is_empty()
                {
                    content.push(Part::Text(text.to_owned()));
                }
                self.calls.clear();
                for c in d
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let call = ToolCall {
                        id: str_field(c, "id"),
                        name: str_field(c, "name"),
                        arguments: str_field(c, "arguments"),
                    };
                    content.push(Part::ToolCall(call.clone()));
                    self.calls.push(PendingCall {
                        call,
                        started: false,
                        done: false,
                    });
                }
                self.messages.push(Message {
                    role: Role::Assistant,
                    content,
                });
            }
            "tool_started" => {
                let id = str_field(d, "call_id");
                if let Some(p) = self.calls.iter_mut().find(|p| p.call.id == id) {
                    p.started = true;
                }
            }
            "tool_result" => {
                let id = str_field(d, "call_id");
                if let Some(p) = self.calls.iter_mut().find(|p| p.call.id == id) {
                    p.started = true;
                    p.done = true;
                }
                if let Some(sb) = d.get("sandbox_id").and_then(Value::as_str) {
                    self.last_sandbox = Some(sb.to_owned());
                }
                let part = Part::ToolResult {
                    tool_call_id: id,
                    content: str_field(d, "content"),
                    is_error: d.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                };
                match self.messages.last_mut() {
                    Some(m)
                        if m.role == Role::User
                            && m.content
                                .iter()
                                .all(|p| matches!(p, Part::ToolResult { .. })) =>
                    {
                        m.content.push(part)
                    }
                    _ => self.messages.push(Message {
                        role: Role::User,
                        content: vec![part],
                    }),
                }
            }
            _ => {}
        }
    }

    /// The latest assistant turn asked for no tools: that is the answer.
    pub fn answered(&self) -> Option<String> {
        let last = self.messages.last()?;
        if last.role != Role::Assistant
            || last.content.iter().any(|p| matches!(p, Part::ToolCall(_)))
        {
            return None;
        }
        Some(
            last.content
                .iter()
                .filter_map(|p| match p {
                    Part::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(""),
        )
    }

    fn interrupted(&self) -> Vec<ToolCall> {
        self.calls
            .iter()
            .filter(|p| p.started && !p.done)
            .map(|p| p.call.clone())
            .collect()
    }

    fn next_unstarted(&self) -> Option<ToolCall> {
        self.calls
            .iter()
            .find(|p| !p.started)
            .map(|p| p.call.clone())
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// One claimed session being driven by this process.
pub struct Driver<'a> {
    pub state: &'a AppState,
    pub id: &'a str,
    pub owner: &'a str,
    pub cancel: &'a CancellationToken,
}

impl Driver<'_> {
    async fn append(
        &self,
        kind: &str,
        data: Value,
        patch: Patch<'_>,
    ) -> Result<EventRow, LoopError> {
        match self
            .state
            .store
            .append_event(self.id, Some(self.owner), kind, &data, &patch)
            .await?
        {
            Some(event) => {
                self.state.sessions.published(self.id, event.seq);
                Ok(event)
            }
            None => Err(LoopError::ClaimLost),
        }
    }

    async fn row(&self) -> Result<SessionRow, LoopError> {
        match self.state.store.get_session(self.id).await? {
            Some(row) if row.claim_owner.as_deref() == Some(self.owner) => Ok(row),
            _ => Err(LoopError::ClaimLost),
        }
    }

    /// Ends the run. `Ok(false)`: a follow-up arrived meanwhile (only when succeeding), so
    /// the loop goes on.
    async fn finish(
        &self,
        status: SessionStatus,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, LoopError> {
        let data = json!({ "status": status, "result": result, "error": error });
        let patch = Patch {
            status: Some(status),
            result,
            error,
            release_claim: true,
            require_no_pending: status == SessionStatus::Succeeded,
            ..Patch::default()
        };
        match self
            .state
            .store
            .append_event(self.id, Some(self.owner), "status", &data, &patch)
            .await?
        {
            Some(event) => {
                self.state.sessions.published(self.id, event.seq);
                tracing::info!(session = %self.id, %status, error = error.unwrap_or(""), "session finished");
                Ok(true)
            }
            None if status == SessionStatus::Succeeded => {
                // Either a follow-up is pending (go on) or the claim is gone.
                self.row().await?;
                Ok(false)
            }
            None => Err(LoopError::ClaimLost),
        }
    }

    pub async fn run(&self) -> Result<(), LoopError> {
        let row = self.row().await?;
        let events = self
            .state
            .store
            .session_events(self.id, 0, i64::MAX)
            .await?;
        let mut conv = Conversation::replay(&events);
        let config = &self.state.config.sessions;
        if events.is_empty() {
            self.append(
                "session_started",
                json!({
                    "task": row.task, "model": row.model, "agent": row.agent,
                    "backend": row.backend, "credentials": row.credentials,
                    "max_steps": row.max_steps, "max_cost_usd": row.max_cost_usd,
                    "origin": row.origin, "instance": self.owner,
                }),
                Patch {
                    status: Some(SessionStatus::Running),
                    ..Patch::default()
                },
            )
            .await?;
            let event = self
                .append(
                    "user_message",
                    json!({ "text": row.task }),
                    Patch::default(),
                )
                .await?;
            conv.apply(&event);
        } else {
            let interrupted = conv.interrupted();
            let requeued = row.status == SessionStatus::Queued;
            self.append(
                "resumed",
                json!({
                    "instance": self.owner,
                    "interrupted_tool_calls": interrupted.iter().map(|c| &c.id).collect::<Vec<_>>(),
                }),
                Patch {
                    status: Some(SessionStatus::Running),
                    deadline_at: requeued.then(|| now_ms() + secs_ms(config.timeout_seconds)),
                    ..Patch::default()
                },
            )
            .await?;
            for call in interrupted {
                let event = self
                    .append(
                        "tool_result",
                        json!({
                            "call_id": call.id, "name": call.name,
                            "content": json!({ "error": INTERRUPTED }).to_string(),
                            "is_error": true, "interrupted": true,
                        }),
                        Patch::default(),
                    )
                    .await?;
                conv.apply(&event);
            }
        }

        let tools = tools::definitions();
        let system = config
            .system_prompt
            .clone()
            .unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_owned());
        loop {
            let row = self.row().await?;
            if self.cancel.is_cancelled() || row.cancel_requested {
                self.finish(SessionStatus::Cancelled, None, Some("cancelled"))
                    .await?;
                return Ok(());
            }
            let now = now_ms();
            if now >= row.deadline_at {
                let reason = format!("timed out after {} s", config.timeout_seconds);
                self.finish(SessionStatus::Failed, None, Some(&reason))
                    .await?;
                return Ok(());
            }
            if let Some(call) = conv.next_unstarted() {
                let event = self.run_tool(&row, &conv, call).await?;
                conv.apply(&event);
                continue;
            }
            if row.pending_messages > 0 {
                for (message_id, text) in self.state.store.pending_messages(self.id).await? {
                    let event = self
                        .append(
                            "user_message",
                            json!({ "text": text, "message_id": message_id }),
                            Patch {
                                consume_message: Some(&message_id),
                                ..Patch::default()
                            },
                        )
                        .await?;
                    conv.apply(&event);
                }
                continue;
            }
            if let Some(answer) = conv.answered() {
                if self
                    .finish(SessionStatus::Succeeded, Some(&answer), None)
                    .await?
                {
                    return Ok(());
                }
                continue;
            }
            if conv.steps >= row.max_steps {
                let reason = format!("max_steps ({}) reached", row.max_steps);
                self.finish(SessionStatus::Failed, None, Some(&reason))
                    .await?;
                return Ok(());
            }
            if let Some(budget) = row.max_cost_usd
                && row.cost_usd >= budget
            {
                let reason = format!(
                    "max_cost_usd ({budget}) exceeded: spent {:.6}",
                    row.cost_usd
                );
                self.finish(SessionStatus::Failed, None, Some(&reason))
                    .await?;
                return Ok(());
            }

            let step = conv.steps + 1;
            let Some(models) = self.state.models.as_ref() else {
                self.finish(
                    SessionStatus::Failed,
                    None,
                    Some("no model is configured on this brain"),
                )
                .await?;
                return Ok(());
            };
            self.append(
                "model_request",
                json!({ "step": step, "model": row.model, "messages": conv.messages.len() }),
                Patch::default(),
            )
            .await?;
            let request = ChatRequest {
                model: row.model.clone(),
                system: Some(system.clone()),
                messages: conv.messages.clone(),
                tools: tools.clone(),
                max_tokens: Some(config.max_tokens),
                ..ChatRequest::default()
            };
            let remaining =
                Duration::from_millis(u64::try_from(row.deadline_at - now).unwrap_or(0));
            let response = tokio::select! {
                r = models.chat(request) => r,
                _ = self.cancel.cancelled() => continue,
                _ = tokio::time::sleep(remaining) => continue,
            };
            let response = match response {
                Ok(r) => r,
                Err(e) => {
                    let message = e.to_string();
                    self.append(
                        "model_error",
                        json!({ "step": step, "error": message }),
                        Patch::default(),
                    )
                    .await?;
                    let reason = format!("model call failed: {message}");
                    self.finish(SessionStatus::Failed, None, Some(&reason))
                        .await?;
                    return Ok(());
                }
            };
            let cost = models.cost(&row.model, &response);
            let mut calls = Vec::new();
            for (i, call) in response.tool_calls().enumerate() {
                // Ids key tool results; a provider that sends none gets a stable one.
                let id = if call.id.is_empty() {
                    format!("call_{step}_{i}")
                } else {
                    call.id.clone()
                };
                calls.push(json!({ "id": id, "name": call.name, "arguments": call.arguments }));
            }
            let usage = response.usage;
            let event = self
                .append(
                    "model_response",
                    json!({
                        "step": step,
                        "model": response.model,
                        "text": response.text(),
                        "tool_calls": calls,
                        "stop_reason": response.stop_reason.anthropic(),
                        "usage": { "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens },
                        "cost_usd": cost,
                    }),
                    Patch {
                        add_steps: 1,
                        add_input_tokens: i64::try_from(usage.input_tokens).unwrap_or(i64::MAX),
                        add_output_tokens: i64::try_from(usage.output_tokens).unwrap_or(i64::MAX),
                        add_cost_usd: cost,
                        ..Patch::default()
                    },
                )
                .await?;
            conv.apply(&event);
        }
    }

    async fn run_tool(
        &self,
        row: &SessionRow,
        conv: &Conversation,
        call: ToolCall,
    ) -> Result<EventRow, LoopError> {
        let arguments: Value = serde_json::from_str(&call.arguments)
            .unwrap_or_else(|_| Value::String(call.arguments.clone()));
        self.append(
            "tool_started",
            json!({ "call_id": call.id, "name": call.name, "arguments": arguments }),
            Patch::default(),
        )
        .await?;
        let ctx = tools::Ctx {
            state: self.state,
            session: row,
            last_sandbox: conv
                .last_sandbox
                .as_deref()
                .or(row.last_sandbox_id.as_deref()),
        };
        let output = tokio::select! {
            out = tools::execute(&ctx, &call.name, &call.arguments) => out,
            _ = self.cancel.cancelled() => ToolOutput::error("cancelled while running"),
        };
        let budget = self.state.config.sessions.max_tool_output_bytes;
        let content = tools::truncate_output(output.content, budget);
        self.append(
            "tool_result",
            json!({
                "call_id": call.id, "name": call.name, "content": content,
                "is_error": output.is_error, "sandbox_id": output.sandbox_id,
            }),
            Patch {
                last_sandbox_id: output.sandbox_id.as_deref(),
                ..Patch::default()
            },
        )
        .await
    }
}

fn secs_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: i64, kind: &str, data: Value) -> EventRow {
        EventRow {
            seq,
            ts: 0,
            kind: kind.into(),
            data,
        }
    }

    #[test]
    fn replay_rebuilds_turns_and_finds_interrupted_and_unstarted_calls() {
        let events = vec![
            ev(1, "session_started", json!({})),
            ev(2, "user_message", json!({"text": "do it"})),
            ev(3, "model_request", json!({"step": 1})),
            ev(
                4,
                "model_response",
                json!({"text": "", "tool_calls": [
                    {"id": "a", "name": "sandbox_provision", "arguments": "{}"},
                    {"id": "b", "name": "sandbox_execute", "arguments": "{\"command\":\"ls\"}"},
                    {"id": "c", "name": "sandbox_execute", "arguments": "{\"command\":\"pwd\"}"}
                ]}),
            ),
            ev(5, "tool_started", json!({"call_id": "a"})),
            ev(
                6,
                "tool_result",
                json!({"call_id": "a", "content": "{}", "is_error": false, "sandbox_id": "sb-1"}),
            ),
            ev(7, "tool_started", json!({"call_id": "b"})),
        ];
        let conv = Conversation::replay(&events);
        assert_eq!(conv.steps, 1);
        assert_eq!(conv.messages.len(), 3);
        assert_eq!(conv.last_sandbox.as_deref(), Some("sb-1"));
        let interrupted: Vec<_> = conv.interrupted().into_iter().map(|c| c.id).collect();
        assert_eq!(interrupted, vec!["b"]);
        // "b" started: never offered again; "c" never started: runs next.
        assert_eq!(conv.next_unstarted().map(|c| c.id).as_deref(), Some("c"));
        assert_eq!(conv.answered(), None);
    }

    #[test]
    fn an_assistant_turn_without_tool_calls_is_the_answer() {
        let events = vec![
            ev(1, "user_message", json!({"text": "hi"})),
            ev(
                2,
                "model_response",
                json!({"text": "hello", "tool_calls": []}),
            ),
        ];
        let conv = Conversation::replay(&events);
        assert_eq!(conv.answered().as_deref(), Some("hello"));
        let mut conv = conv;
        conv.apply(&ev(3, "user_message", json!({"text": "more"})));
        assert_eq!(
            conv.answered(),
            None,
            "a follow-up reopens the conversation"
        );
    }
}
