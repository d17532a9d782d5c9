//! Who is calling `/mcp`: `Authorization: Bearer <key>` → a [`Principal`].
//!
//! Accepted: the master key, and the gateway's virtual keys (`POST /key/generate`, when the
//! brain has a model gateway) that have not expired; a virtual key's principal id is
//! `vk:<sha256 of the key>` (the gateway's own key id, never the key itself).
//! MCP sessions belong to `Principal::id`, so sessions of one key are invisible to another.

use axum::http::{HeaderMap, header};

use crate::state::AppState;

/// The identity an MCP session is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable id stored with the session: `"master"` for the master key.
    pub id: String,
    pub kind: PrincipalKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Master,
    /// A gateway virtual key.
    VirtualKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (send `Authorization: Bearer <key>`)")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
}

/// The bearer token of `headers`, if there is exactly one well-formed one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, AuthError> {
    let Some(token) = bearer(headers) else {
        return Err(if headers.contains_key(header::AUTHORIZATION) {
            AuthError::Invalid
        } else {
            AuthError::Missing
        });
    };
    principal_of(state, token).await.ok_or(AuthError::Invalid)
}

/// The principal a presented key stands for: the master key, or a live (unexpired, unblocked)
/// virtual key of the gateway. Shared with the API's session routes and the console sign-in.
pub async fn principal_of(state: &AppState, token: &str) -> Option<Principal> {
    if state.master_key.matches(token.as_bytes()) {
        return Some(Principal {
            id: "master".into(),
            kind: PrincipalKind::Master,
        });
    }
    let m = state.models.as_ref()?;
    let key = m.gateway.keys().lookup(token).await.ok()??;
    let expired = key
        .row
        .expires_at
        .is_some_and(|at| at <= chrono::Utc::now().timestamp());
    (!expired && !key.row.blocked).then(|| Principal {
        id: format!("vk:{}", key.token_hash),
        kind: PrincipalKind::VirtualKey,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_needs_one_well_formed_header() {
        assert_eq!(bearer(&headers(&["Bearer abc"])), Some("abc"));
        assert_eq!(bearer(&headers(&["bearer  abc "])), Some("abc"));
        assert_eq!(bearer(&headers(&[])), None);
        assert_eq!(bearer(&headers(&["Basic abc"])), None);
        assert_eq!(bearer(&headers(&["Bearer "])), None);
        assert_eq!(bearer(&headers(&["Bearerabc"])), None);
        assert_eq!(bearer(&headers(&["Bearer a", "Bearer b"])), None);
    }
}
