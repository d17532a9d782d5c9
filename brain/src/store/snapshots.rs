//! The `snapshots` table: one row per workspace snapshot (see `crate::snapshots`). A row is
//! written `pending` (with this replica) before the backend stores anything, completed to
//! `ready` afterwards; `pending` rows of replicas that are gone are taken over by compare-and-
//! set ([`Store::claim_orphan_snapshots`]) and end `discarded` (migration 191).

use chrono::{DateTime, Utc};

use super::sandboxes::from_ms;
use super::{Store, StoreError, now_ms, on_pool};
use crate::sandbox::BackendKind;

/// One stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub id: String,
    pub backend: BackendKind,
    /// The source sandbox's image (`None`: the backend's default).
    pub image: Option<String>,
    pub source_sandbox: String,
    /// What the backend stored (docker: the image reference).
    pub backend_ref: String,
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
}

type Raw = (String, String, Option<String>, String, String, i64, i64);

/// Where a snapshot's row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// The backend may be storing it (or a crash left what it stored): not usable yet.
    Pending,
    Ready,
    /// A pending snapshot whose brain died; what it left was removed.
    Discarded,
}

impl SnapshotState {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "ready" => Some(Self::Ready),
            "discarded" => Some(Self::Discarded),
            _ => None,
        }
    }
}

/// A `pending` snapshot a gone replica left, taken over by this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanSnapshot {
    pub id: String,
    pub backend: BackendKind,
}

impl Store {
    /// Records that snapshot `row.id` is about to be taken (`pending`, by this replica),
    /// before the backend stores anything: a crash from here on leaves a row that names
    /// what to look for at the backend. `backend_ref` and `size_bytes` are not known yet.
    pub async fn begin_snapshot(&self, row: &SnapshotRow) -> Result<(), StoreError> {
        on_pool!(self.db(), |pool| {
            sqlx::query(
                "INSERT INTO snapshots (id, backend, image, source_sandbox, backend_ref, \
                 size_bytes, created_at, state, replica) \
                 VALUES ($1, $2, $3, $4, '', 0, $5, 'pending', $6)",
            )
            .bind(&row.id)
            .bind(row.backend.as_str())
            .bind(&row.image)
            .bind(&row.source_sandbox)
            .bind(now_ms())
            .bind(self.replica())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Records what the backend stored for a `pending` snapshot of this replica: it is
    /// `ready` from now on. `false` when the row is no longer this replica's pending one (a
    /// peer took it over as an orphan): the caller removes what it stored.
    pub async fn complete_snapshot(&self, row: &SnapshotRow) -> Result<bool, StoreError> {
        let size = i64::try_from(row.size_bytes).unwrap_or(i64::MAX);
        let n = on_pool!(self.db(), |pool| {
            sqlx::query(
                "UPDATE snapshots SET state = 'ready', image = $2, backend_ref = $3, \
                 size_bytes = $4, created_at = $5 \
                 WHERE id = $1 AND state = 'pending' AND replica = $6",
            )
            .bind(&row.id)
            .bind(&row.image)
            .bind(&row.backend_ref)
            .bind(size)
            .bind(now_ms())
            .bind(self.replica())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Where snapshot `id`'s row stands (`None`: no row).
    pub async fn snapshot_state(&self, id: &str) -> Result<Option<SnapshotState>, StoreError> {
        let row: Option<(String,)> = on_pool!(self.db(), |pool| {
            sqlx::query_as("SELECT state FROM snapshots WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(s,)| {
            SnapshotState::parse(&s).ok_or_else(|| StoreError::Corrupt {
                table: "snapshots",
                message: format!("unknown state {s:?} for {id}"),
            })
        })
        .transpose()
    }

    /// `pending` rows of replicas whose lease lapsed over `$2` ms ago (or that are gone).
    fn orphan_snapshots_where(&self) -> String {
        format!(
            "state = 'pending' AND (replica IS NULL OR (replica <> $1 AND replica NOT IN \
             (SELECT id FROM replicas WHERE lease_expires_at > {} - $2)))",
            self.db_now_sql()
        )
    }

    /// Whether [`Store::claim_orphan_snapshots`] would find anything (a cheap check for the
    /// periodic adoption).
    pub async fn has_orphan_snapshots(&self, grace_ms: i64) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT id FROM snapshots WHERE {} LIMIT 1",
            self.orphan_snapshots_where()
        );
        let row: Option<(String,)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(self.replica())
                .bind(grace_ms)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.is_some())
    }

    /// Takes over the `pending` snapshots of replicas whose lease lapsed over `grace_ms` ago
    /// (or that are gone), by compare-and-set, so two survivors never both handle one.
    pub async fn claim_orphan_snapshots(
        &self,
        grace_ms: i64,
    ) -> Result<Vec<OrphanSnapshot>, StoreError> {
        let sql = format!(
            "SELECT id, backend, replica FROM snapshots WHERE {}",
            self.orphan_snapshots_where()
        );
        let candidates: Vec<(String, String, Option<String>)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(self.replica())
                .bind(grace_ms)
                .fetch_all(pool)
                .await?
        });
        let mut claimed = Vec::new();
        for (id, backend, seen) in candidates {
            let won = self
                .take_over_row("snapshots", "state = 'pending'", &id, &seen)
                .await?;
            if won {
                let backend = backend.parse().map_err(|_| StoreError::Corrupt {
                    table: "snapshots",
                    message: format!("unknown backend {backend:?} for {id}"),
                })?;
                claimed.push(OrphanSnapshot { id, backend });
            }
        }
        Ok(claimed)
    }

    /// Marks this replica's pending snapshot `id` `discarded` (what it left was removed).
    pub async fn discard_snapshot(&self, id: &str) -> Result<(), StoreError> {
        on_pool!(self.db(), |pool| {
            sqlx::query(
                "UPDATE snapshots SET state = 'discarded', created_at = $2 \
                 WHERE id = $1 AND state = 'pending' AND replica = $3",
            )
            .bind(id)
            .bind(now_ms())
            .bind(self.replica())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Forgets `discarded` rows marked over `older_than_ms` ago (by then a template the
    /// provider finished after its brain died has been swept by name).
    pub async fn forget_discarded_snapshots(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        Ok(on_pool!(self.db(), |pool| {
            sqlx::query("DELETE FROM snapshots WHERE state = 'discarded' AND created_at < $1")
                .bind(now_ms() - older_than_ms)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// A `ready` snapshot (pending and discarded ones are not snapshots yet, or any more).
    pub async fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
        let raw: Option<Raw> = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT id, backend, image, source_sandbox, backend_ref, size_bytes, created_at \
                 FROM snapshots WHERE id = $1 AND state = 'ready'",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        raw.map(snapshot_from_raw).transpose()
    }

    /// Removes a snapshot's row; `false` when there was none.
    pub async fn delete_snapshot(&self, id: &str) -> Result<bool, StoreError> {
        let n = on_pool!(self.db(), |pool| {
            sqlx::query("DELETE FROM snapshots WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }
}

fn snapshot_from_raw(raw: Raw) -> Result<SnapshotRow, StoreError> {
    let (id, backend, image, source_sandbox, backend_ref, size, created_at) = raw;
    let backend = backend.parse().map_err(|_| StoreError::Corrupt {
        table: "snapshots",
        message: format!("unknown backend {backend:?} for {id}"),
    })?;
    Ok(SnapshotRow {
        id,
        backend,
        image,
        source_sandbox,
        backend_ref,
        size_bytes: u64::try_from(size).unwrap_or(0),
        created_at: from_ms(created_at),
    })
}
