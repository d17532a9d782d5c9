//! Webhook events kept durable from before the 200 until a reply is owed for them (issue 12).
//!
//! A hook writes the event into `trigger_events` (migration 0121) in the same transaction as
//! its delivery id, then answers 200. A store failure answers 500 with nothing recorded, so the
//! provider's retry is accepted, not discarded as a duplicate. The event is then handled in
//! this process while it holds the row's lease (database clock), renewed only while the task
//! handling it lives ([`Triggers::hold_event`]). It leaves the table in the transaction that
//! records the reply it owes (`waits::begin_and_complete`), or once handling ended without
//! one. A brain that dies after the 200 leaves the row; once its lease lapses any brain takes
//! it over ([`take_over`]). `session_id` is recorded as soon as the event started or continued a
//! session, so a takeover continues with that session instead of starting another.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::store::{Source, now_ms};
use super::{Admission, Triggers, github, lease, slack, waits};
use crate::state::AppState;
use crate::store::{Store, StoreError, on_pool};

/// What handling an event needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    Slack {
        event: slack::Event,
        intent: slack::Intent,
    },
    Github {
        request: github::Request,
    },
}

impl Payload {
    fn source(&self) -> Source {
        match self {
            Payload::Slack { .. } => Source::Slack,
            Payload::Github { .. } => Source::Github,
        }
    }
}

/// An event this brain holds.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub payload: Payload,
    /// The session it already started or continued (set on a takeover after that step).
    pub session_id: Option<String>,
}

fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: "trigger_events",
        message: message.into(),
    }
}

/// The event lease: the sessions lease, in milliseconds.
pub(crate) fn lease_ms(state: &AppState) -> i64 {
    i64::try_from(state.config.sessions.lease_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Records the delivery (`dedupe_key`) and the event in one transaction, owned by `owner`.
/// `Ok(None)`: a duplicate (nothing written).
pub async fn accept(
    store: &Store,
    dedupe_key: &str,
    payload: &Payload,
    owner: &str,
    lease_ms: i64,
) -> Result<Option<Claimed>, StoreError> {
    #[cfg(test)]
    store.fault("accept_event", None)?;
    let id = format!("ev-{}", uuid::Uuid::new_v4().simple());
    let json = serde_json::to_string(payload).map_err(|e| corrupt(e.to_string()))?;
    let source = payload.source().as_str();
    let insert = format!(
        "INSERT INTO trigger_events (id, source, payload, session_id, owner, lease_expires_at, created_at) \
         VALUES ($1, $2, $3, NULL, $4, {} + $5, $6)",
        store.db_now_sql()
    );
    // Received at, on the database clock: deliveries are pruned by it.
    let delivery = format!(
        "INSERT INTO webhook_deliveries (source, delivery_id, received_at) VALUES ($1, $2, {}) \
         ON CONFLICT (source, delivery_id) DO NOTHING",
        store.db_now_sql()
    );
    let now = now_ms();
    let fresh = on_pool!(store.db(), |pool| {
        let mut tx = pool.begin().await?;
        let fresh = sqlx::query(sqlx::AssertSqlSafe(delivery.clone()))
            .bind(source)
            .bind(dedupe_key)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if fresh {
            sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                .bind(&id)
                .bind(source)
                .bind(&json)
                .bind(owner)
                .bind(lease_ms)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        fresh
    });
    Ok(fresh.then(|| Claimed {
        id,
        payload: payload.clone(),
        session_id: None,
    }))
}

/// Records the session the event started or continued.
pub async fn set_session(store: &Store, id: &str, session_id: &str) -> Result<(), StoreError> {
    on_pool!(store.db(), |pool| {
        sqlx::query("UPDATE trigger_events SET session_id = $2 WHERE id = $1")
            .bind(id)
            .bind(session_id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// The event is handled (nothing owed, or its reply is owed by a wait now).
pub async fn done(store: &Store, id: &str) -> Result<(), StoreError> {
    on_pool!(store.db(), |pool| {
        sqlx::query("DELETE FROM trigger_events WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Whether `owner` still holds the event (another brain may have taken it over while this one
/// could not renew: then that one handles it).
pub async fn still_owned(store: &Store, id: &str, owner: &str) -> Result<bool, StoreError> {
    let n: i64 = on_pool!(store.db(), |pool| {
        sqlx::query_scalar("SELECT COUNT(*) FROM trigger_events WHERE id = $1 AND owner = $2")
            .bind(id)
            .bind(owner)
            .fetch_one(pool)
            .await?
    });
    Ok(n == 1)
}

/// Extends the leases of the events whose task lives in this process.
pub async fn renew(
    store: &Store,
    owner: &str,
    ids: &[String],
    lease_ms: i64,
) -> Result<(), StoreError> {
    lease::EVENTS.renew(store, owner, ids, lease_ms).await?;
    Ok(())
}

/// Makes events claimable now: `owner`'s on a clean stop, or all (`None`) when one brain owns
/// the database (SQLite).
pub async fn release(store: &Store, owner: Option<&str>) -> Result<u64, StoreError> {
    lease::EVENTS.release(store, owner).await
}

/// Takes over up to `limit` events whose lease lapsed (compare-and-set on the lease read).
pub async fn claim_expired(
    store: &Store,
    owner: &str,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let won = lease::EVENTS
        .claim_expired(store, owner, lease_ms, limit, ["payload", "session_id"])
        .await?;
    won.into_iter()
        .map(
            |lease::Won {
                 id,
                 columns: [payload, session_id],
             }| {
                let payload: Payload = serde_json::from_str(payload.as_deref().unwrap_or_default())
                    .map_err(|e| corrupt(format!("event {id}: {e}")))?;
                Ok(Claimed {
                    id,
                    payload,
                    session_id,
                })
            },
        )
        .collect()
}

/// Handles one event this brain holds: waits for a run slot, then starts or continues its
/// session and hands the owed reply to `waits` (which removes the event in the same
/// transaction), or removes the event if nothing is owed.
pub async fn process(state: AppState, triggers: Arc<Triggers>, ev: Claimed, admission: Admission) {
    let _live = triggers.hold_event(&ev.id);
    let _slot = admission.run_slot().await;
    let owner = state.sessions.instance();
    match still_owned(&state.store, &ev.id, owner).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(event = %ev.id, "webhook event taken over by another brain; not handling it twice");
            return;
        }
        Err(e) => {
            // Left for a takeover once the lease lapses (our guard stops renewing it).
            tracing::warn!(event = %ev.id, error = %e, "cannot check a webhook event's owner; leaving it");
            return;
        }
    }
    let owed = match ev.payload.clone() {
        Payload::Slack { event, intent } => {
            slack::handle_event(&state, &triggers, &ev, event, intent).await
        }
        Payload::Github { request } => {
            github::handle_request(&state, &triggers, &ev, request).await
        }
    };
    match owed {
        Some((session_id, context)) => {
            waits::begin_and_complete(&state, &triggers, &session_id, context, Some(&ev.id)).await
        }
        None => {
            if let Err(e) = done(&state.store, &ev.id).await {
                tracing::warn!(event = %ev.id, error = %e, "removing a handled webhook event failed; a takeover finds nothing to do");
            }
        }
    }
}

/// Renews the leases of the events handled here and takes over lapsed ones (one pass of the
/// `waits::run` loop).
pub async fn take_over(state: &AppState, triggers: &Arc<Triggers>) {
    let owner = state.sessions.instance();
    let live = triggers.live_events();
    if let Err(e) = renew(&state.store, owner, &live, lease_ms(state)).await {
        tracing::warn!(error = %e, "renewing webhook event leases failed");
    }
    match claim_expired(&state.store, owner, lease_ms(state), 100).await {
        Ok(events) => {
            for ev in events {
                let limiter = match &ev.payload {
                    Payload::Slack { .. } => triggers.slack.as_ref().map(|s| &s.limiter),
                    Payload::Github { .. } => triggers.github.as_ref().map(|g| &g.limiter),
                };
                let Some(limiter) = limiter else {
                    // Not configured here: give it back for a brain that has the trigger.
                    tracing::warn!(event = %ev.id, "webhook event for a trigger this brain lacks");
                    continue;
                };
                tracing::info!(event = %ev.id, "taking over a webhook event a stopped brain acknowledged");
                let admission = limiter.admit_taken_over();
                tokio::spawn(process(state.clone(), triggers.clone(), ev, admission));
            }
        }
        Err(e) => tracing::warn!(error = %e, "claiming lapsed webhook events failed"),
    }
}
