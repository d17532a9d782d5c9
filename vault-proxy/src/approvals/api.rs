//! Admin API routes of the approvals registry (bearer admin token, checked by `admin`):
//!
//! - `GET /v1/approvals` → `{"approvals":[PendingApproval…]}` (oldest first)
//! - `POST /v1/approvals/{id} {"decision":"allow_once"|"allow_session"|"allow_always"|"deny",
//!   "by"?}` → `{"approval":…,"decision"}`; 404 when it is no longer pending
//! - `PUT /v1/grants/{sandbox}/egress {"allow_hosts":[…],"default"?:"deny"|"ask"}` → the new
//!   egress; 404 without a live grant
//! - `GET /v1/grants/{sandbox}/egress` → `{"default","allow_hosts"}`

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ApprovalDecision, ApprovalError, Approvals, SandboxEgress};
use crate::config::{EgressDefault, HostPattern};
use crate::grants::Grants;

/// Largest list `PUT …/egress` accepts.
const MAX_HOSTS: usize = 256;

/// Whether `route` serves this request.
pub(crate) fn handles(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET => path == "/v1/approvals" || egress_sandbox(path).is_some(),
        Method::POST => path.strip_prefix("/v1/approvals/").is_some_and(valid_id),
        Method::PUT => egress_sandbox(path).is_some(),
        _ => false,
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn egress_sandbox(path: &str) -> Option<&str> {
    let s = path.strip_prefix("/v1/grants/")?.strip_suffix("/egress")?;
    (!s.is_empty() && !s.contains('/')).then_some(s)
}

fn err(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"code": code, "message": message}}))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    decision: ApprovalDecision,
    #[serde(default)]
    by: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressBody {
    allow_hosts: Vec<String>,
    #[serde(default)]
    default: Option<EgressDefault>,
}

fn egress_json(e: &SandboxEgress) -> Value {
    json!({
        "default": e.default,
        "allow_hosts": e.allow_hosts.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    })
}

/// Serves one request `handles` accepted; `body` is the (size-limited) request body.
pub(crate) fn route(
    approvals: &Approvals,
    grants: &Grants,
    method: &Method,
    path: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    if *method == Method::GET && path == "/v1/approvals" {
        return (StatusCode::OK, json!({"approvals": approvals.pending()}));
    }
    if let Some(id) = path.strip_prefix("/v1/approvals/") {
        let b: DecideBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return err(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string()),
        };
        let by = b.by.unwrap_or_else(|| "admin".into());
        return match approvals.decide(id, b.decision, &by) {
            Ok(a) => (
                StatusCode::OK,
                json!({"approval": a, "decision": b.decision}),
            ),
            Err(e @ ApprovalError::NotFound) => {
                err(StatusCode::NOT_FOUND, "not_found", &e.to_string())
            }
        };
    }
    let Some(sandbox) = egress_sandbox(path) else {
        return err(StatusCode::NOT_FOUND, "not_found", "no such route");
    };
    if !grants.contains(sandbox) {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            "no grant for this sandbox",
        );
    }
    if *method == Method::GET {
        return (
            StatusCode::OK,
            egress_json(&approvals.sandbox_egress(sandbox)),
        );
    }
    let b: EgressBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string()),
    };
    if b.default == Some(EgressDefault::Allow) {
        // A sandbox may be made stricter or asked about, never opened to everything.
        return err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "default must be deny or ask",
        );
    }
    if b.allow_hosts.len() > MAX_HOSTS {
        return err(StatusCode::BAD_REQUEST, "invalid_request", "too many hosts");
    }
    let mut hosts = Vec::new();
    for h in &b.allow_hosts {
        match HostPattern::parse(h) {
            Ok(p) => hosts.push(p),
            Err(e) => return err(StatusCode::BAD_REQUEST, "invalid_host", &e.to_string()),
        }
    }
    let e = SandboxEgress {
        default: b.default,
        allow_hosts: hosts,
    };
    approvals.set_sandbox_egress(sandbox, e.clone());
    (StatusCode::OK, egress_json(&e))
}
