//! Shared state handed to every handler and background task.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::config::{Config, MasterKey};
use crate::credentials::CredentialBroker;
use crate::metrics::Metrics;
use crate::sandbox::Backends;
use crate::store::Store;

/// Cheap to clone: everything is behind `Arc`.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub backends: Arc<Backends>,
    pub master_key: Arc<MasterKey>,
    /// Grants credentials to sandboxes; `None` until a vault proxy is configured.
    pub broker: Option<Arc<dyn CredentialBroker>>,
    pub metrics: Arc<Metrics>,
    /// Sandboxes this process is provisioning right now. A delete that finds one of these
    /// leaves the backend cleanup to the provisioning task, which owns the handle.
    pub provisioning: Arc<Mutex<HashSet<String>>>,
    /// Slack/GitHub triggers, when configured (`/hooks/*` answer 404 otherwise).
    pub triggers: Option<Arc<crate::triggers::Triggers>>,
    /// The in-process gateway and default model; `None` when no model is configured.
    pub models: Option<Arc<crate::sessions::Models>>,
    /// Claims, running loops and event followers of this process.
    pub sessions: Arc<crate::sessions::Runtime>,
    /// Warm pools (`pools:` in the config).
    pub pools: Arc<crate::pool::Pools>,
}

impl AppState {
    pub fn new(config: Config, store: Store, backends: Backends, master_key: MasterKey) -> Self {
        let pools = Arc::new(crate::pool::Pools::new(config.pools.clone()));
        Self {
            pools,
            config: Arc::new(config),
            store,
            backends: Arc::new(backends),
            master_key: Arc::new(master_key),
            broker: None,
            metrics: Arc::new(Metrics::default()),
            provisioning: Arc::new(Mutex::new(HashSet::new())),
            triggers: None,
            models: None,
            sessions: Arc::new(crate::sessions::Runtime::default()),
        }
    }

    pub fn with_models(mut self, models: crate::sessions::Models) -> Self {
        self.models = Some(Arc::new(models));
        self
    }

    pub fn with_broker(mut self, broker: Arc<dyn CredentialBroker>) -> Self {
        self.broker = Some(broker);
        self
    }

    pub(crate) fn provisioning_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set holds plain ids; a panic elsewhere cannot leave it inconsistent.
        self.provisioning
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
