//! The `audit_heads` table: the vault proxy's audit heads as the brain saw them (see
//! `crate::audit_heads`). Rows are only ever added; the first hash seen for a seq stays.

use super::sandboxes::from_ms;
use super::{Store, StoreError, now_ms, on_pool};
use chrono::{DateTime, Utc};

/// One recorded head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedHead {
    pub seq: u64,
    pub hash: String,
    pub recorded_at: DateTime<Utc>,
}

/// What recording a head found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadRecord {
    /// A new row.
    Added,
    /// This exact head was recorded before.
    Known,
    /// Another hash was recorded for this seq earlier (kept): the log was replaced.
    Conflicts { recorded: String },
}

impl Store {
    /// Records `seq:hash` for `log`, keeping an earlier, different hash for the same seq.
    pub async fn record_audit_head(
        &self,
        log: &str,
        seq: u64,
        hash: &str,
    ) -> Result<HeadRecord, StoreError> {
        let seq_i = i64::try_from(seq).map_err(|_| StoreError::Corrupt {
            table: "audit_heads",
            message: format!("seq {seq} does not fit a BIGINT"),
        })?;
        let inserted = on_pool!(self.db(), |pool| {
            sqlx::query(
                "INSERT INTO audit_heads (log, seq, hash, recorded_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (log, seq) DO NOTHING",
            )
            .bind(log)
            .bind(seq_i)
            .bind(hash)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        if inserted == 1 {
            return Ok(HeadRecord::Added);
        }
        let recorded: String = on_pool!(self.db(), |pool| {
            sqlx::query_scalar("SELECT hash FROM audit_heads WHERE log = $1 AND seq = $2")
                .bind(log)
                .bind(seq_i)
                .fetch_one(pool)
                .await?
        });
        Ok(if recorded == hash {
            HeadRecord::Known
        } else {
            HeadRecord::Conflicts { recorded }
        })
    }

    /// Every head recorded for `log`, by seq.
    pub async fn audit_heads(&self, log: &str) -> Result<Vec<RecordedHead>, StoreError> {
        let rows: Vec<(i64, String, i64)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT seq, hash, recorded_at FROM audit_heads WHERE log = $1 ORDER BY seq",
            )
            .bind(log)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(seq, hash, recorded_at)| {
                Ok(RecordedHead {
                    seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt {
                        table: "audit_heads",
                        message: format!("negative seq {seq}"),
                    })?,
                    hash,
                    recorded_at: from_ms(recorded_at),
                })
            })
            .collect()
    }
}
