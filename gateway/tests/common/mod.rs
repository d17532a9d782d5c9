//! Test helpers: fake OpenAI and Anthropic servers that follow the published
//! wire formats (bodies, SSE event sequences, error bodies), and an in-process
//! gateway served on 127.0.0.1:0.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post as route_post;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake does for the next request (default: answer normally).
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Reply with this HTTP status and the provider's error body; optional Retry-After seconds.
    Status(u16, Option<u64>),
    /// Sleep this long before answering normally.
    Delay(Duration),
}

#[derive(Default)]
pub struct FakeState {
    pub requests: Mutex<Vec<(HeaderMap, Value)>>,
    pub script: Mutex<VecDeque<Behavior>>,
    pub count: AtomicUsize,
    pub name: String,
}

pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
}

impl Fake {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn push(&self, b: Behavior) {
        self.state.script.lock().unwrap().push_back(b);
    }
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }
    pub fn last_body(&self) -> Value {
        self.state
            .requests
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .1
            .clone()
    }
    pub fn last_headers(&self) -> HeaderMap {
        self.state
            .requests
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .0
            .clone()
    }
}

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// Does the conversation end with tool results (so the model should answer with text)?
fn wants_tool_call(body: &Value, openai: bool) -> Option<String> {
    let tools = body.get("tools")?.as_array()?;
    let first = tools.first()?;
    let name = if openai {
        first.pointer("/function/name")?.as_str()?
    } else {
        first.get("name")?.as_str()?
    };
    let last = body.get("messages")?.as_array()?.last()?;
    let answered = if openai {
        last.get("role").and_then(Value::as_str) == Some("tool")
    } else {
        last.get("content")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    };
    if answered {
        None
    } else {
        Some(name.to_owned())
    }
}

async fn next_behavior(st: &FakeState, headers: &HeaderMap, body: &Value) -> Option<Behavior> {
    st.count.fetch_add(1, Ordering::SeqCst);
    st.requests
        .lock()
        .unwrap()
        .push((headers.clone(), body.clone()));
    let b = st.script.lock().unwrap().pop_front();
    if let Some(Behavior::Delay(d)) = &b {
        tokio::time::sleep(*d).await;
        return None;
    }
    b
}

fn sse(body: String) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}

// ---------------------------------------------------------------- OpenAI

pub async fn fake_openai() -> Fake {
    let state = Arc::new(FakeState {
        name: "fake-openai".into(),
        ..Default::default()
    });
    let app = Router::new()
        .route("/v1/chat/completions", route_post(openai_handler))
        .with_state(state.clone());
    Fake {
        addr: serve(app).await,
        state,
    }
}

fn openai_error(status: u16, retry_after: Option<u64>) -> Response {
    let (ty, code, msg) = match status {
        429 => (
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached for requests",
        ),
        400 => (
            "invalid_request_error",
            "invalid_value",
            "Invalid value for 'messages'",
        ),
        401 => (
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided",
        ),
        _ => (
            "server_error",
            "server_error",
            "The server had an error while processing your request.",
        ),
    };
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"error": {"message": msg, "type": ty, "param": null, "code": code}})),
    )
        .into_response();
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert("retry-after", s.to_string().parse().unwrap());
    }
    r
}

async fn openai_handler(
    State(st): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return openai_error(400, None),
    };
    if let Some(Behavior::Status(s, ra)) = next_behavior(&st, &headers, &body).await {
        return openai_error(s, ra);
    }
    if body.get("messages").and_then(Value::as_array).is_none() {
        return openai_error(400, None);
    }
    let model = body["model"].as_str().unwrap_or("gpt").to_owned();
    let tool = wants_tool_call(&body, true);
    let stream = body["stream"].as_bool().unwrap_or(false);
    let usage = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
    if !stream {
        let (message, finish) = match &tool {
            Some(name) => (
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "call_fake1", "type": "function", "function": {"name": name, "arguments": "{\"command\":\"ls -la\"}"}}]}),
                "tool_calls",
            ),
            None => (
                json!({"role": "assistant", "content": "Hello from fake-openai", "refusal": null}),
                "stop",
            ),
        };
        return axum::Json(json!({
            "id": "chatcmpl-fake1", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage, "system_fingerprint": "fp_fake"
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake1", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": model, "system_fingerprint": "fp_fake",
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        )
    };
    let mut out = chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    );
    let finish = match &tool {
        Some(name) => {
            out += &chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                                                  "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            );
            for piece in ["{\"comm", "and\":\"ls", " -la\"}"] {
                out += &chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                );
            }
            "tool_calls"
        }
        None => {
            for piece in ["Hello", " from", " fake-openai"] {
                out += &chunk(json!({"content": piece}), Value::Null);
            }
            "stop"
        }
    };
    out += &chunk(json!({}), json!(finish));
    if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
        out += &format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake1", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": model, "choices": [], "usage": usage})
        );
    }
    out += "data: [DONE]\n\n";
    sse(out)
}

// ---------------------------------------------------------------- Anthropic

pub async fn fake_anthropic() -> Fake {
    let state = Arc::new(FakeState {
        name: "fake-anthropic".into(),
        ..Default::default()
    });
    let app = Router::new()
        .route("/v1/messages", route_post(anthropic_handler))
        .with_state(state.clone());
    Fake {
        addr: serve(app).await,
        state,
    }
}

fn anthropic_error(status: u16, retry_after: Option<u64>, msg: Option<&str>) -> Response {
    let ty = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"type": "error", "error": {"type": ty, "message": msg.unwrap_or("Fake Anthropic error")}})),
    )
        .into_response();
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert("retry-after", s.to_string().parse().unwrap());
    }
    r
}

async fn anthropic_handler(
    State(st): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return anthropic_error(400, None, Some("invalid JSON")),
    };
    if let Some(Behavior::Status(s, ra)) = next_behavior(&st, &headers, &body).await {
        return anthropic_error(s, ra, None);
    }
    if headers.get("anthropic-version").is_none() {
        return anthropic_error(400, None, Some("anthropic-version: header is required"));
    }
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return anthropic_error(400, None, Some("max_tokens: Field required"));
    }
    if body["messages"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["role"] == "system"))
    {
        return anthropic_error(400, None, Some("messages: Unexpected role \"system\""));
    }
    let model = body["model"].as_str().unwrap_or("claude").to_owned();
    let tool = wants_tool_call(&body, false);
    let stream = body["stream"].as_bool().unwrap_or(false);
    if !stream {
        let (content, stop) = match &tool {
            Some(name) => (
                json!([{"type": "text", "text": "Let me look."},
                       {"type": "tool_use", "id": "toolu_fake1", "name": name, "input": {"command": "ls -la"}}]),
                "tool_use",
            ),
            None => (
                json!([{"type": "text", "text": "Hello from fake-anthropic"}]),
                "end_turn",
            ),
        };
        return axum::Json(json!({
            "id": "msg_fake1", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 13, "output_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        }))
        .into_response();
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_fake1", "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 13, "output_tokens": 1}}}),
    );
    out += &ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    out += &ev("ping", json!({"type": "ping"}));
    let text: &[&str] = if tool.is_some() {
        &["Let me", " look."]
    } else {
        &["Hello", " from", " fake-anthropic"]
    };
    for t in text {
        out += &ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
        );
    }
    out += &ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    if let Some(name) = &tool {
        out += &ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_fake1", "name": name, "input": {}}}),
        );
        for p in ["", "{\"command\"", ": \"ls -la\"}"] {
            out += &ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": p}}),
            );
        }
        out += &ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        );
    }
    let stop = if tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    out += &ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 9}}),
    );
    out += &ev("message_stop", json!({"type": "message_stop"}));
    sse(out)
}

// ---------------------------------------------------------------- gateway

pub struct TestGateway {
    pub gw: gateway::Gateway,
    pub base: String,
}

pub async fn start_gateway(yaml: &str, store: gateway::store::Store) -> TestGateway {
    let cfg = gateway::config::Config::from_yaml_str(
        yaml,
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
    )
    .unwrap();
    start_gateway_with_config(cfg, store).await
}

/// [`start_gateway`] with an already-parsed config (e.g. one read with a fixed environment).
pub async fn start_gateway_with_config(
    cfg: gateway::config::Config,
    store: gateway::store::Store,
) -> TestGateway {
    let gw = gateway::Gateway::from_config(cfg, store).await.unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let app = gw.router();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    TestGateway { gw, base }
}

/// Rate limits count over fixed wall-clock minutes (LiteLLM's windows), so calls meant to
/// share a window must not straddle a minute's end: if less than `need` is left of the
/// current minute, wait for the next one.
pub async fn clear_of_minute_end(need: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let left = Duration::from_millis(60_000 - (now.as_millis() % 60_000) as u64);
    if left < need {
        tokio::time::sleep(left + Duration::from_millis(100)).await;
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// POST JSON with a bearer key; returns (status, body text).
pub async fn post(url: &str, key: &str, body: &Value) -> (u16, String) {
    let r = client()
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Parse an SSE body into (event name, data) pairs.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let mut name = None;
            let mut data = String::new();
            for line in b.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            (name, data)
        })
        .collect()
}
