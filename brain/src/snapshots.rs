//! Workspace snapshots (DESIGN.md, "Warm pools and snapshots"): `POST
//! /v1/sandboxes/{id}/snapshot` stores the sandbox's workspace through its backend and records
//! a `snapshots` row; `POST /v1/sandboxes {"from_snapshot"}` provisions a sandbox as usual
//! (pool or cold, with a *fresh* grant) and fills its workspace before it is handed out.
//!
//! A snapshot holds files only: never the env, stubs or proxy token, which live in the
//! sandbox's configuration, not its workspace. A workspace file that holds part of the grant
//! makes the snapshot fail (see `sandbox::ensure_no_grant`), and stubs copied into a snapshot
//! some other way are the old sandbox's, which the proxy refuses once it is destroyed.

use crate::lifecycle::{self, LifecycleError, ProvisionParams};
use crate::sandbox::SandboxHandle;
// The lifecycle layer sees only the state below sessions (an `AppState` derefs to it).
use crate::state::base::BaseState as AppState;
use crate::store::{SandboxRow, SandboxStatus, SnapshotRow};

/// Stores `row`'s workspace as a new snapshot. Run it in its own task: a caller that goes
/// away cannot leave a stored snapshot without its row.
pub async fn take(
    state: &AppState,
    row: &SandboxRow,
    handle: &SandboxHandle,
) -> Result<SnapshotRow, LifecycleError> {
    let backend = state.backends.get(row.backend).await?;
    let id = format!("snap-{}", uuid::Uuid::new_v4().simple());
    let stored = backend.snapshot(handle, &id).await?;
    let image = if backend.snapshot_is_image() {
        Some(stored.backend_ref.clone())
    } else {
        row.image.clone()
    };
    let snapshot = SnapshotRow {
        id,
        backend: row.backend,
        image,
        source_sandbox: row.id.clone(),
        backend_ref: stored.backend_ref,
        size_bytes: stored.size_bytes,
        created_at: chrono::Utc::now(),
    };
    if let Err(e) = state.store.insert_snapshot(&snapshot).await {
        // Unrecorded, it could never be restored or deleted: remove it now.
        if let Err(e) = backend.delete_snapshot(&snapshot.backend_ref).await {
            tracing::warn!(snapshot = %snapshot.id, error = %e, "removing an unrecorded snapshot");
        }
        return Err(e.into());
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
