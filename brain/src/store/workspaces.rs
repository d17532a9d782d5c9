//! Persistent-workspace leases on the `sandboxes` table (migration 164) and their delete
//! tombstones (migration 190, the `workspaces` table).
//!
//! A sandbox that mounts a persistent workspace records the name in its row's `workspace`
//! column before the backend is asked for anything. The partial unique index
//! `sandboxes_live_workspace (backend, workspace) WHERE … status IN (live)` lets one live row
//! hold a name at a time, so two provisions racing for one workspace (in one brain or in
//! several on one PostgreSQL) cannot both win: the second `UPDATE` fails with a unique
//! violation. The lease ends with the row (`destroyed`/`failed` leave the index).
//!
//! A delete and a claim exclude each other through the workspace's `workspaces` row: each
//! transaction first upserts it (which takes its row lock, or waits on the primary key for a
//! concurrent insert), then checks the other side. A claim that finds `deleting` fails; a
//! delete that finds a live holder rolls back. Whichever writes the row second sees the first
//! one's committed work (PostgreSQL re-reads the row an `ON CONFLICT DO UPDATE` waited for;
//! READ COMMITTED gives the delete's next statement a fresh snapshot; SQLite has one writer),
//! so a live sandbox never mounts a workspace being deleted, and a workspace is never deleted
//! under a live sandbox. The `deleting` row stays until the backend's volume is gone.

use super::{Store, StoreError, now_ms, on_pool};
use crate::sandbox::BackendKind;

/// How a claim of a workspace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceClaim {
    Won,
    /// Another live sandbox holds it (or the claiming row is no longer provisioning).
    Held,
    /// A delete of it is under way (or was interrupted: repeating the delete finishes it).
    Deleting,
}

/// The live states of a sandbox row (those in the partial unique index).
const LIVE: &str = "status IN ('provisioning', 'running', 'destroying')";

impl Store {
    /// Takes workspace `name` on `backend` for the `provisioning` sandbox `id`, unless a live
    /// sandbox holds it or a delete of it is under way.
    pub async fn claim_workspace(
        &self,
        id: &str,
        backend: BackendKind,
        name: &str,
    ) -> Result<WorkspaceClaim, StoreError> {
        let claimed: Result<WorkspaceClaim, sqlx::Error> = on_pool!(self.db(), |pool| {
            async {
                let mut tx = pool.begin().await?;
                // A no-op update that still takes the row lock: a concurrent delete waits for
                // us, or we wait for it and read its `deleting`.
                let (state,): (String,) = sqlx::query_as(
                    "INSERT INTO workspaces (backend, name, state, updated_at) \
                     VALUES ($1, $2, 'ready', $3) ON CONFLICT (backend, name) \
                     DO UPDATE SET updated_at = workspaces.updated_at RETURNING state",
                )
                .bind(backend.as_str())
                .bind(name)
                .bind(now_ms())
                .fetch_one(&mut *tx)
                .await?;
                if state != "ready" {
                    return Ok::<_, sqlx::Error>(WorkspaceClaim::Deleting);
                }
                let n = sqlx::query(
                    "UPDATE sandboxes SET workspace = $3 WHERE id = $1 AND backend = $2 \
                     AND status = 'provisioning' AND pool IS NULL",
                )
                .bind(id)
                .bind(backend.as_str())
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Ok(WorkspaceClaim::Held);
                }
                tx.commit().await?;
                Ok(WorkspaceClaim::Won)
            }
            .await
        });
        match claimed {
            Ok(claim) => Ok(claim),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(WorkspaceClaim::Held),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks workspace `name` on `backend` as being deleted, unless a live sandbox holds it:
    /// `Ok(Some(holder))` then, and nothing changes. After `Ok(None)` no claim succeeds until
    /// [`Store::end_workspace_delete`]. Marking a workspace that is already being deleted
    /// succeeds (a repeated delete finishes an interrupted one).
    pub async fn begin_workspace_delete(
        &self,
        backend: BackendKind,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let holder_sql = format!(
            "SELECT id FROM sandboxes WHERE backend = $1 AND workspace = $2 AND {LIVE} LIMIT 1"
        );
        let holder: Option<String> = on_pool!(self.db(), |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO workspaces (backend, name, state, updated_at) \
                 VALUES ($1, $2, 'deleting', $3) ON CONFLICT (backend, name) \
                 DO UPDATE SET state = 'deleting', updated_at = excluded.updated_at",
            )
            .bind(backend.as_str())
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            // A new statement (a fresh snapshot on PostgreSQL): sees any claim that held the
            // row lock before us, as it committed before our upsert could go on.
            let holder: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(holder_sql.clone()))
                .bind(backend.as_str())
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            match holder {
                Some((id,)) => {
                    tx.rollback().await?;
                    Some(id)
                }
                None => {
                    tx.commit().await?;
                    None
                }
            }
        });
        Ok(holder)
    }

    /// Ends a delete begun by [`Store::begin_workspace_delete`] (the backend removed the
    /// volume, or failed to and the workspace stays usable): claims succeed again.
    pub async fn end_workspace_delete(
        &self,
        backend: BackendKind,
        name: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self.db(), |pool| {
            sqlx::query(
                "DELETE FROM workspaces WHERE backend = $1 AND name = $2 AND state = 'deleting'",
            )
            .bind(backend.as_str())
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Whether a delete of workspace `name` on `backend` is under way (or was interrupted).
    pub async fn workspace_deleting(
        &self,
        backend: BackendKind,
        name: &str,
    ) -> Result<bool, StoreError> {
        let row: Option<(String,)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT state FROM workspaces WHERE backend = $1 AND name = $2 \
                 AND state = 'deleting'",
            )
            .bind(backend.as_str())
            .bind(name)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.is_some())
    }

    /// The live sandbox holding workspace `name` on `backend`, if any.
    pub async fn workspace_holder(
        &self,
        backend: BackendKind,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let sql =
            format!("SELECT id FROM sandboxes WHERE backend = $1 AND workspace = $2 AND {LIVE}");
        let row: Option<(String,)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(backend.as_str())
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(id,)| id))
    }
}
