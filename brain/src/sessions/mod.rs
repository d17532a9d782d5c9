//! Sessions: the agent loop, its tools, the durable event log and work claims.
//!
//! - [`start`] commits a `queued` row and wakes the [`dispatcher`], which claims sessions
//!   (this process's `instance` id + a lease; PostgreSQL `FOR UPDATE SKIP LOCKED`) and runs
//!   each in [`agent::Driver`]. A heartbeat renews the leases; a brain that dies stops
//!   renewing, and once the lease expires any brain (a restart, another replica) claims the
//!   session and resumes it from its events. On SQLite only one brain uses the file, so a
//!   starting brain releases every earlier claim at once.
//! - Every event is committed, fenced by the claim, before the loop acts on it
//!   ([`store::Store::append_event`]).
//! - Follow-ups ([`post_message`]) queue in `session_messages`; the loop turns them into
//!   `user_message` events before its next model call. A session that already answered is
//!   re-queued and runs again.

pub mod agent;
pub mod config;
#[cfg(test)]
mod failures;
pub mod model;
pub mod store;
#[cfg(test)]
mod tests;
pub mod tools;

use std::collections::HashMap;

use std::sync::Mutex;
use std::time::Duration;
use tracing::Instrument;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Serialize;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use config::{ModelsConfig, SessionsConfig};
pub use model::Models;
pub use store::{Cursor, EventRow, ListFilter, SessionPage, SessionRow, SessionStatus};

use crate::lifecycle;
use crate::sandbox::BackendKind;
use crate::state::AppState;
use crate::store::StoreError;
use store::{NewSessionRow, QueueOutcome};

/// A task to run, from any trigger.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// A caller-chosen id (`ses-…`) makes the start idempotent: starting again with the same
    /// id returns that session (a webhook event handled again after a takeover). `None`: a
    /// fresh id.
    pub id: Option<String>,
    pub task: String,
    pub model: Option<String>,
    pub agent: Option<String>,
    pub backend: Option<BackendKind>,
    pub credentials: Vec<String>,
    pub max_steps: Option<u32>,
    pub max_cost_usd: Option<f64>,
    /// where the task came from: {"kind":"api"|"slack"|"github"|"mcp", ...trigger data}
    pub origin: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no session {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "no model is configured on this brain (set `models:` in the brain config, e.g. a scripted model)"
    )]
    NoModel,
    #[error("session {id} is {status}: it takes no more messages")]
    Closed { id: String, status: SessionStatus },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// `GET /v1/sessions/{id}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionView {
    pub id: String,
    pub status: SessionStatus,
    pub task: String,
    pub model: String,
    pub agent: Option<String>,
    pub backend: Option<BackendKind>,
    pub credentials: Vec<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub steps: u32,
    pub max_steps: u32,
    pub usage: Usage,
    pub cost_usd: f64,
    pub max_cost_usd: Option<f64>,
    pub sandbox_ids: Vec<String>,
    pub last_sandbox_id: Option<String>,
    pub pending_messages: i64,
    pub origin: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl SessionView {
    fn new(row: SessionRow, sandbox_ids: Vec<String>) -> Self {
        Self {
            usage: Usage {
                input_tokens: row.input_tokens,
                output_tokens: row.output_tokens,
            },
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            id: row.id,
            status: row.status,
            task: row.task,
            model: row.model,
            agent: row.agent,
            backend: row.backend,
            credentials: row.credentials,
            result: row.result,
            error: row.error,
            steps: row.steps,
            max_steps: row.max_steps,
            cost_usd: row.cost_usd,
            max_cost_usd: row.max_cost_usd,
            sandbox_ids,
            last_sandbox_id: row.last_sandbox_id,
            pending_messages: row.pending_messages,
            origin: row.origin,
        }
    }
}

/// Chunks of live output a slow follower may fall behind by before it skips some.
const OUTPUT_BUFFER: usize = 256;

/// A chunk of a running `sandbox_execute`'s output (SSE event `exec_output` on the console's
/// transcript stream). Ephemeral: the durable record is the call's `tool_result`.
#[derive(Debug, Clone, Serialize)]
pub struct ExecOutput {
    pub call_id: String,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub data: String,
}

/// Per-process session machinery, in [`AppState::sessions`].
pub struct Runtime {
    /// Claim owner id of this process (a store is shared by replicas, a process is not).
    instance: String,
    wake: Notify,
    /// Loops running here: cancelling the token stops the loop at its next await.
    local: Mutex<HashMap<String, CancellationToken>>,
    /// Latest event seq per session with live followers (SSE, `wait_settled`).
    watchers: Mutex<HashMap<String, watch::Sender<i64>>>,
    /// Live exec output per session with followers (the console's transcript): chunks as the
    /// sandbox prints them, never stored (the `tool_result` event holds the whole output).
    outputs: Mutex<HashMap<String, broadcast::Sender<ExecOutput>>>,
    /// Cancelled when the brain shuts down: live event streams end instead of holding the
    /// graceful shutdown open.
    pub(crate) shutdown: CancellationToken,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            instance: format!(
                "brain-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            wake: Notify::new(),
            local: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            outputs: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps; a panic elsewhere cannot leave them half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runtime {
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Sessions whose loop runs in this process.
    pub fn running_here(&self) -> usize {
        lock(&self.local).len()
    }

    /// Ids of the sessions whose loop runs in this process.
    pub fn live_ids(&self) -> Vec<String> {
        lock(&self.local).keys().cloned().collect()
    }

    /// Follow a session's event seq (changes when an event is committed by this process;
    /// followers also poll the store for other replicas' writes).
    pub fn subscribe(&self, id: &str) -> watch::Receiver<i64> {
        let mut map = lock(&self.watchers);
        map.entry(id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub(crate) fn published(&self, id: &str, seq: i64) {
        let mut map = lock(&self.watchers);
        if let Some(tx) = map.get(id) {
            if tx.receiver_count() == 0 {
                map.remove(id);
            } else {
                tx.send_replace(seq);
            }
        }
    }

    /// Follow a session's live exec output (chunks printed from now on, on this replica).
    pub fn subscribe_output(&self, id: &str) -> broadcast::Receiver<ExecOutput> {
        let mut map = lock(&self.outputs);
        map.entry(id.to_owned())
            .or_insert_with(|| broadcast::channel(OUTPUT_BUFFER).0)
            .subscribe()
    }

    /// Whether anyone follows `id`'s live output.
    pub(crate) fn output_followed(&self, id: &str) -> bool {
        let mut map = lock(&self.outputs);
        match map.get(id) {
            Some(tx) if tx.receiver_count() > 0 => true,
            Some(_) => {
                map.remove(id);
                false
            }
            None => false,
        }
    }

    /// Hands a chunk of a running command's output to `id`'s followers (dropped when none).
    pub(crate) fn exec_output(&self, id: &str, chunk: ExecOutput) {
        let map = lock(&self.outputs);
        if let Some(tx) = map.get(id) {
            let _ = tx.send(chunk);
        }
    }

    fn wake(&self) {
        self.wake.notify_one();
    }
}

fn view_err(id: &str) -> SessionError {
    SessionError::NotFound(id.to_owned())
}

async fn view(state: &AppState, row: SessionRow) -> Result<SessionView, SessionError> {
    let sandboxes = state.store.session_sandboxes(&row.id).await?;
    Ok(SessionView::new(
        row,
        sandboxes.into_iter().map(|(id, _)| id).collect(),
    ))
}

pub async fn start(state: &AppState, new: NewSession) -> Result<SessionView, SessionError> {
    let config = &state.config.sessions;
    let models = state.models.as_ref().ok_or(SessionError::NoModel)?;
    let task = new.task.trim();
    if task.is_empty() {
        return Err(SessionError::Invalid("task must not be empty".into()));
    }
    let model = new.model.unwrap_or_else(|| models.default_model.clone());
    if !models.knows(&model) {
        return Err(SessionError::Invalid(format!(
            "unknown model {model:?} (this brain serves: see GET /v1/models)"
        )));
    }
    if let Some(backend) = new.backend {
        let default = state.backends.default_kind();
        if backend != default && !state.config.sandbox.allowed_backends.contains(&backend) {
            return Err(SessionError::Invalid(format!(
                "backend `{backend}` is not enabled (default is `{default}`; others must be \
                 listed in sandbox.allowed_backends)"
            )));
        }
    }
    for name in &new.credentials {
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(SessionError::Invalid(format!(
                "credential name {name:?} must be [A-Za-z0-9_]+"
            )));
        }
    }
    if !new.credentials.is_empty() && state.broker.is_none() {
        return Err(SessionError::Invalid(
            "no vault proxy configured: credentials cannot be granted to sandboxes".into(),
        ));
    }
    let max_steps = new.max_steps.unwrap_or(config.default_max_steps);
    if max_steps == 0 || max_steps > config.max_steps_limit {
        return Err(SessionError::Invalid(format!(
            "max_steps must be between 1 and {}",
            config.max_steps_limit
        )));
    }
    let max_cost_usd = new.max_cost_usd.or(config.default_max_cost_usd);
    if max_cost_usd.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
        return Err(SessionError::Invalid(
            "max_cost_usd must be a positive number".into(),
        ));
    }
    let origin = if new.origin.is_null() {
        serde_json::json!({ "kind": "api" })
    } else {
        new.origin
    };
    let id = match new.id {
        Some(id) => {
            let valid = id.len() <= 100
                && id.starts_with("ses-")
                && id[4..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(SessionError::Invalid(format!("invalid session id {id:?}")));
            }
            id
        }
        None => format!("ses-{}", uuid::Uuid::new_v4().simple()),
    };
    let row = NewSessionRow {
        id,
        task: task.to_owned(),
        model,
        agent: new.agent,
        backend: new.backend,
        credentials: new.credentials,
        max_steps,
        max_cost_usd,
        origin,
        // On the database clock: any replica may run the session and compares with it.
        deadline_at: state.store.clock_ms().await?
            + i64::try_from(config.timeout_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
    };
    let row = state.store.insert_session(&row).await?;
    if row.status != SessionStatus::Queued {
        // Started before under this id (idempotent start): as it now is.
        return view(state, row).await;
    }
    tracing::info!(session = %row.id, model = %row.model, "session queued");
    state.sessions.wake();
    Ok(SessionView::new(row, Vec::new()))
}

pub async fn get(state: &AppState, id: &str) -> Result<SessionView, SessionError> {
    let row = state
        .store
        .get_session(id)
        .await?
        .ok_or_else(|| view_err(id))?;
    view(state, row).await
}

pub async fn list(state: &AppState, filter: &ListFilter) -> Result<Vec<SessionView>, SessionError> {
    let rows = state.store.list_sessions(filter).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(view(state, row).await?);
    }
    Ok(out)
}

/// One page of [`Store::list_sessions_page`](crate::store::Store::list_sessions_page) as
/// views, with the cursor of the next page.
pub async fn list_page(
    state: &AppState,
    filter: &ListFilter,
) -> Result<(Vec<SessionView>, Option<Cursor>, usize), SessionError> {
    let page = state.store.list_sessions_page(filter).await?;
    let mut out = Vec::with_capacity(page.rows.len());
    for row in page.rows {
        out.push(view(state, row).await?);
    }
    Ok((out, page.next, page.scanned))
}

pub async fn post_message(state: &AppState, id: &str, text: String) -> Result<(), SessionError> {
    if text.trim().is_empty() {
        return Err(SessionError::Invalid("text must not be empty".into()));
    }
    match state.store.queue_message(id, &text).await? {
        QueueOutcome::NotFound => Err(view_err(id)),
        QueueOutcome::Closed(status) => Err(SessionError::Closed {
            id: id.to_owned(),
            status,
        }),
        QueueOutcome::Queued { unclaimed } => {
            if unclaimed {
                state.sessions.wake();
            }
            Ok(())
        }
    }
}

/// Requests cancellation and waits briefly for the loop to record it; returns the session
/// as it then is (a terminal session is returned unchanged).
pub async fn cancel(state: &AppState, id: &str) -> Result<SessionView, SessionError> {
    let row = state
        .store
        .get_session(id)
        .await?
        .ok_or_else(|| view_err(id))?;
    if row.status.is_terminal() {
        return view(state, row).await;
    }
    state.store.request_cancel(id).await?;
    let local = lock(&state.sessions.local).get(id).cloned();
    match local {
        Some(token) => token.cancel(),
        // Queued here or running elsewhere: a claim (or the owner's heartbeat) sees the flag.
        None => state.sessions.wake(),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), wait_settled(state, id)).await;
    get(state, id).await
}

/// Resolves when the session is terminal (succeeded/failed/cancelled) — or, for a session
/// that answered and waits for follow-ups, when it has produced its latest answer.
///
/// A database outage pauses the wait (transient store errors are retried): a caller that
/// acts on the outcome (a trigger posting the answer) must not take "unreachable" for one.
pub async fn wait_settled(state: &AppState, id: &str) -> Result<SessionView, SessionError> {
    let mut rx = state.sessions.subscribe(id);
    let mut pause = Duration::from_millis(200);
    loop {
        let settled = match state.store.get_session(id).await {
            Ok(Some(row)) if row.is_settled() => view(state, row).await.map(Some),
            Ok(Some(_)) => Ok(None),
            Ok(None) => return Err(view_err(id)),
            Err(e) => Err(e.into()),
        };
        match settled {
            Ok(Some(view)) => return Ok(view),
            Ok(None) => pause = Duration::from_millis(200),
            Err(SessionError::Store(e)) if e.is_transient() => {
                tracing::warn!(session = %id, error = %e, "waiting for a session: the database is unreachable; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(e),
        }
        // Local commits wake us at once; another replica's are seen by the poll.
        let _ = tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
    }
}

/// Claims and runs sessions until `stop`; renews the leases of the loops running here and
/// forwards cancel requests made through other replicas. On stop, running loops are dropped
/// (as a crash would) and their claims released, so the next brain resumes them at once.
pub async fn dispatcher(state: AppState, mut stop: watch::Receiver<bool>) {
    let config = state.config.sessions.clone();
    let rt = state.sessions.clone();
    let lease = Duration::from_secs(config.lease_seconds);
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut heartbeat = tokio::time::interval(lease / 3);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let poll = Duration::from_millis(config.poll_interval_ms);
    let mut tasks = tokio::task::JoinSet::new();
    // Since when every store call here succeeded (`None`: the last one failed). Sessions whose
    // lease lapsed are taken only after a whole lease of that: after a database outage every
    // lease looks lapsed at once, and the replica that reconnects first must not take a live
    // peer's sessions (their loops run on; a takeover turns their running tools into
    // "interrupted" results) before that peer could renew them.
    let mut healthy_since = Some(std::time::Instant::now());
    loop {
        // The select only decides; the work happens after it, so no borrow of the stop
        // receiver (a non-Send guard) lives across an await.
        let beat = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = rt.wake.notified() => false,
            _ = tokio::time::sleep(poll) => false,
            _ = heartbeat.tick() => true,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => false,
        };
        if beat {
            let began = std::time::Instant::now();
            let ok = heartbeat_once(&state, lease_ms).await;
            healthy_since = track_health(healthy_since, ok, began.elapsed() < lease / 3);
            continue;
        }
        let free = config.max_concurrent.saturating_sub(rt.running_here());
        if free == 0 {
            continue;
        }
        let limit = i64::try_from(free).unwrap_or(i64::MAX);
        let here = rt.live_ids();
        let take_lapsed = healthy_since.is_some_and(|since| since.elapsed() >= lease);
        let began = std::time::Instant::now();
        let ids = match state
            .store
            .claim_sessions_with(&rt.instance, lease_ms, limit, &here, take_lapsed)
            .await
        {
            Ok(ids) => {
                healthy_since = track_health(healthy_since, true, began.elapsed() < lease / 3);
                ids
            }
            Err(e) => {
                healthy_since = track_health(healthy_since, false, false);
                tracing::warn!(error = %e, "claiming sessions failed");
                continue;
            }
        };
        for id in ids {
            let token = CancellationToken::new();
            {
                let mut local = lock(&rt.local);
                if local.contains_key(&id) {
                    // Never a second loop for a session this process runs (the claim query
                    // excludes them; this covers a loop that registered meanwhile).
                    continue;
                }
                local.insert(id.clone(), token.clone());
            }
            let state = state.clone();
            tasks.spawn(async move {
                run_claimed(&state, &id, &token).await;
                lock(&state.sessions.local).remove(&id);
                state.sessions.wake();
            });
        }
    }
    rt.shutdown.cancel();
    tasks.abort_all();
    tracing::debug!(loops = tasks.len(), "stopping session loops");
    while tasks.join_next().await.is_some() {}
    lock(&rt.local).clear();
    tracing::debug!("session loops stopped");
    // Bounded: a stop must not hang on the database (seen on PostgreSQL after an outage);
    // unreleased claims lapse with their lease instead.
    let release = state.store.release_claims(Some(&rt.instance));
    match tokio::time::timeout(RELEASE_TIMEOUT, release).await {
        Ok(Ok(n)) if n > 0 => {
            tracing::info!(sessions = n, "released session claims for the next brain")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing session claims failed"),
        Err(_) => tracing::warn!(
            "releasing session claims took over {RELEASE_TIMEOUT:?}; they lapse with their lease"
        ),
    }
}

/// The dispatcher's health clock after a store call: reset by a failure, restarted by a slow
/// success (an outage often shows as no error at all: the pool waits for a connection until
/// the database is back, and the call then succeeds), started by the first success after one.
fn track_health(
    since: Option<std::time::Instant>,
    ok: bool,
    prompt: bool,
) -> Option<std::time::Instant> {
    match (since, ok, prompt) {
        (_, false, _) => None,
        (Some(t), true, true) => Some(t),
        (_, true, _) => Some(std::time::Instant::now()),
    }
}

/// How long a stopping dispatcher tries to hand its claims over.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Renews the leases of the loops alive here, and only those. Cancels the token of a loop
/// whose cancel was requested, or whose claim another brain took (it stops at its next
/// write instead of running a tool for a session it no longer owns).
/// Returns whether the store answered (no live loop: nothing to ask, `true`).
pub(crate) async fn heartbeat_once(state: &AppState, lease_ms: i64) -> bool {
    let rt = &state.sessions;
    let live = rt.live_ids();
    if live.is_empty() {
        return true;
    }
    match state
        .store
        .renew_leases(&rt.instance, &live, lease_ms)
        .await
    {
        Ok(renewal) => {
            let local = lock(&rt.local);
            for id in &live {
                let lost = !renewal.held.contains(id);
                if (lost || renewal.cancelled.contains(id))
                    && let Some(token) = local.get(id)
                {
                    token.cancel();
                }
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "renewing session leases failed");
            false
        }
    }
}

/// Drives one claimed session to its end, whatever that end is: a panic in the loop fails
/// the session (with a reference to the log) and releases the claim, rather than leaving a
/// claim whose loop is gone.
async fn run_claimed(state: &AppState, id: &str, token: &CancellationToken) {
    use futures_util::FutureExt;
    let outcome = std::panic::AssertUnwindSafe(drive(state, id, token))
        .catch_unwind()
        .await;
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into());
        let owner = state.sessions.instance.clone();
        fail_internal(state, id, &owner, &format!("panic: {message}")).await;
        cleanup_sandboxes(state, id).await;
    }
}

/// One trace per session: a `session` span is the root of everything done for one run of
/// it (model calls, tools, sandboxes, the vault's egress decisions). The first traced run's
/// span is the trace's root and its `traceparent` is stored with the session; a later run
/// (resumed after a restart, by another replica, or for a follow-up) is a `session` span
/// under that root, in the same trace. A root whose brain was killed never ends, so it is
/// never exported: the resumed run's span then points at a parent the collector lacks.
async fn drive(state: &AppState, id: &str, token: &CancellationToken) {
    let stored = if airlock_telemetry::tracing_enabled() {
        match state.store.session_trace_parent(id).await {
            Ok(tp) => tp,
            Err(e) => {
                // Tracing is best effort: the run goes on in a trace of its own.
                tracing::warn!(session = %id, error = %e, "reading the session's trace failed");
                None
            }
        }
    } else {
        None
    };
    let span = tracing::info_span!(
        target: airlock_telemetry::TARGET,
        parent: None,
        "session",
        "session.id" = %id,
        "airlock.instance" = %state.sessions.instance,
        "session.continued" = stored.is_some(),
    );
    match stored {
        Some(tp) => {
            if !airlock_telemetry::set_remote_parent(&span, &tp) {
                tracing::warn!(session = %id, "the session's stored trace context is unreadable");
            }
        }
        None => {
            if let Some(tp) = airlock_telemetry::traceparent(&span)
                && let Err(e) = state.store.set_session_trace_parent(id, &tp).await
            {
                tracing::warn!(session = %id, error = %e, "storing the session's trace failed");
            }
        }
    }
    drive_in_span(state, id, token).instrument(span).await
}

async fn drive_in_span(state: &AppState, id: &str, token: &CancellationToken) {
    let owner = state.sessions.instance.clone();
    let driver = agent::Driver {
        state,
        id,
        owner: &owner,
        cancel: token,
    };
    tracing::info!(session = %id, "session claimed");
    match driver.run().await {
        Ok(()) => cleanup_sandboxes(state, id).await,
        Err(agent::LoopError::ClaimLost) => {
            tracing::warn!(session = %id, "session claim lost; another brain resumes it");
        }
        Err(agent::LoopError::Store(e)) => {
            fail_internal(state, id, &owner, &e.to_string()).await;
            cleanup_sandboxes(state, id).await;
        }
    }
}

/// Fails a session for an internal error. The session's `error` (which triggers post to
/// Slack threads and GitHub comments, possibly public) carries only a reference; the details
/// go to the log under it. If even that cannot be written the claim is released (or, with the
/// database gone, left to lapse: no heartbeat renews it once its loop has ended) so another
/// loop resumes the session.
async fn fail_internal(state: &AppState, id: &str, owner: &str, detail: &str) {
    let reference = format!("err-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    tracing::error!(session = %id, reference = %reference, error = %detail, "session loop failed");
    let reason = format!("internal error (reference {reference}; details are in the brain's log)");
    let patch = store::Patch {
        status: Some(SessionStatus::Failed),
        error: Some(&reason),
        release_claim: true,
        ..store::Patch::default()
    };
    let data = serde_json::json!({ "status": "failed", "error": reason });
    match state
        .store
        .append_event(id, Some(owner), "status", &data, &patch)
        .await
    {
        Ok(Some(event)) => state.sessions.published(id, event.seq),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(session = %id, error = %e, "could not record the failure; the session will be resumed");
            if let Err(e) = state.store.release_claim(id, owner).await {
                tracing::warn!(session = %id, error = %e, "releasing the claim failed; it lapses with its lease");
            }
        }
    }
}

/// `origin` key: when `true`, a run's sandboxes outlive its answer (until their TTL), for a
/// caller that still works in them afterwards (the GitHub trigger pushes from them).
pub const KEEP_SANDBOXES: &str = "keep_sandboxes";

/// A finished run's sandboxes are destroyed (their grants revoked with them). A follow-up
/// re-provisions. A brain dying before this leaves them to the TTL reaper.
async fn cleanup_sandboxes(state: &AppState, id: &str) {
    let row = match state.store.get_session(id).await {
        Ok(Some(row)) if row.status.is_terminal() => row,
        _ => return,
    };
    if row.status == SessionStatus::Succeeded
        && row.origin.get(KEEP_SANDBOXES) == Some(&serde_json::Value::Bool(true))
    {
        return;
    }
    let sandboxes = match state.store.session_sandboxes(id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(session = %id, error = %e, "listing the session's sandboxes failed");
            return;
        }
    };
    for (sandbox, status) in sandboxes {
        if matches!(status.as_str(), "provisioning" | "running")
            && let Err(e) = lifecycle::destroy(state, &sandbox).await
        {
            tracing::warn!(session = %id, %sandbox, error = %e, "destroying a session sandbox failed");
        }
    }
}
