//! `/v1/approvals`: held egress requests of the vault proxy (`egress: ask`), and answering
//! them (DESIGN.md, "Contract: console and approvals"). Master key only (the `/v1` layer).
//!
//! The answer is forwarded to the embedded or remote proxy, which writes the `approval`
//! audit record naming the decision and who made it (`api:<by>` here; the console, Slack
//! and GitHub paths name their own users).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::extract::ApiJson;
use crate::credentials::{ApprovalDecision, CredentialBroker, PendingApproval};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    pub decision: ApprovalDecision,
    /// Who is answering (free text, audited as `api:<by>`).
    pub by: Option<String>,
}

pub(crate) fn broker(state: &AppState) -> Result<&dyn CredentialBroker, ApiError> {
    state.broker.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_available",
            "no vault proxy is configured (vault.mode off): there are no approvals",
        )
    })
}

pub async fn list(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let pending = broker(&state)?.approvals().await?;
    Ok(Json(serde_json::json!({ "approvals": pending })))
}

pub async fn decide(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DecideBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let by = format!("api:{}", body.by.as_deref().unwrap_or("master"));
    let answered = decide_as(&state, &id, body.decision, &by).await?;
    Ok(Json(
        serde_json::json!({ "approval": answered, "decision": body.decision }),
    ))
}

/// Answers one approval as `by`; 404 when it is no longer pending.
pub(crate) async fn decide_as(
    state: &AppState,
    id: &str,
    decision: ApprovalDecision,
    by: &str,
) -> Result<PendingApproval, ApiError> {
    match broker(state)?.decide_approval(id, decision, by).await? {
        Some(a) => {
            tracing::info!(approval = %id, host = %a.host, sandbox = %a.sandbox,
                decision = decision.as_str(), by, "egress approval answered");
            Ok(a)
        }
        None => Err(ApiError::not_found(
            "no pending approval with this id (answered, timed out, or never asked)",
        )),
    }
}
