//! `mcp:` in the brain config.

use serde::Deserialize;

/// `mcp:` in the brain config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Serve `/mcp` at all.
    pub enabled: bool,
    /// A session unused this long answers 404 (clients then re-initialize).
    pub session_idle_timeout_seconds: u64,
    /// Open sessions one key may hold; `initialize` beyond it is refused until one closes
    /// (`DELETE /mcp`) or idles out.
    pub max_sessions_per_key: u32,
    /// `DELETE /mcp` destroys the session's sandboxes (else they live until their TTL).
    pub destroy_sandboxes_on_close: bool,
    /// Browser origins (`scheme://host[:port]`) allowed to call `/mcp`. A request with any
    /// other `Origin` is refused (403); requests without one (CLI clients) are unaffected.
    pub allowed_origins: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_idle_timeout_seconds: 3600,
            max_sessions_per_key: 64,
            destroy_sandboxes_on_close: true,
            allowed_origins: Vec::new(),
        }
    }
}

impl McpConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.session_idle_timeout_seconds == 0 {
            return Err("mcp.session_idle_timeout_seconds must be positive".into());
        }
        if self.max_sessions_per_key == 0 {
            return Err("mcp.max_sessions_per_key must be positive".into());
        }
        for origin in &self.allowed_origins {
            if normalize_origin(origin).is_none() {
                return Err(format!(
                    "mcp.allowed_origins: {origin:?} is not an origin (scheme://host[:port])"
                ));
            }
        }
        Ok(())
    }

    pub(super) fn idle_ms(&self) -> i64 {
        i64::try_from(self.session_idle_timeout_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}

/// `scheme://host[:port]`, lower-cased, or `None` if `origin` is not of that form.
pub(super) fn normalize_origin(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    let valid_host = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    let valid_scheme = !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic());
    (valid_host && valid_scheme).then(|| format!("{scheme}://{rest}").to_ascii_lowercase())
}
