//! Code interpreter interception on `/v1/chat/completions`, and OpenAI's
//! Containers API (`/v1/containers`) over the interceptor's containers.
//!
//! Chat Completions has no code-interpreter items: the client gets the final
//! assistant message (streamed as ordinary chunks when asked), as LiteLLM's
//! interceptor answers. The container used is named in the response's
//! `x-airlock-container-id` header so a client can reuse it.

use super::responses::Msg;
use super::responses::mentions_code_tool;
use super::{State, authenticate};
use crate::Inner;
use crate::canonical::{ChatResponse, StreamEvent};
use crate::code_interpreter::containers::Containers;
use crate::code_interpreter::run;
use crate::error::{GatewayError, WireFormat};
use crate::formats::openai as oa;
use crate::keys::Caller;
use crate::proxy::{json_response, set_rate_headers};
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

/// The `code_interpreter` tool taken out of a chat body, if it has one.
fn take_code_tool(v: &mut Value) -> Option<Value> {
    let tools = v.get_mut("tools")?.as_array_mut()?;
    let pos = tools
        .iter()
        .position(|t| t.get("type").and_then(Value::as_str) == Some("code_interpreter"))?;
    let tool = tools.remove(pos);
    let empty = tools.is_empty();
    let o = v.as_object_mut()?;
    if empty {
        o.remove("tools");
    }
    if o.get("tool_choice")
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        == Some("code_interpreter")
    {
        o.insert(
            "tool_choice".into(),
            serde_json::json!({"type": "function", "function": {"name": "code_interpreter"}}),
        );
    } else if empty {
        o.remove("tool_choice");
    }
    Some(tool.get("container").cloned().unwrap_or(Value::Null))
}

/// `Some(answer)` when this chat request is one to intercept.
pub(crate) async fn chat(inner: &Arc<Inner>, caller: &Caller, body: &Bytes) -> Option<Response> {
    if !mentions_code_tool(body) {
        return None;
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let container = take_code_tool(&mut v)?;
    let Some(ci) = inner.code_interpreter.get() else {
        // No provider hosts code_interpreter on Chat Completions (OpenAI only on
        // Responses): passing it on would drop it or fail upstream.
        let e = GatewayError::BadRequest(
            "the code_interpreter tool on /v1/chat/completions needs Airlock sandboxes: set \
             code_interpreter.brain_url to an Airlock brain (or call /v1/responses with a model \
             whose provider hosts the tool)"
                .into(),
        );
        return Some(e.into_response_for(WireFormat::OpenAi));
    };
    let r = async {
        let mut req = oa::decode_request(&v)?;
        if matches!(&req.tool_choice, Some(crate::canonical::ToolChoice::Tool(n)) if n == "code_interpreter")
        {
            // Forcing the tool on every turn would never let the loop end.
            req.tool_choice = None;
        }
        caller.check(&req.model)?;
        let (rate, parallel) = inner.keys.admit(caller)?;
        let stream = req.stream;
        let include_usage = v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let model = req.model.clone();
        let parallel = parallel.map(Arc::new);
        let mut resp = if stream {
            let mut rx = super::responses::spawn_loop(ci, inner, caller.clone(), req, container, parallel);
            let container_id = match rx.recv().await {
                Some(Msg::Step(run::Step::Container(id))) => id,
                Some(Msg::Done(Err(e))) => return Err(e),
                _ => {
                    return Err(GatewayError::Internal(
                        "the code interpreter loop stopped".into(),
                    ));
                }
            };
            let enc = oa::StreamEncoder::new(&model, include_usage);
            let mut r = super::responses::sse_response(chat_stream(rx, enc));
            if let Ok(h) = http::HeaderValue::from_str(&container_id) {
                r.headers_mut().insert("x-airlock-container-id", h);
            }
            r
        } else {
            let mut sink = |_: run::Step| {};
            let o = run::run(ci, inner, caller, req, &container, parallel, &mut sink).await?;
            let mut last: ChatResponse = o.last;
            last.usage = o.usage;
            let mut r = json_response(Bytes::from(oa::encode_response(&last, &model).to_string()));
            if let Ok(h) = http::HeaderValue::from_str(&o.container_id) {
                r.headers_mut().insert("x-airlock-container-id", h);
            }
            r
        };
        set_rate_headers(resp.headers_mut(), rate);
        Ok::<_, GatewayError>(resp)
    }
    .await;
    Some(r.unwrap_or_else(|e| {
        inner.metrics.error(&e);
        e.into_response_for(WireFormat::OpenAi)
    }))
}

/// The loop's streamed model events as one chat completion stream: one role
/// chunk, every turn's text and client tool call deltas as the model sends
/// them (code calls run in between, unseen), then one finish chunk with the
/// last turn's reason and the usage summed over all turns.
fn chat_stream(
    rx: tokio::sync::mpsc::UnboundedReceiver<Msg>,
    mut enc: oa::StreamEncoder,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let start = StreamEvent::Start {
        id: String::new(),
        model: String::new(),
        input_tokens: 0,
    };
    let mut out = Vec::new();
    enc.push(&start, &mut out);
    let init = (rx, enc, Some(out), false);
    futures_util::stream::unfold(init, |(mut rx, mut enc, first, done)| async move {
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
                Some(Msg::Step(run::Step::Event(ev))) => match ev {
                    StreamEvent::Start { .. } | StreamEvent::Finish { .. } => {}
                    ev => enc.push(&ev, &mut out),
                },
                Some(Msg::Step(_)) => {}
                Some(Msg::Done(Ok(o))) => {
                    let finish = StreamEvent::Finish {
                        stop_reason: o.last.stop_reason,
                        usage: o.usage,
                    };
                    enc.push(&finish, &mut out);
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

fn no_sandboxes() -> GatewayError {
    GatewayError::NotFound(
        "containers need code interpreter sandboxes: run the gateway in an Airlock brain, \
         or set code_interpreter.brain_url"
            .into(),
    )
}

async fn who(inner: &Inner, h: &http::HeaderMap) -> Result<Caller, Response> {
    authenticate(inner, h)
        .await
        .map_err(|e| e.into_response_for(WireFormat::OpenAi))
}

fn answer(r: Result<Value, GatewayError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response_for(WireFormat::OpenAi),
    }
}

/// `POST /v1/containers` `{"name"}` (openai-python `container_create_params.py`).
pub(crate) async fn create_container(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match who(&inner, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(ci) = inner.code_interpreter.get() else {
        return answer(Err(no_sandboxes()));
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return answer(Err(GatewayError::BadRequest(format!(
                "invalid JSON body: {e}"
            ))));
        }
    };
    let Some(name) = v.get("name").and_then(Value::as_str) else {
        return answer(Err(GatewayError::BadRequest("`name` is required".into())));
    };
    answer(Containers::create(ci, &inner, &caller, name).await)
}

pub(crate) async fn list_containers(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: http::HeaderMap,
) -> Response {
    let caller = match who(&inner, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match inner.code_interpreter.get() {
        Some(ci) => answer(Ok(Containers::list(ci, &caller))),
        None => answer(Err(no_sandboxes())),
    }
}

pub(crate) async fn show_container(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: http::HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let caller = match who(&inner, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match inner.code_interpreter.get() {
        Some(ci) => answer(Containers::show(ci, &caller, &id)),
        None => answer(Err(no_sandboxes())),
    }
}

pub(crate) async fn delete_container(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: http::HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let caller = match who(&inner, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match inner.code_interpreter.get() {
        Some(ci) => answer(Containers::delete(ci, &inner, &caller, &id).await),
        None => answer(Err(no_sandboxes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_code_tool_out() {
        let mut v = serde_json::json!({"model": "m", "messages": [],
            "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
            "tool_choice": "auto"});
        assert_eq!(
            take_code_tool(&mut v),
            Some(serde_json::json!({"type": "auto"}))
        );
        assert!(v.get("tools").is_none() && v.get("tool_choice").is_none());
        let mut v = serde_json::json!({"model": "m", "messages": [],
            "tools": [{"type": "function", "function": {"name": "f"}}]});
        assert_eq!(take_code_tool(&mut v), None);
    }
}
