//! Operational config keys of the proxy beyond credentials: `limits`, `tls`
//! (remote mode) and the audit chain options. Kept apart from the
//! credential keys so each part stays small.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, invalid, is_env_name, resolve_path};

/// `limits:` — per-sandbox fairness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Open tunnels one sandbox may hold; beyond it `429 too_many_tunnels`. Default 256.
    pub tunnels_per_sandbox: usize,
    /// A client connection that has not authenticated by then is closed. Default 5000.
    pub unauthenticated_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            tunnels_per_sandbox: 256,
            unauthenticated_timeout_ms: 5000,
        }
    }
}

/// `tls:` — remote mode: the admin API over TLS, and the `listen_tls` proxy listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, admin clients must present a certificate issued by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// `telemetry:` — where the standalone proxy sends its traces (DESIGN.md, "Telemetry").
/// Embedded in a brain, the brain's own `telemetry:` applies (one process, one exporter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `otlp_endpoint`: the OTLP/HTTP collector's base URL (`http://otel-collector:4318`);
    /// spans go to `<url>/v1/traces`. Unset: the standard `OTEL_EXPORTER_OTLP_*` env vars
    /// decide, and with none of them set tracing is off.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    otlp_endpoint: Option<String>,
}

pub(super) fn telemetry(raw: Option<RawTelemetry>) -> Result<TelemetryConfig, ConfigError> {
    let otlp_endpoint = raw
        .unwrap_or_default()
        .otlp_endpoint
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty());
    if let Some(url) = &otlp_endpoint {
        airlock_telemetry::check_otlp_endpoint(url)
            .map_err(|e| invalid("telemetry.otlp_endpoint", e.to_string()))?;
    }
    Ok(TelemetryConfig { otlp_endpoint })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    tunnels_per_sandbox: Option<usize>,
    unauthenticated_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

pub(super) fn limits(raw: Option<RawLimits>) -> Result<LimitsConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let d = LimitsConfig::default();
    let l = LimitsConfig {
        tunnels_per_sandbox: raw.tunnels_per_sandbox.unwrap_or(d.tunnels_per_sandbox),
        unauthenticated_timeout_ms: raw
            .unauthenticated_timeout_ms
            .unwrap_or(d.unauthenticated_timeout_ms),
    };
    if l.tunnels_per_sandbox == 0 {
        return Err(invalid("limits.tunnels_per_sandbox", "must be at least 1"));
    }
    if l.unauthenticated_timeout_ms == 0 {
        return Err(invalid(
            "limits.unauthenticated_timeout_ms",
            "must be at least 1",
        ));
    }
    Ok(l)
}

pub(super) fn tls(raw: Option<RawTls>, base: &Path) -> Option<TlsConfig> {
    raw.map(|t| TlsConfig {
        cert: resolve_path(base, &t.cert),
        key: resolve_path(base, &t.key),
        client_ca: t.client_ca.map(|c| resolve_path(base, &c)),
    })
}

pub(super) fn audit_key_env(raw: Option<String>) -> Result<Option<String>, ConfigError> {
    match raw {
        Some(n) if !is_env_name(&n) => Err(invalid(
            "audit_key_env",
            "must be an environment variable name",
        )),
        other => Ok(other),
    }
}
