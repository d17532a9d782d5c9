//! Workspace snapshots (DESIGN.md, "Warm pools and snapshots"): `POST
//! /v1/sandboxes/{id}/snapshot` stores the sandbox's workspace through its backend and records
//! a `snapshots` row; `POST /v1/sandboxes {"from_snapshot"}` provisions a sandbox as usual
//! (pool or cold, with a *fresh* grant) and fills its workspace before it is handed out.
//!
//! A snapshot holds files only: never the env, stubs or proxy token, which live in the
//! sandbox's configuration, not its workspace. A workspace file that holds part of the grant
//! makes the snapshot fail (see `sandbox::ensure_no_grant`), and stubs copied into a snapshot
//! some other way are the old sandbox's, which the proxy refuses once it is destroyed.
//!
//! Crash safety: the row is written `pending` before the backend stores anything, and the
//! backend names what it stores after the snapshot id (E2B: a template named
//! `airlock-<owner>-<id>`; docker: the image `<prefix>snapshot:<id>`). A brain that dies in
//! between leaves a pending row; [`reconcile`] (at start-up, and when a replica takes over a
//! dead one's) removes what such a row names, and sweeps what the backend lists under our
//! owner's marker with no `ready` row (E2B: `GET /snapshots`), so no template outlives its
//! record, while a `ready` snapshot stays restorable.

use crate::lifecycle::{self, LifecycleError, ProvisionParams};
use crate::sandbox::SandboxHandle;
// The lifecycle layer sees only the state below sessions (an `AppState` derefs to it).
use crate::sandbox::SandboxBackend;
use crate::state::base::BaseState as AppState;
use crate::store::{SandboxRow, SandboxStatus, SnapshotRow, SnapshotState};

/// How long a `discarded` row is kept, so a template the provider finished after its brain
/// died is still recognised as an orphan by name (the sweep deletes names with no `ready`
/// row anyway; the row only documents what happened).
const FORGET_DISCARDED_MS: i64 = 24 * 3600 * 1000;

/// Stores `row`'s workspace as a new snapshot. Run it in its own task: a caller that goes
/// away cannot leave a stored snapshot without its row.
pub async fn take(
    state: &AppState,
    row: &SandboxRow,
    handle: &SandboxHandle,
) -> Result<SnapshotRow, LifecycleError> {
    let backend = state.backends.get(row.backend).await?;
    let mut snapshot = SnapshotRow {
        id: format!("snap-{}", uuid::Uuid::new_v4().simple()),
        backend: row.backend,
        image: row.image.clone(),
        source_sandbox: row.id.clone(),
        backend_ref: String::new(),
        size_bytes: 0,
        created_at: chrono::Utc::now(),
    };
    // The intent first: from here on a crash leaves a row naming what to clean up.
    state.store.begin_snapshot(&snapshot).await?;
    let stored = match backend.snapshot(handle, &snapshot.id).await {
        Ok(stored) => stored,
        Err(e) => {
            // A failure may still have stored something (an answer lost on the way back).
            discard(state, backend.as_ref(), &snapshot.id, true).await;
            return Err(e.into());
        }
    };
    if backend.snapshot_is_image() {
        snapshot.image = Some(stored.backend_ref.clone());
    }
    snapshot.backend_ref = stored.backend_ref;
    snapshot.size_bytes = stored.size_bytes;
    let recorded = state.store.complete_snapshot(&snapshot).await;
    if !matches!(recorded, Ok(true)) {
        // Unrecorded (or taken over by a peer that judged this replica dead), it could never
        // be restored or deleted: remove it now. A failure leaves the pending row, which the
        // next reconcile acts on.
        match backend.delete_snapshot(&snapshot.backend_ref).await {
            Ok(()) => {
                let _ = state.store.delete_snapshot(&snapshot.id).await;
            }
            Err(e) => {
                tracing::warn!(snapshot = %snapshot.id, error = %e, "removing an unrecorded snapshot")
            }
        }
        return Err(match recorded {
            Err(e) => e.into(),
            _ => LifecycleError::Task(format!(
                "snapshot {} was taken over by another replica before it was recorded",
                snapshot.id
            )),
        });
    }
    tracing::info!(snapshot = %snapshot.id, sandbox = %row.id, bytes = snapshot.size_bytes, "workspace snapshot stored");
    Ok(snapshot)
}

/// The snapshot a provision request names, checked against the request: same backend, and
/// the snapshot's image unless the request names one (then they must agree). Sets the
/// request's image to the snapshot's, so a pool for that image can serve it.
pub async fn for_request(
    state: &AppState,
    params: &mut ProvisionParams,
) -> Result<Option<SnapshotRow>, LifecycleError> {
    let Some(id) = params.from_snapshot.as_deref() else {
        return Ok(None);
    };
    let snapshot = state
        .store
        .get_snapshot(id)
        .await?
        .ok_or_else(|| LifecycleError::Invalid(format!("from_snapshot: no snapshot {id}")))?;
    if snapshot.backend != params.backend {
        return Err(LifecycleError::Invalid(format!(
            "from_snapshot: snapshot {id} was taken on the {} backend, not {}",
            snapshot.backend, params.backend
        )));
    }
    match (&params.image, &snapshot.image) {
        (None, image) => params.image = image.clone(),
        (Some(asked), Some(taken)) if asked == taken => {}
        (Some(asked), taken) => {
            return Err(LifecycleError::Invalid(format!(
                "from_snapshot: snapshot {id} was taken from image {}, not {asked}",
                taken.as_deref().unwrap_or("(the backend default)")
            )));
        }
    }
    Ok(Some(snapshot))
}

/// Fills a just-provisioned sandbox's workspace from `snapshot`; on failure the sandbox is
/// destroyed (a half-restored workspace is never handed out) and the error returned.
pub async fn restore_into(
    state: &AppState,
    row: SandboxRow,
    snapshot: &SnapshotRow,
) -> Result<SandboxRow, LifecycleError> {
    let handle = match (row.status, &row.handle) {
        (SandboxStatus::Running, Some(handle)) => handle.clone(),
        // A delete won the race: nothing to fill.
        _ => return Ok(row),
    };
    let backend = state.backends.get(row.backend).await?;
    match backend
        .restore_snapshot(&handle, &snapshot.backend_ref)
        .await
    {
        Ok(()) => {
            tracing::info!(sandbox = %row.id, snapshot = %snapshot.id, "workspace restored from snapshot");
            Ok(row)
        }
        Err(e) => {
            tracing::warn!(sandbox = %row.id, snapshot = %snapshot.id, error = %e, "restoring the snapshot failed; destroying the sandbox");
            if let Err(d) = lifecycle::destroy(state, &row.id).await {
                tracing::warn!(sandbox = %row.id, error = %d, "destroying after a failed restore");
            }
            Err(e.into())
        }
    }
}

/// Removes a snapshot from its backend, then its row. `Ok(false)`: no such snapshot.
pub async fn delete(state: &AppState, id: &str) -> Result<bool, LifecycleError> {
    let Some(snapshot) = state.store.get_snapshot(id).await? else {
        return Ok(false);
    };
    let backend = state.backends.get(snapshot.backend).await?;
    backend.delete_snapshot(&snapshot.backend_ref).await?;
    Ok(state.store.delete_snapshot(id).await?)
}

/// Removes what pending snapshot `id` may have left at `backend`; then its row goes (`drop_row`,
/// this replica's own failed attempt) or is marked `discarded` (an orphan). On failure the
/// row stays pending for the next reconcile.
async fn discard(state: &AppState, backend: &dyn SandboxBackend, id: &str, drop_row: bool) {
    match backend.discard_snapshot(state.store.owner(), id).await {
        Ok(()) => {
            let done = if drop_row {
                state.store.delete_snapshot(id).await.map(|_| ())
            } else {
                state.store.discard_snapshot(id).await
            };
            if let Err(e) = done {
                tracing::warn!(snapshot = %id, error = %e, "recording a discarded snapshot failed");
            }
        }
        Err(e) => {
            tracing::warn!(snapshot = %id, error = %e, "removing what an unfinished snapshot left failed; retried when the brain next starts")
        }
    }
}

/// Settles snapshots a dead brain left unfinished (see the module docs): takes over the
/// pending rows of replicas that are gone and removes what each may have left, then deletes
/// every snapshot the backends list under our owner's marker that has no `ready` or
/// `pending` row. Run at start-up and whenever this replica adopts a dead one's sandboxes.
/// Returns how many pending rows were taken over.
pub async fn reconcile(state: &AppState) -> Result<usize, LifecycleError> {
    let grace = crate::replicas::lease_ms(state);
    let orphans = state.store.claim_orphan_snapshots(grace).await?;
    for orphan in &orphans {
        match state.backends.get(orphan.backend).await {
            Ok(backend) => {
                tracing::info!(snapshot = %orphan.id, "discarding a snapshot its brain never finished");
                discard(state, backend.as_ref(), &orphan.id, false).await;
            }
            Err(e) => {
                tracing::warn!(snapshot = %orphan.id, error = %e, "cannot reach an unfinished snapshot's backend; leaving it for a later start")
            }
        }
    }
    sweep(state).await;
    state
        .store
        .forget_discarded_snapshots(FORGET_DISCARDED_MS)
        .await?;
    Ok(orphans.len())
}

/// Deletes what the backends hold under our owner's marker with no live row: no row at all,
/// or a `discarded` one (a template the provider finished after its brain died). The row is
/// read after the listing, and a snapshot's row is written before the backend stores
/// anything, so one being taken right now (`pending`) is never swept.
async fn sweep(state: &AppState) {
    let owner = state.store.owner();
    for backend in state.backends.built().await {
        let listed = match backend.list_snapshots(owner).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(backend = %backend.kind(), error = %e, "listing stored snapshots failed");
                continue;
            }
        };
        for found in listed {
            match state.store.snapshot_state(&found.snapshot_id).await {
                Ok(Some(SnapshotState::Ready | SnapshotState::Pending)) => continue,
                Ok(None | Some(SnapshotState::Discarded)) => {}
                Err(e) => {
                    tracing::warn!(snapshot = %found.snapshot_id, error = %e, "cannot read a stored snapshot's row; leaving it");
                    continue;
                }
            }
            match backend.delete_snapshot(&found.backend_ref).await {
                Ok(()) => {
                    tracing::info!(snapshot = %found.snapshot_id, backend = %backend.kind(), "removed an unrecorded snapshot")
                }
                Err(e) => {
                    tracing::warn!(snapshot = %found.snapshot_id, error = %e, "removing an unrecorded snapshot failed")
                }
            }
        }
    }
}
