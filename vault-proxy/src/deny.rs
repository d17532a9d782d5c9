//! Why a request or tunnel was refused, and the one place that turns a
//! refusal into a response (like linkerd's `HttpRescue`).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{ProxyBody, full};

/// A refusal from one of the pipeline phases. Every variant is audited by the
/// caller with [`Deny::reason`] as the record's `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Deny {
    /// Rule 1: no, malformed or unknown `Proxy-Authorization` (→ 407).
    #[error("proxy authentication required: {0}")]
    ProxyAuth(&'static str),
    /// The grant was revoked while the tunnel was open (→ 407).
    #[error("grant revoked")]
    Revoked,
    /// Rule 2: CONNECT target, SNI, `Host`, `:authority` or URI disagree (→ 403).
    #[error("destination mismatch: {0}")]
    Mismatch(&'static str),
    /// Malformed request or authority (→ 400).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Rule 3: the destination address is not allowed (→ 403).
    #[error("destination address not allowed: {0}")]
    Address(&'static str),
    /// DNS resolution failed (→ 502).
    #[error("cannot resolve destination")]
    Resolve,
    /// Rule 4: a stub going anywhere it may not (→ 403 `credential_not_allowed_for_host`).
    #[error("credential not allowed for host: {reason}")]
    Credential {
        /// Credential name (never the value or the stub).
        credential: Option<String>,
        /// Short code: `unbound_host`, `plain_http`, `ip_literal`, `foreign_stub`, …
        reason: &'static str,
    },
    /// Rule 4: a stub of this grant outside the credential's `positions` (→ 403
    /// `credential_position_not_allowed`).
    #[error("credential not allowed at this position: {reason}")]
    Position {
        /// Credential name.
        credential: String,
        /// Where the stub stood.
        reason: String,
    },
    /// Rule 4: a stub of this grant on a path or method out of its scope (→ 403
    /// `credential_path_not_allowed`).
    #[error("credential not allowed on this path or method: {reason}")]
    Scope {
        /// Credential name.
        credential: String,
        /// `method_not_allowed: X`, `path_not_allowed`, …
        reason: String,
    },
    /// A minted credential (`github_app`, `oauth2_refresh`) has no current token: the
    /// token endpoint refused or failed (→ 502 `credential_refresh_failed`, nothing sent).
    #[error("credential refresh failed: {reason}")]
    CredentialRefresh {
        /// Credential name.
        credential: String,
        /// Type and short cause (never a value).
        reason: String,
    },
    /// A body holding a stub is larger than can be buffered to check its
    /// positions (→ 413, nothing sent).
    #[error("request body with a stub is too large to inspect")]
    BodyTooLarge,
    /// Rule 6: request without stub to a host not in `egress.allow_hosts` (→ 403).
    #[error("egress to this host is not allowed")]
    Egress,
    /// The upstream could not be reached or failed (→ 502).
    #[error("upstream error: {0}")]
    Upstream(&'static str),
    /// A response we cannot scrub (unknown content-encoding) (→ 502).
    #[error("response cannot be scrubbed: {0}")]
    Unscrubbable(&'static str),
    /// Limits: too many tunnels/connections (→ 503).
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// The sandbox holds `limits.tunnels_per_sandbox` open tunnels (→ 429).
    #[error("too many open tunnels for this sandbox")]
    TooManyTunnels,
    /// The sandbox is at another per-sandbox limit (requests in flight, buffered bytes) (→ 429).
    #[error("sandbox limit reached: {0}")]
    TooManyRequests(&'static str),
    /// The audit log cannot be written: nothing that needs a record is sent (→ 503).
    #[error("the audit log cannot be written; refusing (fail closed)")]
    AuditUnavailable,
}

impl Deny {
    /// HTTP status for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Deny::ProxyAuth(_) | Deny::Revoked => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Deny::Mismatch(_)
            | Deny::Address(_)
            | Deny::Credential { .. }
            | Deny::Position { .. }
            | Deny::Scope { .. }
            | Deny::Egress => StatusCode::FORBIDDEN,
            Deny::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Deny::BadRequest(_) => StatusCode::BAD_REQUEST,
            Deny::Resolve
            | Deny::Upstream(_)
            | Deny::Unscrubbable(_)
            | Deny::CredentialRefresh { .. } => StatusCode::BAD_GATEWAY,
            Deny::Overloaded(_) | Deny::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Deny::TooManyTunnels | Deny::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Machine-readable error code (the JSON body's `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Deny::ProxyAuth(_) => "proxy_auth_required",
            Deny::Revoked => "grant_revoked",
            Deny::Mismatch(_) => "destination_mismatch",
            Deny::BadRequest(_) => "bad_request",
            Deny::Address(_) => "destination_not_allowed",
            Deny::Resolve => "resolve_failed",
            Deny::Credential { .. } => "credential_not_allowed_for_host",
            Deny::Position { .. } => "credential_position_not_allowed",
            Deny::Scope { .. } => "credential_path_not_allowed",
            Deny::CredentialRefresh { .. } => "credential_refresh_failed",
            Deny::BodyTooLarge => "request_body_too_large",
            Deny::Egress => "egress_denied",
            Deny::Upstream(_) => "upstream_error",
            Deny::Unscrubbable(_) => "response_not_scrubbable",
            Deny::Overloaded(_) => "overloaded",
            Deny::TooManyTunnels => "too_many_tunnels",
            Deny::TooManyRequests(_) => "too_many_requests",
            Deny::AuditUnavailable => "audit_unavailable",
        }
    }

    /// The audit record's `reason`: the code plus the phase's short detail.
    pub fn reason(&self) -> String {
        match self {
            Deny::ProxyAuth(d)
            | Deny::Mismatch(d)
            | Deny::BadRequest(d)
            | Deny::Address(d)
            | Deny::Upstream(d)
            | Deny::Unscrubbable(d)
            | Deny::Overloaded(d)
            | Deny::TooManyRequests(d) => format!("{}: {d}", self.code()),
            Deny::Credential { reason, .. } => format!("{}: {reason}", self.code()),
            Deny::Position { reason, .. }
            | Deny::Scope { reason, .. }
            | Deny::CredentialRefresh { reason, .. } => format!("{}: {reason}", self.code()),
            Deny::Revoked
            | Deny::Resolve
            | Deny::Egress
            | Deny::BodyTooLarge
            | Deny::TooManyTunnels
            | Deny::AuditUnavailable => self.code().to_string(),
        }
    }

    /// The credential involved, if any (for the audit record).
    pub fn credential(&self) -> Option<String> {
        match self {
            Deny::Credential { credential, .. } => credential.clone(),
            Deny::Position { credential, .. }
            | Deny::Scope { credential, .. }
            | Deny::CredentialRefresh { credential, .. } => Some(credential.clone()),
            _ => None,
        }
    }

    /// The response sent to the sandbox: JSON `{"error":{"code","message"}}`.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        });
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            h.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"airlock-vault\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        let check = |d: Deny, status: u16, code: &str| {
            assert_eq!(d.status().as_u16(), status, "{d:?}");
            assert_eq!(d.code(), code);
            let r = d.to_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(
                r.headers().contains_key(header::PROXY_AUTHENTICATE),
                status == 407
            );
        };
        check(Deny::ProxyAuth("missing"), 407, "proxy_auth_required");
        check(Deny::Revoked, 407, "grant_revoked");
        check(Deny::Mismatch("sni"), 403, "destination_mismatch");
        check(Deny::Address("loopback"), 403, "destination_not_allowed");
        check(
            Deny::Credential {
                credential: Some("GH".into()),
                reason: "unbound_host",
            },
            403,
            "credential_not_allowed_for_host",
        );
        check(Deny::Egress, 403, "egress_denied");
        check(
            Deny::Position {
                credential: "GH".into(),
                reason: "header:x-note".into(),
            },
            403,
            "credential_position_not_allowed",
        );
        check(
            Deny::Scope {
                credential: "GH".into(),
                reason: "path_not_allowed".into(),
            },
            403,
            "credential_path_not_allowed",
        );
        check(Deny::BodyTooLarge, 413, "request_body_too_large");
        check(Deny::Upstream("connect"), 502, "upstream_error");
        check(Deny::BadRequest("x"), 400, "bad_request");
        check(Deny::TooManyTunnels, 429, "too_many_tunnels");
        check(Deny::AuditUnavailable, 503, "audit_unavailable");
        check(
            Deny::CredentialRefresh {
                credential: "APP".into(),
                reason: "type=github_app installation token refused: HTTP 401".into(),
            },
            502,
            "credential_refresh_failed",
        );
    }
}
