//! Slack and GitHub triggers: signed webhooks that start (or continue) sessions and post the
//! result back (a Slack thread reply, a GitHub comment and, when code changed, a draft PR).
//!
//! Request path: `POST /hooks/{slack,github}` (mounted outside master-key auth: the signature
//! is the authentication) → [`signature`] over the raw body → admission ([`Limiter`]: a
//! semaphore plus a bounded queue; beyond it 503 and a log line, no session) → dedupe by the
//! source's delivery id ([`store::record_delivery`], a primary key, so it holds across
//! replicas) → 200 at once; the work runs in a spawned task through the
//! [`SessionLauncher`] seam. Replies go into the `trigger_replies` outbox first and
//! [`outbox::run`] delivers them with backoff, so an API outage or a restart delays a reply
//! but never loses it. The reply a session owes once it settles is itself a row
//! ([`waits`], leased): a brain killed while a triggered session runs leaves it to be taken
//! over by the next brain, which queues the reply when the resumed session settles.
//!
//! The launcher is a trait so this module does not depend on how sessions run:
//! [`build_launcher`] picks `sessions_launcher` (the agent loop, the default) or, with
//! `triggers.launcher: shell`,
//! [`shell_launcher::ShellLauncher`], a test launcher that runs the user's words as a shell
//! command in a real sandbox.

pub mod config;
pub mod github;
pub mod github_approvals;
pub mod inbox;
mod lease;
pub mod outbox;
pub mod sessions_launcher;
pub mod shell_launcher;
pub mod signature;
pub mod slack;
pub mod store;
pub mod waits;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

pub use config::{GithubConfig, LauncherChoice, SlackConfig, TriggersConfig};

use crate::state::AppState;

/// What a trigger asks a session to do.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggeredTask {
    /// The full task for an agent: the request plus its context (repo, issue, thread).
    pub task: String,
    /// The requester's own words (mention text, issue body, comment after the prefix).
    pub request: String,
    /// Credentials the session's sandboxes get (e.g. `GITHUB_TOKEN` for the GitHub flow).
    pub credentials: Vec<String>,
    /// Where it came from, stored with the session (`{"kind":"slack","channel",…}`, as `sessions` filters by `origin.kind`).
    pub origin: serde_json::Value,
    /// Makes the start idempotent: a launcher given the same key again (the same webhook
    /// event, handled again after a takeover or a lost answer) returns the session it started
    /// the first time instead of starting another.
    pub key: Option<String>,
}

/// Where a session stands once it settled (finished, or answered and waits for follow-ups).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutcome {
    pub succeeded: bool,
    /// The answer (or the error) to post back.
    pub summary: String,
    /// The session's latest sandbox, if any: the GitHub flow pushes from it.
    pub sandbox_id: Option<String>,
    /// Identifies the settled state (the session's last update): two waits that see the same
    /// settle owe one reply between them, so it keys the reply (`waits::complete`). `None`:
    /// no key, every wait replies (launchers without a durable session).
    pub settled_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no session {0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
    /// The database could not be reached: the same call may succeed later (callers retry).
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
}

/// First and longest pause while a webhook event's handling waits out a database outage.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(200);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs one step of handling a webhook event, retrying while the database is unreachable: an
/// outage pauses the event (it is held; its steps are idempotent, so a repeat after a lost
/// answer or a takeover changes nothing) instead of answering the thread with the error and
/// dropping an event that was acknowledged.
pub(crate) async fn retry_launch<T, F, Fut>(what: &str, mut op: F) -> Result<T, LaunchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LaunchError>>,
{
    let mut pause = RETRY_FIRST;
    loop {
        match op().await {
            Err(LaunchError::Unavailable(e)) => {
                tracing::warn!(error = %e, "{what}: the database is unreachable; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// [`retry_launch`] for store calls: transient errors are retried, others returned.
pub(crate) async fn retry_store<T, F, Fut>(
    what: &str,
    mut op: F,
) -> Result<T, crate::store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let mut pause = RETRY_FIRST;
    loop {
        match op().await {
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "{what}: the database is unreachable; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// A short id that ties a generic public message to the log line holding its detail.
pub(crate) fn error_reference() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("err-{}", &id[..12])
}

/// The text a thread gets for an error: `what` went wrong and a reference, never the error's
/// own text (Slack threads and GitHub comments may be public, and a launch error can carry
/// store or internal details). The detail is logged under the same reference.
pub(crate) fn public_error(
    what: &str,
    session: Option<&str>,
    error: &dyn std::fmt::Display,
) -> String {
    let reference = error_reference();
    tracing::error!(reference = %reference, session = session.unwrap_or(""), error = %error,
        "{what}; the thread gets a reference only");
    format!("{what} (reference `{reference}`; the details are in the Airlock log).")
}

/// The session an event starts: derived from the event's id, so handling the event again
/// (after a takeover, or a retry after a lost answer) finds the same session.
pub(crate) fn session_key(event_id: &str) -> String {
    event_id.strip_prefix("ev-").unwrap_or(event_id).to_string()
}

/// The seam between triggers and sessions: start one, send it a follow-up, wait for it to
/// settle. Kept this thin so the real sessions module implements it in a few lines.
#[async_trait]
pub trait SessionLauncher: Send + Sync {
    /// Starts a session and returns its id without waiting for it to run.
    async fn start(&self, task: TriggeredTask) -> Result<String, LaunchError>;
    /// Adds a message to a session (a reply in its Slack thread, a new `/airlock` comment).
    async fn follow_up(&self, session_id: &str, text: String) -> Result<(), LaunchError>;
    /// Resolves when the session is terminal or has answered its latest message.
    async fn wait_settled(&self, session_id: &str) -> Result<TaskOutcome, LaunchError>;
}

/// The launcher `triggers.launcher` names. The one place that knows the implementations.
pub fn build_launcher(state: &AppState, choice: LauncherChoice) -> Arc<dyn SessionLauncher> {
    match choice {
        LauncherChoice::Sessions => {
            Arc::new(sessions_launcher::SessionsLauncher::new(state.clone()))
        }
        LauncherChoice::Shell => {
            tracing::warn!(
                "triggers.launcher shell: trigger text runs as a shell command in a sandbox \
                 (test launcher, no model)"
            );
            Arc::new(shell_launcher::ShellLauncher::new(state.clone()))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerSetupError {
    #[error("{0}")]
    Config(String),
    #[error("env {0} is not set (needed by the {1} trigger)")]
    MissingSecret(String, &'static str),
}

/// Everything the hooks and the outbox worker share. Held in [`AppState::triggers`].
pub struct Triggers {
    pub launcher: Arc<dyn SessionLauncher>,
    pub slack: Option<slack::SlackTrigger>,
    pub github: Option<github::GithubTrigger>,
    /// Wakes the outbox worker when a reply is enqueued.
    pub outbox_wakeup: Notify,
    pub retry: outbox::RetryPolicy,
    /// Serialises "look up the thread's session, else start one and bind it" (held for
    /// milliseconds: starting a session does not wait for it to run).
    pub thread_lock: tokio::sync::Mutex<()>,
    /// Webhook events ([`inbox`]) whose task lives in this process: only their leases are
    /// renewed, so an event whose task died is taken over once its lease lapses.
    live_events: LiveSet,
    /// Owed replies ([`waits`]) whose task lives in this process: only their leases are
    /// renewed, so a wait whose task ended without settling it (a store error that is not
    /// an outage, a panic) is released to a takeover instead of being renewed forever.
    live_waits: LiveSet,
}

/// Keeps an event's (or a wait's) lease renewed while alive (dropped on every exit of its
/// task, panics included).
pub struct EventGuard {
    id: String,
    live: LiveSet,
}

impl Drop for EventGuard {
    fn drop(&mut self) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Triggers {
    /// Reads the secrets named in the config (refusing to start without them: a hook with no
    /// secret would accept anything) and builds the clients.
    pub fn from_config(
        config: &TriggersConfig,
        launcher: Arc<dyn SessionLauncher>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TriggerSetupError> {
        config.validate().map_err(TriggerSetupError::Config)?;
        let secret = |name: &str, who: &'static str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| TriggerSetupError::MissingSecret(name.to_string(), who))
        };
        let slack = match &config.slack {
            Some(c) => Some(slack::SlackTrigger::new(
                c.clone(),
                secret(&c.signing_secret_env, "slack")?,
                secret(&c.bot_token_env, "slack")?,
            )?),
            None => None,
        };
        let github = match &config.github {
            Some(c) => Some(github::GithubTrigger::new(
                c.clone(),
                secret(&c.webhook_secret_env, "github")?,
                secret(&c.token_env, "github")?,
            )?),
            None => None,
        };
        Ok(Self {
            launcher,
            slack,
            github,
            outbox_wakeup: Notify::new(),
            thread_lock: tokio::sync::Mutex::new(()),
            live_events: Arc::default(),
            live_waits: Arc::default(),
            retry: outbox::RetryPolicy {
                base: std::time::Duration::from_millis(config.reply_retry_base_ms),
                max: std::time::Duration::from_millis(config.reply_retry_max_ms),
                ..outbox::RetryPolicy::default()
            },
        })
    }

    /// Marks a webhook event as handled by a live task here (see [`EventGuard`]).
    pub fn hold_event(&self, id: &str) -> EventGuard {
        hold(&self.live_events, id)
    }

    /// Ids of the webhook events handled by live tasks here.
    pub fn live_events(&self) -> Vec<String> {
        ids(&self.live_events)
    }

    /// Marks an owed reply as completed by a live task here (see [`EventGuard`]).
    pub fn hold_wait(&self, id: &str) -> EventGuard {
        hold(&self.live_waits, id)
    }

    /// Ids of the owed replies completed by live tasks here.
    pub fn live_waits(&self) -> Vec<String> {
        ids(&self.live_waits)
    }

    /// Puts a reply in the outbox (durably) and wakes the worker.
    pub async fn reply(&self, state: &AppState, payload: store::ReplyPayload) {
        match store::enqueue_reply(&state.store, &payload).await {
            Ok(id) => {
                tracing::debug!(reply = %id, source = payload.source().as_str(), "reply queued");
                self.outbox_wakeup.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, source = payload.source().as_str(),
                    "cannot queue a reply; it is lost")
            }
        }
    }
}

type LiveSet = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

fn hold(live: &LiveSet, id: &str) -> EventGuard {
    live.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string());
    EventGuard {
        id: id.to_string(),
        live: live.clone(),
    }
}

fn ids(live: &LiveSet) -> Vec<String> {
    live.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// Caps concurrent work per trigger: `max_concurrent` run, `max_queued` wait, the rest are
/// refused. Admission is decided synchronously in the hook, so a flood is answered with 503s
/// instead of piling up tasks.
pub struct Limiter {
    permits: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
}

/// A place in the limiter; released on drop.
pub struct Admission {
    admitted: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
}

impl Limiter {
    pub fn new(max_concurrent: usize, max_queued: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: max_concurrent + max_queued,
        }
    }

    pub fn try_admit(&self) -> Option<Admission> {
        let capacity = self.capacity;
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()?;
        Some(Admission {
            admitted: self.admitted.clone(),
            permits: self.permits.clone(),
        })
    }

    /// Admits an event taken over from a stopped brain whatever the queue holds: it was
    /// acknowledged already, so it cannot be refused any more; it still waits for a run slot.
    pub fn admit_taken_over(&self) -> Admission {
        self.admitted.fetch_add(1, Ordering::AcqRel);
        Admission {
            admitted: self.admitted.clone(),
            permits: self.permits.clone(),
        }
    }

    /// Events admitted and not yet finished (running or queued).
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }
}

impl Admission {
    /// Waits for a running slot.
    pub async fn run_slot(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the limiter's semaphore is never closed")
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Cuts `text` to at most `max` bytes on a char boundary, saying so.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n… (truncated)", &text[..end])
}

#[cfg(test)]
mod tests;
