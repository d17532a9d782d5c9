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

use super::responses::sse_response;
use crate::Inner;
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
        let mut req = an::decode_request(&v)?;
        caller.check(&req.model)?;
        let (rate, parallel) = inner.keys.admit(caller)?;
        let model = req.model.clone();
        let stream = req.stream;
        // Anthropic's result blocks are sent whole: the loop's turns are collected.
        req.stream = false;
        let mut content: Vec<Value> = Vec::new();
        let mut sink = |step: Step| match step {
            Step::Turn(t) => {
                let m = an::encode_response(&t, "");
                content.extend(m["content"].as_array().cloned().unwrap_or_default());
            }
            Step::Container(_) | Step::Event(_) => {}
            Step::CodeStart { item_id, code, .. } => content.push(json!({
                "type": "server_tool_use", "id": server_id(&item_id),
                "name": "code_execution", "input": {"code": code},
            })),
            Step::CodeDone {
                item_id, result, ..
            } => {
                let mut stderr = result.stderr.clone();
                if let Some(e) = &result.error {
                    stderr.push_str(if e.traceback.is_empty() {
                        &e.value
                    } else {
                        &e.traceback
                    });
                }
                content.push(json!({
                    "type": "code_execution_tool_result", "tool_use_id": server_id(&item_id),
                    "content": {"type": "code_execution_result", "stdout": result.stdout,
                                "stderr": stderr, "return_code": i32::from(result.error.is_some()),
                                "content": []},
                }));
            }
        };
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
        let expires =
            chrono::Utc::now() + chrono::Duration::seconds(ci.settings.idle_ttl.as_secs() as i64);
        let msg = json!({
            "id": format!("msg_{}", uuid::Uuid::new_v4().simple()),
            "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": o.last.stop_reason.anthropic(), "stop_sequence": null,
            "usage": {"input_tokens": o.usage.input_tokens, "output_tokens": o.usage.output_tokens,
                      "cache_read_input_tokens": o.usage.cache_read_tokens,
                      "cache_creation_input_tokens": o.usage.cache_creation_tokens},
            "container": {"id": o.container_id, "expires_at": expires.to_rfc3339()},
        });
        let mut resp = if stream {
            let mut out = Vec::new();
            encode_stream(&msg, &mut out);
            sse_response(futures_util::stream::once(async move {
                Ok::<_, std::io::Error>(Bytes::from(out))
            }))
        } else {
            json_response(Bytes::from(msg.to_string()))
        };
        set_rate_headers(resp.headers_mut(), rate);
        Ok::<_, GatewayError>(resp)
    }
    .await;
    Some(r.unwrap_or_else(|e| {
        inner.metrics.error(&e);
        e.into_response_for(WireFormat::Anthropic)
    }))
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

fn event(name: &str, data: Value, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
}

/// A finished message as Anthropic's stream events (message_start, one
/// start/delta/stop per block, message_delta, message_stop). Result blocks
/// arrive whole in `content_block_start`, as Anthropic streams them.
fn encode_stream(msg: &Value, out: &mut Vec<u8>) {
    let mut start = msg.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = 0.into();
    event(
        "message_start",
        json!({"type": "message_start", "message": start}),
        out,
    );
    for (i, b) in msg["content"].as_array().into_iter().flatten().enumerate() {
        let ty = b["type"].as_str().unwrap_or_default();
        let (head, delta) = match ty {
            "text" => (
                json!({"type": "text", "text": ""}),
                Some(json!({"type": "text_delta", "text": b["text"]})),
            ),
            "tool_use" | "server_tool_use" => {
                let mut h = b.clone();
                h["input"] = json!({});
                (
                    h,
                    Some(
                        json!({"type": "input_json_delta", "partial_json": b["input"].to_string()}),
                    ),
                )
            }
            _ => (b.clone(), None),
        };
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": head}),
            out,
        );
        if let Some(d) = delta {
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": d}),
                out,
            );
        }
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
            out,
        );
    }
    event(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": null},
               "usage": {"output_tokens": msg["usage"]["output_tokens"]}}),
        out,
    );
    event("message_stop", json!({"type": "message_stop"}), out);
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
}
