//! End to end from real docker sandboxes (image `airlock-sandbox:latest`, a real brain with its
//! embedded vault proxy), against a local HTTPS server playing `git.test`:
//!
//! - real `git` inside the sandbox clones and pushes over HTTPS through the proxy, with the
//!   credential as Basic `x-access-token:<stub>` and as `git:<stub>`: the server is git's own
//!   smart-HTTP server (`git http-backend`, run as CGI exactly as `git-http-backend(1)`
//!   describes), which sees the real token; the sandbox only ever holds the stub;
//! - the same server reflecting the secret it received back in several encodings (reason
//!   phrase, header, body raw / base64 at each alignment / URL-safe / percent-encoded, gzip,
//!   split across chunks): nothing of the real value reaches the sandbox;
//! - the audit log on a tiny full filesystem (a 64 KiB tmpfs): a swap is refused with
//!   `503 audit_unavailable` and the server receives nothing.
//!
//! Skips (printing why) without a docker engine or the image, unless `AIRLOCK_REQUIRE_DOCKER=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_tests::vault::DockerCleanup;
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// `ghp_` + 36 characters, like a GitHub token.
const REAL_TOKEN: &str = "ghp_GITrealSECRETvalue0123456789abcdefgh";
const HOST: &str = "git.test";

fn docker_ready() -> bool {
    airlock_tests::vault::docker_ready("vault docker attacks")
}

// === the git.test server ===

/// One request as the server received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Basic user and password, decoded.
    basic: Option<(String, String)>,
    authorization: Option<String>,
}

#[derive(Clone)]
struct GitServer {
    port: u16,
    ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    root: Arc<tempfile::TempDir>,
}

impl GitServer {
    async fn start() -> GitServer {
        airlock_tests::install_crypto_provider();
        let root = Arc::new(tempfile::tempdir().unwrap());
        seed_repo(root.path());
        let (ca_pem, tls) = tls_config();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = GitServer {
            port,
            ca_pem,
            seen: Arc::default(),
            root,
        };
        let s = server.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        server
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn handle(&self, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let authorization = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let basic = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            });
        let path = parts.uri.path().to_string();
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            basic: basic.clone(),
            authorization: authorization.clone(),
        });
        if let Some(kind) = path.strip_prefix("/reflect") {
            // What a hostile (or careless) API does with what it received.
            let got = authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("")
                .to_string();
            return reflect(kind, &got);
        }
        // Like GitHub: no or wrong credentials → 401 with a Basic challenge (git then asks its
        // credential helper, here the URL's user:password, and retries).
        let user = match &basic {
            Some((user, pass)) if pass == REAL_TOKEN => user.clone(),
            _ => {
                return hyper::Response::builder()
                    .status(401)
                    .header("WWW-Authenticate", "Basic realm=\"git.test\"")
                    .body(full("authentication required\n"))
                    .unwrap();
            }
        };
        self.cgi(&parts, &user, body).await
    }

    /// Runs `git http-backend` as a CGI program (git-http-backend(1)).
    async fn cgi(
        &self,
        parts: &http::request::Parts,
        user: &str,
        body: Bytes,
    ) -> hyper::Response<Body> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let mut child = tokio::process::Command::new("git")
            .arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GIT_PROJECT_ROOT", self.root.path())
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("PATH_INFO", parts.uri.path())
            .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
            .env("CONTENT_TYPE", header("content-type"))
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
            .env("GIT_PROTOCOL", header("git-protocol"))
            .env("REMOTE_USER", user)
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("git http-backend");
        let mut stdin = child.stdin.take().unwrap();
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
        let out = child.wait_with_output().await.unwrap();
        let _ = feed.await;
        let stdout = out.stdout;
        let split = stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| (i, 4))
            .or_else(|| stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
        let Some((at, sep)) = split else {
            panic!(
                "git http-backend wrote no CGI head: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let head = String::from_utf8_lossy(&stdout[..at]).to_string();
        let mut resp = hyper::Response::builder();
        let mut status = 200u16;
        for line in head.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("status") {
                    status = v.trim()[..3].parse().unwrap_or(500);
                } else {
                    resp = resp.header(k.trim(), v.trim());
                }
            }
        }
        resp.status(status)
            .body(full(stdout[at + sep..].to_vec()))
            .unwrap()
    }
}

type Body = http_body_util::StreamBody<
    futures_util::stream::BoxStream<'static, Result<hyper::body::Frame<Bytes>, std::io::Error>>,
>;

fn full(b: impl Into<Bytes>) -> Body {
    chunks(vec![b.into()])
}

/// A body sent as these separate chunks (each its own write on the wire).
fn chunks(parts: Vec<Bytes>) -> Body {
    use futures_util::StreamExt;
    let stream = futures_util::stream::iter(parts)
        .then(|b| async move {
            // A pause, so each chunk leaves in its own TLS record.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(hyper::body::Frame::data(b))
        })
        .boxed();
    http_body_util::StreamBody::new(stream)
}

/// The encodings of `secret` an echoing API might send back.
fn encodings(secret: &str) -> Vec<String> {
    let mut v = vec![secret.to_string()];
    for k in 0..3 {
        let prefixed = format!("{}{secret}", &"git:"[..k]);
        v.push(STANDARD.encode(&prefixed));
        v.push(URL_SAFE_NO_PAD.encode(&prefixed));
    }
    v.push(secret.bytes().map(|b| format!("%{b:02X}")).collect());
    v.push(secret.bytes().map(|b| format!("%{b:02x}")).collect());
    v
}

/// The parts of each encoding that depend only on the secret (base64 characters that mix in
/// a neighbouring byte dropped): if any appears in what the sandbox got, the secret leaked.
fn leak_markers(secret: &str) -> Vec<String> {
    encodings(secret)
        .into_iter()
        .map(|e| {
            if e.len() > 16 && !e.starts_with('%') && e != secret {
                e[4..e.len() - 4].to_string()
            } else {
                e
            }
        })
        .collect()
}

fn reflect(kind: &str, got: &str) -> hyper::Response<Body> {
    let mut body = String::new();
    for (i, e) in encodings(got).iter().enumerate() {
        body.push_str(&format!("enc{i}={e}\n"));
    }
    body.push_str(&format!("json={}\n", json!({"token": got, "basic": format!("Basic {}", STANDARD.encode(format!("x-access-token:{got}")))})));
    let mut resp = hyper::Response::builder()
        .status(200)
        .header("Content-Type", "text/plain")
        .header("X-Echo", got)
        .header("X-Echo-B64", STANDARD.encode(got))
        .header(
            "Set-Cookie",
            format!("t={}; Path=/", URL_SAFE_NO_PAD.encode(got)),
        );
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(format!("OK {got}").into_bytes()) {
        resp = resp.extension(reason);
    }
    let body = match kind {
        "-gzip" => {
            resp = resp.header("Content-Encoding", "gzip");
            full(gzip(body.as_bytes()))
        }
        "-split" => {
            // Every line cut in the middle of the value, each half its own chunk.
            let bytes = Bytes::from(body.into_bytes());
            let parts: Vec<Bytes> = (0..bytes.len())
                .step_by(7)
                .map(|i| bytes.slice(i..(i + 7).min(bytes.len())))
                .collect();
            chunks(parts)
        }
        _ => full(body),
    };
    resp.body(body).unwrap()
}

/// gzip(1): the server's own compressor, so the bytes are what a real server sends.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap().stdout
}

/// `root/repo.git`: a bare repository with one commit, pushes allowed.
fn seed_repo(root: &Path) {
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .current_dir(dir)
            .args([
                "-c",
                "user.name=seed",
                "-c",
                "user.email=seed@test",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(root, &["init", "-q", "--bare", "repo.git"]);
    git(
        &root.join("repo.git"),
        &["config", "http.receivepack", "true"],
    );
    let work = root.join("seed");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("README"), "seeded\n").unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "seed"]);
    git(
        &work,
        &[
            "push",
            "-q",
            root.join("repo.git").to_str().unwrap(),
            "HEAD:refs/heads/main",
        ],
    );
}

fn tls_config() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![HOST.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca_cert.pem(), Arc::new(config))
}

// === brain and sandbox ===

/// A vault config binding `GITHUB_TOKEN` to `git.test:<port>` (default position:
/// `header:Authorization`, Bearer or either half of Basic), egress to it allowed without
/// credentials (git's first request carries none), the name resolved to the server.
fn vault_config(dir: &Path, server: &GitServer, audit_log: &Path) -> PathBuf {
    std::fs::write(dir.join("git-ca.pem"), &server.ca_pem).unwrap();
    let path = dir.join("vault.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\n\
             ca: {{ cert: ca.pem, key: ca-key.pem }}\n\
             upstream_roots: [git-ca.pem]\n\
             audit_log: {}\n\
             egress: {{ default: deny, allow_hosts: [{HOST}] }}\n\
             network:\n  allow_private: true\n  resolve: {{ \"{HOST}\": \"127.0.0.1\" }}\n\
             credentials:\n  GITHUB_TOKEN:\n    value_env: REAL_GIT_TOKEN\n    allowed_hosts: [\"{HOST}:{}\"]\n",
            audit_log.display(),
            server.port
        ),
    )
    .unwrap();
    path
}

async fn brain_with(vault: &Path) -> BrainProcess {
    BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        extra_yaml: format!("vault:\n  config: {}\n", vault.display()),
        env: vec![("REAL_GIT_TOKEN".into(), REAL_TOKEN.into())],
        ..Default::default()
    })
    .await
}

async fn provision(brain: &BrainProcess) -> (String, DockerCleanup) {
    let (status, v) = brain
        .post_json("/v1/sandboxes", &json!({"credentials": ["GITHUB_TOKEN"]}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "provision: {v}\n{}",
        brain.log()
    );
    let id = v["id"].as_str().unwrap().to_string();
    (id.clone(), DockerCleanup(id))
}

async fn sh(brain: &BrainProcess, id: &str, command: &str) -> (i64, String, String) {
    let (status, v) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"command": command, "timeout_s": 90}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "exec {command:?}: {v}");
    (
        v["exit_code"].as_i64().unwrap_or(-1),
        v["stdout"].as_str().unwrap_or("").to_string(),
        v["stderr"].as_str().unwrap_or("").to_string(),
    )
}

fn assert_no_leak(what: &str, text: &str) {
    for m in leak_markers(REAL_TOKEN) {
        assert!(
            !text.contains(&m),
            "{what}: the sandbox saw the real secret ({m}):\n{text}"
        );
    }
}

#[tokio::test]
async fn git_over_https_clones_and_pushes_with_only_a_stub_in_the_sandbox() {
    if !docker_ready() {
        return;
    }
    let server = GitServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_config(dir.path(), &server, &dir.path().join("audit.jsonl"));
    let brain = brain_with(&vault).await;
    let (id, _cleanup) = provision(&brain).await;
    let (_, stub, _) = sh(&brain, &id, "printf %s \"$GITHUB_TOKEN\"").await;
    assert!(stub.starts_with("ghp_") && stub.len() == REAL_TOKEN.len() && stub != REAL_TOKEN);
    let port = server.port;

    for (user, branch) in [
        ("x-access-token", "from-x-access-token"),
        ("git", "from-git"),
    ] {
        let script = format!(
            "set -e; cd \"$(mktemp -d)\"; export GIT_TERMINAL_PROMPT=0 HOME=\"$PWD\"; \
             git clone -q https://{user}:$GITHUB_TOKEN@{HOST}:{port}/repo.git r; cd r; \
             cat README; echo '{branch}' > {branch}.txt; git add {branch}.txt; \
             git -c user.name=agent -c user.email=agent@test commit -q -m '{branch}'; \
             git push -q origin HEAD:refs/heads/{branch}; \
             git ls-remote origin; grep -rl \"$GITHUB_TOKEN\" .git/config >/dev/null && echo stub-in-config"
        );
        let (code, out, err) = sh(&brain, &id, &script).await;
        assert_eq!(code, 0, "git as {user}: {out}\n{err}\n{}", brain.log());
        assert!(out.contains("seeded"), "{out}");
        assert!(out.contains(&format!("refs/heads/{branch}")), "{out}");
        assert!(
            out.contains("stub-in-config"),
            "the sandbox's remote holds the stub: {out}"
        );
        assert_no_leak(&format!("git as {user}"), &format!("{out}{err}"));
        // The server (git's own http-backend) saw the real token, as the password, under
        // this user name, for the fetch and for the push.
        let seen = server.seen();
        let authed: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.basic.as_ref().is_some_and(|(u, _)| u == user))
            .collect();
        assert!(
            authed.iter().any(|s| s.path.ends_with("/git-upload-pack")),
            "no authenticated fetch as {user}: {seen:?}"
        );
        assert!(
            authed
                .iter()
                .any(|s| s.path.ends_with("/git-receive-pack") && s.method == "POST"),
            "no authenticated push as {user}: {seen:?}"
        );
        for s in &authed {
            assert_eq!(s.basic.as_ref().unwrap().1, REAL_TOKEN, "{s:?}");
        }
        assert!(
            seen.iter().all(
                |s| !s.authorization.as_deref().unwrap_or("").contains(&stub)
                    && s.basic.as_ref().is_none_or(|(_, p)| *p != stub)
            ),
            "a stub reached the server"
        );
    }
    // The pushes landed in the server's repository.
    let refs = Command::new("git")
        .args([
            "--git-dir",
            server.root.path().join("repo.git").to_str().unwrap(),
            "branch",
        ])
        .output()
        .unwrap();
    let refs = String::from_utf8_lossy(&refs.stdout);
    assert!(
        refs.contains("from-x-access-token") && refs.contains("from-git"),
        "{refs}"
    );
}

#[tokio::test]
async fn a_reflected_secret_never_reaches_the_sandbox_in_any_encoding() {
    if !docker_ready() {
        return;
    }
    let server = GitServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_config(dir.path(), &server, &dir.path().join("audit.jsonl"));
    let brain = brain_with(&vault).await;
    let (id, _cleanup) = provision(&brain).await;
    let (_, stub, _) = sh(&brain, &id, "printf %s \"$GITHUB_TOKEN\"").await;
    let url = format!("https://{HOST}:{}", server.port);
    let auth = "-H \"Authorization: Bearer $GITHUB_TOKEN\"";
    for (what, cmd) in [
        (
            "plain",
            format!("curl -sS -i --http1.1 {auth} {url}/reflect"),
        ),
        (
            "gzip, decoded by curl",
            format!("curl -sS -i --compressed {auth} {url}/reflect-gzip"),
        ),
        (
            "gzip, raw bytes decoded in the sandbox",
            format!(
                "curl -sS -D - {auth} {url}/reflect-gzip -o body; (gzip -dc body 2>/dev/null || cat body)"
            ),
        ),
        (
            "split across chunks",
            format!("curl -sS -i {auth} {url}/reflect-split"),
        ),
        (
            "python",
            format!(
                "python3 -c 'import os,urllib.request as u; r=u.urlopen(u.Request(\"{url}/reflect\", headers={{\"Authorization\": \"Bearer \"+os.environ[\"GITHUB_TOKEN\"]}})); print(r.status, r.reason); print(r.headers); print(r.read().decode())'"
            ),
        ),
    ] {
        let before = server.seen().len();
        let (code, out, err) = sh(&brain, &id, &format!("cd \"$(mktemp -d)\"; {cmd}")).await;
        assert_eq!(code, 0, "{what}: {out}\n{err}");
        // The server did get the real value (else this proves nothing) and sent it back.
        let seen = server.seen();
        assert!(
            seen[before..]
                .iter()
                .any(|s| s.authorization.as_deref() == Some(&format!("Bearer {REAL_TOKEN}"))),
            "{what}: the server did not receive the real token: {:?}",
            &seen[before..]
        );
        assert!(out.contains("enc0="), "{what}: no reflected body: {out}");
        assert_no_leak(what, &format!("{out}{err}"));
        // What stood there is the stub, in the same encoding.
        assert!(out.contains(&format!("enc0={stub}")), "{what}: {out}");
    }
}

/// A mounted tmpfs, unmounted on drop.
struct TinyFs(PathBuf);

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_audit_disk_refuses_the_swap_and_sends_nothing() {
    if !docker_ready() {
        return;
    }
    let server = GitServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("audit-fs");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var("AIRLOCK_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "cannot mount a tmpfs (needs root)"
        );
        eprintln!("SKIP full audit disk: cannot mount a tmpfs (needs root)");
        return;
    }
    let _fs = TinyFs(mnt.clone());
    let vault = vault_config(dir.path(), &server, &mnt.join("audit.jsonl"));
    let brain = brain_with(&vault).await;
    let (id, _cleanup) = provision(&brain).await;
    let url = format!("https://{HOST}:{}", server.port);
    let auth = "-H \"Authorization: Bearer $GITHUB_TOKEN\"";
    // Works while there is room.
    let (code, out, err) = sh(
        &brain,
        &id,
        &format!("curl -sS -o /dev/null -w '%{{http_code}}' {auth} {url}/reflect"),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "200"), "{err}");

    // Fill the filesystem: big blocks, then single bytes, until nothing fits. The log's last
    // page may still take a few records; every swap from here on either gets its record
    // written before it leaves, or is refused with 503 — never sent unrecorded.
    use std::io::Write;
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    for size in [4096usize, 512, 1] {
        let block = vec![0u8; size];
        while filler.write_all(&block).is_ok() {}
    }
    let _ = filler.flush();

    // `/reflect…` is the server's Bearer route (its git routes want Basic and answer a Bearer
    // token with 401, which is what this loop once got: a test flaw, not a fail-open).
    let mut refused_at = None;
    for i in 0..80 {
        let (_, out, err) = sh(
            &brain,
            &id,
            &format!("curl -sS -w '\\n%{{http_code}}' {auth} {url}/reflect-full-{i}"),
        )
        .await;
        if out.trim_end().ends_with("503") || err.contains("503") {
            if out.trim_end().ends_with("503") {
                assert!(out.contains("audit_unavailable"), "{out}");
            }
            refused_at = Some(i);
            break;
        }
        assert!(out.trim_end().ends_with("200"), "request {i}: {out} {err}");
    }
    let refused_at = refused_at.expect("the swap was never refused on a full audit disk");
    let log_text = std::fs::read_to_string(mnt.join("audit.jsonl")).unwrap();
    for s in server.seen() {
        if let Some(i) = s.path.strip_prefix("/reflect-full-") {
            assert!(
                i.parse::<usize>().unwrap() < refused_at,
                "the refused request reached the server"
            );
            assert!(
                log_text.contains(&format!("\"path\":\"{}\"", s.path)),
                "{} left without its audit record",
                s.path
            );
        }
    }
    // Still refused on retry (fail closed for good, not one lost record), nothing sent.
    let (_, out, err) = sh(
        &brain,
        &id,
        &format!("curl -sS -o /dev/null -w '%{{http_code}}' {auth} {url}/reflect-again"),
    )
    .await;
    assert!(out.contains("503") || err.contains("503"), "{out} {err}");
    assert!(
        server
            .seen()
            .iter()
            .all(|s| !s.path.starts_with("/reflect-again"))
    );
    // Whatever the log holds is complete lines that verify.
    drop(filler);
    let v = Command::new(airlock_tests::bin_path("vault-proxy"))
        .args(["audit", "verify"])
        .arg(mnt.join("audit.jsonl"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
