//! Warm pools (DESIGN.md, "Warm pools and snapshots"): `pools: [{backend, image?, size}]` keeps
//! that many sandboxes started and healthy **with no grant**; [`claim`] hands one out and
//! attaches the grant (stub env vars, proxy token and URL, the CA) through the backend's
//! one-time `configure` (the agent's `POST /configure`).
//!
//! Safety of a claim:
//! - a pooled sandbox is created with an empty environment; its network, egress forwarder and
//!   (docker) the read-only bind mounts that will hold the CA exist from the start, so egress
//!   only needs the env and CA that `configure` brings;
//! - nothing runs in it before the claim (pooled rows are invisible to the API, and the agent
//!   refuses `/configure` once anything ran or was written, reported by `GET /health` too);
//! - a claimed sandbox leaves its pool for good (`pool` column set to NULL in the same UPDATE
//!   that records its grant); destroying it never puts anything back.
//!
//! Rows are written before acting, as for every sandbox: a pooled row carries its pool key in
//! `sandboxes.pool`, so a brain killed at any moment restarts, adopts the pooled sandboxes that
//! are still healthy and unconfigured ([`adopt_row`]), and destroys the rest. Graceful shutdown
//! (and a pool removed from the config, seen at the next start) drains them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{Notify, watch};

pub mod config;

pub use config::{MAX_POOL_SIZE, PoolConfig, validate};

use crate::credentials::{self, GrantRequest};
use crate::lifecycle::{self, LifecycleError, ProvisionParams};
use crate::metrics::Outcome;
use crate::sandbox::{BackendKind, SandboxBackend, SandboxHandle, SandboxSpec};
// The lifecycle layer sees only the state below sessions (an `AppState` derefs to it).
use crate::state::base::BaseState as AppState;
use crate::store::{NewSandbox, SandboxRow, SandboxStatus};

/// Fills running at once across all pools: the engine serialises much of container creation,
/// so more only queue there while making every fill slower.
const MAX_CONCURRENT_FILLS: usize = 4;
/// After a failed fill, the pool waits this long before trying again.
const FILL_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often the refiller looks even when nothing woke it.
const REFILL_TICK: Duration = Duration::from_secs(5);
/// A claim tries at most this many pooled sandboxes before falling back to a cold start.
const CLAIM_ATTEMPTS: usize = 3;
/// A pooled row's `expires_at`: far away, the reaper ignores pooled rows anyway.
const POOLED_EXPIRY_DAYS: i64 = 3650;

/// A pooled sandbox ready to be claimed.
#[derive(Debug, Clone)]
struct Ready {
    id: String,
    handle: SandboxHandle,
}

#[derive(Debug, Default)]
struct PoolState {
    ready: VecDeque<Ready>,
    /// Fills in flight.
    filling: usize,
    /// Claims attaching a sandbox right now: refills wait for them (see [`ClaimGuard`]).
    claiming: usize,
    retry_at: Option<Instant>,
}

impl PoolState {
    /// How many fills to start now for a pool of `size`: none while a failed fill's back-off
    /// runs, none while a claim is served from a pool that still has sandboxes (its guard
    /// wakes the refiller when it is done: fills never run alongside a claim), else what is
    /// missing beyond the sandboxes ready and the fills in flight.
    fn fills_to_start(&self, size: usize, now: Instant) -> usize {
        if self.retry_at.is_some_and(|t| t > now) || (self.claiming > 0 && !self.ready.is_empty()) {
            return 0;
        }
        size.saturating_sub(self.ready.len() + self.filling)
    }
}

/// The pools of this brain. Lives in [`AppState`]; the refiller ([`run`]) and [`claim`] share it.
#[derive(Debug)]
pub struct Pools {
    configs: Vec<PoolConfig>,
    state: Mutex<HashMap<String, PoolState>>,
    wake: Notify,
    draining: AtomicBool,
}

impl Pools {
    pub fn new(configs: Vec<PoolConfig>) -> Self {
        let state = configs
            .iter()
            .map(|c| (c.key(), PoolState::default()))
            .collect();
        Self {
            configs,
            state: Mutex::new(state),
            wake: Notify::new(),
            draining: AtomicBool::new(false),
        }
    }

    pub fn configs(&self) -> &[PoolConfig] {
        &self.configs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PoolState>> {
        // Plain bookkeeping: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids of the sandboxes ready in each pool (tests, the console).
    pub fn ready_ids(&self) -> BTreeMap<String, Vec<String>> {
        self.lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.ready.iter().map(|r| r.id.clone()).collect()))
            .collect()
    }

    /// Ready sandboxes per backend (the `/metrics` gauge).
    pub fn depth_by_backend(&self) -> BTreeMap<String, usize> {
        let state = self.lock();
        let mut out = BTreeMap::new();
        for c in &self.configs {
            let n = state.get(&c.key()).map_or(0, |p| p.ready.len());
            *out.entry(c.backend.to_string()).or_default() += n;
        }
        out
    }

    fn pop(&self, key: &str) -> Option<Ready> {
        self.lock().get_mut(key)?.ready.pop_front()
    }

    fn push_front(&self, key: &str, ready: Ready) {
        if let Some(p) = self.lock().get_mut(key) {
            p.ready.push_front(ready);
        }
    }

    /// The pool a request would claim from.
    fn matching(&self, params: &ProvisionParams, state: &AppState) -> Option<&PoolConfig> {
        // A persistent workspace is mounted when the container is created: never pooled.
        if params.resources != state.config.sandbox.resources || params.workspace.is_some() {
            return None;
        }
        self.configs
            .iter()
            .find(|c| c.backend == params.backend && c.image == params.image)
    }
}

/// Claims a warm sandbox for `params` and attaches its grant. `Ok(None)`: no pool matches
/// the request, or it is empty (a miss; the caller provisions cold). A grant the broker
/// refuses (unknown credential) is the caller's error and returned as such.
///
/// This is the one entry point for every claimant (the HTTP API, the model's tool, the MCP
/// tool, code-interpreter interception): give it the same [`ProvisionParams`] as
/// [`lifecycle::provision`].
pub async fn claim(
    state: &AppState,
    params: &ProvisionParams,
) -> Result<Option<SandboxRow>, LifecycleError> {
    let pools = &state.pools;
    let Some(config) = pools.matching(params, state) else {
        return Ok(None);
    };
    if !params.credentials.is_empty() && state.broker.is_none() {
        return Err(LifecycleError::NoBroker);
    }
    let key = config.key();
    let kind = params.backend.as_str();
    let started = Instant::now();
    let backend = state.backends.get(params.backend).await?;
    if backend.needs_tenant() {
        // Per-tenant caches are mounted at creation; a pooled sandbox has no tenant.
        return Ok(None);
    }
    for _ in 0..CLAIM_ATTEMPTS {
        // Taken before the pop, so the refiller never sees the pool one short with no claim.
        let guard = ClaimGuard::new(pools, &key);
        let Some(ready) = pools.pop(&key) else {
            break;
        };
        let attached = attach(state, backend.as_ref(), params, &ready).await;
        drop(guard);
        match attached {
            Ok(Some(row)) => {
                state.metrics.pool_claim(kind, true);
                state
                    .metrics
                    .provision(kind, Outcome::Ok, started.elapsed());
                tracing::info!(sandbox = %row.id, pool = %key, elapsed_ms = started.elapsed().as_millis() as u64, "claimed a pooled sandbox");
                return Ok(Some(row));
            }
            Ok(None) => continue,
            Err(Attach::Caller(e)) => {
                // Nothing touched the sandbox: it stays pooled.
                pools.push_front(&key, ready);
                return Err(e);
            }
            Err(Attach::Sandbox(e)) => {
                tracing::warn!(sandbox = %ready.id, error = %e, "pooled sandbox unusable; destroying it");
                destroy_pooled(state, backend.as_ref(), &ready.id, Some(&ready.handle)).await;
            }
        }
    }
    state.metrics.pool_claim(kind, false);
    Ok(None)
}

/// Marks a claim in progress on a pool. The refill does not start fills for a pool while one
/// runs (unless the pool ran empty), and is woken when it ends: a fill started alongside would
/// create a container while the claim configures its sandbox and writes its row, and the
/// claim would wait on that CPU and I/O (the slow tail of warm claims). Dropped also when the
/// claim's caller goes away mid-claim.
struct ClaimGuard<'a> {
    pools: &'a Pools,
    key: &'a str,
}

impl<'a> ClaimGuard<'a> {
    fn new(pools: &'a Pools, key: &'a str) -> Self {
        if let Some(p) = pools.lock().get_mut(key) {
            p.claiming += 1;
        }
        Self { pools, key }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pools.lock().get_mut(self.key) {
            p.claiming = p.claiming.saturating_sub(1);
        }
        self.pools.wake.notify_one();
    }
}

enum Attach {
    /// The request itself is bad (unknown credential, bad session egress).
    Caller(LifecycleError),
    /// The sandbox (or the store) failed; try another one.
    Sandbox(LifecycleError),
}

/// Grant → configure → the row leaves the pool. `Ok(None)`: it was drained meanwhile.
async fn attach(
    state: &AppState,
    backend: &dyn SandboxBackend,
    params: &ProvisionParams,
    ready: &Ready,
) -> Result<Option<SandboxRow>, Attach> {
    let id = &ready.id;
    let mut handle = ready.handle.clone();
    let t0 = Instant::now();
    // Per-step timings of a claim (`RUST_LOG=brain::pool=debug`).
    let step = |name: &str| {
        tracing::debug!(sandbox = %id, step = name, elapsed_us = t0.elapsed().as_micros() as u64, "claim step");
    };
    let grant = match &state.broker {
        Some(broker) => {
            let req = GrantRequest {
                sandbox_id: id,
                credentials: &params.credentials,
                session_id: params.session_id.as_deref(),
                backend: params.backend,
            };
            let grant = broker
                .grant(req)
                .await
                .map_err(|e| Attach::Caller(e.into()))?;
            let new = NewSandbox {
                id: id.clone(),
                backend: params.backend,
                image: params.image.clone(),
                request: serde_json::Value::Null,
                session_id: params.session_id.clone(),
                expires_at: Utc::now(),
            };
            if let Err(e) = lifecycle::apply_session_egress(state, broker.as_ref(), &new).await {
                lifecycle::revoke(state, id).await;
                return Err(Attach::Caller(e));
            }
            grant
        }
        None => credentials::CredentialGrant::default(),
    };
    step("granted");
    if let Err(e) = backend.configure(&handle, &grant.env, &grant.files).await {
        lifecycle::revoke(state, id).await;
        return Err(Attach::Sandbox(e.into()));
    }
    step("configured");
    grant.record_in(&mut handle);
    let request = serde_json::to_value(params)
        .map_err(|e| Attach::Sandbox(LifecycleError::Task(format!("encode request: {e}"))))?;
    let ttl = chrono::Duration::seconds(i64::try_from(params.ttl_s).unwrap_or(i64::MAX / 1000));
    // The TTL runs on the database clock, as for a cold provision (`lifecycle`): replicas
    // with skewed clocks then agree on when the claimed sandbox expires.
    let now = match state.store.clock().await {
        Ok(now) => now,
        Err(e) => {
            lifecycle::revoke(state, id).await;
            return Err(Attach::Sandbox(e.into()));
        }
    };
    let claimed = state
        .store
        .claim_pooled(
            id,
            &request,
            params.session_id.as_deref(),
            now + ttl,
            &handle,
        )
        .await;
    step("row claimed");
    match claimed {
        Ok(true) => {}
        Ok(false) => {
            lifecycle::revoke(state, id).await;
            return Ok(None);
        }
        Err(e) => {
            lifecycle::revoke(state, id).await;
            return Err(Attach::Sandbox(e.into()));
        }
    }
    state
        .store
        .get_sandbox(id)
        .await
        .map_err(|e| Attach::Sandbox(e.into()))
}

/// Keeps every pool at its size until `shutdown` flips, then drains them.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    if state.pools.configs.is_empty() {
        return;
    }
    let fills = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_FILLS));
    loop {
        start_fills(&state, &fills);
        tokio::select! {
            _ = state.pools.wake.notified() => {}
            _ = tokio::time::sleep(REFILL_TICK) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    drain(&state).await;
}

/// Starts one fill per missing sandbox (each waits for a fill permit).
fn start_fills(state: &AppState, fills: &std::sync::Arc<tokio::sync::Semaphore>) {
    if state.pools.draining.load(Ordering::SeqCst) {
        return;
    }
    let now = Instant::now();
    let mut todo = Vec::new();
    {
        let mut pools = state.pools.lock();
        for config in &state.pools.configs {
            let key = config.key();
            let Some(p) = pools.get_mut(&key) else {
                continue;
            };
            for _ in 0..p.fills_to_start(config.size, now) {
                p.filling += 1;
                todo.push(config.clone());
            }
        }
    }
    for config in todo {
        let state = state.clone();
        let fills = fills.clone();
        tokio::spawn(async move {
            let key = config.key();
            let result = match fills.acquire_owned().await {
                Ok(_permit) => fill_one(&state, &config).await,
                Err(_) => Err(LifecycleError::Task("fill semaphore closed".into())),
            };
            let mut pools = state.pools.lock();
            if let Some(p) = pools.get_mut(&key) {
                p.filling -= 1;
                match result {
                    Ok(Some(ready)) => {
                        p.ready.push_back(ready);
                        p.retry_at = None;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(pool = %key, error = %e, "filling the warm pool failed");
                        p.retry_at = Some(Instant::now() + FILL_RETRY_AFTER);
                    }
                }
            }
        });
    }
}

/// Files a pooled sandbox is created with: empty placeholders at the CA paths, which the
/// docker backend bind-mounts read-only and fills at the claim (its root file system is
/// read-only, so the agent could not write them there).
fn placeholder_files(state: &AppState, backend: BackendKind) -> Vec<(String, Bytes)> {
    if state.broker.is_none() || backend != BackendKind::Docker {
        return Vec::new();
    }
    vec![
        (credentials::CA_PATH.to_string(), Bytes::new()),
        (credentials::SYSTEM_BUNDLE_PATH.to_string(), Bytes::new()),
    ]
}

/// Creates one pooled sandbox. `Ok(None)`: the pools started draining meanwhile (destroyed).
async fn fill_one(state: &AppState, config: &PoolConfig) -> Result<Option<Ready>, LifecycleError> {
    let backend = state.backends.get(config.backend).await?;
    let id = format!("sb-{}", uuid::Uuid::new_v4().simple());
    let params = ProvisionParams {
        backend: config.backend,
        image: config.image.clone(),
        task_description: None,
        credentials: Vec::new(),
        ttl_s: state.config.sandbox.default_ttl_seconds,
        resources: state.config.sandbox.resources,
        session_id: None,
        from_snapshot: None,
        workspace: None,
    };
    let new = NewSandbox {
        id: id.clone(),
        backend: config.backend,
        image: config.image.clone(),
        request: serde_json::to_value(&params).map_err(|e| LifecycleError::Task(e.to_string()))?,
        session_id: None,
        expires_at: Utc::now() + chrono::Duration::days(POOLED_EXPIRY_DAYS),
    };
    state.store.insert_pooled(&new, &config.key()).await?;
    let spec = SandboxSpec {
        id: id.clone(),
        owner: state.store.owner().to_string(),
        image: config.image.clone(),
        resources: params.resources,
        env: BTreeMap::new(),
        files: placeholder_files(state, config.backend),
        agent_token: lifecycle::random_token(),
        ttl_s: params.ttl_s,
        workspace: None,
        cache_tenant: None,
    };
    let handle = match backend.provision_for_pool(&spec).await {
        Ok(handle) => handle,
        Err(e) => {
            state.store.set_failed(&id, &e.to_string()).await?;
            return Err(e.into());
        }
    };
    if !state.store.set_running(&id, &handle).await? || state.pools.draining.load(Ordering::SeqCst)
    {
        destroy_pooled(state, backend.as_ref(), &id, Some(&handle)).await;
        return Ok(None);
    }
    tracing::debug!(sandbox = %id, pool = %config.key(), "pooled sandbox ready");
    Ok(Some(Ready { id, handle }))
}

/// Destroys a pooled sandbox (row first). Failures leave the row `destroying` for the reaper.
pub async fn destroy_pooled(
    state: &AppState,
    backend: &dyn SandboxBackend,
    id: &str,
    handle: Option<&SandboxHandle>,
) {
    if let Err(e) = state.store.begin_destroy(id).await {
        tracing::warn!(sandbox = %id, error = %e, "marking a pooled sandbox destroying failed");
        return;
    }
    let result = match handle {
        Some(handle) => backend.destroy(handle).await,
        None => Ok(()),
    };
    match result {
        Ok(()) => {
            lifecycle::revoke(state, id).await;
            if let Err(e) = state
                .store
                .set_destroyed(id, Some("warm pool drained"))
                .await
            {
                tracing::warn!(sandbox = %id, error = %e, "recording a pooled sandbox destroyed failed");
            }
        }
        Err(e) => {
            tracing::warn!(sandbox = %id, error = %e, "destroying a pooled sandbox failed");
            let _ = state.store.set_destroy_error(id, &e.to_string()).await;
        }
    }
}

/// Destroys every ready pooled sandbox and stops refilling (graceful shutdown).
pub async fn drain(state: &AppState) {
    state.pools.draining.store(true, Ordering::SeqCst);
    let drained: Vec<(BackendKind, Ready)> = {
        let mut pools = state.pools.lock();
        let mut out = Vec::new();
        for config in &state.pools.configs {
            if let Some(p) = pools.get_mut(&config.key()) {
                out.extend(p.ready.drain(..).map(|r| (config.backend, r)));
            }
        }
        out
    };
    let n = drained.len();
    let tasks = drained.into_iter().map(|(kind, ready)| {
        let state = state.clone();
        async move {
            if let Ok(backend) = state.backends.get(kind).await {
                destroy_pooled(&state, backend.as_ref(), &ready.id, Some(&ready.handle)).await;
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    if n > 0 {
        tracing::info!(sandboxes = n, "warm pools drained");
    }
}

/// Restart reconciliation of one pooled row: a running, healthy sandbox that never ran
/// anything and was never configured goes back into its pool (if the pool is still configured
/// and short of its size); anything else is destroyed. Returns whether the sandbox lives on.
pub async fn adopt_row(state: &AppState, backend: &dyn SandboxBackend, row: &SandboxRow) -> bool {
    let key = row.pool.clone().unwrap_or_default();
    let wanted = state
        .pools
        .configs
        .iter()
        .find(|c| c.key() == key)
        .map(|c| c.size);
    match (row.status, row.handle.as_ref()) {
        (SandboxStatus::Running, Some(handle)) => {
            let room = wanted.is_some_and(|size| {
                state
                    .pools
                    .lock()
                    .get(&key)
                    .is_some_and(|p| p.ready.len() < size)
            });
            if room && pristine(backend, handle).await && backend.adopt(handle).await.is_ok() {
                state
                    .pools
                    .lock()
                    .entry(key.clone())
                    .or_default()
                    .ready
                    .push_back(Ready {
                        id: row.id.clone(),
                        handle: handle.clone(),
                    });
                tracing::info!(sandbox = %row.id, pool = %key, "adopted pooled sandbox");
                return true;
            }
            tracing::info!(sandbox = %row.id, pool = %key, configured = wanted.is_some(), "draining pooled sandbox left by an earlier run");
            destroy_pooled(state, backend, &row.id, Some(handle)).await;
            false
        }
        (SandboxStatus::Provisioning, _) | (SandboxStatus::Running, None) => {
            // What the backend made (if anything) carries our label and is swept.
            let _ = state
                .store
                .set_failed(&row.id, "the brain restarted while filling the pool")
                .await;
            false
        }
        (SandboxStatus::Destroying, handle) => {
            destroy_pooled(state, backend, &row.id, handle).await;
            false
        }
        (SandboxStatus::Destroyed | SandboxStatus::Failed, _) => false,
    }
}

/// Alive, and its agent says nothing ran in it and it holds no configuration.
async fn pristine(backend: &dyn SandboxBackend, handle: &SandboxHandle) -> bool {
    if !backend.is_alive(handle).await {
        return false;
    }
    match backend.agent(handle) {
        Ok(agent) => matches!(
            agent.health().await,
            Ok(h) if h.configured == Some(false) && h.used == Some(false)
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(backend: BackendKind, image: Option<&str>, size: usize) -> PoolConfig {
        PoolConfig {
            backend,
            image: image.map(str::to_string),
            size,
        }
    }

    #[test]
    fn validate_rejects_unsupported_backends_sizes_and_duplicates() {
        assert!(validate(&[pool(BackendKind::Docker, None, 4)]).is_ok());
        assert!(validate(&[pool(BackendKind::Local, None, 2)]).is_ok());
        assert!(
            validate(&[
                pool(BackendKind::Docker, None, 4),
                pool(BackendKind::Docker, Some("img:1"), 2)
            ])
            .is_ok()
        );
        for bad in [
            vec![pool(BackendKind::E2b, None, 1)],
            vec![pool(BackendKind::Kubernetes, None, 1)],
            vec![pool(BackendKind::Docker, None, 0)],
            vec![pool(BackendKind::Docker, None, MAX_POOL_SIZE + 1)],
            vec![pool(BackendKind::Docker, Some(" "), 1)],
            vec![
                pool(BackendKind::Docker, None, 1),
                pool(BackendKind::Docker, None, 2),
            ],
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
    }

    fn ready(id: &str) -> Ready {
        Ready {
            id: id.into(),
            handle: SandboxHandle {
                id: id.into(),
                backend: BackendKind::Docker,
                backend_ref: id.into(),
                agent_url: None,
                agent_token: String::new(),
                extra: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn no_fill_starts_while_a_claim_is_served_from_a_non_empty_pool() {
        let pools = Pools::new(vec![pool(BackendKind::Docker, None, 3)]);
        let key = pools.configs()[0].key();
        let now = Instant::now();
        let fills = |pools: &Pools| pools.lock()[&key].fills_to_start(3, now);
        for id in ["a", "b", "c"] {
            pools
                .lock()
                .get_mut(&key)
                .unwrap()
                .ready
                .push_back(ready(id));
        }
        assert_eq!(fills(&pools), 0);

        // A claim pops one: the pool is short, but nothing starts until the claim ends.
        let guard = ClaimGuard::new(&pools, &key);
        assert!(pools.pop(&key).is_some());
        assert_eq!(pools.lock()[&key].claiming, 1);
        assert_eq!(fills(&pools), 0);
        drop(guard);
        assert_eq!(pools.lock()[&key].claiming, 0);
        assert_eq!(fills(&pools), 1);

        // A claim on a pool it empties does not hold the refill back.
        let _one = ClaimGuard::new(&pools, &key);
        let _two = ClaimGuard::new(&pools, &key);
        assert!(pools.pop(&key).is_some() && pools.pop(&key).is_some());
        assert_eq!(fills(&pools), 3);
        // Fills in flight and a back-off count as before.
        pools.lock().get_mut(&key).unwrap().filling = 2;
        assert_eq!(fills(&pools), 1);
        pools.lock().get_mut(&key).unwrap().retry_at = Some(now + Duration::from_secs(1));
        assert_eq!(fills(&pools), 0);
    }

    #[test]
    fn pool_config_parses_from_yaml_and_rejects_unknown_keys() {
        let c = crate::config::Config::from_yaml(
            "pools:\n  - {backend: docker, size: 4}\n  - {backend: docker, image: 'x:1', size: 1}\n",
        )
        .unwrap();
        assert_eq!(c.pools[0], pool(BackendKind::Docker, None, 4));
        assert_eq!(c.pools[1].key(), "docker:x:1");
        assert!(crate::config::Config::from_yaml("pools: [{backend: docker, sise: 4}]").is_err());
    }
}
