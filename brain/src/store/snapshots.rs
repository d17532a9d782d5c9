//! The `snapshots` table: one row per workspace snapshot (see `crate::snapshots`).

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

impl Store {
    /// Records a snapshot the backend has stored.
    pub async fn insert_snapshot(&self, row: &SnapshotRow) -> Result<(), StoreError> {
        let size = i64::try_from(row.size_bytes).unwrap_or(i64::MAX);
        on_pool!(self.db(), |pool| {
            sqlx::query(
                "INSERT INTO snapshots (id, backend, image, source_sandbox, backend_ref, \
                 size_bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&row.id)
            .bind(row.backend.as_str())
            .bind(&row.image)
            .bind(&row.source_sandbox)
            .bind(&row.backend_ref)
            .bind(size)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    pub async fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
        let raw: Option<Raw> = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT id, backend, image, source_sandbox, backend_ref, size_bytes, created_at \
                 FROM snapshots WHERE id = $1",
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
