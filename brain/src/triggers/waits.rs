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
use sqlx::Row;
use tokio::sync::watch;

use super::store::{self, ReplyPayload, Source, now_ms};
use super::{LaunchError, TaskOutcome, Triggers, github, slack};
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

/// Records an owed reply, owned by this brain. On a store error the caller still waits in
/// memory (the reply then only survives as long as this process).
pub async fn begin(
    state: &AppState,
    session_id: &str,
    context: WaitContext,
) -> Result<Wait, (Wait, StoreError)> {
    let wait = Wait {
        id: format!("tw-{}", uuid::Uuid::new_v4().simple()),
        session_id: session_id.to_string(),
        context,
    };
    let until = now_ms() + lease_ms(state);
    match insert(&state.store, &wait, state.sessions.instance(), until).await {
        Ok(()) => Ok(wait),
        Err(e) => Err((wait, e)),
    }
}

/// Writes a wait row owned by `owner` with its lease running until `until`.
pub async fn insert(store: &Store, wait: &Wait, owner: &str, until: i64) -> Result<(), StoreError> {
    let json = serde_json::to_string(&wait.context).map_err(|e| corrupt(e.to_string()))?;
    on_pool!(store.db(), |pool| {
        sqlx::query(
            "INSERT INTO trigger_waits (id, source, session_id, context, owner, lease_expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&wait.id)
        .bind(wait.context.source().as_str())
        .bind(&wait.session_id)
        .bind(&json)
        .bind(owner)
        .bind(until)
        .bind(now_ms())
        .execute(pool)
        .await?;
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
    let (reply_id, json) = store::reply_row(payload)?;
    let now = now_ms();
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
            sqlx::query(store::INSERT_REPLY)
                .bind(&reply_id)
                .bind(payload.source().as_str())
                .bind(&json)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        owned
    }))
}

/// Extends the lease of every wait this brain owns.
pub async fn renew(store: &Store, owner: &str, until: i64) -> Result<u64, StoreError> {
    Ok(on_pool!(store.db(), |pool| {
        sqlx::query("UPDATE trigger_waits SET lease_expires_at = $1 WHERE owner = $2")
            .bind(until)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
    }))
}

/// Makes waits claimable now: `owner`'s on a clean stop, or all of them (`None`) when a
/// brain starts on SQLite, where no other brain can be alive.
pub async fn release(store: &Store, owner: Option<&str>) -> Result<u64, StoreError> {
    Ok(on_pool!(store.db(), |pool| {
        sqlx::query(
            "UPDATE trigger_waits SET lease_expires_at = 0 WHERE ($1 IS NULL OR owner = $1)",
        )
        .bind(owner)
        .execute(pool)
        .await?
        .rows_affected()
    }))
}

/// Takes over up to `limit` waits whose lease expired (their brain died). Each is claimed by
/// compare-and-set on the lease value read, so two brains never take the same one.
pub async fn claim_expired(
    store: &Store,
    owner: &str,
    now: i64,
    until: i64,
    limit: i64,
) -> Result<Vec<Wait>, StoreError> {
    let rows = on_pool!(store.db(), |pool| {
        sqlx::query(
            "SELECT id, session_id, context, lease_expires_at FROM trigger_waits \
             WHERE lease_expires_at < $1 ORDER BY created_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| {
            Ok::<_, sqlx::Error>((
                row.try_get::<String, _>("id")?,
                row.try_get::<String, _>("session_id")?,
                row.try_get::<String, _>("context")?,
                row.try_get::<i64, _>("lease_expires_at")?,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?
    });
    let mut claimed = Vec::new();
    for (id, session_id, context, seen) in rows {
        let won = on_pool!(store.db(), |pool| {
            sqlx::query(
                "UPDATE trigger_waits SET owner = $1, lease_expires_at = $2 \
                 WHERE id = $3 AND lease_expires_at = $4",
            )
            .bind(owner)
            .bind(until)
            .bind(&id)
            .bind(seen)
            .execute(pool)
            .await?
            .rows_affected()
        }) == 1;
        if !won {
            continue;
        }
        let context: WaitContext =
            serde_json::from_str(&context).map_err(|e| corrupt(format!("wait {id}: {e}")))?;
        claimed.push(Wait {
            id,
            session_id,
            context,
        });
    }
    Ok(claimed)
}

/// Waits for the session to settle, builds the reply (for GitHub: after pushing the changes)
/// and queues it, durably when the wait row exists.
pub async fn complete(state: &AppState, triggers: &Arc<Triggers>, wait: Wait, durable: bool) {
    let outcome: Result<TaskOutcome, LaunchError> =
        triggers.launcher.wait_settled(&wait.session_id).await;
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
    match finish(&state.store, state.sessions.instance(), &wait.id, &payload).await {
        Ok(true) => {
            tracing::debug!(session = %wait.session_id, wait = %wait.id, "trigger reply queued");
            triggers.outbox_wakeup.notify_one();
        }
        Ok(false) => {
            tracing::info!(session = %wait.session_id, wait = %wait.id,
                "another brain took this reply over; not queuing it twice")
        }
        Err(e) => {
            // The row stays: once its lease lapses a brain claims it and queues the reply.
            tracing::error!(session = %wait.session_id, error = %e,
                "cannot queue the trigger reply now; it will be retried after the lease")
        }
    }
}

/// Records the wait, then completes it (the whole life of one owed reply in this brain).
pub async fn begin_and_complete(
    state: &AppState,
    triggers: &Arc<Triggers>,
    session_id: &str,
    context: WaitContext,
) {
    match begin(state, session_id, context).await {
        Ok(wait) => complete(state, triggers, wait, true).await,
        Err((wait, e)) => {
            tracing::error!(session = %session_id, error = %e,
                "cannot record the owed reply; it will not survive a restart");
            complete(state, triggers, wait, false).await
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
            return;
        }
        let now = now_ms();
        if let Err(e) = renew(&state.store, &owner, now + lease_ms(&state)).await {
            tracing::warn!(error = %e, "renewing trigger wait leases failed");
        }
        match claim_expired(&state.store, &owner, now, now + lease_ms(&state), 100).await {
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
