//! Session rows, the event log and queued messages (migration `0002_sessions.sql`).
//!
//! Every write the loop makes goes through [`Store::append_event`]: one transaction that
//! updates the session row *fenced by the claim* (`claim_owner = me`) and inserts the next
//! event. A brain that lost its claim (lease expired, another replica took over) gets
//! `Ok(None)` and stops, so no session is driven by two processes at once.

use serde_json::Value;
use sqlx::Row;

use crate::sandbox::BackendKind;
use crate::store::{Db, Store, StoreError, now_ms, on_pool};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Queued => "queued",
            SessionStatus::Running => "running",
            SessionStatus::Succeeded => "succeeded",
            SessionStatus::Failed => "failed",
            SessionStatus::Cancelled => "cancelled",
        }
    }

    /// No loop runs for it (a succeeded session is re-queued by a follow-up message).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SessionStatus::Succeeded | SessionStatus::Failed | SessionStatus::Cancelled
        )
    }
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SessionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => SessionStatus::Queued,
            "running" => SessionStatus::Running,
            "succeeded" => SessionStatus::Succeeded,
            "failed" => SessionStatus::Failed,
            "cancelled" => SessionStatus::Cancelled,
            other => return Err(format!("unknown session status {other:?}")),
        })
    }
}

#[derive(Debug, Clone)]
pub struct NewSessionRow {
    pub id: String,
    pub task: String,
    pub model: String,
    pub agent: Option<String>,
    pub backend: Option<BackendKind>,
    pub credentials: Vec<String>,
    pub max_steps: u32,
    pub max_cost_usd: Option<f64>,
    pub origin: Value,
    pub deadline_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub id: String,
    pub status: SessionStatus,
    pub task: String,
    pub model: String,
    pub agent: Option<String>,
    pub backend: Option<BackendKind>,
    pub credentials: Vec<String>,
    pub max_steps: u32,
    pub max_cost_usd: Option<f64>,
    pub origin: Value,
    pub result: Option<String>,
    pub error: Option<String>,
    pub steps: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub last_sandbox_id: Option<String>,
    pub pending_messages: i64,
    pub cancel_requested: bool,
    pub claim_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub deadline_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl SessionRow {
    /// Nothing more will happen without a new request: failed or cancelled (a follow-up
    /// queued before that is never consumed), or succeeded with no follow-up pending.
    pub fn is_settled(&self) -> bool {
        settled(self.status, self.pending_messages)
    }
}

/// See [`SessionRow::is_settled`].
pub fn settled(status: SessionStatus, pending_messages: i64) -> bool {
    match status {
        SessionStatus::Failed | SessionStatus::Cancelled => true,
        SessionStatus::Succeeded => pending_messages == 0,
        SessionStatus::Queued | SessionStatus::Running => false,
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventRow {
    pub seq: i64,
    /// Unix milliseconds.
    pub ts: i64,
    pub kind: String,
    pub data: Value,
}

/// Row changes committed together with an event.
#[derive(Debug, Default, Clone)]
pub struct Patch<'a> {
    pub status: Option<SessionStatus>,
    pub result: Option<&'a str>,
    pub error: Option<&'a str>,
    pub add_steps: i64,
    pub add_input_tokens: i64,
    pub add_output_tokens: i64,
    pub add_cost_usd: f64,
    pub last_sandbox_id: Option<&'a str>,
    /// The queued message this event turns into a `user_message`.
    pub consume_message: Option<&'a str>,
    /// Commit only if no follow-up is pending (finishing a session that answered).
    pub require_no_pending: bool,
    pub release_claim: bool,
    /// A new deadline (a re-queued session gets a fresh timeout).
    pub deadline_at: Option<i64>,
    /// Commit only if the claim's lease has not expired by the database clock (before an
    /// action with effects outside the database, such as starting a tool: an expired lease
    /// may already be another brain's).
    pub require_live_lease: bool,
}

/// What [`Store::renew_leases`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Renewal {
    /// Sessions whose claim this brain still holds (renewed).
    pub held: Vec<String>,
    /// Of those, the ones whose cancel was requested (possibly through another replica).
    pub cancelled: Vec<String>,
}

/// What [`Store::queue_message`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOutcome {
    NotFound,
    /// Failed or cancelled sessions take no more messages.
    Closed(SessionStatus),
    /// Queued; `unclaimed` when the session is `queued` (a dispatcher must pick it up: it
    /// had answered and runs again, or had not started yet).
    Queued {
        unclaimed: bool,
    },
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<SessionStatus>,
    /// `origin.kind` (api, slack, github, mcp).
    pub origin_kind: Option<String>,
    /// Only sessions created before this many unix ms (paging, newest first).
    pub before_ms: Option<i64>,
    /// With `before_ms`: also sessions created at exactly `before_ms` whose id sorts below
    /// this one (the keyset's tie-breaker, so equal timestamps never drop a row).
    pub before_id: Option<String>,
    /// Only this virtual key's sessions (`vk:<hash>`); `None` = every session (master key).
    pub owner: Option<String>,
    /// Case-insensitive substring of the task, or of the id.
    pub search: Option<String>,
    pub limit: i64,
}

/// Where the next page starts: `(created_at, id)` of the last row looked at.
pub type Cursor = (i64, String);

/// One page of [`Store::list_sessions_page`].
#[derive(Debug, Clone, Default)]
pub struct SessionPage {
    pub rows: Vec<SessionRow>,
    /// `None`: there is nothing older that could match.
    pub next: Option<Cursor>,
    /// How many sessions the database looked at for this page (at most the window).
    pub scanned: usize,
}

/// How many sessions one page may look at, whatever the filters: the query walks one index
/// (newest first) for at most this many rows and tests the other filters and the search on
/// those only, so a page load never scans the table.
pub const LIST_WINDOW: i64 = 2000;

/// `%needle%` for `LIKE … ESCAPE '\'`, lower-cased.
fn like_pattern(needle: &str) -> String {
    let mut out = String::from("%");
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// An argument of a built query.
pub(crate) enum Arg {
    S(String),
    I(i64),
}

/// The columns `read_session!` reads, for SELECT and RETURNING alike.
macro_rules! session_columns {
    () => {
        "id, status, task, model, agent, backend, credentials, max_steps, \
         max_cost_usd, origin, result, error, steps, input_tokens, output_tokens, cost_usd, \
         last_sandbox_id, pending_messages, cancel_requested, claim_owner, lease_expires_at, \
         deadline_at, created_at, updated_at"
    };
}

const SELECT_SESSION: &str = concat!("SELECT ", session_columns!(), " FROM sessions");

macro_rules! read_session {
    ($row:expr) => {{
        let row = $row;
        RawSession {
            id: row.try_get("id")?,
            status: row.try_get("status")?,
            task: row.try_get("task")?,
            model: row.try_get("model")?,
            agent: row.try_get("agent")?,
            backend: row.try_get("backend")?,
            credentials: row.try_get("credentials")?,
            max_steps: row.try_get("max_steps")?,
            max_cost_usd: row.try_get("max_cost_usd")?,
            origin: row.try_get("origin")?,
            result: row.try_get("result")?,
            error: row.try_get("error")?,
            steps: row.try_get("steps")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cost_usd: row.try_get("cost_usd")?,
            last_sandbox_id: row.try_get("last_sandbox_id")?,
            pending_messages: row.try_get("pending_messages")?,
            cancel_requested: row.try_get("cancel_requested")?,
            claim_owner: row.try_get("claim_owner")?,
            lease_expires_at: row.try_get("lease_expires_at")?,
            deadline_at: row.try_get("deadline_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        }
    }};
}

struct RawSession {
    id: String,
    status: String,
    task: String,
    model: String,
    agent: Option<String>,
    backend: Option<String>,
    credentials: String,
    max_steps: i64,
    max_cost_usd: Option<f64>,
    origin: String,
    result: Option<String>,
    error: Option<String>,
    steps: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    last_sandbox_id: Option<String>,
    pending_messages: i64,
    cancel_requested: i64,
    claim_owner: Option<String>,
    lease_expires_at: Option<i64>,
    deadline_at: i64,
    created_at: i64,
    updated_at: i64,
}

impl RawSession {
    fn parse(self) -> Result<SessionRow, StoreError> {
        let id = self.id;
        let corrupt = |message: String| StoreError::Corrupt {
            table: "sessions",
            message: format!("{id}: {message}"),
        };
        Ok(SessionRow {
            status: self.status.parse().map_err(corrupt)?,
            backend: self
                .backend
                .map(|b| b.parse::<BackendKind>())
                .transpose()
                .map_err(corrupt)?,
            credentials: serde_json::from_str(&self.credentials)
                .map_err(|e| corrupt(format!("credentials: {e}")))?,
            origin: serde_json::from_str(&self.origin)
                .map_err(|e| corrupt(format!("origin: {e}")))?,
            task: self.task,
            model: self.model,
            agent: self.agent,
            max_steps: u32::try_from(self.max_steps).unwrap_or(u32::MAX),
            max_cost_usd: self.max_cost_usd,
            result: self.result,
            error: self.error,
            steps: u32::try_from(self.steps).unwrap_or(u32::MAX),
            input_tokens: u64::try_from(self.input_tokens).unwrap_or(0),
            output_tokens: u64::try_from(self.output_tokens).unwrap_or(0),
            cost_usd: self.cost_usd,
            last_sandbox_id: self.last_sandbox_id,
            pending_messages: self.pending_messages,
            cancel_requested: self.cancel_requested != 0,
            claim_owner: self.claim_owner,
            lease_expires_at: self.lease_expires_at,
            deadline_at: self.deadline_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            id,
        })
    }
}

fn encode(value: &impl serde::Serialize, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        table: "sessions",
        message: format!("cannot encode {what}: {e}"),
    })
}

// === impl Store (sessions) ===

impl Store {
    pub async fn insert_session(&self, new: &NewSessionRow) -> Result<SessionRow, StoreError> {
        let now = now_ms();
        let credentials = encode(&new.credentials, "credentials")?;
        let origin = encode(&new.origin, "origin")?;
        // The owning virtual key, also a column so listing one key's sessions is an index walk.
        let owner = new.origin.get("owner").and_then(Value::as_str);
        // RETURNING, not a second SELECT: the row as this insert created it (`queued`). A
        // replica may claim it the moment it commits, and the caller's answer must not
        // depend on that race.
        const SQL: &str = concat!(
            "INSERT INTO sessions (id, status, task, model, agent, backend, credentials, \
             max_steps, max_cost_usd, origin, deadline_at, created_at, updated_at, owner) \
             VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12) \
             ON CONFLICT (id) DO NOTHING RETURNING ",
            session_columns!()
        );
        let raw = on_pool!(self.db(), |pool| {
            let row = sqlx::query(SQL)
                .bind(&new.id)
                .bind(&new.task)
                .bind(&new.model)
                .bind(&new.agent)
                .bind(new.backend.map(BackendKind::as_str))
                .bind(&credentials)
                .bind(i64::from(new.max_steps))
                .bind(new.max_cost_usd)
                .bind(&origin)
                .bind(new.deadline_at)
                .bind(now)
                .bind(owner)
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => Some(read_session!(&row)),
                None => None,
            }
        });
        match raw {
            Some(raw) => raw.parse(),
            // The id was taken: the same start was made before (a trigger event handled
            // again after a takeover, or a retry after a lost answer). Starting is idempotent
            // per id, so that session is the answer.
            None => self
                .get_session(&new.id)
                .await?
                .ok_or_else(|| StoreError::Corrupt {
                    table: "sessions",
                    message: format!("session {} conflicts but cannot be read", new.id),
                }),
        }
    }

    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!("{SELECT_SESSION} WHERE id = $1");
        let raw = on_pool!(self.db(), |pool| {
            match sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(read_session!(&row)),
                None => None,
            }
        });
        raw.map(RawSession::parse).transpose()
    }

    /// Newest first.
    /// Every session matching `filter`, newest first, up to `filter.limit` (pages of
    /// [`Store::list_sessions_page`] until the limit is met or nothing older is left).
    pub async fn list_sessions(&self, filter: &ListFilter) -> Result<Vec<SessionRow>, StoreError> {
        let mut f = filter.clone();
        let mut out: Vec<SessionRow> = Vec::new();
        loop {
            let page = self.list_sessions_page(&f).await?;
            out.extend(page.rows);
            let want = filter.limit - i64::try_from(out.len()).unwrap_or(i64::MAX);
            match page.next {
                Some((ms, id)) if want > 0 => {
                    f.before_ms = Some(ms);
                    f.before_id = Some(id);
                    f.limit = want;
                }
                _ => return Ok(out),
            }
        }
    }

    /// SQL for a session's `origin.kind`, per engine (the same expression as the
    /// `sessions_origin_kind_created_id` index, so the planner uses it).
    fn origin_kind_sql(&self) -> &'static str {
        match self.db() {
            Db::Sqlite(_) => "json_extract(origin, '$.kind')",
            Db::Postgres(_) => "(CAST(origin AS jsonb) ->> 'kind')",
        }
    }

    /// The window query of [`Store::list_sessions_page`] and its arguments: `(id,
    /// created_at, hit)` of at most `max(LIST_WINDOW, limit)` rows along one index.
    pub(crate) fn list_window_sql(&self, filter: &ListFilter) -> (String, Vec<Arg>) {
        let limit = filter.limit.max(1);
        let mut args: Vec<Arg> = Vec::new();
        let mut arg = |a: Arg| {
            args.push(a);
            format!("${}", args.len())
        };
        // The leading (indexed) predicate, then the ones tested on the window's rows.
        let mut lead: Vec<String> = Vec::new();
        let mut rest: Vec<String> = Vec::new();
        let kind_sql = self.origin_kind_sql();
        if let Some(owner) = &filter.owner {
            lead.push(format!("owner = {}", arg(Arg::S(owner.clone()))));
        }
        if let Some(kind) = &filter.origin_kind {
            let p = format!("{kind_sql} = {}", arg(Arg::S(kind.clone())));
            if lead.is_empty() {
                lead.push(p)
            } else {
                rest.push(p)
            }
        }
        if let Some(status) = filter.status {
            let p = format!("status = {}", arg(Arg::S(status.as_str().to_string())));
            if lead.is_empty() {
                lead.push(p)
            } else {
                rest.push(p)
            }
        }
        if let Some(ms) = filter.before_ms {
            let b = arg(Arg::I(ms));
            match &filter.before_id {
                Some(id) => {
                    let i = arg(Arg::S(id.clone()));
                    lead.push(format!(
                        "created_at <= {b} AND (created_at < {b} OR id < {i})"
                    ));
                }
                None => lead.push(format!("created_at < {b}")),
            }
        }
        if let Some(needle) = filter
            .search
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let p = arg(Arg::S(like_pattern(needle)));
            rest.push(format!(
                "(lower(task) LIKE {p} ESCAPE '\\' OR lower(id) LIKE {p} ESCAPE '\\')"
            ));
        }
        let window = arg(Arg::I(LIST_WINDOW.max(limit)));
        let hit = if rest.is_empty() {
            "1".to_string()
        } else {
            format!("CASE WHEN {} THEN 1 ELSE 0 END", rest.join(" AND "))
        };
        let lead = if lead.is_empty() {
            "1 = 1".to_string()
        } else {
            lead.join(" AND ")
        };
        let sql = format!(
            "SELECT id, created_at, CAST({hit} AS BIGINT) AS hit FROM sessions WHERE {lead} \
             ORDER BY created_at DESC, id DESC LIMIT {window}"
        );
        (sql, args)
    }

    /// One page of sessions, newest first, filtered and searched in the database.
    ///
    /// Keyset paging on `(created_at, id)`. The query walks one index — owner, origin kind,
    /// status or creation time, whichever filter is set first, each indexed with
    /// `(…, created_at, id)` — for at most [`LIST_WINDOW`] rows, and tests the remaining
    /// filters and the search on those; a second query reads the (at most `limit`) matching
    /// rows. So a page costs at most the window, never the table. A page may hold fewer than
    /// `limit` rows and still have a `next` cursor (the window ran out before the page was
    /// full: "keep looking older").
    pub async fn list_sessions_page(&self, filter: &ListFilter) -> Result<SessionPage, StoreError> {
        let limit = filter.limit.max(1);
        let (sql, args) = self.list_window_sql(filter);
        let scanned: Vec<(String, i64, i64)> = on_pool!(self.db(), |pool| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for a in &args {
                q = match a {
                    Arg::S(s) => q.bind(s.clone()),
                    Arg::I(i) => q.bind(*i),
                };
            }
            let rows = q.fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push((
                    row.try_get("id")?,
                    row.try_get("created_at")?,
                    row.try_get("hit")?,
                ));
            }
            out
        });
        let window_full =
            i64::try_from(scanned.len()).unwrap_or(i64::MAX) >= LIST_WINDOW.max(limit);
        let mut hits: Vec<String> = Vec::new();
        let mut next: Option<Cursor> = None;
        for (id, created_at, hit) in &scanned {
            if *hit != 0 {
                hits.push(id.clone());
                if i64::try_from(hits.len()).unwrap_or(i64::MAX) >= limit {
                    next = Some((*created_at, id.clone()));
                    break;
                }
            }
        }
        if next.is_none() && window_full {
            next = scanned.last().map(|(id, ms, _)| (*ms, id.clone()));
        }
        let mut rows = Vec::with_capacity(hits.len());
        if !hits.is_empty() {
            let list = encode(&hits, "ids")?;
            let sql = format!(
                "{SELECT_SESSION} WHERE {} ORDER BY created_at DESC, id DESC",
                self.id_in_json(1)
            );
            let raws = on_pool!(self.db(), |pool| {
                let found = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(&list)
                    .fetch_all(pool)
                    .await?;
                let mut raws = Vec::with_capacity(found.len());
                for row in &found {
                    raws.push(read_session!(row));
                }
                raws
            });
            for raw in raws {
                rows.push(raw.parse()?);
            }
        }
        Ok(SessionPage {
            rows,
            next,
            scanned: scanned.len(),
        })
    }

    /// SQL for "id is one of the JSON list of strings in `$n`", per engine.
    fn id_in_json(&self, n: u8) -> String {
        match self.db() {
            Db::Sqlite(_) => format!("id IN (SELECT value FROM json_each(${n}))"),
            Db::Postgres(_) => {
                format!("id IN (SELECT jsonb_array_elements_text(CAST(${n} AS jsonb)))")
            }
        }
    }

    /// Claims up to `limit` sessions that need a loop (queued, or running with no live
    /// claim) for `owner`, for `lease_ms` from now on the *database* clock (brains' clocks may
    /// disagree; the database's is the one they share). `running_here` are sessions whose
    /// loop runs in this process: never claimed again, even when their lease lapsed (a
    /// second loop with the same owner would pass the owner fence). PostgreSQL: `FOR UPDATE
    /// SKIP LOCKED`, so replicas claiming at the same time never get the same row.
    pub async fn claim_sessions(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
        running_here: &[String],
    ) -> Result<Vec<String>, StoreError> {
        self.claim_sessions_with(owner, lease_ms, limit, running_here, true)
            .await
    }

    /// [`Store::claim_sessions`]; with `take_lapsed = false` only sessions nobody claimed
    /// (queued, or released): a brain whose own store calls only just recovered from an
    /// outage must not take sessions whose leases lapsed in that same outage, since their
    /// owners are as likely alive and about to renew (see `sessions::dispatcher`).
    pub async fn claim_sessions_with(
        &self,
        owner: &str,
        lease_ms: i64,
        limit: i64,
        running_here: &[String],
        take_lapsed: bool,
    ) -> Result<Vec<String>, StoreError> {
        let now = self.db_now_sql();
        let claimable = if take_lapsed {
            format!("(claim_owner IS NULL OR lease_expires_at < {now})")
        } else {
            "claim_owner IS NULL".to_string()
        };
        let here = encode(&running_here, "running sessions")?;
        let not_here = format!("NOT {}", self.id_in_json(4));
        let ids: Vec<String> = match self.db() {
            Db::Postgres(pool) => {
                let sql = format!(
                    "UPDATE sessions SET claim_owner = $1, lease_expires_at = {now} + $2 \
                     WHERE id IN (SELECT id FROM sessions \
                       WHERE status IN ('queued', 'running') \
                       AND {claimable} AND {not_here} \
                       ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                     AND status IN ('queued', 'running') \
                     AND {claimable} \
                     RETURNING id"
                );
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(owner)
                    .bind(lease_ms)
                    .bind(limit)
                    .bind(&here)
                    .fetch_all(pool)
                    .await?
            }
            // SQLite serialises writers, so the inner SELECT and the UPDATE see one state.
            Db::Sqlite(pool) => {
                let sql = format!(
                    "UPDATE sessions SET claim_owner = $1, lease_expires_at = {now} + $2 \
                     WHERE id IN (SELECT id FROM sessions \
                       WHERE status IN ('queued', 'running') \
                       AND {claimable} AND {not_here} \
                       ORDER BY created_at LIMIT $3) \
                     RETURNING id"
                );
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(owner)
                    .bind(lease_ms)
                    .bind(limit)
                    .bind(&here)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(ids)
    }

    /// Extends, by `lease_ms` on the database clock, the leases of the sessions in `live`
    /// (whose loops run in this process) that `owner` still holds — and only those: a claim
    /// whose loop is gone (it panicked, or failed and could not record it) must lapse so that
    /// another loop resumes it.
    pub async fn renew_leases(
        &self,
        owner: &str,
        live: &[String],
        lease_ms: i64,
    ) -> Result<Renewal, StoreError> {
        #[cfg(test)]
        self.fault("renew_leases", None)?;
        let now = self.db_now_sql();
        let ids = encode(&live, "live sessions")?;
        let in_live = self.id_in_json(3);
        let sql = format!(
            "UPDATE sessions SET lease_expires_at = {now} + $2 \
             WHERE claim_owner = $1 AND status IN ('queued', 'running') AND {in_live} \
             RETURNING id, cancel_requested"
        );
        let rows: Vec<(String, i64)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(owner)
                .bind(lease_ms)
                .bind(&ids)
                .fetch_all(pool)
                .await?
        });
        let mut renewal = Renewal::default();
        for (id, cancel) in rows {
            if cancel != 0 {
                renewal.cancelled.push(id.clone());
            }
            renewal.held.push(id);
        }
        Ok(renewal)
    }

    /// The database clock, in unix milliseconds (what leases are compared with).
    pub async fn db_now_ms(&self) -> Result<i64, StoreError> {
        let sql = format!("SELECT {}", self.db_now_sql());
        Ok(on_pool!(self.db(), |pool| {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_one(pool)
                .await?
        }))
    }

    /// The latest event of a session, if any.
    pub async fn last_event(&self, id: &str) -> Result<Option<EventRow>, StoreError> {
        let seq: Option<i64> = on_pool!(self.db(), |pool| {
            sqlx::query_scalar("SELECT MAX(seq) FROM session_events WHERE session_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?
        });
        match seq {
            Some(seq) => Ok(self.session_events(id, seq - 1, 1).await?.pop()),
            None => Ok(None),
        }
    }

    /// Drops one claim if `owner` holds it (a loop that ended without recording it).
    pub async fn release_claim(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        #[cfg(test)]
        self.fault("release_claim", None)?;
        let n = on_pool!(self.db(), |pool| {
            sqlx::query(
                "UPDATE sessions SET claim_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1 AND claim_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Drops `owner`'s claims (graceful shutdown, or at start on SQLite where only one brain
    /// uses the file and every earlier claim belongs to a dead process).
    pub async fn release_claims(&self, owner: Option<&str>) -> Result<u64, StoreError> {
        let n = on_pool!(self.db(), |pool| {
            sqlx::query(
                "UPDATE sessions SET claim_owner = NULL, lease_expires_at = NULL \
                 WHERE ($1 IS NULL OR claim_owner = $1) AND claim_owner IS NOT NULL",
            )
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n)
    }

    /// Commits `patch` and the next event in one transaction. `owner = Some(me)` fences the
    /// write to the claim holder; `Ok(None)` means nothing was written (claim lost, or
    /// `require_no_pending` and a follow-up is waiting).
    pub async fn append_event(
        &self,
        id: &str,
        owner: Option<&str>,
        kind: &str,
        data: &Value,
        patch: &Patch<'_>,
    ) -> Result<Option<EventRow>, StoreError> {
        #[cfg(test)]
        self.fault("append_event", Some(kind))?;
        let now = now_ms();
        let text = encode(data, "event data")?;
        let consume = i64::from(patch.consume_message.is_some());
        // `$16`: the lease check, on the database clock.
        let update_sql = format!(
            "UPDATE sessions SET status = COALESCE($3, status), result = COALESCE($4, result), \
             error = COALESCE($5, error), steps = steps + $6, input_tokens = input_tokens + $7, \
             output_tokens = output_tokens + $8, cost_usd = cost_usd + $9, \
             last_sandbox_id = COALESCE($10, last_sandbox_id), \
             pending_messages = pending_messages - $11, \
             claim_owner = CASE WHEN $12 = 1 THEN NULL ELSE claim_owner END, \
             lease_expires_at = CASE WHEN $12 = 1 THEN NULL ELSE lease_expires_at END, \
             deadline_at = COALESCE($15, deadline_at), updated_at = $13 \
             WHERE id = $1 AND ($2 IS NULL OR claim_owner = $2) \
             AND ($14 = 0 OR pending_messages = 0) \
             AND ($16 = 0 OR lease_expires_at > {})",
            self.db_now_sql()
        );
        let seq = on_pool!(self.db(), |pool| {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(sqlx::AssertSqlSafe(update_sql.clone()))
                .bind(id)
                .bind(owner)
                .bind(patch.status.map(SessionStatus::as_str))
                .bind(patch.result)
                .bind(patch.error)
                .bind(patch.add_steps)
                .bind(patch.add_input_tokens)
                .bind(patch.add_output_tokens)
                .bind(patch.add_cost_usd)
                .bind(patch.last_sandbox_id)
                .bind(consume)
                .bind(i64::from(patch.release_claim))
                .bind(now)
                .bind(i64::from(patch.require_no_pending))
                .bind(patch.deadline_at)
                .bind(i64::from(patch.require_live_lease))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 0 {
                tx.rollback().await?;
                None
            } else {
                let last: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(seq) FROM session_events WHERE session_id = $1")
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                let seq = last.unwrap_or(0) + 1;
                sqlx::query(
                    "INSERT INTO session_events (session_id, seq, ts, kind, data) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id)
                .bind(seq)
                .bind(now)
                .bind(kind)
                .bind(&text)
                .execute(&mut *tx)
                .await?;
                let mut ok = true;
                if let Some(message) = patch.consume_message {
                    let taken = sqlx::query(
                        "UPDATE session_messages SET consumed_seq = $2 \
                         WHERE id = $1 AND consumed_seq IS NULL",
                    )
                    .bind(message)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    ok = taken == 1;
                }
                if ok {
                    tx.commit().await?;
                    #[cfg(test)]
                    if self.fault_after_commit("append_event", Some(kind)) {
                        return Err(crate::store::faults::transient());
                    }
                    Some(seq)
                } else {
                    tx.rollback().await?;
                    None
                }
            }
        });
        Ok(seq.map(|seq| EventRow {
            seq,
            ts: now,
            kind: kind.to_string(),
            data: data.clone(),
        }))
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub async fn session_events(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let raws: Vec<(i64, i64, String, String)> = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT seq, ts, kind, data FROM session_events \
                 WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(id)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        raws.into_iter()
            .map(|(seq, ts, kind, data)| {
                let data = serde_json::from_str(&data).map_err(|e| StoreError::Corrupt {
                    table: "session_events",
                    message: format!("{id}#{seq}: {e}"),
                })?;
                Ok(EventRow {
                    seq,
                    ts,
                    kind,
                    data,
                })
            })
            .collect()
    }

    /// Queues a follow-up. Locks the session row first (the UPDATE), so a loop finishing at
    /// the same moment either sees `pending_messages > 0` or has already finished and is
    /// re-queued here.
    pub async fn queue_message(&self, id: &str, text: &str) -> Result<QueueOutcome, StoreError> {
        let now = now_ms();
        let message_id = format!("msg-{}", uuid::Uuid::new_v4().simple());
        let outcome = on_pool!(self.db(), |pool| {
            let mut tx = pool.begin().await?;
            let before: Option<String> = sqlx::query_scalar(
                "UPDATE sessions SET pending_messages = pending_messages + 1, updated_at = $2, \
                 status = CASE WHEN status = 'succeeded' THEN 'queued' ELSE status END, \
                 result = CASE WHEN status = 'succeeded' THEN NULL ELSE result END, \
                 claim_owner = CASE WHEN status = 'succeeded' THEN NULL ELSE claim_owner END, \
                 lease_expires_at = CASE WHEN status = 'succeeded' THEN NULL ELSE lease_expires_at END \
                 WHERE id = $1 AND status IN ('queued', 'running', 'succeeded') \
                 RETURNING status",
            )
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            match before {
                Some(status_after) => {
                    sqlx::query(
                        "INSERT INTO session_messages (id, session_id, text, created_at, consumed_seq) \
                         VALUES ($1, $2, $3, $4, NULL)",
                    )
                    .bind(&message_id)
                    .bind(id)
                    .bind(text)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(status_after)
                }
                None => {
                    tx.rollback().await?;
                    let status: Option<String> =
                        sqlx::query_scalar("SELECT status FROM sessions WHERE id = $1")
                            .bind(id)
                            .fetch_optional(pool)
                            .await?;
                    Err(status)
                }
            }
        });
        match outcome {
            Ok(status) => Ok(QueueOutcome::Queued {
                unclaimed: status == "queued",
            }),
            Err(None) => Ok(QueueOutcome::NotFound),
            Err(Some(status)) => Ok(QueueOutcome::Closed(status.parse().map_err(|e| {
                StoreError::Corrupt {
                    table: "sessions",
                    message: format!("{id}: {e}"),
                }
            })?)),
        }
    }

    /// Follow-ups not yet consumed, oldest first: `(message id, text)`.
    pub async fn pending_messages(&self, id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT id, text FROM session_messages WHERE session_id = $1 \
                 AND consumed_seq IS NULL ORDER BY created_at, id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Marks a cancel request; returns whether the session was still cancellable.
    pub async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        let n = on_pool!(self.db(), |pool| {
            sqlx::query(
                "UPDATE sessions SET cancel_requested = 1, updated_at = $2 \
                 WHERE id = $1 AND status IN ('queued', 'running')",
            )
            .bind(id)
            .bind(now_ms())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }

    /// Sandboxes provisioned for a session, oldest first: `(id, status)`.
    pub async fn session_sandboxes(&self, id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = on_pool!(self.db(), |pool| {
            sqlx::query_as(
                "SELECT id, status FROM sandboxes WHERE session_id = $1 ORDER BY created_at, id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }
}
