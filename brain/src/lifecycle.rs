//! Sandbox lifecycle: provision, destroy, the TTL reaper and restart reconciliation.
//!
//! Every step writes its row first and acts second (DESIGN.md, "Storage"):
//! - provision: row `provisioning` → backend creates → row `running` (or `failed`);
//! - destroy: row `destroying` → backend destroys → row `destroyed` (a failed destroy stays
//!   `destroying` and the reaper retries it);
//! - on start, [`reconcile`] adopts sandboxes that are still alive, closes rows whose sandbox
//!   is gone, and destroys anything a backend lists with our owner label but no live row.
//!
//! On shutdown the brain leaves sandboxes running: the next start adopts them (or the reaper
//! destroys them once their TTL passes), so a restart does not kill agents' work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::credentials::{BrokerError, CredentialGrant, GrantRequest};
use crate::metrics::Outcome;
use crate::sandbox::{
    BackendError, BackendKind, Resources, SandboxBackend, SandboxHandle, SandboxSpec,
};
// The lifecycle layer sees only the state below sessions (an `AppState` derefs to it).
use crate::state::base::BaseState as AppState;
use crate::store::{
    NewSandbox, SandboxRow, SandboxStatus, SnapshotState, StoreError, WorkspaceClaim,
};

/// A `destroying` row untouched this long is retried by the reaper.
const DESTROY_RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no sandbox {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("credentials requested but no vault proxy is configured")]
    NoBroker,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("background task failed: {0}")]
    Task(String),
}

/// A validated provision request (defaults applied), stored as the row's `request` JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionParams {
    pub backend: BackendKind,
    pub image: Option<String>,
    pub task_description: Option<String>,
    pub credentials: Vec<String>,
    pub ttl_s: u64,
    pub resources: Resources,
    pub session_id: Option<String>,
    /// Start from this snapshot's workspace (`crate::snapshots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// Mount this persistent workspace at `/workspace` (backends with `supports_workspaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

/// Sets the sandbox's egress from its session's `egress` (kept in the session's origin, see
/// `api::sessions::create`), if it has one.
pub(crate) async fn apply_session_egress(
    state: &AppState,
    broker: &dyn crate::credentials::CredentialBroker,
    new: &NewSandbox,
) -> Result<(), LifecycleError> {
    let Some(session_id) = &new.session_id else {
        return Ok(());
    };
    let Some(row) = state.store.get_session(session_id).await? else {
        return Ok(());
    };
    let Some(egress) = row.origin.get("egress") else {
        return Ok(());
    };
    let policy: crate::credentials::EgressPolicy = serde_json::from_value(egress.clone())
        .map_err(|e| LifecycleError::Invalid(format!("session egress: {e}")))?;
    broker.set_egress(&new.id, &policy).await?;
    Ok(())
}

/// Creates a sandbox and returns its row (`running`, or `destroyed` if a delete won the race).
/// Runs to completion even if the caller goes away, so nothing is left half-made.
/// With `from_snapshot`, the sandbox (pooled or cold, always with a fresh grant) gets the
/// snapshot's workspace before it is returned.
pub async fn provision(
    state: &AppState,
    mut params: ProvisionParams,
) -> Result<SandboxRow, LifecycleError> {
    if !params.credentials.is_empty() && state.broker.is_none() {
        return Err(LifecycleError::NoBroker);
    }
    let snapshot = crate::snapshots::for_request(state, &mut params).await?;
    let row = provision_fresh(state, params).await?;
    match snapshot {
        Some(snapshot) => crate::snapshots::restore_into(state, row, &snapshot).await,
        None => Ok(row),
    }
}

async fn provision_fresh(
    state: &AppState,
    params: ProvisionParams,
) -> Result<SandboxRow, LifecycleError> {
    if let Some(row) = crate::pool::claim(state, &params).await? {
        return Ok(row);
    }
    let backend = state.backends.get(params.backend).await?;
    if params.workspace.is_some() && !backend.supports_workspaces() {
        return Err(BackendError::not_supported(params.backend, "persistent workspaces").into());
    }
    let id = format!("sb-{}", uuid::Uuid::new_v4().simple());
    let request = serde_json::to_value(&params).map_err(|e| LifecycleError::Task(e.to_string()))?;
    let ttl = chrono::Duration::seconds(i64::try_from(params.ttl_s).unwrap_or(i64::MAX / 1000));
    let new = NewSandbox {
        id: id.clone(),
        backend: params.backend,
        image: params.image.clone(),
        request,
        session_id: params.session_id.clone(),
        // On the database clock: the reaper of whichever replica holds the row compares it.
        expires_at: state.store.clock().await? + ttl,
    };
    state.provisioning_set().insert(id.clone());
    let state2 = state.clone();
    // Spawned so that a dropped HTTP request cannot cancel it between "created" and "recorded".
    // The caller's span goes along: the grant carries its trace (egress spans join it).
    let task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            let result = provision_steps(&state2, backend, new, params).await;
            state2.provisioning_set().remove(&id);
            result
        },
        tracing::Span::current(),
    ));
    task.await
        .map_err(|e| LifecycleError::Task(e.to_string()))?
}

async fn provision_steps(
    state: &AppState,
    backend: Arc<dyn SandboxBackend>,
    new: NewSandbox,
    params: ProvisionParams,
) -> Result<SandboxRow, LifecycleError> {
    let id = new.id.clone();
    let t0 = Instant::now();
    // Per-step timings of the cold path (`RUST_LOG=brain::lifecycle=debug`).
    let step = |name: &str| {
        tracing::debug!(sandbox = %id, step = name, elapsed_us = t0.elapsed().as_micros() as u64, "provision step");
    };
    state.store.insert_sandbox(&new).await?;
    step("row inserted");
    if let Some(name) = &params.workspace {
        claim_workspace(state, &id, params.backend, name).await?;
    }
    let started = Instant::now();
    // Every sandbox gets a grant when a vault proxy is configured: its token authenticates
    // the sandbox's egress even when it asked for no credentials.
    let grant = match &state.broker {
        Some(broker) => {
            let req = GrantRequest {
                sandbox_id: &id,
                credentials: &params.credentials,
                session_id: params.session_id.as_deref(),
                backend: params.backend,
            };
            match broker.grant(req).await {
                Ok(grant) => {
                    // A session started with its own egress: applied before the sandbox
                    // exists, so its first request already follows it (fail closed).
                    if let Err(e) = apply_session_egress(state, broker.as_ref(), &new).await {
                        broker.revoke(&id).await.ok();
                        state.store.set_failed(&id, &e.to_string()).await?;
                        return Err(e);
                    }
                    grant
                }
                Err(e) => {
                    state.store.set_failed(&id, &e.to_string()).await?;
                    return Err(e.into());
                }
            }
        }
        None => CredentialGrant::default(),
    };
    step("granted");
    let recorded = grant.clone();
    let spec = SandboxSpec {
        id: id.clone(),
        owner: state.store.owner().to_string(),
        image: params.image.clone(),
        resources: params.resources,
        env: grant.env,
        files: grant.files,
        agent_token: random_token(),
        ttl_s: params.ttl_s,
        workspace: params.workspace.clone(),
        cache_tenant: Some(cache_tenant(state, &params).await?),
    };
    let kind = params.backend.as_str();
    step("spec built");
    match backend.provision(&spec).await {
        Ok(mut handle) => {
            step("backend provisioned");
            // Kept with the handle so a restarted brain can re-register the grant.
            recorded.record_in(&mut handle);
            state
                .metrics
                .provision(kind, Outcome::Ok, started.elapsed());
            if !state.store.set_running(&id, &handle).await? {
                // A delete arrived while we were creating it: we hold the handle, so we clean up.
                tracing::info!(sandbox = %id, "deleted during provisioning; destroying");
                // Revoke first: if the destroy fails the row stays `destroying` for the
                // reaper, but the grant must not outlive the delete that was asked for.
                revoke(state, &id).await;
                backend.destroy(&handle).await?;
                state
                    .store
                    .set_destroyed(&id, Some("deleted during provisioning"))
                    .await?;
            } else {
                step("row running");
                tracing::info!(sandbox = %id, backend = kind, "sandbox running");
            }
        }
        Err(e) => {
            state
                .metrics
                .provision(kind, Outcome::Error, started.elapsed());
            tracing::warn!(sandbox = %id, backend = kind, error = %e, "provision failed");
            state.store.set_failed(&id, &e.to_string()).await?;
            revoke(state, &id).await;
            return Err(e.into());
        }
    }
    state
        .store
        .get_sandbox(&id)
        .await?
        .ok_or(LifecycleError::NotFound(id))
}

/// The tenant whose per-tenant dependency caches a sandbox mounts: its session's owner (the
/// virtual key that started it, `vk:<sha256>`), else `default` (the master key, triggers,
/// sandboxes outside a session). Never taken from the request body.
async fn cache_tenant(
    state: &AppState,
    params: &ProvisionParams,
) -> Result<String, LifecycleError> {
    if let Some(session_id) = &params.session_id
        && let Some(row) = state.store.get_session(session_id).await?
        && let Some(owner) = row.origin.get("owner").and_then(|o| o.as_str())
    {
        return Ok(owner.to_string());
    }
    Ok("default".to_string())
}

/// Takes persistent workspace `name` for the just-inserted sandbox `id`, atomically in the
/// store (one live sandbox per workspace, across replicas, and never one being deleted); a
/// loser's row is failed and it gets `409 conflict`.
async fn claim_workspace(
    state: &AppState,
    id: &str,
    backend: BackendKind,
    name: &str,
) -> Result<(), LifecycleError> {
    let message = match state.store.claim_workspace(id, backend, name).await? {
        WorkspaceClaim::Won => return Ok(()),
        WorkspaceClaim::Deleting => format!(
            "workspace {name} is being deleted (a delete that was interrupted is finished by \
             repeating DELETE /v1/workspaces/{name})"
        ),
        WorkspaceClaim::Held => match state.store.workspace_holder(backend, name).await? {
            Some(holder) => format!("workspace {name} is in use by sandbox {holder}"),
            None => format!("workspace {name} is in use"),
        },
    };
    state.store.set_failed(id, &message).await?;
    Err(BackendError::Conflict(message).into())
}

/// Deletes persistent workspace `name` on `backend`: `Ok(false)` when there was none,
/// `Conflict` while a sandbox holds it. The store marks it as being deleted first, in one
/// transaction with the check that no live sandbox holds it, so a concurrent provision either
/// claimed it before (this delete fails) or fails itself; only then is the volume removed,
/// and the mark is dropped once the backend answered. Runs in its own task: a caller that
/// goes away cannot leave the mark behind.
pub async fn delete_workspace(
    state: &AppState,
    kind: BackendKind,
    name: &str,
) -> Result<bool, LifecycleError> {
    let backend = state.backends.get(kind).await?;
    if !backend.supports_workspaces() {
        return Err(BackendError::not_supported(kind, "persistent workspaces").into());
    }
    let (state, name) = (state.clone(), name.to_string());
    let task = tokio::spawn(async move {
        if let Some(holder) = state.store.begin_workspace_delete(kind, &name).await? {
            return Err(BackendError::Conflict(format!(
                "workspace {name} is in use by sandbox {holder}"
            ))
            .into());
        }
        let removed = backend.delete_workspace(&name).await;
        // Whatever the backend answered, the workspace is usable again: gone (a new claim
        // starts an empty one) or, after a failure, still there as it was.
        state.store.end_workspace_delete(kind, &name).await?;
        if let Ok(true) = removed {
            tracing::info!(workspace = %name, backend = %kind, "workspace deleted");
        }
        Ok::<bool, LifecycleError>(removed?)
    });
    task.await
        .map_err(|e| LifecycleError::Task(e.to_string()))?
}

/// Destroys a sandbox; repeating it on a destroyed sandbox returns the row unchanged.
pub async fn destroy(state: &AppState, id: &str) -> Result<SandboxRow, LifecycleError> {
    let row = state
        .store
        .get_sandbox(id)
        .await?
        .ok_or_else(|| LifecycleError::NotFound(id.into()))?;
    if !row.status.is_live() {
        return Ok(row);
    }
    state.store.begin_destroy(id).await?;
    let row = state
        .store
        .get_sandbox(id)
        .await?
        .ok_or_else(|| LifecycleError::NotFound(id.into()))?;
    if !row.status.is_live() {
        return Ok(row);
    }
    let Some(handle) = row.handle.clone() else {
        if state.provisioning_set().contains(id) {
            // The provisioning task owns the handle and will destroy it when it sees the row.
            return Ok(row);
        }
        if let Some(replica) = row.replica.as_deref()
            && replica != state.store.replica()
            && state.store.replica_alive(replica).await?
        {
            // Another live replica is provisioning it: likewise, its task destroys what it
            // made once it sees the row `destroying`.
            return Ok(row);
        }
        // Nothing was recorded as created, but a provision cut short by a crash may have left
        // a labelled resource (a container created, never started): remove it now. Waiting for
        // the label sweep would leave it for good, since that sweep runs only when some row is
        // taken over or at a restart.
        state
            .store
            .set_destroyed(id, Some("destroyed before it was created"))
            .await?;
        sweep_one(state, row.backend, id).await;
        return refetch(state, id).await;
    };
    let backend = state.backends.get(row.backend).await?;
    match backend.destroy(&handle).await {
        Ok(()) => {
            revoke(state, id).await;
            state.store.set_destroyed(id, None).await?;
            tracing::info!(sandbox = %id, "sandbox destroyed");
            refetch(state, id).await
        }
        Err(e) => {
            tracing::warn!(sandbox = %id, error = %e, "destroy failed; the reaper will retry");
            state.store.set_destroy_error(id, &e.to_string()).await?;
            Err(e.into())
        }
    }
}

async fn refetch(state: &AppState, id: &str) -> Result<SandboxRow, LifecycleError> {
    state
        .store
        .get_sandbox(id)
        .await?
        .ok_or_else(|| LifecycleError::NotFound(id.into()))
}

pub(crate) async fn revoke(state: &AppState, id: &str) {
    if let Some(broker) = &state.broker
        && let Err(e) = broker.revoke(id).await
    {
        tracing::warn!(sandbox = %id, error = %e, "revoking the credential grant failed");
    }
}

/// 256 random bits, hex: the per-sandbox agent bearer token.
pub(crate) fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// --- Replica ownership (issue 12) -------------------------------------------------------
// A replica acts only on rows it looks after (`sandboxes.replica`) and on orphans, rows of a
// replica whose lease lapsed, which it first takes over (`Store::claim_orphan_sandboxes`).
// The sweep re-reads each labelled leftover's row *after* listing, so a sandbox another
// replica created meanwhile (its row is committed before the backend acts) is never swept.

/// Start-up reconciliation with what the backends actually have (see module docs): this
/// replica's rows and orphans only, never a live replica's.
pub async fn reconcile(state: &AppState) -> Result<(), LifecycleError> {
    let grace = crate::replicas::lease_ms(state);
    let rows = state.store.claim_orphan_sandboxes(true, grace).await?;
    reconcile_rows(state, rows).await?;
    sweep_labelled(state).await;
    Ok(())
}

/// Takes over the sandboxes of replicas whose lease lapsed and settles them as a restart
/// would (adopt the live ones, close the rest). Run periodically by every replica, so
/// survivors clean up after a dead one. Returns how many rows were taken over.
pub async fn adopt_orphans(state: &AppState) -> Result<usize, LifecycleError> {
    let grace = crate::replicas::lease_ms(state);
    let rows = state.store.claim_orphan_sandboxes(false, grace).await?;
    let n = rows.len();
    if n > 0 {
        tracing::info!(
            sandboxes = n,
            "taking over the sandboxes of a replica that stopped"
        );
        reconcile_rows(state, rows).await?;
        sweep_labelled(state).await;
    }
    Ok(n)
}

async fn reconcile_rows(state: &AppState, rows: Vec<SandboxRow>) -> Result<(), LifecycleError> {
    for row in rows {
        let id = row.id.clone();
        let backend = match state.backends.get(row.backend).await {
            Ok(backend) => backend,
            Err(e) => {
                tracing::warn!(sandbox = %id, backend = %row.backend, error = %e,
                    "cannot reach this sandbox's backend; leaving its row for a later start");
                continue;
            }
        };
        if row.pool.is_some() {
            // Adopted back into its pool, or destroyed: either way settled here.
            let _adopted = crate::pool::adopt_row(state, backend.as_ref(), &row).await;
            continue;
        }
        match (row.status, row.handle.as_ref()) {
            (SandboxStatus::Running, Some(handle)) if alive(backend.as_ref(), handle).await => {
                match readopt(state, backend.as_ref(), handle).await {
                    Ok(()) => {
                        tracing::info!(sandbox = %id, backend = %row.backend, "adopted running sandbox");
                    }
                    Err(reason) => {
                        tracing::warn!(sandbox = %id, %reason, "cannot adopt a running sandbox; destroying it");
                        state.store.begin_destroy(&id).await?;
                        match backend.destroy(handle).await {
                            Ok(()) => {
                                revoke(state, &id).await;
                                let note = format!("not adopted after a brain restart: {reason}");
                                state.store.set_destroyed(&id, Some(&note)).await?;
                            }
                            Err(e) => {
                                // Left `destroying`: the reaper retries it.
                                tracing::warn!(sandbox = %id, error = %e, "destroying an unadoptable sandbox failed");
                                state.store.set_destroy_error(&id, &e.to_string()).await?;
                            }
                        }
                    }
                }
            }
            (SandboxStatus::Running, Some(handle)) => {
                if let Err(e) = backend.destroy(handle).await {
                    tracing::warn!(sandbox = %id, error = %e, "cleaning up a dead sandbox failed");
                }
                revoke(state, &id).await;
                state
                    .store
                    .set_destroyed(&id, Some("sandbox was gone when the brain restarted"))
                    .await?;
                tracing::info!(sandbox = %id, "sandbox gone after restart; marked destroyed");
            }
            (SandboxStatus::Provisioning, _) => {
                // The brain died mid-provision; what the backend made is caught by the sweep.
                // A remote proxy may hold its grant.
                revoke(state, &id).await;
                state
                    .store
                    .set_failed(&id, "the brain restarted while provisioning")
                    .await?;
                tracing::info!(sandbox = %id, "interrupted provision marked failed");
            }
            (SandboxStatus::Running, None) => {
                // Not written by this code (running rows always get a handle); nothing to reach.
                revoke(state, &id).await;
                state
                    .store
                    .set_destroyed(&id, Some("running row without a handle"))
                    .await?;
            }
            (SandboxStatus::Destroying, _) => {
                if let Err(e) = destroy(state, &id).await {
                    tracing::warn!(sandbox = %id, error = %e, "finishing an interrupted destroy failed");
                }
            }
            (SandboxStatus::Destroyed | SandboxStatus::Failed, _) => {}
        }
    }
    Ok(())
}

/// Health checks before a sandbox is concluded gone: one failed check (a 3 s timeout on a busy
/// host) must not destroy a working sandbox.
const ALIVE_ATTEMPTS: u32 = 3;
const ALIVE_PAUSE: Duration = Duration::from_secs(1);

async fn alive(backend: &dyn SandboxBackend, handle: &SandboxHandle) -> bool {
    for attempt in 1..=ALIVE_ATTEMPTS {
        if backend.is_alive(handle).await {
            return true;
        }
        if attempt < ALIVE_ATTEMPTS {
            tokio::time::sleep(ALIVE_PAUSE).await;
        }
    }
    false
}

/// Re-creates a live sandbox's host-side pieces and checks its vault grant survived.
async fn readopt(
    state: &AppState,
    backend: &dyn SandboxBackend,
    handle: &SandboxHandle,
) -> Result<(), String> {
    backend.adopt(handle).await.map_err(|e| e.to_string())?;
    if let Some(broker) = &state.broker {
        broker.readopt(handle).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Destroys everything our owner label marks whose row is finished or missing. The row is
/// read after the listing: a live row (this replica's, another live replica's, or one created
/// since) keeps its sandbox.
async fn sweep_labelled(state: &AppState) {
    let owner = state.store.owner();
    for backend in state.backends.built().await {
        let found = match backend.list_labelled().await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(backend = %backend.kind(), error = %e, "listing labelled sandboxes failed");
                continue;
            }
        };
        for item in found {
            if item.owner.as_deref() != Some(owner) {
                continue;
            }
            // A snapshot's helper (`<snapshot id>-helper`, no sandbox row) while its snapshot
            // is pending: a live replica is using it, or `snapshots::reconcile` removes it
            // with the rest of what an unfinished snapshot left.
            if let Some(snapshot) = item.id.strip_suffix("-helper") {
                match state.store.snapshot_state(snapshot).await {
                    Ok(Some(SnapshotState::Pending)) => continue,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(sandbox = %item.id, error = %e, "cannot read a snapshot helper's row; leaving it");
                        continue;
                    }
                }
            }
            // Pooled rows too: an adopted pooled sandbox is live, not an orphan.
            match state.store.get_sandbox_any(&item.id).await {
                Ok(Some(row)) if row.status.is_live() => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(sandbox = %item.id, error = %e, "cannot read a labelled sandbox's row; leaving it");
                    continue;
                }
            }
            revoke(state, &item.id).await;
            match backend.destroy_labelled(&item).await {
                Ok(()) => {
                    tracing::info!(sandbox = %item.id, backend = %backend.kind(), "removed orphan sandbox")
                }
                Err(e) => {
                    tracing::warn!(sandbox = %item.id, error = %e, "removing an orphan sandbox failed")
                }
            }
        }
    }
}

/// Removes whatever the backend holds under sandbox `id`'s label (its row is finished).
async fn sweep_one(state: &AppState, kind: BackendKind, id: &str) {
    let Ok(backend) = state.backends.get(kind).await else {
        return;
    };
    let found = match backend.list_labelled().await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(sandbox = %id, error = %e, "listing labelled sandboxes failed; the next sweep removes leftovers");
            return;
        }
    };
    for item in found
        .iter()
        .filter(|f| f.id == id && f.owner.as_deref() == Some(state.store.owner()))
    {
        revoke(state, id).await;
        match backend.destroy_labelled(item).await {
            Ok(()) => tracing::info!(sandbox = %id, "removed what an interrupted provision left"),
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "removing what an interrupted provision left failed")
            }
        }
    }
}

/// One reaper pass: destroy expired sandboxes and retry stale destroys.
pub async fn reap_once(state: &AppState, now: DateTime<Utc>) -> Result<usize, LifecycleError> {
    let mut reaped = 0;
    for row in state.store.list_expired(now).await? {
        tracing::info!(sandbox = %row.id, expired_at = %row.expires_at, "TTL passed; destroying");
        match destroy(state, &row.id).await {
            Ok(_) => reaped += 1,
            Err(e) => tracing::warn!(sandbox = %row.id, error = %e, "reaping failed"),
        }
    }
    let retry_before = now - chrono::Duration::from_std(DESTROY_RETRY_AFTER).unwrap_or_default();
    for row in state.store.list_stale_destroying(retry_before).await? {
        if state.provisioning_set().contains(&row.id) {
            continue;
        }
        if row.pool.is_some() {
            if let Ok(backend) = state.backends.get(row.backend).await {
                crate::pool::destroy_pooled(state, backend.as_ref(), &row.id, row.handle.as_ref())
                    .await;
                reaped += 1;
            }
            continue;
        }
        match destroy(state, &row.id).await {
            Ok(_) => reaped += 1,
            Err(e) => tracing::warn!(sandbox = %row.id, error = %e, "retrying destroy failed"),
        }
    }
    Ok(reaped)
}

/// One reaper pass at "now" on the database clock, which TTLs are set on: a replica whose own
/// clock runs ahead must not destroy sandboxes early (nor one whose clock lags, late).
pub async fn reap_due(state: &AppState) -> Result<usize, LifecycleError> {
    let now = state.store.clock().await?;
    reap_once(state, now).await
}

/// Runs [`reap_due`] every `sandbox.reaper_interval_ms` until `shutdown` flips to true.
pub async fn reaper(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_millis(state.config.sandbox.reaper_interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if let Err(e) = reap_due(&state).await {
            tracing::warn!(error = %e, "reaper pass failed");
        }
    }
}
