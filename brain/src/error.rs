//! `ApiError`: every failure of the HTTP API becomes `{"error":{"code","message"}}` with a
//! status chosen in one place. Caller errors (4xx) carry their message; upstream errors
//! (backend, agent: 502) carry the upstream's message; our own failures (500) say only
//! "internal error" and the detail rides in a response extension to [`log_internal_errors`].

use std::borrow::Cow;

use airlock_wire::ErrorBody;
use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::credentials::BrokerError;
use crate::lifecycle::LifecycleError;
use crate::sandbox::BackendError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// Logged, never sent (for 500s).
    internal: Option<String>,
}

/// Response extension carrying the hidden detail of a 500.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            internal: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal".into(),
            message: "internal error".into(),
            internal: Some(detail.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody::new(self.code, self.message);
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(detail) = self.internal {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

/// Logs the hidden detail of 500s, keeping `into_response` free of side effects.
pub async fn log_internal_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(InternalDetail(detail)) = response.extensions().get::<InternalDetail>() {
        tracing::error!(%method, %path, error = %detail, "request failed");
    }
    response
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let message = e.to_string();
        match e {
            BackendError::Invalid(_) => ApiError::bad_request("invalid_request", message),
            BackendError::NotFound(_) => ApiError::conflict("sandbox_lost", message),
            BackendError::Unavailable(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "backend_unavailable", message)
            }
            // The agent's own 4xx (bad cwd, bad request) is the caller's problem: pass it on.
            BackendError::Agent {
                status,
                code,
                message,
            } if (400..500).contains(&status) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                ApiError::new(status, code, message)
            }
            BackendError::Agent { code, message, .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                code,
                format!("sandbox agent: {message}"),
            ),
            BackendError::AgentUnreachable(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "agent_unreachable", message)
            }
            BackendError::NotReady(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "sandbox_not_ready", message)
            }
            BackendError::NotSupported(_) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_supported", message)
            }
            BackendError::Conflict(_) => ApiError::conflict("conflict", message),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let message = e.to_string();
        match e {
            BrokerError::UnknownCredential(_) => {
                ApiError::bad_request("unknown_credential", message)
            }
            BrokerError::Unavailable(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "vault_unavailable", message)
            }
            BrokerError::NotSupported(_) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_available", message)
            }
            BrokerError::Invalid(_) => ApiError::bad_request("invalid_request", message),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(id) => ApiError::not_found(format!("no sandbox {id}")),
            LifecycleError::Store(e) => e.into(),
            LifecycleError::Backend(e) => e.into(),
            LifecycleError::Broker(e) => e.into(),
            LifecycleError::NoBroker => ApiError::bad_request(
                "no_vault_proxy",
                "no vault proxy configured: credentials cannot be granted to sandboxes",
            ),
            LifecycleError::Invalid(message) => ApiError::bad_request("invalid_request", message),
            LifecycleError::Task(detail) => ApiError::internal(detail),
        }
    }
}
