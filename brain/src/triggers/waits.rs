//! Replies owed to a trigger, kept durable across brain restarts.
//!
//! Once a Slack mention or a GitHub issue has started (or continued) a session, its reply is
//! owed when the session settles. Waiting for that in a task alone loses the reply if the brain
//! dies first: the webhook was answered long ago and nobody retries it. So the wait is a row in
//! `trigger_waits` (migration 0005) before the task starts waiting:
//!
//! - the waiting brain holds a lease on the row and renews it ([`run`], every lease/3);
//! - a brain killed mid-wait stops renewing; once the lease expires any brain (the restarted
//!   one, a replica) claims the row (compare-and-set on the lease it read, so one wins) and
//!   finishes the wait: the session was resumed by the sessions dispatcher meanwhile, or had
//!   already settled;
//! - finishing deletes the row and queues the reply in the `trigger_replies` outbox in one
//!   transaction, only if this brain still owns the row: a reply is queued once.
//!
//! The lease is the sessions lease (`sessions.lease_seconds`), so after a SIGKILL the reply
//! follows within about that long after the session settles.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::store::{self, ReplyPayload, Source, now_ms};
use super::{LaunchError, TaskOutcome, Triggers, github, inbox, lease, slack};
use crate::state::AppState;
use crate::store::{Store, StoreError, on_pool};

/// What finishing a wait needs besides the session: where the reply goes and, for GitHub,
/// what to push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitContext {
    Slack { channel: String, thread_ts: String },
    Github { request: github::Request },
}

impl WaitContext {
    fn source(&self) -> Source {
        match self {
            WaitContext::Slack { .. } => Source::Slack,
            WaitContext::Github { .. } => Source::Github,
        }
    }
}

/// One owed reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    pub id: String,
    pub session_id: String,
    pub context: WaitContext,
}

fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: "trigger_waits",
        message: message.into(),
    }
}

/// The wait lease: the sessions lease, in milliseconds.
fn lease_ms(state: &AppState) -> i64 {
    i64::try_from(state.config.sessions.lease_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Records an owed reply, owned by this brain; when it is owed for a webhook event
/// (`event_id`), the event leaves the inbox in the same transaction. On a store error the
/// caller still waits in memory (the reply then only survives as long as this process; the
/// event, if any, stays and is taken over after its lease).
pub async fn begin(
    state: &AppState,
    session_id: &str,
    context: WaitContext,
    event_id: Option<&str>,
) -> Result<Wait, (Wait, StoreError)> {
    let wait = Wait {
        id: format!("tw-{}", uuid::Uuid::new_v4().simple()),
        session_id: session_id.to_string(),
        context,
    };
    match insert_consuming(
        &state.store,
        &wait,
        state.sessions.instance(),
        lease_ms(state),
        event_id,
    )
    .await
    {
        Ok(()) => Ok(wait),
        Err(e) => Err((wait, e)),
    }
}

/// Writes a wait row owned by `owner` with a lease of `lease_ms` from now on the database
/// clock (leases never use a brain's own clock: a skewed one would take healthy leases).
pub async fn insert(
    store: &Store,
    wait: &Wait,
    owner: &str,
    lease_ms: i64,
) -> Result<(), StoreError> {
    insert_consuming(store, wait, owner, lease_ms, None).await
}

/// [`insert`], deleting the webhook event `event_id` (the inbox row it answers) in the same
/// transaction.
async fn insert_consuming(
    store: &Store,
    wait: &Wait,
    owner: &str,
    lease_ms: i64,
    event_id: Option<&str>,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(&wait.context).map_err(|e| corrupt(e.to_string()))?;
    let sql = format!(
        "INSERT INTO trigger_waits (id, source, session_id, context, owner, lease_expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, {} + $6, $7)",
        store.db_now_sql()
    );
    on_pool!(store.db(), |pool| {
        let mut tx = pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(&wait.id)
            .bind(wait.context.source().as_str())
            .bind(&wait.session_id)
            .bind(&json)
            .bind(owner)
            .bind(lease_ms)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        if let Some(event_id) = event_id {
            sqlx::query("DELETE FROM trigger_events WHERE id = $1")
                .bind(event_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Deletes the wait and queues its reply in one transaction, if this brain still owns it.
/// `Ok(false)`: another brain took it over (it will reply).
pub async fn finish(
    store: &Store,
    owner: &str,
    wait_id: &str,
    payload: &ReplyPayload,
) -> Result<bool, StoreError> {
    #[cfg(test)]
    store.fault("finish_wait", None)?;
    let (reply_id, json) = store::reply_row(payload)?;
    let insert_reply = store::insert_reply_sql(store);
    Ok(on_pool!(store.db(), |pool| {
        let mut tx = pool.begin().await?;
        let owned = sqlx::query("DELETE FROM trigger_waits WHERE id = $1 AND owner = $2")
            .bind(wait_id)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if owned {
            sqlx::query(sqlx::AssertSqlSafe(insert_reply.clone()))
                .bind(&reply_id)
                .bind(payload.source().as_str())
                .bind(&json)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        owned
    }))
}

/// Claims `key` (one settle of one session) for `wait_id` unless another wait has it; returns
/// the wait that holds it. A wait re-run after a takeover keeps its id, so it still wins.
pub async fn claim_reply_key(
    store: &Store,
    key: &str,
    wait_id: &str,
) -> Result<String, StoreError> {
    let insert = format!(
        "INSERT INTO trigger_reply_keys (reply_key, wait_id, created_at) VALUES ($1, $2, {}) \
         ON CONFLICT (reply_key) DO NOTHING",
        store.db_now_sql()
    );
    Ok(on_pool!(store.db(), |pool| {
        sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
            .bind(key)
            .bind(wait_id)
            .execute(pool)
            .await?;
        sqlx::query_scalar("SELECT wait_id FROM trigger_reply_keys WHERE reply_key = $1")
            .bind(key)
            .fetch_one(pool)
            .await?
    }))
}

/// Deletes a wait that owes nothing (another wait replies), if this brain still owns it.
pub async fn abandon(store: &Store, owner: &str, wait_id: &str) -> Result<bool, StoreError> {
    Ok(on_pool!(store.db(), |pool| {
        sqlx::query("DELETE FROM trigger_waits WHERE id = $1 AND owner = $2")
            .bind(wait_id)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
            == 1
    }))
}

/// Extends, by `lease_ms` on the database clock, the leases of the waits `ids` this brain
/// owns: only those whose task is alive ([`Triggers::live_waits`]), so a wait left by a task
/// that ended without settling it lapses and is taken over (by this brain too).
pub async fn renew(
    store: &Store,
    owner: &str,
    ids: &[String],
    lease_ms: i64,
) -> Result<u64, StoreError> {
    lease::WAITS.renew(store, owner, ids, lease_ms).await
}

/// Makes waits claimable now: `owner`'s on a clean stop, or all of them (`None`) when a
/// brain starts on SQLite, where no other brain can be alive.
pub async fn release(store: &Store, owner: Option<&str>) -> Result<u64, StoreError> {
    lease::WAITS.release(store, owner).await
}

/// Takes over up to `limit` waits whose lease expired (their brain died). Each is claimed by
/// compare-and-set on the lease value read, so two brains never take the same one. Expiry and
/// the new lease (`lease_ms`) are on the database clock.
pub async fn claim_expired(
    store: &Store,
    owner: &str,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<Wait>, StoreError> {
    let won = lease::WAITS
        .claim_expired(store, owner, lease_ms, limit, ["session_id", "context"])
        .await?;
    won.into_iter()
        .map(
            |lease::Won {
                 id,
                 columns: [session_id, context],
             }| {
                let context: WaitContext =
                    serde_json::from_str(context.as_deref().unwrap_or_default())
                        .map_err(|e| corrupt(format!("wait {id}: {e}")))?;
                let session_id =
                    session_id.ok_or_else(|| corrupt(format!("wait {id}: no session_id")))?;
                Ok(Wait {
                    id,
                    session_id,
                    context,
                })
            },
        )
        .collect()
}

/// Waits for the session to settle, builds the reply (for GitHub: after pushing the changes)
/// and queues it, durably when the wait row exists.
pub async fn complete(state: &AppState, triggers: &Arc<Triggers>, wait: Wait, durable: bool) {
    // Renewed while this task lives; every exit (a panic included) lets the lease lapse.
    let _live = durable.then(|| triggers.hold_wait(&wait.id));
    let outcome: Result<TaskOutcome, LaunchError> =
        triggers.launcher.wait_settled(&wait.session_id).await;
    // Two waits on one session (a follow-up while the first was still owed) see the same
    // settle: one reply (and one GitHub publish) between them.
    if durable
        && let Ok(TaskOutcome {
            settled_at: Some(settled_at),
            ..
        }) = &outcome
    {
        let key = format!("{}@{settled_at}", wait.session_id);
        // Retried through an outage: this brain renews the row for as long as it lives, so
        // giving up here would leave the reply owed and never taken over.
        let claimed = super::retry_store("claiming a reply key", || {
            claim_reply_key(&state.store, &key, &wait.id)
        });
        match claimed.await {
            Ok(winner) if winner == wait.id => {}
            Ok(winner) => {
                tracing::info!(session = %wait.session_id, wait = %wait.id, other = %winner,
                    "another wait answers this settle of the session; not replying twice");
                if let Err(e) = abandon(&state.store, state.sessions.instance(), &wait.id).await {
                    tracing::warn!(wait = %wait.id, error = %e, "removing a redundant wait failed; it is retried after its lease");
                }
                return;
            }
            Err(e) => {
                // The row stays: once its lease lapses a brain claims it and tries again.
                tracing::error!(session = %wait.session_id, error = %e,
                    "cannot claim the reply key now; it will be retried after the lease");
                return;
            }
        }
    }
    let payload = match &wait.context {
        WaitContext::Slack { channel, thread_ts } => {
            slack::settled_reply(channel, thread_ts, &wait.session_id, outcome)
        }
        WaitContext::Github { request } => {
            github::settled_reply(state, triggers, request, &wait.session_id, outcome).await
        }
    };
    if !durable {
        triggers.reply(state, payload).await;
        return;
    }
    let finished = super::retry_store("queuing a trigger reply", || {
        finish(&state.store, state.sessions.instance(), &wait.id, &payload)
    });
    match finished.await {
        Ok(true) => {
            tracing::debug!(session = %wait.session_id, wait = %wait.id, "trigger reply queued");
            triggers.outbox_wakeup.notify_one();
        }
        Ok(false) => {
            tracing::info!(session = %wait.session_id, wait = %wait.id,
                "another brain took this reply over; not queuing it twice")
        }
        Err(e) => {
            // Not an outage: this reply cannot be stored (as it is). Settle the wait with a
            // generic reply instead; the detail stays in the log under its reference.
            let reference = super::error_reference();
            tracing::error!(session = %wait.session_id, wait = %wait.id, reference = %reference,
                error = %e, "cannot queue the trigger reply; sending a generic one instead");
            let generic = generic_reply(&wait.context, &wait.session_id, &reference);
            settle_generically(state, triggers, &wait, &generic, &reference).await;
        }
    }
}

/// Attempts at queuing the generic reply, [`GENERIC_PAUSE`] apart and doubling, before the
/// owed reply is given up. Bounded: released for a takeover instead, an unstorable reply
/// would be tried again after every lease, for ever.
const GENERIC_ATTEMPTS: u32 = 4;
const GENERIC_PAUSE: Duration = Duration::from_millis(250);

/// Queues the generic reply (retrying an error that is not an outage a few times, with
/// backoff); if it still cannot be stored, gives the reply up: the wait row is removed (no
/// brain takes it over again), with an error log under `reference` and
/// `airlock_triggers_replies_failed_total{source}`.
async fn settle_generically(
    state: &AppState,
    triggers: &Arc<Triggers>,
    wait: &Wait,
    generic: &ReplyPayload,
    reference: &str,
) {
    let owner = state.sessions.instance();
    let mut pause = GENERIC_PAUSE;
    for attempt in 1..=GENERIC_ATTEMPTS {
        let settled = super::retry_store("queuing a generic trigger reply", || {
            finish(&state.store, owner, &wait.id, generic)
        });
        match settled.await {
            Ok(true) => {
                triggers.outbox_wakeup.notify_one();
                return;
            }
            // Another brain took it over (it replies).
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(session = %wait.session_id, wait = %wait.id, reference = %reference,
                    error = %e, attempt, "cannot queue a generic trigger reply");
                if attempt < GENERIC_ATTEMPTS {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }
    let source = wait.context.source().as_str();
    tracing::error!(session = %wait.session_id, wait = %wait.id, reference = %reference, source,
        attempts = GENERIC_ATTEMPTS,
        "cannot queue even a generic trigger reply; giving the reply up (the thread gets none)");
    state.metrics.reply_failed(source, true);
    let removed = super::retry_store("giving up a trigger reply", || {
        abandon(&state.store, owner, &wait.id)
    });
    if let Err(e) = removed.await {
        // Left to lapse: a brain takes it over after its lease and tries once more.
        tracing::error!(wait = %wait.id, error = %e, "removing a given-up trigger wait failed");
    }
}

/// The reply owed when the real one cannot be built or stored: says so, with a reference to
/// the log line that has the detail (the thread may be public).
fn generic_reply(context: &WaitContext, session_id: &str, reference: &str) -> ReplyPayload {
    let text = format!(
        "Airlock could not report the result of session `{session_id}` (reference `{reference}`)."
    );
    match context {
        WaitContext::Slack { channel, thread_ts } => ReplyPayload::SlackMessage {
            channel: channel.clone(),
            thread_ts: thread_ts.clone(),
            text: format!(":warning: {text}"),
        },
        WaitContext::Github { request } => ReplyPayload::GithubComment {
            repo: request.repo.clone(),
            issue: request.issue,
            body: text,
        },
    }
}

/// Records the wait (consuming the webhook event it answers, if any), then completes it (the
/// whole life of one owed reply in this brain).
pub async fn begin_and_complete(
    state: &AppState,
    triggers: &Arc<Triggers>,
    session_id: &str,
    context: WaitContext,
    event_id: Option<&str>,
) {
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match begin(state, session_id, context.clone(), event_id).await {
            Ok(wait) => return complete(state, triggers, wait, true).await,
            // An outage pauses it (the event stays held): answering from memory would answer
            // twice once the event, still in the inbox, is taken over after this brain.
            Err((_, e)) if e.is_transient() => {
                tracing::warn!(session = %session_id, error = %e,
                    "recording the owed reply: the database is unreachable; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err((wait, e)) => {
                tracing::error!(session = %session_id, error = %e,
                    "cannot record the owed reply; it will not survive a restart");
                return complete(state, triggers, wait, false).await;
            }
        }
    }
}

/// Renews this brain's wait leases and takes over expired ones until `stop`.
pub async fn run(state: AppState, triggers: Arc<Triggers>, mut stop: watch::Receiver<bool>) {
    let lease = Duration::from_secs(state.config.sessions.lease_seconds);
    let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(200)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let owner = state.sessions.instance().to_string();
    if state.store.engine() == "sqlite" {
        // One brain per SQLite file: every wait in it belongs to a dead process; take them
        // over now rather than after their leases (the sessions dispatcher does the same).
        match release(&state.store, None).await {
            Ok(n) if n > 0 => {
                tracing::info!(waits = n, "finishing trigger replies of the previous run")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "releasing earlier trigger waits failed"),
        }
        match inbox::release(&state.store, None).await {
            Ok(n) if n > 0 => {
                tracing::info!(events = n, "handling webhook events of the previous run")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "releasing earlier webhook events failed"),
        }
    }
    loop {
        let stopping = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            _ = tick.tick() => false,
        };
        if stopping {
            // A clean stop hands our waits to the next brain at once, as sessions do.
            match release(&state.store, Some(&owner)).await {
                Ok(n) if n > 0 => tracing::info!(waits = n, "released owed trigger replies"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "releasing trigger waits failed"),
            }
            if let Err(e) = inbox::release(&state.store, Some(&owner)).await {
                tracing::warn!(error = %e, "releasing webhook events failed");
            }
            return;
        }
        // Acknowledged webhook events: renew ours, take over those a stopped brain left.
        inbox::take_over(&state, &triggers).await;
        let live = triggers.live_waits();
        if let Err(e) = renew(&state.store, &owner, &live, lease_ms(&state)).await {
            tracing::warn!(error = %e, "renewing trigger wait leases failed");
        }
        match claim_expired(&state.store, &owner, lease_ms(&state), 100).await {
            Ok(waits) => {
                for wait in waits {
                    tracing::info!(session = %wait.session_id, wait = %wait.id,
                        "taking over a trigger reply left by a brain that stopped");
                    let (state, triggers) = (state.clone(), triggers.clone());
                    tokio::spawn(async move { complete(&state, &triggers, wait, true).await });
                }
            }
            Err(e) => tracing::warn!(error = %e, "claiming expired trigger waits failed"),
        }
    }
}
