//! Load driver for bench/vault-proxy: measures the vault proxy (real
//! release binary, swap + scrub + audit on) against a direct call to the same
//! local HTTPS upstream and against mitmdump, in one run. Loopback only.
//!
//! `cargo run --release -p vault-proxy --example vault_bench -- --help`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REAL: &str = "ghp_BenchRealTokenBenchRealTokenBenchReal";
const STUB: &str = "ghp_stubAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const HOST: &str = "bench.test";
/// A second credential with a full scope (five positions, path globs, methods): what
/// position checking costs over the default single position is `vault-scoped` vs `vault`.
const SCOPED_REAL: &str = "sk-ScopedRealKeyScopedRealKeyScopedRealK";
const SCOPED_STUB: &str = "sk-stubBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
/// No stub at all: egress allowed, audited once per tunnel (no write-before-send).
const NO_STUB: &str = "anonymous";

#[derive(Parser, Clone)]
struct Args {
    /// vault-proxy binary (release).
    #[arg(long, default_value = "target/release/vault-proxy")]
    proxy_bin: PathBuf,
    /// mitmdump binary; skipped if not found.
    #[arg(long, default_value = "mitmdump")]
    mitmdump: String,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Concurrent keep-alive connections in the throughput phase.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Open tunnels for the RSS measurement.
    #[arg(long, default_value_t = 1000)]
    tunnels: usize,
    /// Each c=1 and c=N phase is split into this many rounds that alternate between the
    /// targets, so load drifting on a shared machine hits every target alike.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// A v1 vault-proxy binary (before credential positions: commit e9f88af, built by
    /// `run.sh`), run beside the current one as the `vault-v1` baseline of the same run.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
}

#[derive(Clone)]
struct Target {
    name: &'static str,
    /// None = direct to upstream.
    proxy: Option<SocketAddr>,
    upstream: SocketAddr,
    roots: Arc<rustls::ClientConfig>,
    auth: &'static str,
}

fn client_config(pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn open(t: &Target) -> anyhow::Result<Sender> {
    let tcp = match t.proxy {
        None => TcpStream::connect(t.upstream).await?,
        Some(p) => {
            let mut s = TcpStream::connect(p).await?;
            let _ = s.set_nodelay(true);
            let target = format!("{HOST}:{}", t.upstream.port());
            let auth = base64_encode("sb-bench:bench-token-123");
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n").as_bytes()).await?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).await? == 0 {
                    anyhow::bail!("proxy closed");
                }
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                anyhow::bail!("CONNECT failed: {}", String::from_utf8_lossy(&head));
            }
            s
        }
    };
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(t.roots.clone())
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn one(t: &Target, send: &mut Sender) -> anyhow::Result<()> {
    let req = Request::get("/")
        .header("host", format!("{HOST}:{}", t.upstream.port()))
        .header("authorization", format!("Bearer {}", t.auth))
        .body(Empty::<Bytes>::new())?;
    send.ready().await?;
    let resp = send.send_request(req).await?;
    if resp.status() != 200 {
        anyhow::bail!("status {}", resp.status());
    }
    let body = resp.into_body().collect().await?.to_bytes();
    if body.windows(REAL.len()).any(|w| w == REAL.as_bytes()) && t.proxy.is_some() {
        anyhow::bail!("real secret reached the client");
    }
    Ok(())
}

struct Stats {
    lat_us: Vec<u64>,
    errors: usize,
    secs: f64,
}

impl Stats {
    fn empty() -> Stats {
        Stats {
            lat_us: Vec::new(),
            errors: 0,
            secs: 0.0,
        }
    }
    /// Adds one round's samples (call `sort` once all are in).
    fn merge(&mut self, other: Stats) {
        self.lat_us.extend(other.lat_us);
        self.errors += other.errors;
        self.secs += other.secs;
    }
    fn sort(&mut self) {
        self.lat_us.sort_unstable();
    }
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        self.lat_us[i] as f64 / 1000.0
    }
    fn rps(&self) -> f64 {
        self.lat_us.len() as f64 / self.secs
    }
}

/// `conc` workers for `dur`; keep-alive (one connection per worker) or a new tunnel per request.
async fn run(t: &Target, conc: usize, dur: Duration, keepalive: bool) -> Stats {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut conn: Option<Sender> = None;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = async {
                    if conn.is_none() || !keepalive {
                        conn = Some(open(&t).await?);
                    }
                    one(&t, conn.as_mut().unwrap()).await
                }
                .await;
                match r {
                    Ok(()) => lat.push(t0.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("{}: {e}", t.name);
                        }
                        conn = None;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for h in tasks {
        let (l, e) = h.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    Stats {
        lat_us: all,
        errors,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

async fn upstream() -> (SocketAddr, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench upstream CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![HOST.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    // Echo the credential so the proxy has something to scrub.
                    let auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap_or("").to_string())
                        .unwrap_or_default();
                    let body = format!(
                        "{{\"ok\":true,\"auth\":\"{auth}\",\"pad\":\"{}\"}}",
                        "x".repeat(128)
                    );
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca.pem())
}

async fn wait_port(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} never opened");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// p50, p99 (ms) and count of `AuditLog::commit` of one swap record, one after the other.
async fn audit_commit_latency(path: &std::path::Path, n: usize) -> Option<(f64, f64, usize)> {
    use vault_proxy::audit::{AuditEvent, AuditLog, Decision, EventKind};
    let log = AuditLog::open(path).await.ok()?;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let ev = AuditEvent {
            sandbox: "sb-bench".into(),
            session: None,
            event: EventKind::Swap,
            host: HOST.into(),
            port: 443,
            method: "GET".into(),
            path: format!("/repos/a/b/{i}"),
            credential: Some("GITHUB_TOKEN".into()),
            decision: Decision::Allow,
            reason: "bound_host".into(),
            status: None,
            traceparent: None,
        };
        let t = Instant::now();
        log.commit(vec![ev]).await.ok()?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    let _ = log.close().await;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    Some((pct(0.5), pct(0.99), n))
}

fn report(name: &str, mode: &str, s: &Stats) {
    println!(
        "{name:<12} {mode:<22} req/s {:>9.0}  p50 {:>7.3} ms  p99 {:>7.3} ms  n={} errors={}",
        s.rps(),
        s.pct(0.5),
        s.pct(0.99),
        s.lat_us.len(),
        s.errors
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let (up, up_pem) = upstream().await;
    std::fs::write(dir.path().join("upstream-ca.pem"), &up_pem)?;
    std::fs::write(dir.path().join("gh.secret"), REAL)?;
    std::fs::write(dir.path().join("scoped.secret"), SCOPED_REAL)?;

    // --- vault proxy (release binary) ---
    let vport = free_port();
    let aport = free_port();
    std::fs::write(
        dir.path().join("vault.yaml"),
        format!(
            "listen: 127.0.0.1:{vport}\nadmin_listen: 127.0.0.1:{aport}\nupstream_roots: [upstream-ca.pem]\naudit_log: audit.jsonl\n\
             egress: {{ default: deny, allow_hosts: [{HOST}] }}\nnetwork: {{ allow_private: true, resolve: {{ {HOST}: 127.0.0.1 }} }}\n\
             credentials:\n  GITHUB_TOKEN: {{ value_file: gh.secret, allowed_hosts: [\"{HOST}:{uport}\"] }}\n\
             \x20 SCOPED: {{ value_file: scoped.secret, allowed_hosts: [\"{HOST}:{uport}\"], \
             positions: [\"header:X-Api-Key\", \"query:key\", \"path\", \"json:/token\", \"header:Authorization\"], \
             paths: [\"/v1/**\", \"/repos/*/x/**\", \"/**\"], methods: [GET, POST] }}\n\
             limits: {{ tunnels_per_sandbox: 4096 }}\n\
             grants:\n  - sandbox: sb-bench\n    token: bench-token-123\n    credentials: {{ GITHUB_TOKEN: {STUB}, SCOPED: {SCOPED_STUB} }}\n",
            uport = up.port(),
        ),
    )?;
    let vp = Kill(
        Command::new(&args.proxy_bin)
            .args(["serve", "--config"])
            .arg(dir.path().join("vault.yaml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let vaddr: SocketAddr = format!("127.0.0.1:{vport}").parse()?;
    wait_port(vaddr).await;
    let vpid = vp.0.id();
    let vault_ca = std::fs::read_to_string(dir.path().join("ca.pem"))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_kb(vpid);

    // --- the v1 proxy (no positions, audit queued after the send), same upstream ---
    let v1 = match &args.baseline_bin {
        None => None,
        Some(bin) => {
            let v1dir = dir.path().join("v1");
            std::fs::create_dir_all(&v1dir)?;
            std::fs::write(v1dir.join("upstream-ca.pem"), &up_pem)?;
            std::fs::write(v1dir.join("gh.secret"), REAL)?;
            let (port, admin) = (free_port(), free_port());
            // v1's config: no `positions`/`limits` keys, bindings without ports.
            std::fs::write(
                v1dir.join("vault.yaml"),
                format!(
                    "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\nupstream_roots: [upstream-ca.pem]\naudit_log: audit.jsonl\n\
                     egress: {{ default: deny, allow_hosts: [{HOST}] }}\nnetwork: {{ allow_private: true, resolve: {{ {HOST}: 127.0.0.1 }} }}\n\
                     credentials:\n  GITHUB_TOKEN: {{ value_file: gh.secret, allowed_hosts: [{HOST}] }}\n\
                     grants:\n  - sandbox: sb-bench\n    token: bench-token-123\n    credentials: {{ GITHUB_TOKEN: {STUB} }}\n"
                ),
            )?;
            let child = Kill(
                Command::new(bin)
                    .args(["serve", "--config"])
                    .arg(v1dir.join("vault.yaml"))
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .spawn()?,
            );
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            wait_port(addr).await;
            let ca = std::fs::read_to_string(v1dir.join("ca.pem"))?;
            Some((child, addr, ca))
        }
    };

    // --- mitmdump with an equivalent swap + scrub addon ---
    let mport = free_port();
    let mdir = dir.path().join("mitm");
    std::fs::create_dir_all(&mdir)?;
    std::fs::write(
        mdir.join("swap.py"),
        format!(
            "STUB={STUB:?}\nREAL={REAL:?}\nclass Swap:\n    def server_connect(self, data):\n        data.server.address = ('127.0.0.1', {port})\n    \
             def request(self, flow):\n        a = flow.request.headers.get('authorization', '')\n        if STUB in a:\n            flow.request.headers['authorization'] = a.replace(STUB, REAL)\n    \
             def response(self, flow):\n        c = flow.response.content\n        if c and REAL.encode() in c:\n            flow.response.content = c.replace(REAL.encode(), STUB.encode())\naddons = [Swap()]\n",
            port = up.port()
        ),
    )?;
    let mitm = Command::new(&args.mitmdump)
        .args([
            "-q",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            &mport.to_string(),
        ])
        .args(["--set", &format!("confdir={}", mdir.display())])
        .args([
            "--set",
            &format!(
                "ssl_verify_upstream_trusted_ca={}",
                dir.path().join("upstream-ca.pem").display()
            ),
        ])
        .args(["--set", "proxyauth=sb-bench:bench-token-123"])
        .args(["-s", &mdir.join("swap.py").display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .map(Kill);
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse()?;
    let mitm_target = if mitm.is_some() {
        wait_port(maddr).await;
        let pem = std::fs::read_to_string(mdir.join("mitmproxy-ca-cert.pem"))?;
        Some(Target {
            name: "mitmdump",
            proxy: Some(maddr),
            upstream: up,
            roots: client_config(&pem),
            auth: STUB,
        })
    } else {
        eprintln!("mitmdump not found: skipped");
        None
    };

    let direct = Target {
        name: "direct",
        proxy: None,
        upstream: up,
        roots: client_config(&up_pem),
        auth: REAL,
    };
    let vault = Target {
        name: "vault",
        proxy: Some(vaddr),
        upstream: up,
        roots: client_config(&vault_ca),
        auth: STUB,
    };
    let vault_scoped = Target {
        name: "vault-scoped",
        auth: SCOPED_STUB,
        ..vault.clone()
    };
    let vault_nostub = Target {
        name: "vault-nostub",
        auth: NO_STUB,
        ..vault.clone()
    };
    let mut targets = vec![
        direct.clone(),
        vault.clone(),
        vault_scoped.clone(),
        vault_nostub.clone(),
    ];
    if let Some((_, addr, ca)) = &v1 {
        targets.push(Target {
            name: "vault-v1",
            proxy: Some(*addr),
            roots: client_config(ca),
            ..vault.clone()
        });
    }
    targets.extend(mitm_target.clone());
    let dur = Duration::from_secs(args.duration);

    println!(
        "# loopback, 2 cores shared; upstream and client in this process; vault = release binary, swap+scrub+audit on every request"
    );
    // Warm-up (leaf certs, pools).
    for t in &targets {
        let _ = run(t, 2, Duration::from_millis(500), true).await;
    }
    let rounds = args.rounds.max(1);
    println!(
        "## sequential, keep-alive (added latency); {rounds} rounds alternating between targets"
    );
    let mut p50 = Vec::new();
    let mut acc: Vec<Stats> = targets.iter().map(|_| Stats::empty()).collect();
    for _ in 0..rounds {
        for (t, a) in targets.iter().zip(acc.iter_mut()) {
            a.merge(run(t, 1, Duration::from_secs(3) / rounds, true).await);
        }
    }
    for (t, mut s) in targets.iter().zip(acc) {
        s.sort();
        report(t.name, "c=1 keep-alive", &s);
        p50.push((t.name, s.pct(0.5), s.pct(0.99)));
    }
    println!("## throughput, keep-alive, c={}", args.concurrency);
    let mut rps = Vec::new();
    let mut rss_load = 0;
    let per_round = dur / rounds;
    let mut acc: Vec<Stats> = targets.iter().map(|_| Stats::empty()).collect();
    for _ in 0..rounds {
        for (t, a) in targets.iter().zip(acc.iter_mut()) {
            let sampler = (t.name == "vault").then(|| {
                tokio::spawn(async move {
                    let mut max = 0;
                    for _ in 0..(per_round.as_millis() / 100) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        max = max.max(rss_kb(vpid));
                    }
                    max
                })
            });
            a.merge(run(t, args.concurrency, per_round, true).await);
            if let Some(h) = sampler {
                rss_load = rss_load.max(h.await.unwrap_or(0));
            }
        }
    }
    for (t, mut s) in targets.iter().zip(acc) {
        s.sort();
        report(t.name, &format!("c={} keep-alive", args.concurrency), &s);
        rps.push((t.name, s.rps()));
    }
    println!("## new tunnel per request, c=8");
    for t in targets.iter().filter(|t| !t.name.starts_with("vault-")) {
        let s = run(t, 8, Duration::from_secs(args.duration.min(5)), false).await;
        report(t.name, "c=8 new connection", &s);
    }
    // RSS at N open (idle, TLS-terminated) tunnels.
    let mut held = Vec::new();
    for i in 0..args.tunnels {
        match open(&vault).await {
            Ok(mut s) => {
                if i % 50 == 0 {
                    let _ = one(&vault, &mut s).await;
                }
                held.push(s);
            }
            Err(e) => {
                eprintln!("tunnel {i}: {e}");
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_tunnels = rss_kb(vpid);
    let mitm_rss = mitm.as_ref().map(|m| rss_kb(m.0.id()));
    // The write-before-send itself: sequential single-record commits on an idle log, in this
    // process (the proxy does the same call before it sends a swapped request).
    let commit = audit_commit_latency(&dir.path().join("commit-bench.jsonl"), 2000).await;
    println!("## summary");
    let get = |v: &Vec<(&str, f64, f64)>, n: &str| v.iter().find(|x| x.0 == n).map(|x| (x.1, x.2));
    if let (Some(d), Some(v)) = (get(&p50, "direct"), get(&p50, "vault")) {
        println!(
            "added latency (vault - direct, c=1 keep-alive): p50 {:.3} ms, p99 {:.3} ms",
            v.0 - d.0,
            v.1 - d.1
        );
    }
    if let (Some(d), Some(m)) = (get(&p50, "direct"), get(&p50, "mitmdump")) {
        println!(
            "added latency (mitmdump - direct, c=1 keep-alive): p50 {:.3} ms, p99 {:.3} ms",
            m.0 - d.0,
            m.1 - d.1
        );
    }
    if let (Some(v), Some(n)) = (get(&p50, "vault"), get(&p50, "vault-nostub")) {
        println!(
            "swap + scrub + audit write-before-send (vault - vault-nostub, c=1 keep-alive): p50 {:+.3} ms, p99 {:+.3} ms",
            v.0 - n.0,
            v.1 - n.1
        );
    }
    if let (Some(v), Some(sc)) = (get(&p50, "vault"), get(&p50, "vault-scoped")) {
        println!(
            "position checking, 5 positions + paths + methods vs the default (c=1 p50): {:.3} vs {:.3} ms, ratio {:.3}",
            sc.0,
            v.0,
            sc.0 / v.0
        );
    }
    if let (Some(v), Some(b)) = (get(&p50, "vault"), get(&p50, "vault-v1")) {
        println!(
            "v2 (positions + write-before-send) vs v1 baseline, c=1 p50: {:.3} vs {:.3} ms, ratio {:.3}",
            v.0,
            b.0,
            v.0 / b.0
        );
    }
    let r = |n: &str| rps.iter().find(|x| x.0 == n).map(|x| x.1);
    if let (Some(v), Some(b)) = (r("vault"), r("vault-v1")) {
        println!(
            "v2 vs v1 baseline throughput, c={}: ratio {:.3} ({v:.0} vs {b:.0} req/s)",
            args.concurrency,
            v / b
        );
    }
    if let (Some(v), Some(sc)) = (r("vault"), r("vault-scoped")) {
        println!(
            "position checking throughput ratio vault-scoped / vault: {:.3} ({sc:.0} vs {v:.0} req/s)",
            sc / v
        );
    }
    if let Some(c) = &commit {
        println!(
            "audit commit (write-before-send) alone, sequential: p50 {:.3} ms, p99 {:.3} ms over {} commits",
            c.0, c.1, c.2
        );
    }
    if let (Some(v), Some(m)) = (r("vault"), r("mitmdump")) {
        println!(
            "throughput vault / mitmdump: {:.1}x ({v:.0} vs {m:.0} req/s)",
            v / m
        );
    }
    if let (Some(v), Some(d)) = (r("vault"), r("direct")) {
        println!("throughput vault / direct: {:.2}", v / d);
    }
    println!(
        "vault RSS: idle {:.1} MB, under load (max) {:.1} MB, at {} open tunnels {:.1} MB",
        rss_idle as f64 / 1024.0,
        rss_load as f64 / 1024.0,
        held.len(),
        rss_tunnels as f64 / 1024.0
    );
    if let Some(m) = mitm_rss {
        println!("mitmdump RSS after run: {:.1} MB", m as f64 / 1024.0);
    }
    let audit_lines = std::fs::read_to_string(dir.path().join("audit.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    println!("vault audit records written: {audit_lines}");
    drop(held);
    drop(vp);
    drop(v1);
    Ok(())
}
