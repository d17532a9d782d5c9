//! Shared state handed to every handler and background task.
//!
//! Two parts, by layer: [`base::BaseState`] (config, store, backends, broker, metrics, pools)
//! is all the lifecycle layer sees; [`AppState`] adds what sessions, triggers and the API
//! hold (master key, models, triggers, the sessions runtime) and derefs to its base.

pub mod base;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::config::{Config, MasterKey};
use crate::credentials::CredentialBroker;
use crate::sandbox::Backends;
use crate::store::Store;

pub use base::BaseState;

/// Cheap to clone: everything is behind `Arc`.
#[derive(Clone)]
pub struct AppState {
    /// Config, store, backends, broker, metrics, provisioning set, pools (read through
    /// `Deref`: `state.store`).
    pub base: BaseState,
    pub master_key: Arc<MasterKey>,
    /// Slack/GitHub triggers, when configured (`/hooks/*` answer 404 otherwise).
    pub triggers: Option<Arc<crate::triggers::Triggers>>,
    /// The in-process gateway and default model; `None` when no model is configured.
    pub models: Option<Arc<crate::sessions::Models>>,
    /// Claims, running loops and event followers of this process.
    pub sessions: Arc<crate::sessions::Runtime>,
}

impl Deref for AppState {
    type Target = BaseState;

    fn deref(&self) -> &BaseState {
        &self.base
    }
}

impl DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut BaseState {
        &mut self.base
    }
}

/// Handlers and middleware of the lower layers extract only what they use.
impl axum::extract::FromRef<AppState> for BaseState {
    fn from_ref(state: &AppState) -> Self {
        state.base.clone()
    }
}

/// `metrics::count_refused_webhooks` takes the metrics alone.
impl axum::extract::FromRef<AppState> for Arc<crate::metrics::Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.base.metrics.clone()
    }
}

impl AppState {
    pub fn new(config: Config, store: Store, backends: Backends, master_key: MasterKey) -> Self {
        Self {
            base: BaseState::new(config, store, backends),
            master_key: Arc::new(master_key),
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
        self.base.broker = Some(broker);
        self
    }
}
