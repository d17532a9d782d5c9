//! In-memory backend for component tests: records what it was asked and answers exec from a
//! tiny script (`echo X`, `exit N`, `sleep`, `fail`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use airlock_wire::{ExecEvent, ExecExit, ExecRequest, ExecResult};
use async_trait::async_trait;

use super::{
    BackendError, BackendKind, ExecStream, LabelledSandbox, SandboxBackend, SandboxHandle,
    SandboxSpec,
};

#[derive(Default)]
pub struct FakeBackend {
    pub state: Mutex<FakeState>,
}

#[derive(Default)]
pub struct FakeState {
    /// Sandboxes that "run".
    pub alive: BTreeSet<String>,
    pub specs: Vec<SandboxSpec>,
    pub destroyed: Vec<String>,
    pub execs: Vec<ExecRequest>,
    /// Leftovers `list_labelled` reports (id → owner).
    pub labelled: BTreeMap<String, String>,
    pub fail_provision: Option<String>,
    /// How long `provision` takes (to test requests racing a provision).
    pub provision_delay_ms: u64,
    pub fail_destroy: bool,
    /// The next this many `is_alive` checks fail (a health check timing out on a busy host).
    pub alive_failures: u32,
    /// How many `is_alive` checks were made.
    pub alive_checks: u32,
    /// Backend calls in order (`destroy <id>`, also when it fails); tests may push their own
    /// (a broker's `revoke <id>`) to check what happened before what.
    pub calls: Vec<String>,
}

impl FakeBackend {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn run(req: &ExecRequest) -> Result<ExecResult, BackendError> {
        let command = req.command.clone().unwrap_or_default();
        let mut result = ExecResult {
            exit_code: Some(0),
            ..ExecResult::default()
        };
        if let Some(text) = command.strip_prefix("echo ") {
            result.stdout = format!("{text}\n");
        } else if let Some(code) = command.strip_prefix("exit ") {
            result.exit_code = code.parse().ok();
        } else if command == "fail" {
            return Err(BackendError::AgentUnreachable("connection reset".into()));
        } else if command == "badcwd" {
            return Err(BackendError::Agent {
                status: 400,
                code: "bad_cwd".into(),
                message: "no such dir".into(),
            });
        }
        if let Some(cap) = req.max_output_bytes {
            let cap = cap as usize;
            if result.stdout.len() > cap {
                result.stdout.truncate(cap);
                result.truncated = true;
            }
        }
        Ok(result)
    }
}

#[async_trait]
impl SandboxBackend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    async fn provision(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        let delay = self.lock().provision_delay_ms;
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        let mut state = self.lock();
        state.specs.push(spec.clone());
        if let Some(message) = state.fail_provision.clone() {
            return Err(BackendError::Unavailable(message));
        }
        state.alive.insert(spec.id.clone());
        state.labelled.insert(spec.id.clone(), spec.owner.clone());
        Ok(SandboxHandle {
            id: spec.id.clone(),
            backend: BackendKind::Local,
            backend_ref: format!("fake-{}", spec.id),
            agent_url: None,
            agent_token: spec.agent_token.clone(),
            extra: BTreeMap::new(),
        })
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        let mut state = self.lock();
        state.calls.push(format!("destroy {}", handle.id));
        if state.fail_destroy {
            return Err(BackendError::Unavailable("engine down".into()));
        }
        state.alive.remove(&handle.id);
        state.labelled.remove(&handle.id);
        state.destroyed.push(handle.id.clone());
        Ok(())
    }

    async fn destroy_labelled(&self, found: &LabelledSandbox) -> Result<(), BackendError> {
        let mut state = self.lock();
        state.alive.remove(&found.id);
        state.labelled.remove(&found.id);
        state.destroyed.push(found.id.clone());
        Ok(())
    }

    async fn list_labelled(&self) -> Result<Vec<LabelledSandbox>, BackendError> {
        Ok(self
            .lock()
            .labelled
            .iter()
            .map(|(id, owner)| LabelledSandbox {
                id: id.clone(),
                owner: Some(owner.clone()),
                backend_ref: id.clone(),
            })
            .collect())
    }

    async fn is_alive(&self, handle: &SandboxHandle) -> bool {
        let mut state = self.lock();
        state.alive_checks += 1;
        if state.alive_failures > 0 {
            state.alive_failures -= 1;
            return false;
        }
        state.alive.contains(&handle.id)
    }

    async fn exec(
        &self,
        handle: &SandboxHandle,
        req: ExecRequest,
    ) -> Result<ExecResult, BackendError> {
        let mut state = self.lock();
        if !state.alive.contains(&handle.id) {
            return Err(BackendError::NotFound(handle.id.clone()));
        }
        state.execs.push(req.clone());
        Self::run(&req)
    }

    async fn exec_stream(
        &self,
        handle: &SandboxHandle,
        req: ExecRequest,
    ) -> Result<ExecStream, BackendError> {
        let result = self.exec(handle, req).await?;
        let events = vec![
            Ok(ExecEvent::Stdout {
                data: result.stdout,
            }),
            Ok(ExecEvent::Stderr {
                data: result.stderr,
            }),
            Ok(ExecEvent::Exit(ExecExit {
                exit_code: result.exit_code,
                signal: result.signal,
                timed_out: result.timed_out,
                truncated: result.truncated,
                duration_ms: result.duration_ms,
            })),
        ];
        Ok(Box::pin(futures_util::stream::iter(events)))
    }
}
