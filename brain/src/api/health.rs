//! `/healthz` and `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// 200 when the database answers; 503 otherwise (the backend is not probed: a slow docker
/// engine should not take the API out of a load balancer).
pub async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "backend": state.backends.default_kind(),
            "database": state.store.engine(),
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut active = state.store.count_live_by_backend().await?;
    let default = state.backends.default_kind().as_str();
    if !active.iter().any(|(b, _)| b == default) {
        active.push((default.to_string(), 0));
        active.sort();
    }
    let mut text = state.metrics.render(&active);
    if !state.pools.configs().is_empty() {
        text.push_str(&state.metrics.render_pools(&state.pools.depth_by_backend()));
    }
    // The embedded gateway's own counters (its routes leave /metrics to the brain).
    if let Some(models) = &state.models {
        text.push_str(&models.gateway.metrics_text());
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
