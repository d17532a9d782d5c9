//! The agent loop of one session, driven from (and into) its event log.
//!
//! Order of writes, each committed before the action it describes:
//! `model_request` → call → `model_response`; `tool_started` → run → `tool_result`.
//! On resume the conversation is rebuilt from the events alone: a tool call with a
//! `tool_started` but no `tool_result` is never re-run — the model is told it was interrupted
//! and may or may not have taken effect; tool calls never started are run; a model request
//! without a response is asked again (model calls have no side effects), but the abandoned
//! call is accounted first: it counts as a step and is charged at the session's costliest
//! call so far (its real usage is unknown), so `max_steps` and `max_cost_usd` bound a crash
//! loop, and a session resumed more than `sessions.max_resumes` times fails.
//!
//! Store errors that are transient (the database is unreachable) pause the loop: each write
//! is retried with backoff until it succeeds, the claim is lost, or the brain stops. A retry
//! after a lost answer first checks whether the write had committed (the session's last
//! event is the one being written), so no event is written twice.

use std::future::Future;
use std::time::Duration;

use gateway::canonical::{ChatRequest, Message, Part, Role, ToolCall};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::store::{EventRow, Patch, SessionRow, SessionStatus};
use super::tools::{self, ToolOutput};
use crate::state::AppState;
use crate::store::StoreError;

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
    /// A `model_request` with no response, error or resume accounting after it.
    open_request: bool,
    /// Costliest model call so far (what an abandoned call is charged).
    max_call_cost: f64,
    /// Resumes after the brain stopped mid-run (not re-queues for follow-ups).
    crash_resumes: u32,
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
            "model_request" => self.open_request = true,
            "model_error" => self.open_request = false,
            "resumed" => {
                self.open_request = false;
                let abandoned = d
                    .get("abandoned_model_calls")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                self.steps += u32::try_from(abandoned).unwrap_or(u32::MAX);
                if d.get("restart").and_then(Value::as_bool).unwrap_or(true) {
                    self.crash_resumes += 1;
                }
            }
            "model_response" => {
                self.open_request = false;
                self.steps += 1;
                if let Some(cost) = d.get("cost_usd").and_then(Value::as_f64) {
                    self.max_call_cost = self.max_call_cost.max(cost);
                }
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

/// First and longest pause between retries of a store call that failed transiently.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One claimed session being driven by this process.
pub struct Driver<'a> {
    pub state: &'a AppState,
    pub id: &'a str,
    pub owner: &'a str,
    pub cancel: &'a CancellationToken,
}

impl Driver<'_> {
    /// Runs a store call, retrying transient failures (a database outage pauses the loop
    /// rather than failing the session). Other errors are returned.
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = RETRY_FIRST;
        loop {
            match op().await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(session = %self.id, error = %e, "{what} failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
                other => return other,
            }
        }
    }

    /// [`Store::append_event`] fenced by our claim, retried while the database is
    /// unreachable. After a failure the commit may have happened with only its answer lost:
    /// our last event being exactly this one means it did (only the claim holder writes).
    async fn try_append(
        &self,
        kind: &str,
        data: &Value,
        patch: &Patch<'_>,
    ) -> Result<Option<EventRow>, StoreError> {
        let store = &self.state.store;
        let mut failed = false;
        let written = self
            .retry("writing an event", || {
                let retried = failed;
                failed = true;
                async move {
                    if retried
                        && let Some(last) = store.last_event(self.id).await?
                        && last.kind == kind
                        && &last.data == data
                    {
                        return Ok(Some(last));
                    }
                    store
                        .append_event(self.id, Some(self.owner), kind, data, patch)
                        .await
                }
            })
            .await?;
        if let Some(event) = &written {
            self.state.sessions.published(self.id, event.seq);
        }
        Ok(written)
    }

    async fn append(
        &self,
        kind: &str,
        data: Value,
        patch: Patch<'_>,
    ) -> Result<EventRow, LoopError> {
        let data = with_trace_id(data);
        self.try_append(kind, &data, &patch)
            .await?
            .ok_or(LoopError::ClaimLost)
    }

    async fn row(&self) -> Result<SessionRow, LoopError> {
        let store = &self.state.store;
        match self
            .retry("reading the session", || store.get_session(self.id))
            .await?
        {
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
        let data = with_trace_id(json!({ "status": status, "result": result, "error": error }));
        let patch = Patch {
            status: Some(status),
            result,
            error,
            release_claim: true,
            require_no_pending: status == SessionStatus::Succeeded,
            ..Patch::default()
        };
        match self.try_append("status", &data, &patch).await? {
            Some(_) => {
                tracing::info!(session = %self.id, %status, error = error.unwrap_or(""), "session finished");
                self.state.metrics.session_finished(status.as_str(), error);
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
        let store = &self.state.store;
        let events = self
            .retry("reading the events", || {
                store.session_events(self.id, 0, i64::MAX)
            })
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
            // Deadlines are on the database clock (any replica compares with them).
            let db_now = self
                .retry("reading the database clock", || store.clock_ms())
                .await?;
            // A model call in flight when the last run stopped was (probably) billed by the
            // provider: count it as a step and charge it at the costliest call so far.
            let abandoned = u32::from(conv.open_request);
            let charge = if abandoned > 0 {
                conv.max_call_cost
            } else {
                0.0
            };
            let event = self
                .append(
                    "resumed",
                    json!({
                        "instance": self.owner,
                        "interrupted_tool_calls": interrupted.iter().map(|c| &c.id).collect::<Vec<_>>(),
                        "restart": !requeued,
                        "abandoned_model_calls": abandoned,
                        "abandoned_cost_usd": charge,
                    }),
                    Patch {
                        status: Some(SessionStatus::Running),
                        deadline_at: requeued.then(|| db_now + secs_ms(config.timeout_seconds)),
                        add_steps: i64::from(abandoned),
                        add_cost_usd: charge,
                        ..Patch::default()
                    },
                )
                .await?;
            conv.apply(&event);
            self.state.metrics.session_resumed();
            if conv.crash_resumes > config.max_resumes {
                let reason = format!(
                    "resumed {} times after its brain stopped mid-run (sessions.max_resumes is {}): \
                     giving up rather than running it again",
                    conv.crash_resumes, config.max_resumes
                );
                self.finish(SessionStatus::Failed, None, Some(&reason))
                    .await?;
                return Ok(());
            }
            if !conv.messages.iter().any(|m| m.role == Role::User) {
                // The last run stopped between `session_started` and the task's
                // `user_message`: write the task now, or the model would get nothing.
                let event = self
                    .append(
                        "user_message",
                        json!({ "text": row.task }),
                        Patch::default(),
                    )
                    .await?;
                conv.apply(&event);
            }
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
            // The database clock, as the deadline: a replica whose own clock runs ahead must
            // not time out a session another replica started.
            let now = self
                .retry("reading the database clock", || store.clock_ms())
                .await?;
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
                let pending = self
                    .retry("reading follow-ups", || store.pending_messages(self.id))
                    .await?;
                for (message_id, text) in pending {
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
            let span = tracing::info_span!(
                target: airlock_telemetry::TARGET,
                "model.call",
                "gen_ai.operation.name" = "chat",
                "gen_ai.request.model" = %row.model,
                "airlock.step" = step,
                "gen_ai.response.model" = tracing::field::Empty,
                "gen_ai.usage.input_tokens" = tracing::field::Empty,
                "gen_ai.usage.output_tokens" = tracing::field::Empty,
                "airlock.cost_usd" = tracing::field::Empty,
                "error.type" = tracing::field::Empty,
            );
            let response = tokio::select! {
                r = models.chat(request).instrument(span.clone()) => r,
                _ = self.cancel.cancelled() => continue,
                _ = tokio::time::sleep(remaining) => continue,
            };
            let response = match response {
                Ok(r) => r,
                Err(e) => {
                    let message = e.to_string();
                    span.record("error.type", "model_error");
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
            span.record("gen_ai.response.model", response.model.as_str());
            span.record("gen_ai.usage.input_tokens", response.usage.input_tokens);
            span.record("gen_ai.usage.output_tokens", response.usage.output_tokens);
            span.record("airlock.cost_usd", cost);
            drop(span);
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
            (self.state.metrics).session_step(usage.input_tokens, usage.output_tokens, cost);
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
        // Only with a live lease: an expired one may already be another brain's, which would
        // run the tool too.
        self.append(
            "tool_started",
            json!({ "call_id": call.id, "name": call.name, "arguments": arguments }),
            Patch {
                require_live_lease: true,
                ..Patch::default()
            },
        )
        .await?;
        let ctx = tools::Ctx {
            state: self.state,
            session: row,
            call_id: &call.id,
            last_sandbox: conv
                .last_sandbox
                .as_deref()
                .or(row.last_sandbox_id.as_deref()),
        };
        // Never the arguments or the output: they may hold anything the model or a command
        // printed.
        let span = tracing::info_span!(
            target: airlock_telemetry::TARGET,
            "tool.call",
            "gen_ai.tool.name" = %call.name,
            "gen_ai.tool.call.id" = %call.id,
            "airlock.is_error" = tracing::field::Empty,
        );
        let output = tokio::select! {
            out = tools::execute(&ctx, &call.name, &call.arguments).instrument(span.clone()) => out,
            _ = self.cancel.cancelled() => ToolOutput::error("cancelled while running"),
        };
        span.record("airlock.is_error", output.is_error);
        drop(span);
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

/// Adds the current trace id (the session's trace) to an event's data, so a person can go
/// from an event to its trace; unchanged when tracing is off.
fn with_trace_id(mut data: Value) -> Value {
    if airlock_telemetry::tracing_enabled()
        && let Some(trace_id) = airlock_telemetry::current_trace_id()
        && let Value::Object(map) = &mut data
    {
        map.insert("trace_id".into(), Value::String(trace_id));
    }
    data
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
