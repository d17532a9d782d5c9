//! Virtual keys: in-memory cache (the hot path never touches the database),
//! authentication, budgets, and the batched spend writer.

use crate::canonical::Usage;
use crate::error::GatewayError;
use crate::store::{KeyRow, SpendDelta, Store};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Spend is kept in nano-dollars so it can be an atomic integer.
const NANO: f64 = 1e9;

/// A virtual key as cached in memory.
#[derive(Debug)]
pub struct VirtualKey {
    pub token_hash: Arc<str>,
    pub key_name: String,
    pub key_alias: Option<String>,
    pub max_budget: Option<f64>,
    /// Allowed model names; empty = all.
    pub models: Vec<String>,
    pub metadata: serde_json::Value,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    spend_nano: AtomicU64,
}

impl VirtualKey {
    pub fn spend(&self) -> f64 {
        self.spend_nano.load(Ordering::Relaxed) as f64 / NANO
    }
    fn add_spend(&self, usd: f64) {
        self.spend_nano
            .fetch_add((usd * NANO).round().max(0.0) as u64, Ordering::Relaxed);
    }
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty()
            || self
                .models
                .iter()
                .any(|m| m == model || m == "*" || m == "all-proxy-models")
    }

    fn from_row(r: KeyRow) -> Self {
        Self {
            token_hash: r.token_hash.into(),
            key_name: r.key_name,
            key_alias: r.key_alias,
            max_budget: r.max_budget,
            models: serde_json::from_str(&r.models).unwrap_or_default(),
            metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
            expires_at: r.expires_at,
            created_at: r.created_at,
            spend_nano: AtomicU64::new((r.spend * NANO).round().max(0.0) as u64),
        }
    }

    pub fn info_json(&self) -> serde_json::Value {
        serde_json::json!({
            "key_name": self.key_name,
            "key_alias": self.key_alias,
            "token": &*self.token_hash,
            "spend": self.spend(),
            "max_budget": self.max_budget,
            "models": self.models,
            "metadata": self.metadata,
            "expires": self.expires_at.and_then(|t| chrono::DateTime::from_timestamp(t, 0)).map(|d| d.to_rfc3339()),
            "created_at": chrono::DateTime::from_timestamp(self.created_at, 0).map(|d| d.to_rfc3339()),
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

    /// Pre-flight checks before any upstream call: expiry, model, budget.
    pub fn check(&self, model: &str) -> Result<(), GatewayError> {
        let Caller::Key(k) = self else {
            return Ok(());
        };
        if let Some(exp) = k.expires_at
            && chrono::Utc::now().timestamp() >= exp
        {
            return Err(GatewayError::Unauthorized(format!(
                "Authentication Error - virtual key {} expired",
                k.key_name
            )));
        }
        if !k.allows(model) {
            return Err(GatewayError::Forbidden(format!(
                "key {} is not allowed to access model {model}; allowed models: {:?}",
                k.key_name, k.models
            )));
        }
        if let Some(b) = k.max_budget {
            let spend = k.spend();
            if spend >= b {
                return Err(GatewayError::BudgetExceeded(format!(
                    "Budget has been exceeded! Current cost: {spend}, Max budget: {b}"
                )));
            }
        }
        Ok(())
    }
}

pub fn sha256_hex(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = String::with_capacity(64);
    for &b in d.as_ref() {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

enum SpendMsg {
    Spend {
        bucket: Arc<str>,
        model: Arc<str>,
        usage: Usage,
        cost: f64,
    },
    Flush(oneshot::Sender<()>),
}

/// Keys, master key and the spend channel.
pub struct Keys {
    master: Option<String>,
    cache: RwLock<HashMap<String, Arc<VirtualKey>>>,
    store: Store,
    tx: mpsc::UnboundedSender<SpendMsg>,
    /// Wakes the spend writer early for a flush.
    notify: Arc<tokio::sync::Notify>,
}

impl Keys {
    /// Load all keys into memory and start the spend writer task.
    pub async fn load(
        master: Option<String>,
        store: Store,
    ) -> Result<Arc<Keys>, crate::store::StoreError> {
        let rows = store.load_keys().await?;
        let cache = rows
            .into_iter()
            .map(|r| (r.token_hash.clone(), Arc::new(VirtualKey::from_row(r))))
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let notify = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(spend_writer(store.clone(), rx, notify.clone()));
        Ok(Arc::new(Keys {
            master,
            cache: RwLock::new(cache),
            store,
            tx,
            notify,
        }))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn has_master(&self) -> bool {
        self.master.is_some()
    }

    /// Authenticate a presented key (already stripped of `Bearer `).
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Caller, GatewayError> {
        let Some(master) = &self.master else {
            // Open gateway, but a presented virtual key still gets its limits.
            if let Some(p) = presented
                && let Some(k) = self.lookup(p)
            {
                return Ok(Caller::Key(k));
            }
            return Ok(Caller::Anonymous);
        };
        let Some(p) = presented.filter(|p| !p.is_empty()) else {
            return Err(GatewayError::Unauthorized(
                "Authentication Error, no api key passed in.".into(),
            ));
        };
        if ct_eq(p.as_bytes(), master.as_bytes()) {
            return Ok(Caller::Master);
        }
        self.lookup(p).map(Caller::Key).ok_or_else(|| {
            GatewayError::Unauthorized("Authentication Error, invalid api key.".into())
        })
    }

    pub fn lookup(&self, key: &str) -> Option<Arc<VirtualKey>> {
        let h = sha256_hex(key);
        // A poisoned lock only means a writer panicked mid-insert; the map is still usable.
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.get(&h).cloned()
    }

    pub fn get_by_hash(&self, h: &str) -> Option<Arc<VirtualKey>> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.get(h).cloned()
    }

    /// Create and persist a key; returns (plaintext key, cached entry).
    pub async fn generate(
        &self,
        max_budget: Option<f64>,
        models: Vec<String>,
        expires_at: Option<i64>,
        metadata: serde_json::Value,
        key_alias: Option<String>,
        explicit_key: Option<String>,
    ) -> Result<(String, Arc<VirtualKey>), GatewayError> {
        let key = explicit_key.unwrap_or_else(|| {
            use rand::Rng;
            const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            let mut rng = rand::rng();
            let s: String = (0..32)
                .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
                .collect();
            format!("sk-{s}")
        });
        let tail: String = key
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let row = KeyRow {
            token_hash: sha256_hex(&key),
            key_name: format!("sk-...{tail}"),
            key_alias,
            max_budget,
            models: serde_json::to_string(&models).unwrap_or_else(|_| "[]".into()),
            metadata: metadata.to_string(),
            spend: 0.0,
            expires_at,
            created_at: chrono::Utc::now().timestamp(),
        };
        if self.get_by_hash(&row.token_hash).is_some() {
            return Err(GatewayError::BadRequest("key already exists".into()));
        }
        self.store
            .insert_key(&row)
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let vk = Arc::new(VirtualKey::from_row(row));
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vk.token_hash.to_string(), vk.clone());
        Ok((key, vk))
    }

    /// Delete keys given in plaintext or as their hash; returns the ones deleted.
    pub async fn delete(&self, keys: &[String]) -> Result<Vec<String>, GatewayError> {
        let mut deleted = Vec::new();
        for k in keys {
            let h = if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
                k.clone()
            } else {
                sha256_hex(k)
            };
            let removed = self
                .cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&h)
                .is_some();
            let in_db = self
                .store
                .delete_key(&h)
                .await
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            if removed || (in_db && !matches!(self.store, Store::Memory)) {
                deleted.push(k.clone());
            }
        }
        Ok(deleted)
    }

    /// Record usage: the in-memory spend (budgets) at once, the database later.
    pub fn record(&self, caller: &Caller, model: &Arc<str>, usage: Usage, cost: f64) {
        if let Caller::Key(k) = caller {
            k.add_spend(cost);
        }
        let _ = self.tx.send(SpendMsg::Spend {
            bucket: caller.bucket(),
            model: model.clone(),
            usage,
            cost,
        });
    }

    /// Wait until everything recorded so far is in the database.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(SpendMsg::Flush(tx)).is_ok() {
            self.notify.notify_one();
            let _ = rx.await;
        }
    }
}

/// Batches spend messages (aggregated per key and model) into one transaction
/// at most every 250 ms, off the request path.
async fn spend_writer(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<SpendMsg>,
    notify: Arc<tokio::sync::Notify>,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut agg: HashMap<(Arc<str>, Arc<str>), SpendDelta> = HashMap::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        if rx.recv_many(&mut buf, 4096).await == 0 {
            break;
        }
        // Collect a little more so bursts become one transaction, unless someone
        // waits. Sleeping (rather than waking per message) keeps this task off
        // the CPU while requests stream in.
        if !buf.iter().any(|m| matches!(m, SpendMsg::Flush(_))) {
            // A flush request cuts the wait short; other messages just queue.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = notify.notified() => {}
            }
            while let Ok(m) = rx.try_recv() {
                buf.push(m);
            }
        }
        for m in buf.drain(..) {
            match m {
                SpendMsg::Spend {
                    bucket,
                    model,
                    usage,
                    cost,
                } => {
                    let d = agg
                        .entry((bucket.clone(), model.clone()))
                        .or_insert_with(|| SpendDelta {
                            token_hash: bucket.to_string(),
                            model: model.to_string(),
                            ..Default::default()
                        });
                    d.requests += 1;
                    d.input_tokens += usage.input_tokens as i64;
                    d.output_tokens += usage.output_tokens as i64;
                    d.cost += cost;
                }
                SpendMsg::Flush(w) => waiters.push(w),
            }
        }
        if !agg.is_empty() {
            let batch: Vec<SpendDelta> = agg.drain().map(|(_, d)| d).collect();
            if let Err(e) = store.write_spend(&batch).await {
                tracing::error!("writing spend failed: {e}; retrying with the next batch");
                for d in batch {
                    agg.insert(
                        (
                            Arc::from(d.token_hash.as_str()),
                            Arc::from(d.model.as_str()),
                        ),
                        d,
                    );
                }
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}
