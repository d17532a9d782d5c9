//! Code interpreter interception (DESIGN.md, "Contract: code interpreter
//! interception"): a request declaring OpenAI's `code_interpreter` tool (or
//! Anthropic's `code_execution_*` server tool) is served here whatever model it
//! routes to. The tool becomes a function tool `code_interpreter {code}`; each
//! call runs as Python in an Airlock sandbox through a [`SandboxHost`] (the
//! brain in-process, or a brain over HTTP for the standalone gateway), and the
//! loop (`run.rs`) feeds the output back until a final answer.
//!
//! Containers (`containers.rs`) map OpenAI-style container ids to sandboxes,
//! scoped to the virtual key that made them; the Python state lives in a
//! persistent REPL inside the sandbox (`driver.py`), so variables carry over
//! between calls and requests that reuse a container.

pub mod containers;
pub mod http_host;
pub mod python;
pub mod run;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

pub use containers::Containers;

/// What a sandbox provider must offer the interceptor.
#[async_trait]
pub trait SandboxHost: Send + Sync {
    /// Provision a sandbox; returns its id.
    async fn create(&self, req: &SandboxRequest) -> Result<String, HostError>;
    /// Run a `sh -c` command to completion.
    async fn exec(
        &self,
        sandbox_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, HostError>;
    async fn destroy(&self, sandbox_id: &str) -> Result<(), HostError>;
}

/// A sandbox for one container.
#[derive(Debug, Clone, Default)]
pub struct SandboxRequest {
    /// Shown in the sandbox listing (`task_description`).
    pub description: String,
    /// Credential names the caller's key allows (none by default).
    pub credentials: Vec<String>,
    /// Lifetime bound for the sandbox itself (the idle TTL is enforced here).
    pub ttl: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    #[error("sandbox {0} is gone")]
    Gone(String),
}

/// `code_interpreter:` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Model calls per request, at most (DESIGN default 10).
    pub max_iterations: usize,
    /// A named container's sandbox is destroyed after this long unused (default 1200 s).
    pub idle_ttl: Duration,
    /// Time one code call may run.
    pub exec_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_iterations: 10,
            idle_ttl: Duration::from_secs(1200),
            exec_timeout: Duration::from_secs(120),
        }
    }
}

/// The interceptor: a host, the settings and the container registry.
pub struct CodeInterpreter {
    pub(crate) host: Arc<dyn SandboxHost>,
    pub(crate) settings: Settings,
    pub(crate) containers: Containers,
}

impl CodeInterpreter {
    pub fn new(host: Arc<dyn SandboxHost>, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            host,
            settings,
            containers: Containers::default(),
        })
    }
}
