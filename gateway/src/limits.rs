//! Per-key rpm/tpm limits over fixed one-minute windows and `max_parallel_requests`,
//! both shared by replicas through the database.
//!
//! The request path never waits for the database: it counts locally and compares
//! against the window's total over all replicas as last synchronised. A background task
//! pushes this replica's counts every [`SYNC_EVERY`] with one upsert per active key
//! (`requests = requests + $n … RETURNING`) and learns the others' counts from the
//! answer. If the database is slow or away, counting goes on per replica (a warning
//! says so) and sharing resumes when it answers again. Replicas may overshoot a limit
//! by what they admit within one sync period.
//!
//! `max_parallel_requests` works the same way: each replica counts its own requests in
//! flight per key, publishes the count every sync as a lease (`gateway_parallel`, one
//! row per key and replica, expiring after [`PARALLEL_LEASE`] so a replica that died
//! stops counting) and learns the other replicas' sum, which admission adds to its own.

use crate::store::Store;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SYNC_EVERY: Duration = Duration::from_millis(100);
/// How long a replica's published in-flight count holds without renewal.
pub const PARALLEL_LEASE: Duration = Duration::from_secs(5);
/// A sync slower than this counts as the database being unavailable.
const SYNC_TIMEOUT: Duration = Duration::from_secs(1);

fn minute_now() -> i64 {
    chrono::Utc::now().timestamp() / 60 * 60
}

#[derive(Debug, Default)]
struct Window {
    start: i64,
    /// Totals of all replicas at the last sync (ours included).
    synced_requests: u64,
    synced_tokens: u64,
    /// Ours since the last sync.
    local_requests: u64,
    local_tokens: u64,
}

impl Window {
    fn roll(&mut self, now: i64) {
        if self.start != now {
            *self = Window {
                start: now,
                ..Default::default()
            };
        }
    }
}

/// What the response headers report (`x-ratelimit-*`).
#[derive(Debug, Clone, Copy)]
pub struct RateStatus {
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

/// One key's requests in flight: this replica's, and the others' as last synced.
#[derive(Debug, Default)]
pub struct InFlight {
    local: AtomicU64,
    others: AtomicU64,
    /// What this replica last published (0 = nothing to withdraw).
    published: AtomicU64,
}

pub struct Limiter {
    store: Store,
    /// This process's name in `gateway_parallel`.
    replica: String,
    windows: Mutex<crate::FastMap<Arc<str>, Window>>,
    parallel: Mutex<crate::FastMap<Arc<str>, Arc<InFlight>>>,
    /// True while the database cannot be reached: limits are per replica.
    pub degraded: AtomicBool,
}

/// Holds one `max_parallel_requests` slot until dropped (end of the answer or stream).
#[derive(Debug)]
pub struct ParallelGuard(Arc<InFlight>);

impl Drop for ParallelGuard {
    fn drop(&mut self) {
        self.0.local.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limiter {
    pub fn new(store: Store) -> Arc<Limiter> {
        Arc::new(Limiter {
            store,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            windows: Mutex::new(crate::FastMap::default()),
            parallel: Mutex::new(crate::FastMap::default()),
            degraded: AtomicBool::new(false),
        })
    }

    /// Count one request if the key is under its limits; `Err` names the limit hit.
    pub fn admit(
        &self,
        key: &Arc<str>,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> Result<RateStatus, &'static str> {
        let now = minute_now();
        let mut ws = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = ws.entry(key.clone()).or_default();
        w.roll(now);
        let requests = w.synced_requests + w.local_requests;
        let tokens = w.synced_tokens + w.local_tokens;
        if rpm.is_some_and(|l| requests >= l) {
            return Err("RPM");
        }
        if tpm.is_some_and(|l| tokens >= l) {
            return Err("TPM");
        }
        w.local_requests += 1;
        let reset = (now + 60 - chrono::Utc::now().timestamp()).max(0) as u64;
        Ok(RateStatus {
            rpm_limit: rpm,
            tpm_limit: tpm,
            remaining_requests: rpm.map(|l| l.saturating_sub(requests + 1)),
            remaining_tokens: tpm.map(|l| l.saturating_sub(tokens)),
            reset_secs: reset,
        })
    }

    pub fn add_tokens(&self, key: &Arc<str>, tokens: u64) {
        let now = minute_now();
        let mut ws = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = ws.entry(key.clone()).or_default();
        w.roll(now);
        w.local_tokens += tokens;
    }

    pub fn acquire_parallel(&self, key: &Arc<str>, max: u64) -> Option<ParallelGuard> {
        let c = self
            .parallel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let prev = c.local.fetch_add(1, Ordering::AcqRel);
        if prev + c.others.load(Ordering::Acquire) >= max {
            c.local.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ParallelGuard(c))
    }

    pub fn spawn_sync(this: &Arc<Limiter>) {
        if matches!(this.store, Store::Memory) {
            return;
        }
        let weak = Arc::downgrade(this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune = 0i64;
            loop {
                tick.tick().await;
                let Some(l) = weak.upgrade() else { return };
                l.sync_once().await;
                let now = minute_now();
                if now != last_prune && !l.degraded.load(Ordering::Relaxed) {
                    last_prune = now;
                    let _ =
                        tokio::time::timeout(SYNC_TIMEOUT, l.store.prune_windows(now - 120)).await;
                    let _ = tokio::time::timeout(
                        SYNC_TIMEOUT,
                        l.store
                            .prune_parallel(chrono::Utc::now().timestamp_millis() - 60_000),
                    )
                    .await;
                }
            }
        });
    }

    /// Publish this replica's in-flight counts, learn the others' (one query for all
    /// keys). Keys with nothing in flight here and nothing published cost nothing.
    /// `false` if the database failed.
    async fn sync_parallel(&self) -> bool {
        let publish: Vec<(Arc<str>, Arc<InFlight>)> = {
            let mut ps = self.parallel.lock().unwrap_or_else(|e| e.into_inner());
            // A key idle everywhere is forgotten (its entry comes back on next use).
            ps.retain(|_, c| {
                Arc::strong_count(c) > 1
                    || c.local.load(Ordering::Acquire) > 0
                    || c.published.load(Ordering::Acquire) > 0
                    || c.others.load(Ordering::Acquire) > 0
            });
            ps.iter()
                .filter(|(_, c)| {
                    c.local.load(Ordering::Acquire) > 0 || c.published.load(Ordering::Acquire) > 0
                })
                .map(|(k, c)| (k.clone(), c.clone()))
                .collect()
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let expires = now_ms + PARALLEL_LEASE.as_millis() as i64;
        let work = async {
            for (key, c) in &publish {
                let local = c.local.load(Ordering::Acquire);
                self.store
                    .publish_parallel(key, &self.replica, local as i64, expires)
                    .await?;
                c.published.store(local, Ordering::Release);
            }
            self.store.parallel_elsewhere(&self.replica, now_ms).await
        };
        let elsewhere = match tokio::time::timeout(SYNC_TIMEOUT, work).await {
            Ok(Ok(v)) => v,
            _ => {
                // Per-replica counting until the database answers (the others'
                // leases expire meanwhile anyway).
                for c in self
                    .parallel
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                {
                    c.others.store(0, Ordering::Release);
                }
                return false;
            }
        };
        let mut ps = self.parallel.lock().unwrap_or_else(|e| e.into_inner());
        for c in ps.values() {
            c.others.store(0, Ordering::Release);
        }
        for (key, n) in elsewhere {
            let c = match ps.get(key.as_str()) {
                Some(c) => c,
                None => ps.entry(Arc::from(key)).or_default(),
            };
            c.others.store(n.max(0) as u64, Ordering::Release);
        }
        true
    }

    /// Push local counts, pull everyone's totals. Keys idle this minute cost nothing.
    async fn sync_once(&self) {
        if !self.sync_parallel().await {
            if !self.degraded.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "rate and parallel limits degraded to per-replica counting: database unavailable"
                );
            }
            return;
        }
        let now = minute_now();
        let todo: Vec<(Arc<str>, u64, u64)> = {
            let mut ws = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            ws.retain(|_, w| w.start >= now - 60);
            ws.iter()
                .filter(|(_, w)| w.start == now)
                .map(|(k, w)| (k.clone(), w.local_requests, w.local_tokens))
                .collect()
        };
        for (key, req, tok) in todo {
            let r = tokio::time::timeout(
                SYNC_TIMEOUT,
                self.store.sync_window(&key, now, req as i64, tok as i64),
            )
            .await;
            match r {
                Ok(Ok((total_req, total_tok))) => {
                    if self.degraded.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            "rate limits shared across replicas again (database answers)"
                        );
                    }
                    let mut ws = self.windows.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(w) = ws.get_mut(&key)
                        && w.start == now
                    {
                        w.local_requests -= req.min(w.local_requests);
                        w.local_tokens -= tok.min(w.local_tokens);
                        w.synced_requests = total_req.max(0) as u64;
                        w.synced_tokens = total_tok.max(0) as u64;
                    }
                }
                failed => {
                    if !self.degraded.swap(true, Ordering::Relaxed) {
                        let why = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => format!("no answer within {SYNC_TIMEOUT:?}"),
                        };
                        tracing::warn!(
                            "rate limits degraded to per-replica counting: database unavailable ({why})"
                        );
                    }
                    // One failure is enough to know; the others would wait as long.
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rpm_and_parallel() {
        let l = Limiter::new(Store::Memory);
        let k: Arc<str> = Arc::from("k");
        assert_eq!(
            l.admit(&k, Some(2), None).unwrap().remaining_requests,
            Some(1)
        );
        assert!(l.admit(&k, Some(2), None).is_ok());
        assert_eq!(l.admit(&k, Some(2), None).unwrap_err(), "RPM");
        l.add_tokens(&k, 10);
        assert_eq!(l.admit(&k, None, Some(10)).unwrap_err(), "TPM");
        let g = l.acquire_parallel(&k, 1).unwrap();
        assert!(l.acquire_parallel(&k, 1).is_none());
        drop(g);
        assert!(l.acquire_parallel(&k, 1).is_some());
        // Other replicas' requests in flight count against the same limit.
        let c = l.parallel.lock().unwrap().get(&k).unwrap().clone();
        c.others.store(2, Ordering::Release);
        assert!(l.acquire_parallel(&k, 3).is_some());
        assert!(l.acquire_parallel(&k, 2).is_none());
    }
}
