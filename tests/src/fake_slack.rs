//! A local fake of the Slack Web API's `chat.postMessage`, following Slack's published
//! behaviour field for field: `POST {base}/chat.postMessage` with `Authorization: Bearer
//! xoxb-…` and a JSON body `{channel, text, thread_ts?}`; success is HTTP 200
//! `{"ok":true,"channel","ts","message":{…}}`; errors are HTTP 200 `{"ok":false,"error":…}`
//! (`not_authed`, `invalid_auth`, `channel_not_found`, `no_text`, `ratelimited`), and rate
//! limiting is HTTP 429 with `Retry-After`. It records every accepted message and can be told
//! to fail the next calls, to simulate an outage.
//!
//! Also signs Events API requests the way Slack does (`X-Slack-Signature: v0=…`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How to fail one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlackFailure {
    /// HTTP 500 with an HTML body (what a proxy in front of an outage returns).
    ServerError,
    /// HTTP 429 with `Retry-After: <secs>`.
    TooManyRequests { retry_after_secs: u64 },
    /// HTTP 200 `{"ok":false,"error":"ratelimited"}`.
    RateLimitedOk,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PostedMessage {
    pub channel: String,
    pub thread_ts: Option<String>,
    pub text: String,
    /// The `ts` the fake assigned.
    pub ts: String,
}

#[derive(Default)]
struct Inner {
    token: String,
    failures: VecDeque<SlackFailure>,
    posted: Vec<PostedMessage>,
    calls: usize,
    /// Requests refused for auth or bad fields, as `(error, body)`.
    rejected: Vec<(String, Value)>,
    next_ts: u64,
}

/// A running fake; serves until the runtime stops.
#[derive(Clone)]
pub struct FakeSlack {
    /// `http://127.0.0.1:PORT/api` — the `api_base_url` to configure.
    pub base_url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeSlack {
    /// Binds `127.0.0.1:0`; accepts only `bot_token`.
    pub async fn start(bot_token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: bot_token.to_string(),
            next_ts: 1_700_000_000,
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .route("/api/chat.postMessage", axum::routing::post(post_message))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Slack");
        let addr = listener.local_addr().expect("fake Slack address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}/api"),
            inner,
        }
    }

    /// The next calls fail, in this order (auth is still checked first).
    pub fn fail_next(&self, failures: &[SlackFailure]) {
        self.inner.lock().unwrap().failures.extend(failures);
    }

    /// Ends an outage early: the failures not yet served are dropped.
    pub fn clear_failures(&self) {
        self.inner.lock().unwrap().failures.clear();
    }

    pub fn posted(&self) -> Vec<PostedMessage> {
        self.inner.lock().unwrap().posted.clone()
    }

    /// Messages posted into one thread.
    pub fn thread(&self, channel: &str, thread_ts: &str) -> Vec<PostedMessage> {
        self.posted()
            .into_iter()
            .filter(|m| m.channel == channel && m.thread_ts.as_deref() == Some(thread_ts))
            .collect()
    }

    /// Every call received, failed or not.
    pub fn calls(&self) -> usize {
        self.inner.lock().unwrap().calls
    }

    pub fn rejected(&self) -> Vec<(String, Value)> {
        self.inner.lock().unwrap().rejected.clone()
    }
}

fn slack_json(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(
        "content-type",
        "application/json; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    resp
}

async fn post_message(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = inner.lock().unwrap();
    inner.calls += 1;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refuse = |inner: &mut Inner, error: &str, body: Value| {
        inner.rejected.push((error.to_string(), body));
        slack_json(StatusCode::OK, json!({"ok": false, "error": error}))
    };
    match token {
        None => return refuse(&mut inner, "not_authed", body),
        Some(t) if t != inner.token => return refuse(&mut inner, "invalid_auth", body),
        Some(_) => {}
    }
    if let Some(failure) = inner.failures.pop_front() {
        return match failure {
            SlackFailure::ServerError => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<html><body>500 Internal Server Error</body></html>",
            )
                .into_response(),
            SlackFailure::TooManyRequests { retry_after_secs } => {
                let mut resp = slack_json(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"ok": false, "error": "ratelimited"}),
                );
                resp.headers_mut().insert(
                    "retry-after",
                    retry_after_secs.to_string().parse().expect("number header"),
                );
                resp
            }
            SlackFailure::RateLimitedOk => {
                slack_json(StatusCode::OK, json!({"ok": false, "error": "ratelimited"}))
            }
        };
    }
    let Some(channel) = body["channel"].as_str().filter(|c| !c.is_empty()) else {
        return refuse(&mut inner, "channel_not_found", body);
    };
    let Some(text) = body["text"].as_str().filter(|t| !t.is_empty()) else {
        return refuse(&mut inner, "no_text", body);
    };
    let thread_ts = match &body["thread_ts"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        _ => return refuse(&mut inner, "invalid_arguments", body),
    };
    inner.next_ts += 1;
    let ts = format!("{}.000100", inner.next_ts);
    let message = PostedMessage {
        channel: channel.to_string(),
        thread_ts: thread_ts.clone(),
        text: text.to_string(),
        ts: ts.clone(),
    };
    inner.posted.push(message);
    let mut msg =
        json!({"type": "message", "user": "UBOTFAKE", "bot_id": "BFAKE", "text": text, "ts": ts});
    if let Some(t) = &thread_ts {
        msg["thread_ts"] = json!(t);
    }
    slack_json(
        StatusCode::OK,
        json!({"ok": true, "channel": channel, "ts": ts, "message": msg}),
    )
}

/// `v0=<hex>` HMAC-SHA256 over `v0:{timestamp}:{body}`, as Slack signs requests.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(format!("v0:{timestamp}:").as_bytes());
    ctx.update(body);
    format!("v0={}", hex(ctx.sign().as_ref()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
