//! A local HTTPS upstream that plays `api.github.test` and `evil.test` on `127.0.0.1`, with a
//! throwaway test CA, recording every request it receives (request line, `Host`,
//! `Authorization`). Used by the vault e2e test and the demo; the vault proxy reaches it
//! through `network.resolve` and trusts the CA through `upstream_roots`
//! (see [`crate::vault::write_vault_config`]).
//!
//! Responses: `/echo-token` reflects the configured secret back (a hostile upstream, to show
//! response scrubbing); `…/info/refs` answers a minimal git smart-HTTP advertisement (401
//! without credentials); anything else `200 ok <path>`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The host names on the upstream's certificate.
pub const BOUND_HOST: &str = "api.github.test";
pub const UNBOUND_HOST: &str = "evil.test";

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET /user HTTP/1.1`
    pub line: String,
    pub host: String,
    pub authorization: Option<String>,
}

impl Seen {
    /// The request path (`/user`).
    pub fn path(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }
}

/// A running upstream; it serves until the runtime stops.
#[derive(Clone)]
pub struct Upstream {
    pub port: u16,
    /// PEM of the CA that signed the upstream's certificate.
    pub ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Generates the CA and leaf, binds `127.0.0.1:0` and serves HTTPS, one request per
    /// connection. `echo_secret` is what `/echo-token` reflects back.
    pub async fn start(echo_secret: &str) -> Self {
        crate::install_crypto_provider();
        let (ca_pem, tls) = test_tls();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the upstream");
        let port = listener.local_addr().expect("upstream address").port();
        let upstream = Self {
            port,
            ca_pem,
            seen: Arc::default(),
        };
        tokio::spawn(serve(
            listener,
            tokio_rustls::TlsAcceptor::from(tls),
            upstream.seen.clone(),
            echo_secret.to_string(),
        ));
        upstream
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests whose path starts with `path`.
    pub fn with_path(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path().starts_with(path))
            .collect()
    }
}

/// A test CA and a leaf for [`BOUND_HOST`] and [`UNBOUND_HOST`]; returns (CA PEM, TLS config).
fn test_tls() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "airlock e2e upstream CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        CertificateParams::new(vec![BOUND_HOST.to_string(), UNBOUND_HOST.to_string()])
            .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, BOUND_HOST);
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("upstream TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca_cert.pem(), Arc::new(config))
}

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    seen: Arc<Mutex<Vec<Seen>>>,
    echo_secret: String,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        let seen = seen.clone();
        let echo_secret = echo_secret.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(20), async move {
                let mut tls = acceptor.accept(tcp).await.ok()?;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                    let n = tls.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let mut lines = head.split("\r\n");
                let line = lines.next().unwrap_or("").to_string();
                let (mut host, mut authorization) = (String::new(), None);
                for h in lines {
                    if let Some((k, v)) = h.split_once(':') {
                        match k.trim().to_ascii_lowercase().as_str() {
                            "host" => host = v.trim().to_string(),
                            "authorization" => authorization = Some(v.trim().to_string()),
                            _ => {}
                        }
                    }
                }
                let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                seen.lock().unwrap().push(Seen {
                    line,
                    host,
                    authorization: authorization.clone(),
                });
                let (status, ctype, extra, body) = if path.starts_with("/echo-token") {
                    // A hostile upstream reflecting the real secret back.
                    (
                        "200 OK",
                        "text/plain",
                        String::new(),
                        format!("your token is {echo_secret}\n"),
                    )
                } else if path.contains("/info/refs") && authorization.is_none() {
                    (
                        "401 Unauthorized",
                        "text/plain",
                        "WWW-Authenticate: Basic realm=\"e2e\"\r\n".to_string(),
                        "auth needed\n".to_string(),
                    )
                } else if path.contains("/info/refs") {
                    let zero = "0".repeat(40);
                    (
                        "200 OK",
                        "application/x-git-upload-pack-advertisement",
                        "Cache-Control: no-cache\r\n".to_string(),
                        format!(
                            "{}0000{}0000",
                            pkt("# service=git-upload-pack\n"),
                            pkt(&format!("{zero} capabilities^{{}}\0agent=e2e\n"))
                        ),
                    )
                } else {
                    ("200 OK", "text/plain", String::new(), format!("ok {path}\n"))
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.write_all(resp.as_bytes()).await.ok()?;
                tls.shutdown().await.ok()?;
                Some(())
            })
            .await;
        });
    }
}
