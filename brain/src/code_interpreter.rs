//! The brain as the gateway's sandbox host for code interpreter interception
//! (DESIGN.md, "Contract: code interpreter interception"): containers are
//! ordinary sandboxes on the default backend, provisioned, run and destroyed
//! through the same lifecycle as `POST /v1/sandboxes` (rows, grants through the
//! vault proxy — no credentials unless the virtual key allows named ones —,
//! TTL reaping, metrics).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gateway::code_interpreter::{ExecOutput, HostError, SandboxHost, SandboxRequest};

pub mod config;

pub use config::CodeInterpreterConfig;

use crate::api::sandboxes::{self, ExecBody, ProvisionBody};
use crate::state::AppState;

/// Sandboxes from this brain's own backends.
pub struct BrainHost {
    state: AppState,
}

impl BrainHost {
    pub fn new(state: AppState) -> Arc<Self> {
        Arc::new(Self { state })
    }
}

fn unavailable(e: impl std::fmt::Display) -> HostError {
    HostError::Unavailable(e.to_string())
}

fn api_unavailable(e: crate::error::ApiError) -> HostError {
    HostError::Unavailable(format!("{}: {}", e.code, e.message))
}

#[async_trait]
impl SandboxHost for BrainHost {
    async fn create(&self, req: &SandboxRequest) -> Result<String, HostError> {
        let limits = &self.state.config.sandbox;
        let body = ProvisionBody {
            task_description: Some(req.description.clone()),
            backend: None,
            image: None,
            credentials: (!req.credentials.is_empty()).then(|| req.credentials.clone()),
            ttl_s: Some(req.ttl.as_secs().clamp(1, limits.max_ttl_seconds)),
            resources: None,
            from_snapshot: None,
            workspace: None,
        };
        let params = sandboxes::validate_provision(&self.state, body).map_err(api_unavailable)?;
        let row = crate::lifecycle::provision(&self.state, params)
            .await
            .map_err(unavailable)?;
        Ok(row.id)
    }

    async fn exec(
        &self,
        sandbox_id: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, HostError> {
        let row = self
            .state
            .store
            .get_sandbox(sandbox_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| HostError::Gone(sandbox_id.to_owned()))?;
        let now = self.state.store.clock().await.map_err(unavailable)?;
        let handle = sandboxes::usable_handle(&row, now)
            .map_err(|_| HostError::Gone(sandbox_id.to_owned()))?;
        let request = sandboxes::exec_request(
            &self.state,
            ExecBody {
                command: command.to_owned(),
                cwd: None,
                timeout_s: Some(timeout.as_secs().max(1)),
            },
        )
        .map_err(api_unavailable)?;
        let r = sandboxes::exec_collect(&self.state, &row, &handle, request)
            .await
            .map_err(api_unavailable)?;
        Ok(ExecOutput {
            exit_code: r.exit_code,
            stdout: r.stdout,
            stderr: r.stderr,
            timed_out: r.timed_out,
        })
    }

    async fn destroy(&self, sandbox_id: &str) -> Result<(), HostError> {
        crate::lifecycle::destroy(&self.state, sandbox_id)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
