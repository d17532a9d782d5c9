//! The brain's HTTP API (DESIGN.md, "Contract: brain HTTP API").
//!
//! Auth: every `/v1/*` route needs `Authorization: Bearer <master key>` (compared in constant
//! time); `/healthz` and `/metrics` are open (they reveal counts, no data).

pub(crate) mod approvals;
pub(crate) mod audit;
mod extract;
mod health;
pub(crate) mod sandboxes;
pub(crate) mod sessions;
#[cfg(test)]
mod tests;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};

pub use extract::ApiJson;

use crate::error::{ApiError, log_internal_errors};
use crate::state::AppState;

pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::show).delete(sandboxes::destroy),
        )
        .route("/sandboxes/{id}/exec", post(sandboxes::exec))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/snapshot", post(sandboxes::snapshot))
        .route(
            "/snapshots/{id}",
            get(sandboxes::show_snapshot).delete(sandboxes::delete_snapshot),
        )
        .route("/workspaces/{name}", delete(sandboxes::delete_workspace))
        .route("/audit/egress", get(audit::egress))
        .route("/audit/verify", get(audit::verify))
        .route("/approvals", get(approvals::list))
        .route("/approvals/{id}", post(approvals::decide))
        .route("/sessions", post(sessions::create).get(sessions::list))
        .route("/sessions/{id}", get(sessions::show))
        .route("/sessions/{id}/events", get(sessions::events))
        .route("/sessions/{id}/messages", post(sessions::message))
        .route("/sessions/{id}/cancel", post(sessions::cancel))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_master_key,
        ));
    // The gateway's routes (/v1/chat/completions, /v1/messages, /v1/models, /key/*) take
    // virtual keys as well as the master key, so they sit beside the master-key-only /v1.
    let gateway = match &state.models {
        Some(models) => models.gateway.routes(),
        None => Router::new(),
    };
    let mut router = Router::new()
        .merge(gateway)
        .nest("/v1", v1)
        .merge(crate::ui::routes());
    if state.config.mcp.enabled {
        router = router.merge(crate::mcp::routes());
    }
    router
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        // Outside the master-key layer: webhooks authenticate by their signature.
        .route("/hooks/slack", post(crate::triggers::slack::hook))
        .route(
            "/hooks/slack/interactive",
            post(crate::ui::slack::interactive),
        )
        .route("/hooks/github", post(crate::triggers::github::hook))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::count_refused_webhooks,
        ))
        .fallback(not_found)
        .layer(middleware::from_fn(log_internal_errors))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn require_master_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented {
        Some(token) if state.master_key.matches(token.as_bytes()) => Ok(next.run(request).await),
        _ => Err(ApiError::unauthorized()),
    }
}
