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
/// The same shape comes from Airlock's `gateway_keys` and from LiteLLM's
/// `LiteLLM_VerificationToken` (plus its team's row).
#[derive(Debug, Clone, Default)]
pub struct KeyRow {
    pub token_hash: String,
    /// Display form, `sk-...abcd`.
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
    /// `30s`, `1h`, `1d`, `30d`…: spend resets to 0 this often.
    pub budget_duration: Option<String>,
    /// Unix seconds of the next reset.
    pub budget_reset_at: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub max_parallel_requests: Option<i64>,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub blocked: bool,
    /// The key's team (LiteLLM databases): its budget, models and block apply too.
    pub team: Option<TeamRow>,
    /// The key's user (LiteLLM databases): a personal budget applies to keys without a team.
    pub user: Option<UserRow>,
}

#[derive(Debug, Clone, Default)]
pub struct UserRow {
    pub max_budget: Option<f64>,
    pub spend: f64,
}

#[derive(Debug, Clone, Default)]
pub struct TeamRow {
    pub max_budget: Option<f64>,
    pub spend: f64,
    /// JSON list (empty = all).
    pub models: String,
    pub blocked: bool,
}

/// Which key table a database holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySchema {
    /// Airlock's own `gateway_keys`.
    Native,
    /// A LiteLLM proxy's PostgreSQL (`LiteLLM_VerificationToken` & co.), used as is.
    LiteLlm,
}

/// One answered request, for `/spend/logs` (and LiteLLM's `LiteLLM_SpendLogs`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SpendLog {
    pub request_id: String,
    /// Hashed key (`api_key` in LiteLLM's table).
    pub api_key: String,
    pub model: String,
    pub model_group: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_creation_tokens: i64,
    pub spend: f64,
    /// Unix milliseconds.
    pub start_ms: i64,
    pub end_ms: i64,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
}

/// Spend to add for one (key, model).
#[derive(Debug, Clone, Default)]
pub struct SpendDelta {
    pub token_hash: String,
    /// LiteLLM databases: the key's team and user, whose spend columns count too.
    pub team_id: Option<String>,
    pub user_id: Option<String>,
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

/// Key limits (LiteLLM's key fields), cross-replica rate-limit windows, per-request spend logs.
const MIGRATION_2001: &str = "
ALTER TABLE gateway_keys ADD COLUMN budget_duration TEXT;
ALTER TABLE gateway_keys ADD COLUMN budget_reset_at BIGINT;
ALTER TABLE gateway_keys ADD COLUMN rpm_limit BIGINT;
ALTER TABLE gateway_keys ADD COLUMN tpm_limit BIGINT;
ALTER TABLE gateway_keys ADD COLUMN max_parallel_requests BIGINT;
ALTER TABLE gateway_keys ADD COLUMN team_id TEXT;
ALTER TABLE gateway_keys ADD COLUMN user_id TEXT;
ALTER TABLE gateway_keys ADD COLUMN blocked BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE IF NOT EXISTS gateway_ratelimit (
    token_hash TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    tokens BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (token_hash, window_start)
);
CREATE TABLE IF NOT EXISTS gateway_spend_logs (
    request_id TEXT PRIMARY KEY,
    api_key TEXT NOT NULL,
    model TEXT NOT NULL,
    model_group TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_creation_tokens BIGINT NOT NULL,
    spend DOUBLE PRECISION NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    team_id TEXT,
    user_id TEXT
);
CREATE INDEX IF NOT EXISTS gateway_spend_logs_key_time ON gateway_spend_logs (api_key, start_ms);
";

/// `max_parallel_requests` across replicas: each replica's in-flight count per key,
/// as a lease renewed every sync (a replica that dies stops counting when it expires).
const MIGRATION_2010: &str = "
CREATE TABLE IF NOT EXISTS gateway_parallel (
    token_hash TEXT NOT NULL,
    replica TEXT NOT NULL,
    in_flight BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (token_hash, replica)
);
";

fn migration(v: i64, name: &'static str, sql: &'static str) -> Migration {
    Migration::new(
        v,
        Cow::Borrowed(name),
        MigrationType::Simple,
        sqlx::SqlSafeStr::into_sql_str(sql),
        false,
    )
}

fn migrator() -> Migrator {
    let mut m = Migrator::with_migrations(vec![
        migration(2000, "gateway keys and spend", MIGRATION_2000),
        migration(
            2001,
            "gateway key limits, rate windows, spend logs",
            MIGRATION_2001,
        ),
        migration(2010, "gateway parallel-request leases", MIGRATION_2010),
    ]);
    // The brain's migrations (1..999) live in the same table.
    m.set_ignore_missing(true);
    m
}

/// Run the same statement on either pool: `$N` placeholders work on both (SQLite numbers
/// `$N` parameters in order of first appearance, so each query uses them in order).
macro_rules! on_pool {
    ($self:expr, $p:ident => $body:expr, memory => $mem:expr) => {
        match $self {
            Store::Sqlite($p) => $body,
            Store::Postgres($p) => $body,
            Store::Memory => $mem,
        }
    };
}

/// Columns of a key, in `row_to_key` order, for Airlock's table.
const NATIVE_KEY_COLS: &str = "token_hash, key_name, key_alias, max_budget, models, metadata, spend, \
    expires_at, created_at, budget_duration, budget_reset_at, rpm_limit, tpm_limit, max_parallel_requests, \
    team_id, user_id, blocked, CAST(NULL AS DOUBLE PRECISION), CAST(NULL AS DOUBLE PRECISION), CAST(NULL AS TEXT), CAST(NULL AS BOOLEAN), \
    CAST(NULL AS DOUBLE PRECISION), CAST(NULL AS DOUBLE PRECISION)";

/// The same columns from LiteLLM's tables (Prisma: DateTime = timestamp(3) in UTC,
/// String[] = text[], Json = jsonb), joined with the key's team and user.
const LITELLM_KEY_SELECT: &str = r#"SELECT v.token, COALESCE(v.key_name, ''), v.key_alias, v.max_budget,
    COALESCE(array_to_json(v.models)::text, '[]'), COALESCE(v.metadata::text, '{}'), v.spend,
    EXTRACT(EPOCH FROM v.expires)::bigint, COALESCE(EXTRACT(EPOCH FROM v.created_at)::bigint, 0),
    v.budget_duration, EXTRACT(EPOCH FROM v.budget_reset_at)::bigint, v.rpm_limit, v.tpm_limit,
    v.max_parallel_requests::bigint, v.team_id, v.user_id, COALESCE(v.blocked, false),
    t.max_budget, t.spend, array_to_json(t.models)::text, t.blocked, u.max_budget, u.spend
    FROM "LiteLLM_VerificationToken" v LEFT JOIN "LiteLLM_TeamTable" t ON t.team_id = v.team_id
    LEFT JOIN "LiteLLM_UserTable" u ON u.user_id = v.user_id"#;

fn row_to_key<R>(r: &R) -> Result<KeyRow, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<f64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> f64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<bool>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let team_spend: Option<f64> = r.try_get(18)?;
    let user_spend: Option<f64> = r.try_get(22)?;
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
        budget_duration: r.try_get(9)?,
        budget_reset_at: r.try_get(10)?,
        rpm_limit: r.try_get(11)?,
        tpm_limit: r.try_get(12)?,
        max_parallel_requests: r.try_get(13)?,
        team_id: r.try_get(14)?,
        user_id: r.try_get(15)?,
        blocked: r.try_get(16)?,
        team: match team_spend {
            None => None,
            Some(spend) => Some(TeamRow {
                max_budget: r.try_get(17)?,
                spend,
                models: r
                    .try_get::<Option<String>, _>(19)?
                    .unwrap_or_else(|| "[]".into()),
                blocked: r.try_get::<Option<bool>, _>(20)?.unwrap_or(false),
            }),
        },
        user: match user_spend {
            None => None,
            Some(spend) => Some(UserRow {
                max_budget: r.try_get(21)?,
                spend,
            }),
        },
    })
}

impl Store {
    /// Connect by URL: `sqlite://path` (created if missing), `sqlite::memory:`,
    /// `postgres://…`, or `memory` (no persistence). A PostgreSQL that holds a LiteLLM
    /// proxy's tables gets Airlock's own tables in a separate schema (`airlock`, or
    /// `AIRLOCK_GATEWAY_SCHEMA`): LiteLLM's schema is never altered.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url == "memory" {
            return Ok(Store::Memory);
        }
        if url.starts_with("sqlite:") {
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                // 256 KiB of page cache per connection instead of SQLite's 2 MiB: the
                // writes append (spend-log ids ascend, see `keys::next_request_id`) and
                // keys are cached in memory anyway, while a full 2 MiB cache on each
                // connection showed up as RSS growth under load.
                .pragma("cache_size", "-256");
            // One connection: writes serialise in SQLite anyway, and each connection is a
            // thread with its own page cache, statement cache and allocator heap. A second
            // one (so a cold key lookup need not wait for a spend transaction) cost 1.4 MB
            // of peak RSS under load (bench/gateway, same run); key checks are served from
            // memory, and a spend transaction of one batch takes a few milliseconds. No
            // code path takes a second connection while holding one (that would deadlock).
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await?;
            return Ok(Store::Sqlite(pool));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = sqlx::postgres::PgConnectOptions::from_str(url)?;
            let pool = pg_pool(opts.clone()).await?;
            let (litellm, current): (bool, String) = sqlx::query_as(
                r#"SELECT to_regclass('"LiteLLM_VerificationToken"') IS NOT NULL, current_schema()::text"#,
            )
            .fetch_one(&pool)
            .await?;
            if !litellm {
                return Ok(Store::Postgres(pool));
            }
            let ours = std::env::var("AIRLOCK_GATEWAY_SCHEMA").unwrap_or_else(|_| "airlock".into());
            if ours.is_empty() || !ours.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(StoreError::Url(format!("AIRLOCK_GATEWAY_SCHEMA `{ours}`")));
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {ours}"
            )))
            .execute(&pool)
            .await?;
            pool.close().await;
            let path = format!("{ours},\"{}\"", current.replace('"', ""));
            return Ok(Store::Postgres(
                pg_pool(opts.options([("search_path", path.as_str())])).await?,
            ));
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

    /// Does this database hold a LiteLLM proxy's key table?
    pub async fn key_schema(&self) -> Result<KeySchema, StoreError> {
        if let Store::Postgres(p) = self {
            let (found,): (bool,) =
                sqlx::query_as(r#"SELECT to_regclass('"LiteLLM_VerificationToken"') IS NOT NULL"#)
                    .fetch_one(p)
                    .await?;
            if found {
                return Ok(KeySchema::LiteLlm);
            }
        }
        Ok(KeySchema::Native)
    }

    /// One key by its hash (None = no such key).
    pub async fn get_key(
        &self,
        schema: KeySchema,
        token_hash: &str,
    ) -> Result<Option<KeyRow>, StoreError> {
        let q = match schema {
            KeySchema::Native => {
                format!("SELECT {NATIVE_KEY_COLS} FROM gateway_keys WHERE token_hash = $1")
            }
            KeySchema::LiteLlm => format!("{LITELLM_KEY_SELECT} WHERE v.token = $1"),
        };
        let q = sqlx::AssertSqlSafe(q);
        Ok(
            on_pool!(self, p => match sqlx::query(q).bind(token_hash).fetch_optional(p).await? {
            Some(r) => Some(row_to_key(&r)?),
            None => None,
        }, memory => None),
        )
    }

    /// All keys (for listing).
    pub async fn load_keys(&self, schema: KeySchema) -> Result<Vec<KeyRow>, StoreError> {
        let q = match schema {
            KeySchema::Native => format!("SELECT {NATIVE_KEY_COLS} FROM gateway_keys"),
            KeySchema::LiteLlm => LITELLM_KEY_SELECT.to_owned(),
        };
        let q = sqlx::AssertSqlSafe(q);
        Ok(
            on_pool!(self, p => sqlx::query(q).fetch_all(p).await?.iter().map(row_to_key).collect::<Result<Vec<_>, _>>()?, memory => Vec::new()),
        )
    }

    pub async fn insert_key(&self, schema: KeySchema, k: &KeyRow) -> Result<(), StoreError> {
        let q = match schema {
            KeySchema::Native => {
                "INSERT INTO gateway_keys (token_hash, key_name, key_alias, max_budget, models, metadata, spend, expires_at, created_at, \
                budget_duration, budget_reset_at, rpm_limit, tpm_limit, max_parallel_requests, team_id, user_id, blocked) \
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            }
            // LiteLLM's own proxy reads these rows too: same columns, same encodings.
            KeySchema::LiteLlm => {
                r#"INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, max_budget, models, metadata, spend,
                expires, created_at, budget_duration, budget_reset_at, rpm_limit, tpm_limit, max_parallel_requests, team_id, user_id, blocked, updated_at)
                VALUES ($1, $2, $3, $4, ARRAY(SELECT json_array_elements_text($5::json)), $6::jsonb, $7,
                to_timestamp($8) AT TIME ZONE 'UTC', to_timestamp($9) AT TIME ZONE 'UTC', $10, to_timestamp($11) AT TIME ZONE 'UTC',
                $12, $13, $14::int, $15, $16, $17, now() AT TIME ZONE 'UTC')"#
            }
        };
        on_pool!(self, p => {
            sqlx::query(q)
                .bind(&k.token_hash)
                .bind(&k.key_name)
                .bind(&k.key_alias)
                .bind(k.max_budget)
                .bind(&k.models)
                .bind(&k.metadata)
                .bind(k.spend)
                .bind(k.expires_at)
                .bind(k.created_at)
                .bind(&k.budget_duration)
                .bind(k.budget_reset_at)
                .bind(k.rpm_limit)
                .bind(k.tpm_limit)
                .bind(k.max_parallel_requests)
                .bind(&k.team_id)
                .bind(&k.user_id)
                .bind(k.blocked)
                .execute(p)
                .await?;
        }, memory => {});
        Ok(())
    }

    /// Replace a key's settable fields (not its spend). False = no such key.
    pub async fn update_key(&self, schema: KeySchema, k: &KeyRow) -> Result<bool, StoreError> {
        let q = match schema {
            KeySchema::Native => {
                "UPDATE gateway_keys SET key_alias = $1, max_budget = $2, models = $3, metadata = $4, expires_at = $5, \
                budget_duration = $6, budget_reset_at = $7, rpm_limit = $8, tpm_limit = $9, max_parallel_requests = $10, team_id = $11, \
                user_id = $12, blocked = $13 WHERE token_hash = $14"
            }
            KeySchema::LiteLlm => {
                r#"UPDATE "LiteLLM_VerificationToken" SET key_alias = $1, max_budget = $2,
                models = ARRAY(SELECT json_array_elements_text($3::json)), metadata = $4::jsonb,
                expires = to_timestamp($5) AT TIME ZONE 'UTC', budget_duration = $6, budget_reset_at = to_timestamp($7) AT TIME ZONE 'UTC',
                rpm_limit = $8, tpm_limit = $9, max_parallel_requests = $10::int, team_id = $11, user_id = $12, blocked = $13,
                updated_at = now() AT TIME ZONE 'UTC' WHERE token = $14"#
            }
        };
        Ok(on_pool!(self, p => sqlx::query(q)
            .bind(&k.key_alias)
            .bind(k.max_budget)
            .bind(&k.models)
            .bind(&k.metadata)
            .bind(k.expires_at)
            .bind(&k.budget_duration)
            .bind(k.budget_reset_at)
            .bind(k.rpm_limit)
            .bind(k.tpm_limit)
            .bind(k.max_parallel_requests)
            .bind(&k.team_id)
            .bind(&k.user_id)
            .bind(k.blocked)
            .bind(&k.token_hash)
            .execute(p)
            .await?
            .rows_affected() > 0, memory => true))
    }

    pub async fn delete_key(
        &self,
        schema: KeySchema,
        token_hash: &str,
    ) -> Result<bool, StoreError> {
        let q = match schema {
            KeySchema::Native => "DELETE FROM gateway_keys WHERE token_hash = $1",
            KeySchema::LiteLlm => r#"DELETE FROM "LiteLLM_VerificationToken" WHERE token = $1"#,
        };
        Ok(
            on_pool!(self, p => sqlx::query(q).bind(token_hash).execute(p).await?.rows_affected() > 0, memory => true),
        )
    }

    /// Reset the spend of keys whose `budget_reset_at` has passed; returns the hashes reset.
    /// Each reset is a compare-and-set on `budget_reset_at`, so with several replicas
    /// exactly one of them resets a key per period.
    pub async fn reset_due_budgets(
        &self,
        schema: KeySchema,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let (sel, upd) = match schema {
            KeySchema::Native => (
                "SELECT token_hash, budget_duration, budget_reset_at FROM gateway_keys \
                 WHERE budget_duration IS NOT NULL AND budget_reset_at IS NOT NULL AND budget_reset_at <= $1",
                "UPDATE gateway_keys SET spend = 0, budget_reset_at = $1 WHERE token_hash = $2 AND budget_reset_at = $3",
            ),
            KeySchema::LiteLlm => (
                r#"SELECT token, budget_duration, EXTRACT(EPOCH FROM budget_reset_at)::bigint FROM "LiteLLM_VerificationToken"
                 WHERE budget_duration IS NOT NULL AND budget_reset_at IS NOT NULL AND budget_reset_at <= to_timestamp($1) AT TIME ZONE 'UTC'"#,
                r#"UPDATE "LiteLLM_VerificationToken" SET spend = 0, budget_reset_at = to_timestamp($1) AT TIME ZONE 'UTC'
                 WHERE token = $2 AND EXTRACT(EPOCH FROM budget_reset_at)::bigint = $3"#,
            ),
        };
        let now_bind = now;
        let due: Vec<(String, Option<String>, Option<i64>)> = on_pool!(self, p => sqlx::query_as(sel).bind(now_bind).fetch_all(p).await?, memory => Vec::new());
        let mut reset = Vec::new();
        for (token, dur, at) in due {
            let (Some(dur), Some(at)) = (dur, at) else {
                continue;
            };
            let Some(secs) = crate::keys::duration_secs(&dur) else {
                continue;
            };
            // The next reset after now, on the key's own schedule.
            let periods = (now - at) / secs + 1;
            let next = at + periods * secs;
            let n = on_pool!(self, p => sqlx::query(upd).bind(next).bind(&token).bind(at).execute(p).await?.rows_affected(), memory => 0);
            if n > 0 {
                reset.push(token);
            }
        }
        Ok(reset)
    }

    /// Add this replica's unsynced rate-limit counts for the minute window starting at
    /// `window_start` and return the window's totals over all replicas.
    pub async fn sync_window(
        &self,
        token_hash: &str,
        window_start: i64,
        requests: i64,
        tokens: i64,
    ) -> Result<(i64, i64), StoreError> {
        const Q: &str = "INSERT INTO gateway_ratelimit (token_hash, window_start, requests, tokens) VALUES ($1, $2, $3, $4) \
            ON CONFLICT (token_hash, window_start) DO UPDATE SET requests = gateway_ratelimit.requests + excluded.requests, \
            tokens = gateway_ratelimit.tokens + excluded.tokens RETURNING requests, tokens";
        Ok(on_pool!(self, p => sqlx::query_as(Q)
            .bind(token_hash)
            .bind(window_start)
            .bind(requests)
            .bind(tokens)
            .fetch_one(p)
            .await?, memory => (requests, tokens)))
    }

    /// Publish this replica's in-flight count for a key, as a lease until `expires_ms`.
    pub async fn publish_parallel(
        &self,
        token_hash: &str,
        replica: &str,
        in_flight: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        const UPSERT: &str = "INSERT INTO gateway_parallel (token_hash, replica, in_flight, expires_ms) VALUES ($1, $2, $3, $4) \
            ON CONFLICT (token_hash, replica) DO UPDATE SET in_flight = excluded.in_flight, expires_ms = excluded.expires_ms";
        on_pool!(self, p => {
            sqlx::query(UPSERT)
                .bind(token_hash)
                .bind(replica)
                .bind(in_flight)
                .bind(expires_ms)
                .execute(p)
                .await?;
        }, memory => {});
        Ok(())
    }

    /// The other replicas' unexpired in-flight counts, summed per key (keys with none
    /// left out): one query for all keys, so a key this replica never saw counts too.
    pub async fn parallel_elsewhere(
        &self,
        replica: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        const Q: &str = "SELECT token_hash, CAST(SUM(in_flight) AS BIGINT) FROM gateway_parallel \
            WHERE replica <> $1 AND expires_ms > $2 AND in_flight > 0 GROUP BY token_hash";
        Ok(on_pool!(self, p => sqlx::query_as(Q)
            .bind(replica)
            .bind(now_ms)
            .fetch_all(p)
            .await?, memory => Vec::new()))
    }

    /// Drop parallel-request leases that expired before `before_ms`.
    pub async fn prune_parallel(&self, before_ms: i64) -> Result<(), StoreError> {
        on_pool!(self, p => { sqlx::query("DELETE FROM gateway_parallel WHERE expires_ms < $1").bind(before_ms).execute(p).await?; }, memory => {});
        Ok(())
    }

    /// Drop rate-limit windows that ended before `before`.
    pub async fn prune_windows(&self, before: i64) -> Result<(), StoreError> {
        on_pool!(self, p => { sqlx::query("DELETE FROM gateway_ratelimit WHERE window_start < $1").bind(before).execute(p).await?; }, memory => {});
        Ok(())
    }

    /// Apply a batch of spend deltas and request logs in one transaction. In a LiteLLM
    /// database the key's, team's and user's `spend` columns and `LiteLLM_SpendLogs` are
    /// written as LiteLLM writes them, so both proxies see the same totals.
    pub async fn write_spend(
        &self,
        schema: KeySchema,
        batch: &[SpendDelta],
        logs: &[SpendLog],
    ) -> Result<(), StoreError> {
        let now = chrono::Utc::now().timestamp();
        const UPSERT: &str = "INSERT INTO gateway_spend (token_hash, model, requests, input_tokens, output_tokens, spend, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (token_hash, model) DO UPDATE SET requests = gateway_spend.requests + excluded.requests, \
                 input_tokens = gateway_spend.input_tokens + excluded.input_tokens, output_tokens = gateway_spend.output_tokens + excluded.output_tokens, \
                 spend = gateway_spend.spend + excluded.spend, updated_at = excluded.updated_at";
        let key_q = match schema {
            KeySchema::Native => "UPDATE gateway_keys SET spend = spend + $1 WHERE token_hash = $2",
            KeySchema::LiteLlm => {
                r#"UPDATE "LiteLLM_VerificationToken" SET spend = spend + $1 WHERE token = $2"#
            }
        };
        const NATIVE_LOG: &str = "INSERT INTO gateway_spend_logs (request_id, api_key, model, model_group, prompt_tokens, completion_tokens, \
            cache_read_tokens, cache_creation_tokens, spend, start_ms, end_ms, team_id, user_id) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (request_id) DO NOTHING";
        // SQLite takes `$N` as a *named* parameter: the parser looks each name up in a
        // list (strncmp per earlier name) and `sqlite3_bind_parameter_name` scans that
        // list again per bind, so a 256-row statement (3 328 parameters) cost ~200 M
        // instructions to prepare and as much to bind — 70 % of the gateway's CPU under
        // callgrind. Anonymous `?` parameters are numbered in place: linear.
        // `OR IGNORE` rather than `ON CONFLICT (request_id) DO NOTHING`: the same for these
        // rows (a repeated id is skipped; no value is ever NULL in a NOT NULL column), but
        // no row can then abort the statement, so SQLite keeps no statement journal for it.
        // With the upsert clause the NOT NULL checks could abort, and a multi-row statement
        // inside a transaction journals every page it touches: past 64 KiB that journal
        // spilled to a temp file (`/var/tmp/etilqs_*`: open, unlink, a 4 KiB pwrite per
        // page, close) in every statement under load (strace).
        const NATIVE_LOG_SQLITE: &str = "INSERT OR IGNORE INTO gateway_spend_logs (request_id, api_key, model, model_group, prompt_tokens, completion_tokens, \
            cache_read_tokens, cache_creation_tokens, spend, start_ms, end_ms, team_id, user_id) \
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
        const LITELLM_LOG: &str = r#"INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, total_tokens, prompt_tokens,
            completion_tokens, "startTime", "endTime", model, model_group, "user", team_id, metadata, status, updated_at)
            VALUES ($1, 'acompletion', $2, $3, $4::int, $5::int, $6::int, to_timestamp($7 / 1000.0) AT TIME ZONE 'UTC',
            to_timestamp($8 / 1000.0) AT TIME ZONE 'UTC', $9, $10, COALESCE($11, ''), $12,
            jsonb_build_object('cache_read_input_tokens', $13::bigint, 'cache_creation_input_tokens', $14::bigint, 'source', 'airlock'),
            'success', now() AT TIME ZONE 'UTC') ON CONFLICT (request_id) DO NOTHING"#;
        match self {
            Store::Sqlite(p) => {
                let mut tx = p.begin().await?;
                for d in batch {
                    sqlx::query(UPSERT)
                        .bind(&d.token_hash)
                        .bind(&d.model)
                        .bind(d.requests)
                        .bind(d.input_tokens)
                        .bind(d.output_tokens)
                        .bind(d.cost)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(key_q)
                        .bind(d.cost)
                        .bind(&d.token_hash)
                        .execute(&mut *tx)
                        .await?;
                }
                // Many rows per statement: one statement per row made the log
                // writer cost a sizeable share of a core at a few thousand req/s.
                for (chunk, sql) in log_chunks(logs, NATIVE_LOG_SQLITE) {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for l in chunk {
                        q = q
                            .bind(&l.request_id)
                            .bind(&l.api_key)
                            .bind(&l.model)
                            .bind(&l.model_group)
                            .bind(l.prompt_tokens)
                            .bind(l.completion_tokens)
                            .bind(l.cache_read_tokens)
                            .bind(l.cache_creation_tokens)
                            .bind(l.spend)
                            .bind(l.start_ms)
                            .bind(l.end_ms)
                            .bind(&l.team_id)
                            .bind(&l.user_id);
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Store::Postgres(p) => {
                let mut tx = p.begin().await?;
                for d in batch {
                    sqlx::query(UPSERT)
                        .bind(&d.token_hash)
                        .bind(&d.model)
                        .bind(d.requests)
                        .bind(d.input_tokens)
                        .bind(d.output_tokens)
                        .bind(d.cost)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(key_q)
                        .bind(d.cost)
                        .bind(&d.token_hash)
                        .execute(&mut *tx)
                        .await?;
                    if schema == KeySchema::LiteLlm {
                        if let Some(t) = &d.team_id {
                            sqlx::query(r#"UPDATE "LiteLLM_TeamTable" SET spend = spend + $1 WHERE team_id = $2"#)
                                .bind(d.cost).bind(t).execute(&mut *tx).await?;
                        }
                        if let Some(u) = &d.user_id {
                            sqlx::query(r#"UPDATE "LiteLLM_UserTable" SET spend = spend + $1 WHERE user_id = $2"#)
                                .bind(d.cost).bind(u).execute(&mut *tx).await?;
                        }
                    }
                }
                let template = match schema {
                    KeySchema::Native => NATIVE_LOG,
                    KeySchema::LiteLlm => LITELLM_LOG,
                };
                for (chunk, sql) in log_chunks(logs, template) {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for l in chunk {
                        q = match schema {
                            KeySchema::Native => q
                                .bind(&l.request_id)
                                .bind(&l.api_key)
                                .bind(&l.model)
                                .bind(&l.model_group)
                                .bind(l.prompt_tokens)
                                .bind(l.completion_tokens)
                                .bind(l.cache_read_tokens)
                                .bind(l.cache_creation_tokens)
                                .bind(l.spend)
                                .bind(l.start_ms)
                                .bind(l.end_ms)
                                .bind(&l.team_id)
                                .bind(&l.user_id),
                            KeySchema::LiteLlm => q
                                .bind(&l.request_id)
                                .bind(&l.api_key)
                                .bind(l.spend)
                                .bind(l.prompt_tokens + l.completion_tokens)
                                .bind(l.prompt_tokens)
                                .bind(l.completion_tokens)
                                .bind(l.start_ms)
                                .bind(l.end_ms)
                                .bind(&l.model)
                                .bind(&l.model_group)
                                .bind(&l.user_id)
                                .bind(&l.team_id)
                                .bind(l.cache_read_tokens)
                                .bind(l.cache_creation_tokens),
                        };
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Store::Memory => {}
        }
        Ok(())
    }

    /// Request logs, newest first, optionally for one hashed key and a time range (ms).
    pub async fn spend_logs(
        &self,
        schema: KeySchema,
        api_key: Option<&str>,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        limit: i64,
    ) -> Result<Vec<SpendLog>, StoreError> {
        let q = match schema {
            KeySchema::Native => {
                "SELECT request_id, api_key, model, model_group, prompt_tokens, completion_tokens, cache_read_tokens, \
                cache_creation_tokens, spend, start_ms, end_ms, team_id, user_id FROM gateway_spend_logs \
                WHERE ($1 IS NULL OR api_key = $1) AND ($2 IS NULL OR start_ms >= $2) AND ($3 IS NULL OR start_ms < $3) \
                ORDER BY start_ms DESC LIMIT $4"
            }
            KeySchema::LiteLlm => {
                r#"SELECT request_id, api_key, model, COALESCE(model_group, ''), prompt_tokens::bigint, completion_tokens::bigint,
                COALESCE((metadata->>'cache_read_input_tokens')::bigint, 0), COALESCE((metadata->>'cache_creation_input_tokens')::bigint, 0),
                spend, (EXTRACT(EPOCH FROM "startTime") * 1000)::bigint, (EXTRACT(EPOCH FROM "endTime") * 1000)::bigint, team_id, NULLIF("user", '')
                FROM "LiteLLM_SpendLogs" WHERE ($1::text IS NULL OR api_key = $1) AND ($2::bigint IS NULL OR "startTime" >= to_timestamp($2 / 1000.0) AT TIME ZONE 'UTC')
                AND ($3::bigint IS NULL OR "startTime" < to_timestamp($3 / 1000.0) AT TIME ZONE 'UTC') ORDER BY "startTime" DESC LIMIT $4"#
            }
        };
        macro_rules! logs {
            ($rows:expr) => {
                $rows
                    .iter()
                    .map(|r| -> Result<SpendLog, sqlx::Error> {
                        Ok(SpendLog {
                            request_id: r.try_get(0)?,
                            api_key: r.try_get(1)?,
                            model: r.try_get(2)?,
                            model_group: r.try_get(3)?,
                            prompt_tokens: r.try_get(4)?,
                            completion_tokens: r.try_get(5)?,
                            cache_read_tokens: r.try_get(6)?,
                            cache_creation_tokens: r.try_get(7)?,
                            spend: r.try_get(8)?,
                            start_ms: r.try_get(9)?,
                            end_ms: r.try_get(10)?,
                            team_id: r.try_get(11)?,
                            user_id: r.try_get(12)?,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            };
        }
        Ok(
            on_pool!(self, p => logs!(sqlx::query(q).bind(api_key).bind(start_ms).bind(end_ms).bind(limit).fetch_all(p).await?), memory => Vec::new()),
        )
    }

    /// Spend of one key (or the master/anonymous pseudo-keys) per model.
    pub async fn model_spend(&self, token_hash: &str) -> Result<Vec<ModelSpend>, StoreError> {
        const Q: &str = "SELECT model, requests, input_tokens, output_tokens, spend FROM gateway_spend WHERE token_hash = $1 ORDER BY model";
        Ok(
            on_pool!(self, p => sqlx::query_as::<_, (String, i64, i64, i64, f64)>(Q)
            .bind(token_hash)
            .fetch_all(p)
            .await?
            .into_iter()
            .map(|(model, requests, input_tokens, output_tokens, spend)| ModelSpend { model, requests, input_tokens, output_tokens, spend })
            .collect(), memory => Vec::new()),
        )
    }

    /// Cheap liveness of the database (for readiness), bounded by `timeout`.
    pub async fn ping(&self, timeout: std::time::Duration) -> bool {
        let f = async {
            on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.is_ok(), memory => true)
        };
        tokio::time::timeout(timeout, f).await.unwrap_or(false)
    }
}

async fn pg_pool(opts: sqlx::postgres::PgConnectOptions) -> Result<PgPool, sqlx::Error> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        // A stalled database must not hold callers: they give up and degrade.
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(opts)
        .await
}

/// Rows per multi-row `INSERT` of spend logs: 14 parameters a row stays far below
/// SQLite's (32 766) and PostgreSQL's (65 535) limits. 64 rows already make the
/// per-statement cost small per row, while each cached statement (one per chunk size
/// and connection) stays a few tens of kB.
const LOG_ROWS_PER_STATEMENT: usize = 64;

/// `logs` cut into chunks with the statement for each: `template` is a one-row
/// `INSERT … VALUES (…$1…$k…) ON CONFLICT …` whose row is repeated once per log, its
/// placeholders renumbered. Chunk sizes are `LOG_ROWS_PER_STATEMENT` and then powers
/// of two, so the prepared-statement cache sees a handful of distinct statements.
fn log_chunks<'l>(
    logs: &'l [SpendLog],
    template: &str,
) -> impl Iterator<Item = (&'l [SpendLog], String)> + 'l {
    let values = template.find("VALUES").map_or(0, |i| i + "VALUES".len());
    let open = values + template[values..].find('(').unwrap_or(0);
    // The row is the parenthesised group after VALUES (nested parentheses included).
    let mut depth = 0usize;
    let mut close = open;
    for (i, c) in template[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    close = open + i + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    let (head, row, tail) = (
        template[..open].to_owned(),
        template[open..close].to_owned(),
        template[close..].to_owned(),
    );
    let per_row = row
        .split('$')
        .skip(1)
        .filter_map(|p| {
            p.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse::<usize>().ok())
        })
        .max()
        .unwrap_or(0);
    let mut rest = logs;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= LOG_ROWS_PER_STATEMENT {
            LOG_ROWS_PER_STATEMENT
        } else {
            1 << (usize::BITS - 1 - rest.len().leading_zeros())
        };
        let (chunk, more) = rest.split_at(n);
        rest = more;
        let mut sql = String::with_capacity(head.len() + n * (row.len() + 16) + tail.len());
        sql.push_str(&head);
        for r in 0..n {
            if r > 0 {
                sql.push_str(", ");
            }
            let mut it = row.split('$');
            sql.push_str(it.next().unwrap_or(""));
            for part in it {
                let digits =
                    part.len() - part.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                match part[..digits].parse::<usize>() {
                    Ok(i) => {
                        sql.push('$');
                        sql.push_str(&(r * per_row + i).to_string());
                        sql.push_str(&part[digits..]);
                    }
                    Err(_) => {
                        sql.push('$');
                        sql.push_str(part);
                    }
                }
            }
        }
        sql.push_str(&tail);
        Some((chunk, sql))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_log_rows_are_batched_with_renumbered_placeholders() {
        let logs: Vec<SpendLog> = (0..300).map(|_| SpendLog::default()).collect();
        let t = "INSERT INTO t (a, b, c) VALUES ($1, to_timestamp($2 / 1000.0), $3::int) ON CONFLICT (a) DO NOTHING";
        let chunks: Vec<_> = log_chunks(&logs, t).collect();
        let sizes: Vec<usize> = chunks.iter().map(|(c, _)| c.len()).collect();
        // 300 = 4 × 64 + 32 + 8 + 4.
        assert_eq!(sizes, [64, 64, 64, 64, 32, 8, 4]);
        let (_, sql) = &chunks[6];
        assert_eq!(
            sql,
            "INSERT INTO t (a, b, c) VALUES ($1, to_timestamp($2 / 1000.0), $3::int), \
             ($4, to_timestamp($5 / 1000.0), $6::int), ($7, to_timestamp($8 / 1000.0), $9::int), \
             ($10, to_timestamp($11 / 1000.0), $12::int) ON CONFLICT (a) DO NOTHING"
        );
        assert!(chunks[0].1.contains("$192::int)"));
        assert!(log_chunks(&[], t).next().is_none());
        // SQLite's anonymous parameters are repeated as they are.
        let q = "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO NOTHING";
        let (c, sql) = log_chunks(&logs[..3], q).next().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            sql,
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) ON CONFLICT (a) DO NOTHING"
        );
    }

    /// A batch written twice (a commit that timed out on our side but landed) keeps one
    /// row per request id, in batches that span several multi-row statements.
    #[tokio::test]
    async fn a_rewritten_spend_log_batch_keeps_one_row_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gw.db").display());
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let logs: Vec<SpendLog> = (0..150)
            .map(|i| SpendLog {
                request_id: format!("req-{i:03}"),
                api_key: if i % 2 == 0 { "hash-a" } else { "hash-b" }.into(),
                model: "gpt-4o".into(),
                model_group: "gpt".into(),
                prompt_tokens: i,
                completion_tokens: 2 * i,
                spend: i as f64 / 100.0,
                start_ms: 1_000 + i,
                end_ms: 2_000 + i,
                team_id: (i % 3 == 0).then(|| "team".to_string()),
                ..Default::default()
            })
            .collect();
        store
            .write_spend(KeySchema::Native, &[], &logs)
            .await
            .unwrap();
        // The retry repeats the batch and adds one new row.
        let mut again = logs.clone();
        again.push(SpendLog {
            request_id: "req-new".into(),
            api_key: "hash-a".into(),
            ..logs[0].clone()
        });
        store
            .write_spend(KeySchema::Native, &[], &again)
            .await
            .unwrap();
        let all = store
            .spend_logs(KeySchema::Native, None, None, None, 1_000)
            .await
            .unwrap();
        assert_eq!(all.len(), 151);
        let a = store
            .spend_logs(KeySchema::Native, Some("hash-a"), None, None, 1_000)
            .await
            .unwrap();
        assert_eq!(a.len(), 76);
        let r = all.iter().find(|l| l.request_id == "req-099").unwrap();
        assert_eq!(
            (
                r.api_key.as_str(),
                r.prompt_tokens,
                r.completion_tokens,
                r.start_ms
            ),
            ("hash-b", 99, 198, 1_099)
        );
        assert_eq!(r.team_id.as_deref(), Some("team"));
        assert!((r.spend - 0.99).abs() < 1e-12);
    }
}
