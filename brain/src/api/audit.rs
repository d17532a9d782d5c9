//! `GET /v1/audit/egress`: the vault proxy's audit records (DESIGN.md, brain HTTP API), and
//! `GET /v1/audit/verify`: its chain checked against the heads the brain recorded.
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
    /// Destination host (case-insensitive).
    host: Option<String>,
    /// Only records with a lower seq (paging back).
    before: Option<u64>,
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

/// `GET /v1/audit/verify`: records the proxy's current audit head, then verifies its log
/// against every head the brain recorded (`brain audit verify`). 200 with `"ok": false` and
/// `broken` when the chain breaks or a recorded head is not reached.
pub async fn verify(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(broker) = &state.broker else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_available",
            "no vault proxy is configured (vault.mode off): there is no egress audit log",
        ));
    };
    match crate::audit_heads::verify(broker.as_ref(), &state.store).await {
        Ok(v) => Ok(Json(v)),
        Err(crate::audit_heads::HeadError::Broker(e)) => Err(e.into()),
        Err(crate::audit_heads::HeadError::Store(e)) => Err(e.into()),
    }
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
        host: empty(q.host),
        before_seq: q.before,
        limit: Some(q.limit.unwrap_or(MAX_RECORDS).clamp(1, MAX_RECORDS)),
    })
}
