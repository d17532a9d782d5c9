//! Airlock brain: sessions, the HTTP API and sandbox backends.
//!
//! Entry point: [`run`] takes a loaded [`config::Config`], the master key, a bound listener and
//! a shutdown future; `main.rs` only parses flags and binds.

pub mod api;
pub mod approvals;
pub mod audit_heads;
pub mod cli;
pub mod code_interpreter;
pub mod config;
pub mod credentials;
pub mod error;
#[cfg(test)]
mod layering;
pub mod lifecycle;
pub mod mcp;
pub mod metrics;
pub mod pool;
pub mod replicas;
pub mod sandbox;
pub mod sessions;
pub mod snapshots;
pub mod state;
pub mod store;
pub mod triggers;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use api::app;
pub use state::AppState;

use config::{Config, MasterKey, VaultMode};

/// After shutdown is requested, how long in-flight requests (a streaming exec) may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long destroying the warm pools' sandboxes may take on shutdown.
const POOL_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each last shutdown write (gateway spend, closing the store) may take.
const SHUTDOWN_STEP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("opening the database: {0}")]
    Store(#[from] store::StoreError),
    #[error("starting the sandbox backend: {0}")]
    Backend(#[from] sandbox::BackendError),
    #[error("reconciling sandboxes after start: {0}")]
    Reconcile(#[from] lifecycle::LifecycleError),
    #[error("vault proxy: {0}")]
    Vault(String),
    #[error("triggers: {0}")]
    Triggers(#[from] triggers::TriggerSetupError),
    #[error("models: {0}")]
    Models(String),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

/// Installs `ring` as rustls' process-wide provider (reqwest is built without one). Safe to
/// call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens the store, starts the default backend, reconciles sandboxes left by an earlier run,
/// then serves until `shutdown` resolves. Sandboxes are left running on shutdown; the next
/// start adopts them.
pub async fn run(
    config: Config,
    master_key: MasterKey,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    install_crypto_provider();
    // Held until `run` returns: a second brain on the same SQLite file refuses to start.
    let _sqlite_lock = store::lock_sqlite_file(&config.database_url)?;
    let store = store::Store::connect(&config.database_url).await?;
    tracing::info!(
        database = store.engine(),
        owner = store.owner(),
        "store ready"
    );
    let mut config = config;
    let (broker, embedded) = start_vault(&mut config, &store).await?;
    let backends = sandbox::Backends::start(config.backend, config.sandbox.clone()).await?;
    tracing::info!(backend = %backends.default_kind(), "default sandbox backend ready");
    let models = sessions::Models::build(&config.models, &config.state_dir(), &store, &master_key)
        .await
        .map_err(RunError::Models)?;
    let mut state = AppState::new(config, store, backends, master_key);
    if let Some(broker) = broker {
        state = state.with_broker(broker);
    }
    match models {
        Some(models) => {
            tracing::info!(default_model = %models.default_model, "models ready");
            state = state.with_models(models);
        }
        None => tracing::warn!("no models configured: POST /v1/sessions answers 503"),
    }
    replicas::register(&state).await?;
    if let Some(models) = &state.models
        && state.config.code_interpreter.enabled
    {
        models.gateway.enable_code_interpreter_with(
            code_interpreter::BrainHost::new(state.clone()),
            state.config.code_interpreter.settings(),
        );
    }
    lifecycle::reconcile(&state).await?;
    for backend in state.backends.built().await {
        backend.warm_up(state.store.owner());
    }
    // After the sandboxes: a dead brain's snapshot helpers are sandboxes too.
    snapshots::reconcile(&state).await?;
    if state.store.engine() == "sqlite" {
        // One brain per SQLite file: every claim left in it belongs to a dead process.
        let released = state.store.release_claims(None).await?;
        if released > 0 {
            tracing::info!(sessions = released, "resuming sessions of the previous run");
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let reaper = tokio::spawn(lifecycle::reaper(state.base.clone(), stop_rx.clone()));
    let replica = tokio::spawn(replicas::run(state.base.clone(), stop_rx.clone()));
    if let Some(broker) = &state.broker {
        tokio::spawn(audit_heads::run(
            broker.clone(),
            state.store.clone(),
            state.config.vault.audit_head_interval(),
            stop_rx.clone(),
        ));
    }
    let trigger_workers = start_triggers(&mut state, stop_rx.clone())?;
    let dispatcher = tokio::spawn(sessions::dispatcher(state.clone(), stop_rx.clone()));
    // Refills the warm pools; drains them once shutdown is requested.
    let pools = tokio::spawn(pool::run(state.base.clone(), stop_rx.clone()));
    let stop_requested = Arc::new(std::sync::OnceLock::new());
    let requested = stop_requested.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = requested.set(Instant::now());
        tracing::info!(
            "shutdown requested: no new connections; sandboxes stay running for adoption"
        );
        let _ = stop_tx.send(true);
    });

    let mut graceful_rx = stop_rx.clone();
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|stop| *stop).await;
    });
    let mut deadline_rx = stop_rx;
    tokio::select! {
        result = server => result?,
        _ = async {
            let _ = deadline_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => tracing::warn!("in-flight requests did not finish in {DRAIN_TIMEOUT:?}; exiting"),
    }
    // Each step logs when it ended (ms since the stop was requested), so a slow stop shows
    // where its time went.
    let step = |name: &'static str| {
        let elapsed = stop_requested
            .get()
            .map(Instant::elapsed)
            .unwrap_or_default();
        tracing::info!(
            step = name,
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "shutdown step done"
        );
    };
    step("http server drained");
    // The workers stopped when the flag flipped; they end side by side, each bounded (a query
    // on a connection an outage dropped has no end of its own). The session loops go first
    // in the dispatcher (dropped as a crash would be, claims released for the next brain).
    let loops = async {
        let _ = dispatcher.await;
        step("session loops stopped, claims released");
    };
    let reaper = async {
        if tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, reaper)
            .await
            .is_err()
        {
            tracing::warn!(
                "the reaper's pass took over {SHUTDOWN_STEP_TIMEOUT:?}; exiting without it"
            );
        }
        step("reaper stopped");
    };
    let pools = async {
        if tokio::time::timeout(POOL_DRAIN_TIMEOUT, pools)
            .await
            .is_err()
        {
            tracing::warn!(
                "draining the warm pools took over {POOL_DRAIN_TIMEOUT:?}; the next start finishes it"
            );
        }
        step("warm pools drained");
        // After the pools: a pool fill that was still running may have taken a spare.
        for backend in state.backends.built().await {
            if tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, backend.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(backend = %backend.kind(), "backend shutdown took over {SHUTDOWN_STEP_TIMEOUT:?}; the next start sweeps the rest");
            }
        }
        step("backends shut down");
    };
    let triggers = async {
        // Outbox pass and the hand-over of owed replies and webhook events.
        let all = futures_util::future::join_all(trigger_workers);
        if tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, all)
            .await
            .is_err()
        {
            tracing::warn!(
                "the trigger workers took over {SHUTDOWN_STEP_TIMEOUT:?} to stop; their leases lapse"
            );
        }
        step("trigger workers stopped");
    };
    tokio::join!(loops, reaper, pools, triggers);
    // The last writes, side by side, each bounded. What they did not write is what a crash
    // would lose, and the next start (or a surviving replica) recovers from that. The replica
    // lease ends only now: its sandboxes are no longer in use by a loop here.
    let retire = async {
        let _ = tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, replica).await;
        if tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, replicas::retire(&state))
            .await
            .is_err()
        {
            tracing::warn!(
                "ending this replica's lease took over {SHUTDOWN_STEP_TIMEOUT:?}; it lapses instead"
            );
        }
        step("replica lease ended");
    };
    let spend = async {
        if let Some(models) = &state.models
            && tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, models.gateway.flush())
                .await
                .is_err()
        {
            tracing::warn!(
                "flushing gateway spend took over {SHUTDOWN_STEP_TIMEOUT:?}; exiting without it"
            );
        }
        step("gateway spend flushed");
    };
    let vault = async {
        if let Some(vault) = embedded {
            vault.shutdown().await;
        }
        // The last head, so a tail cut while the brain is down is caught too.
        if let Some(broker) = &state.broker
            && let Ok(Err(e)) = tokio::time::timeout(
                SHUTDOWN_STEP_TIMEOUT,
                audit_heads::record(broker.as_ref(), &state.store),
            )
            .await
        {
            tracing::warn!(error = %e, "recording the final audit head failed");
        }
        step("vault stopped, audit head recorded");
    };
    tokio::join!(retire, spend, vault);
    if tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, state.store.close())
        .await
        .is_err()
    {
        tracing::warn!("closing the store took over {SHUTDOWN_STEP_TIMEOUT:?}; exiting without it");
    }
    step("store closed");
    Ok(())
}

/// Builds the Slack/GitHub triggers when configured and starts their workers (the reply
/// outbox, the owed replies and webhook events); returns the workers to await on shutdown.
fn start_triggers(
    state: &mut AppState,
    stop: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, RunError> {
    let config = &state.config.triggers;
    let Some(choice) = config.launcher.filter(|_| config.any()) else {
        return Ok(Vec::new());
    };
    let launcher = triggers::build_launcher(state, choice);
    let built = Arc::new(triggers::Triggers::from_config(config, launcher, |n| {
        std::env::var(n).ok()
    })?);
    state.triggers = Some(built.clone());
    tracing::info!(
        slack = built.slack.is_some(),
        github = built.github.is_some(),
        "webhook triggers ready"
    );
    // Owed replies: renew ours, take over those a stopped brain left (waits.rs).
    let waits = tokio::spawn(triggers::waits::run(
        state.clone(),
        built.clone(),
        stop.clone(),
    ));
    // Pending egress approvals of Slack-started sessions, posted in their threads.
    if built.slack.is_some() {
        tokio::spawn(ui::slack::notify(
            state.clone(),
            built.clone(),
            stop.clone(),
        ));
    }
    // … and of GitHub-started sessions, commented on their issues.
    if built.github.is_some() {
        tokio::spawn(triggers::github_approvals::notify(
            state.clone(),
            built.clone(),
            stop.clone(),
        ));
    }
    let outbox = tokio::spawn(triggers::outbox::run(state.clone(), built, stop));
    Ok(vec![waits, outbox])
}

type StartedVault = (
    Option<Arc<dyn credentials::CredentialBroker>>,
    Option<Arc<credentials::vault::EmbeddedVault>>,
);

/// Starts (embedded) or connects to (remote) the vault proxy per `config.vault`, and points
/// the docker backend's egress at it unless `sandbox.docker.egress_upstream` is set.
async fn start_vault(config: &mut Config, store: &store::Store) -> Result<StartedVault, RunError> {
    use credentials::vault::{self, EmbeddedVault, RemoteVault};
    let (broker, embedded, proxy_addr): (Arc<dyn credentials::CredentialBroker>, _, String) =
        match config.vault.mode {
            VaultMode::Off => {
                tracing::warn!(
                    "vault.mode off: sandboxes get no credentials and docker sandboxes no egress"
                );
                return Ok((None, None));
            }
            VaultMode::Embedded => {
                let proxy_config = vault::load_embedded_config(
                    config.vault.config.as_deref(),
                    &config.state_dir(),
                )
                .map_err(RunError::Vault)?;
                // Grants of sandboxes an earlier run left alive (adopted by reconcile).
                let rows = store.list_unfinished().await?;
                let restore = vault::grants_to_restore(
                    rows.iter()
                        .filter(|r| r.status == store::SandboxStatus::Running)
                        .filter_map(|r| Some((r.handle.as_ref()?, r.session_id.as_deref()))),
                );
                let vault = Arc::new(
                    EmbeddedVault::start(proxy_config, restore)
                        .await
                        .map_err(RunError::Vault)?,
                );
                let addr = vault.proxy_addr().to_string();
                tracing::info!(proxy = %addr, tls_proxy = %vault.tls_proxy_addr().unwrap_or("-"),
                    "embedded vault proxy listening");
                let cloud = config.sandbox.e2b.proxy_url.is_some()
                    || config.sandbox.daytona.proxy_url.is_some();
                if cloud && vault.tls_proxy_addr().is_none() {
                    tracing::warn!(
                        "sandbox.e2b/daytona.proxy_url is set but the embedded vault has no TLS \
                         listener (`tls` + `listen_tls` in its vault.yaml): E2B and Daytona \
                         sandboxes with a vault grant are refused"
                    );
                }
                (vault.clone(), Some(vault), addr)
            }
            VaultMode::Remote => {
                let remote = config.vault.remote.clone().ok_or_else(|| {
                    RunError::Vault("vault.mode remote needs vault.remote".into())
                })?;
                let vault = RemoteVault::connect(&remote, |n| std::env::var(n).ok())
                    .await
                    .map_err(RunError::Vault)?;
                tracing::info!(proxy = %remote.url, admin = %remote.admin_url, "using a remote vault proxy");
                (Arc::new(vault), None, remote.url)
            }
        };
    if config.sandbox.docker.egress_upstream.is_none() {
        config.sandbox.docker.egress_upstream = Some(proxy_addr);
    }
    Ok((Some(broker), embedded))
}
