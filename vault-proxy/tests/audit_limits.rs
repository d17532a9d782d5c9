//! Attack tests for the audit log that fails closed, per-sandbox limits,
//! metadata addresses, revocation before send and remote mode over TLS —
//! each through a real proxy (in-process, or the `vault-proxy` binary where
//! a process limit or a restart is part of the attack) and a real client.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;
use vault_proxy::audit::{AuditRecord, EventKind};

const BIN: &str = env!("CARGO_BIN_EXE_vault-proxy");

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

fn admin_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A `vault-proxy serve` child; killed on drop.
struct Bin {
    child: Child,
    addr: String,
    admin: String,
    tls: Option<String>,
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The minimal config the binary tests share (one credential bound to
/// `api.github.test`, names resolved to the local upstream).
fn bin_yaml(up: &Upstream, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nadmin_token_env: {ADMIN_ENV}\n\
         ca: {{ cert: ca.pem, key: ca-key.pem }}\nupstream_roots: [upstream-ca.pem]\n\
         audit_log: log/audit.jsonl\negress: {{ default: deny, allow_hosts: [allowed.test] }}\n\
         network: {{ allow_private: true, resolve: {{ api.github.test: 127.0.0.1, allowed.test: 127.0.0.1 }} }}\n\
         credentials:\n  GITHUB_TOKEN: {{ value_file: gh.secret, allowed_hosts: [\"api.github.test:{port}\"] }}\n\
         grants:\n  - {{ sandbox: sb-a, token: token-sb-a-0123, credentials: {{ GITHUB_TOKEN: {STUB} }} }}\n\
         {extra}",
        port = up.port,
    )
    .replace("upstream-ca.pem", &format!("upstream-ca-{}.pem", up.port))
}

const STUB: &str = "ghp_stubAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn write_bin_dir(dir: &Path, up: &Upstream, extra: &str) {
    std::fs::write(dir.join(format!("upstream-ca-{}.pem", up.port)), &up.ca_pem).unwrap();
    std::fs::write(dir.join("gh.secret"), GH_REAL).unwrap();
    std::fs::write(dir.join("vault.yaml"), bin_yaml(up, extra)).unwrap();
}

/// Starts the binary (optionally under `prlimit --fsize=N`), waits for its
/// listen lines. `Err(stderr)` if it exits instead.
fn spawn_bin(dir: &Path, fsize: Option<u64>, args: &[&str]) -> Result<Bin, String> {
    spawn_bin_env(dir, fsize, args, &[])
}

fn spawn_bin_env(
    dir: &Path,
    fsize: Option<u64>,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Result<Bin, String> {
    init();
    let mut cmd = match fsize {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--fsize={n}")).arg("--").arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("vault.yaml"))
        .args(args)
        .env(ADMIN_ENV, ADMIN_TOKEN)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut addr = None;
    let mut admin = None;
    let mut tls = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                if let Some(a) = l.strip_prefix("listening on ") {
                    addr = Some(a.to_string());
                } else if let Some(a) = l.strip_prefix("admin listening on ") {
                    admin = Some(a.to_string());
                } else if let Some(a) = l.strip_prefix("tls listening on ") {
                    tls = Some(a.to_string());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
        if let (Some(addr), Some(admin)) = (&addr, &admin) {
            // The tls line (if any) follows the admin line at once.
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(300))
                && let Some(a) = l.strip_prefix("tls listening on ")
            {
                tls = Some(a.to_string());
            }
            return Ok(Bin {
                child,
                addr: addr.clone(),
                admin: admin.clone(),
                tls,
            });
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    Err(String::from_utf8_lossy(&out.stderr).to_string())
}

fn bin_client(addr: &str, ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://sb-a:token-sb-a-0123@{addr}")).unwrap())
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn verify_cli(file: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(file)
        .args(args)
        .env_remove("AIRLOCK_AUDIT_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn records(path: &Path) -> Vec<AuditRecord> {
    vault_proxy::audit::read_records(path, &Default::default()).unwrap()
}

/// Item 3: a log that cannot be written (the proxy binary under
/// `prlimit --fsize`, filled by unauthenticated 407s) fails closed: swaps
/// get `503 audit_unavailable`, nothing reaches the upstream, `/healthz`
/// answers 503, and the file still verifies.
#[tokio::test]
async fn unwritable_log_refuses_swaps() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    write_bin_dir(dir.path(), &up, "");
    let bin = spawn_bin(dir.path(), Some(8192), &[]).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let c = bin_client(&bin.addr, &ca);
    let url = format!("https://api.github.test:{}/echo", up.port);
    let r = c.get(&url).bearer_auth(STUB).send().await.unwrap();
    assert_eq!(r.status(), 200, "a swap works while the log can be written");
    assert_eq!(up.seen().len(), 1);
    let health = format!("http://{}/healthz", bin.admin);
    assert_eq!(
        admin_client().get(&health).send().await.unwrap().status(),
        200
    );

    // Unauthenticated CONNECTs (407, each audited) fill the file to its limit.
    for _ in 0..200 {
        let (_, head) = raw_connect(bin.addr.parse().unwrap(), "evil.test:443", None).await;
        assert!(head.starts_with("HTTP/1.1 407"), "{head}");
        if admin_client().get(&health).send().await.unwrap().status() == 503 {
            break;
        }
    }
    assert_eq!(
        admin_client().get(&health).send().await.unwrap().status(),
        503,
        "healthz reports the unwritable log"
    );
    let r = c.get(&url).bearer_auth(STUB).send().await.unwrap();
    assert_eq!(error_code(r).await, (503, "audit_unavailable".into()));
    assert_eq!(up.seen().len(), 1, "nothing was sent without its record");
    let log = dir.path().join("log/audit.jsonl");
    let (code, out) = verify_cli(&log, &[], &[]);
    assert_eq!(code, 0, "the cut-back log verifies: {out}");
}

/// A mounted tmpfs, unmounted on drop.
struct TinyFs(PathBuf);

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Item 3 on a real full filesystem (`ENOSPC`, not the `EFBIG` of `prlimit`): the log on a
/// 64 KiB tmpfs that another file filled. Swaps go on while the log's last page has room,
/// each with its record written first; from the first failed write on, every swap gets
/// `503 audit_unavailable`, nothing more reaches the upstream, and what the file holds
/// verifies. Needs root (mount); skipped otherwise.
#[tokio::test]
async fn full_filesystem_refuses_swaps_and_sends_nothing_unrecorded() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("log");
    std::fs::create_dir(&logdir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
        .arg(&logdir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP full filesystem: cannot mount a tmpfs (needs root)");
        return;
    }
    let _fs = TinyFs(logdir.clone());
    write_bin_dir(dir.path(), &up, "");
    let bin = spawn_bin(dir.path(), None, &[]).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let c = bin_client(&bin.addr, &ca);
    let url = |i: usize| format!("https://api.github.test:{}/echo/{i}", up.port);
    let r = c.get(url(0)).bearer_auth(STUB).send().await.unwrap();
    assert_eq!(r.status(), 200, "a swap works while there is room");

    // Fill the filesystem: big blocks, then single bytes, until nothing fits.
    use std::io::Write;
    let mut filler = std::fs::File::create(logdir.join("filler")).unwrap();
    for size in [4096usize, 512, 1] {
        let block = vec![0u8; size];
        while filler.write_all(&block).is_ok() {}
    }

    let mut refused_at = None;
    for i in 1..200 {
        let r = c.get(url(i)).bearer_auth(STUB).send().await.unwrap();
        let status = r.status().as_u16();
        if status == 503 {
            assert_eq!(error_code(r).await, (503, "audit_unavailable".into()));
            refused_at = Some(i);
            break;
        }
        assert_eq!(status, 200, "request {i}: a clear answer, 200 or 503");
    }
    let refused_at = refused_at.expect("the swap was never refused on a full filesystem");
    let health = format!("http://{}/healthz", bin.admin);
    assert_eq!(
        admin_client().get(&health).send().await.unwrap().status(),
        503
    );
    let r = c.get(url(999)).bearer_auth(STUB).send().await.unwrap();
    assert_eq!(error_code(r).await, (503, "audit_unavailable".into()));

    let log = logdir.join("audit.jsonl");
    let recs = records(&log);
    let sent: Vec<usize> = up
        .seen()
        .iter()
        .filter_map(|s| s.uri.rsplit("/echo/").next()?.parse().ok())
        .collect();
    assert_eq!(
        sent,
        (0..refused_at).collect::<Vec<_>>(),
        "everything before the refusal was sent, nothing from it on"
    );
    for i in sent {
        assert!(
            recs.iter()
                .any(|r| r.event == EventKind::Swap && r.path == format!("/echo/{i}")),
            "/echo/{i} left without its swap record"
        );
    }
    drop(filler);
    let (code, out) = verify_cli(&log, &[], &[]);
    assert_eq!(code, 0, "the cut-back log verifies: {out}");
}

/// Item 3: the swap record is in the file when the upstream receives the
/// request carrying the secret (the upstream reads the log on receipt).
#[tokio::test]
async fn swap_record_written_before_the_request_leaves() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    probe_audit_log_at(&up, p.audit_path.clone());
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let c = p.client("sb-a", &token);
    for i in 0..3 {
        let r = c
            .get(format!("https://api.github.test:{}/echo?i={i}", up.port))
            .bearer_auth(&stubs["GITHUB_TOKEN"])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let reads = audit_log_at_receipts(&up);
    assert_eq!(reads.len(), 3);
    for (i, text) in reads.iter().enumerate() {
        let swaps = text
            .lines()
            .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok())
            .filter(|r| r.event == EventKind::Swap)
            .count();
        assert_eq!(swaps, i + 1, "request {i}: its swap record came first");
    }
    p.shutdown().await;
}

/// Item 3: `GET /v1/audit/head` names the last record; `audit verify
/// --head` detects a cut-off tail; a restart refuses the cut (and a removed)
/// log unless told `--new-audit-chain`.
#[tokio::test]
async fn head_endpoint_cut_tail_and_vanished_log() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    write_bin_dir(dir.path(), &up, "");
    let bin = spawn_bin(dir.path(), None, &[]).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let c = bin_client(&bin.addr, &ca);
    for _ in 0..3 {
        let r = c
            .get(format!("https://api.github.test:{}/echo", up.port))
            .bearer_auth(STUB)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let head: serde_json::Value = admin_client()
        .get(format!("http://{}/v1/audit/head", bin.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let unauth = admin_client()
        .get(format!("http://{}/v1/audit/head", bin.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    drop(bin);
    let log = dir.path().join("log/audit.jsonl");
    let recs = records(&log);
    let last = recs.last().unwrap();
    assert_eq!(head["seq"].as_u64(), Some(last.seq));
    assert_eq!(head["hash"].as_str(), Some(last.hash.as_str()));
    let head_arg = format!("{}:{}", last.seq, last.hash);
    let (code, out) = verify_cli(&log, &["--head", &head_arg], &[]);
    assert_eq!(code, 0, "{out}");

    // Cut the last two records off: the chain alone still verifies, the head does not.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines[..lines.len() - 2].join("\n") + "\n";
    std::fs::write(&log, cut).unwrap();
    assert_eq!(verify_cli(&log, &[], &[]).0, 0);
    let (code, out) = verify_cli(&log, &["--head", &head_arg], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("broken at seq {}", last.seq - 1)),
        "first missing seq: {out}"
    );
    // The proxy refuses to continue the cut log...
    let err = spawn_bin(dir.path(), None, &[]).err().expect("refused");
    assert!(err.contains("--new-audit-chain"), "{err}");
    // ...and a removed one.
    std::fs::remove_file(&log).unwrap();
    let err = spawn_bin(dir.path(), None, &[]).err().expect("refused");
    assert!(err.contains("--new-audit-chain"), "{err}");
    // Told explicitly, it starts a new chain.
    let bin = spawn_bin(dir.path(), None, &["--new-audit-chain"]).unwrap();
    let head: serde_json::Value = admin_client()
        .get(format!("http://{}/v1/audit/head", bin.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(head["seq"].as_u64(), Some(0));
}

/// Item 3: with `audit_key_env` the chain is an HMAC chain; a log rewritten
/// and re-hashed without the key fails `audit verify`.
#[tokio::test]
async fn hmac_chain_rewrite_detected() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    write_bin_dir(dir.path(), &up, "audit_key_env: IT_AUDIT_KEY\n");
    // No key in the environment: refuses to start with an unkeyed chain.
    let err = spawn_bin(dir.path(), None, &[]).err().expect("refused");
    assert!(err.contains("IT_AUDIT_KEY"), "{err}");
    let key = "it-audit-key-0123456789";
    let bin = spawn_bin_env(dir.path(), None, &[], &[("IT_AUDIT_KEY", key)]).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    let c = bin_client(&bin.addr, &ca);
    for _ in 0..2 {
        let r = c
            .get(format!("https://api.github.test:{}/echo", up.port))
            .bearer_auth(STUB)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    drop(bin);
    let log = dir.path().join("log/audit.jsonl");
    assert_eq!(verify_cli(&log, &[], &[("AIRLOCK_AUDIT_KEY", key)]).0, 0);
    assert_eq!(
        verify_cli(&log, &["--key-env", "MY_KEY"], &[("MY_KEY", key)]).0,
        0
    );
    let (code, out) = verify_cli(&log, &[], &[]);
    assert_eq!(code, 1, "without the key the chain does not verify: {out}");
    // Rewrite: turn the swap records into something else, re-hash as plain SHA-256.
    let mut prev = vault_proxy::audit::GENESIS_PREV.to_string();
    let mut out_lines = Vec::new();
    for mut r in records(&log) {
        if r.event == EventKind::Swap {
            r.credential = None;
            r.event = EventKind::Allow;
        }
        r.prev = prev.clone();
        r.hash = r.compute_hash();
        prev = r.hash.clone();
        out_lines.push(r.to_line());
    }
    std::fs::write(&log, out_lines.join("\n") + "\n").unwrap();
    let (code, out) = verify_cli(&log, &[], &[("AIRLOCK_AUDIT_KEY", key)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("broken at seq 1"), "{out}");
}

/// Item 4: a sandbox over `limits.tunnels_per_sandbox` gets
/// `429 too_many_tunnels` (audited); another sandbox is not delayed.
#[tokio::test]
async fn tunnel_limit_and_other_sandbox_unaffected() {
    let up = start_upstream().await;
    let p = start_proxy(
        &up,
        ProxyOpts {
            extra_yaml: "limits: { tunnels_per_sandbox: 8 }\n".into(),
            ..Default::default()
        },
    )
    .await;
    let (ta, _) = p.grant("sb-a", &[]);
    let (tb, _) = p.grant("sb-b", &[]);
    let target = format!("allowed.test:{}", up.port);
    let mut held = Vec::new();
    for _ in 0..8 {
        let (s, head) = raw_connect(p.addr, &target, Some(&basic("sb-a", &ta))).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(s);
    }
    let (_, head) = raw_connect(p.addr, &target, Some(&basic("sb-a", &ta))).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    // sb-b: full service, quickly, while sb-a sits at its limit.
    let c = p.client("sb-b", &tb);
    let start = Instant::now();
    for _ in 0..5 {
        let r = c
            .get(format!("https://allowed.test:{}/", up.port))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // Closing a tunnel frees a slot.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, head) = raw_connect(p.addr, &target, Some(&basic("sb-a", &ta))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, recs) = p.audit().await;
    assert!(
        recs.iter().any(|r| r.sandbox == "sb-a"
            && r.status == Some(429)
            && r.reason == "too_many_tunnels"),
        "the 429 is audited"
    );
    p.shutdown().await;
}

/// Item 4: a connection that does not authenticate within
/// `limits.unauthenticated_timeout_ms` is closed, and a flood of them holds
/// no permit an authenticated sandbox needs.
#[tokio::test]
async fn unauthenticated_connections_time_out_and_hold_no_permit() {
    let up = start_upstream().await;
    let limits = vault_proxy::Limits {
        max_connections: 16,
        ..Default::default()
    };
    let p = start_proxy(
        &up,
        ProxyOpts {
            limits,
            extra_yaml: "limits: { unauthenticated_timeout_ms: 400 }\n".into(),
            ..Default::default()
        },
    )
    .await;
    let (tb, _) = p.grant("sb-b", &[]);
    // An authenticated client connection first (it holds one permit).
    let c = p.client("sb-b", &tb);
    let ok = || async {
        c.get(format!("https://allowed.test:{}/", up.port))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    assert_eq!(ok().await.unwrap(), 200);
    // 15 silent connections + 1 that keeps failing auth: the global
    // (authenticated) pool would be full if they took permits.
    let mut flood = Vec::new();
    for _ in 0..15 {
        flood.push(tokio::net::TcpStream::connect(p.addr).await.unwrap());
    }
    let (mut noisy, head) = raw_connect(p.addr, "evil.test:443", Some(&basic("x", "y"))).await;
    assert!(head.starts_with("HTTP/1.1 407"));
    // New authenticated tunnels keep working meanwhile (a fresh connection
    // once the flood is gone: the unauthenticated pool is what it fills).
    assert_eq!(ok().await.unwrap(), 200);
    // All of them are closed by the timeout.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for s in flood.iter_mut().chain(std::iter::once(&mut noisy)) {
        // Whatever is left of a 407 body, then EOF.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest))
            .await
            .expect("closed by the unauthenticated timeout, not hanging")
            .ok();
        assert!(rest.len() < 512, "no further responses");
    }
    let (_, head) = raw_connect(
        p.addr,
        &format!("allowed.test:{}", up.port),
        Some(&basic("sb-b", &tb)),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    p.shutdown().await;
}

/// Item 6: every cloud metadata address, in every IPv4-mapped, -compatible
/// or -translated IPv6 form, is refused even with `allow_private: true`.
#[tokio::test]
async fn metadata_addresses_refused_in_every_form() {
    let up = start_upstream().await;
    let forms: Vec<String> = vault_proxy::pipeline::check_address::METADATA_V4
        .iter()
        .flat_map(|v4| {
            let [a, b, c, d] = v4.octets();
            let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
            vec![
                v4.to_string(),
                format!("::ffff:{v4}"),
                format!("::{v4}"),
                format!("::ffff:0:{v4}"),
                format!("64:ff9b::{v4}"),
                format!("64:ff9b:1::{hi:x}:{lo:x}"),
            ]
        })
        .chain(["fd00:ec2::254".to_string(), "fd00:ec2::23".to_string()])
        .collect();
    let table: std::collections::HashMap<String, String> = forms
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("m{i}.meta.test"), f.clone()))
        .collect();
    let t2 = table.clone();
    let resolver: vault_proxy::ResolveFn = std::sync::Arc::new(move |host, _| {
        let ip = t2.get(&host).map(|s| s.parse().unwrap());
        Box::pin(async move { Ok(ip.into_iter().collect()) })
    });
    let p = start_proxy(
        &up,
        ProxyOpts {
            resolver: Some(resolver),
            allow_private: true,
            egress_allow: vec!["*.meta.test"],
            ..Default::default()
        },
    )
    .await;
    let (t, _) = p.grant("sb-a", &[]);
    let c = p.client("sb-a", &t);
    for (host, ip) in &table {
        let r = c
            .get(format!("http://{host}:{}/", up.plain_port))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r).await,
            (403, "destination_not_allowed".into()),
            "{host} = {ip}"
        );
    }
    assert!(up.seen().is_empty());
    p.shutdown().await;
}

/// Item 7: a grant revoked after the swap's audit write but before the
/// upstream write: the secret is never sent.
#[tokio::test]
async fn revoked_between_audit_write_and_send() {
    let up = start_upstream().await;
    let limits = vault_proxy::Limits {
        pause_after_audit: Duration::from_millis(600),
        ..Default::default()
    };
    let p = start_proxy(
        &up,
        ProxyOpts {
            limits,
            ..Default::default()
        },
    )
    .await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let c = p.client("sb-a", &token);
    let req = c
        .get(format!("https://api.github.test:{}/echo", up.port))
        .bearer_auth(&stubs["GITHUB_TOKEN"])
        .send();
    let revoke = async {
        // Wait until the swap record is in the log, then revoke.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&p.audit_path).unwrap_or_default();
            if text.contains("\"event\":\"swap\"") || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(p.running().revoke("sb-a"));
    };
    let (r, ()) = tokio::join!(req, revoke);
    if let Ok(r) = r {
        assert_ne!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        up.seen().iter().all(|s| !s.contains(GH_REAL)),
        "the revoked grant's secret never left"
    );
    assert!(up.seen().is_empty());
    p.shutdown().await;
}

fn tls_material(dir: &Path) -> (PathBuf, String) {
    // Server cert for 127.0.0.1 signed by a server CA; a client CA and one
    // client cert for the brain.
    let mk_ca = |cn: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        rcgen::CertifiedIssuer::self_signed(p, key).unwrap()
    };
    let server_ca = mk_ca("vault server CA");
    let client_ca = mk_ca("brain client CA");
    let skey = rcgen::KeyPair::generate().unwrap();
    let scert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap()
        .signed_by(&skey, &server_ca)
        .unwrap();
    let ckey = rcgen::KeyPair::generate().unwrap();
    let ccert = rcgen::CertificateParams::new(vec!["brain".to_string()])
        .unwrap()
        .signed_by(&ckey, &client_ca)
        .unwrap();
    std::fs::write(dir.join("server.pem"), scert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), skey.serialize_pem()).unwrap();
    std::fs::write(dir.join("server-ca.pem"), server_ca.pem()).unwrap();
    std::fs::write(dir.join("client-ca.pem"), client_ca.pem()).unwrap();
    std::fs::write(
        dir.join("client.pem"),
        format!("{}{}", ccert.pem(), ckey.serialize_pem()),
    )
    .unwrap();
    (dir.join("server-ca.pem"), server_ca.pem())
}

/// Item 5: remote mode. The admin API is served over TLS and requires a
/// client certificate; the `listen_tls` listener takes proxy requests
/// inside TLS (curl `--proxy https://…`), swaps work through it.
#[tokio::test]
async fn remote_mode_over_tls() {
    let up = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    tls_material(dir.path());
    write_bin_dir(
        dir.path(),
        &up,
        "tls: { cert: server.pem, key: server-key.pem, client_ca: client-ca.pem }\nlisten_tls: 127.0.0.1:0\n",
    );
    let bin = spawn_bin(dir.path(), None, &[]).unwrap();
    let tls = bin.tls.clone().expect("tls listener");
    let server_ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("server-ca.pem")).unwrap())
            .unwrap();
    let identity =
        reqwest::Identity::from_pem(&std::fs::read(dir.path().join("client.pem")).unwrap())
            .unwrap();
    // Plain HTTP to the admin port: no answer.
    let plain = admin_client()
        .get(format!("http://{}/healthz", bin.admin))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // TLS without a client certificate: refused in the handshake.
    let no_cert = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([server_ca.clone()])
        .build()
        .unwrap()
        .get(format!("https://{}/v1/audit/head", bin.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await;
    assert!(no_cert.is_err(), "client certificate required");
    let with_cert = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([server_ca])
        .identity(identity)
        .build()
        .unwrap();
    let r = with_cert
        .get(format!("https://{}/v1/ca", bin.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mitm_ca = r.text().await.unwrap();
    assert!(mitm_ca.contains("BEGIN CERTIFICATE"));
    std::fs::write(dir.path().join("mitm-ca.pem"), &mitm_ca).unwrap();

    // A sandbox speaks TLS to the proxy, then CONNECT inside (curl).
    let url = format!("https://api.github.test:{}/echo", up.port);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--proxy"])
        .arg(format!("https://{tls}"))
        .arg("--proxy-cacert")
        .arg(dir.path().join("server-ca.pem"))
        .args(["--proxy-user", "sb-a:token-sb-a-0123", "--cacert"])
        .arg(dir.path().join("mitm-ca.pem"))
        .args(["-H", &format!("Authorization: Bearer {STUB}"), &url])
        .output()
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("\"method\":\"GET\""), "{body}");
    assert!(!body.contains(GH_REAL), "scrubbed");
    assert!(
        up.seen().iter().any(|s| s.contains(GH_REAL)),
        "swapped upstream"
    );
}
