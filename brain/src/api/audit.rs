//! `GET /v1/audit/egress`: the vault proxy's audit records (DESIGN.md, brain HTTP API).
//!
//! Records name credentials, never values or stubs, so they are returned as stored.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::credentials::{AuditFilter, AuditRecord};
use crate::error::ApiError;
use crate::state::AppState;

/// Most records one call returns (the most recent ones).
pub const MAX_RECORDS: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressQuery {
    sandbox: Option<String>,
    session: Option<String>,
    credential: Option<String>,
    /// `allow` or `deny`.
    decision: Option<String>,
    /// RFC 3339.
    since: Option<String>,
    limit: Option<usize>,
}

pub async fn egress(
    State(state): State<AppState>,
    query: Result<Query<EgressQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let filter = to_filter(q)?;
    let Some(broker) = &state.broker else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_available",
            "no vault proxy is configured (vault.mode off): there is no egress audit log",
        ));
    };
    Ok(Json(broker.audit(filter).await?))
}

fn to_filter(q: EgressQuery) -> Result<AuditFilter, ApiError> {
    let empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let decision = match empty(q.decision) {
        Some(d) => Some(d.parse().map_err(|_| {
            ApiError::bad_request("invalid_request", "decision must be `allow` or `deny`")
        })?),
        None => None,
    };
    let since = match empty(q.since) {
        Some(s) => Some(
            DateTime::parse_from_rfc3339(&s)
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("since must be an RFC 3339 time: {e}"),
                    )
                })?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    Ok(AuditFilter {
        sandbox: empty(q.sandbox),
        session: empty(q.session),
        credential: empty(q.credential),
        decision,
        since,
        limit: Some(q.limit.unwrap_or(MAX_RECORDS).clamp(1, MAX_RECORDS)),
    })
}
