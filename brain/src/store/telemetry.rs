//! Counts read at scrape time for `/metrics` (gauges that hold across replicas), and the
//! session's trace context (one trace per session across runs).

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

    /// The `traceparent` of the session's first traced run (its root span), if any.
    pub async fn session_trace_parent(&self, id: &str) -> Result<Option<String>, StoreError> {
        let tp: Option<Option<String>> = on_pool!(self.db(), |pool| {
            sqlx::query_scalar("SELECT trace_parent FROM sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(tp.flatten())
    }

    /// Records the session's root span, unless one is recorded already (the first run wins).
    pub async fn set_session_trace_parent(
        &self,
        id: &str,
        traceparent: &str,
    ) -> Result<bool, StoreError> {
        let n = on_pool!(self.db(), |pool| {
            sqlx::query(
                "UPDATE sessions SET trace_parent = $2 WHERE id = $1 AND trace_parent IS NULL",
            )
            .bind(id)
            .bind(traceparent)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }
}
