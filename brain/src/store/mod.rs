//! Durable state: SQLite by default, PostgreSQL by URL.
//!
//! `sqlx`'s `Any` driver does not translate placeholders, so the store holds either a
//! `SqlitePool` or a `PgPool` and every query is written once, with `$N` placeholders (which
//! SQLite also understands), and expanded for both pools by [`on_pool!`]. Times are unix
//! milliseconds (`BIGINT`) and JSON is stored as text, so one SQL string fits both engines.
//!
//! Migrations are embedded per engine (`migrations/sqlite`, `migrations/postgres`) with versions
//! 1..999. Other crates (the gateway, versions 2000+) add their tables to the same database, so
//! each migrator ignores versions it does not know.
//!
//! Rows are committed before the action they describe: a sandbox row exists (`provisioning`)
//! before a backend creates anything, so a brain killed at any moment finds what to reap.
//! Sessions, events, keys and spend get their own `store/<table>.rs` files and migrations
//! `0002_…` on; they reuse [`on_pool!`] and [`Store::owner`].

mod audit_heads;
#[cfg(test)]
pub(crate) mod faults;
pub mod replicas;
mod sandboxes;
mod snapshots;
mod telemetry;
#[cfg(test)]
mod tests;
mod workspaces;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use audit_heads::{HeadRecord, RecordedHead};
pub use sandboxes::{NewSandbox, SandboxRow, SandboxStatus};
pub use snapshots::{OrphanSnapshot, SnapshotRow, SnapshotState};
pub use workspaces::WorkspaceClaim;

/// (version, description, SQL) of every brain migration, per engine.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "sandboxes",
        include_str!("../../migrations/sqlite/0001_sandboxes.sql"),
    ),
    (
        2,
        "sessions",
        include_str!("../../migrations/sqlite/0002_sessions.sql"),
    ),
    (
        3,
        "triggers",
        include_str!("../../migrations/sqlite/0003_triggers.sql"),
    ),
    (
        4,
        "mcp",
        include_str!("../../migrations/sqlite/0004_mcp.sql"),
    ),
    (
        5,
        "trigger_waits",
        include_str!("../../migrations/sqlite/0005_trigger_waits.sql"),
    ),
    (
        6,
        "audit_heads",
        include_str!("../../migrations/sqlite/0006_audit_heads.sql"),
    ),
    (
        16,
        "pools",
        include_str!("../../migrations/sqlite/0016_pools.sql"),
    ),
    (
        17,
        "session_trace",
        include_str!("../../migrations/sqlite/0017_session_trace.sql"),
    ),
    (
        120,
        "replicas",
        include_str!("../../migrations/sqlite/0120_replicas.sql"),
    ),
    (
        121,
        "trigger_inbox",
        include_str!("../../migrations/sqlite/0121_trigger_inbox.sql"),
    ),
    (
        150,
        "session_owner",
        include_str!("../../migrations/sqlite/0150_session_owner.sql"),
    ),
    (
        163,
        "snapshots",
        include_str!("../../migrations/sqlite/0163_snapshots.sql"),
    ),
    (
        164,
        "workspace_leases",
        include_str!("../../migrations/sqlite/0164_workspace_leases.sql"),
    ),
    (
        175,
        "sessions listing",
        include_str!("../../migrations/sqlite/0175_sessions_listing.sql"),
    ),
    (
        190,
        "workspace deletes",
        include_str!("../../migrations/sqlite/0190_workspace_deletes.sql"),
    ),
    (
        191,
        "snapshot intents",
        include_str!("../../migrations/sqlite/0191_snapshot_intents.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "sandboxes",
        include_str!("../../migrations/postgres/0001_sandboxes.sql"),
    ),
    (
        2,
        "sessions",
        include_str!("../../migrations/postgres/0002_sessions.sql"),
    ),
    (
        3,
        "triggers",
        include_str!("../../migrations/postgres/0003_triggers.sql"),
    ),
    (
        4,
        "mcp",
        include_str!("../../migrations/postgres/0004_mcp.sql"),
    ),
    (
        5,
        "trigger_waits",
        include_str!("../../migrations/postgres/0005_trigger_waits.sql"),
    ),
    (
        6,
        "audit_heads",
        include_str!("../../migrations/postgres/0006_audit_heads.sql"),
    ),
    (
        16,
        "pools",
        include_str!("../../migrations/postgres/0016_pools.sql"),
    ),
    (
        17,
        "session_trace",
        include_str!("../../migrations/postgres/0017_session_trace.sql"),
    ),
    (
        120,
        "replicas",
        include_str!("../../migrations/postgres/0120_replicas.sql"),
    ),
    (
        121,
        "trigger_inbox",
        include_str!("../../migrations/postgres/0121_trigger_inbox.sql"),
    ),
    (
        150,
        "session_owner",
        include_str!("../../migrations/postgres/0150_session_owner.sql"),
    ),
    (
        163,
        "snapshots",
        include_str!("../../migrations/postgres/0163_snapshots.sql"),
    ),
    (
        164,
        "workspace_leases",
        include_str!("../../migrations/postgres/0164_workspace_leases.sql"),
    ),
    (
        175,
        "sessions listing",
        include_str!("../../migrations/postgres/0175_sessions_listing.sql"),
    ),
    (
        190,
        "workspace deletes",
        include_str!("../../migrations/postgres/0190_workspace_deletes.sql"),
    ),
    (
        191,
        "snapshot intents",
        include_str!("../../migrations/postgres/0191_snapshot_intents.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url (expected sqlite:… or postgres://…)")]
    UnsupportedUrl,
    #[error(
        "the SQLite database {path} is in use by another brain (lock file {path}.lock): one \
         brain per SQLite file; use PostgreSQL for replicas"
    )]
    Locked { path: String },
    #[error("locking the SQLite database {path}: {error}")]
    Lock { path: String, error: std::io::Error },
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
}

impl StoreError {
    /// The database could not be reached (connection lost, pool exhausted, server shutting
    /// down, SQLite busy): the same call may succeed later. Callers that run long work (the
    /// session loop) wait and retry these instead of failing: a database outage pauses work.
    pub fn is_transient(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                // PostgreSQL: 08xxx connection exceptions, 57P01-03 shutdown / cannot
                // connect now, 40001/40P01 serialization failure / deadlock.
                // SQLite: 5 SQLITE_BUSY, 6 SQLITE_LOCKED (and their extended codes).
                code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
                    || code == "5"
                    || code == "6"
                    || code
                        .parse::<i64>()
                        .is_ok_and(|c| c & 0xff == 5 || c & 0xff == 6)
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool the store has. The body is expanded once
/// per engine, so it type-checks against each driver separately.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    owner: String,
    /// This process's replica id (`replicas.id`): fresh per connect, so a restarted brain is a
    /// new replica and its predecessor's rows are adopted once that one's lease lapsed.
    replica: String,
    /// The last reading of the database clock and when (monotonic) it was taken: see
    /// [`Store::clock_ms`].
    clock: Arc<Mutex<Option<(Instant, i64)>>>,
    /// Test-only fault injection (see [`faults`]).
    #[cfg(test)]
    pub(crate) faults: faults::FaultPlan,
}

// === impl Store ===

impl Store {
    /// Connects, runs migrations and loads (or creates) this store's owner id.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_in_schema(url, None).await
    }

    /// Like [`Store::connect`], but on PostgreSQL every connection uses `schema` (created if
    /// missing) as its `search_path`. Tests use it to get an isolated database each.
    pub async fn connect_in_schema(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let db = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            // An in-memory database exists per connection: keep exactly one, forever.
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let pool = if in_memory {
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
            } else {
                SqlitePoolOptions::new().max_connections(4)
            }
            .connect_with(options)
            .await?;
            Db::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut options = PgConnectOptions::from_str(url)?;
            if let Some(schema) = schema {
                create_pg_schema(options.clone(), schema).await?;
                options = options.options([("search_path", schema)]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await?;
            Db::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        migrate(&db).await?;
        let owner = load_owner(&db).await?;
        Ok(Self {
            db,
            owner,
            replica: format!(
                "replica-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            clock: Arc::default(),
            #[cfg(test)]
            faults: faults::FaultPlan::default(),
        })
    }

    /// Stable identity of this store, used as the `airlock.owner` label on sandboxes.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// This process's replica id (see [`replicas`]).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn engine(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// SQL for "now" in unix milliseconds on the database's clock. Leases are written and
    /// compared with it, so brains whose clocks disagree still agree on who holds what.
    pub(crate) fn db_now_sql(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Db::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// "Now" on the database clock, in unix milliseconds: what every time that replicas
    /// compare is computed from and compared with (session deadlines, sandbox TTLs, MCP idle
    /// timeouts), like leases. A brain whose own clock is skewed thus expires nothing early or
    /// late. Read from the database at most every [`CLOCK_REFRESH`] and advanced in between
    /// by this process's monotonic clock (which a wall-clock skew or jump does not move).
    pub async fn clock_ms(&self) -> Result<i64, StoreError> {
        let cached = *self.clock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, db_ms)) = cached
            && at.elapsed() < CLOCK_REFRESH
        {
            return Ok(db_ms + i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX));
        }
        let sql = format!("SELECT {}", self.db_now_sql());
        let sent = Instant::now();
        let db_ms: i64 = on_pool!(self.db(), |pool| {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_one(pool)
                .await?
        });
        // The reading was taken somewhere in the round trip: credit half of it.
        let half = sent.elapsed() / 2;
        let at = sent + half;
        *self.clock.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, db_ms));
        Ok(db_ms + i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
    }

    /// [`Store::clock_ms`] as a timestamp.
    pub async fn clock(&self) -> Result<DateTime<Utc>, StoreError> {
        let ms = self.clock_ms().await?;
        Ok(DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now))
    }

    /// The injected fault for this call, if a test armed one (always `Ok` outside tests).
    #[cfg(test)]
    pub(crate) fn fault(&self, op: &str, kind: Option<&str>) -> Result<(), StoreError> {
        match self.faults.take(op, kind, false) {
            Some(faults::Action::FailTransient) => Err(faults::transient()),
            Some(faults::Action::FailPermanent) => Err(faults::permanent()),
            _ => Ok(()),
        }
    }

    /// Whether a test armed "commit, then lose the answer" for this call.
    #[cfg(test)]
    pub(crate) fn fault_after_commit(&self, op: &str, kind: Option<&str>) -> bool {
        self.faults.take(op, kind, true) == Some(faults::Action::FailAfterCommit)
    }

    /// Cheap round trip used by `/healthz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.db, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        on_pool!(&self.db, |pool| pool.close().await)
    }
}

async fn create_pg_schema(options: PgConnectOptions, schema: &str) -> Result<(), StoreError> {
    use sqlx::Connection;
    let valid = !schema.is_empty()
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(StoreError::Db(sqlx::Error::Configuration(
            format!("invalid schema name {schema:?}").into(),
        )));
    }
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    // The name was checked to be [A-Za-z0-9_]+ above, so quoting it is enough.
    let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> Migrator {
    let list = migrations
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(list);
    // Other crates keep their migrations (versions 2000+) in the same table.
    migrator.set_ignore_missing(true);
    migrator
}

async fn migrate(db: &Db) -> Result<(), StoreError> {
    match db {
        Db::Sqlite(pool) => migrator(SQLITE_MIGRATIONS).run(pool).await?,
        Db::Postgres(pool) => migrator(POSTGRES_MIGRATIONS).run(pool).await?,
    }
    Ok(())
}

/// Inserts a fresh owner id the first time; every later start reads the same one back.
async fn load_owner(db: &Db) -> Result<String, StoreError> {
    let candidate = format!("brain-{}", uuid::Uuid::new_v4().simple());
    let now = now_ms();
    let owner: String = on_pool!(db, |pool| {
        sqlx::query(
            "INSERT INTO instance (id, owner, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&candidate)
        .bind(now)
        .execute(pool)
        .await?;
        sqlx::query_scalar("SELECT owner FROM instance WHERE id = 1")
            .fetch_one(pool)
            .await?
    });
    Ok(owner)
}

/// Takes the exclusive lock `<db file>.lock` of a SQLite database for as long as the returned
/// file is kept open (`None` for in-memory databases and PostgreSQL). A brain on SQLite
/// treats every claim in the file as its dead predecessor's, so a second brain on the same
/// file must not start: it would release the first's claims and sweep its sandboxes.
pub fn lock_sqlite_file(url: &str) -> Result<Option<std::fs::File>, StoreError> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(None);
    };
    if rest.contains(":memory:") || rest.contains("mode=memory") {
        return Ok(None);
    }
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Ok(None);
    }
    let lock_path = format!("{path}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| StoreError::Lock {
            path: path.to_owned(),
            error,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(error)) => Err(StoreError::Lock {
            path: path.to_owned(),
            error,
        }),
    }
}

/// How long a reading of the database clock is advanced locally before it is read again.
const CLOCK_REFRESH: Duration = Duration::from_secs(10);

/// This brain's clock, in unix milliseconds. `AIRLOCK_TEST_CLOCK_SKEW_MS` (read once; for
/// chaos tests only) shifts it, to show that leases do not depend on it.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis() + clock_skew_ms() + test_skew::get()
}

fn clock_skew_ms() -> i64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("AIRLOCK_TEST_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Unit tests skew this thread's brain clock (a `#[tokio::test]` runs its tasks on its own
/// thread), to show that what must agree across brains does not read it.
#[cfg(test)]
pub(crate) mod test_skew {
    use std::cell::Cell;

    thread_local! {
        static SKEW_MS: Cell<i64> = const { Cell::new(0) };
    }

    pub(crate) fn set(ms: i64) {
        SKEW_MS.with(|s| s.set(ms));
    }

    pub(crate) fn get() -> i64 {
        SKEW_MS.with(Cell::get)
    }
}

#[cfg(not(test))]
mod test_skew {
    pub(super) fn get() -> i64 {
        0
    }
}
