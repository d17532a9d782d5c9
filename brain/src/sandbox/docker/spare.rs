//! Spare sandbox networks: a few empty internal networks made ahead of time, so a provision
//! skips the network create (tens of milliseconds of engine work on the cold path).
//!
//! Isolation is unchanged: a spare is made exactly like a sandbox's own network
//! ([`DockerBackend::create_network`]), holds nothing until one sandbox takes it, is taken
//! by exactly one sandbox (popped under the lock) and is removed with that sandbox, never
//! returned. So every sandbox still has a network no other sandbox was ever on.
//!
//! Bookkeeping, so none leaks:
//! - labels `airlock.owner=<owner>`, [`SPARE_LABEL`]`=<instance>` (random per backend, i.e.
//!   per brain process) and [`SPARE_PID_LABEL`]`=<pid>`;
//! - a sandbox's container records the spare it took in [`NETWORK_LABEL`], so removing the
//!   sandbox by label (no handle, after a crash) removes its network too;
//! - graceful shutdown ([`SandboxBackend::shutdown`]) removes the spares still free;
//! - after a crash, the next brain's label sweep lists the spares of other instances
//!   ([`DockerBackend::list_labelled`]) and removes them with a plain remove, which the engine
//!   refuses for a network with a container on it: a spare already taken by a sandbox stays
//!   until that sandbox is destroyed.
//!
//! Fills run one network at a time, after a provision has finished (never alongside the one
//! that took the spare), and at start ([`SandboxBackend::warm_up`]). A warm pool's fills
//! ([`SandboxBackend::provision_for_pool`]) neither take spares nor refill them: nobody waits
//! on those, and a spare refill would run next to the claims the pool serves.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;

/// Label on a spare network: the instance (brain process) that made it.
pub const SPARE_LABEL: &str = "airlock.spare";
/// Label on a spare network: the pid of the brain that made it (test harnesses that kill a
/// brain remove its spares by this).
pub const SPARE_PID_LABEL: &str = "airlock.spare.pid";
/// Label on a sandbox's container: the id of the spare network it took.
pub const NETWORK_LABEL: &str = "airlock.network";
/// Prefix of [`LabelledSandbox::backend_ref`] for a spare network left by another instance.
pub(super) const SPARE_REF_PREFIX: &str = "spare:";
/// How long [`DockerBackend::drain_spares`] waits for a fill in flight.
const FILL_WAIT: Duration = Duration::from_secs(10);

/// A free spare network.
#[derive(Debug, Clone)]
pub(super) struct Spare {
    pub(super) id: String,
    pub(super) name: String,
}

#[derive(Debug, Default)]
struct SpareState {
    /// The owner the spares are labelled with (set by the first fill); a sandbox of another
    /// owner gets a network of its own, so the sweep of each owner sees only its own.
    owner: Option<String>,
    ready: VecDeque<Spare>,
    filling: bool,
    closed: bool,
}

/// The spare networks of one backend (shared by its clones).
#[derive(Debug)]
pub(super) struct SpareNetworks {
    size: usize,
    instance: String,
    state: Mutex<SpareState>,
}

impl SpareNetworks {
    pub(super) fn new(size: usize) -> Self {
        Self {
            size,
            instance: format!("{:016x}", rand::random::<u64>()),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpareState> {
        // Plain bookkeeping: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn instance(&self) -> &str {
        &self.instance
    }

    /// Free spares (tests).
    #[cfg(test)]
    pub(super) fn ready(&self) -> Vec<Spare> {
        self.lock().ready.iter().cloned().collect()
    }

    /// Whether a fill runs (tests).
    #[cfg(test)]
    pub(super) fn filling(&self) -> bool {
        self.lock().filling
    }

    /// Takes one free spare for a sandbox of `owner`, if there is one.
    pub(super) fn take(&self, owner: &str) -> Option<Spare> {
        let mut state = self.lock();
        if state.closed || state.owner.as_deref() != Some(owner) {
            return None;
        }
        state.ready.pop_front()
    }
}

impl DockerBackend {
    /// Starts filling the spares up to `spare_networks` for `owner`, unless a fill runs, the
    /// backend shut down, or the spares belong to another owner. Returns at once.
    pub(super) fn refill_spares(&self, owner: &str) {
        let spares = &self.spares;
        {
            let mut state = spares.lock();
            if spares.size == 0 || state.closed || state.filling {
                return;
            }
            match &state.owner {
                Some(o) if o != owner => return,
                Some(_) => {}
                None => state.owner = Some(owner.to_string()),
            }
            if state.ready.len() >= spares.size {
                return;
            }
            state.filling = true;
        }
        let this = self.clone();
        let owner = owner.to_string();
        tokio::spawn(async move {
            this.fill_spares(&owner).await;
            this.spares.lock().filling = false;
        });
    }

    async fn fill_spares(&self, owner: &str) {
        loop {
            {
                let state = self.spares.lock();
                if state.closed || state.ready.len() >= self.spares.size {
                    return;
                }
            }
            let name = format!(
                "{}spare-{:016x}",
                self.config.network_prefix,
                rand::random::<u64>()
            );
            let labels = HashMap::from([
                (OWNER_LABEL.to_string(), owner.to_string()),
                (SPARE_LABEL.to_string(), self.spares.instance.clone()),
                (SPARE_PID_LABEL.to_string(), std::process::id().to_string()),
            ]);
            let created = match self.create_network(&name, &labels).await {
                Ok(created) => created,
                Err(e) => {
                    tracing::warn!(error = %e, "creating a spare sandbox network failed");
                    return;
                }
            };
            let spare = Spare {
                id: created.id,
                name,
            };
            let closed = {
                let mut state = self.spares.lock();
                if !state.closed {
                    state.ready.push_back(spare.clone());
                }
                state.closed
            };
            if closed {
                self.remove_spare(&spare.id).await.ok();
                return;
            }
            tracing::debug!(network = %spare.name, "spare sandbox network ready");
        }
    }

    /// Stops filling and removes every free spare (waits for a fill in flight first).
    pub(super) async fn drain_spares(&self) {
        let waited = Instant::now();
        loop {
            {
                let mut state = self.spares.lock();
                state.closed = true;
                if !state.filling {
                    break;
                }
            }
            if waited.elapsed() > FILL_WAIT {
                tracing::warn!("a spare network fill is still running; the next start sweeps it");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let free: Vec<Spare> = self.spares.lock().ready.drain(..).collect();
        let removals = free.iter().map(|s| self.remove_spare(&s.id));
        for (spare, result) in free
            .iter()
            .zip(futures_util::future::join_all(removals).await)
        {
            if let Err(e) = result {
                tracing::warn!(network = %spare.name, error = %e, "removing a spare network failed");
            }
        }
        if !free.is_empty() {
            tracing::info!(networks = free.len(), "spare sandbox networks removed");
        }
    }

    /// Removes a spare network unless a container is on it (then its sandbox's destroy
    /// removes it): a plain remove, which the engine refuses for a network in use. Never
    /// disconnects anything.
    pub(super) async fn remove_spare(&self, network: &str) -> Result<(), BackendError> {
        match self.docker.remove_network(network).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) if e.to_string().contains("active endpoints") => {
                tracing::debug!(network, "spare network in use; left for its sandbox");
                Ok(())
            }
            Err(e) => Err(engine("remove spare network", e)),
        }
    }

    /// Spare networks made by other instances (earlier brain processes, other replicas on
    /// this engine), for the label sweep.
    pub(super) async fn foreign_spares(&self) -> Result<Vec<LabelledSandbox>, BackendError> {
        let filter = HashMap::from([("label".to_string(), vec![SPARE_LABEL.to_string()])]);
        let networks = self.networks_with(&filter).await?;
        Ok(networks
            .into_iter()
            .filter_map(|n| {
                let labels = n.labels.unwrap_or_default();
                if labels.get(SPARE_LABEL).map(String::as_str) == Some(self.spares.instance()) {
                    return None;
                }
                Some(LabelledSandbox {
                    id: n.name?,
                    owner: labels.get(OWNER_LABEL).cloned(),
                    backend_ref: format!("{SPARE_REF_PREFIX}{}", n.id?),
                })
            })
            .collect())
    }
}
