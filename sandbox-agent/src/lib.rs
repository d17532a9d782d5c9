//! sandbox-agent: the small HTTP agent that runs inside every sandbox.
//!
//! It implements DESIGN.md "Contract: sandbox-agent HTTP API": `GET /health`, `POST /exec`
//! (JSON or NDJSON stream), `GET/PUT /files`, `GET /files/list`, all but `/health` behind a
//! bearer token. `main.rs` parses flags, binds, and calls [`run`]; tests drive [`app`].
//!
//! Deliberately absent: TLS, DNS/NSS lookups (addresses are parsed, never resolved, so the
//! static glibc build is safe), and any credential other than the agent token.

mod configure;
mod error;
mod exec;
mod files;
pub mod forward;
pub mod reaper;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use airlock_wire::Health;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

pub use error::ApiError;
pub use forward::{EgressForward, ListenAddr, bind_unix, forward_tcp_to_unix};

/// Crate version reported by `GET /health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The agent token, wrapped so `Debug` never prints it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// Rejects an empty token: an agent that accepts `Bearer ` would be open to anyone.
    pub fn new(value: &str) -> Option<Self> {
        let value = value.trim();
        (!value.is_empty()).then(|| Token(Arc::from(value)))
    }

    /// Constant-time comparison, so response timing does not reveal a matching prefix.
    fn matches(&self, candidate: &[u8]) -> bool {
        ct_eq(self.0.as_bytes(), candidate)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Compares every byte of both inputs regardless of where they differ. Only the length of
/// the real token can leak, which says nothing useful about its content.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Runtime settings; `main.rs` fills them from flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bearer token every request except `GET /health` must carry.
    pub token: Token,
    /// Directory relative paths (files API and exec `cwd`) resolve against; also the default
    /// exec cwd.
    pub workdir: PathBuf,
    /// Largest accepted `PUT /files` body; larger uploads get 413.
    pub max_upload_bytes: u64,
    /// Largest accepted `POST /exec` body (it carries `stdin`).
    pub max_exec_body_bytes: usize,
    /// Exec timeout when the request names none.
    pub default_timeout_ms: u64,
    /// Upper bound for a requested `timeout_ms`; larger values are clamped to it.
    pub max_timeout_ms: u64,
    /// Output cap (stdout + stderr) when the request names none.
    pub default_max_output_bytes: u64,
    /// Upper bound for a requested `max_output_bytes` (non-streamed output is held in memory).
    pub max_output_bytes_cap: u64,
    /// After the main child exits, how long backgrounded processes may keep the output pipes
    /// open before the process group is killed (see `exec.rs`).
    pub pipe_grace_ms: u64,
    /// Wait for orphaned zombies re-parented to us (see `reaper.rs`). On by default when the
    /// agent is PID 1, i.e. a container entrypoint without an init.
    pub reap_orphans: bool,
}

impl Config {
    /// Defaults for everything but the token and workdir.
    pub fn new(token: Token, workdir: PathBuf) -> Self {
        Config {
            token,
            workdir,
            max_upload_bytes: 256 * 1024 * 1024,
            max_exec_body_bytes: 16 * 1024 * 1024,
            default_timeout_ms: 600_000,
            max_timeout_ms: 24 * 3600 * 1000,
            default_max_output_bytes: 1024 * 1024,
            max_output_bytes_cap: 64 * 1024 * 1024,
            pipe_grace_ms: 300,
            reap_orphans: std::process::id() == 1,
        }
    }
}

/// Shared handler state.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// `/configure` state: the env every exec inherits, and whether anything ran yet.
    pub setup: Arc<configure::Setup>,
    /// Flips to `true` on shutdown so running commands are killed instead of holding the
    /// graceful shutdown open until their timeout.
    shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// State whose shutdown signal never fires (tests, embedding).
    pub fn new(config: Config) -> Self {
        // The sender is dropped at once; `shutdown_requested` treats that as "never".
        let (_tx, rx) = watch::channel(false);
        AppState {
            config: Arc::new(config),
            setup: Arc::default(),
            shutdown: rx,
        }
    }

    fn with_shutdown(config: Config, shutdown: watch::Receiver<bool>) -> Self {
        AppState {
            config: Arc::new(config),
            setup: Arc::default(),
            shutdown,
        }
    }

    /// Resolves once shutdown has been requested; never if the sender is gone without
    /// having requested it.
    async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.clone();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The full router: `/health` open, everything else behind the bearer token, JSON errors for
/// unknown routes and methods.
pub fn app(state: AppState) -> Router {
    let exec_limit = axum::extract::DefaultBodyLimit::max(state.config.max_exec_body_bytes);
    let protected = Router::new()
        .route("/exec", post(exec::handle).layer(exec_limit))
        .route("/configure", post(configure::handle))
        .route("/files", get(files::read).put(files::write))
        .route("/files/list", get(files::list))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".into())
        })
        .with_state(state)
}

/// Serves `app` on `listener` (a `TcpListener` or, for the docker backend, a `UnixListener`
/// from [`bind_unix`]) until `shutdown` resolves; then kills running commands and waits for
/// in-flight responses to finish.
pub async fn run<L>(
    config: Config,
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    if config.reap_orphans {
        tokio::spawn(reaper::run());
    }
    let (tx, rx) = watch::channel(false);
    let state = AppState::with_shutdown(config, rx);
    let router = app(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: killing running commands, finishing responses");
            // Receivers only go away with the server, so a send error is harmless.
            let _ = tx.send(true);
        })
        .await
}

async fn health(State(state): State<AppState>) -> Json<Health> {
    let (configured, used) = state.setup.status();
    Json(Health {
        status: "ok".into(),
        version: VERSION.into(),
        configured: Some(configured),
        used: Some(used),
    })
}

async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(token) if state.config.token.matches(token) => Ok(next.run(req).await),
        _ => Err(ApiError::Unauthorized),
    }
}

/// JSON body extractor that answers with our error shape. It does not insist on a
/// `Content-Type` (curl's `-d` sends form encoding) and reports serde's message, which names
/// the unknown/missing field and its position.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Query extractor that answers with our error shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}
