//! `models:` and `sessions:` in the brain config.

use std::path::PathBuf;

use serde::Deserialize;

/// `models:` — the LiteLLM-style model list the in-process gateway serves. Either a LiteLLM
/// `config.yaml` (`config`, relative to the brain config) or an inline `model_list`; with
/// neither, no model is configured and `POST /v1/sessions` answers 503.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    pub config: Option<PathBuf>,
    /// LiteLLM `model_list` entries (`model_name`, `litellm_params`), as in its config file.
    pub model_list: Vec<serde_json::Value>,
    /// LiteLLM `litellm_settings` (num_retries, fallbacks, request_timeout) for the inline list.
    pub litellm_settings: Option<serde_json::Value>,
    /// LiteLLM `router_settings` for the inline list.
    pub router_settings: Option<serde_json::Value>,
    /// Model a session uses when it names none; unset: the first `model_name`.
    pub default_model: Option<String>,
}

impl ModelsConfig {
    pub fn is_configured(&self) -> bool {
        self.config.is_some() || !self.model_list.is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.config.is_some() && !self.model_list.is_empty() {
            return Err("models: set either `config` or `model_list`, not both".into());
        }
        Ok(())
    }
}

/// `sessions:` — agent-loop limits and claims.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Loops this brain process runs at once; more sessions wait `queued`.
    pub max_concurrent: usize,
    /// Model calls per session when the request sets no `max_steps`.
    pub default_max_steps: u32,
    /// Largest `max_steps` a request may ask for.
    pub max_steps_limit: u32,
    /// Cost budget when the request sets none (unset: no budget).
    pub default_max_cost_usd: Option<f64>,
    /// Wall-clock limit of one run of a session (from start, or from a follow-up).
    pub timeout_seconds: u64,
    /// Tool output fed back to the model, per result; the rest is cut with a marker.
    pub max_tool_output_bytes: usize,
    /// A claim holds this long without a heartbeat (renewed every third of it). Another
    /// replica, or a restarted brain on PostgreSQL, takes over once it has expired.
    pub lease_seconds: u64,
    /// How often an idle dispatcher looks for claimable sessions (other replicas' work,
    /// expired leases); new local sessions wake it at once.
    pub poll_interval_ms: u64,
    /// System prompt; unset: a built-in one describing the tools.
    pub system_prompt: Option<String>,
    /// `max_tokens` per model call.
    pub max_tokens: u64,
    /// A session resumed more often than this after its brain stopped mid-run (a crash
    /// loop) fails with a reason instead of being billed without bound.
    pub max_resumes: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            default_max_steps: 50,
            max_steps_limit: 1000,
            default_max_cost_usd: None,
            timeout_seconds: 3600,
            max_tool_output_bytes: 16 * 1024,
            lease_seconds: 30,
            poll_interval_ms: 1000,
            system_prompt: None,
            max_tokens: 4096,
            max_resumes: 5,
        }
    }
}

impl SessionsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent == 0 {
            return Err("sessions.max_concurrent must be positive".into());
        }
        if self.default_max_steps == 0 || self.default_max_steps > self.max_steps_limit {
            return Err(
                "sessions.default_max_steps must be between 1 and sessions.max_steps_limit".into(),
            );
        }
        if self
            .default_max_cost_usd
            .is_some_and(|c| c.is_nan() || c <= 0.0)
        {
            return Err("sessions.default_max_cost_usd must be positive".into());
        }
        if self.timeout_seconds == 0 || self.lease_seconds < 2 || self.poll_interval_ms == 0 {
            return Err(
                "sessions.timeout_seconds and poll_interval_ms must be positive, lease_seconds at least 2"
                    .into(),
            );
        }
        if self.max_tool_output_bytes < 256 {
            return Err("sessions.max_tool_output_bytes must be at least 256".into());
        }
        Ok(())
    }
}
