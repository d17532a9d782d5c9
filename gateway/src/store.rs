//! Persistence for virtual keys and spend, in the same database as the brain.
//!
//! Runtime sqlx queries (no database at build time); SQLite or PostgreSQL.
//! Our migrations are versions 2000+ and run with `ignore_missing`, because
//! the brain's migrations (1..999) share the `_sqlx_migrations` table.
//! Tables are prefixed `gateway_` so they never collide with the brain's.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{PgPool, Row, SqlitePool};
use std::borrow::Cow;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL `{0}` (use sqlite:// or postgres://)")]
    Url(String),
}

/// Where keys and spend live. `Memory` keeps nothing across restarts.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Memory,
}

/// One persisted virtual key (the key itself is never stored, only its SHA-256).
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub token_hash: String,
    /// Display form, `sk-…abcd`.
    pub key_name: String,
    pub key_alias: Option<String>,
    pub max_budget: Option<f64>,
    /// JSON list of allowed model names (empty = all).
    pub models: String,
    /// JSON object.
    pub metadata: String,
    pub spend: f64,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

/// Spend to add for one (key, model).
#[derive(Debug, Clone, Default)]
pub struct SpendDelta {
    pub token_hash: String,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: f64,
}

/// Per-model spend of a key, as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSpend {
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub spend: f64,
}

const MIGRATION_2000: &str = "
CREATE TABLE IF NOT EXISTS gateway_keys (
    token_hash TEXT PRIMARY KEY,
    key_name TEXT NOT NULL,
    key_alias TEXT,
    max_budget DOUBLE PRECISION,
    models TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    spend DOUBLE PRECISION NOT NULL DEFAULT 0,
    expires_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_spend (
    token_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    spend DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (token_hash, model)
);
";

fn migrator() -> Migrator {
    let mut m = Migrator::with_migrations(vec![Migration::new(
        2000,
        Cow::Borrowed("gateway keys and spend"),
        MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str(MIGRATION_2000),
        false,
    )]);
    // The brain's migrations (1..999) live in the same table.
    m.set_ignore_missing(true);
    m
}

impl Store {
    /// Connect by URL: `sqlite://path` (created if missing), `sqlite::memory:`,
    /// `postgres://…`, or `memory` (no persistence).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url == "memory" {
            return Ok(Store::Memory);
        }
        if url.starts_with("sqlite:") {
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await?;
            return Ok(Store::Sqlite(pool));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(url)
                .await?;
            return Ok(Store::Postgres(pool));
        }
        Err(StoreError::Url(url.to_owned()))
    }

    /// Run the gateway's migrations (versions 2000+).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(p) => migrator().run(p).await?,
            Store::Postgres(p) => migrator().run(p).await?,
            Store::Memory => {}
        }
        Ok(())
    }

    pub async fn load_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        const Q: &str = "SELECT token_hash, key_name, key_alias, max_budget, models, metadata, spend, expires_at, created_at FROM gateway_keys";
        macro_rules! rows {
            ($rows:expr) => {
                $rows
                    .into_iter()
                    .map(|r| -> Result<KeyRow, sqlx::Error> {
                        Ok(KeyRow {
                            token_hash: r.try_get(0)?,
                            key_name: r.try_get(1)?,
                            key_alias: r.try_get(2)?,
                            max_budget: r.try_get(3)?,
                            models: r.try_get(4)?,
                            metadata: r.try_get(5)?,
                            spend: r.try_get(6)?,
                            expires_at: r.try_get(7)?,
                            created_at: r.try_get(8)?,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
        }
        Ok(match self {
            Store::Sqlite(p) => rows!(sqlx::query(Q).fetch_all(p).await?),
            Store::Postgres(p) => rows!(sqlx::query(Q).fetch_all(p).await?),
            Store::Memory => Vec::new(),
        })
    }

    pub async fn insert_key(&self, k: &KeyRow) -> Result<(), StoreError> {
        macro_rules! ins {
            ($q:expr, $p:expr) => {
                sqlx::query($q)
                    .bind(&k.token_hash)
                    .bind(&k.key_name)
                    .bind(&k.key_alias)
                    .bind(k.max_budget)
                    .bind(&k.models)
                    .bind(&k.metadata)
                    .bind(k.spend)
                    .bind(k.expires_at)
                    .bind(k.created_at)
                    .execute($p)
                    .await?
            };
        }
        match self {
            Store::Sqlite(p) => {
                ins!(
                    "INSERT INTO gateway_keys (token_hash, key_name, key_alias, max_budget, models, metadata, spend, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    p
                );
            }
            Store::Postgres(p) => {
                ins!(
                    "INSERT INTO gateway_keys (token_hash, key_name, key_alias, max_budget, models, metadata, spend, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    p
                );
            }
            Store::Memory => {}
        }
        Ok(())
    }

    pub async fn delete_key(&self, token_hash: &str) -> Result<bool, StoreError> {
        Ok(match self {
            Store::Sqlite(p) => {
                sqlx::query("DELETE FROM gateway_keys WHERE token_hash = ?")
                    .bind(token_hash)
                    .execute(p)
                    .await?
                    .rows_affected()
                    > 0
            }
            Store::Postgres(p) => {
                sqlx::query("DELETE FROM gateway_keys WHERE token_hash = $1")
                    .bind(token_hash)
                    .execute(p)
                    .await?
                    .rows_affected()
                    > 0
            }
            Store::Memory => true,
        })
    }

    /// Apply a batch of spend deltas in one transaction.
    pub async fn write_spend(&self, batch: &[SpendDelta]) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp();
        macro_rules! write {
            ($p:expr, $up:expr, $key:expr) => {{
                let mut tx = $p.begin().await?;
                for d in batch {
                    sqlx::query($up)
                        .bind(&d.token_hash)
                        .bind(&d.model)
                        .bind(d.requests)
                        .bind(d.input_tokens)
                        .bind(d.output_tokens)
                        .bind(d.cost)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query($key)
                        .bind(d.cost)
                        .bind(&d.token_hash)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Sqlite(p) => write!(
                p,
                "INSERT INTO gateway_spend (token_hash, model, requests, input_tokens, output_tokens, spend, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (token_hash, model) DO UPDATE SET requests = gateway_spend.requests + excluded.requests, \
                 input_tokens = gateway_spend.input_tokens + excluded.input_tokens, output_tokens = gateway_spend.output_tokens + excluded.output_tokens, \
                 spend = gateway_spend.spend + excluded.spend, updated_at = excluded.updated_at",
                "UPDATE gateway_keys SET spend = spend + ? WHERE token_hash = ?"
            ),
            Store::Postgres(p) => write!(
                p,
                "INSERT INTO gateway_spend (token_hash, model, requests, input_tokens, output_tokens, spend, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (token_hash, model) DO UPDATE SET requests = gateway_spend.requests + excluded.requests, \
                 input_tokens = gateway_spend.input_tokens + excluded.input_tokens, output_tokens = gateway_spend.output_tokens + excluded.output_tokens, \
                 spend = gateway_spend.spend + excluded.spend, updated_at = excluded.updated_at",
                "UPDATE gateway_keys SET spend = spend + $1 WHERE token_hash = $2"
            ),
            Store::Memory => {}
        }
        Ok(())
    }

    /// Spend of one key (or the master/anonymous pseudo-keys) per model.
    pub async fn model_spend(&self, token_hash: &str) -> Result<Vec<ModelSpend>, StoreError> {
        macro_rules! rows {
            ($rows:expr) => {
                $rows
                    .into_iter()
                    .map(|r| -> Result<ModelSpend, sqlx::Error> {
                        Ok(ModelSpend {
                            model: r.try_get(0)?,
                            requests: r.try_get(1)?,
                            input_tokens: r.try_get(2)?,
                            output_tokens: r.try_get(3)?,
                            spend: r.try_get(4)?,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
        }
        Ok(match self {
            Store::Sqlite(p) => rows!(
                sqlx::query("SELECT model, requests, input_tokens, output_tokens, spend FROM gateway_spend WHERE token_hash = ? ORDER BY model")
                    .bind(token_hash)
                    .fetch_all(p)
                    .await?
            ),
            Store::Postgres(p) => rows!(
                sqlx::query("SELECT model, requests, input_tokens, output_tokens, spend FROM gateway_spend WHERE token_hash = $1 ORDER BY model")
                    .bind(token_hash)
                    .fetch_all(p)
                    .await?
            ),
            Store::Memory => Vec::new(),
        })
    }
}
