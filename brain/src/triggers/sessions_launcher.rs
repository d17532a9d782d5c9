//! The production [`SessionLauncher`]: triggered tasks become real agent-loop sessions
//! (`crate::sessions`), so a Slack mention or a GitHub issue runs exactly like
//! `POST /v1/sessions` (same model, limits, events and durability).

use async_trait::async_trait;

use super::{LaunchError, SessionLauncher, TaskOutcome, TriggeredTask};
use crate::sessions::{self, NewSession, SessionError, SessionStatus};
use crate::state::AppState;

pub struct SessionsLauncher {
    state: AppState,
}

impl SessionsLauncher {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

fn launch_error(e: SessionError) -> LaunchError {
    match e {
        SessionError::NotFound(id) => LaunchError::NotFound(id),
        SessionError::Store(e) if e.is_transient() => LaunchError::Unavailable(e.to_string()),
        other => LaunchError::Failed(other.to_string()),
    }
}

#[async_trait]
impl SessionLauncher for SessionsLauncher {
    async fn start(&self, task: TriggeredTask) -> Result<String, LaunchError> {
        let mut origin = task.origin;
        // The GitHub flow pushes from the session's sandbox after the session answers, so a
        // triggered session keeps its sandboxes past the answer (until their TTL, or the
        // trigger destroys them); `sessions` reads this flag from the stored origin.
        if let Some(map) = origin.as_object_mut() {
            map.insert(sessions::KEEP_SANDBOXES.into(), true.into());
        }
        let view = sessions::start(
            &self.state,
            NewSession {
                // Idempotent per trigger event (see `TriggeredTask::key`).
                id: task.key.map(|key| format!("ses-{key}")),
                task: task.task,
                model: None,
                agent: None,
                backend: None,
                credentials: task.credentials,
                max_steps: None,
                max_cost_usd: None,
                origin,
            },
        )
        .await
        .map_err(launch_error)?;
        Ok(view.id)
    }

    async fn follow_up(&self, session_id: &str, text: String) -> Result<(), LaunchError> {
        sessions::post_message(&self.state, session_id, text)
            .await
            .map_err(launch_error)
    }

    async fn wait_settled(&self, session_id: &str) -> Result<TaskOutcome, LaunchError> {
        let view = sessions::wait_settled(&self.state, session_id)
            .await
            .map_err(launch_error)?;
        let succeeded = view.status == SessionStatus::Succeeded;
        let summary = match (&view.result, &view.error) {
            (Some(r), _) if succeeded => r.clone(),
            (_, Some(e)) => e.clone(),
            (Some(r), None) => r.clone(),
            (None, None) => format!("session ended {}", view.status.as_str()),
        };
        Ok(TaskOutcome {
            succeeded,
            summary,
            sandbox_id: view.last_sandbox_id,
            settled_at: Some(view.updated_at),
        })
    }
}
