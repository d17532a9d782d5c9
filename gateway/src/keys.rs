//! Virtual keys: authentication, budgets, model lists, rpm/tpm/parallel limits.
//!
//! Keys live in the database (Airlock's `gateway_keys`, or a LiteLLM proxy's
//! `LiteLLM_VerificationToken` used as is), so every replica sees the same keys. Each
//! replica keeps a short-lived cache: a key is re-read at most every [`KEY_TTL`] and
//! in the background (the request uses the cached copy meanwhile), so a deleted or
//! changed key takes effect everywhere within seconds while a slow database never
//! holds a request whose key is cached. Only a key never seen before waits for the
//! database, at most [`COLD_LOOKUP_TIMEOUT`], and fails closed.
//!
//! Spend is written off the request path by a batching writer (`UPDATE … SET spend =
//! spend + $1`, atomic in the database); each replica adds its own not-yet-written
//! spend to the database's figure, so budgets hold across replicas up to one cache
//! period of traffic.

use crate::canonical::Usage;
use crate::error::GatewayError;
use crate::limits::{Limiter, ParallelGuard, RateStatus};
use crate::store::{KeyRow, KeySchema, SpendDelta, SpendLog, Store};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Spend is kept in nano-dollars so it can be an atomic integer.
const NANO: f64 = 1e9;
/// How long a cached key is used before it is re-read (in the background).
pub const KEY_TTL: Duration = Duration::from_secs(2);
/// How long a request with a never-seen key waits for the database.
pub const COLD_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Parse LiteLLM's `budget_duration` / `duration` strings: `30s`, `15m`, `1h`, `1d`,
/// `2w`, `1mo`, `1y`.
pub fn duration_secs(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        "mo" => 30 * 86400,
        "y" => 365 * 86400,
        _ => return None,
    };
    (n > 0).then_some(n * mult)
}

/// `*` matches any run of characters (LiteLLM model wildcards: `gpt-*`, `openai/*`).
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            if !name.starts_with(prefix) {
                return false;
            }
            let tail = &name[prefix.len()..];
            if !rest.contains('*') {
                return tail.len() >= rest.len() && tail.ends_with(rest);
            }
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| wildcard_match(rest, &tail[i..]))
        }
    }
}

fn models_allow(models: &[String], model: &str) -> bool {
    models.is_empty()
        || models.iter().any(|m| {
            m == "*"
                || m == "all-proxy-models"
                || m == "all-team-models"
                || wildcard_match(m, model)
        })
}

/// A virtual key as cached in memory.
#[derive(Debug)]
pub struct VirtualKey {
    pub token_hash: Arc<str>,
    pub row: KeyRow,
    /// Allowed model names (wildcards allowed); empty = all.
    pub models: Vec<String>,
    pub metadata: serde_json::Value,
    team_models: Vec<String>,
    /// Spend as read from the database plus this replica's spend since (nano-USD).
    spend_nano: AtomicU64,
    team_spend_nano: AtomicU64,
    user_spend_nano: AtomicU64,
    /// `general_settings.apply_user_budget_to_team_keys`.
    user_budget_on_team_keys: bool,
}

impl VirtualKey {
    fn from_row(r: KeyRow, pending_nano: u64, user_budget_on_team_keys: bool) -> Self {
        let to_nano = |usd: f64| (usd * NANO).round().max(0.0) as u64;
        Self {
            token_hash: r.token_hash.as_str().into(),
            models: serde_json::from_str(&r.models).unwrap_or_default(),
            metadata: serde_json::from_str(&r.metadata).unwrap_or_else(|_| serde_json::json!({})),
            team_models: r
                .team
                .as_ref()
                .and_then(|t| serde_json::from_str(&t.models).ok())
                .unwrap_or_default(),
            spend_nano: AtomicU64::new(to_nano(r.spend) + pending_nano),
            team_spend_nano: AtomicU64::new(
                r.team.as_ref().map_or(0, |t| to_nano(t.spend)) + pending_nano,
            ),
            user_spend_nano: AtomicU64::new(
                r.user.as_ref().map_or(0, |u| to_nano(u.spend)) + pending_nano,
            ),
            user_budget_on_team_keys,
            row: r,
        }
    }

    pub fn spend(&self) -> f64 {
        self.spend_nano.load(Ordering::Relaxed) as f64 / NANO
    }

    fn add_spend(&self, usd: f64) {
        let n = (usd * NANO).round().max(0.0) as u64;
        self.spend_nano.fetch_add(n, Ordering::Relaxed);
        self.team_spend_nano.fetch_add(n, Ordering::Relaxed);
        self.user_spend_nano.fetch_add(n, Ordering::Relaxed);
    }

    /// The user's personal budget, which LiteLLM applies to keys outside a team,
    /// and to a team's keys too with `general_settings.apply_user_budget_to_team_keys`
    /// (`_user_max_budget_check` in litellm/proxy/auth/auth_checks.py: `is_team_key
    /// and general_settings.get("apply_user_budget_to_team_keys") is not True` skips it).
    fn user_budget(&self) -> Option<f64> {
        let u = self.row.user.as_ref()?;
        if self.row.team.is_some() && !self.user_budget_on_team_keys {
            return None;
        }
        u.max_budget.filter(|b| b.is_finite())
    }

    pub fn key_name(&self) -> &str {
        &self.row.key_name
    }

    pub fn allows(&self, model: &str) -> bool {
        models_allow(&self.models, model) && models_allow(&self.team_models, model)
    }

    /// Has a budget that unpriced spend would silently escape?
    pub fn has_budget(&self) -> bool {
        self.row.max_budget.is_some()
            || self
                .row
                .team
                .as_ref()
                .is_some_and(|t| t.max_budget.is_some())
            || self.user_budget().is_some()
    }

    pub fn info_json(&self) -> serde_json::Value {
        let ts = |t: Option<i64>| {
            t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map(|d| d.to_rfc3339())
        };
        let r = &self.row;
        serde_json::json!({
            "key_name": r.key_name,
            "key_alias": r.key_alias,
            "token": &*self.token_hash,
            "spend": self.spend(),
            "max_budget": r.max_budget,
            "budget_duration": r.budget_duration,
            "budget_reset_at": ts(r.budget_reset_at),
            "models": self.models,
            "metadata": self.metadata,
            "rpm_limit": r.rpm_limit,
            "tpm_limit": r.tpm_limit,
            "max_parallel_requests": r.max_parallel_requests,
            "team_id": r.team_id,
            "user_id": r.user_id,
            "blocked": r.blocked,
            "expires": ts(r.expires_at),
            "created_at": ts(Some(r.created_at)),
        })
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    Master,
    /// No master key configured: the gateway is open.
    Anonymous,
    Key(Arc<VirtualKey>),
}

impl Caller {
    /// The spend bucket this caller's usage goes to.
    pub fn bucket(&self) -> Arc<str> {
        match self {
            Caller::Master => Arc::from("master"),
            Caller::Anonymous => Arc::from("anonymous"),
            Caller::Key(k) => k.token_hash.clone(),
        }
    }

    /// Pre-flight checks before any upstream call: block, expiry, model, budgets.
    pub fn check(&self, model: &str) -> Result<(), GatewayError> {
        let Caller::Key(k) = self else {
            return Ok(());
        };
        let r = &k.row;
        if r.blocked || r.team.as_ref().is_some_and(|t| t.blocked) {
            return Err(GatewayError::Unauthorized(format!(
                "Authentication Error - Key is blocked. Key={}",
                r.key_name
            )));
        }
        if let Some(exp) = r.expires_at
            && chrono::Utc::now().timestamp() >= exp
        {
            return Err(GatewayError::Unauthorized(format!(
                "Authentication Error - Expired Key. Key Expiry time {} and current time {}",
                chrono::DateTime::from_timestamp(exp, 0)
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default(),
                chrono::Utc::now().to_rfc3339()
            )));
        }
        if !k.allows(model) {
            return Err(GatewayError::Unauthorized(format!(
                "key not allowed to access model. This key can only access models={:?}. Tried to access {model}",
                k.models
            )));
        }
        if let Some(b) = r.max_budget {
            let spend = k.spend();
            if spend >= b {
                return Err(GatewayError::BudgetExceeded(format!(
                    "Budget has been exceeded! Current cost: {spend}, Max budget: {b}"
                )));
            }
        }
        if let Some(t) = &r.team
            && let Some(b) = t.max_budget
        {
            let spend = k.team_spend_nano.load(Ordering::Relaxed) as f64 / NANO;
            if spend >= b {
                return Err(GatewayError::BudgetExceeded(format!(
                    "Budget has been exceeded! Team={} Current cost: {spend}, Max budget: {b}",
                    r.team_id.as_deref().unwrap_or("")
                )));
            }
        }
        if let Some(b) = k.user_budget() {
            let spend = k.user_spend_nano.load(Ordering::Relaxed) as f64 / NANO;
            if spend >= b {
                return Err(GatewayError::BudgetExceeded(format!(
                    "ExceededBudget: User={} over budget. Spend={spend}, Budget={b}",
                    r.user_id.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    /// Fail closed on unpriced models: a key with a budget may not spend untracked money.
    pub fn check_priced(
        &self,
        model: &str,
        price: &crate::pricing::Price,
    ) -> Result<(), GatewayError> {
        match self {
            Caller::Key(k) if !price.known && k.has_budget() => {
                Err(GatewayError::BadRequest(format!(
                    "model {model} has no price (not in the price table, no input_cost_per_token in the config), \
                 so its spend cannot count toward this key's budget; refused"
                )))
            }
            _ => Ok(()),
        }
    }
}

pub fn sha256_hex(s: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}

fn hex(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() * 2);
    push_hex(&mut out, b);
    out
}

/// Appends `b` as lower-case hex digits.
fn push_hex(out: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &x in b {
        out.push(DIGITS[(x >> 4) as usize] as char);
        out.push(DIGITS[(x & 15) as usize] as char);
    }
}

/// The token hashes of the keys last presented on this thread, so a client that sends the
/// same key request after request (every SDK does) costs no SHA-256 and hex per request:
/// those were ~3.4k instructions of the gateway's ~99k a request (callgrind,
/// bench/gateway/callgrind.sh). The hash is a pure function of the token, so a memoised one
/// can never be stale: a deleted or changed key is still found (or not) by the cache look-up
/// that follows.
///
/// The tokens are kept, not a short digest of them: a hit means the presented bytes equal a
/// kept token, compared in constant time. A per-thread randomly seeded 64-bit tag picks the
/// candidate, so neither the tag nor the timing of a miss says anything about a kept token.
/// Eight entries per serving thread, replaced round-robin; a token longer than 256 bytes is
/// not kept.
mod token_memo {
    use std::cell::RefCell;
    use std::hash::{BuildHasher, Hasher};

    const SLOTS: usize = 8;
    const MAX_TOKEN: usize = 256;

    struct Entry {
        tag: u64,
        token: Box<[u8]>,
        hash: HexHash,
    }

    struct Memo {
        seed: foldhash::fast::RandomState,
        entries: Vec<Entry>,
        next: usize,
    }

    thread_local! {
        static MEMO: RefCell<Memo> = RefCell::new(Memo {
            seed: foldhash::fast::RandomState::default(),
            entries: Vec::new(),
            next: 0,
        });
    }

    /// 64 lower-case hex digits of a SHA-256, inline (no allocation).
    #[derive(Clone, Copy)]
    pub(super) struct HexHash([u8; 64]);

    impl HexHash {
        pub(super) fn as_str(&self) -> &str {
            // Only ASCII hex digits are ever written into it.
            std::str::from_utf8(&self.0).unwrap_or_default()
        }
    }

    /// On a miss only (a key not seen lately on this thread), so its `String` does not matter.
    fn compute(token: &str) -> HexHash {
        let mut out = [0u8; 64];
        out.copy_from_slice(super::sha256_hex(token).as_bytes());
        HexHash(out)
    }

    /// `super::sha256_hex(token)`, from this thread's memo when `token` was seen lately.
    pub(super) fn sha256_hex(token: &str) -> HexHash {
        if token.len() > MAX_TOKEN {
            return compute(token);
        }
        MEMO.with(|m| {
            let mut m = m.borrow_mut();
            let bytes = token.as_bytes();
            let tag = {
                let mut h = m.seed.build_hasher();
                h.write(bytes);
                h.finish()
            };
            if let Some(e) = m
                .entries
                .iter()
                .find(|e| e.tag == tag && super::ct_eq(&e.token, bytes))
            {
                return e.hash;
            }
            let hash = compute(token);
            let entry = Entry {
                tag,
                token: bytes.into(),
                hash,
            };
            if m.entries.len() < SLOTS {
                m.entries.push(entry);
            } else {
                let i = m.next;
                m.entries[i] = entry;
                m.next = (i + 1) % SLOTS;
            }
            hash
        })
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn memoised_hashes_equal_computed_ones_for_every_token() {
            // More tokens than slots, each asked for twice in a row and again later: every
            // answer (hit, miss, after eviction) is the plain SHA-256 in hex.
            let tokens: Vec<String> = (0..20).map(|i| format!("sk-test-{i}")).collect();
            for round in 0..3 {
                for t in &tokens {
                    for _ in 0..2 {
                        assert_eq!(
                            super::sha256_hex(t).as_str(),
                            crate::keys::sha256_hex(t),
                            "round {round}, {t}"
                        );
                    }
                }
            }
            // Tokens that differ in one byte, and one too long to be kept.
            let long = "x".repeat(300);
            for t in ["sk-a", "sk-b", "sk-a ", "", long.as_str()] {
                assert_eq!(super::sha256_hex(t).as_str(), crate::keys::sha256_hex(t));
            }
        }
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A plaintext key or its stored hash (64 hex digits) → the hash.
pub fn hash_of(k: &str) -> String {
    if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
        k.to_ascii_lowercase()
    } else {
        sha256_hex(k)
    }
}

/// One usage record on its way to the database.
pub(crate) struct SpendRecord {
    pub bucket: Arc<str>,
    pub model: Arc<str>,
    pub upstream: String,
    pub usage: Usage,
    pub cost: f64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
}

enum SpendMsg {
    Spend(Box<SpendRecord>),
    Flush(oneshot::Sender<()>),
}

struct Slot {
    key: Option<Arc<VirtualKey>>,
    fetched: Instant,
    refreshing: AtomicBool,
}

/// Settable fields of `/key/generate` and `/key/update` (None = unchanged on update).
#[derive(Debug, Default, Clone)]
pub struct KeySpec {
    pub max_budget: Option<Option<f64>>,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<Option<i64>>,
    pub metadata: Option<serde_json::Value>,
    pub key_alias: Option<Option<String>>,
    pub budget_duration: Option<Option<String>>,
    pub rpm_limit: Option<Option<i64>>,
    pub tpm_limit: Option<Option<i64>>,
    pub max_parallel_requests: Option<Option<i64>>,
    pub team_id: Option<Option<String>>,
    pub user_id: Option<Option<String>>,
    pub blocked: Option<bool>,
}

impl KeySpec {
    fn apply(self, r: &mut KeyRow, now: i64) {
        if let Some(v) = self.max_budget {
            r.max_budget = v;
        }
        if let Some(v) = self.models {
            r.models = serde_json::to_string(&v).unwrap_or_else(|_| "[]".into());
        }
        if let Some(v) = self.expires_at {
            r.expires_at = v;
        }
        if let Some(v) = self.metadata {
            r.metadata = v.to_string();
        }
        if let Some(v) = self.key_alias {
            r.key_alias = v;
        }
        if let Some(v) = self.budget_duration {
            // A new period starts now (LiteLLM sets budget_reset_at the same way).
            r.budget_reset_at = v.as_deref().and_then(duration_secs).map(|s| now + s);
            r.budget_duration = v;
        }
        if let Some(v) = self.rpm_limit {
            r.rpm_limit = v;
        }
        if let Some(v) = self.tpm_limit {
            r.tpm_limit = v;
        }
        if let Some(v) = self.max_parallel_requests {
            r.max_parallel_requests = v;
        }
        if let Some(v) = self.team_id {
            r.team_id = v;
        }
        if let Some(v) = self.user_id {
            r.user_id = v;
        }
        if let Some(v) = self.blocked {
            r.blocked = v;
        }
    }
}

/// Keys, master key, limits and the spend channel.
pub struct Keys {
    master: Option<String>,
    /// `general_settings.apply_user_budget_to_team_keys`.
    user_budget_on_team_keys: bool,
    schema: KeySchema,
    cache: RwLock<crate::FastMap<String, Arc<Slot>>>,
    /// Spend recorded on this replica and not yet in the database, per key hash (nano-USD).
    pending: Mutex<crate::FastMap<Arc<str>, u64>>,
    store: Store,
    pub(crate) limits: Arc<Limiter>,
    tx: mpsc::UnboundedSender<SpendMsg>,
    /// Wakes the spend writer early for a flush.
    notify: Arc<tokio::sync::Notify>,
    /// Unix ms of the last failed database write or read (0 = none): readiness/metrics.
    pub(crate) db_error_at: AtomicI64,
}

impl Keys {
    /// Detect the key schema, start the spend writer, the budget resetter and the
    /// rate-limit synchroniser.
    pub async fn load(
        master: Option<String>,
        store: Store,
    ) -> Result<Arc<Keys>, crate::store::StoreError> {
        Self::load_with(master, store, false).await
    }

    /// [`Keys::load`] with `general_settings.apply_user_budget_to_team_keys`.
    pub async fn load_with(
        master: Option<String>,
        store: Store,
        apply_user_budget_to_team_keys: bool,
    ) -> Result<Arc<Keys>, crate::store::StoreError> {
        let schema = store.key_schema().await?;
        if schema == KeySchema::LiteLlm {
            tracing::info!(
                "using the LiteLLM proxy's key tables (LiteLLM_VerificationToken) as is"
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let notify = Arc::new(tokio::sync::Notify::new());
        let limits = Limiter::new(store.clone());
        let keys = Arc::new(Keys {
            master,
            user_budget_on_team_keys: apply_user_budget_to_team_keys,
            schema,
            cache: RwLock::new(crate::FastMap::default()),
            pending: Mutex::new(crate::FastMap::default()),
            store: store.clone(),
            limits: limits.clone(),
            tx,
            notify: notify.clone(),
            db_error_at: AtomicI64::new(0),
        });
        tokio::spawn(spend_writer(Arc::downgrade(&keys), store, rx, notify));
        tokio::spawn(budget_resetter(Arc::downgrade(&keys)));
        Limiter::spawn_sync(&limits);
        Ok(keys)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn schema(&self) -> KeySchema {
        self.schema
    }

    pub fn has_master(&self) -> bool {
        self.master.is_some()
    }

    fn note_db_error(&self) {
        self.db_error_at
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Authenticate a presented key (already stripped of `Bearer `).
    pub async fn authenticate(
        self: &Arc<Keys>,
        presented: Option<&str>,
    ) -> Result<Caller, GatewayError> {
        let Some(master) = &self.master else {
            // Open gateway, but a presented virtual key still gets its limits.
            if let Some(p) = presented.filter(|p| !p.is_empty())
                && let Ok(Some(k)) = self.lookup(p).await
            {
                return Ok(Caller::Key(k));
            }
            return Ok(Caller::Anonymous);
        };
        let Some(p) = presented.filter(|p| !p.is_empty()) else {
            return Err(GatewayError::Unauthorized(
                "Authentication Error, No api key passed in.".into(),
            ));
        };
        if ct_eq(p.as_bytes(), master.as_bytes()) {
            return Ok(Caller::Master);
        }
        match self.lookup(p).await {
            Ok(Some(k)) => Ok(Caller::Key(k)),
            Ok(None) => Err(GatewayError::Unauthorized(
                "Authentication Error, Invalid proxy server token passed. Unable to find token in cache or `LiteLLM_VerificationTokenTable`".into(),
            )),
            Err(e) => Err(GatewayError::Unauthorized(format!(
                "Authentication Error, the key could not be verified: {e}"
            ))),
        }
    }

    /// A key by its plaintext.
    pub async fn lookup(
        self: &Arc<Keys>,
        key: &str,
    ) -> Result<Option<Arc<VirtualKey>>, GatewayError> {
        let hash = token_memo::sha256_hex(key);
        self.get_by_hash(hash.as_str()).await
    }

    fn cached(&self, h: &str) -> Option<Arc<Slot>> {
        // A poisoned lock only means a writer panicked mid-insert; the map is still usable.
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(h)
            .cloned()
    }

    fn put(&self, h: &str, key: Option<Arc<VirtualKey>>) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                h.to_owned(),
                Arc::new(Slot {
                    key,
                    fetched: Instant::now(),
                    refreshing: AtomicBool::new(false),
                }),
            );
    }

    fn pending_of(&self, h: &str) -> u64 {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(h)
            .copied()
            .unwrap_or(0)
    }

    async fn fetch(&self, h: &str) -> Result<Option<Arc<VirtualKey>>, crate::store::StoreError> {
        let row = self.store.get_key(self.schema, h).await?;
        let vk = row.map(|r| {
            Arc::new(VirtualKey::from_row(
                r,
                self.pending_of(h),
                self.user_budget_on_team_keys,
            ))
        });
        self.put(h, vk.clone());
        Ok(vk)
    }

    /// A key by its hash: from the cache (refreshed in the background when older than
    /// [`KEY_TTL`]), or from the database for a key not seen before.
    pub async fn get_by_hash(
        self: &Arc<Keys>,
        h: &str,
    ) -> Result<Option<Arc<VirtualKey>>, GatewayError> {
        if let Some(slot) = self.cached(h) {
            if slot.fetched.elapsed() >= KEY_TTL && !slot.refreshing.swap(true, Ordering::AcqRel) {
                let me = self.clone();
                let h = h.to_owned();
                tokio::spawn(async move {
                    if let Err(e) = me.fetch(&h).await {
                        tracing::warn!(
                            "refreshing a virtual key failed (cached copy stays in use): {e}"
                        );
                        me.note_db_error();
                        if let Some(s) = me.cached(&h) {
                            s.refreshing.store(false, Ordering::Release);
                        }
                    }
                });
            }
            return Ok(slot.key.clone());
        }
        match tokio::time::timeout(COLD_LOOKUP_TIMEOUT, self.fetch(h)).await {
            Ok(Ok(k)) => Ok(k),
            Ok(Err(e)) => {
                self.note_db_error();
                Err(GatewayError::Internal(e.to_string()))
            }
            Err(_) => {
                self.note_db_error();
                Err(GatewayError::Internal(format!(
                    "database did not answer within {COLD_LOOKUP_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Create and persist a key; returns (plaintext key, cached entry).
    pub async fn generate(
        &self,
        spec: KeySpec,
        explicit_key: Option<String>,
    ) -> Result<(String, Arc<VirtualKey>), GatewayError> {
        let key = explicit_key.unwrap_or_else(|| {
            let mut b = [0u8; 16];
            use rand::RngCore;
            rand::rng().fill_bytes(&mut b);
            format!("sk-{}", hex(&b))
        });
        if !key.starts_with("sk-") {
            // LiteLLM: "key must start with 'sk-'".
            return Err(GatewayError::BadRequest(
                "Invalid key format. LiteLLM Virtual Key must start with 'sk-'".into(),
            ));
        }
        let tail = &key[key.len().saturating_sub(4)..];
        let now = chrono::Utc::now().timestamp();
        let mut row = KeyRow {
            token_hash: sha256_hex(&key),
            key_name: format!("sk-...{tail}"),
            models: "[]".into(),
            metadata: "{}".into(),
            created_at: now,
            ..Default::default()
        };
        spec.apply(&mut row, now);
        if self
            .store
            .get_key(self.schema, &row.token_hash)
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))?
            .is_some()
        {
            return Err(GatewayError::BadRequest("key already exists".into()));
        }
        self.store
            .insert_key(self.schema, &row)
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        // Re-read so team columns (LiteLLM) are joined in.
        let h = row.token_hash.clone();
        let vk = match self.fetch(&h).await {
            Ok(Some(k)) => k,
            _ => {
                let vk = Arc::new(VirtualKey::from_row(row, 0, self.user_budget_on_team_keys));
                self.put(&h, Some(vk.clone()));
                vk
            }
        };
        Ok((key, vk))
    }

    /// Change a key's settings (plaintext key or hash). Spend is kept.
    pub async fn update(&self, key: &str, spec: KeySpec) -> Result<Arc<VirtualKey>, GatewayError> {
        let h = hash_of(key);
        let internal = |e: crate::store::StoreError| GatewayError::Internal(e.to_string());
        let Some(mut row) = self
            .store
            .get_key(self.schema, &h)
            .await
            .map_err(internal)?
        else {
            return Err(GatewayError::NotFound(format!(
                "Key not found: {}",
                redact(key)
            )));
        };
        spec.apply(&mut row, chrono::Utc::now().timestamp());
        self.store
            .update_key(self.schema, &row)
            .await
            .map_err(internal)?;
        self.fetch(&h)
            .await
            .map_err(internal)?
            .ok_or_else(|| GatewayError::NotFound("key deleted concurrently".into()))
    }

    /// Delete keys given in plaintext or as their hash; returns the ones deleted.
    pub async fn delete(&self, keys: &[String]) -> Result<Vec<String>, GatewayError> {
        let mut deleted = Vec::new();
        for k in keys {
            let h = hash_of(k);
            let in_db = self
                .store
                .delete_key(self.schema, &h)
                .await
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            let was_cached = self
                .cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&h)
                .is_some_and(|s| s.key.is_some());
            if (in_db && !matches!(self.store, Store::Memory)) || was_cached {
                deleted.push(k.clone());
            }
            // Remembered as absent so a racing refresh cannot resurrect it here.
            self.put(&h, None);
        }
        Ok(deleted)
    }

    /// rpm/tpm/parallel admission for one request (no database on this path).
    pub fn admit(
        &self,
        caller: &Caller,
    ) -> Result<(Option<RateStatus>, Option<ParallelGuard>), GatewayError> {
        let Caller::Key(k) = caller else {
            return Ok((None, None));
        };
        let r = &k.row;
        let parallel = match r.max_parallel_requests {
            Some(n) if n >= 0 => Some(self.limits.acquire_parallel(&k.token_hash, n as u64).ok_or_else(|| {
                GatewayError::RateLimited(format!(
                    "Max parallel request limit reached. Hit limit for api_key: {}. Current limit: {n}",
                    r.key_name
                ))
            })?),
            _ => None,
        };
        let status = if r.rpm_limit.is_some() || r.tpm_limit.is_some() {
            Some(self.limits.admit(
                &k.token_hash,
                r.rpm_limit.map(|v| v.max(0) as u64),
                r.tpm_limit.map(|v| v.max(0) as u64),
            ).map_err(|which| GatewayError::RateLimited(format!(
                "LiteLLM Rate Limit Handler for rate limit type = key. Crossed TPM / RPM / Max Parallel Request Limit. {which} limit reached for key {}",
                r.key_name
            )))?)
        } else {
            None
        };
        Ok((status, parallel))
    }

    /// Record usage: the in-memory spend (budgets) and limits at once, the database later.
    pub(crate) fn record(&self, caller: &Caller, rec: SpendRecord) {
        if let Caller::Key(k) = caller {
            k.add_spend(rec.cost);
            let n = (rec.cost * NANO).round().max(0.0) as u64;
            *self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(k.token_hash.clone())
                .or_insert(0) += n;
            if k.row.tpm_limit.is_some() {
                self.limits.add_tokens(
                    &k.token_hash,
                    rec.usage.input_tokens + rec.usage.output_tokens,
                );
            }
        }
        let _ = self.tx.send(SpendMsg::Spend(Box::new(rec)));
    }

    /// Wait until everything recorded so far is in the database.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(SpendMsg::Flush(tx)).is_ok() {
            self.notify.notify_one();
            let _ = rx.await;
        }
    }

    /// Forget cached copies (after a budget reset), so the next use re-reads them.
    fn invalidate(&self, hashes: &[String]) {
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        for h in hashes {
            c.remove(h);
        }
    }
}

pub(crate) fn redact(k: &str) -> String {
    if k.len() > 8 {
        format!("{}...{}", &k[..3], &k[k.len() - 4..])
    } else {
        "***".into()
    }
}

/// Resets budgets whose period ended (every second; a compare-and-set per key, so one
/// replica does each reset).
async fn budget_resetter(keys: std::sync::Weak<Keys>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(k) = keys.upgrade() else { return };
        let now = chrono::Utc::now().timestamp();
        match tokio::time::timeout(
            Duration::from_secs(10),
            k.store.reset_due_budgets(k.schema, now),
        )
        .await
        {
            Ok(Ok(reset)) if !reset.is_empty() => {
                tracing::info!(count = reset.len(), "budgets reset for the new period");
                k.invalidate(&reset);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!("budget reset check failed: {e}");
                k.note_db_error();
            }
            Err(_) => k.note_db_error(),
        }
    }
}

/// A spend-log row id, unique across replicas and restarts: a random 64-bit prefix per
/// process and a counter, in the shape of the earlier `airlock-<uuid simple>` (a v4 UUID
/// per row cost a `getrandom` system call each, thousands a second under load).
fn next_request_id() -> String {
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(rand::random::<u64>);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // As `format!("airlock-{prefix:016x}{n:016x}")`, without the formatting machinery (one
    // id per request, on the spend writer's thread).
    let mut id = String::with_capacity(8 + 32);
    id.push_str("airlock-");
    push_hex(&mut id, &prefix.to_be_bytes());
    push_hex(&mut id, &n.to_be_bytes());
    id
}

/// How long the spend writer gathers records before a transaction.
const SPEND_BATCH_WAIT: Duration = Duration::from_millis(250);
/// At most this many records per transaction (a busier replica writes more often). 512
/// rather than 1024: half the rows, statement arguments and dirty pages held at once (peak
/// RSS), while a transaction still carries eight 64-row statements.
const SPEND_BATCH_MAX: usize = 512;

/// Batches spend messages (aggregated per key and model, plus one log row per request)
/// into one transaction every [`SPEND_BATCH_WAIT`] or [`SPEND_BATCH_MAX`] records, off
/// the request path. A failed write keeps its batch for the next attempt.
async fn spend_writer(
    keys: std::sync::Weak<Keys>,
    store: Store,
    mut rx: mpsc::UnboundedReceiver<SpendMsg>,
    notify: Arc<tokio::sync::Notify>,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut agg: crate::FastMap<(Arc<str>, Arc<str>), SpendDelta> = crate::FastMap::default();
    let mut logs: Vec<SpendLog> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut last_trim = Instant::now();
    let schema = match keys.upgrade() {
        Some(k) => k.schema,
        None => return,
    };
    loop {
        if rx.recv_many(&mut buf, SPEND_BATCH_MAX).await == 0 {
            break;
        }
        // Collect a little more so bursts become one transaction, unless someone waits.
        // The wait is on the timer (or a flush) only, then whatever arrived is taken at
        // once: waiting on the channel too woke this task, on another thread, for every
        // request (a futex or eventfd write per request). A full batch goes at once, and
        // records left over are taken by the next turn without a wait, so a batch's rows
        // (and the statement arguments built from them) stay a few hundred kB however high
        // the request rate, and the writer keeps up at the database's pace.
        if buf.len() < SPEND_BATCH_MAX && !buf.iter().any(|m| matches!(m, SpendMsg::Flush(_))) {
            tokio::select! {
                _ = tokio::time::sleep(SPEND_BATCH_WAIT) => {}
                _ = notify.notified() => {}
            }
            while buf.len() < SPEND_BATCH_MAX {
                match rx.try_recv() {
                    Ok(m) => buf.push(m),
                    Err(_) => break,
                }
            }
        }
        for m in buf.drain(..) {
            match m {
                SpendMsg::Spend(r) => {
                    let d = agg
                        .entry((r.bucket.clone(), r.model.clone()))
                        .or_insert_with(|| SpendDelta {
                            token_hash: r.bucket.to_string(),
                            model: r.model.to_string(),
                            team_id: r.team_id.clone(),
                            user_id: r.user_id.clone(),
                            ..Default::default()
                        });
                    d.requests += 1;
                    d.input_tokens += r.usage.input_tokens as i64;
                    d.output_tokens += r.usage.output_tokens as i64;
                    d.cost += r.cost;
                    // Logs are bounded while the database is away: aggregates are what budgets need.
                    if logs.len() < 100_000 {
                        logs.push(SpendLog {
                            request_id: next_request_id(),
                            api_key: r.bucket.to_string(),
                            model: r.upstream,
                            model_group: r.model.to_string(),
                            prompt_tokens: r.usage.input_tokens as i64,
                            completion_tokens: r.usage.output_tokens as i64,
                            cache_read_tokens: r.usage.cache_read_tokens as i64,
                            cache_creation_tokens: r.usage.cache_creation_tokens as i64,
                            spend: r.cost,
                            start_ms: r.start_ms,
                            end_ms: r.end_ms,
                            team_id: r.team_id,
                            user_id: r.user_id,
                        });
                    }
                }
                SpendMsg::Flush(w) => waiters.push(w),
            }
        }
        if !agg.is_empty() || !logs.is_empty() {
            let batch: Vec<SpendDelta> = agg.drain().map(|(_, d)| d).collect();
            let res = tokio::time::timeout(
                Duration::from_secs(30),
                store.write_spend(schema, &batch, &logs),
            )
            .await;
            match res {
                Ok(Ok(())) => {
                    logs.clear();
                    if let Some(k) = keys.upgrade() {
                        let mut p = k.pending.lock().unwrap_or_else(|e| e.into_inner());
                        for d in &batch {
                            if let Some(v) = p.get_mut(d.token_hash.as_str()) {
                                *v = v.saturating_sub((d.cost * NANO).round().max(0.0) as u64);
                                if *v == 0 {
                                    p.remove(d.token_hash.as_str());
                                }
                            }
                        }
                    }
                }
                failed => {
                    match failed {
                        Ok(Err(e)) => tracing::error!(
                            "writing spend failed: {e}; retrying with the next batch"
                        ),
                        _ => {
                            tracing::error!("writing spend timed out; retrying with the next batch")
                        }
                    }
                    if let Some(k) = keys.upgrade() {
                        k.note_db_error();
                    }
                    for d in batch {
                        let e = agg
                            .entry((
                                Arc::from(d.token_hash.as_str()),
                                Arc::from(d.model.as_str()),
                            ))
                            .or_insert_with(|| SpendDelta {
                                token_hash: d.token_hash.clone(),
                                model: d.model.clone(),
                                team_id: d.team_id.clone(),
                                user_id: d.user_id.clone(),
                                ..Default::default()
                            });
                        e.requests += d.requests;
                        e.input_tokens += d.input_tokens;
                        e.output_tokens += d.output_tokens;
                        e.cost += d.cost;
                    }
                    // Do not spin on a dead database.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
        if last_trim.elapsed() >= Duration::from_secs(1) {
            last_trim = Instant::now();
            release_freed_memory();
        }
    }
}

/// Hand memory freed since the last call back to the kernel. glibc returns only the
/// top of each arena on `free`; under load the request buffers, spend batches and
/// statement arguments of every thread leave free pages in the middle of the arenas,
/// which stayed resident: 42 MB of anonymous RSS against a live heap of ~15 MB
/// (heaptrack) at 50 connections. `malloc_trim(0)` releases those pages (madvise), in
/// about 0.1 ms for this heap, at most once a second and off the request path. In the
/// standalone binary the Rust heap is mimalloc's (which purges on its own, `main.rs`), so
/// this trims what glibc still holds there: SQLite's memory. The brain uses glibc for all.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only takes glibc's own arena locks; it is safe to call at any
    // time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("gpt-*", "gpt-4o"));
        assert!(!wildcard_match("gpt-*", "claude"));
        assert!(wildcard_match("openai/*", "openai/gpt-4o"));
        assert!(wildcard_match("*-mini", "gpt-4o-mini"));
        assert!(wildcard_match("a*b*c", "axxbyyc"));
        assert!(!wildcard_match("a*b*c", "axxbyy"));
        assert!(models_allow(&[], "x"));
        assert!(models_allow(&["all-proxy-models".into()], "x"));
        assert!(!models_allow(&["gpt-4o".into()], "gpt-4o-mini"));
    }

    #[test]
    fn request_ids_are_distinct_and_shaped_like_before() {
        let (a, b) = (next_request_id(), next_request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), "airlock-".len() + 32);
        assert!(a.starts_with("airlock-") && a[8..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a[..24], b[..24], "one prefix per process");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_secs("30s"), Some(30));
        assert_eq!(duration_secs("1h"), Some(3600));
        assert_eq!(duration_secs("1d"), Some(86400));
        assert_eq!(duration_secs("30d"), Some(30 * 86400));
        assert_eq!(duration_secs("1mo"), Some(30 * 86400));
        assert_eq!(duration_secs("soon"), None);
        assert_eq!(duration_secs("0s"), None);
    }
}
