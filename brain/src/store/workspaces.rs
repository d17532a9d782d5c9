//! Persistent-workspace leases on the `sandboxes` table (migration 164).
//!
//! A sandbox that mounts a persistent workspace records the name in its row's `workspace`
//! column before the backend is asked for anything. The partial unique index
//! `sandboxes_live_workspace (backend, workspace) WHERE … status IN (live)` lets one live row
//! hold a name at a time, so two provisions racing for one workspace (in one brain or in
//! several on one PostgreSQL) cannot both win: the second `UPDATE` fails with a unique
//! violation. The lease ends with the row (`destroyed`/`failed` leave the index).

use super::{Store, StoreError, on_pool};
use crate::sandbox::BackendKind;

impl Store {
    /// Takes workspace `name` on `backend` for the `provisioning` sandbox `id`. `Ok(false)`
    /// when another live sandbox holds it (or `id` is no longer provisioning).
    pub async fn claim_workspace(
        &self,
        id: &str,
        backend: BackendKind,
        name: &str,
    ) -> Result<bool, StoreError> {
        let result = on_pool!(self.db(), |pool| {
            sqlx::query(
                "UPDATE sandboxes SET workspace = $3 \
                 WHERE id = $1 AND backend = $2 AND status = 'provisioning' AND pool IS NULL",
            )
            .bind(id)
            .bind(backend.as_str())
            .bind(name)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        });
        match result {
            Ok(n) => Ok(n == 1),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The live sandbox holding workspace `name` on `backend`, if any.
    pub async fn workspace_holder(
        &self,
        backend: BackendKind,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT id FROM sandboxes WHERE backend = $1 AND workspace = $2 \
                 AND status IN ('provisioning', 'running', 'destroying')",
            )
            .bind(backend.as_str())
            .bind(name)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(id,)| id))
    }
}
