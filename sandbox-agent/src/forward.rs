//! Listen addresses and the egress forwarder.
//!
//! In the docker backend the sandbox's network has no route anywhere (not even to the host), so
//! the only way out is a unix socket the brain places in a bind-mounted directory. Tools inside
//! the sandbox speak TCP to an HTTP proxy (`HTTPS_PROXY=http://…@127.0.0.1:3128`), so the agent
//! runs a TCP listener on the sandbox's loopback and copies every connection, byte for byte, to
//! that unix socket (`--egress-forward 127.0.0.1:3128=unix:/run/airlock/egress.sock`). The
//! agent never looks inside the bytes: the vault proxy at the other end authenticates and
//! filters.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Where the HTTP API listens: `IP:port`, or `unix:/abs/path` for a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            return parse_unix_path(path).map(ListenAddr::Unix);
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("`{s}` is neither an IP:port (names are never resolved) nor unix:/abs/path")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One `--egress-forward LISTEN=TARGET`: a TCP listener whose connections go to a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressForward {
    pub listen: SocketAddr,
    pub target: PathBuf,
}

impl FromStr for EgressForward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listen, target) = s.split_once('=').ok_or_else(|| {
            format!(
                "`{s}`: expected LISTEN=TARGET, e.g. 127.0.0.1:3128=unix:/run/airlock/egress.sock"
            )
        })?;
        let listen = listen
            .parse::<SocketAddr>()
            .map_err(|_| format!("`{listen}`: LISTEN must be an IP:port"))?;
        let target = target
            .strip_prefix("unix:")
            .ok_or_else(|| format!("`{target}`: TARGET must be unix:/abs/path"))
            .and_then(parse_unix_path)?;
        Ok(EgressForward { listen, target })
    }
}

fn parse_unix_path(path: &str) -> Result<PathBuf, String> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(format!(
            "unix socket path `{}` must be absolute",
            path.display()
        ));
    }
    // sun_path is 108 bytes including the terminating NUL.
    if path.as_os_str().len() > 107 {
        return Err(format!(
            "unix socket path `{}` is longer than 107 bytes",
            path.display()
        ));
    }
    Ok(path.to_path_buf())
}

/// Binds a unix socket for the HTTP API. A stale socket left by an earlier run is removed
/// first (anything else at the path is an error, never deleted). The socket is made mode
/// 0666: who may connect is decided by the permissions of the directory that holds it (the
/// docker backend's per-sandbox host directory), not by the socket, because the brain on the
/// host runs as a different uid than the agent.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Copies every connection accepted on `listener` both ways to the unix socket `target`, at
/// most `max_connections` at a time (further clients wait in the listen backlog). Runs until
/// the task is dropped; per-connection errors are logged and never end the loop.
pub async fn forward_tcp_to_unix(listener: TcpListener, target: PathBuf, max_connections: usize) {
    let target: Arc<Path> = Arc::from(target);
    let permits = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        // Acquired before `accept`, so a full forwarder leaves clients in the kernel backlog
        // instead of holding file descriptors for them. The semaphore is never closed.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (mut client, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, then keep serving.
                tracing::warn!(error = %e, "egress forward: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let target = target.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = client.set_nodelay(true);
            let mut upstream = match UnixStream::connect(&*target).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, target = %target.display(), error = %e, "egress forward: cannot reach the egress socket");
                    return;
                }
            };
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => {
                    tracing::debug!(%peer, up, down, "egress forward: connection closed")
                }
                Err(e) => tracing::debug!(%peer, error = %e, "egress forward: connection ended"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "127.0.0.1:7700".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:7700".parse().unwrap())
        );
        let unix = "unix:/run/airlock/agent.sock"
            .parse::<ListenAddr>()
            .unwrap();
        assert_eq!(unix, ListenAddr::Unix("/run/airlock/agent.sock".into()));
        assert_eq!(unix.to_string(), "unix:/run/airlock/agent.sock");
        for bad in ["localhost:7700", "unix:rel/agent.sock", "unix:", "7700"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
        let long = format!("unix:/{}", "x".repeat(107));
        assert!(long.parse::<ListenAddr>().is_err());
    }

    #[test]
    fn egress_forwards_parse() {
        let f: EgressForward = "127.0.0.1:3128=unix:/run/airlock/egress.sock"
            .parse()
            .unwrap();
        assert_eq!(f.listen, "127.0.0.1:3128".parse().unwrap());
        assert_eq!(f.target, PathBuf::from("/run/airlock/egress.sock"));
        for bad in [
            "127.0.0.1:3128",
            "127.0.0.1:3128=/run/x.sock",
            "127.0.0.1:3128=unix:x.sock",
            "localhost:3128=unix:/x.sock",
            "127.0.0.1:3128=127.0.0.1:8899",
        ] {
            assert!(bad.parse::<EgressForward>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn bind_unix_replaces_a_stale_socket_but_nothing_else() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let first = bind_unix(&path).unwrap();
        drop(first); // tokio leaves the socket file behind: a stale socket.
        assert!(path.exists());
        let _second = bind_unix(&path).expect("stale socket replaced");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(bind_unix(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }

    /// A unix echo server that prefixes its answer, so the test sees the bytes went through it.
    async fn echo_server(path: &Path) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let mut out = b"echo:".to_vec();
                                out.extend_from_slice(&buf[..n]);
                                if s.write_all(&out).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        })
    }

    #[tokio::test]
    async fn connections_are_copied_both_ways_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("egress.sock");
        let _server = echo_server(&sock).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fwd = tokio::spawn(forward_tcp_to_unix(listener, sock.clone(), 2));

        let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
        a.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 10];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"echo:hello");

        // Two open connections fill the bound: a third is not served until one closes.
        let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
        b.write_all(b"x").await.unwrap();
        let mut one = [0u8; 6];
        b.read_exact(&mut one).await.unwrap();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"y").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut one)).await;
        assert!(
            waited.is_err(),
            "a third connection was served past the bound"
        );
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut one))
            .await
            .expect("served once a slot frees")
            .unwrap();
        assert_eq!(&one, b"echo:y");
        fwd.abort();
    }

    #[tokio::test]
    async fn a_missing_target_closes_the_client_and_the_forwarder_keeps_going() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("egress.sock");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fwd = tokio::spawn(forward_tcp_to_unix(listener, sock.clone(), 4));
        for _ in 0..10 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = Vec::new();
            let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
                .await
                .expect("closed promptly")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        // The target appears later: new connections reach it.
        let _server = echo_server(&sock).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"late").await.unwrap();
        let mut buf = [0u8; 9];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"echo:late");
        assert!(!fwd.is_finished());
        fwd.abort();
    }
}
