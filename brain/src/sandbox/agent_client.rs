//! Client for the in-sandbox `sandbox-agent` HTTP API, shared by every backend that runs the
//! agent (local, docker, kubernetes).
//!
//! Agent URLs are either `http://host:port` (local, kubernetes) or `unix:/abs/path/agent.sock`
//! (docker: the agent listens on a unix socket in a bind-mounted host directory, because the
//! sandbox network has no host address to reach it by). TCP agents share one process-wide
//! `reqwest::Client`; each unix socket gets its own client (reqwest binds a client to one
//! socket path), cached by path, so exec round trips ride a kept-alive connection either way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use airlock_wire::{
    ErrorBody, ExecCollector, ExecEvent, ExecRequest, ExecResult, FileEntry, NDJSON,
};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{BackendError, ExecStream, SandboxHandle};

/// Scheme prefix of agent URLs that name a unix socket.
pub const UNIX_PREFIX: &str = "unix:";
/// Upper bound on cached unix-socket clients; past it the cache is emptied (clients in use
/// stay valid: they are reference counted), so a long-lived brain cannot grow it forever even
/// if a backend never calls [`forget_unix_socket`].
const MAX_UNIX_CLIENTS: usize = 4096;

/// reqwest is built with `rustls-no-provider`, which panics on first use unless a process-wide
/// provider is installed. Installing is idempotent (an error only means one is already there),
/// so every client constructor calls this instead of relying on `main`.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(90))
}

fn shared_http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        builder()
            .tcp_nodelay(true)
            .build()
            // Invariant: building a plain-HTTP client with no TLS config cannot fail.
            .expect("reqwest client")
    })
}

fn unix_clients() -> &'static Mutex<HashMap<PathBuf, reqwest::Client>> {
    static CLIENTS: OnceLock<Mutex<HashMap<PathBuf, reqwest::Client>>> = OnceLock::new();
    CLIENTS.get_or_init(Default::default)
}

/// The pooled client for one agent socket.
fn unix_http(path: &Path) -> reqwest::Client {
    // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
    let mut clients = unix_clients().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(client) = clients.get(path) {
        return client.clone();
    }
    if clients.len() >= MAX_UNIX_CLIENTS {
        clients.clear();
    }
    let client = builder()
        .unix_socket(path)
        .build()
        // Invariant: as above; a unix socket path is only used when connecting.
        .expect("reqwest unix client");
    clients.insert(path.to_path_buf(), client.clone());
    client
}

/// Drops the pooled connections to an agent socket (the sandbox is gone).
pub fn forget_unix_socket(path: &Path) {
    let mut clients = unix_clients().lock().unwrap_or_else(|e| e.into_inner());
    clients.remove(path);
}

/// The socket path of a `unix:/abs/path` agent URL.
pub fn unix_socket_path(url: &str) -> Option<&Path> {
    url.strip_prefix(UNIX_PREFIX).map(Path::new)
}

#[derive(Clone)]
pub struct AgentClient {
    /// `http://host:port`, or `http://agent` for a unix socket (the host part is only sent as
    /// the `Host` header; the connection goes to the socket).
    base: String,
    http: reqwest::Client,
    token: String,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// `base` is `http://host:port` or `unix:/abs/path/agent.sock`.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        let mut base = base.into();
        let (base, http) = match unix_socket_path(&base) {
            Some(path) => ("http://agent".to_string(), unix_http(path)),
            None => {
                while base.ends_with('/') {
                    base.pop();
                }
                (base, shared_http().clone())
            }
        };
        Self {
            base,
            http,
            token: token.into(),
        }
    }

    pub fn for_handle(handle: &SandboxHandle) -> Result<Self, BackendError> {
        let url = handle.agent_url.as_deref().ok_or_else(|| {
            BackendError::Invalid(format!("sandbox {} has no agent endpoint", handle.id))
        })?;
        Ok(Self::new(url, handle.agent_token.clone()))
    }

    pub async fn health(&self) -> Result<airlock_wire::Health, BackendError> {
        let resp = self
            .http
            .get(format!("{}/health", self.base))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(unreachable)?;
        let resp = check(resp).await?;
        resp.json().await.map_err(unreachable)
    }

    /// Runs a command and collects its output. Uses the streaming form underneath so a long
    /// command never holds a single request open without progress from the agent's side.
    ///
    /// When the request sets `max_output_bytes`, the brain enforces it too (the agent already
    /// should): output past the cap is dropped and the result marked truncated, so a
    /// misbehaving agent cannot make the brain buffer without bound.
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecResult, BackendError> {
        let mut budget = req
            .max_output_bytes
            .map(|cap| usize::try_from(cap).unwrap_or(usize::MAX));
        let mut dropped = false;
        let mut stream = self.exec_stream(req).await?;
        let mut collector = ExecCollector::default();
        while let Some(event) = stream.next().await {
            let event = match (event?, budget.as_mut()) {
                (ExecEvent::Stdout { data }, Some(left)) => ExecEvent::Stdout {
                    data: take_within(data, left, &mut dropped),
                },
                (ExecEvent::Stderr { data }, Some(left)) => ExecEvent::Stderr {
                    data: take_within(data, left, &mut dropped),
                },
                (event, _) => event,
            };
            collector.push(event);
        }
        let mut result = collector.finish().ok_or_else(|| {
            BackendError::AgentUnreachable("exec stream ended without an exit record".into())
        })?;
        result.truncated |= dropped;
        Ok(result)
    }

    pub async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream, BackendError> {
        let resp = self
            .http
            .post(format!("{}/exec", self.base))
            .bearer_auth(&self.token)
            .header(http::header::ACCEPT, NDJSON)
            .json(&req)
            .send()
            .await
            .map_err(unreachable)?;
        let resp = check(resp).await?;
        Ok(Box::pin(ndjson_events(resp.bytes_stream())))
    }

    /// `POST /configure`: the one-time env and files of a pooled sandbox.
    pub async fn configure(
        &self,
        req: &airlock_wire::ConfigureRequest,
    ) -> Result<(), BackendError> {
        let resp = self
            .http
            .post(format!("{}/configure", self.base))
            .bearer_auth(&self.token)
            .json(req)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(unreachable)?;
        check(resp).await.map(drop)
    }

    pub async fn read_file(&self, path: &str) -> Result<Bytes, BackendError> {
        let resp = self
            .http
            .get(format!("{}/files", self.base))
            .bearer_auth(&self.token)
            .query(&[("path", path)])
            .send()
            .await
            .map_err(unreachable)?;
        check(resp).await?.bytes().await.map_err(unreachable)
    }

    pub async fn write_file(&self, path: &str, data: Bytes) -> Result<(), BackendError> {
        let resp = self
            .http
            .put(format!("{}/files", self.base))
            .bearer_auth(&self.token)
            .query(&[("path", path)])
            .body(data)
            .send()
            .await
            .map_err(unreachable)?;
        check(resp).await.map(drop)
    }

    pub async fn list_files(&self, path: &str) -> Result<Vec<FileEntry>, BackendError> {
        let resp = self
            .http
            .get(format!("{}/files/list", self.base))
            .bearer_auth(&self.token)
            .query(&[("path", path)])
            .send()
            .await
            .map_err(unreachable)?;
        check(resp).await?.json().await.map_err(unreachable)
    }
}

/// Keeps at most `left` bytes of `data` (on a char boundary), counting them off `left`.
fn take_within(mut data: String, left: &mut usize, dropped: &mut bool) -> String {
    if data.len() > *left {
        let mut cut = *left;
        while !data.is_char_boundary(cut) {
            cut -= 1;
        }
        data.truncate(cut);
        *dropped = true;
    }
    *left -= data.len();
    data
}

fn unreachable(e: reqwest::Error) -> BackendError {
    BackendError::AgentUnreachable(e.to_string())
}

/// Turns a non-2xx agent answer into `BackendError::Agent` with the agent's own code/message.
async fn check(resp: reqwest::Response) -> Result<reqwest::Response, BackendError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => (e.error.code, e.error.message),
        Err(_) => (
            "http_error".to_string(),
            String::from_utf8_lossy(&body).into_owned(),
        ),
    };
    Err(BackendError::Agent {
        status: status.as_u16(),
        code,
        message,
    })
}

/// Splits an NDJSON byte stream into events. Lines are parsed as they complete; a partial
/// line at the end of the stream means the agent died mid-exec.
fn ndjson_events<S>(
    body: S,
) -> impl futures_util::Stream<Item = Result<ExecEvent, BackendError>> + Send
where
    S: futures_util::Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
{
    futures_util::stream::unfold(
        (Box::pin(body), Vec::<u8>::new(), false),
        |(mut body, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let line = &line[..line.len() - 1];
                    if line.is_empty() {
                        continue;
                    }
                    let item = serde_json::from_slice::<ExecEvent>(line).map_err(|e| {
                        BackendError::AgentUnreachable(format!("bad exec stream line: {e}"))
                    });
                    return Some((item, (body, buf, false)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(unreachable(e)), (body, buf, true))),
                    None if buf.is_empty() => return None,
                    None => {
                        let err = BackendError::AgentUnreachable("exec stream cut mid-line".into());
                        return Some((Err(err), (body, Vec::new(), true)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A unix listener that counts accepted connections, to see the pool at work.
    struct Counting(tokio::net::UnixListener, Arc<AtomicUsize>);

    impl axum::serve::Listener for Counting {
        type Io = tokio::net::UnixStream;
        type Addr = tokio::net::unix::SocketAddr;
        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            let conn = axum::serve::Listener::accept(&mut self.0).await;
            self.1.fetch_add(1, Ordering::SeqCst);
            conn
        }
        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.0.local_addr()
        }
    }

    #[tokio::test]
    async fn unix_socket_agents_are_reached_over_a_pooled_connection() {
        use axum::routing::{get, post};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let accepted = Arc::new(AtomicUsize::new(0));
        let listener = Counting(
            tokio::net::UnixListener::bind(&sock).unwrap(),
            accepted.clone(),
        );
        let app = axum::Router::new()
            .route(
                "/health",
                get(|| async { axum::Json(serde_json::json!({"status":"ok","version":"t"})) }),
            )
            .route(
                "/exec",
                post(|headers: http::HeaderMap| async move {
                    assert_eq!(headers["authorization"], "Bearer tok");
                    "{\"type\":\"stdout\",\"data\":\"hi\\n\"}\n{\"type\":\"exit\",\"exit_code\":0,\"signal\":null,\"timed_out\":false,\"truncated\":false,\"duration_ms\":1}\n"
                }),
            )
            .route(
                "/files",
                get(|| async {
                    (
                        http::StatusCode::NOT_FOUND,
                        axum::Json(serde_json::json!({"error":{"code":"not_found","message":"nope"}})),
                    )
                }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let url = format!("{UNIX_PREFIX}{}", sock.display());
        let agent = AgentClient::new(&url, "tok");
        for _ in 0..5 {
            assert_eq!(agent.health().await.unwrap().status, "ok");
        }
        let r = AgentClient::new(&url, "tok")
            .exec(ExecRequest {
                command: Some("echo hi".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((r.stdout.as_str(), r.exit_code), ("hi\n", Some(0)));
        match agent.read_file("x").await {
            Err(BackendError::Agent { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (404, "not_found"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "every request should reuse the one kept-alive connection"
        );
        forget_unix_socket(&sock);
        server.abort();
        let gone = AgentClient::new(format!("{UNIX_PREFIX}/nonexistent/agent.sock"), "tok");
        assert!(matches!(
            gone.health().await,
            Err(BackendError::AgentUnreachable(_))
        ));
    }

    #[test]
    fn take_within_caps_on_char_boundaries() {
        let mut left = 5;
        let mut dropped = false;
        assert_eq!(take_within("abc".into(), &mut left, &mut dropped), "abc");
        assert_eq!((left, dropped), (2, false));
        assert_eq!(take_within("é€x".into(), &mut left, &mut dropped), "é");
        assert_eq!((left, dropped), (0, true));
        assert_eq!(take_within("more".into(), &mut left, &mut dropped), "");
    }
}
