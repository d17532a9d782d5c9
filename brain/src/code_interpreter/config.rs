//! `code_interpreter:` in the brain config.

use std::time::Duration;

use gateway::code_interpreter::Settings;
use serde::Deserialize;

/// `code_interpreter:` in the brain's config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodeInterpreterConfig {
    /// Serve `code_interpreter` / `code_execution` tools with Airlock sandboxes.
    pub enabled: bool,
    /// Model calls per request, at most.
    pub max_iterations: usize,
    /// A named container is destroyed after this long unused.
    pub idle_ttl_seconds: u64,
    /// Time one code call may run.
    pub exec_timeout_seconds: u64,
}

impl Default for CodeInterpreterConfig {
    fn default() -> Self {
        let s = Settings::default();
        Self {
            enabled: true,
            max_iterations: s.max_iterations,
            idle_ttl_seconds: s.idle_ttl.as_secs(),
            exec_timeout_seconds: s.exec_timeout.as_secs(),
        }
    }
}

impl CodeInterpreterConfig {
    pub fn settings(&self) -> Settings {
        Settings {
            max_iterations: self.max_iterations.max(1),
            idle_ttl: Duration::from_secs(self.idle_ttl_seconds.max(1)),
            exec_timeout: Duration::from_secs(self.exec_timeout_seconds.max(1)),
        }
    }
}
