//! MCP sessions in the store (`mcp_sessions`, migration 0004), so a restarted brain (or
//! another replica on the same PostgreSQL) keeps honouring `Mcp-Session-Id`s it handed out.

use crate::store::{Store, StoreError, on_pool};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSession {
    pub id: String,
    pub principal: String,
    pub protocol_version: String,
    /// Unix milliseconds, like every time in the store.
    pub created_at: i64,
    pub last_seen: i64,
    pub closed_at: Option<i64>,
}

impl McpSession {
    /// Open and used within `idle_ms` of `now_ms`.
    pub fn is_usable(&self, now_ms: i64, idle_ms: i64) -> bool {
        self.closed_at.is_none() && self.last_seen > now_ms.saturating_sub(idle_ms)
    }
}

/// "Now" for `last_seen` and idle timeouts: the database clock ([`Store::clock_ms`]), since
/// any replica may serve the session's next request and compares with what another wrote.
pub async fn now_ms(store: &Store) -> Result<i64, StoreError> {
    store.clock_ms().await
}

/// A fresh session id: `mcp-` and 128 random bits (visible ASCII, as the transport requires).
pub fn new_id() -> String {
    format!("mcp-{}", uuid::Uuid::new_v4().simple())
}

/// Inserts `session` unless its principal already has `max_open` usable sessions (open,
/// seen after `active_since_ms`). One statement, so concurrent initializes on one database
/// cannot both slip under the limit through a read-then-write gap. `false` = over the limit.
pub async fn insert_within_limit(
    store: &Store,
    session: &McpSession,
    active_since_ms: i64,
    max_open: i64,
) -> Result<bool, StoreError> {
    let affected = on_pool!(store.db(), |pool| {
        sqlx::query(
            "INSERT INTO mcp_sessions (id, principal, protocol_version, created_at, last_seen, closed_at) \
             SELECT $1, $2, $3, $4, $5, NULL WHERE (SELECT COUNT(*) FROM mcp_sessions \
             WHERE principal = $2 AND closed_at IS NULL AND last_seen > $6) < $7",
        )
        .bind(&session.id)
        .bind(&session.principal)
        .bind(&session.protocol_version)
        .bind(session.created_at)
        .bind(session.last_seen)
        .bind(active_since_ms)
        .bind(max_open)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(affected > 0)
}

pub async fn get(store: &Store, id: &str) -> Result<Option<McpSession>, StoreError> {
    let row: Option<(String, String, String, i64, i64, Option<i64>)> =
        on_pool!(store.db(), |pool| {
            sqlx::query_as(
                "SELECT id, principal, protocol_version, created_at, last_seen, closed_at \
                 FROM mcp_sessions WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
    Ok(row.map(
        |(id, principal, protocol_version, created_at, last_seen, closed_at)| McpSession {
            id,
            principal,
            protocol_version,
            created_at,
            last_seen,
            closed_at,
        },
    ))
}

pub async fn touch(store: &Store, id: &str, now_ms: i64) -> Result<(), StoreError> {
    on_pool!(store.db(), |pool| {
        sqlx::query("UPDATE mcp_sessions SET last_seen = $2 WHERE id = $1 AND closed_at IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Marks the session closed; `false` if it already was.
pub async fn close(store: &Store, id: &str, now_ms: i64) -> Result<bool, StoreError> {
    let affected = on_pool!(store.db(), |pool| {
        sqlx::query("UPDATE mcp_sessions SET closed_at = $2 WHERE id = $1 AND closed_at IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(affected > 0)
}

/// The id of the sandbox this session created last, whatever its status.
pub async fn latest_sandbox(store: &Store, session_id: &str) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = on_pool!(store.db(), |pool| {
        sqlx::query_as(
            "SELECT id FROM sandboxes WHERE session_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(session_id)
        .fetch_optional(pool)
        .await?
    });
    Ok(row.map(|(id,)| id))
}

/// Ids of this session's sandboxes that may still hold backend resources.
pub async fn live_sandboxes(store: &Store, session_id: &str) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> = on_pool!(store.db(), |pool| {
        sqlx::query_as(
            "SELECT id FROM sandboxes WHERE session_id = $1 \
             AND status IN ('provisioning', 'running', 'destroying') ORDER BY created_at, id",
        )
        .bind(session_id)
        .fetch_all(pool)
        .await?
    });
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
