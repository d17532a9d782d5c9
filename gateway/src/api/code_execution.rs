//! Anthropic's code execution server tool on `/v1/messages`, served by
//! Airlock sandboxes for any routed model.
//!
//! `{"type": "code_execution_20250522", "name": "code_execution"}` (Python;
//! docs.anthropic.com "Code execution tool", and the anthropic SDK's
//! `types/beta/beta_code_execution_tool_20250522.py`) runs through the same
//! loop as OpenAI's `code_interpreter`. The answer carries Anthropic's blocks
//! (SDK `beta_server_tool_use_block.py`, `beta_code_execution_tool_result_block.py`,
//! `beta_code_execution_result_block.py`): a `server_tool_use` block
//! `{id: "srvtoolu_…", name: "code_execution", input: {code}}` then a
//! `code_execution_tool_result` `{tool_use_id, content: {type:
//! "code_execution_result", stdout, stderr, return_code, content: []}}`, and the
//! message's `container` `{id, expires_at}` (`beta_container.py`). A request's
//! top-level `container` (an id) reuses that container.
//! The 2025-08-25 version (bash and a file editor instead of Python) is refused
//! with a clear 400 rather than served with the wrong tools.

use super::responses::{Msg, sse_response};
use crate::Inner;
use crate::canonical::StreamEvent;
use crate::code_interpreter::python::CellResult;
use crate::code_interpreter::run::{self, Step};
use crate::error::{GatewayError, WireFormat};
use crate::formats::anthropic as an;
use crate::keys::Caller;
use crate::proxy::{json_response, set_rate_headers};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;

/// What to do with a `/v1/messages` body.
enum Found {
    Serve(Value),
    Refuse(String),
}

fn take_tool(v: &mut Value) -> Option<Found> {
    let tools = v.get_mut("tools")?.as_array_mut()?;
    let pos = tools.iter().position(|t| {
        t.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("code_execution_"))
    })?;
    let ty = tools[pos]["type"].as_str().unwrap_or_default().to_owned();
    if ty != "code_execution_20250522" {
        return Some(Found::Refuse(format!(
            "tools: `{ty}` is not served here; Airlock's sandboxes serve `code_execution_20250522` \
             (Python) for every model"
        )));
    }
    tools.remove(pos);
    let o = v.as_object_mut()?;
    if o.get("tools")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        o.remove("tools");
        o.remove("tool_choice");
    }
    Some(Found::Serve(o.remove("container").unwrap_or(Value::Null)))
}

/// `Some(answer)` when this Messages request declares the code execution tool.
pub(crate) async fn messages(
    inner: &Arc<Inner>,
    caller: &Caller,
    body: &Bytes,
) -> Option<Response> {
    memchr::memmem::find(body, b"code_execution_")?;
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let Some(ci) = inner.code_interpreter.get() else {
        return not_hosted(inner, &v).map(|e| e.into_response_for(WireFormat::Anthropic));
    };
    let container = match take_tool(&mut v)? {
        Found::Serve(c) => c,
        Found::Refuse(msg) => {
            return Some(GatewayError::BadRequest(msg).into_response_for(WireFormat::Anthropic));
        }
    };
    let r = async {
        let req = an::decode_request(&v)?;
        caller.check(&req.model)?;
        let (rate, parallel) = inner.keys.admit(caller)?;
        let parallel = parallel.map(Arc::new);
        let model = req.model.clone();
        if req.stream {
            // Every model turn streams; the loop runs in its own task and its
            // steps become Anthropic's events as they happen.
            let mut rx =
                super::responses::spawn_loop(ci, inner, caller.clone(), req, container, parallel);
            // Nothing is sent before the container is known: a refused one is
            // an HTTP error, not a failed stream.
            match rx.recv().await {
                Some(Msg::Step(Step::Container(_))) => {}
                Some(Msg::Done(Err(e))) => return Err(e),
                _ => {
                    return Err(GatewayError::Internal(
                        "the code interpreter loop stopped".into(),
                    ));
                }
            }
            let mut resp = sse_response(message_stream(rx, &model, ci.settings.idle_ttl));
            set_rate_headers(resp.headers_mut(), rate);
            return Ok(resp);
        }
        let mut content: Vec<Value> = Vec::new();
        let mut sink = |step: Step| match step {
            Step::Turn(t) => {
                let m = an::encode_response(&t, "");
                content.extend(m["content"].as_array().cloned().unwrap_or_default());
            }
            Step::Container(_) | Step::Event(_) => {}
            Step::CodeStart { item_id, code, .. } => {
                let mut b = use_block(&item_id);
                b["input"] = json!({"code": code});
                content.push(b);
            }
            Step::CodeDone {
                item_id, result, ..
            } => content.push(result_block(&item_id, &result)),
        };
        let o = run::run(ci, inner, caller, req, &container, parallel, &mut sink).await?;
        let msg = json!({
            "id": format!("msg_{}", uuid::Uuid::new_v4().simple()),
            "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": o.last.stop_reason.anthropic(), "stop_sequence": null,
            "usage": {"input_tokens": o.usage.input_tokens, "output_tokens": o.usage.output_tokens,
                      "cache_read_input_tokens": o.usage.cache_read_tokens,
                      "cache_creation_input_tokens": o.usage.cache_creation_tokens},
            "container": container_json(&o.container_id, ci.settings.idle_ttl),
        });
        let mut resp = json_response(Bytes::from(msg.to_string()));
        set_rate_headers(resp.headers_mut(), rate);
        Ok::<_, GatewayError>(resp)
    }
    .await;
    Some(r.unwrap_or_else(|e| {
        inner.metrics.error(&e);
        e.into_response_for(WireFormat::Anthropic)
    }))
}

/// `{id, expires_at}` of a container (SDK `beta_container.py`): it lives until
/// it has been idle for `idle_ttl`.
fn container_json(id: &str, idle_ttl: std::time::Duration) -> Value {
    let expires = chrono::Utc::now() + chrono::Duration::seconds(idle_ttl.as_secs() as i64);
    json!({"id": id, "expires_at": expires.to_rfc3339()})
}

/// The `server_tool_use` block of a code call, with an empty input.
fn use_block(item_id: &str) -> Value {
    json!({"type": "server_tool_use", "id": server_id(item_id),
           "name": "code_execution", "input": {}})
}

/// The `code_execution_tool_result` block of a finished code call: stdout,
/// stderr (with the error's traceback) and the return code.
fn result_block(item_id: &str, result: &CellResult) -> Value {
    let mut stderr = result.stderr.clone();
    if let Some(e) = &result.error {
        stderr.push_str(if e.traceback.is_empty() {
            &e.value
        } else {
            &e.traceback
        });
    }
    json!({
        "type": "code_execution_tool_result", "tool_use_id": server_id(item_id),
        "content": {"type": "code_execution_result", "stdout": result.stdout,
                    "stderr": stderr, "return_code": i32::from(result.error.is_some()),
                    "content": []},
    })
}

/// The loop's steps as one Anthropic message stream, sent as they happen
/// (docs.anthropic.com "Code execution tool", Streaming): `message_start`;
/// every turn's text (and client tool calls) as the model streams it; per code
/// call a `server_tool_use` block (its input as one `input_json_delta`, sent
/// when the call is about to run), then, once it ran, the
/// `code_execution_tool_result` block complete in its `content_block_start`;
/// then one `message_delta` with the last turn's stop reason, the usage summed
/// over the turns and the `container`, and `message_stop`.
fn message_stream(
    rx: tokio::sync::mpsc::UnboundedReceiver<Msg>,
    model: &str,
    idle_ttl: std::time::Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + use<> {
    let mut enc = an::StreamEncoder::new(model);
    let mut first = Vec::new();
    enc.push(
        &StreamEvent::Start {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            model: model.to_owned(),
            input_tokens: 0,
        },
        &mut first,
    );
    let init = (rx, enc, Some(first), false);
    futures_util::stream::unfold(init, move |(mut rx, mut enc, first, done)| async move {
        if let Some(f) = first {
            return Some((Ok(Bytes::from(f)), (rx, enc, None, false)));
        }
        if done {
            return None;
        }
        let mut out = Vec::new();
        let mut done = false;
        while out.is_empty() && !done {
            match rx.recv().await {
                Some(Msg::Step(Step::Event(ev))) => match ev {
                    // One message across the turns: its start was sent, its end
                    // comes with the loop's outcome.
                    StreamEvent::Start { .. } | StreamEvent::Finish { .. } => {}
                    ev => enc.push(&ev, &mut out),
                },
                Some(Msg::Step(Step::CodeStart { item_id, code, .. })) => {
                    let input = json!({"code": code}).to_string();
                    enc.push_block(
                        use_block(&item_id),
                        Some(json!({"type": "input_json_delta", "partial_json": input})),
                        &mut out,
                    );
                }
                Some(Msg::Step(Step::CodeDone {
                    item_id, result, ..
                })) => enc.push_block(result_block(&item_id, &result), None, &mut out),
                Some(Msg::Step(Step::Container(_) | Step::Turn(_))) => {}
                Some(Msg::Done(Ok(o))) => {
                    let container = container_json(&o.container_id, idle_ttl);
                    enc.finish_with(
                        o.last.stop_reason,
                        o.usage,
                        json!({"container": container}),
                        &mut out,
                    );
                    done = true;
                }
                Some(Msg::Done(Err(e))) => {
                    enc.error(&e, &mut out);
                    done = true;
                }
                None => {
                    let e = GatewayError::Internal("the code interpreter loop stopped".into());
                    enc.error(&e, &mut out);
                    done = true;
                }
            }
        }
        Some((Ok(Bytes::from(out)), (rx, enc, None, done)))
    })
}

/// Without sandboxes: Anthropic hosts its own code execution tool, so a
/// request routed only to `anthropic/` deployments passes through unchanged;
/// any other provider would drop or misread the tool, so it is refused.
fn not_hosted(inner: &Inner, v: &Value) -> Option<GatewayError> {
    let declared = v.get("tools")?.as_array()?.iter().any(|t| {
        t.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("code_execution_"))
    });
    let model = v.get("model")?.as_str()?;
    let deps = inner.router.deployments(model);
    // An unknown model gets the router's own 404.
    if !declared || deps.is_empty() || deps.iter().all(|d| &*d.provider_name == "anthropic") {
        return None;
    }
    Some(GatewayError::BadRequest(format!(
        "model `{model}` is not served by Anthropic, which hosts the code_execution tool, and this \
         gateway has no sandboxes for it (set code_interpreter.brain_url to an Airlock brain)"
    )))
}

fn server_id(item_id: &str) -> String {
    format!("srvtoolu_{}", item_id.trim_start_matches("ci_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_python_tool_and_refuses_the_bash_one() {
        let mut v = json!({"model": "m", "container": "cntr_1", "messages": [],
            "tools": [{"type": "code_execution_20250522", "name": "code_execution"}]});
        assert!(matches!(take_tool(&mut v), Some(Found::Serve(c)) if c == "cntr_1"));
        assert!(v.get("tools").is_none() && v.get("container").is_none());
        let mut v = json!({"model": "m", "messages": [],
            "tools": [{"type": "code_execution_20250825", "name": "code_execution"}]});
        assert!(matches!(take_tool(&mut v), Some(Found::Refuse(_))));
    }

    /// Steps in, Anthropic's events out, one at a time: each step's events are
    /// sent as it arrives (a chunk per step), block indexes count across the
    /// turns, and the end carries the summed usage and the container.
    #[tokio::test]
    async fn a_streamed_loop_becomes_anthropic_events_as_it_runs() {
        use crate::canonical::{ChatResponse, StopReason, Usage};
        use futures_util::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut s = Box::pin(message_stream(
            rx,
            "ci-sum",
            std::time::Duration::from_secs(60),
        ));
        let start = |id: &str| {
            Msg::Step(Step::Event(StreamEvent::Start {
                id: id.into(),
                model: "up".into(),
                input_tokens: 9,
            }))
        };
        let text = |t: &str| Msg::Step(Step::Event(StreamEvent::TextDelta(t.into())));
        let finish = || {
            Msg::Step(Step::Event(StreamEvent::Finish {
                stop_reason: StopReason::ToolUse,
                usage: Usage::default(),
            }))
        };
        let mut events: Vec<(String, Value)> = Vec::new();
        async fn next<S>(s: &mut S) -> Vec<(String, Value)>
        where
            S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
        {
            let chunk: Bytes = StreamExt::next(s).await.unwrap().unwrap();
            let mut got = Vec::new();
            crate::sse::SseSplitter::default().push(&chunk, |raw| {
                let e = crate::sse::parse_event(raw);
                got.push((
                    e.name.unwrap_or_default().to_owned(),
                    serde_json::from_str::<Value>(&e.data).unwrap(),
                ));
            });
            got
        }
        // message_start goes out before the model said anything.
        let first = next(&mut s).await;
        assert_eq!(first[0].0, "message_start");
        events.extend(first);
        tx.send(start("a")).unwrap();
        tx.send(text("Let me run it.")).unwrap();
        let got = next(&mut s).await;
        assert_eq!(got[0].1["content_block"]["type"], "text", "{got:?}");
        events.extend(got);
        tx.send(finish()).unwrap();
        tx.send(Msg::Step(Step::CodeStart {
            item_id: "ci_abc".into(),
            code: "print(45)".into(),
            container_id: "cntr_1".into(),
        }))
        .unwrap();
        // The call is shown before it ran.
        let got = next(&mut s).await;
        events.extend(got);
        let result = CellResult {
            stdout: "45\n".into(),
            ..Default::default()
        };
        tx.send(Msg::Step(Step::CodeDone {
            item_id: "ci_abc".into(),
            code: "print(45)".into(),
            item: Value::Null,
            result,
        }))
        .unwrap();
        events.extend(next(&mut s).await);
        tx.send(start("b")).unwrap();
        tx.send(text("It is 45.")).unwrap();
        events.extend(next(&mut s).await);
        tx.send(Msg::Done(Ok(run::Outcome {
            last: ChatResponse {
                stop_reason: StopReason::EndTurn,
                ..Default::default()
            },
            usage: Usage {
                input_tokens: 30,
                output_tokens: 12,
                ..Default::default()
            },
            container_id: "cntr_1".into(),
        })))
        .unwrap();
        events.extend(next(&mut s).await);
        assert!(StreamExt::next(&mut s).await.is_none());

        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let starts: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, v)| v)
            .collect();
        for (i, b) in starts.iter().enumerate() {
            assert_eq!(b["index"], i, "{b}");
        }
        assert_eq!(
            starts[1]["content_block"],
            json!({"type": "server_tool_use", "id": "srvtoolu_abc", "name": "code_execution", "input": {}})
        );
        assert_eq!(
            events[6].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "{\"code\":\"print(45)\"}"})
        );
        let r = &starts[2]["content_block"];
        assert_eq!(r["type"], "code_execution_tool_result");
        assert_eq!(r["tool_use_id"], "srvtoolu_abc");
        assert_eq!(r["content"]["stdout"], "45\n");
        assert_eq!(r["content"]["return_code"], 0);
        let end = &events[13].1;
        assert_eq!(end["delta"]["stop_reason"], "end_turn");
        assert_eq!(end["delta"]["container"]["id"], "cntr_1");
        assert_eq!(end["usage"]["input_tokens"], 30);
        assert_eq!(end["usage"]["output_tokens"], 12);
    }
}
