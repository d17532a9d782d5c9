//! Upstream connections. The only way out of the proxy: every dial takes a
//! [`CheckedDest`] and goes to exactly its checked address, with the pinned
//! host as TLS server name (verified against webpki roots + `upstream_roots`).
//! Connections are pooled per (checked address, server name, tls).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::deny::Deny;
use crate::pipeline::{CheckedDest, Scheme};

/// Errors building the upstream TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    /// An `upstream_roots` file could not be read or parsed.
    #[error("cannot load upstream root {path}: {message}")]
    Roots {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Builds the upstream rustls client config (ring provider).
pub fn client_config(
    extra_roots: &[PathBuf],
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, UpstreamConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_roots {
        let err = |message: String| UpstreamConfigError::Roots {
            path: path.clone(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no certificate in file".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamConfigError::Roots {
            path: PathBuf::new(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    sni: String,
    tls: bool,
}

enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

/// Most idle HTTP/1 connections kept per key.
const MAX_IDLE_PER_KEY: usize = 32;

/// The upstream connector and pool.
pub struct Upstream {
    tls: Arc<rustls::ClientConfig>,
    tls_h1: Arc<rustls::ClientConfig>,
    pool: Arc<Mutex<HashMap<PoolKey, Vec<Sender>>>>,
    connect_timeout: Duration,
}

impl Upstream {
    /// A connector trusting webpki roots plus `extra_roots`.
    pub fn new(
        extra_roots: &[PathBuf],
        connect_timeout: Duration,
    ) -> Result<Upstream, UpstreamConfigError> {
        Ok(Upstream {
            tls: client_config(extra_roots, &[b"h2", b"http/1.1"])?,
            tls_h1: client_config(extra_roots, &[b"http/1.1"])?,
            pool: Arc::new(Mutex::new(HashMap::new())),
            connect_timeout,
        })
    }

    fn key(dest: &CheckedDest) -> PoolKey {
        PoolKey {
            addr: dest.addr(),
            sni: dest.pinned().host().to_string(),
            tls: dest.pinned().scheme() == Scheme::Https,
        }
    }

    fn checkout(&self, key: &PoolKey) -> Option<Sender> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let list = pool.get_mut(key)?;
        let mut i = 0;
        while i < list.len() {
            match &list[i] {
                Sender::H2(s) if !s.is_closed() => return Some(Sender::H2(s.clone())),
                Sender::H2(_) => {
                    list.swap_remove(i);
                }
                Sender::H1(s) if s.is_closed() => {
                    list.swap_remove(i);
                }
                Sender::H1(s) if s.is_ready() => return Some(list.swap_remove(i)),
                Sender::H1(_) => i += 1,
            }
        }
        None
    }

    fn checkin(&self, key: PoolKey, s: Sender) {
        checkin(&self.pool, key, s)
    }

    async fn dial_tcp(&self, dest: &CheckedDest) -> Result<TcpStream, Deny> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(dest.addr()))
            .await
            .map_err(|_| Deny::Upstream("connect timeout"))?
            .map_err(|_| Deny::Upstream("connect failed"))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn dial(&self, dest: &CheckedDest, h1_only: bool) -> Result<Sender, Deny> {
        let tcp = self.dial_tcp(dest).await?;
        if dest.pinned().scheme() == Scheme::Http {
            return handshake_h1(TokioIo::new(tcp), h1_only).await;
        }
        let name = ServerName::try_from(dest.pinned().host().to_string())
            .map_err(|_| Deny::Upstream("invalid server name"))?;
        let cfg = if h1_only {
            self.tls_h1.clone()
        } else {
            self.tls.clone()
        };
        let tls = tokio::time::timeout(
            self.connect_timeout,
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .map_err(|_| Deny::Upstream("tls handshake timeout"))?
        .map_err(|_| Deny::Upstream("tls handshake failed (certificate not trusted?)"))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|_| Deny::Upstream("h2 handshake failed"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Sender::H2(send))
        } else {
            handshake_h1(TokioIo::new(tls), h1_only).await
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `dest`, reusing a pooled
    /// connection when one is idle.
    pub async fn send(
        &self,
        dest: &CheckedDest,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, Deny> {
        let key = Self::key(dest);
        let (sender, fresh) = match self.checkout(&key) {
            Some(s) => (s, false),
            None => (self.dial(dest, false).await?, true),
        };
        match sender {
            Sender::H2(mut s) => {
                let req = to_h2(dest, req)?;
                // A new H2 connection is shared: pool it before use.
                if fresh {
                    self.checkin(key.clone(), Sender::H2(s.clone()));
                }
                s.ready()
                    .await
                    .map_err(|_| Deny::Upstream("h2 connection closed"))?;
                s.send_request(req)
                    .await
                    .map_err(|_| Deny::Upstream("request failed"))
            }
            Sender::H1(mut s) => {
                let (mut parts, body) = req.into_parts();
                parts.version = Version::HTTP_11;
                let req = Request::from_parts(parts, body);
                s.ready()
                    .await
                    .map_err(|_| Deny::Upstream("connection closed"))?;
                let resp = s
                    .send_request(req)
                    .await
                    .map_err(|_| Deny::Upstream("request failed"))?;
                // Back to the pool at once: `checkout` only hands out a connection that
                // is ready (its previous response fully read) and drops closed ones, so
                // no task per request has to wait for the body to finish first.
                self.checkin(key, Sender::H1(s));
                Ok(resp)
            }
        }
    }

    /// Sends an upgrade request (WebSocket) on a fresh HTTP/1.1 connection.
    pub async fn send_upgrade(
        &self,
        dest: &CheckedDest,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, Deny> {
        match self.dial(dest, true).await? {
            Sender::H1(mut s) => {
                s.ready()
                    .await
                    .map_err(|_| Deny::Upstream("connection closed"))?;
                s.send_request(req)
                    .await
                    .map_err(|_| Deny::Upstream("request failed"))
            }
            Sender::H2(_) => Err(Deny::Upstream("upgrade needs http/1.1")),
        }
    }
}

fn checkin(pool: &Mutex<HashMap<PoolKey, Vec<Sender>>>, key: PoolKey, s: Sender) {
    let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
    let list = pool.entry(key).or_default();
    list.retain(|s| match s {
        Sender::H1(s) => !s.is_closed(),
        Sender::H2(s) => !s.is_closed(),
    });
    if list.len() < MAX_IDLE_PER_KEY {
        list.push(s);
    }
}

async fn handshake_h1<T>(io: TokioIo<T>, upgrades: bool) -> Result<Sender, Deny>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|_| Deny::Upstream("http/1 handshake failed"))?;
    if upgrades {
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
    } else {
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    Ok(Sender::H1(send))
}

fn to_h2(dest: &CheckedDest, req: Request<ProxyBody>) -> Result<Request<ProxyBody>, Deny> {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    parts.uri = Uri::builder()
        .scheme("https")
        .authority(dest.pinned().host_header())
        .path_and_query(pq)
        .build()
        .map_err(|_| Deny::BadRequest("invalid uri"))?;
    parts.headers.remove(http::header::HOST);
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}
