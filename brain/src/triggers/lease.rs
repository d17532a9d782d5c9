//! Leases on trigger rows: events in the inbox (`trigger_events`, [`super::inbox`]) and
//! replies owed (`trigger_waits`, [`super::waits`]). A row is worked on by the brain named in
//! `owner` while `lease_expires_at` (database clock, so brains with skewed clocks agree) lies
//! ahead; the owner renews it while the task working on the row lives, and once it lapses any
//! brain takes the row over by compare-and-set on the lease value it read, so two never win the
//! same row. Both tables keep these columns under the same names; this module is the one copy
//! of the SQL that moves them.

use sqlx::Row;

use crate::store::{Store, StoreError, on_pool};

/// A table whose rows carry `id`, `owner`, `lease_expires_at` and `created_at`.
pub(super) struct Leased {
    table: &'static str,
}

pub(super) const EVENTS: Leased = Leased {
    table: "trigger_events",
};
pub(super) const WAITS: Leased = Leased {
    table: "trigger_waits",
};

/// A row taken over by [`Leased::claim_expired`]: its id and the two columns asked for.
pub(super) struct Won {
    pub id: String,
    pub columns: [Option<String>; 2],
}

impl Leased {
    /// Extends by `lease_ms` the leases of the rows `ids` that `owner` holds; returns how many
    /// it still held.
    pub async fn renew(
        &self,
        store: &Store,
        owner: &str,
        ids: &[String],
        lease_ms: i64,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "UPDATE {} SET lease_expires_at = {} + $1 WHERE owner = $2 AND id = $3",
            self.table,
            store.db_now_sql()
        );
        let mut renewed = 0;
        for id in ids {
            renewed += on_pool!(store.db(), |pool| {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(lease_ms)
                    .bind(owner)
                    .bind(id)
                    .execute(pool)
                    .await?
                    .rows_affected()
            });
        }
        Ok(renewed)
    }

    /// Makes rows claimable now: `owner`'s on a clean stop, or all (`None`) when one brain
    /// owns the database (SQLite).
    pub async fn release(&self, store: &Store, owner: Option<&str>) -> Result<u64, StoreError> {
        let sql = format!(
            "UPDATE {} SET lease_expires_at = 0 WHERE ($1 IS NULL OR owner = $1)",
            self.table
        );
        Ok(on_pool!(store.db(), |pool| {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(owner)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Takes over, oldest first, up to `limit` rows whose lease lapsed, each by compare-and-set
    /// on the lease read, and gives it a lease of `lease_ms` for `owner`. Returns the rows won
    /// with the values of `columns` (text columns of the table).
    pub async fn claim_expired(
        &self,
        store: &Store,
        owner: &str,
        lease_ms: i64,
        limit: i64,
        columns: [&'static str; 2],
    ) -> Result<Vec<Won>, StoreError> {
        let now = store.db_now_sql();
        let [a, b] = columns;
        let select = format!(
            "SELECT id, lease_expires_at, {a}, {b} FROM {} \
             WHERE lease_expires_at < {now} ORDER BY created_at LIMIT $1",
            self.table
        );
        let update = format!(
            "UPDATE {} SET owner = $1, lease_expires_at = {now} + $2 \
             WHERE id = $3 AND lease_expires_at = $4",
            self.table
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
                        row.try_get::<i64, _>("lease_expires_at")?,
                        [
                            row.try_get::<Option<String>, _>(a)?,
                            row.try_get::<Option<String>, _>(b)?,
                        ],
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        let mut won = Vec::new();
        for (id, seen, columns) in rows {
            let taken = on_pool!(store.db(), |pool| {
                sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                    .bind(owner)
                    .bind(lease_ms)
                    .bind(&id)
                    .bind(seen)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }) == 1;
            if taken {
                won.push(Won { id, columns });
            }
        }
        Ok(won)
    }
}
