//! **Test launcher** (`triggers.launcher: shell`): a session is one real sandbox (provisioned
//! through [`lifecycle::provision`] with the task's credentials, on the default backend) in
//! which every message — the request, then each follow-up — runs as a shell command, in
//! order; the outcome is the latest command's output. No model is involved, so end-to-end
//! tests can drive the trigger flows deterministically through real sandboxes and the real
//! vault proxy. Sessions live in memory only (a restart forgets them; the sandbox is reaped
//! by its TTL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use airlock_wire::ExecRequest;
use async_trait::async_trait;
use tokio::sync::watch;

use super::{LaunchError, SessionLauncher, TaskOutcome, TriggeredTask, truncate};
use crate::lifecycle::{self, ProvisionParams};
use crate::state::AppState;

/// Largest summary kept from a command's output.
const MAX_SUMMARY_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Default)]
struct Progress {
    /// Messages accepted and not yet run.
    pending: usize,
    last: Option<TaskOutcome>,
}

struct ShellSession {
    progress: watch::Sender<Progress>,
    /// Serialises the session's commands (a follow-up runs after the one before it).
    turn: tokio::sync::Mutex<Option<String>>,
}

pub struct ShellLauncher {
    state: AppState,
    sessions: Mutex<HashMap<String, Arc<ShellSession>>>,
}

impl ShellLauncher {
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn session(&self, id: &str) -> Result<Arc<ShellSession>, LaunchError> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| LaunchError::NotFound(id.to_string()))
    }

    /// Queues `command` behind the session's earlier ones.
    fn enqueue(
        &self,
        id: String,
        session: Arc<ShellSession>,
        command: String,
        credentials: Vec<String>,
    ) {
        session.progress.send_modify(|p| p.pending += 1);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut sandbox = session.turn.lock().await;
            let outcome = run_turn(&state, &id, &mut sandbox, &command, credentials).await;
            session.progress.send_modify(|p| {
                p.pending -= 1;
                p.last = Some(outcome);
            });
        });
    }
}

async fn run_turn(
    state: &AppState,
    session_id: &str,
    sandbox: &mut Option<String>,
    command: &str,
    credentials: Vec<String>,
) -> TaskOutcome {
    let failed = |summary: String, sandbox_id: Option<String>| TaskOutcome {
        succeeded: false,
        summary,
        sandbox_id,
        settled_at: None,
    };
    if sandbox.is_none() {
        let params = ProvisionParams {
            backend: state.backends.default_kind(),
            image: None,
            task_description: Some(truncate(command, 200)),
            credentials,
            ttl_s: state.config.sandbox.default_ttl_seconds,
            resources: state.config.sandbox.resources,
            session_id: Some(session_id.to_string()),
            from_snapshot: None,
            workspace: None,
        };
        match lifecycle::provision(state, params).await {
            Ok(row) => *sandbox = Some(row.id),
            Err(e) => return failed(format!("provisioning a sandbox failed: {e}"), None),
        }
    }
    let sandbox_id = sandbox.clone();
    let Some(id) = sandbox_id.as_deref() else {
        return failed("no sandbox".into(), None);
    };
    let row = match state.store.get_sandbox(id).await {
        Ok(Some(row)) => row,
        Ok(None) => return failed(format!("sandbox {id} vanished"), sandbox_id),
        Err(e) => return failed(e.to_string(), sandbox_id),
    };
    let (Some(handle), Ok(backend)) = (row.handle.as_ref(), state.backends.get(row.backend).await)
    else {
        return failed(format!("sandbox {id} is {}", row.status), sandbox_id);
    };
    let limits = &state.config.sandbox;
    let request = ExecRequest {
        command: Some(command.to_string()),
        timeout_ms: Some(limits.default_exec_timeout_seconds.saturating_mul(1000)),
        max_output_bytes: Some(limits.max_output_bytes),
        ..ExecRequest::default()
    };
    match backend.exec(handle, request).await {
        Ok(result) => {
            let succeeded = result.exit_code == Some(0) && !result.timed_out;
            let mut summary = result.stdout.trim_end().to_string();
            if !succeeded {
                summary = format!(
                    "exit {:?}{}\n{}\n{}",
                    result.exit_code,
                    if result.timed_out { " (timed out)" } else { "" },
                    summary,
                    result.stderr.trim_end()
                );
            }
            TaskOutcome {
                succeeded,
                summary: truncate(summary.trim(), MAX_SUMMARY_BYTES),
                sandbox_id,
                settled_at: None,
            }
        }
        Err(e) => failed(format!("exec failed: {e}"), sandbox_id),
    }
}

#[async_trait]
impl SessionLauncher for ShellLauncher {
    async fn start(&self, task: TriggeredTask) -> Result<String, LaunchError> {
        let id = format!("ses-{}", uuid::Uuid::new_v4().simple());
        let session = Arc::new(ShellSession {
            progress: watch::Sender::new(Progress::default()),
            turn: tokio::sync::Mutex::new(None),
        });
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), session.clone());
        tracing::info!(session = %id, origin = %task.origin, "shell test session started");
        self.enqueue(id.clone(), session, task.request, task.credentials);
        Ok(id)
    }

    async fn follow_up(&self, session_id: &str, text: String) -> Result<(), LaunchError> {
        let session = self.session(session_id)?;
        // Credentials were fixed when the sandbox was made; later turns reuse it.
        self.enqueue(session_id.to_string(), session, text, Vec::new());
        Ok(())
    }

    async fn wait_settled(&self, session_id: &str) -> Result<TaskOutcome, LaunchError> {
        let session = self.session(session_id)?;
        let mut rx = session.progress.subscribe();
        let progress = rx
            .wait_for(|p| p.pending == 0 && p.last.is_some())
            .await
            .map_err(|_| LaunchError::Failed("session dropped".into()))?;
        Ok(progress.last.clone().expect("checked by wait_for"))
    }
}
