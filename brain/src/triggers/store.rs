//! The trigger tables (`migrations/*/0003_triggers.sql`): delivery dedupe, thread → session
//! mapping, and the reply outbox. Same `$N` SQL on SQLite and PostgreSQL.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::store::{Store, StoreError, on_pool};

/// Where a trigger came from; the `source` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Slack,
    Github,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Slack => "slack",
            Source::Github => "github",
        }
    }
}

/// A reply waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplyPayload {
    /// `chat.postMessage` into a thread.
    SlackMessage {
        channel: String,
        thread_ts: String,
        text: String,
    },
    /// `POST /repos/{repo}/issues/{issue}/comments`.
    GithubComment {
        repo: String,
        issue: u64,
        body: String,
    },
}

impl ReplyPayload {
    pub fn source(&self) -> Source {
        match self {
            ReplyPayload::SlackMessage { .. } => Source::Slack,
            ReplyPayload::GithubComment { .. } => Source::Github,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PendingReply {
    pub id: String,
    pub payload: ReplyPayload,
    pub attempts: u32,
    /// The `next_attempt_at` this worker's claim wrote: its lease, renewed (compare-and-set on
    /// this value) right before each send by [`extend_reply_lease`].
    pub lease: i64,
}

/// This brain's clock (see [`crate::store::now_ms`]): only for times nobody compares across
/// brains (creation stamps). Due times and leases use the database clock.
pub(crate) use crate::store::now_ms;

fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: "trigger_replies",
        message: message.into(),
    }
}

/// Records a delivery; `false` when this (source, id) was seen before (a retry or replay).
pub async fn record_delivery(
    store: &Store,
    source: Source,
    delivery_id: &str,
) -> Result<bool, StoreError> {
    let sql = format!(
        "INSERT INTO webhook_deliveries (source, delivery_id, received_at) VALUES ($1, $2, {}) \
         ON CONFLICT (source, delivery_id) DO NOTHING",
        store.db_now_sql()
    );
    let affected = on_pool!(store.db(), |pool| {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(source.as_str())
            .bind(delivery_id)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(affected == 1)
}

/// Forgets deliveries received more than `age_ms` ago by the database clock (their senders
/// stopped retrying long ago).
pub async fn prune_deliveries(store: &Store, age_ms: i64) -> Result<u64, StoreError> {
    let now = store.db_now_sql();
    let keys = format!("DELETE FROM trigger_reply_keys WHERE created_at < {now} - $1");
    let deliveries = format!("DELETE FROM webhook_deliveries WHERE received_at < {now} - $1");
    Ok(on_pool!(store.db(), |pool| {
        // Reply keys (one per settle of a session) age out with the deliveries.
        sqlx::query(sqlx::AssertSqlSafe(keys.clone()))
            .bind(age_ms)
            .execute(pool)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(deliveries.clone()))
            .bind(age_ms)
            .execute(pool)
            .await?
            .rows_affected()
    }))
}

/// Maps a thread to a session. `false` if the thread already had one (the first wins).
pub async fn bind_thread(
    store: &Store,
    source: Source,
    thread_key: &str,
    session_id: &str,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let affected = on_pool!(store.db(), |pool| {
        sqlx::query(
            "INSERT INTO trigger_threads (source, thread_key, session_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (source, thread_key) DO NOTHING",
        )
        .bind(source.as_str())
        .bind(thread_key)
        .bind(session_id)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(affected == 1)
}

pub async fn thread_session(
    store: &Store,
    source: Source,
    thread_key: &str,
) -> Result<Option<String>, StoreError> {
    Ok(on_pool!(store.db(), |pool| {
        sqlx::query_scalar(
            "SELECT session_id FROM trigger_threads WHERE source = $1 AND thread_key = $2",
        )
        .bind(source.as_str())
        .bind(thread_key)
        .fetch_optional(pool)
        .await?
    }))
}

/// Inserts one outbox row, due now on the database clock; binds: id, source, payload JSON.
/// Shared by [`enqueue_reply`] and the transaction in `waits::finish`.
pub(crate) fn insert_reply_sql(store: &Store) -> String {
    let now = store.db_now_sql();
    format!(
        "INSERT INTO trigger_replies (id, source, payload, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, 0, {now}, {now})"
    )
}

/// The thread a session was started from (the reverse of [`thread_session`]).
pub async fn session_thread(
    store: &Store,
    source: Source,
    session_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(on_pool!(store.db(), |pool| {
        sqlx::query_scalar(
            "SELECT thread_key FROM trigger_threads WHERE source = $1 AND session_id = $2 \
             ORDER BY created_at LIMIT 1",
        )
        .bind(source.as_str())
        .bind(session_id)
        .fetch_optional(pool)
        .await?
    }))
}

/// A fresh reply id and the payload's stored JSON, for [`insert_reply_sql`].
pub(crate) fn reply_row(payload: &ReplyPayload) -> Result<(String, String), StoreError> {
    let id = format!("rp-{}", uuid::Uuid::new_v4().simple());
    let json = serde_json::to_string(payload).map_err(|e| corrupt(e.to_string()))?;
    Ok((id, json))
}

/// Puts a reply in the outbox, due now. Returns its id.
pub async fn enqueue_reply(store: &Store, payload: &ReplyPayload) -> Result<String, StoreError> {
    let (id, json) = reply_row(payload)?;
    let sql = insert_reply_sql(store);
    on_pool!(store.db(), |pool| {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(&id)
            .bind(payload.source().as_str())
            .bind(&json)
            .execute(pool)
            .await?;
    });
    Ok(id)
}

/// Puts a reply in the outbox once per `key`, ever (across restarts and replicas): the key is
/// claimed (`trigger_reply_keys`) and the reply queued in one transaction, so a brain that
/// dies in between leaves neither. `false` when the key was claimed before (nothing queued).
/// Keys age out with the webhook deliveries ([`prune_deliveries`]).
pub async fn enqueue_reply_once(
    store: &Store,
    key: &str,
    payload: &ReplyPayload,
) -> Result<bool, StoreError> {
    let (id, json) = reply_row(payload)?;
    let claim = format!(
        "INSERT INTO trigger_reply_keys (reply_key, wait_id, created_at) VALUES ($1, $2, {}) \
         ON CONFLICT (reply_key) DO NOTHING",
        store.db_now_sql()
    );
    let insert = insert_reply_sql(store);
    Ok(on_pool!(store.db(), |pool| {
        let mut tx = pool.begin().await?;
        let claimed = sqlx::query(sqlx::AssertSqlSafe(claim.clone()))
            .bind(key)
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if claimed {
            sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                .bind(&id)
                .bind(payload.source().as_str())
                .bind(&json)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        claimed
    }))
}

/// Claims `key` for a message sent outside the outbox (a Slack prompt with buttons); `false`
/// when it was claimed before. [`release_key`] gives it back when the send failed.
pub async fn claim_key(store: &Store, key: &str) -> Result<bool, StoreError> {
    let sql = format!(
        "INSERT INTO trigger_reply_keys (reply_key, wait_id, created_at) VALUES ($1, '', {}) \
         ON CONFLICT (reply_key) DO NOTHING",
        store.db_now_sql()
    );
    Ok(on_pool!(store.db(), |pool| {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(key)
            .execute(pool)
            .await?
            .rows_affected()
            == 1
    }))
}

pub async fn release_key(store: &Store, key: &str) -> Result<(), StoreError> {
    on_pool!(store.db(), |pool| {
        sqlx::query("DELETE FROM trigger_reply_keys WHERE reply_key = $1")
            .bind(key)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Claims up to `limit` due replies: each claimed row's `next_attempt_at` moves to
/// `now + lease_ms`, so another worker (replica) skips it while this one sends. A worker that
/// dies mid-send leaves the row to be claimed again once the lease passes. "Due" and the lease
/// are on the database clock: a brain whose own clock runs ahead would send retries early (and
/// take replies another worker still holds), one running behind would send them late.
pub async fn claim_due_replies(
    store: &Store,
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<PendingReply>, StoreError> {
    let now = store.db_now_sql();
    let select = format!(
        "SELECT id, payload, attempts, next_attempt_at FROM trigger_replies \
         WHERE failed_at IS NULL AND next_attempt_at <= {now} ORDER BY next_attempt_at LIMIT $1"
    );
    // Compare-and-set on the due time read: only one claimant's update matches. RETURNING
    // gives the lease written, which the sends then renew by compare-and-set.
    let update = format!(
        "UPDATE trigger_replies SET next_attempt_at = {now} + $1 \
         WHERE id = $2 AND next_attempt_at = $3 RETURNING next_attempt_at"
    );
    let rows = on_pool!(store.db(), |pool| {
        sqlx::query(sqlx::AssertSqlSafe(select.clone()))
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| {
                Ok::<_, sqlx::Error>((
                    row.try_get::<String, _>("id")?,
                    row.try_get::<String, _>("payload")?,
                    row.try_get::<i64, _>("attempts")?,
                    row.try_get::<i64, _>("next_attempt_at")?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
    });
    let mut claimed = Vec::with_capacity(rows.len());
    for (id, payload, attempts, seen_due) in rows {
        let lease: Option<i64> = on_pool!(store.db(), |pool| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(update.clone()))
                .bind(lease_ms)
                .bind(&id)
                .bind(seen_due)
                .fetch_optional(pool)
                .await?
        });
        let Some(lease) = lease else {
            continue;
        };
        let payload: ReplyPayload =
            serde_json::from_str(&payload).map_err(|e| corrupt(format!("reply {id}: {e}")))?;
        claimed.push(PendingReply {
            lease,
            id,
            payload,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        });
    }
    Ok(claimed)
}

/// Renews a claimed reply's lease to `lease_ms` from now (database clock) right before
/// sending it, if this worker still holds it (`next_attempt_at` is still the value its claim
/// or last renewal wrote). A batch can outlast one lease (16 sends of up to 25 s each);
/// renewing per send keeps every send inside a lease, so a reply whose lease lapsed while
/// earlier ones were sent is either still ours (renewed here) or another worker's (skipped
/// here): never sent by both.
pub async fn extend_reply_lease(
    store: &Store,
    reply: &mut PendingReply,
    lease_ms: i64,
) -> Result<bool, StoreError> {
    let sql = format!(
        "UPDATE trigger_replies SET next_attempt_at = {} + $1 \
         WHERE id = $2 AND next_attempt_at = $3 AND failed_at IS NULL RETURNING next_attempt_at",
        store.db_now_sql()
    );
    let renewed: Option<i64> = on_pool!(store.db(), |pool| {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .bind(lease_ms)
            .bind(&reply.id)
            .bind(reply.lease)
            .fetch_optional(pool)
            .await?
    });
    match renewed {
        Some(lease) => {
            reply.lease = lease;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The reply was delivered: it leaves the outbox.
pub async fn reply_delivered(store: &Store, id: &str) -> Result<(), StoreError> {
    on_pool!(store.db(), |pool| {
        sqlx::query("DELETE FROM trigger_replies WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// A failed attempt: try again `delay_ms` from now on the database clock.
pub async fn reply_retry(
    store: &Store,
    id: &str,
    delay_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE trigger_replies SET attempts = attempts + 1, next_attempt_at = {} + $1, \
         last_error = $2 WHERE id = $3",
        store.db_now_sql()
    );
    on_pool!(store.db(), |pool| {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(delay_ms)
            .bind(error)
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// The API refused the reply for good; it stays, marked, and is not retried.
pub async fn reply_failed(store: &Store, id: &str, error: &str) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE trigger_replies SET attempts = attempts + 1, failed_at = {}, last_error = $1 \
         WHERE id = $2",
        store.db_now_sql()
    );
    on_pool!(store.db(), |pool| {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(error)
            .bind(id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Replies not yet delivered (pending or failed): `(id, attempts, failed, last_error)`.
pub async fn undelivered_replies(
    store: &Store,
) -> Result<Vec<(String, u32, bool, Option<String>)>, StoreError> {
    Ok(on_pool!(store.db(), |pool| {
        sqlx::query(
            "SELECT id, attempts, failed_at, last_error FROM trigger_replies ORDER BY created_at",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| {
            Ok::<_, sqlx::Error>((
                row.try_get::<String, _>("id")?,
                u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                row.try_get::<Option<i64>, _>("failed_at")?.is_some(),
                row.try_get::<Option<String>, _>("last_error")?,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?
    }))
}

/// How long until the earliest pending reply is due, in milliseconds on the database clock
/// (0 when one is due now), so the worker can sleep until then.
pub async fn next_due_in_ms(store: &Store) -> Result<Option<i64>, StoreError> {
    let sql = format!(
        "SELECT MIN(next_attempt_at) - {} FROM trigger_replies WHERE failed_at IS NULL",
        store.db_now_sql()
    );
    let due_in: Option<i64> = on_pool!(store.db(), |pool| {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await?
    });
    Ok(due_in.map(|ms| ms.max(0)))
}
