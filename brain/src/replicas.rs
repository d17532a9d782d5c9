//! Replica liveness (issue 12, DESIGN.md "Storage": a replica never touches another live
//! replica's sandboxes). Each brain process registers in `replicas` and renews its lease on the
//! database clock every third of `sessions.lease_seconds`; after each renewal it takes over
//! the sandboxes of replicas whose lease lapsed over a lease ago ([`lifecycle::adopt_orphans`];
//! the grace keeps a database outage, which lapses every lease, from handing live replicas'
//! sandboxes to whoever reconnects first). A clean stop ends the lease at once (to 0), so
//! survivors adopt without waiting.

use std::time::Duration;

use tokio::sync::watch;

use crate::lifecycle;
use crate::state::AppState;
use crate::store::StoreError;

/// The replica lease, in milliseconds: the sessions lease (a replica whose session leases
/// lapsed is treated as gone by both).
pub fn lease_ms(state: &AppState) -> i64 {
    i64::try_from(state.config.sessions.lease_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Registers this replica before it reconciles anything. On SQLite (one brain per file, under
/// a lock) every other registered replica is a dead predecessor: their leases end now.
pub async fn register(state: &AppState) -> Result<(), StoreError> {
    state.store.renew_replica(lease_ms(state)).await?;
    if state.store.engine() == "sqlite" {
        state.store.retire_replicas(true).await?;
    }
    tracing::info!(replica = state.store.replica(), "replica registered");
    Ok(())
}

/// Renews the lease and adopts orphans until `stop`.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let lease = Duration::from_millis(u64::try_from(lease_ms(&state)).unwrap_or(u64::MAX));
    let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(200)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = state.store.renew_replica(lease_ms(&state)).await {
            tracing::warn!(error = %e, "renewing the replica lease failed");
            continue;
        }
        if let Err(e) = lifecycle::adopt_orphans(&state).await {
            tracing::warn!(error = %e, "adopting a stopped replica's sandboxes failed");
        }
    }
}

/// Ends this replica's lease on a clean stop (after its session loops stopped), so survivors
/// adopt its sandboxes without waiting for the lease to lapse.
pub async fn retire(state: &AppState) {
    // Bounded: after a database outage this write may never get an answer.
    match tokio::time::timeout(Duration::from_secs(3), state.store.retire_replicas(false)).await {
        Ok(Ok(_)) => tracing::info!("replica lease ended; survivors adopt its sandboxes"),
        Ok(Err(e)) => tracing::warn!(error = %e, "ending the replica lease failed; it lapses"),
        Err(_) => tracing::warn!("ending the replica lease timed out; it lapses"),
    }
}

#[cfg(test)]
mod tests;
