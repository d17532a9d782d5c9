//! Code interpreter interception on `/v1/chat/completions`, and OpenAI's
//! Containers API (`/v1/containers`) over the interceptor's containers.
//!
//! Chat Completions has no code-interpreter items: the client gets the final
//! assistant message (streamed as ordinary chunks when asked), as LiteLLM's
//! interceptor answers. The container used is named in the response's
//! `x-airlock-container-id` header so a client can reuse it.

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
    let ci = inner.code_interpreter.get()?;
    if !mentions_code_tool(body) {
        return None;
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let container = take_code_tool(&mut v)?;
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
        let mut sink = |_: run::Step| {};
        let o = run::run(
            ci,
            inner,
            caller,
            req,
            &container,
            parallel.map(Arc::new),
            &mut sink,
        )
        .await?;
        let mut last: ChatResponse = o.last;
        last.usage = o.usage;
        let mut resp = if stream {
            let mut out = Vec::new();
            let mut enc = oa::StreamEncoder::new(&model, include_usage);
            for ev in events_of(&last) {
                enc.push(&ev, &mut out);
            }
            super::responses::sse_response(futures_util::stream::once(async move {
                Ok::<_, std::io::Error>(Bytes::from(out))
            }))
        } else {
            json_response(Bytes::from(oa::encode_response(&last, &model).to_string()))
        };
        set_rate_headers(resp.headers_mut(), rate);
        if let Ok(h) = http::HeaderValue::from_str(&o.container_id) {
            resp.headers_mut().insert("x-airlock-container-id", h);
        }
        Ok::<_, GatewayError>(resp)
    }
    .await;
    Some(r.unwrap_or_else(|e| {
        inner.metrics.error(&e);
        e.into_response_for(WireFormat::OpenAi)
    }))
}

/// A complete answer as the canonical events of one stream.
pub(crate) fn events_of(r: &ChatResponse) -> Vec<StreamEvent> {
    let mut evs = vec![StreamEvent::Start {
        id: r.id.clone(),
        model: r.model.clone(),
        input_tokens: r.usage.input_tokens,
    }];
    let text = r.text();
    if !text.is_empty() {
        evs.push(StreamEvent::TextDelta(text));
    }
    for (i, c) in r.tool_calls().enumerate() {
        evs.push(StreamEvent::ToolCallStart {
            index: i,
            id: c.id.clone(),
            name: c.name.clone(),
        });
        evs.push(StreamEvent::ToolCallDelta {
            index: i,
            arguments: c.arguments.clone(),
        });
    }
    evs.push(StreamEvent::Finish {
        stop_reason: r.stop_reason,
        usage: r.usage,
    });
    evs
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
