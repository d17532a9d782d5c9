//! `sandbox:` in the brain's config and the `backend:` choice. The sandbox layer owns these
//! (each backend its own config type); `config.rs` only aggregates them, so nothing under
//! `sandbox/` imports from above.

use serde::Deserialize;

use super::daytona::DaytonaConfig;
use super::docker::DockerConfig;
use super::e2b::E2bConfig;
use super::kubernetes::KubernetesConfig;
use super::local::LocalConfig;
use super::{BackendKind, Resources};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Lifetime of a sandbox when the request sets no `ttl_s`.
    pub default_ttl_seconds: u64,
    /// Largest `ttl_s` a request may ask for; larger values are rejected with 400.
    pub max_ttl_seconds: u64,
    /// Resources when the request sets none (missing fields are filled from here).
    pub resources: Resources,
    /// Upper bounds for requested resources.
    pub max_resources: Resources,
    /// Backends a request may name besides the default one. The default is always allowed.
    pub allowed_backends: Vec<BackendKind>,
    /// Exec timeout when the request sets no `timeout_s`.
    pub default_exec_timeout_seconds: u64,
    /// Largest `timeout_s` honoured; larger values are clamped.
    pub max_exec_timeout_seconds: u64,
    /// Output cap (stdout + stderr) per exec; beyond it output is dropped and the result says
    /// `truncated: true`. Bounds the brain's memory per exec.
    pub max_output_bytes: u64,
    /// How often the reaper looks for expired sandboxes and unfinished destroys.
    pub reaper_interval_ms: u64,
    /// The local (child process, no isolation) backend.
    pub local: LocalConfig,
    /// The docker backend.
    pub docker: DockerConfig,
    /// The kubernetes backend.
    pub kubernetes: KubernetesConfig,
    /// The E2B backend (cloud microVMs).
    pub e2b: E2bConfig,
    /// The Daytona backend (cloud sandboxes).
    pub daytona: DaytonaConfig,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            default_ttl_seconds: 3600,
            max_ttl_seconds: 24 * 3600,
            resources: Resources::default(),
            max_resources: Resources {
                cpus: 8.0,
                memory_mb: 16 * 1024,
                pids: 4096,
            },
            allowed_backends: Vec::new(),
            default_exec_timeout_seconds: 600,
            max_exec_timeout_seconds: 3600,
            max_output_bytes: 1024 * 1024,
            reaper_interval_ms: 10_000,
            local: LocalConfig::default(),
            docker: DockerConfig::default(),
            kubernetes: KubernetesConfig::default(),
            e2b: E2bConfig::default(),
            daytona: DaytonaConfig::default(),
        }
    }
}

/// `backend:` in the file / `--backend` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Auto,
    Local,
    Docker,
    Kubernetes,
    E2b,
    Daytona,
}

impl BackendChoice {
    /// The fixed backend, or `None` for `auto`.
    pub fn kind(self) -> Option<BackendKind> {
        match self {
            BackendChoice::Auto => None,
            BackendChoice::Local => Some(BackendKind::Local),
            BackendChoice::Docker => Some(BackendKind::Docker),
            BackendChoice::Kubernetes => Some(BackendKind::Kubernetes),
            BackendChoice::E2b => Some(BackendKind::E2b),
            BackendChoice::Daytona => Some(BackendKind::Daytona),
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(BackendChoice::Auto);
        }
        let kind: BackendKind = s.parse()?;
        Ok(match kind {
            BackendKind::Local => BackendChoice::Local,
            BackendKind::Docker => BackendChoice::Docker,
            BackendKind::Kubernetes => BackendChoice::Kubernetes,
            BackendKind::E2b => BackendChoice::E2b,
            BackendKind::Daytona => BackendChoice::Daytona,
        })
    }
}
