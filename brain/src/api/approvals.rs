//! `/v1/approvals`: held egress requests of the vault proxy (`egress: ask`), and answering
//! them (DESIGN.md, "Contract: console and approvals"). Master key only (the `/v1` layer).
//!
//! Answering is `crate::approvals` (shared with the console, Slack and GitHub); the answer
//! is forwarded to the embedded or remote proxy, which writes the `approval`
//! audit record naming the decision and who made it (`api:<by>` here; the console, Slack
//! and GitHub paths name their own users).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;

use super::extract::ApiJson;
use crate::approvals::{broker, decide_as};
use crate::credentials::ApprovalDecision;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    pub decision: ApprovalDecision,
    /// Who is answering (free text, audited as `api:<by>`).
    pub by: Option<String>,
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
