//! Inbound HTTP routes: one module per wire format, plus key management.

pub mod anthropic;
pub mod code_execution;
pub mod code_interpreter;
pub mod endpoints;
pub mod health;
pub mod keys;
pub mod openai;
pub mod responses;

use crate::Inner;
use crate::error::{GatewayError, WireFormat};
use crate::keys::Caller;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use http::HeaderMap;
use std::sync::Arc;

/// Large enough for long contexts with images.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub(crate) type State = Arc<Inner>;

/// `/metrics` is the standalone binary's; an embedding app serves
/// [`crate::Gateway::metrics_text`] in its own.
pub(crate) fn metrics_routes<S: Clone + Send + Sync + 'static>(inner: State) -> Router<S> {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/metrics/", get(health::metrics))
        .with_state(inner)
}

pub(crate) fn routes<S: Clone + Send + Sync + 'static>(inner: State) -> Router<S> {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/chat/completions", post(openai::chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/messages", post(anthropic::messages))
        .route("/v1/responses", post(responses::create))
        .route("/responses", post(responses::create))
        .route(
            "/v1/containers",
            post(code_interpreter::create_container).get(code_interpreter::list_containers),
        )
        .route(
            "/v1/containers/{id}",
            get(code_interpreter::show_container).delete(code_interpreter::delete_container),
        )
        .route("/v1/embeddings", post(endpoints::embeddings))
        .route("/embeddings", post(endpoints::embeddings))
        .route("/v1/completions", post(endpoints::completions))
        .route("/completions", post(endpoints::completions))
        .route("/v1/messages/count_tokens", post(endpoints::count_tokens))
        .route("/messages/count_tokens", post(endpoints::count_tokens))
        .route("/v1/models", get(openai::models))
        .route("/models", get(openai::models))
        .route("/health", get(health::models))
        .route("/health/liveliness", get(health::liveliness))
        .route("/health/liveness", get(health::liveliness))
        .route("/health/readiness", get(health::readiness))
        .route("/model/info", get(openai::model_info))
        .route("/v1/model/info", get(openai::model_info))
        .route("/key/generate", post(keys::generate))
        .route("/key/info", get(keys::info))
        .route("/key/update", post(keys::update))
        .route("/key/delete", post(keys::delete))
        .route("/spend/logs", get(keys::spend_logs))
        .layer(axum::middleware::from_fn(trace_request))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(inner)
}

/// With tracing on, a `gateway.request` span per request, joined to the caller's trace when the
/// request carries a W3C `traceparent` header (the brain's, or any instrumented client's). It is
/// a [`airlock_telemetry::HotSpan`] (a compact record, not a `tracing` span entered on every
/// poll nor an SDK span); JSON log lines written while serving the request carry its trace id.
/// Off: one relaxed load.
async fn trace_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use airlock_telemetry::AttrValue;
    let span = airlock_telemetry::HotSpan::start(
        "gateway.request",
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let Some(mut span) = span else {
        return next.run(req).await;
    };
    span.set("http.request.method", method_attribute(req.method()));
    span.set(
        "http.route",
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or(AttrValue::Static(""), |p| AttrValue::text(p.as_str())),
    );
    let response = span.scope(next.run(req)).await;
    span.set(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    response
}

/// `http.request.method`: a static string for the standard methods (no copy).
fn method_attribute(m: &http::Method) -> airlock_telemetry::AttrValue {
    use airlock_telemetry::AttrValue;
    match *m {
        http::Method::GET => AttrValue::Static("GET"),
        http::Method::POST => AttrValue::Static("POST"),
        _ => AttrValue::text(m.as_str()),
    }
}

/// The key a client presented: `Authorization: Bearer`, else `x-api-key`, else `api-key`.
pub(crate) fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(v) = h
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let k = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v)
            .trim();
        if !k.is_empty() {
            return Some(k);
        }
    }
    h.get("x-api-key")
        .or_else(|| h.get("api-key"))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Who is calling (cached key check; only a never-seen key waits for the database).
pub(crate) async fn authenticate(inner: &Inner, h: &HeaderMap) -> Result<Caller, GatewayError> {
    inner.keys.authenticate(presented_key(h)).await
}

/// Read a request body (limit enforced by the layer) or answer in `format`.
pub(crate) async fn body_bytes(
    body: axum::body::Body,
    format: WireFormat,
) -> Result<bytes::Bytes, axum::response::Response> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            GatewayError::BadRequest(format!("cannot read body: {e}")).into_response_for(format)
        })
}
