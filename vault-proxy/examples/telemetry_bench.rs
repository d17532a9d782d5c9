//! Load driver for bench/telemetry: the vault proxy's throughput with tracing off vs on (and,
//! with `--baseline-bin`, a build from before tracing existed), in one run. Release proxies,
//! same config; "on" exports to an OTLP/HTTP sink (in this process, or `--sink`) and its grant
//! carries a `traceparent`, so every audited decision (a swap and a scrub per request — the
//! upstream echoes the credential — plus the tunnel's connect record) becomes a `vault.egress`
//! span. Rounds rotate the variants; medians are reported.
//! Loopback only.
//!
//! `cargo run --release -p vault-proxy --example telemetry_bench -- --help`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
const HOST: &str = "bench.test";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[derive(Parser, Clone)]
struct Args {
    /// vault-proxy binary (release).
    #[arg(long, default_value = "target/release/vault-proxy")]
    proxy_bin: PathBuf,
    /// A vault-proxy built without tracing (bench/telemetry/run.sh: BASELINE_REF), run as a
    /// third variant, "base".
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// off/on alternations.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Instead of throughput: run each proxy under `valgrind --tool=callgrind` (one at a time)
    /// and print its instructions per request (all threads, exporter included) over this many
    /// sequential swaps on one tunnel, counted after a warm-up and until the last export.
    #[arg(long)]
    callgrind: Option<usize>,
    /// Where the callgrind files go (`vault.<variant>.out.1`, for `callgrind_annotate`).
    #[arg(long, default_value = "callgrind-out")]
    callgrind_out: PathBuf,
    /// Export to this OTLP/HTTP sink (`host:port`, e.g. the `otlp_sink` example in a process
    /// of its own, as bench/telemetry/run.sh starts it) instead of one in this process, whose
    /// reads share the runtime that drives the load and the upstream. Measured, the place
    /// hardly matters (on/off 0.929 / 0.928 separate, 0.921 / 0.904 in-process); the
    /// separate sink keeps both halves of run.sh alike.
    #[arg(long)]
    sink: Option<SocketAddr>,
}

#[derive(Clone)]
struct Target {
    proxy: SocketAddr,
    upstream: SocketAddr,
    roots: Arc<rustls::ClientConfig>,
    /// `sandbox:token`, base64.
    proxy_auth: String,
    stub: String,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn open(t: &Target) -> anyhow::Result<Sender> {
    let mut s = TcpStream::connect(t.proxy).await?;
    let _ = s.set_nodelay(true);
    let target = format!("{HOST}:{}", t.upstream.port());
    s.write_all(
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {}\r\n\r\n",
            t.proxy_auth
        )
        .as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            anyhow::bail!("proxy closed");
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        anyhow::bail!("CONNECT failed: {}", String::from_utf8_lossy(&head));
    }
    let tls = tokio_rustls::TlsConnector::from(t.roots.clone())
        .connect(ServerName::try_from(HOST).unwrap(), s)
        .await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn one(t: &Target, send: &mut Sender) -> anyhow::Result<()> {
    let req = Request::get("/")
        .header("host", format!("{HOST}:{}", t.upstream.port()))
        .header("authorization", format!("Bearer {}", t.stub))
        .body(Empty::<Bytes>::new())?;
    send.ready().await?;
    let resp = send.send_request(req).await?;
    if resp.status() != 200 {
        anyhow::bail!("status {}", resp.status());
    }
    resp.into_body().collect().await?;
    Ok(())
}

/// Requests per second over `dur` with `conc` keep-alive workers; (rps, p50 ms, errors).
async fn run(t: &Target, conc: usize, dur: Duration) -> (f64, f64, usize) {
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
                    if conn.is_none() {
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
                            eprintln!("{e}");
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
    let p50 = all
        .get(all.len() / 2)
        .map_or(f64::NAN, |v| *v as f64 / 1000.0);
    (
        all.len() as f64 / start.elapsed().as_secs_f64(),
        p50,
        errors,
    )
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

/// The HTTPS upstream (`bench.test`), echoing the credential so the proxy scrubs.
async fn upstream() -> (SocketAddr, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
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
                    let auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap_or("").to_string())
                        .unwrap_or_default();
                    let body = format!("{{\"ok\":true,\"auth\":\"{auth}\"}}");
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

/// An OTLP/HTTP sink: answers every export `200` with an empty response, counting bytes.
async fn sink(bytes: Arc<AtomicU64>, requests: Arc<AtomicU64>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let (bytes, requests) = (bytes.clone(), requests.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (bytes, requests) = (bytes.clone(), requests.clone());
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        bytes.fetch_add(body.map_or(0, |b| b.len() as u64), Ordering::Relaxed);
                        requests.fetch_add(1, Ordering::Relaxed);
                        let mut r = Response::new(Full::new(Bytes::new()));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(addr: SocketAddr) {
    // Long enough for a proxy starting under valgrind.
    for _ in 0..2400 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} never opened");
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a proxy in its own directory and issues a grant through its admin API.
async fn proxy(
    bin: &std::path::Path,
    name: &str,
    base: &std::path::Path,
    up: SocketAddr,
    up_pem: &str,
    otlp: Option<SocketAddr>,
    callgrind_out: Option<&std::path::Path>,
) -> anyhow::Result<(Kill, Target)> {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("upstream-ca.pem"), up_pem)?;
    std::fs::write(dir.join("gh.secret"), REAL)?;
    let (vport, aport) = (free_port(), free_port());
    std::fs::write(
        dir.join("vault.yaml"),
        format!(
            "listen: 127.0.0.1:{vport}\nadmin_listen: 127.0.0.1:{aport}\nupstream_roots: [upstream-ca.pem]\naudit_log: audit.jsonl\n\
             egress: {{ default: deny }}\nnetwork: {{ allow_private: true, resolve: {{ {HOST}: 127.0.0.1 }} }}\n\
             credentials:\n  GITHUB_TOKEN: {{ value_file: gh.secret, allowed_hosts: [\"{HOST}:{}\"] }}\n\
             limits: {{ tunnels_per_sandbox: 4096 }}\n",
            up.port()
        ),
    )?;
    let mut cmd = match callgrind_out {
        None => Command::new(bin),
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(bin)
                .stderr(Stdio::null());
            c
        }
    };
    cmd.args(["serve", "--config"])
        .arg(dir.join("vault.yaml"))
        .env("RUST_LOG", "warn")
        .env("AIRLOCK_VAULT_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(Stdio::null());
    if let Some(sink) = otlp {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{sink}"));
    }
    let child = Kill(cmd.spawn()?);
    let vaddr: SocketAddr = format!("127.0.0.1:{vport}").parse()?;
    let aaddr: SocketAddr = format!("127.0.0.1:{aport}").parse()?;
    wait_port(vaddr).await;
    wait_port(aaddr).await;
    // The grant, over the admin API (plain HTTP/1.1 on loopback).
    let mut body =
        serde_json::json!({"sandbox": format!("sb-{name}"), "credentials": ["GITHUB_TOKEN"]});
    if otlp.is_some() {
        body["traceparent"] = TRACEPARENT.into();
    }
    let body = body.to_string();
    let mut s = TcpStream::connect(aaddr).await?;
    s.write_all(
        format!(
            "POST /v1/grants HTTP/1.1\r\nHost: {aaddr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw);
    let json = raw
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .ok_or_else(|| anyhow::anyhow!("bad admin answer {raw}"))?;
    let json = &json[json.find('{').unwrap_or(0)..=json.rfind('}').unwrap_or(0)];
    let issued: serde_json::Value = serde_json::from_str(json)?;
    let token = issued["token"].as_str().unwrap_or_default();
    let stub = issued["stubs"]["GITHUB_TOKEN"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no stub in {issued}"))?
        .to_owned();
    use base64::Engine;
    let proxy_auth = base64::engine::general_purpose::STANDARD.encode(format!("sb-{name}:{token}"));
    let ca = std::fs::read_to_string(dir.join("ca.pem"))?;
    Ok((
        child,
        Target {
            proxy: vaddr,
            upstream: up,
            roots: client_config(&ca),
            proxy_auth,
            stub,
        },
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let (up, up_pem) = upstream().await;
    let (sink_bytes, sink_requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sink_addr = match args.sink {
        Some(addr) => addr,
        None => sink(sink_bytes.clone(), sink_requests.clone()).await,
    };
    if let Some(requests) = args.callgrind {
        return callgrind(&args, requests, dir.path(), up, &up_pem, sink_addr).await;
    }
    let mut variants: Vec<(&str, Kill, Target)> = Vec::new();
    if let Some(base) = &args.baseline_bin {
        let (p, t) = proxy(base, "base", dir.path(), up, &up_pem, None, None).await?;
        variants.push(("base", p, t));
    }
    let (p, t) = proxy(&args.proxy_bin, "off", dir.path(), up, &up_pem, None, None).await?;
    variants.push(("off", p, t));
    let (p, t) = proxy(
        &args.proxy_bin,
        "on",
        dir.path(),
        up,
        &up_pem,
        Some(sink_addr),
        None,
    )
    .await?;
    variants.push(("on", p, t));
    let dur = Duration::from_secs(args.duration);
    // Warm-up (leaf certificates, pools).
    for (_, _, t) in &variants {
        run(t, 2, Duration::from_millis(500)).await;
    }
    println!(
        "# vault proxy, tracing off vs on (every decision a span, exported to a local OTLP sink){}; c={} keep-alive, {}s per phase, {} rounds",
        if args.baseline_bin.is_some() {
            " vs a build without tracing (base)"
        } else {
            ""
        },
        args.concurrency,
        args.duration,
        args.rounds
    );
    let n = variants.len();
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); n];
    for round in 1..=args.rounds {
        // Rotate the order each round, so no variant always runs first or last.
        for i in 0..n {
            let k = (i + round) % n;
            let (name, _, t) = &variants[k];
            let (r, p, e) = run(t, args.concurrency, dur).await;
            println!("round {round} {name:<4} {r:.0} req/s, p50 {p:.3} ms, errors {e}");
            rps[k].push(r);
            p50s[k].push(p);
        }
    }
    // Let the last batch go out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let med: Vec<(f64, f64)> = (0..n)
        .map(|k| (median(rps[k].clone()), median(p50s[k].clone())))
        .collect();
    let line: Vec<String> = variants
        .iter()
        .zip(&med)
        .map(|((name, _, _), (r, p))| format!("{name} {r:.0} req/s (p50 {p:.3} ms)"))
        .collect();
    println!("vault median: {}", line.join(", "));
    let of = |name: &str| {
        variants
            .iter()
            .position(|(v, _, _)| *v == name)
            .map(|k| med[k].0)
    };
    if let (Some(off), Some(on)) = (of("off"), of("on")) {
        println!(
            "vault on/off throughput {:.3} (cost {:.1}%)",
            on / off,
            (1.0 - on / off) * 100.0
        );
    }
    if let (Some(base), Some(off)) = (of("base"), of("off")) {
        println!(
            "vault off/base throughput {:.3} (cost {:.1}%)",
            off / base,
            (1.0 - off / base) * 100.0
        );
    }
    if args.sink.is_none() {
        println!(
            "OTLP sink: {} export requests, {:.1} MB of spans",
            sink_requests.load(Ordering::Relaxed),
            sink_bytes.load(Ordering::Relaxed) as f64 / 1e6
        );
    } else {
        println!("OTLP sink: the one at {sink_addr} (it prints its own counts)");
    }
    Ok(())
}

/// Instructions per swap of each variant under callgrind: counters zeroed after start-up, the
/// grant and a warm-up; dumped after the measured swaps and one more export period (the batch
/// processor exports every second), so the exporter's encoding and HTTP requests are counted.
async fn callgrind(
    args: &Args,
    requests: usize,
    dir: &std::path::Path,
    up: SocketAddr,
    up_pem: &str,
    sink: SocketAddr,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.callgrind_out)?;
    let out = std::fs::canonicalize(&args.callgrind_out)?;
    let mut variants: Vec<(&str, &std::path::Path, Option<SocketAddr>)> = Vec::new();
    if let Some(base) = &args.baseline_bin {
        variants.push(("base", base, None));
    }
    variants.push(("off", &args.proxy_bin, None));
    variants.push(("on", &args.proxy_bin, Some(sink)));
    let mut per_request = Vec::new();
    for (name, bin, otlp) in variants {
        let file = out.join(format!("vault.{name}.out"));
        let dumped = out.join(format!("vault.{name}.out.1"));
        let _ = std::fs::remove_file(&dumped);
        let (child, t) = proxy(bin, name, dir, up, up_pem, otlp, Some(&file)).await?;
        let pid = child.0.id().to_string();
        let mut conn = open(&t).await?;
        for _ in 0..requests / 10 + 20 {
            one(&t, &mut conn).await?;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let control = |flag: &str| {
            let ok = Command::new("callgrind_control")
                .args([flag, pid.as_str()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            anyhow::ensure!(ok, "callgrind_control {flag} {pid} failed");
            Ok(())
        };
        control("-z")?;
        for _ in 0..requests {
            one(&t, &mut conn).await?;
        }
        tokio::time::sleep(Duration::from_millis(2000)).await;
        control("-d")?;
        let mut total = None;
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(&dumped) {
                total = text
                    .lines()
                    .find_map(|l| l.strip_prefix("summary:").or(l.strip_prefix("totals:")))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
                if total.is_some() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let total = total.ok_or_else(|| anyhow::anyhow!("no totals in {}", dumped.display()))?;
        let each = total / requests as u64;
        println!("vault {name}: {total} instructions for {requests} swaps = {each} per request");
        per_request.push((name, each as f64));
        drop(conn);
        drop(child);
    }
    let of = |n: &str| per_request.iter().find(|(v, _)| *v == n).map(|x| x.1);
    if let (Some(off), Some(on)) = (of("off"), of("on")) {
        println!("vault instructions on/off {:.3}", on / off);
    }
    if let (Some(base), Some(off)) = (of("base"), of("off")) {
        println!("vault instructions off/base {:.3}", off / base);
    }
    Ok(())
}
