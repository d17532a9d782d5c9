//! `type: oauth2_refresh`: access tokens from the `refresh_token` grant (RFC 6749 §6).
//!
//! - Request: `POST token_url`, `application/x-www-form-urlencoded` body
//!   `grant_type=refresh_token&refresh_token=…[&scope=…]`; the client authenticates with
//!   HTTP Basic over the form-urlencoded id and secret (§2.3.1, the default) or with
//!   `client_id`/`client_secret` in the body (`client_auth: post`); a public client sends
//!   only `client_id` (§3.2.1).
//! - Answer (§5.1): `200 {"access_token","token_type","expires_in"?,"refresh_token"?}`;
//!   errors (§5.2) `400 {"error":"invalid_grant"|…}`. A new `refresh_token` replaces the
//!   old one (rotation, OAuth 2.1 §4.3.1 / RFC 9700 §4.14.2): the old one is dead, so the
//!   new one is kept in memory at once and written back to the encrypted store when the
//!   credential comes from it.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use http::{HeaderValue, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use zeroize::Zeroizing;

use super::{Fetched, MintContext, MintError};
use crate::config::HostPattern;
use crate::config::typed::{ClientAuth, OAuth2Config, ValueRef};
use crate::secrets::{SecretStore, SecretValue};

/// `application/x-www-form-urlencoded` (RFC 6749 Appendix B): everything but
/// unreserved characters is percent-encoded (space as `%20`, which servers accept).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Lifetime assumed when the server gives no `expires_in` (it is only RECOMMENDED).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// Where a rotated refresh token is written back.
pub struct RefreshStore {
    /// The encrypted store.
    pub store: SecretStore,
    /// Its entry.
    pub entry: String,
    /// The entry's bindings (kept as they are: they are part of its AAD).
    pub hosts: Vec<HostPattern>,
}

/// One OAuth client + refresh token.
pub struct OAuth2 {
    cfg: OAuth2Config,
    client_id: String,
    client_secret: Option<SecretValue>,
    refresh_token: Mutex<SecretValue>,
    store: Option<std::sync::Arc<RefreshStore>>,
}

impl OAuth2 {
    /// Resolves the client id and secret from `env`.
    pub fn new(
        cfg: OAuth2Config,
        refresh_token: SecretValue,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
        store: Option<RefreshStore>,
    ) -> Result<OAuth2, String> {
        let read = |var: &str| -> Result<String, String> {
            env(var)
                .and_then(|v| v.into_string().ok())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("environment variable `{var}` is not set or is empty"))
        };
        let client_id = match &cfg.client_id {
            ValueRef::Inline(s) => s.clone(),
            ValueRef::Env(var) => read(var)?,
        };
        let client_secret = match &cfg.client_secret_env {
            Some(var) => Some(SecretValue::new(read(var)?)),
            None => None,
        };
        Ok(OAuth2 {
            cfg,
            client_id,
            client_secret,
            refresh_token: Mutex::new(refresh_token),
            store: store.map(std::sync::Arc::new),
        })
    }

    /// The config (token URL).
    pub fn config(&self) -> &OAuth2Config {
        &self.cfg
    }

    /// The client secret (scrubbed from responses like any long-lived value).
    pub fn client_secret(&self) -> Option<&SecretValue> {
        self.client_secret.as_ref()
    }

    fn current_refresh_token(&self) -> SecretValue {
        self.refresh_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs the refresh grant once. Called only under the minter's single-flight lock.
    pub async fn refresh(&self, ctx: MintContext<'_>) -> Result<Fetched, MintError> {
        let rt = self.current_refresh_token();
        let enc = |s: &str| utf8_percent_encode(s, FORM).to_string();
        let mut body = Zeroizing::new(format!(
            "grant_type=refresh_token&refresh_token={}",
            enc(rt.expose())
        ));
        if let Some(scope) = &self.cfg.scope {
            body.push_str(&format!("&scope={}", enc(scope)));
        }
        let mut headers = vec![
            (header::ACCEPT, HeaderValue::from_static("application/json")),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            ),
        ];
        match (&self.client_secret, self.cfg.client_auth) {
            (Some(secret), ClientAuth::Basic) => {
                let pair =
                    Zeroizing::new(format!("{}:{}", enc(&self.client_id), enc(secret.expose())));
                let b64 = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()),
                );
                let mut v = HeaderValue::from_str(&format!("Basic {}", b64.as_str()))
                    .map_err(|_| MintError::new("client credentials not valid in a header"))?;
                v.set_sensitive(true);
                headers.push((header::AUTHORIZATION, v));
            }
            (Some(secret), ClientAuth::Post) => {
                body.push_str(&format!(
                    "&client_id={}&client_secret={}",
                    enc(&self.client_id),
                    enc(secret.expose())
                ));
            }
            (None, _) => body.push_str(&format!("&client_id={}", enc(&self.client_id))),
        }
        let (status, bytes) = super::http::post(
            ctx,
            &self.cfg.token_url,
            "",
            &headers,
            body.as_bytes().to_vec(),
        )
        .await?;
        if !status.is_success() {
            return Err(MintError::new(format!(
                "refresh refused: HTTP {}{}",
                status.as_u16(),
                error_code(&bytes)
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default()
            )));
        }
        let mut fetched = parse_token_response(&bytes)?;
        match &fetched.rotated {
            Some(new_rt) if new_rt.expose() != rt.expose() => self.rotate(new_rt.clone()).await,
            // The same token echoed back: no rotation.
            _ => fetched.rotated = None,
        }
        Ok(fetched)
    }

    async fn rotate(&self, new_rt: SecretValue) {
        *self.refresh_token.lock().unwrap_or_else(|p| p.into_inner()) = new_rt.clone();
        let Some(st) = self.store.clone() else {
            tracing::warn!(
                "the refresh token was rotated; it is kept in memory only (use \
                 refresh_token_stored to keep it across restarts)"
            );
            return;
        };
        // The file write blocks (fsync); it is rare (once per refresh) and small.
        let entry = st.entry.clone();
        let r =
            tokio::task::spawn_blocking(move || st.store.put(&st.entry, &new_rt, &st.hosts)).await;
        match r {
            Ok(Ok(())) => tracing::info!(entry = %entry, "rotated refresh token stored"),
            Ok(Err(e)) => tracing::error!(entry = %entry, error = %e,
                "could not store the rotated refresh token; it is kept in memory"),
            Err(_) => tracing::error!(entry = %entry, "storing the rotated refresh token panicked"),
        }
    }
}

/// The RFC 6749 §5.2 `error` code, if the body has one of plain ASCII letters/underscores.
fn error_code(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let code = v.get("error")?.as_str()?;
    (code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| code.to_string())
}

fn parse_token_response(bytes: &[u8]) -> Result<Fetched, MintError> {
    #[derive(serde::Deserialize)]
    struct Resp {
        access_token: String,
        token_type: String,
        expires_in: Option<serde_json::Value>,
        refresh_token: Option<String>,
    }
    let r: Resp = serde_json::from_slice(bytes)
        .map_err(|_| MintError::new("token response is not {access_token, token_type}"))?;
    let value = SecretValue::new(r.access_token);
    let rotated = r.refresh_token.map(SecretValue::new);
    if !r.token_type.eq_ignore_ascii_case("bearer") {
        return Err(MintError::new("token_type is not Bearer"));
    }
    if value.len() < crate::secrets::MIN_SECRET_LEN
        || value.expose().chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(MintError::new("access token has an unusable shape"));
    }
    // Some servers send `expires_in` as a string; RFC 6749 says a number of seconds.
    let secs = match &r.expires_in {
        None => None,
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    let lifetime = match (&r.expires_in, secs) {
        (None, _) => DEFAULT_LIFETIME,
        (Some(_), Some(s)) if s > 0 => Duration::from_secs(s.min(7 * 24 * 3600)),
        _ => return Err(MintError::new("expires_in is not a positive number")),
    };
    let rotated = rotated.filter(|r| !r.is_empty());
    Ok(Fetched {
        value,
        lifetime,
        expires_at: Utc::now() + lifetime,
        rotated,
    })
}
