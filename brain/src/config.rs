//! Brain configuration: one YAML file (`airlock.yaml`), overridden by env, overridden by flags.
//!
//! Precedence, lowest first: built-in defaults → the config file → `AIRLOCK_*` env vars → flags
//! (clap reads env and flags together in `main.rs` and hands the result over as [`Overrides`]).
//!
//! The master key is a secret, so it is never written inline in the file: it comes from the env
//! var named by `master_key_env` (default `AIRLOCK_MASTER_KEY`) or from `master_key_file`. With
//! neither set the brain refuses to start, unless `--dev-generate-key` asks it to mint a random
//! key and print it once to stderr (development only: the key changes on every start).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

// The sandbox layer owns its config (each backend its own type); this file only aggregates.
pub use crate::sandbox::config::{BackendChoice, SandboxConfig};

/// File read when `--config` is not given, if it exists in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "airlock.yaml";
/// Env var holding the master key unless `master_key_env` names another.
pub const MASTER_KEY_ENV: &str = "AIRLOCK_MASTER_KEY";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// `sqlite://path` (created if missing) or `postgres://…` (several brain replicas).
    pub database_url: String,
    /// Backend used when a provision request names none: `auto` = docker if the engine
    /// answers a ping, else local (no isolation, a loud warning).
    pub backend: BackendChoice,
    /// Name of the env var that holds the master key.
    pub master_key_env: String,
    /// File whose (trimmed) content is the master key; used when the env var is unset.
    pub master_key_file: Option<PathBuf>,
    /// Sandbox defaults, limits and per-backend settings.
    pub sandbox: SandboxConfig,
    /// The vault proxy every sandbox's egress goes through.
    pub vault: VaultConfig,
    /// Slack and GitHub webhook triggers (`/hooks/*`).
    pub triggers: crate::triggers::config::TriggersConfig,
    /// `POST /mcp`, the MCP server for external harnesses.
    pub mcp: crate::mcp::config::McpConfig,
    /// Models the agent loop calls through the in-process gateway.
    pub models: crate::sessions::config::ModelsConfig,
    /// Agent-loop limits, concurrency and claims.
    pub sessions: crate::sessions::config::SessionsConfig,
    /// Warm pools: sandboxes kept started, with no grant, for `sandbox_provision` to claim.
    pub pools: Vec<crate::pool::config::PoolConfig>,
    /// Code interpreter interception on the gateway routes.
    pub code_interpreter: crate::code_interpreter::config::CodeInterpreterConfig,
    /// Traces (OTLP/HTTP) and their endpoint.
    pub telemetry: TelemetryConfig,
    /// Directory of the file this was read from (not a key).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://airlock.db".into(),
            backend: BackendChoice::Auto,
            master_key_env: MASTER_KEY_ENV.into(),
            master_key_file: None,
            sandbox: SandboxConfig::default(),
            vault: VaultConfig::default(),
            triggers: crate::triggers::config::TriggersConfig::default(),
            mcp: crate::mcp::config::McpConfig::default(),
            models: Default::default(),
            sessions: Default::default(),
            pools: Vec::new(),
            code_interpreter: Default::default(),
            telemetry: TelemetryConfig::default(),
            base_dir: None,
        }
    }
}

/// `telemetry:` in the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector's base URL (`http://otel-collector:4318`); spans go to
    /// `<url>/v1/traces`. Unset: the standard `OTEL_EXPORTER_OTLP_*` env vars decide, and
    /// with none of them set tracing is off.
    pub otlp_endpoint: Option<String>,
}

/// `vault:` in the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    pub mode: VaultMode,
    /// Embedded mode: a vault-proxy config file (DESIGN.md, "Contract: vault proxy"; relative
    /// to the brain config). Unset: no credentials, ephemeral ports, CA and audit log files
    /// (`vault-ca.pem`, `vault-ca-key.pem`, `vault-audit.jsonl`) next to the brain config.
    pub config: Option<PathBuf>,
    /// Remote mode: where the standalone proxy is.
    pub remote: Option<RemoteVaultConfig>,
    /// How often the brain records the proxy's audit head (`brain audit verify`); default 30.
    pub audit_head_interval_s: Option<u64>,
}

impl VaultConfig {
    /// `audit_head_interval_s`, or its default.
    pub fn audit_head_interval(&self) -> std::time::Duration {
        self.audit_head_interval_s
            .map(std::time::Duration::from_secs)
            .unwrap_or(crate::audit_heads::DEFAULT_INTERVAL)
    }
}

/// `vault.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultMode {
    /// The proxy runs inside the brain process (default).
    #[default]
    Embedded,
    /// A standalone `vault-proxy` by URL.
    Remote,
    /// No proxy: sandboxes get no egress (docker) and credentials are refused.
    Off,
}

/// `vault.remote`: a standalone `vault-proxy serve`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteVaultConfig {
    /// The proxy listener, `host:port`, as sandboxes (or the docker egress forwarder) dial it.
    pub url: String,
    /// Base URL of its admin API, e.g. `http://127.0.0.1:8898`.
    pub admin_url: String,
    /// Env var holding the admin API bearer token.
    #[serde(default = "default_admin_token_env")]
    pub admin_token_env: String,
    /// The proxy CA (PEM); unset: fetched from the admin API (`GET /v1/ca`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The proxy's audit log, when the brain can read it (shared volume); unset:
    /// `GET /v1/audit/egress` answers 501.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Remote mode over TLS (`admin_url: https://…`): SHA-256 fingerprint (hex, `:` allowed)
    /// of the proxy's admin certificate. The brain trusts exactly that certificate.
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// Or the proxy's admin certificate itself (PEM): its SHA-256 is the pin.
    #[serde(default)]
    pub pin_cert: Option<PathBuf>,
    /// Client certificate and key (one PEM file) for an admin API with `tls.client_ca`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The proxy's `listen_tls` (`host:port`): sandboxes get `HTTPS_PROXY=https://…` there.
    #[serde(default)]
    pub tls_url: Option<String>,
    /// PEM added to the sandbox CA bundle so sandboxes trust the `listen_tls` certificate.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

fn default_admin_token_env() -> String {
    "AIRLOCK_VAULT_ADMIN_TOKEN".into()
}

/// Values from env vars and flags (already merged by clap, flag over env).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub backend: Option<BackendChoice>,
}

/// The master key, kept out of `Debug`/`Display` so it cannot end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(String);

impl MasterKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// A random 256-bit key, hex encoded, for `--dev-generate-key`.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        let mut key = String::from("ak-dev-");
        for b in bytes {
            key.push_str(&format!("{b:02x}"));
        }
        Self(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison (time depends only on the presented token's length).
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), presented)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Compares every byte of the longer input so the running time does not reveal where the
/// first difference is; a length mismatch is folded into the result, not returned early.
pub fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    let mut diff = (expected.len() ^ presented.len()) as u64;
    let n = expected.len().max(presented.len());
    for i in 0..n {
        let a = expected.get(i).copied().unwrap_or(0);
        let b = presented.get(i).copied().unwrap_or(0xff);
        diff |= u64::from(a ^ b);
    }
    diff == 0
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error(
        "no master key: set env {env} (or `master_key_file` in the config); \
         for local development only, `brain serve --dev-generate-key` mints a random one"
    )]
    NoMasterKey { env: String },
}

// === impl Config ===

impl Config {
    /// Reads `path`, or `airlock.yaml` in the working directory if it exists, or defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::from_file(path),
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_FILE))
            }
            None => Ok(Self::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        config.resolve_paths(&dir);
        config.base_dir = Some(dir);
        Ok(config)
    }

    /// Makes the vault paths absolute, relative to `dir` (the config file's directory).
    fn resolve_paths(&mut self, dir: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let Some(p) = &mut self.vault.config {
            abs(p);
        }
        if let Some(p) = self
            .triggers
            .github
            .as_mut()
            .and_then(|g| g.ca_file.as_mut())
        {
            abs(p);
        }
        if let Some(p) = &mut self.models.config {
            abs(p);
        }
        if let Some(remote) = &mut self.vault.remote {
            if let Some(p) = &mut remote.ca_file {
                abs(p);
            }
            if let Some(p) = &mut remote.audit_log {
                abs(p);
            }
            for p in [
                &mut remote.pin_cert,
                &mut remote.client_cert,
                &mut remote.tls_ca_file,
            ]
            .into_iter()
            .flatten()
            {
                abs(p);
            }
        }
    }

    /// Directory of the config file (where the embedded vault keeps its files when it has no
    /// config of its own); the working directory without a file.
    pub fn state_dir(&self) -> PathBuf {
        self.base_dir
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    pub fn apply(&mut self, overrides: Overrides) {
        if let Some(listen) = overrides.listen {
            self.listen = listen;
        }
        if let Some(url) = overrides.database_url {
            self.database_url = url;
        }
        if let Some(backend) = overrides.backend {
            self.backend = backend;
        }
    }

    /// Checks cross-field rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.sandbox;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if s.default_ttl_seconds == 0 || s.default_ttl_seconds > s.max_ttl_seconds {
            return bad(
                "sandbox.default_ttl_seconds must be between 1 and sandbox.max_ttl_seconds",
            );
        }
        if s.default_exec_timeout_seconds == 0
            || s.default_exec_timeout_seconds > s.max_exec_timeout_seconds
        {
            return bad(
                "sandbox.default_exec_timeout_seconds must be between 1 and sandbox.max_exec_timeout_seconds",
            );
        }
        if s.max_output_bytes == 0 {
            return bad("sandbox.max_output_bytes must be positive");
        }
        if s.reaper_interval_ms == 0 {
            return bad("sandbox.reaper_interval_ms must be positive");
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return bad("database_url must start with sqlite:, postgres:// or postgresql://");
        }
        if self.vault.audit_head_interval_s == Some(0) {
            return bad("vault.audit_head_interval_s must be at least 1");
        }
        if self.vault.mode == VaultMode::Remote && self.vault.remote.is_none() {
            return bad("vault.mode remote needs vault.remote (url, admin_url)");
        }
        self.triggers.validate().map_err(ConfigError::Invalid)?;
        self.mcp.validate().map_err(ConfigError::Invalid)?;
        self.models.validate().map_err(ConfigError::Invalid)?;
        if self.triggers.any()
            && self.triggers.launcher == Some(crate::triggers::config::LauncherChoice::Sessions)
            && !self.models.is_configured()
        {
            return Err(ConfigError::Invalid(
                "triggers run their tasks as agent sessions, which need a model: configure                  `models:` (or set triggers.launcher: shell, the test launcher)"
                    .into(),
            ));
        }
        self.sessions.validate().map_err(ConfigError::Invalid)?;
        crate::pool::config::validate(&self.pools).map_err(ConfigError::Invalid)?;
        if self.sandbox.docker.caches.needs_tenant()
            && self
                .pools
                .iter()
                .any(|p| p.backend == crate::sandbox::BackendKind::Docker)
        {
            // A pooled sandbox is made before its tenant is known: it could never be claimed.
            return Err(ConfigError::Invalid(
                "pools: a docker pool cannot serve while sandbox.docker.caches has a `tenant` \
                 cache (per-tenant caches are mounted at creation); use `shared` or drop the pool"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The master key from the env var named by `master_key_env`, else `master_key_file`.
    /// `lookup_env` is injected so tests do not touch the process environment.
    pub fn master_key(
        &self,
        lookup_env: impl Fn(&str) -> Option<String>,
    ) -> Result<MasterKey, ConfigError> {
        if let Some(key) = lookup_env(&self.master_key_env).filter(|k| !k.trim().is_empty()) {
            return Ok(MasterKey::new(key.trim()));
        }
        if let Some(path) = &self.master_key_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let key = text.trim();
            if key.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "master_key_file {} is empty",
                    path.display()
                )));
            }
            return Ok(MasterKey::new(key));
        }
        Err(ConfigError::NoMasterKey {
            env: self.master_key_env.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooled sandbox is made before its tenant is known (`sandbox/docker/caches.rs`).
    #[test]
    fn a_docker_pool_is_refused_with_a_tenant_cache() {
        let yaml = |caches: &str| {
            format!(
                "pools: [{{backend: docker, size: 2}}]\nsandbox:\n  docker:\n    caches: {caches}\n"
            )
        };
        let shared = Config::from_yaml(&yaml("{npm: shared}")).unwrap();
        assert!(shared.validate().is_ok());
        let tenant = Config::from_yaml(&yaml("{cargo: tenant}")).unwrap();
        let err = tenant.validate().unwrap_err().to_string();
        assert!(err.contains("tenant"), "{err}");
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../airlock.example.yaml");
        let config = Config::from_yaml(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.backend, BackendChoice::Auto);
        assert_eq!(config.sandbox.docker.image, "airlock-sandbox:latest");
        // The remote sections spell out the defaults.
        assert_eq!(
            config.sandbox.e2b,
            crate::sandbox::e2b::E2bConfig::default()
        );
        assert_eq!(
            config.sandbox.daytona,
            crate::sandbox::daytona::DaytonaConfig::default()
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::from_yaml("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url, "sqlite://airlock.db");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        for (yaml, needle) in [
            ("lisen: 127.0.0.1:1\n", "lisen"),
            ("sandbox:\n  ttl: 5\n", "ttl"),
            ("sandbox:\n  local:\n    agent: x\n", "agent"),
        ] {
            let err = Config::from_yaml(yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml:?}: {err}");
        }
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut config = Config::from_yaml("listen: 127.0.0.1:9000\nbackend: docker\n").unwrap();
        config.apply(Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            database_url: Some("sqlite://x.db".into()),
            backend: None,
        });
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.database_url, "sqlite://x.db");
        assert_eq!(config.backend, BackendChoice::Docker);
    }

    #[test]
    fn master_key_comes_from_env_then_file_else_refuses() {
        let config = Config::default();
        let key = config
            .master_key(|n| (n == MASTER_KEY_ENV).then(|| " k1 ".into()))
            .unwrap();
        assert!(key.matches(b"k1"));
        let err = config.master_key(|_| None).unwrap_err().to_string();
        assert!(
            err.contains("AIRLOCK_MASTER_KEY") && err.contains("--dev-generate-key"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let config = Config {
            master_key_file: Some(file),
            ..Config::default()
        };
        assert!(config.master_key(|_| None).unwrap().matches(b"from-file"));
    }

    #[test]
    fn constant_time_eq_checks_length_and_content() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(format!("{:?}", MasterKey::new("secret")).contains("redacted"));
    }

    #[test]
    fn backend_choice_parses_every_contract_value() {
        for name in ["auto", "local", "docker", "kubernetes", "e2b", "daytona"] {
            name.parse::<BackendChoice>().unwrap();
        }
        assert!("podman".parse::<BackendChoice>().is_err());
    }

    #[test]
    fn vault_paths_are_relative_to_the_config_file_and_remote_needs_its_section() {
        assert_eq!(Config::default().vault.mode, VaultMode::Embedded);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("airlock.yaml");
        std::fs::write(
            &file,
            "vault:\n  config: v/vault.yaml\n  remote: { url: \"h:1\", admin_url: \"http://h:2\", ca_file: ca.pem }\n",
        )
        .unwrap();
        let config = Config::from_file(&file).unwrap();
        let base = std::path::absolute(dir.path()).unwrap();
        assert_eq!(config.vault.config, Some(base.join("v/vault.yaml")));
        let remote = config.vault.remote.as_ref().unwrap();
        assert_eq!(remote.ca_file, Some(base.join("ca.pem")));
        assert_eq!(remote.admin_token_env, "AIRLOCK_VAULT_ADMIN_TOKEN");
        assert_eq!(config.state_dir(), base);

        let config = Config::from_yaml("vault: { mode: remote }\n").unwrap();
        assert!(config.validate().is_err());
        let config = Config::from_yaml("vault: { mode: off }\n").unwrap();
        config.validate().unwrap();
        assert!(Config::from_yaml("vault: { mode: maybe }\n").is_err());
    }

    #[test]
    fn validate_rejects_inconsistent_limits() {
        let mut config = Config::default();
        config.sandbox.default_ttl_seconds = config.sandbox.max_ttl_seconds + 1;
        assert!(config.validate().is_err());
        let config = Config {
            database_url: "mysql://x".into(),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
