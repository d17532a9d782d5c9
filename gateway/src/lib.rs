//! Airlock's LLM gateway: a LiteLLM-compatible proxy (OpenAI and Anthropic
//! wire formats, translation between them, streaming, virtual keys, budgets,
//! spend, retries and fallbacks), usable in-process by the brain or as the
//! standalone `gateway` binary.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = gateway::config::Config::load(std::path::Path::new("config.yaml"))?;
//! let store = gateway::store::Store::connect("sqlite://gateway.db").await?;
//! let gw = gateway::Gateway::from_config(cfg, store).await?;
//! let app: axum::Router = gw.router();           // or gw.routes::<MyState>() to merge
//! let answer = gw.chat(gateway::canonical::ChatRequest {
//!     model: "demo".into(),
//!     messages: vec![gateway::canonical::Message::user("hi")],
//!     ..Default::default()
//! }, None).await?;
//! # let _ = (app, answer); Ok(()) }
//! ```

pub mod alloc;
pub mod api;
pub mod canonical;
pub mod code_interpreter;
pub mod config;
pub mod error;
pub mod fallbacks;
pub mod formats;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod params;
pub mod pricing;
pub mod prom;
pub mod providers;
mod proxy;
pub mod routing;
pub mod spin;
pub mod sse;
pub mod store;

use crate::canonical::{ChatRequest, ChatResponse, StreamCollector};
use crate::config::{Config, ConfigError};
use crate::error::{GatewayError, ProviderError};
use crate::keys::{Caller, Keys};
use crate::providers::{CallOpts, EventStream};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use tracing::Instrument;

/// The maps the request path touches (keys by token hash, rate windows, in-flight counts,
/// per-model metrics, model groups): std's SipHash cost ~1k instructions per lookup of a
/// 64-character token hash, five to eight times a request (callgrind). foldhash is seeded per
/// process; these maps hold only names from the config and hashes of stored keys.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Errors from building a gateway.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pricing(#[from] pricing::PricingError),
}

pub(crate) struct Inner {
    pub(crate) router: routing::Router,
    pub(crate) keys: Arc<Keys>,
    pub(crate) warnings: Vec<String>,
    pub(crate) metrics: metrics::Metrics,
    /// Code interpreter interception, when a sandbox host is known (the brain
    /// in-process, or `code_interpreter.brain_url`).
    pub(crate) code_interpreter: std::sync::OnceLock<Arc<code_interpreter::CodeInterpreter>>,
    /// `code_interpreter:` bounds from the config (applied to whichever host is set).
    pub(crate) code_interpreter_settings: code_interpreter::Settings,
    /// `litellm_settings.include_cost_in_streaming_usage`: streams carry `usage.cost`.
    pub(crate) cost_in_stream_usage: bool,
}

/// The gateway: cheap to clone, shares one state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// What the in-process API accepts: canonical requests or OpenAI-shaped JSON.
#[derive(Debug, Clone)]
pub enum ChatInput {
    /// Boxed: a request is large next to a JSON value, and moved once per call.
    Canonical(Box<ChatRequest>),
    OpenAi(serde_json::Value),
}

impl From<ChatRequest> for ChatInput {
    fn from(r: ChatRequest) -> Self {
        ChatInput::Canonical(Box::new(r))
    }
}
impl From<serde_json::Value> for ChatInput {
    fn from(v: serde_json::Value) -> Self {
        ChatInput::OpenAi(v)
    }
}

impl Gateway {
    /// Build from a parsed config and a store (migrated here; keys loaded into memory).
    pub async fn from_config(mut cfg: Config, store: Store) -> Result<Gateway, InitError> {
        let prices = pricing::init()?;
        // An unpriced model is said at startup, not discovered as a silent $0 later.
        for e in &cfg.model_list {
            if e.input_cost_per_token.is_none()
                && e.output_cost_per_token.is_none()
                && !e.model.contains('*')
                && !matches!(e.provider, config::ProviderKind::Scripted(_))
                && {
                    let (p, m) = pricing::priced_name(
                        pricing::provider_prefix(&e.provider),
                        &e.model,
                        e.model_info.as_ref(),
                    );
                    prices.find(p, m).is_none()
                }
            {
                let w = format!(
                    "model_list `{}`: no price for `{}` in the price table; its spend counts as $0 \
                     and keys with a budget are refused for it (set litellm_params.input_cost_per_token/\
                     output_cost_per_token, or {})",
                    e.model_name,
                    e.model,
                    pricing::COST_MAP_ENV
                );
                tracing::warn!("{w}");
                cfg.warnings.push(w);
            }
        }
        store.migrate().await?;
        let client = providers::http_client();
        let router = routing::Router::new(&cfg, &client)?;
        // LITELLM_MASTER_KEY when the config names none (the config side may also apply it).
        let master = cfg
            .master_key
            .as_ref()
            .map(|s| s.expose().to_owned())
            .or_else(|| {
                std::env::var("LITELLM_MASTER_KEY")
                    .ok()
                    .filter(|k| !k.is_empty())
            });
        let keys = Keys::load_with(master, store, cfg.apply_user_budget_to_team_keys).await?;
        let metrics = metrics::Metrics::new(
            cfg.model_list.iter().map(|e| e.model_name.as_str()),
            router.counters.clone(),
        );
        let mut ci_settings = code_interpreter::Settings::default();
        let ci_host = match &cfg.code_interpreter {
            None => None,
            Some(c) => {
                if let Some(n) = c.max_iterations {
                    ci_settings.max_iterations = (n as usize).max(1);
                }
                if let Some(s) = c.idle_ttl_seconds {
                    ci_settings.idle_ttl = std::time::Duration::from_secs(s.max(1));
                }
                if let Some(s) = c.exec_timeout_seconds {
                    ci_settings.exec_timeout = std::time::Duration::from_secs(s.max(1));
                }
                match (&c.brain_url, &c.key) {
                    (Some(url), Some(key)) => {
                        Some(Arc::new(code_interpreter::http_host::BrainHttp::new(
                            url,
                            key.expose().to_owned(),
                            client.clone(),
                        ))
                            as Arc<dyn code_interpreter::SandboxHost>)
                    }
                    _ => None,
                }
            }
        };
        let gw = Gateway {
            inner: Arc::new(Inner {
                router,
                keys,
                warnings: cfg.warnings,
                metrics,
                code_interpreter: std::sync::OnceLock::new(),
                code_interpreter_settings: ci_settings,
                cost_in_stream_usage: cfg.include_cost_in_streaming_usage,
            }),
        };
        if let Some(host) = ci_host {
            gw.enable_code_interpreter(host);
        }
        Ok(gw)
    }

    /// Serve `code_interpreter` tools with sandboxes from `host` (the brain
    /// passes its own backends). Only the first call takes effect.
    pub fn enable_code_interpreter(&self, host: Arc<dyn code_interpreter::SandboxHost>) {
        let ci = code_interpreter::CodeInterpreter::new(
            host,
            self.inner.code_interpreter_settings.clone(),
        );
        let _ = self.inner.code_interpreter.set(ci);
    }

    /// Override the `code_interpreter` bounds (the brain's own config section).
    pub fn enable_code_interpreter_with(
        &self,
        host: Arc<dyn code_interpreter::SandboxHost>,
        settings: code_interpreter::Settings,
    ) {
        let _ = self
            .inner
            .code_interpreter
            .set(code_interpreter::CodeInterpreter::new(host, settings));
    }

    /// All HTTP routes, ready to serve (with `/metrics`).
    pub fn router(&self) -> axum::Router {
        self.routes().merge(api::metrics_routes(self.inner.clone()))
    }

    /// What the standalone server serves: [`Gateway::router`] with the hot model-call routes
    /// dispatched ahead of it (see `api::HotRoutes`). `into_make_service` builds the route
    /// table once, not per connection (~9 kB each, heaptrack).
    fn serving_service(&self) -> axum::routing::IntoMakeService<api::HotRoutes> {
        use axum::ServiceExt;
        api::HotRoutes::new(self.inner.clone(), self.router()).into_make_service()
    }

    /// The same routes for any outer state, to `merge` into another app; `/metrics` is
    /// left to that app, which can include [`Gateway::metrics_text`].
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        api::routes(self.inner.clone())
    }

    /// The gateway's counters in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        api::health::metrics_text(&self.inner)
    }

    /// Config warnings (unknown keys, unsupported strategies).
    pub fn warnings(&self) -> &[String] {
        &self.inner.warnings
    }

    pub fn keys(&self) -> &Arc<Keys> {
        &self.inner.keys
    }

    /// Wait until all spend recorded so far is persisted.
    pub async fn flush(&self) {
        self.inner.keys.flush().await
    }

    async fn caller(&self, key: Option<&str>) -> Result<Caller, GatewayError> {
        match key {
            // In-process callers (the brain) are trusted.
            None => Ok(Caller::Master),
            Some(k) => self.inner.keys.authenticate(Some(k)).await,
        }
    }

    fn canonical(input: ChatInput) -> Result<ChatRequest, GatewayError> {
        match input {
            ChatInput::Canonical(r) => Ok(*r),
            ChatInput::OpenAi(v) => formats::openai::decode_request(&v),
        }
    }

    /// One model call without an HTTP hop: routing, retries, fallbacks, budgets
    /// and spend as for HTTP callers. `key` = a virtual or master key, or `None`
    /// for a trusted in-process caller.
    pub async fn chat(
        &self,
        input: impl Into<ChatInput>,
        key: Option<&str>,
    ) -> Result<ChatResponse, GatewayError> {
        let caller = self.caller(key).await?;
        let req = Self::canonical(input.into())?;
        caller.check(&req.model)?;
        let (_rate, parallel) = self.inner.keys.admit(&caller)?;
        let parallel = parallel.map(Arc::new);
        let parallel = &parallel;
        let inner = &self.inner;
        let (req, caller) = (&req, &caller);
        // A child of the caller's span (the brain's model call, or the HTTP request's);
        // not even created when tracing is off.
        let span = if airlock_telemetry::tracing_enabled() {
            tracing::info_span!(
                target: airlock_telemetry::TARGET,
                "gateway.chat",
                "gen_ai.request.model" = %req.model,
                "gen_ai.response.model" = tracing::field::Empty,
                "gen_ai.usage.input_tokens" = tracing::field::Empty,
                "gen_ai.usage.output_tokens" = tracing::field::Empty,
                "error.type" = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let result = inner
            .router
            .execute(&req.model, move |flight, group| async move {
                let dep = flight.deployment().clone();
                let upstream = dep.upstream_for(&req.model, &group.name).into_owned();
                let price = dep.price_for(&upstream);
                caller
                    .check_priced(&upstream, &price)
                    .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
                let mut guard = proxy::SpendGuard::new(
                    inner.clone(),
                    caller.clone(),
                    flight,
                    price,
                    &upstream,
                    parallel.clone(),
                );
                let opts = CallOpts {
                    model: &upstream,
                    timeout: dep.timeout,
                    idle_timeout: dep.idle_timeout,
                    anthropic_beta: None,
                };
                let policy = params::DropPolicy::new(
                    dep.drop_params,
                    &dep.additional_drop_params,
                    req.drop_params,
                );
                let prepared = params::prepare(req, dep.family, &upstream, policy)?;
                let r = if req.stream {
                    // Streamed upstream, collected here (keeps idle timeouts short for long answers).
                    use futures_util::StreamExt;
                    let mut s = dep.provider.stream(&prepared.req, opts).await?;
                    if prepared.json_mode {
                        s = params::json_mode_stream(s);
                    }
                    let mut c = StreamCollector::default();
                    while let Some(ev) = s.next().await {
                        c.push(ev?);
                    }
                    c.response
                } else {
                    let r = dep.provider.complete(&prepared.req, opts).await?;
                    match prepared.json_mode {
                        true => params::json_mode_response(r),
                        false => r,
                    }
                };
                guard.arm();
                guard.usage = r.usage;
                Ok::<_, ProviderError>(r)
            })
            .instrument(span.clone())
            .await;
        if !span.is_disabled() {
            match &result {
                Ok(r) => {
                    span.record("gen_ai.response.model", r.model.as_str());
                    span.record("gen_ai.usage.input_tokens", r.usage.input_tokens);
                    span.record("gen_ai.usage.output_tokens", r.usage.output_tokens);
                }
                Err(_) => {
                    span.record("error.type", "gateway_error");
                }
            }
        }
        result
    }

    /// Streaming variant of [`Gateway::chat`]: canonical events; spend is
    /// recorded when the stream ends or is dropped.
    pub async fn chat_stream(
        &self,
        input: impl Into<ChatInput>,
        key: Option<&str>,
    ) -> Result<EventStream, GatewayError> {
        let caller = self.caller(key).await?;
        let req = Self::canonical(input.into())?;
        caller.check(&req.model)?;
        let (_rate, parallel) = self.inner.keys.admit(&caller)?;
        let parallel = parallel.map(Arc::new);
        let parallel = &parallel;
        let inner = &self.inner;
        let (req, caller) = (&req, &caller);
        inner
            .router
            .execute(&req.model, move |flight, group| async move {
                let dep = flight.deployment().clone();
                let upstream = dep.upstream_for(&req.model, &group.name).into_owned();
                let price = dep.price_for(&upstream);
                caller
                    .check_priced(&upstream, &price)
                    .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
                let mut guard = proxy::SpendGuard::new(
                    inner.clone(),
                    caller.clone(),
                    flight,
                    price,
                    &upstream,
                    parallel.clone(),
                );
                let opts = CallOpts {
                    model: &upstream,
                    timeout: dep.timeout,
                    idle_timeout: dep.idle_timeout,
                    anthropic_beta: None,
                };
                let policy = params::DropPolicy::new(
                    dep.drop_params,
                    &dep.additional_drop_params,
                    req.drop_params,
                );
                let prepared = params::prepare(req, dep.family, &upstream, policy)?;
                let mut s = dep.provider.stream(&prepared.req, opts).await?;
                if prepared.json_mode {
                    s = params::json_mode_stream(s);
                }
                Ok::<EventStream, ProviderError>(Box::pin(proxy::Recorded {
                    inner: s,
                    guard: {
                        guard.arm();
                        guard
                    },
                }))
            })
            .await
    }
}

/// Serve the gateway on `workers` threads, each running its own single-threaded runtime, until
/// `shutdown` resolves; then flush spend. The standalone binary's server.
///
/// Why not one multi-threaded runtime: a request then hops threads. The server connection's
/// task, the upstream connection's task (spawned by the client pool wherever it was created)
/// and the spend writer each ran on whichever worker took them, and every hop is a wake of
/// another thread (futex): 2.4 futex calls per request at one connection (strace), and the
/// added latency at one connection was mostly those wake-ups. Here a connection is served and
/// forwarded upstream on one thread (each thread keeps its own upstream pool, see
/// [`providers::RawClient`]); threads share only the gateway's state (keys, limits, metrics).
///
/// Connections are dealt round-robin by one acceptor. With each thread accepting from the shared
/// socket itself, whichever thread woke first could take a whole burst (a load test's 50
/// connections arrive together) and leave the others idle; that variant measured no better
/// than one multi-threaded runtime, so the split is made even instead.
///
/// `rt` is the current-thread runtime the gateway was built on: its background tasks (spend
/// writer, limit sync, key refresh) and the acceptor live there, and it serves connections too.
/// `started` runs once every thread has its runtime, before the first connection is dealt.
/// Each thread spins for `spin` after a request starts on it before it parks ([`spin`]; zero:
/// never).
pub fn run_threads(
    rt: tokio::runtime::Runtime,
    gw: Gateway,
    listener: std::net::TcpListener,
    workers: usize,
    spin: std::time::Duration,
    started: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let app = gw.serving_service();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = workers.max(1);
    let mut hand = Vec::with_capacity(workers);
    let (tx, own) = tokio::sync::mpsc::unbounded_channel();
    hand.push(tx);
    let mut threads = Vec::with_capacity(workers - 1);
    let (up_tx, up) = std::sync::mpsc::channel::<()>();
    for i in 1..workers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        hand.push(tx);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let up_tx = up_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let _ = up_tx.send(());
                drop(up_tx);
                rt?.block_on(serve_thread(Handoff { rx, local }, app, spin, async move {
                    let _ = stop.wait_for(|s| *s).await;
                }))
            })?;
        threads.push(thread);
    }
    drop(up_tx);
    // Each thread says once that its runtime is built (or failed to be); a thread that died
    // before saying so drops its sender, which ends the wait too.
    for _ in 1..workers {
        if up.recv().is_err() {
            break;
        }
    }
    started();
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(deal_connections(listener, hand, stop_rx));
        serve_thread(Handoff { rx: own, local }, app, spin, async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await
    });
    let mut result = served;
    for t in threads {
        let r = t
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("a gateway thread panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    rt.block_on(gw.flush());
    result
}

/// One serving thread's work: its dealt connections until `shutdown`, with its
/// spin-before-park task beside them (none when `spin` is zero), stopped with them.
async fn serve_thread(
    dealt: Handoff,
    app: axum::routing::IntoMakeService<api::HotRoutes>,
    spin: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let spinner = (!spin.is_zero()).then(|| tokio::spawn(spin::spin_before_park(spin)));
    let served = serve_connections(dealt, app, shutdown).await;
    if let Some(s) = spinner {
        s.abort();
    }
    served
}

/// A connection accepted on the shared socket, for the thread that will serve it.
type Dealt = (std::net::TcpStream, std::net::SocketAddr);

/// Accepts connections and deals them round-robin to the serving threads until `stop`; then
/// drops the socket, so later connections are refused rather than left unanswered.
async fn deal_connections(
    listener: tokio::net::TcpListener,
    hand: Vec<tokio::sync::mpsc::UnboundedSender<Dealt>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut next = 0usize;
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = &mut stopped => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // As axum's own accept loop: out of descriptors and the like pass.
                    tracing::debug!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        // Off this runtime's reactor; the serving thread registers it with its own.
        let Ok(tcp) = tcp.into_std() else { continue };
        if hand[next % hand.len()].send((tcp, addr)).is_err() {
            return;
        }
        next = next.wrapping_add(1);
    }
}

/// The connections dealt to one serving thread, as an axum listener.
struct Handoff {
    rx: tokio::sync::mpsc::UnboundedReceiver<Dealt>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for Handoff {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some((tcp, addr)) = self.rx.recv().await else {
                // The acceptor is gone (shutting down): nothing more comes.
                return std::future::pending().await;
            };
            match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => return (tcp, addr),
                Err(e) => tracing::debug!("registering a connection: {e}"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serve HTTP connections from `listener` on the current runtime until `shutdown` resolves
/// and the open connections have finished.
async fn serve_connections<L>(
    listener: L,
    app: axum::routing::IntoMakeService<api::HotRoutes>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr>,
{
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serve the gateway on a bound listener until `shutdown` resolves, then flush spend.
pub async fn run(
    gw: Gateway,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_connections(listener, gw.serving_service(), shutdown).await?;
    gw.flush().await;
    Ok(())
}

#[cfg(test)]
mod thread_tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    /// An OpenAI-shaped upstream that remembers the address of every connection it served.
    fn upstream() -> (SocketAddr, Arc<Mutex<HashSet<SocketAddr>>>) {
        let peers: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
        let seen = peers.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(
                move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| {
                    seen.lock().unwrap().insert(peer);
                    async {
                        axum::Json(serde_json::json!({
                            "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": "hi"}}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
                        }))
                    }
                },
            ),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let l = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                        .await
                        .unwrap();
                });
        });
        (addr, peers)
    }

    /// Connections are dealt round-robin to the serving threads and each thread forwards
    /// through its own upstream pool: six sequential client connections on three threads reach
    /// the upstream over exactly three connections (one shared pool would reuse one). Shutdown
    /// ends every thread, refuses new connections and returns.
    #[test]
    fn connections_are_dealt_to_every_thread_and_each_keeps_its_own_upstream_pool() {
        let (up, peers) = upstream();
        let yaml = format!(
            "model_list:\n  - model_name: m\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://{up}/v1\n      api_key: sk-test\n"
        );
        let cfg = Config::from_yaml_str(&yaml, std::path::Path::new(".")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let gw = rt
            .block_on(async {
                Gateway::from_config(cfg, Store::connect("memory").await.unwrap()).await
            })
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            run_threads(
                rt,
                gw,
                listener,
                3,
                spin::DEFAULT_WINDOW,
                || {},
                async move {
                    let _ = stopped.await;
                },
            )
        });
        let client_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        client_rt.block_on(async {
            for i in 0..6 {
                // A new connection each time: no client-side pooling.
                let c = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                let r = c
                    .post(format!("http://{addr}/v1/chat/completions"))
                    .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "request {i}");
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["choices"][0]["message"]["content"], "hi");
            }
        });
        assert_eq!(
            peers.lock().unwrap().len(),
            3,
            "one upstream connection per serving thread"
        );
        stop.send(()).unwrap();
        server.join().unwrap().unwrap();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the socket is closed after shutdown"
        );
    }
}
