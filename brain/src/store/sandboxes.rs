//! The `sandboxes` table: one row per sandbox, written before the backend acts.
//!
//! Status moves only forward: `provisioning → running → destroying → destroyed`, with
//! `provisioning → failed` when creation fails. Every transition is a guarded `UPDATE … WHERE
//! status IN (…)`, so the API, the reaper and a provisioning task racing on one sandbox agree on
//! who does what (the one whose update matched a row).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::Row;

use super::{Store, StoreError, now_ms, on_pool};
use crate::sandbox::{BackendKind, SandboxHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxStatus {
    Provisioning,
    Running,
    Destroying,
    Destroyed,
    Failed,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Provisioning => "provisioning",
            SandboxStatus::Running => "running",
            SandboxStatus::Destroying => "destroying",
            SandboxStatus::Destroyed => "destroyed",
            SandboxStatus::Failed => "failed",
        }
    }

    /// Whether the sandbox may still hold resources on its backend.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            SandboxStatus::Provisioning | SandboxStatus::Running | SandboxStatus::Destroying
        )
    }
}

impl fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "provisioning" => SandboxStatus::Provisioning,
            "running" => SandboxStatus::Running,
            "destroying" => SandboxStatus::Destroying,
            "destroyed" => SandboxStatus::Destroyed,
            "failed" => SandboxStatus::Failed,
            other => return Err(format!("unknown sandbox status {other:?}")),
        })
    }
}

/// A sandbox about to be provisioned.
#[derive(Debug, Clone)]
pub struct NewSandbox {
    pub id: String,
    pub backend: BackendKind,
    pub image: Option<String>,
    /// The provision request as given (after defaults), kept for audit and re-creation.
    pub request: serde_json::Value,
    pub session_id: Option<String>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRow {
    pub id: String,
    pub owner: String,
    /// The replica that looks after it (`replicas.id`); `None` on rows from before replicas.
    pub replica: Option<String>,
    pub backend: BackendKind,
    pub status: SandboxStatus,
    pub image: Option<String>,
    pub handle: Option<SandboxHandle>,
    pub request: serde_json::Value,
    pub session_id: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub destroyed_at: Option<DateTime<Utc>>,
    /// The warm pool holding this sandbox until it is claimed (`crate::pool`); such rows are
    /// invisible to [`Store::get_sandbox`] and the API lists.
    pub pool: Option<String>,
}

/// `SELECT <all columns> FROM sandboxes <tail>` as one static string.
macro_rules! select_sandboxes {
    ($tail:literal) => {
        concat!(
            "SELECT id, owner, replica, backend, status, image, handle, request, session_id, \
             error, created_at, updated_at, expires_at, destroyed_at, pool FROM sandboxes ",
            $tail
        )
    };
}

const SELECT_BY_ID: &str = select_sandboxes!("WHERE id = $1 AND pool IS NULL");
const SELECT_BY_ID_ANY: &str = select_sandboxes!("WHERE id = $1");
// The list queries all take $1 = owner, $2 = a time bound (ms), $3 = limit.
const SELECT_ALL: &str = select_sandboxes!(
    "WHERE owner = $1 AND created_at <= $2 AND pool IS NULL ORDER BY created_at DESC, id LIMIT $3"
);
const SELECT_LIVE: &str = select_sandboxes!(
    "WHERE owner = $1 AND created_at <= $2 AND pool IS NULL \
     AND status IN ('provisioning', 'running', 'destroying') ORDER BY created_at DESC, id LIMIT $3"
);
/// Live rows including pooled ones (restart reconciliation).
const SELECT_UNFINISHED: &str = select_sandboxes!(
    "WHERE owner = $1 AND created_at <= $2 AND status IN ('provisioning', 'running', 'destroying') \
     ORDER BY created_at DESC, id LIMIT $3"
);
// The reaper's queries also take $4 = this replica: it reaps only the rows it looks after.
const SELECT_EXPIRED: &str = select_sandboxes!(
    "WHERE owner = $1 AND replica = $4 AND status = 'running' AND pool IS NULL \
     AND expires_at <= $2 \
     ORDER BY expires_at, id LIMIT $3"
);
const SELECT_STALE_DESTROYING: &str = select_sandboxes!(
    "WHERE owner = $1 AND replica = $4 AND status = 'destroying' AND updated_at <= $2 \
     ORDER BY updated_at, id LIMIT $3"
);

/// Reads a row from either driver; expanded inside each [`on_pool!`] arm.
macro_rules! read_row {
    ($row:expr) => {{
        let row = $row;
        RawRow {
            id: row.try_get("id")?,
            owner: row.try_get("owner")?,
            replica: row.try_get("replica")?,
            backend: row.try_get("backend")?,
            status: row.try_get("status")?,
            image: row.try_get("image")?,
            handle: row.try_get("handle")?,
            request: row.try_get("request")?,
            session_id: row.try_get("session_id")?,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            expires_at: row.try_get("expires_at")?,
            destroyed_at: row.try_get("destroyed_at")?,
            pool: row.try_get("pool")?,
        }
    }};
}

/// Columns as stored, before parsing enums, JSON and times.
struct RawRow {
    id: String,
    owner: String,
    replica: Option<String>,
    backend: String,
    status: String,
    image: Option<String>,
    handle: Option<String>,
    request: String,
    session_id: Option<String>,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
    expires_at: i64,
    destroyed_at: Option<i64>,
    pool: Option<String>,
}

impl RawRow {
    fn parse(self) -> Result<SandboxRow, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            table: "sandboxes",
            message,
        };
        let handle = match self.handle {
            Some(text) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| corrupt(format!("{}: handle: {e}", self.id)))?,
            ),
            None => None,
        };
        Ok(SandboxRow {
            backend: self
                .backend
                .parse()
                .map_err(|e| corrupt(format!("{}: {e}", self.id)))?,
            status: self
                .status
                .parse()
                .map_err(|e| corrupt(format!("{}: {e}", self.id)))?,
            request: serde_json::from_str(&self.request)
                .map_err(|e| corrupt(format!("{}: request: {e}", self.id)))?,
            handle,
            image: self.image,
            session_id: self.session_id,
            error: self.error,
            owner: self.owner,
            replica: self.replica,
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
            expires_at: from_ms(self.expires_at),
            destroyed_at: self.destroyed_at.map(from_ms),
            pool: self.pool,
            id: self.id,
        })
    }
}

pub(super) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

// === impl Store (sandboxes) ===

impl Store {
    /// Commits a `provisioning` row; call before asking a backend for anything.
    pub async fn insert_sandbox(&self, new: &NewSandbox) -> Result<SandboxRow, StoreError> {
        let now = now_ms();
        let request = new.request.to_string();
        on_pool!(self.db(), |pool| {
            sqlx::query(
                "INSERT INTO sandboxes (id, owner, backend, status, image, handle, request, session_id, \
                 error, created_at, updated_at, expires_at, destroyed_at, replica) \
                 VALUES ($1, $2, $3, 'provisioning', $4, NULL, $5, $6, NULL, $7, $7, $8, NULL, $9)",
            )
            .bind(&new.id)
            .bind(self.owner())
            .bind(new.backend.as_str())
            .bind(&new.image)
            .bind(&request)
            .bind(&new.session_id)
            .bind(now)
            .bind(new.expires_at.timestamp_millis())
            .bind(self.replica())
            .execute(pool)
            .await?;
        });
        self.get_sandbox(&new.id)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                table: "sandboxes",
                message: format!("{} vanished right after insert", new.id),
            })
    }

    /// `provisioning → running` with the backend's handle. `false` means someone moved the row
    /// on meanwhile (a delete arrived): the caller must destroy what it created.
    pub async fn set_running(&self, id: &str, handle: &SandboxHandle) -> Result<bool, StoreError> {
        let handle = serde_json::to_string(handle).map_err(|e| StoreError::Corrupt {
            table: "sandboxes",
            message: format!("{id}: cannot encode handle: {e}"),
        })?;
        self.update(
            "UPDATE sandboxes SET status = 'running', handle = $2, updated_at = $3 \
             WHERE id = $1 AND status = 'provisioning'",
            id,
            Some(&handle),
        )
        .await
    }

    /// `provisioning → failed` with the reason.
    pub async fn set_failed(&self, id: &str, error: &str) -> Result<bool, StoreError> {
        self.update(
            "UPDATE sandboxes SET status = 'failed', error = $2, updated_at = $3, destroyed_at = $3 \
             WHERE id = $1 AND status = 'provisioning'",
            id,
            Some(error),
        )
        .await
    }

    /// `provisioning|running → destroying`; committed before the backend is asked to destroy.
    pub async fn begin_destroy(&self, id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let affected = on_pool!(self.db(), |pool| {
            sqlx::query(
                "UPDATE sandboxes SET status = 'destroying', updated_at = $2 \
                 WHERE id = $1 AND status IN ('provisioning', 'running')",
            )
            .bind(id)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    /// Any live status → `destroyed`, with an optional note (why it ended).
    pub async fn set_destroyed(&self, id: &str, note: Option<&str>) -> Result<bool, StoreError> {
        self.update(
            "UPDATE sandboxes SET status = 'destroyed', error = COALESCE($2, error), updated_at = $3, \
             destroyed_at = $3 WHERE id = $1 AND status IN ('provisioning', 'running', 'destroying')",
            id,
            note,
        )
        .await
    }

    /// Records why a destroy failed; the row stays `destroying` so the reaper retries.
    pub async fn set_destroy_error(&self, id: &str, error: &str) -> Result<bool, StoreError> {
        self.update(
            "UPDATE sandboxes SET error = $2, updated_at = $3 WHERE id = $1 AND status = 'destroying'",
            id,
            Some(error),
        )
        .await
    }

    async fn update(
        &self,
        sql: &'static str,
        id: &str,
        text: Option<&str>,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let affected = on_pool!(self.db(), |pool| {
            sqlx::query(sql)
                .bind(id)
                .bind(text)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(affected > 0)
    }

    /// A sandbox by id; `None` for a pooled sandbox nobody has claimed (see [`SandboxRow::pool`]).
    pub async fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRow>, StoreError> {
        self.select_one(SELECT_BY_ID, id).await
    }

    /// A sandbox by id, pooled or not (the pool's own bookkeeping).
    pub async fn get_sandbox_any(&self, id: &str) -> Result<Option<SandboxRow>, StoreError> {
        self.select_one(SELECT_BY_ID_ANY, id).await
    }

    /// Commits a `provisioning` row for a warm-pool sandbox; `expires_at` only bounds how long
    /// it may wait unclaimed (the reaper ignores pooled rows; the pool drains them).
    pub async fn insert_pooled(&self, new: &NewSandbox, pool: &str) -> Result<(), StoreError> {
        self.insert_sandbox(new).await?;
        self.update(
            "UPDATE sandboxes SET pool = $2, updated_at = $3 WHERE id = $1",
            &new.id,
            Some(pool),
        )
        .await?;
        Ok(())
    }

    /// Hands a pooled `running` sandbox out: it leaves its pool for good and takes the
    /// claimant's request, session, TTL and handle (now carrying the grant). `false`: it was
    /// not pooled and running any more (drained meanwhile); nothing changed.
    pub async fn claim_pooled(
        &self,
        id: &str,
        request: &serde_json::Value,
        session_id: Option<&str>,
        expires_at: DateTime<Utc>,
        handle: &SandboxHandle,
    ) -> Result<bool, StoreError> {
        let handle = serde_json::to_string(handle).map_err(|e| StoreError::Corrupt {
            table: "sandboxes",
            message: format!("{id}: cannot encode handle: {e}"),
        })?;
        let request = request.to_string();
        let now = now_ms();
        let affected = on_pool!(self.db(), |pool| {
            sqlx::query(
                "UPDATE sandboxes SET pool = NULL, request = $2, session_id = $3, \
                 expires_at = $4, handle = $5, created_at = $6, updated_at = $6 \
                 WHERE id = $1 AND pool IS NOT NULL AND status = 'running'",
            )
            .bind(id)
            .bind(&request)
            .bind(session_id)
            .bind(expires_at.timestamp_millis())
            .bind(&handle)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(affected > 0)
    }

    async fn select_one(
        &self,
        sql: &'static str,
        id: &str,
    ) -> Result<Option<SandboxRow>, StoreError> {
        let raw = on_pool!(self.db(), |pool| {
            match sqlx::query(sql).bind(id).fetch_optional(pool).await? {
                Some(row) => Some(read_row!(&row)),
                None => None,
            }
        });
        raw.map(RawRow::parse).transpose()
    }

    /// Newest first; `live_only` keeps provisioning/running/destroying rows.
    pub async fn list_sandboxes(
        &self,
        live_only: bool,
        limit: i64,
    ) -> Result<Vec<SandboxRow>, StoreError> {
        let sql = if live_only { SELECT_LIVE } else { SELECT_ALL };
        self.select_many(sql, i64::MAX, limit).await
    }

    /// Rows of this store (all replicas) that may still hold backend resources.
    pub async fn list_unfinished(&self) -> Result<Vec<SandboxRow>, StoreError> {
        self.select_many(SELECT_UNFINISHED, i64::MAX, i64::MAX)
            .await
    }

    /// Running rows of this replica whose TTL has passed at `now`.
    pub async fn list_expired(&self, now: DateTime<Utc>) -> Result<Vec<SandboxRow>, StoreError> {
        self.select_mine(SELECT_EXPIRED, now.timestamp_millis())
            .await
    }

    /// `destroying` rows of this replica not touched since `before` (a destroy that failed or
    /// whose brain died mid-way).
    pub async fn list_stale_destroying(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<SandboxRow>, StoreError> {
        self.select_mine(SELECT_STALE_DESTROYING, before.timestamp_millis())
            .await
    }

    /// Takes over the unfinished rows no live replica looks after: those of replicas whose
    /// lease lapsed (or that are gone), and rows from before replicas. Compare-and-set on the
    /// replica each row had, so of two survivors one gets a row. Never this replica's own rows
    /// (it acts on those itself) nor a live replica's, except with `include_own` at start,
    /// when nothing of this replica is in flight yet. A replica counts as dead once its lease
    /// lapsed more than `grace_ms` ago: a database outage lapses every lease at once, and the
    /// first replica back must not take over the others' sandboxes before they could renew.
    /// Returns the rows taken over.
    pub async fn claim_orphan_sandboxes(
        &self,
        include_own: bool,
        grace_ms: i64,
    ) -> Result<Vec<SandboxRow>, StoreError> {
        let own = if include_own { "replica = $2 OR " } else { "" };
        let sql = format!(
            "SELECT id, replica FROM sandboxes WHERE owner = $1 \
             AND status IN ('provisioning', 'running', 'destroying') \
             AND ({own}replica IS NULL OR (replica <> $2 AND replica NOT IN \
                  (SELECT id FROM replicas WHERE lease_expires_at > {} - $3)))",
            self.db_now_sql()
        );
        let candidates: Vec<(String, Option<String>)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(self.owner())
                .bind(self.replica())
                .bind(grace_ms)
                .fetch_all(pool)
                .await?
        });
        let mut claimed = Vec::new();
        for (id, seen) in candidates {
            let won = self
                .take_over_row(
                    "sandboxes",
                    "status IN ('provisioning', 'running', 'destroying')",
                    &id,
                    &seen,
                )
                .await?;
            // Pooled rows included: the pool adopts them back (`pool::adopt_row`).
            if won && let Some(row) = self.get_sandbox_any(&id).await? {
                claimed.push(row);
            }
        }
        Ok(claimed)
    }

    /// Live sandboxes per backend (for the `/metrics` gauge).
    pub async fn count_live_by_backend(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT backend, COUNT(*) FROM sandboxes \
                 WHERE status IN ('provisioning', 'running') AND pool IS NULL \
                 GROUP BY backend ORDER BY backend",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Like `select_many` with $4 = this replica, no limit.
    async fn select_mine(&self, sql: &'static str, at: i64) -> Result<Vec<SandboxRow>, StoreError> {
        let raws: Vec<RawRow> = on_pool!(self.db(), |pool| {
            let rows = sqlx::query(sql)
                .bind(self.owner())
                .bind(at)
                .bind(i64::MAX)
                .bind(self.replica())
                .fetch_all(pool)
                .await?;
            let mut raws = Vec::with_capacity(rows.len());
            for row in &rows {
                raws.push(read_row!(row));
            }
            raws
        });
        raws.into_iter().map(RawRow::parse).collect()
    }

    async fn select_many(
        &self,
        sql: &'static str,
        at: i64,
        limit: i64,
    ) -> Result<Vec<SandboxRow>, StoreError> {
        let owner = self.owner();
        let raws: Vec<RawRow> = on_pool!(self.db(), |pool| {
            let rows = sqlx::query(sql)
                .bind(owner)
                .bind(at)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            let mut raws = Vec::with_capacity(rows.len());
            for row in &rows {
                raws.push(read_row!(row));
            }
            raws
        });
        raws.into_iter().map(RawRow::parse).collect()
    }
}

impl Store {
    /// Moves row `id` of `table` (still matching `live`) to this replica if its replica is
    /// still `seen`, the one read when it was picked: a compare-and-set, so of two survivors
    /// taking over a dead replica's rows only one wins each row. `table` and `live` are
    /// constants of the callers.
    pub(super) async fn take_over_row(
        &self,
        table: &'static str,
        live: &'static str,
        id: &str,
        seen: &Option<String>,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE {table} SET replica = $2 WHERE id = $1 AND {live} \
             AND ((replica IS NULL AND $3 IS NULL) OR replica = $3)"
        );
        let taken = on_pool!(self.db(), |pool| {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id)
                .bind(self.replica())
                .bind(seen)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(taken == 1)
    }
}
