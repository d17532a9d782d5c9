//! Inbound HTTP routes: one module per wire format, plus key management.

pub mod anthropic;
pub mod keys;
pub mod openai;

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

pub(crate) fn routes<S: Clone + Send + Sync + 'static>(inner: State) -> Router<S> {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/chat/completions", post(openai::chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/models", get(openai::models))
        .route("/models", get(openai::models))
        .route("/model/info", get(openai::model_info))
        .route("/v1/model/info", get(openai::model_info))
        .route("/health", get(health))
        .route("/health/liveliness", get(health))
        .route("/health/readiness", get(health))
        .route("/key/generate", post(keys::generate))
        .route("/key/info", get(keys::info))
        .route("/key/delete", post(keys::delete))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(inner)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "healthy", "version": env!("CARGO_PKG_VERSION")}))
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

pub(crate) fn authenticate(inner: &Inner, h: &HeaderMap) -> Result<Caller, GatewayError> {
    inner.keys.authenticate(presented_key(h))
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
