//! Harness for the vault proxy integration tests: a local HTTPS echo
//! upstream with its own CA, a proxy started on 127.0.0.1:0 with
//! `network.resolve` mapping fake names to 127.0.0.1, and clients.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vault_proxy::config::Config;
use vault_proxy::{Limits, RunningProxy, StartOptions, VaultProxy};

pub const GH_REAL: &str = "ghp_R3alT0kenR3alT0kenR3alT0kenR3alT0ken";
pub const OTHER_REAL: &str = "sk-ant-api03-Real0ther0Secret0Value0Here0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const ADMIN_ENV: &str = "VAULT_PROXY_IT_ADMIN_TOKEN";

pub type BoxBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // SAFETY: set once, before any proxy reads it, from a Once; the tests
        // never read or write this variable elsewhere.
        unsafe { std::env::set_var(ADMIN_ENV, ADMIN_TOKEN) };
    });
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub sni: Option<String>,
    pub version: http::Version,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn host(&self) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| v.clone())
            .or_else(|| {
                self.uri
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|u| u.authority().map(|a| a.to_string()))
            })
            .unwrap_or_default()
    }
    pub fn contains(&self, needle: &str) -> bool {
        self.uri.contains(needle)
            || self
                .headers
                .iter()
                .any(|(k, v)| k.contains(needle) || v.contains(needle))
            || String::from_utf8_lossy(&self.body).contains(needle)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// The HTTPS echo upstream (one port serving every fake name, cert with all
/// of them as SANs, from its own test CA) plus a plain-HTTP twin.
pub struct Upstream {
    pub port: u16,
    pub plain_port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub ca_pem: String,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn seen_for(&self, host_prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.host().starts_with(host_prefix))
            .collect()
    }
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

pub const NAMES: &[&str] = &[
    "api.github.test",
    "evil.test",
    "allowed.test",
    "other.github.test",
    "rebind.test",
];

pub async fn start_upstream() -> Upstream {
    init();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    names.push("127.0.0.1".into());
    let leaf = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let chain = vec![CertificateDer::from(leaf.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let seen = Arc::new(Mutex::new(Vec::new()));

    let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tls_listener.local_addr().unwrap().port();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = tls_listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = s2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                let svc = service_fn(move |req| echo(req, sni.clone(), seen.clone(), port));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let plain_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_port = plain_listener.local_addr().unwrap().port();
    let s3 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = plain_listener.accept().await else {
                continue;
            };
            let seen = s3.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| echo(req, None, seen.clone(), port));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Upstream {
        port,
        plain_port,
        seen,
        ca_pem: ca.pem(),
    }
}

fn boxed<B>(b: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    b.map_err(Into::into).boxed_unsync()
}

async fn echo(
    req: Request<Incoming>,
    sni: Option<String>,
    seen: Arc<Mutex<Vec<Seen>>>,
    tls_port: u16,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let (mut parts, body) = req.into_parts();
    let ws_upgrade = hyper::upgrade::on(parts.extensions_as_request());
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let s = Seen {
        sni,
        version: parts.version,
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).to_string(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    probe_audit_log(tls_port);
    seen.lock().unwrap().push(s.clone());
    let auth = s.header("authorization").unwrap_or_default();
    let echo_json = serde_json::json!({
        "method": s.method, "uri": s.uri, "headers": s.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>(),
        "body": String::from_utf8_lossy(&s.body),
    })
    .to_string();
    let path = parts.uri.path().to_string();
    let resp = match path.as_str() {
        "/echo-header" => Response::builder()
            .header("x-echo", auth.as_str())
            .body(boxed(Full::new(Bytes::from("ok")))),
        "/gzip" => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(echo_json.as_bytes()).unwrap();
            let gz = enc.finish().unwrap();
            Response::builder()
                .header("content-encoding", "gzip")
                .header("content-length", gz.len())
                .body(boxed(Full::new(Bytes::from(gz))))
        }
        "/chunked" => {
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = echo_json
                .as_bytes()
                .chunks(5)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            Response::builder().body(boxed(StreamBody::new(futures_util::stream::iter(chunks))))
        }
        "/redirect" => {
            let token = auth.split_whitespace().last().unwrap_or("");
            Response::builder()
                .status(StatusCode::FOUND)
                .header(
                    "location",
                    format!("https://evil.test:{tls_port}/landing?token={token}"),
                )
                .body(boxed(Full::new(Bytes::from("moved"))))
        }
        "/ws" => {
            // Minimal WebSocket echo server: accept, then echo every client frame
            // back as the server frame a real server would send (unmasked, same
            // FIN/opcode), one write per frame.
            let key = s.header("sec-websocket-key").unwrap_or_default();
            let accept = ws_accept(&key);
            let up = ws_upgrade;
            tokio::spawn(async move {
                if let Ok(u) = up.await {
                    let mut io = TokioIo::new(u);
                    while let Some((first, payload)) = read_client_frame(&mut io).await {
                        if io.write_all(&server_frame(first, &payload)).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-accept", accept)
                .body(boxed(http_body_util::Empty::<Bytes>::new()))
        }
        _ => Response::builder()
            .header("content-type", "application/json")
            .body(boxed(Full::new(Bytes::from(echo_json)))),
    };
    Ok(resp.unwrap())
}

trait ExtReq {
    fn extensions_as_request(&mut self) -> Request<()>;
}
impl ExtReq for http::request::Parts {
    /// Moves the extensions (holding hyper's OnUpgrade) into a dummy request.
    fn extensions_as_request(&mut self) -> Request<()> {
        let mut r = Request::new(());
        *r.extensions_mut() = std::mem::take(&mut self.extensions);
        r
    }
}

/// Reads one masked client frame; returns (first header byte, unmasked payload).
async fn read_client_frame<R: tokio::io::AsyncRead + Unpin>(io: &mut R) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    io.read_exact(&mut h).await.ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            io.read_exact(&mut b).await.ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            io.read_exact(&mut b).await.ok()?;
            usize::try_from(u64::from_be_bytes(b)).ok()?
        }
        n => n as usize,
    };
    let mut mask = [0u8; 4];
    if h[1] & 0x80 != 0 {
        io.read_exact(&mut mask).await.ok()?;
    }
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((h[0], payload))
}

/// An unmasked (server) frame.
pub fn server_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

pub fn ws_accept(key: &str) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// A proxy under test plus its files.
pub struct Proxy {
    pub running: Option<RunningProxy>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub audit_path: PathBuf,
}

pub struct ProxyOpts {
    pub resolver: Option<vault_proxy::ResolveFn>,
    pub allow_private: bool,
    pub egress_allow: Vec<&'static str>,
    pub limits: Limits,
    pub extra_yaml: String,
}

impl Default for ProxyOpts {
    fn default() -> Self {
        ProxyOpts {
            resolver: None,
            allow_private: true,
            egress_allow: vec!["allowed.test"],
            limits: Limits::default(),
            extra_yaml: String::new(),
        }
    }
}

impl Proxy {
    pub fn running(&self) -> &RunningProxy {
        self.running.as_ref().unwrap()
    }

    /// Issues a grant for `sandbox` with GITHUB_TOKEN (and `extra` creds).
    pub fn grant(&self, sandbox: &str, creds: &[&str]) -> (String, BTreeMap<String, String>) {
        let names: Vec<String> = creds.iter().map(|s| s.to_string()).collect();
        let g = self.running().grant(sandbox, &names, None).unwrap();
        (g.token, g.stubs)
    }

    /// The audit file's text and parsed records, after a flush.
    pub async fn audit(&self) -> (String, Vec<vault_proxy::audit::AuditRecord>) {
        self.running().audit().flush().await.unwrap();
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        let recs = vault_proxy::audit::read_records(&self.audit_path, &Default::default()).unwrap();
        (text, recs)
    }

    /// A reqwest client through the proxy as `sandbox:token`, trusting only the proxy CA.
    pub fn client(&self, sandbox: &str, token: &str) -> reqwest::Client {
        self.client_builder(sandbox, token).build().unwrap()
    }

    pub fn client_builder(&self, sandbox: &str, token: &str) -> reqwest::ClientBuilder {
        let proxy = reqwest::Proxy::all(format!("http://{sandbox}:{token}@{}", self.addr)).unwrap();
        reqwest::Client::builder()
            .proxy(proxy)
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

pub async fn start_proxy(up: &Upstream, opts: ProxyOpts) -> Proxy {
    init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), &up.ca_pem).unwrap();
    std::fs::write(dir.path().join("gh.secret"), format!("{GH_REAL}\n")).unwrap();
    std::fs::write(dir.path().join("other.secret"), OTHER_REAL).unwrap();
    // rebind.test is left to the (test) resolver.
    let resolve: String = NAMES
        .iter()
        .filter(|n| **n != "rebind.test")
        .map(|n| format!("    {n}: 127.0.0.1\n"))
        .collect();
    let egress: String = opts
        .egress_allow
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
admin_token_env: {ADMIN_ENV}
ca: {{ cert: ca.pem, key: ca-key.pem }}
upstream_roots: [upstream-ca.pem]
audit_log: audit.jsonl
egress: {{ default: deny, allow_hosts: [{egress}] }}
network:
  allow_private: {allow_private}
  resolve:
{resolve}credentials:
  GITHUB_TOKEN:
    value_file: gh.secret
    allowed_hosts: ["api.github.test:{port}"]
    positions: [header:Authorization, "query:access_token"]
  OTHER:
    value_file: other.secret
    allowed_hosts: ["other.github.test:{port}"]
    positions: [header:Authorization, "form:token", "json:/auth/token"]
{extra}"#,
        port = up.port,
        allow_private = opts.allow_private,
        extra = opts.extra_yaml,
    );
    let path = dir.path().join("vault.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::load(&path).unwrap();
    let audit_path = config.audit_log.clone();
    let running = VaultProxy::start_with(
        config,
        StartOptions {
            limits: opts.limits,
            resolver: opts.resolver,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    Proxy {
        addr: running.proxy_addr(),
        admin: running.admin_addr(),
        ca_pem: running.ca_pem().to_string(),
        running: Some(running),
        dir,
        audit_path,
    }
}

pub fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Sends a raw CONNECT; returns the stream and the response head text.
pub async fn raw_connect(
    proxy: SocketAddr,
    target: &str,
    auth: Option<&str>,
) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Reads until CRLFCRLF (byte by byte: leaves the rest of the stream untouched).
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_string()
}

/// TLS over an established tunnel with the given SNI and ALPN, trusting the proxy CA.
pub async fn tls_over(
    s: TcpStream,
    sni: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, s)
        .await
}

use rustls::pki_types::pem::PemObject;

/// Audit-log probes: the upstream (keyed by its TLS port) reads the named
/// log the moment it receives a request, to prove what was written before
/// the request arrived.
static PROBES: Mutex<Vec<(u16, PathBuf, Vec<String>)>> = Mutex::new(Vec::new());

pub fn probe_audit_log_at(up: &Upstream, log: PathBuf) {
    PROBES.lock().unwrap().push((up.port, log, Vec::new()));
}

/// The log contents read at each receipt on `up`.
pub fn audit_log_at_receipts(up: &Upstream) -> Vec<String> {
    PROBES
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _, _)| *p == up.port)
        .flat_map(|(_, _, r)| r.clone())
        .collect()
}

fn probe_audit_log(port: u16) {
    for (p, log, reads) in PROBES.lock().unwrap().iter_mut() {
        if *p == port {
            reads.push(std::fs::read_to_string(log).unwrap_or_default());
        }
    }
}
