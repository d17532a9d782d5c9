//! The brain's HTTP API (DESIGN.md, "Contract: brain HTTP API").
//!
//! Auth: `/v1/*` routes need `Authorization: Bearer <master key>` (compared in constant time),
//! except `/v1/sessions*`, which also take a gateway virtual key: such a key starts sessions
//! it owns and sees and drives only those ([`Caller`]; another key's session is a 404).
//! `/healthz` and `/metrics` are open (they reveal counts, no data).

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
    let master_only = Router::new()
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
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_master_key,
        ));
    // Sessions also take virtual keys: each sees and drives only the sessions it started.
    let sessions_routes = Router::new()
        .route("/sessions", post(sessions::create).get(sessions::list))
        .route("/sessions/{id}", get(sessions::show))
        .route("/sessions/{id}/events", get(sessions::events))
        .route("/sessions/{id}/messages", post(sessions::message))
        .route("/sessions/{id}/cancel", post(sessions::cancel))
        .layer(middleware::from_fn_with_state(state.clone(), require_key));
    let v1 = master_only.merge(sessions_routes);
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

/// Who called a `/v1` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Master,
    /// A gateway virtual key: `vk:<sha256 of the key>` (the MCP principal id).
    Key(String),
}

impl Caller {
    /// The owner recorded on the sessions this caller starts and the only owner it may see;
    /// `None` for the master key, which sees every session.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Caller::Master => None,
            Caller::Key(id) => Some(id),
        }
    }

    /// Whether a session with this `origin` is visible to the caller.
    pub fn may_see(&self, origin: &serde_json::Value) -> bool {
        match self {
            Caller::Master => true,
            Caller::Key(id) => origin.get("owner").and_then(|o| o.as_str()) == Some(id),
        }
    }
}

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

async fn require_master_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match bearer(&request) {
        Some(token) if state.master_key.matches(token.as_bytes()) => Ok(next.run(request).await),
        // A valid virtual key is told why, rather than that it is not a key.
        Some(token)
            if crate::mcp::auth::principal_of(&state, token)
                .await
                .is_some() =>
        {
            Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "this route needs the master key (a virtual key may use /v1/sessions only)",
            ))
        }
        _ => Err(ApiError::unauthorized()),
    }
}

/// The master key or a live virtual key; the handler gets a [`Caller`].
async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(&request).ok_or_else(ApiError::unauthorized)?;
    let principal = crate::mcp::auth::principal_of(&state, token)
        .await
        .ok_or_else(ApiError::unauthorized)?;
    let caller = match principal.kind {
        crate::mcp::auth::PrincipalKind::Master => Caller::Master,
        crate::mcp::auth::PrincipalKind::VirtualKey => Caller::Key(principal.id),
    };
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}
