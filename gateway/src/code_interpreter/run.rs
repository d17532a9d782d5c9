//! The interception loop: model turn → run its `code_interpreter` calls in the
//! container's sandbox → feed the outputs back → … until a turn makes no code
//! call (the final answer) or `max_iterations` model calls were made.
//!
//! Every model call goes through the gateway's routing with the caller's key:
//! retries, fallbacks, budgets and spend apply to each, as for a client's own.
//!
//! A streamed request streams every model turn: the model's own events reach
//! the client as they arrive ([`Step::Event`]), with the `code_interpreter`
//! calls taken out (they become the code interpreter items instead).

use super::CodeInterpreter;
use super::containers::{Containers, Lease};
use super::python::{self, CellResult};
use crate::Inner;
use crate::canonical::{
    ChatRequest, ChatResponse, Message, Part, Role, StreamCollector, StreamEvent, Tool, ToolChoice,
    Usage,
};
use crate::error::{GatewayError, ProviderError};
use crate::formats::responses::CODE_TOOL;
use crate::keys::Caller;
use crate::limits::ParallelGuard;
use crate::providers::CallOpts;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;

/// What the loop reports as it goes (the encoders turn these into wire events).
#[derive(Debug)]
pub enum Step {
    /// The container serving this request (before anything else).
    Container(String),
    /// A model turn, without its code calls (text and the client's own tool
    /// calls); unstreamed requests only.
    Turn(ChatResponse),
    /// A streamed request: one model event as the provider sent it, code calls
    /// taken out (client tool call indexes renumbered from 0 per turn).
    Event(StreamEvent),
    /// A code call is about to run.
    CodeStart {
        item_id: String,
        code: String,
        container_id: String,
    },
    /// It ran: `item` is the finished `code_interpreter_call` output item.
    CodeDone {
        item_id: String,
        code: String,
        item: Value,
        result: CellResult,
    },
}

/// The loop's end.
#[derive(Debug)]
pub struct Outcome {
    /// The last model turn (the final answer, or the turn that called client tools).
    pub last: ChatResponse,
    /// Usage summed over all model calls.
    pub usage: Usage,
    pub container_id: String,
}

/// The function tool the model sees instead of the hosted one.
pub fn code_tool() -> Tool {
    Tool {
        name: CODE_TOOL.to_owned(),
        description: Some(
            "Run Python 3 code in a persistent sandboxed interpreter (state is kept between calls; \
             numpy, pandas and matplotlib are installed). stdout, stderr, errors with tracebacks and \
             images (open matplotlib figures, or files written to $TMPDIR/airlock-ci/outputs) are \
             returned. The value of a trailing expression is printed. Network access is restricted."
                .into(),
        ),
        parameters: json!({
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The Python code to run."}},
            "required": ["code"],
            "additionalProperties": false,
        }),
    }
}

/// One model call with the caller's key: routing, retries, fallbacks, budget
/// checks and spend, as `Gateway::chat` does for in-process callers.
pub(crate) async fn model_call(
    inner: &Arc<Inner>,
    caller: &Caller,
    req: &ChatRequest,
    parallel: &Option<Arc<ParallelGuard>>,
) -> Result<ChatResponse, GatewayError> {
    caller.check(&req.model)?;
    inner
        .router
        .execute(&req.model, move |flight, group| async move {
            let dep = flight.deployment().clone();
            let upstream = dep.upstream_for(&req.model, &group.name).into_owned();
            let price = dep.price_for(&upstream);
            caller
                .check_priced(&upstream, &price)
                .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
            let mut guard = crate::proxy::SpendGuard::new(
                inner.clone(),
                caller.clone(),
                flight,
                price,
                &upstream,
                parallel.clone(),
            );
            let opts = CallOpts {
                model: &upstream,
                timeout: dep.timeout,
                idle_timeout: dep.idle_timeout,
                anthropic_beta: None,
            };
            let mut req = req.clone();
            req.stream = false;
            let r = dep.provider.complete(&req, opts).await?;
            guard.arm();
            guard.usage = r.usage;
            Ok::<_, ProviderError>(r)
        })
        .await
}

/// A streamed model call with the caller's key (routing, retries before the
/// first byte, budgets and spend as [`model_call`]): each event goes to
/// `on_event` as it arrives; the whole turn is returned at its end.
pub(crate) async fn model_stream(
    inner: &Arc<Inner>,
    caller: &Caller,
    req: &ChatRequest,
    parallel: &Option<Arc<ParallelGuard>>,
    on_event: &mut (dyn FnMut(&StreamEvent) + Send),
) -> Result<ChatResponse, GatewayError> {
    caller.check(&req.model)?;
    let (mut events, mut guard) = inner
        .router
        .execute(&req.model, move |flight, group| async move {
            let dep = flight.deployment().clone();
            let upstream = dep.upstream_for(&req.model, &group.name).into_owned();
            let price = dep.price_for(&upstream);
            caller
                .check_priced(&upstream, &price)
                .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
            let mut guard = crate::proxy::SpendGuard::new(
                inner.clone(),
                caller.clone(),
                flight,
                price,
                &upstream,
                parallel.clone(),
            );
            let opts = CallOpts {
                model: &upstream,
                timeout: dep.timeout,
                idle_timeout: dep.idle_timeout,
                anthropic_beta: None,
            };
            let mut req = req.clone();
            req.stream = true;
            let s = dep.provider.stream(&req, opts).await?;
            guard.arm();
            Ok::<_, ProviderError>((s, guard))
        })
        .await?;
    let mut turn = StreamCollector::default();
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(GatewayError::Provider)?;
        on_event(&ev);
        turn.push(ev);
        // Spend counts what was streamed even if the stream breaks later.
        guard.usage = turn.response.usage;
    }
    Ok(turn.response)
}

/// Takes the `code_interpreter` calls out of one turn's stream events.
#[derive(Default)]
struct HideCodeCalls {
    /// Per model tool call index: its index among the shown calls, or `None` (a code call).
    shown: Vec<Option<usize>>,
    next: usize,
}

impl HideCodeCalls {
    fn filter(&mut self, ev: &StreamEvent) -> Option<StreamEvent> {
        match ev {
            StreamEvent::ToolCallStart { index, id, name } => {
                if self.shown.len() <= *index {
                    self.shown.resize(index + 1, None);
                }
                if name == CODE_TOOL {
                    return None;
                }
                let shown = self.next;
                self.next += 1;
                self.shown[*index] = Some(shown);
                Some(StreamEvent::ToolCallStart {
                    index: shown,
                    id: id.clone(),
                    name: name.clone(),
                })
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                let shown = self.shown.get(*index).copied().flatten()?;
                Some(StreamEvent::ToolCallDelta {
                    index: shown,
                    arguments: arguments.clone(),
                })
            }
            other => Some(other.clone()),
        }
    }
}

fn code_of(arguments: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(arguments)
        .map_err(|e| format!("the arguments are not JSON ({e}); pass {{\"code\": \"...\"}}"))?;
    match v.get("code") {
        Some(Value::String(s)) => Ok(s.clone()),
        // Some models send the code as the whole argument string.
        _ => match v {
            Value::String(s) => Ok(s),
            _ => Err("missing `code` (a string) in the arguments".into()),
        },
    }
}

/// Run the loop for `req` (whose `code_interpreter` tool was taken out) in the
/// container named by `container`. `parallel` is the request's parallel slot.
pub(crate) async fn run(
    ci: &Arc<CodeInterpreter>,
    inner: &Arc<Inner>,
    caller: &Caller,
    mut req: ChatRequest,
    container: &Value,
    parallel: Option<Arc<ParallelGuard>>,
    sink: &mut (dyn FnMut(Step) + Send),
) -> Result<Outcome, GatewayError> {
    let lease: Lease = Containers::lease(ci, inner, caller, container).await?;
    let container_id = lease.entry.id.clone();
    sink(Step::Container(container_id.clone()));
    let streamed = req.stream;
    req.tools.retain(|t| t.name != CODE_TOOL);
    req.tools.push(code_tool());
    let mut usage = Usage::default();
    let max = ci.settings.max_iterations.max(1);
    for iteration in 1..=max {
        if iteration == max {
            // The last call allowed: ask for an answer, not more code.
            req.tool_choice = Some(ToolChoice::None);
        }
        let turn = if streamed {
            let mut hide = HideCodeCalls::default();
            let mut on_event = |ev: &StreamEvent| {
                if let Some(ev) = hide.filter(ev) {
                    sink(Step::Event(ev));
                }
            };
            model_stream(inner, caller, &req, &parallel, &mut on_event).await?
        } else {
            model_call(inner, caller, &req, &parallel).await?
        };
        usage.input_tokens += turn.usage.input_tokens;
        usage.output_tokens += turn.usage.output_tokens;
        usage.cache_read_tokens += turn.usage.cache_read_tokens;
        usage.cache_creation_tokens += turn.usage.cache_creation_tokens;
        let code_calls: Vec<_> = turn
            .tool_calls()
            .filter(|c| c.name == CODE_TOOL)
            .cloned()
            .collect();
        let client_calls = turn.tool_calls().any(|c| c.name != CODE_TOOL);
        let mut shown = turn.clone();
        shown
            .content
            .retain(|p| !matches!(p, Part::ToolCall(c) if c.name == CODE_TOOL));
        let last_allowed = iteration == max;
        if !streamed {
            sink(Step::Turn(shown.clone()));
        }
        if code_calls.is_empty() || last_allowed {
            return Ok(Outcome {
                last: shown,
                usage,
                container_id,
            });
        }
        req.messages.push(Message {
            role: Role::Assistant,
            content: turn.content.clone(),
        });
        let mut results = Vec::with_capacity(code_calls.len());
        let mut images = Vec::new();
        for call in &code_calls {
            let item_id = format!("ci_{}", uuid::Uuid::new_v4().simple());
            let parsed = code_of(&call.arguments);
            sink(Step::CodeStart {
                item_id: item_id.clone(),
                code: parsed.as_deref().unwrap_or(&call.arguments).to_owned(),
                container_id: container_id.clone(),
            });
            let (result, code) = match parsed {
                Err(msg) => (
                    CellResult {
                        error: Some(python::CellError {
                            name: "ArgumentError".into(),
                            value: msg,
                            traceback: String::new(),
                        }),
                        ..Default::default()
                    },
                    call.arguments.clone(),
                ),
                Ok(code) => {
                    let _one_at_a_time = lease.entry.busy.lock().await;
                    let r = python::run_cell(
                        ci.host.as_ref(),
                        &lease.entry.sandbox_id,
                        &code,
                        ci.settings.exec_timeout,
                    )
                    .await
                    .map_err(|e| {
                        GatewayError::Provider(ProviderError::Status {
                            status: 503,
                            error_type: "sandbox_unavailable".into(),
                            message: e.to_string(),
                            retry_after: None,
                        })
                    })?;
                    (r, code)
                }
            };
            let status = if result
                .error
                .as_ref()
                .is_some_and(|e| e.name == "SandboxError")
            {
                "failed"
            } else {
                "completed"
            };
            let item = json!({
                "id": item_id, "type": "code_interpreter_call", "status": status,
                "code": code, "container_id": container_id, "outputs": result.outputs(),
            });
            results.push(Part::ToolResult {
                tool_call_id: call.id.clone(),
                content: result.for_model(),
                is_error: result.error.is_some(),
            });
            images.extend(images_for_model(&result));
            sink(Step::CodeDone {
                item_id,
                code,
                item,
                result,
            });
        }
        if client_calls {
            // The client's own tools were called too: it answers those; the code
            // outputs travel back with it as `code_interpreter_call` items.
            return Ok(Outcome {
                last: shown,
                usage,
                container_id,
            });
        }
        if !images.is_empty() {
            // The model sees what the code drew, after the tool results (a
            // user turn: tool results cannot carry images on every provider).
            images.truncate(MAX_IMAGES_TO_MODEL);
            results.push(Part::Text("The images the code above produced:".into()));
            results.extend(images);
        }
        req.messages.push(Message {
            role: Role::User,
            content: results,
        });
    }
    unreachable!("the last iteration returns")
}

/// Images attached to the model's next turn, per loop iteration.
const MAX_IMAGES_TO_MODEL: usize = 4;

/// A cell's images the model can read (the raster formats vision models
/// accept; an SVG stays a mention in the tool result), as image parts.
fn images_for_model(result: &CellResult) -> impl Iterator<Item = Part> + '_ {
    result
        .images
        .iter()
        .filter(|i| {
            matches!(
                i.mime.as_str(),
                "image/png" | "image/jpeg" | "image/gif" | "image/webp"
            )
        })
        .map(|i| Part::Image {
            url: format!("data:{};base64,{}", i.mime, i.data),
        })
}
