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
    let sessions = state.store.count_sessions_by_status().await?;
    let replies = state.store.count_pending_replies().await?;
    if !state.pools.configs().is_empty() {
        state
            .metrics
            .set_pool_depth(&state.pools.depth_by_backend());
    }
    let mut text = state.metrics.render(&active, &sessions, replies);
    // The embedded gateway's own counters (its routes leave /metrics to the brain).
    if let Some(models) = &state.models {
        text.push_str(&models.gateway.metrics_text());
    }
    // And the embedded vault proxy's (a standalone one serves its own).
    if let Some(text_of_vault) = state.broker.as_ref().and_then(|b| b.metrics_text()) {
        text.push_str(&text_of_vault);
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
