//! Replica liveness (issue 12, DESIGN.md "Storage": a replica never touches another live
//! replica's sandboxes). Each brain process registers in `replicas` and renews its lease on the
//! database clock every third of `sessions.lease_seconds`; after each renewal it takes over
//! the sandboxes of replicas whose lease lapsed over a lease ago ([`lifecycle::adopt_orphans`];
//! the grace keeps a database outage, which lapses every lease, from handing live replicas'
//! sandboxes to whoever reconnects first). A clean stop ends the lease at once (to 0), so
//! survivors adopt without waiting.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::lifecycle;
// The lifecycle layer sees only the state below sessions (an `AppState` derefs to it).
use crate::state::base::BaseState as AppState;
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

/// Renews the lease and adopts orphans until `stop`. The two run side by side: an adoption
/// (health checks with pauses, backend destroys on a loaded host) must never hold up a
/// renewal, or a live replica's lease lapses while it is busy and a peer takes over the
/// sandboxes it is provisioning.
pub async fn run(state: AppState, stop: watch::Receiver<bool>) {
    let lease = Duration::from_millis(u64::try_from(lease_ms(&state)).unwrap_or(u64::MAX));
    let period = (lease / 3).max(Duration::from_millis(200));
    // `Some(t)`: every renewal since `t` succeeded (registration at start counts).
    let (healthy_tx, healthy_rx) = watch::channel(Some(Instant::now()));
    let renewals = renew_until_stopped(state.clone(), stop.clone(), period, healthy_tx);
    let adoptions = adopt_until_stopped(state, stop, period, lease, healthy_rx);
    tokio::join!(renewals, adoptions);
}

async fn renew_until_stopped(
    state: AppState,
    mut stop: watch::Receiver<bool>,
    period: Duration,
    healthy: watch::Sender<Option<Instant>>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        // Bounded: a renewal that cannot finish within a period is as good as failed, and the
        // next tick must be free to try again on a fresh connection.
        let renewed =
            match tokio::time::timeout(period, state.store.renew_replica(lease_ms(&state))).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "renewing the replica lease failed");
                    false
                }
                Err(_) => {
                    tracing::warn!("renewing the replica lease timed out");
                    false
                }
            };
        healthy.send_if_modified(|since| match (renewed, *since) {
            (true, None) => {
                *since = Some(Instant::now());
                true
            }
            (false, Some(_)) => {
                *since = None;
                true
            }
            _ => false,
        });
    }
}

async fn adopt_until_stopped(
    state: AppState,
    mut stop: watch::Receiver<bool>,
    period: Duration,
    lease: Duration,
    healthy: watch::Receiver<Option<Instant>>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if !may_adopt(*healthy.borrow(), Instant::now(), lease) {
            continue;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            result = adopt_once(&state) => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "adopting a stopped replica's sandboxes failed");
                }
            }
        }
    }
}

/// Takes over what stopped replicas left: their sandboxes, then their unfinished snapshots
/// (`snapshots::reconcile` lists the backends' snapshots only when there were some, or
/// when sandboxes were adopted: a stopped replica may have died mid-snapshot either way).
async fn adopt_once(state: &AppState) -> Result<(), lifecycle::LifecycleError> {
    let adopted = lifecycle::adopt_orphans(state).await?;
    if adopted > 0 || state.store.has_orphan_snapshots(lease_ms(state)).await? {
        crate::snapshots::reconcile(state).await?;
    }
    Ok(())
}

/// Whether this replica may judge others dead: only after its own renewals have succeeded for
/// a whole lease. After an outage (or a stall of this process) every peer's lease looks lapsed
/// at once, and a peer that reconnects a moment later than this one is alive, not gone; one
/// lease of our own good renewals gives every live peer the time to renew too.
fn may_adopt(healthy_since: Option<Instant>, now: Instant, lease: Duration) -> bool {
    healthy_since.is_some_and(|since| now.saturating_duration_since(since) >= lease)
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

#[cfg(test)]
mod gate_tests {
    use super::*;

    #[test]
    fn no_adoption_until_a_whole_lease_of_good_renewals() {
        let lease = Duration::from_secs(3);
        let t0 = Instant::now();
        assert!(!may_adopt(None, t0 + lease * 10, lease), "renewals failing");
        assert!(!may_adopt(Some(t0), t0, lease), "just recovered");
        assert!(!may_adopt(Some(t0), t0 + lease / 2, lease));
        assert!(may_adopt(Some(t0), t0 + lease, lease));
    }
}
