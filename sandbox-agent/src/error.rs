//! The one error type of the HTTP API and its mapping to `{"error":{"code","message"}}`.
//!
//! Every handler and extractor returns [`ApiError`], so the status/code mapping lives in one
//! match ([`ApiError::status`]) and no route can answer with axum's plain-text rejections.

use std::io;

use airlock_wire::ErrorBody;
use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The caller sent something we cannot act on (bad JSON, both/neither of command/argv, …).
    #[error("{0}")]
    BadRequest(String),
    /// The working directory of an exec does not exist or is not a directory.
    #[error("{0}")]
    BadCwd(String),
    /// The command could not be started (argv[0] not found, not executable, …).
    #[error("{0}")]
    SpawnFailed(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with the sandbox's state (`already_configured`, `already_used`).
    #[error("{1}")]
    Conflict(&'static str, String),
    /// Something failed on our side; the message is logged, the body stays generic.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::BadCwd(_) => (StatusCode::BAD_REQUEST, "bad_cwd"),
            ApiError::SpawnFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "spawn_failed"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(code, _) => (StatusCode::CONFLICT, code),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Maps a filesystem error on `path` to the status a caller can act on.
    pub fn from_io(path: &std::path::Path, op: &str, err: io::Error) -> Self {
        let msg = format!("{op} {}: {err}", path.display());
        match err.kind() {
            io::ErrorKind::NotFound => ApiError::NotFound(msg),
            // A read-only root (docker sandboxes) refuses writes the same way permissions do:
            // the caller asked for something the sandbox does not allow, not an agent fault.
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                ApiError::Forbidden(msg)
            }
            // The sandbox's disk (a size-limited tmpfs) is full: the upload was too large for it.
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::FileTooLarge => ApiError::PayloadTooLarge(msg),
            // The caller named something of the wrong kind (a file where a dir is needed, …).
            io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidFilename
            | io::ErrorKind::AlreadyExists => ApiError::BadRequest(msg),
            _ => ApiError::Internal(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "internal error (see agent log)".to_string()
            }
            other => other.to_string(),
        };
        (status, Json(ErrorBody::new(code, message))).into_response()
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rej: BytesRejection) -> Self {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("request body too large: {}", rej.body_text()))
        } else {
            ApiError::BadRequest(format!("could not read request body: {}", rej.body_text()))
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rej: QueryRejection) -> Self {
        ApiError::BadRequest(rej.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_errors_map_to_caller_statuses() {
        let p = std::path::Path::new("/etc/x");
        let check = |kind: io::ErrorKind| {
            ApiError::from_io(p, "write", io::Error::from(kind))
                .status()
                .0
        };
        assert_eq!(check(io::ErrorKind::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            check(io::ErrorKind::PermissionDenied),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            check(io::ErrorKind::ReadOnlyFilesystem),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            check(io::ErrorKind::StorageFull),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(check(io::ErrorKind::IsADirectory), StatusCode::BAD_REQUEST);
        assert_eq!(
            check(io::ErrorKind::Other),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
