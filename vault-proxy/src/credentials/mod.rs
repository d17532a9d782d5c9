//! Minted credentials (`type: github_app | oauth2_refresh`): the proxy holds the long-lived
//! material (App private key, refresh token), obtains short-lived tokens from the provider
//! and swaps the sandbox's one stable stub for the current token.
//!
//! - [`Minter`]: per credential, a cache of the current token renewed shortly before it
//!   expires. Renewal is single-flight: concurrent requests wait for one call to the
//!   token endpoint (with rotating refresh tokens a second concurrent refresh would use
//!   an already-rotated token and get the whole grant revoked).
//! - Every token it minted (and every rotated refresh token) joins the scrub set before
//!   the token is used: [`Minter::scrub_values`], and the shared generation counter makes
//!   each grant rebuild its response scrubber (`Grant::scrubber`).
//! - [`prepare`] is the handler's hook: it refuses a stub sent to the token endpoint
//!   itself, fetches the current tokens and says what the swap records name (type, token
//!   fingerprint, expiry — never the value). A failed renewal is
//!   `502 credential_refresh_failed`, audited by the caller.

mod github_app;
mod http;
mod oauth2;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::CredentialType;
use crate::connect::Upstream;
use crate::deny::Deny;
use crate::grants::Grant;
use crate::pipeline::PinnedDest;
use crate::pipeline::check_address::NetPolicy;
use crate::secrets::SecretValue;

pub use github_app::GithubApp;
pub use oauth2::{OAuth2, RefreshStore};

/// Longest a token is used before its expiry: renew when less than this is left
/// (or half its lifetime, for short-lived tokens).
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// After a failed renewal, requests fail fast for this long instead of hammering the
/// token endpoint.
const FAILURE_BACKOFF: Duration = Duration::from_secs(1);
/// Earlier tokens kept in the scrub set (a response may still echo one).
const SCRUB_HISTORY: usize = 8;
/// Bound on one call to the token endpoint.
const MINT_TIMEOUT: Duration = Duration::from_secs(15);

/// What the proxy needs to reach a token endpoint: the same upstream TLS roots and the
/// same address policy as sandbox traffic (a token URL on a metadata address is refused).
#[derive(Clone, Copy)]
pub struct MintContext<'a> {
    /// Upstream connector.
    pub upstream: &'a Upstream,
    /// Address policy.
    pub net: &'a NetPolicy,
}

/// Why no token could be had. The text is a short code, never a secret or a response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MintError(pub String);

impl MintError {
    pub(crate) fn new(s: impl Into<String>) -> MintError {
        MintError(s.into())
    }
}

/// A token fetched from the provider.
pub struct Fetched {
    /// The token.
    pub value: SecretValue,
    /// Lifetime left at fetch time.
    pub lifetime: Duration,
    /// Provider's expiry, when it gave one as a time.
    pub expires_at: DateTime<Utc>,
    /// New long-lived material to scrub (a rotated refresh token).
    pub rotated: Option<SecretValue>,
}

/// The current token of a credential.
pub struct Minted {
    /// The real token (only for swapping).
    pub value: SecretValue,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// `sha256:` + 12 hex of its digest: names the token in audit records.
    pub fingerprint: String,
    renew_at: Instant,
}

fn fingerprint(v: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, v.as_bytes());
    format!("sha256:{}", &hex::encode(d.as_ref())[..12])
}

enum Source {
    GithubApp(GithubApp),
    OAuth2(OAuth2),
}

/// Mints and caches one credential's tokens.
pub struct Minter {
    credential: String,
    source: Source,
    current: RwLock<Option<Arc<Minted>>>,
    /// Held while renewing (single flight); the last failure, for the back-off.
    renewing: tokio::sync::Mutex<Option<(Instant, MintError)>>,
    /// Earlier tokens (scrubbed to the stub) and long-lived values (masked).
    scrub: Mutex<ScrubSet>,
    generation: Arc<AtomicU64>,
}

#[derive(Default)]
struct ScrubSet {
    tokens: VecDeque<SecretValue>,
    secrets: VecDeque<SecretValue>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter for a GitHub App credential.
    pub fn github_app(credential: &str, app: GithubApp, generation: Arc<AtomicU64>) -> Minter {
        Self::new(credential, Source::GithubApp(app), generation)
    }

    /// A minter for an OAuth2 refresh-token credential.
    pub fn oauth2(credential: &str, o: OAuth2, generation: Arc<AtomicU64>) -> Minter {
        Self::new(credential, Source::OAuth2(o), generation)
    }

    fn new(credential: &str, source: Source, generation: Arc<AtomicU64>) -> Minter {
        Minter {
            credential: credential.to_string(),
            source,
            current: RwLock::new(None),
            renewing: tokio::sync::Mutex::new(None),
            scrub: Mutex::new(ScrubSet::default()),
            generation,
        }
    }

    /// The `type:` name.
    pub fn type_name(&self) -> &'static str {
        match self.source {
            Source::GithubApp(_) => "github_app",
            Source::OAuth2(_) => "oauth2_refresh",
        }
    }

    /// A value of the real token's shape for minting stubs (`ghs_` + 36 alphanumerics
    /// for installation tokens; 64 alphanumerics for OAuth access tokens, whose shape
    /// is the provider's).
    pub fn stub_template(&self) -> String {
        let body = |n: usize| "aZ0".repeat(n.div_ceil(3))[..n].to_string();
        match self.source {
            Source::GithubApp(_) => format!("ghs_{}", body(36)),
            Source::OAuth2(_) => body(64),
        }
    }

    /// Whether `host:port` + `path` is this credential's token endpoint (or, for an App,
    /// any `/app/…` route or the installation-token revocation): the sandbox's stub never
    /// goes there.
    pub fn is_token_endpoint(&self, host: &str, port: u16, path: &str) -> bool {
        let endpoint = match &self.source {
            Source::GithubApp(a) => &a.config().api,
            Source::OAuth2(o) => &o.config().token_url,
        };
        if !endpoint
            .host
            .eq_ignore_ascii_case(host.trim_end_matches('.'))
            || endpoint.port != port
        {
            return false;
        }
        // Compared as the server sees the path; an ambiguous one counts as a match.
        let Some(segs) = crate::config::normalize_path(path) else {
            return true;
        };
        let segs: Vec<String> = segs
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let base: Vec<String> = endpoint
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let Some(rest) = segs.strip_prefix(base.as_slice()) else {
            return false;
        };
        match &self.source {
            // Every `/app/…` route takes the App's JWT, and `DELETE /installation/token`
            // would revoke the proxy's token for everyone.
            Source::GithubApp(_) => {
                rest.first().is_some_and(|s| s == "app")
                    || rest == ["installation".to_string(), "token".to_string()]
            }
            Source::OAuth2(_) => rest.is_empty(),
        }
    }

    fn cached(&self) -> Option<Arc<Minted>> {
        let g = self.current.read().unwrap_or_else(|p| p.into_inner());
        g.as_ref().filter(|m| Instant::now() < m.renew_at).cloned()
    }

    /// The current token, renewed first when it is close to expiry.
    pub async fn current(&self, ctx: MintContext<'_>) -> Result<Arc<Minted>, MintError> {
        if let Some(m) = self.cached() {
            return Ok(m);
        }
        let mut renewing = self.renewing.lock().await;
        // Someone else renewed while we waited.
        if let Some(m) = self.cached() {
            return Ok(m);
        }
        if let Some((at, e)) = renewing.as_ref()
            && at.elapsed() < FAILURE_BACKOFF
        {
            return Err(e.clone());
        }
        let fetched = match tokio::time::timeout(MINT_TIMEOUT, self.fetch(ctx)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                *renewing = Some((Instant::now(), e.clone()));
                return Err(e);
            }
            Err(_) => {
                let e = MintError::new("token endpoint timeout");
                *renewing = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        *renewing = None;
        let margin = RENEW_MARGIN.min(fetched.lifetime / 2);
        let minted = Arc::new(Minted {
            fingerprint: fingerprint(fetched.value.expose()),
            expires_at: fetched.expires_at,
            renew_at: Instant::now() + fetched.lifetime.saturating_sub(margin),
            value: fetched.value,
        });
        {
            // Into the scrub set before anyone can use it.
            let mut s = self.scrub.lock().unwrap_or_else(|p| p.into_inner());
            s.tokens.push_back(minted.value.clone());
            while s.tokens.len() > SCRUB_HISTORY {
                s.tokens.pop_front();
            }
            if let Some(r) = fetched.rotated {
                s.secrets.push_back(r);
                while s.secrets.len() > SCRUB_HISTORY {
                    s.secrets.pop_front();
                }
            }
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(minted.clone());
        tracing::info!(
            credential = %self.credential,
            r#type = self.type_name(),
            token = %minted.fingerprint,
            expires_at = %minted.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "minted a token"
        );
        Ok(minted)
    }

    async fn fetch(&self, ctx: MintContext<'_>) -> Result<Fetched, MintError> {
        match &self.source {
            Source::GithubApp(a) => a.mint(ctx).await,
            Source::OAuth2(o) => o.refresh(ctx).await,
        }
    }

    /// (tokens → the grant's stub, long-lived values → masked) to scrub from responses.
    pub fn scrub_values(&self) -> (Vec<SecretValue>, Vec<SecretValue>) {
        let s = self.scrub.lock().unwrap_or_else(|p| p.into_inner());
        let mut secrets: Vec<SecretValue> = s.secrets.iter().cloned().collect();
        if let Source::OAuth2(o) = &self.source {
            secrets.extend(o.client_secret().cloned());
        }
        (s.tokens.iter().cloned().collect(), secrets)
    }
}

/// The minted values one request swaps in, by credential name.
#[derive(Default)]
pub struct MintedSwaps {
    by_name: BTreeMap<String, (Arc<Minted>, &'static str)>,
}

impl MintedSwaps {
    /// No minted credential in this request.
    pub const NONE: MintedSwaps = MintedSwaps {
        by_name: BTreeMap::new(),
    };

    /// The real value to swap in for `name`, if it is minted.
    pub fn value_for(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(|(m, _)| m.value.expose())
    }

    /// The swap record's reason for `name`: type, token fingerprint and expiry.
    pub fn audit_reason(&self, name: &str) -> Option<String> {
        self.by_name.get(name).map(|(m, ty)| {
            format!(
                "stub_swapped_for_bound_host; type={ty} token={} expires_at={}",
                m.fingerprint,
                m.expires_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
    }
}

/// The handler's hook between the rule-4 decision and the swap: for each minted
/// credential to swap, refuses the token endpoint itself and fetches the current token.
pub(crate) async fn prepare(
    grant: &Grant,
    swaps: &[String],
    dest: &PinnedDest,
    path: &str,
    ctx: MintContext<'_>,
) -> Result<MintedSwaps, Deny> {
    let mut out = MintedSwaps::default();
    for name in swaps {
        let Some(minter) = grant.credential(name).and_then(|c| c.minter.as_ref()) else {
            continue;
        };
        if minter.is_token_endpoint(dest.host(), dest.port(), path) {
            return Err(Deny::Scope {
                credential: name.clone(),
                reason: format!("token_endpoint: type={}", minter.type_name()),
            });
        }
        let m = minter
            .current(ctx)
            .await
            .map_err(|e| Deny::CredentialRefresh {
                credential: name.clone(),
                reason: format!("type={} {e}", minter.type_name()),
            })?;
        out.by_name.insert(name.clone(), (m, minter.type_name()));
    }
    Ok(out)
}

/// Builds the minter of a typed credential from its config and long-lived value.
pub(crate) fn build(
    name: &str,
    kind: &CredentialType,
    value: &SecretValue,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    store: Option<RefreshStore>,
    generation: &Arc<AtomicU64>,
) -> Result<Option<Arc<Minter>>, String> {
    Ok(match kind {
        CredentialType::GithubApp(cfg) => Some(Arc::new(Minter::github_app(
            name,
            GithubApp::new(cfg.clone(), value)?,
            generation.clone(),
        ))),
        CredentialType::Oauth2Refresh(cfg) => Some(Arc::new(Minter::oauth2(
            name,
            OAuth2::new(cfg.clone(), value.clone(), env, store)?,
            generation.clone(),
        ))),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
