//! Counts read at scrape time for `/metrics` (gauges that hold across replicas).

use super::{Store, StoreError, on_pool};

impl Store {
    /// Sessions per live status (`queued`, `running`).
    pub async fn count_sessions_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT status, COUNT(*) FROM sessions \
                 WHERE status IN ('queued', 'running') GROUP BY status",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Replies waiting in the trigger outbox (not given up).
    pub async fn count_pending_replies(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = on_pool!(self.db(), |pool| {
            sqlx::query_as("SELECT COUNT(*) FROM trigger_replies WHERE failed_at IS NULL")
                .fetch_one(pool)
                .await?
        });
        Ok(n)
    }
}
