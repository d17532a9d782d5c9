//! Errors, classified by who is at fault (caller, upstream, us), rendered in
//! the caller's wire format in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::time::Duration;

/// The inbound wire format of a request: decides how errors are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    OpenAi,
    Anthropic,
}

/// An error from a provider call.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The upstream answered with a non-2xx status.
    #[error("upstream returned {status}: {message}")]
    Status {
        status: u16,
        /// The provider's error type (`rate_limit_error`, `invalid_request_error`, …).
        error_type: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("upstream timed out after {0:?}")]
    Timeout(Duration),
    #[error("upstream connection failed: {0}")]
    Connect(String),
    #[error("upstream response could not be understood: {0}")]
    Protocol(String),
    /// The request cannot be expressed for this provider (caller error).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ProviderError {
    /// Worth another attempt (same or another deployment)?
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Status { status, .. } => {
                matches!(*status, 408 | 409 | 425 | 429) || *status >= 500
            }
            ProviderError::Timeout(_) | ProviderError::Connect(_) => true,
            ProviderError::Protocol(_) | ProviderError::InvalidRequest(_) => false,
        }
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Everything a gateway call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BudgetExceeded(String),
    #[error("{0}")]
    RateLimited(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            // LiteLLM answers budget overruns with 400 `budget_exceeded`; we keep its status.
            GatewayError::BudgetExceeded(_) => StatusCode::BAD_REQUEST,
            GatewayError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Provider(p) => match p {
                ProviderError::Status { status, .. } => {
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
                }
                ProviderError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                ProviderError::Connect(_) | ProviderError::Protocol(_) => StatusCode::BAD_GATEWAY,
                ProviderError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            },
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// (OpenAI type, OpenAI code, Anthropic type)
    fn kinds(&self) -> (&str, Option<&'static str>, &str) {
        match self {
            GatewayError::BadRequest(_) => (
                "invalid_request_error",
                Some("bad_request"),
                "invalid_request_error",
            ),
            GatewayError::Unauthorized(_) => (
                "authentication_error",
                Some("invalid_api_key"),
                "authentication_error",
            ),
            GatewayError::Forbidden(_) => (
                "permission_error",
                Some("model_not_allowed"),
                "permission_error",
            ),
            GatewayError::NotFound(_) => (
                "invalid_request_error",
                Some("model_not_found"),
                "not_found_error",
            ),
            GatewayError::BudgetExceeded(_) => (
                "budget_exceeded",
                Some("budget_exceeded"),
                "invalid_request_error",
            ),
            GatewayError::RateLimited(_) => (
                "rate_limit_error",
                Some("rate_limit_exceeded"),
                "rate_limit_error",
            ),
            GatewayError::Provider(ProviderError::Status {
                status, error_type, ..
            }) => {
                let anth = anthropic_type_for(*status);
                let t = if error_type.is_empty() {
                    anth
                } else {
                    error_type.as_str()
                };
                (t, None, anth)
            }
            GatewayError::Provider(ProviderError::Timeout(_)) => {
                ("timeout", Some("timeout"), "timeout_error")
            }
            GatewayError::Provider(ProviderError::InvalidRequest(_)) => (
                "invalid_request_error",
                Some("bad_request"),
                "invalid_request_error",
            ),
            GatewayError::Provider(_) => ("api_error", Some("upstream_error"), "api_error"),
            GatewayError::Internal(_) => ("api_error", Some("internal_error"), "api_error"),
        }
    }

    fn message(&self) -> String {
        match self {
            GatewayError::Provider(ProviderError::Status { message, .. }) => message.clone(),
            // 5xx bodies stay generic; details are logged.
            GatewayError::Internal(_) => "internal gateway error".to_owned(),
            other => other.to_string(),
        }
    }

    /// The JSON error body in the given wire format.
    pub fn body(&self, format: WireFormat) -> serde_json::Value {
        let (oa_type, oa_code, an_type) = self.kinds();
        let message = self.message();
        match format {
            WireFormat::OpenAi => {
                let code = match (oa_code, self) {
                    (Some(c), _) => serde_json::Value::from(c),
                    (None, GatewayError::Provider(ProviderError::Status { status, .. })) => {
                        serde_json::Value::from(status.to_string())
                    }
                    _ => serde_json::Value::Null,
                };
                serde_json::json!({"error": {"message": message, "type": oa_type, "param": null, "code": code}})
            }
            WireFormat::Anthropic => {
                serde_json::json!({"type": "error", "error": {"type": an_type, "message": message}})
            }
        }
    }

    pub fn into_response_for(self, format: WireFormat) -> Response {
        if let GatewayError::Internal(detail) = &self {
            tracing::error!(%detail, "internal gateway error");
        }
        let status = self.status();
        let body = Bytes::from(self.body(format).to_string());
        let mut resp = (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let GatewayError::Provider(ProviderError::Status {
            retry_after: Some(d),
            ..
        }) = &self
            && let Ok(v) = http::HeaderValue::from_str(&d.as_secs().max(1).to_string())
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Anthropic's error type for an HTTP status.
pub fn anthropic_type_for(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Parse a provider's error body (either format) into (type, message).
pub fn parse_error_body(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    if let Some(msg) = e.as_str() {
        return Some((String::new(), msg.to_owned()));
    }
    let message = e
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    let ty = e
        .get("type")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    Some((ty, message))
}
