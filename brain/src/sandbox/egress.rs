//! Host side of a docker sandbox's only way out.
//!
//! A docker sandbox's network has no host address and no route (see `docker/`), so its
//! egress leaves through a unix socket in its bind-mounted runtime directory: inside, the agent
//! copies `127.0.0.1:3128` to `/run/airlock/egress.sock`; here, the brain listens on that socket
//! (`<runtime dir>/<id>/egress.sock` on the host) and copies each connection to the vault
//! proxy's HTTP proxy listener (`egress_upstream`). Bytes are not inspected: the proxy
//! authenticates (`Proxy-Authorization` with the sandbox's grant) and filters.
//!
//! One listener per sandbox, at most `max_connections` connections each. Stopping a sandbox's
//! forwarder (destroy) also cuts its open connections; dropping the last clone of the owning
//! backend stops them all.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long connecting to the upstream proxy may take before the sandbox's client is dropped.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The per-sandbox egress forwarders of one backend.
pub struct EgressForwarders {
    upstream: Arc<str>,
    max_connections: usize,
    running: Mutex<HashMap<String, Running>>,
    root: CancellationToken,
    /// Cancels `root` (every forwarder and connection) when the backend goes away.
    _stop_all: DropGuard,
}

impl std::fmt::Debug for EgressForwarders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressForwarders")
            .field("upstream", &self.upstream)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl EgressForwarders {
    /// `upstream` is `host:port` of the vault proxy's HTTP proxy listener.
    pub fn new(upstream: &str, max_connections: usize) -> Self {
        let root = CancellationToken::new();
        Self {
            upstream: Arc::from(upstream),
            max_connections: max_connections.max(1),
            running: Mutex::new(HashMap::new()),
            _stop_all: root.clone().drop_guard(),
            root,
        }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        // A poisoned lock only means a panic elsewhere mid-update; the map itself is intact.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the sandbox's forwarder is listening.
    pub fn is_running(&self, sandbox_id: &str) -> bool {
        self.lock()
            .get(sandbox_id)
            .is_some_and(|r| !r.task.is_finished())
    }

    /// Starts the sandbox's forwarder on `socket` unless it already runs. A stale socket file
    /// (an earlier brain's) is replaced; anything else at the path is an error. The socket is
    /// mode 0666 because the sandbox user (uid 1000) must connect to it; the runtime
    /// directory's permissions keep other host users out.
    pub fn ensure(&self, sandbox_id: &str, socket: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let mut running = self.lock();
        if running
            .get(sandbox_id)
            .is_some_and(|r| !r.task.is_finished())
        {
            return Ok(());
        }
        match std::fs::symlink_metadata(socket) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(socket)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", socket.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
        let cancel = self.root.child_token();
        let task = tokio::spawn(serve(
            listener,
            self.upstream.clone(),
            self.max_connections,
            cancel.clone(),
            sandbox_id.to_string(),
        ));
        running.insert(sandbox_id.to_string(), Running { cancel, task });
        Ok(())
    }

    /// Stops the sandbox's forwarder and cuts its open connections. The socket file goes with
    /// the runtime directory.
    pub fn stop(&self, sandbox_id: &str) {
        if let Some(r) = self.lock().remove(sandbox_id) {
            r.cancel.cancel();
        }
    }
}

async fn serve(
    listener: UnixListener,
    upstream: Arc<str>,
    max_connections: usize,
    cancel: CancellationToken,
    sandbox: String,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        // Taken before `accept`: past the bound, clients wait in the socket backlog.
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                // Never closed; ending the loop is the safe reading if it ever were.
                Err(_) => return,
            },
        };
        let mut client = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, keep serving.
                    tracing::warn!(%sandbox, error = %e, "egress: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (upstream, cancel, sandbox) = (upstream.clone(), cancel.clone(), sandbox.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connect =
                tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(&*upstream));
            let mut server = tokio::select! {
                _ = cancel.cancelled() => return,
                s = connect => match s {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(%sandbox, %upstream, error = %e, "egress: upstream proxy unreachable");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%sandbox, %upstream, "egress: upstream proxy connect timed out");
                        return;
                    }
                },
            };
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = tokio::io::copy_bidirectional(&mut client, &mut server) => {
                    if let Err(e) = r {
                        tracing::debug!(%sandbox, error = %e, "egress: connection ended");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;

    async fn upstream() -> (std::net::SocketAddr, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn forwards_stops_and_restarts_on_a_stale_socket() {
        let (addr, _server) = upstream().await;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("egress.sock");
        let fwd = EgressForwarders::new(&addr.to_string(), 4);
        fwd.ensure("sb-1", &sock).unwrap();
        fwd.ensure("sb-1", &sock).unwrap(); // idempotent
        assert!(fwd.is_running("sb-1"));

        let mut c = UnixStream::connect(&sock).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // Stop cuts the open connection too.
        fwd.stop("sb-1");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .expect("connection cut on stop")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(!fwd.is_running("sb-1"));

        // A new owner (a restarted brain) replaces the stale socket.
        drop(fwd);
        let fwd = EgressForwarders::new(&addr.to_string(), 4);
        fwd.ensure("sb-1", &sock).unwrap();
        let mut c = UnixStream::connect(&sock).await.unwrap();
        c.write_all(b"again").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");

        // Something that is not a socket is never removed.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(fwd.ensure("sb-2", &file).is_err());
        assert!(file.exists());
    }
}
