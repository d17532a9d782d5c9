//! The part of the shared state below sessions and triggers: what the lifecycle layer
//! (`lifecycle`, `pool`, `snapshots`, `replicas`, `metrics`) works with. [`super::AppState`]
//! holds one and derefs to it, so handlers keep writing `state.store` and pass `&state`
//! where a `&BaseState` is wanted; this file names nothing above the lifecycle layer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::credentials::CredentialBroker;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::sandbox::Backends;
use crate::store::Store;

/// Cheap to clone: everything is behind `Arc`.
#[derive(Clone)]
pub struct BaseState {
    pub config: Arc<Config>,
    pub store: Store,
    pub backends: Arc<Backends>,
    /// Grants credentials to sandboxes; `None` until a vault proxy is configured.
    pub broker: Option<Arc<dyn CredentialBroker>>,
    pub metrics: Arc<Metrics>,
    /// Sandboxes this process is provisioning right now. A delete that finds one of these
    /// leaves the backend cleanup to the provisioning task, which owns the handle.
    pub provisioning: Arc<Mutex<HashSet<String>>>,
    /// Warm pools (`pools:` in the config).
    pub pools: Arc<Pools>,
}

impl BaseState {
    pub fn new(config: Config, store: Store, backends: Backends) -> Self {
        let pools = Arc::new(Pools::new(config.pools.clone()));
        Self {
            pools,
            config: Arc::new(config),
            store,
            backends: Arc::new(backends),
            broker: None,
            metrics: Arc::new(Metrics::default()),
            provisioning: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    pub(crate) fn provisioning_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set holds plain ids; a panic elsewhere cannot leave it inconsistent.
        self.provisioning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
