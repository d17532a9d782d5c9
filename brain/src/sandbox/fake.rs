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
    /// Persistent workspaces, modelled on docker's volumes: `Some` turns them on.
    pub workspaces: Option<FakeWorkspaces>,
}

/// Docker's workspace volumes as the fake keeps them: `provision` creates the volume (unless
/// it exists) before it waits `provision_delay_ms`, then "mounts" it, as docker creates the
/// volume before the container; `delete_workspace` refuses while a live sandbox mounts it.
#[derive(Default, Debug)]
pub struct FakeWorkspaces {
    /// Volume name → generation (a re-created volume is a new, empty one).
    pub volumes: BTreeMap<String, u64>,
    /// Sandbox id → (volume, generation) it mounted.
    pub mounts: BTreeMap<String, (String, u64)>,
    /// Volumes removed so far (name, generation).
    pub removed: Vec<(String, u64)>,
    /// How long `delete_workspace` takes before it removes the volume (docker lists the
    /// containers using it first); the in-use check and the removal are one step, as the
    /// engine's are.
    pub delete_delay_ms: u64,
    next: u64,
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
        let (delay, volume) = {
            let mut state = self.lock();
            let volume = match (&mut state.workspaces, &spec.workspace) {
                (Some(ws), Some(name)) => {
                    let generation = match ws.volumes.get(name) {
                        Some(g) => *g,
                        None => {
                            ws.next += 1;
                            ws.volumes.insert(name.clone(), ws.next);
                            ws.next
                        }
                    };
                    Some((name.clone(), generation))
                }
                _ => None,
            };
            (state.provision_delay_ms, volume)
        };
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        let mut state = self.lock();
        state.specs.push(spec.clone());
        if let Some(message) = state.fail_provision.clone() {
            return Err(BackendError::Unavailable(message));
        }
        if let (Some(ws), Some(volume)) = (&mut state.workspaces, volume) {
            ws.mounts.insert(spec.id.clone(), volume);
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

    fn supports_workspaces(&self) -> bool {
        self.lock().workspaces.is_some()
    }

    async fn delete_workspace(&self, name: &str) -> Result<bool, BackendError> {
        let delay = self
            .lock()
            .workspaces
            .as_ref()
            .map_or(0, |ws| ws.delete_delay_ms);
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        let mut state = self.lock();
        let alive = state.alive.clone();
        let Some(ws) = &mut state.workspaces else {
            return Err(BackendError::not_supported(
                BackendKind::Local,
                "persistent workspaces",
            ));
        };
        if let Some((user, _)) = ws
            .mounts
            .iter()
            .find(|(id, (v, _))| v == name && alive.contains(*id))
        {
            return Err(BackendError::Conflict(format!(
                "workspace {name} is in use by sandbox {user}"
            )));
        }
        match ws.volumes.remove(name) {
            Some(generation) => {
                ws.removed.push((name.to_string(), generation));
                Ok(true)
            }
            None => Ok(false),
        }
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
