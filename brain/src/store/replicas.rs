//! The `replicas` table (migration 0120): one row per brain process sharing the database, with
//! a lease on the database clock. Which sandboxes a replica may touch follows from it: its own
//! (`sandboxes.replica = me`) and those of replicas whose lease lapsed, which it first takes
//! over by compare-and-set ([`Store::claim_orphan_sandboxes`]), so two survivors never act on
//! one row.

use super::{Store, StoreError, on_pool};

/// A retired replica's row is forgotten after this long (its sandboxes, if any are left, are
/// then orphans: a missing replica is a dead one).
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

impl Store {
    /// Registers this replica, or extends its lease, to `lease_ms` from now on the database
    /// clock.
    pub async fn renew_replica(&self, lease_ms: i64) -> Result<(), StoreError> {
        let now = self.db_now_sql();
        let sql = format!(
            "INSERT INTO replicas (id, lease_expires_at, started_at) VALUES ($1, {now} + $2, {now}) \
             ON CONFLICT (id) DO UPDATE SET lease_expires_at = {now} + $2"
        );
        on_pool!(self.db(), |pool| {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(self.replica())
                .bind(lease_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Ends leases at once: this replica's on a clean stop (survivors adopt its sandboxes
    /// without waiting), or every other replica's (`others = true`) when one brain owns the
    /// database (SQLite, locked per file: anyone else registered there is a dead process).
    /// Also forgets replicas retired long ago.
    pub async fn retire_replicas(&self, others: bool) -> Result<u64, StoreError> {
        let now = self.db_now_sql();
        let retire = if others {
            "UPDATE replicas SET lease_expires_at = 0 WHERE id <> $1 AND lease_expires_at > 0"
        } else {
            "UPDATE replicas SET lease_expires_at = 0 WHERE id = $1"
        };
        let forget = format!("DELETE FROM replicas WHERE lease_expires_at < {now} - $1");
        Ok(on_pool!(self.db(), |pool| {
            let n = sqlx::query(retire)
                .bind(self.replica())
                .execute(pool)
                .await?
                .rows_affected();
            sqlx::query(sqlx::AssertSqlSafe(forget.clone()))
                .bind(FORGET_AFTER_MS)
                .execute(pool)
                .await?;
            n
        }))
    }

    /// Whether `replica` holds a live lease (by the database clock).
    pub async fn replica_alive(&self, replica: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT COUNT(*) FROM replicas WHERE id = $1 AND lease_expires_at > {}",
            self.db_now_sql()
        );
        let n: i64 = on_pool!(self.db(), |pool| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .bind(replica)
                .fetch_one(pool)
                .await?
        });
        Ok(n > 0)
    }
}
