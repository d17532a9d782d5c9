//! Answering held egress requests of the vault proxy (`egress: ask`), shared by every path
//! that answers them: `/v1/approvals` (`api/approvals.rs`), the console (`ui/`), Slack
//! (`ui/slack.rs`) and GitHub comments (`triggers/github_approvals.rs`). It sits at the
//! sessions / triggers layer (ARCHITECTURE.md, "Layers of the brain"), so the triggers reach
//! it without naming `api/` or `ui/`.
//!
//! The answer is forwarded to the embedded or remote proxy, which writes the `approval`
//! audit record naming the decision and who made it (`by`).

use axum::http::StatusCode;

use crate::credentials::{ApprovalDecision, CredentialBroker, PendingApproval};
use crate::error::ApiError;
use crate::state::AppState;

/// The configured broker; 501 `not_available` when the vault proxy is off.
pub(crate) fn broker(state: &AppState) -> Result<&dyn CredentialBroker, ApiError> {
    state.broker.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_available",
            "no vault proxy is configured (vault.mode off): there are no approvals",
        )
    })
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
