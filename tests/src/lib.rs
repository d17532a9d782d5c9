//! Harness for end-to-end tests: locate the workspace binaries, start a real `brain` on
//! `127.0.0.1:0`, talk to it over HTTP, kill it (gracefully or with SIGKILL) and restart it on
//! the same config and database.
//!
//! Binaries are not built here: run `cargo build -p brain -p sandbox-agent` (or
//! `cargo build --workspace --bins`) first. `CARGO_BIN_EXE_*` only covers a test's own package,
//! so [`bin_path`] finds them in the target directory instead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use reqwest::StatusCode;
use serde_json::Value;

/// How long a brain may take to print `listening on` (docker ping, reconciliation).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub mod fake_daytona;
pub mod fake_e2b;
pub mod fake_github;
pub mod fake_k8s;
pub mod fake_oauth;
pub mod fake_slack;
pub mod otlp_receiver;
pub mod spec_schemas;
pub mod upstream;
pub mod vault;

/// `target/<profile>/<name>`, found from the running test or example executable
/// (`target/debug/deps/test-xxxx` or `target/debug/examples/demo` → `target/debug/<name>`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a parent dir")
        .to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "{} not found; build the binaries first: `cargo build --workspace --bins` \
             (or `cargo build -p brain -p sandbox-agent`)",
            path.display()
        );
    }
    path
}

/// Whether `docker info` succeeds. With `AIRLOCK_REQUIRE_DOCKER=1`, a missing engine panics
/// instead of letting docker tests skip.
pub fn docker_available() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var("AIRLOCK_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("AIRLOCK_REQUIRE_DOCKER=1 but `docker info` fails");
    }
    ok
}

/// `AIRLOCK_TEST_POSTGRES_URL`, if set. With `AIRLOCK_REQUIRE_POSTGRES=1`, unset panics.
pub fn postgres_url() -> Option<String> {
    match std::env::var("AIRLOCK_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("AIRLOCK_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("AIRLOCK_REQUIRE_POSTGRES=1 but AIRLOCK_TEST_POSTGRES_URL is not set");
            }
            None
        }
    }
}

/// A new, empty database on the server of [`postgres_url`] (`airlock_e2e_<random>`), so tests
/// running in parallel never share tables. `None` when no PostgreSQL is configured.
pub async fn fresh_postgres_database() -> Option<String> {
    use sqlx::Connection;
    let url = postgres_url()?;
    let name = format!("airlock_e2e_{}", random_hex(8));
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connecting to AIRLOCK_TEST_POSTGRES_URL: {e}"));
    // The name is our own `[a-z0-9_]` string, so it needs no escaping.
    let sql = format!("CREATE DATABASE {name}");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    let _ = conn.close().await;
    let mut parsed = reqwest::Url::parse(&url).expect("AIRLOCK_TEST_POSTGRES_URL is a URL");
    parsed.set_path(&format!("/{name}"));
    Some(parsed.to_string())
}

/// Installs rustls' `ring` provider (reqwest is built without one). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A plain-HTTP client that ignores proxy env vars.
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("building the reqwest client")
}

#[derive(Debug, Clone)]
pub struct BrainOptions {
    /// `--backend` value: local, docker, auto…
    pub backend: String,
    /// Database URL; `None` = a SQLite file in the data dir.
    pub database_url: Option<String>,
    /// YAML merged over the generated config (maps merge key by key), e.g.
    /// `"sandbox:\n  reaper_interval_ms: 200\n"`.
    pub extra_yaml: String,
    /// Extra env vars for the brain process.
    pub env: Vec<(String, String)>,
}

impl Default for BrainOptions {
    fn default() -> Self {
        Self {
            backend: "local".into(),
            database_url: None,
            extra_yaml: String::new(),
            env: Vec::new(),
        }
    }
}

/// A running `brain serve`. Killed (SIGKILL) on drop, together with any local-backend
/// sandbox processes it left (they live under [`BrainProcess::data_dir`]).
pub struct BrainProcess {
    pub base_url: String,
    pub master_key: String,
    pub http: reqwest::Client,
    opts: BrainOptions,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    child: Option<Child>,
    /// Every brain process started so far (a restart adds one): their spare networks are
    /// removed on drop.
    pids: Vec<u32>,
}

impl BrainProcess {
    /// Writes the config into a fresh data dir and starts the brain; panics (with the brain's
    /// log) if it does not print `listening on` in time.
    pub async fn start(opts: BrainOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("airlock-e2e-")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("airlock.yaml");
        let database_url = opts
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("brain.db").display()));
        let mut config = serde_json::json!({
            "backend": opts.backend,
            "database_url": database_url,
            "sandbox": {
                "local": {
                    "state_dir": dir.path().join("local-state"),
                    "temp_root": dir.path().join("sandboxes"),
                }
            }
        });
        std::fs::create_dir_all(dir.path().join("sandboxes")).expect("sandboxes dir");
        if !opts.extra_yaml.trim().is_empty() {
            let extra: Value = serde_saphyr::from_str(&opts.extra_yaml)
                .unwrap_or_else(|e| panic!("extra_yaml is not valid YAML: {e}"));
            merge(&mut config, extra);
        }
        // JSON is valid YAML, and keeps the file exactly what we built.
        std::fs::write(
            &config_path,
            serde_json::to_string_pretty(&config).expect("config json"),
        )
        .expect("writing config");
        let master_key = format!("e2e-{}", random_hex(16));
        let mut brain = Self {
            base_url: String::new(),
            master_key,
            http: http_client(),
            opts,
            dir,
            config_path,
            child: None,
            pids: Vec::new(),
        };
        brain.spawn().await;
        brain
    }

    async fn spawn(&mut self) {
        self.spawn_on("127.0.0.1:0").await;
    }

    async fn spawn_on(&mut self, listen: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening brain.log");
        let mut cmd = Command::new(bin_path("brain"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--listen")
            .arg(listen)
            .current_dir(self.dir.path())
            .env_remove("AIRLOCK_LISTEN")
            .env_remove("AIRLOCK_DATABASE_URL")
            .env_remove("AIRLOCK_BACKEND")
            .env("AIRLOCK_MASTER_KEY", &self.master_key)
            .env(
                "RUST_LOG",
                std::env::var("AIRLOCK_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (key, value) in &self.opts.env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().expect("spawning brain");
        self.pids.push(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(|l| l.ok());
            let _ = tx.send(first);
            // Keep draining so the brain never blocks on a full stdout pipe.
            for _ in lines {}
        });
        self.child = Some(child);
        let line = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "brain did not print `listening on` ({other:?}, exit {status:?}); log:\n{}",
                    self.log()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"));
        self.base_url = format!("http://{addr}");
        self.wait_healthy().await;
    }

    /// The brain binds before it reconciles sandboxes; `/healthz` answers once it serves.
    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ok = self
                .http
                .get(self.url("/healthz"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!("brain not healthy (exit {exited:?}); log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("brain.log")
    }

    /// Everything the brain wrote to stderr so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident set size of the brain (`VmHWM`), in KiB.
    pub fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGKILL, no chance to clean up (what a crash looks like).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit (SIGKILL after 15 s).
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: plain syscall on our own child's pid, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the brain again on the same config and database (stopping it gracefully first
    /// if it still runs). The port changes; `base_url` is updated.
    pub async fn restart(&mut self) {
        self.terminate();
        self.spawn().await;
    }

    /// Like [`BrainProcess::restart`], but on the same address, so clients holding the URL
    /// (an MCP client and its session) carry on against the new process.
    pub async fn restart_same_port(&mut self) {
        self.terminate();
        let addr = self.base_url.trim_start_matches("http://").to_string();
        self.spawn_on(&addr).await;
    }

    /// `body` is anything serializable: `json!({..})` or a reference to one.
    pub async fn post_json(&self, path: &str, body: impl serde::Serialize) -> (StatusCode, Value) {
        let req = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.master_key)
            .json(&body);
        send(req).await
    }

    /// POST with a raw body (malformed JSON tests); `content_type` as given.
    pub async fn post_raw(
        &self,
        path: &str,
        body: &str,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let req = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.master_key)
            .header("content-type", content_type)
            .body(body.to_string());
        send(req).await
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        send(self.http.get(self.url(path)).bearer_auth(&self.master_key)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        send(
            self.http
                .delete(self.url(path))
                .bearer_auth(&self.master_key),
        )
        .await
    }

    /// `POST path` asking for SSE; returns `(event name, data as JSON)` in order.
    pub async fn post_sse(
        &self,
        path: &str,
        body: impl serde::Serialize,
    ) -> (StatusCode, Vec<(String, Value)>) {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.master_key)
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .expect("sending SSE request");
        let status = resp.status();
        let text = resp.text().await.expect("reading SSE body");
        (status, parse_sse(&text))
    }
}

impl Drop for BrainProcess {
    fn drop(&mut self) {
        self.kill9();
        // A killed docker brain cannot remove its spare networks (the next start on the same
        // database would sweep them; a test's database is gone with it).
        if matches!(self.opts.backend.as_str(), "docker" | "auto") {
            for pid in &self.pids {
                let filter = format!("label=airlock.spare.pid={pid}");
                let nets = vault::docker_cli(&["network", "ls", "-q", "--filter", &filter]);
                for n in nets.split_whitespace() {
                    vault::docker_cli(&["network", "rm", n]);
                }
            }
        }
        // Local sandboxes outlive the brain on purpose (adoption); tests must not leak them.
        kill_sessions_under(self.dir.path());
    }
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("sending request to the brain");
    let status = resp.status();
    let text = resp.text().await.expect("reading response body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Splits an SSE body into `(event, data)` pairs (data parsed as JSON when it is).
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = String::from("message");
        let mut data = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if data.is_empty() {
            continue;
        }
        let data = data.join("\n");
        let value = serde_json::from_str(&data).unwrap_or(Value::String(data));
        events.push((name, value));
    }
    events
}

/// Deep-merges `extra` into `base` (objects key by key; anything else replaces).
fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fields of `/proc/<pid>/stat`: (state, session id).
fn stat_of(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((state, session))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn is_live(pid: i32) -> bool {
    stat_of(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Live (non-zombie) processes whose command line contains `needle`.
pub fn processes_with_cmdline(needle: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle) && is_live(*pid)
        })
        .collect()
}

/// Live processes whose environment has `key=value` (readable for our own processes). Every
/// process of a local sandbox carries `AIRLOCK_SANDBOX_ID=<id>`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<i32> {
    let needle = format!("{key}={value}");
    all_pids()
        .into_iter()
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ
                .split(|b| *b == 0)
                .any(|entry| entry == needle.as_bytes())
                && is_live(*pid)
        })
        .collect()
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILLs what local sandboxes under `dir` left: agents (their command line names `dir`)
/// with every process of their session (agents are session leaders), and any process whose
/// working directory is under `dir`.
fn kill_sessions_under(dir: &Path) {
    let needle = dir.display().to_string();
    let me = std::process::id() as i32;
    for _ in 0..20 {
        let sessions: Vec<i32> = processes_with_cmdline(&needle)
            .into_iter()
            .filter(|pid| stat_of(*pid).is_some_and(|(_, sid)| sid == *pid))
            .collect();
        let victims: Vec<i32> = all_pids()
            .into_iter()
            .filter(|pid| *pid != me && is_live(*pid))
            .filter(|pid| {
                let in_session = stat_of(*pid).is_some_and(|(_, sid)| sessions.contains(&sid));
                let cwd_inside = std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(dir));
                in_session || cwd_inside
            })
            .collect();
        if victims.is_empty() {
            return;
        }
        for pid in victims {
            // SAFETY: plain syscall; these processes belong to sandboxes under this data dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_bodies_split_into_events() {
        let text = "event: stdout\ndata: {\"type\":\"stdout\",\"data\":\"hi\"}\n\n: keep-alive\n\nevent: exit\ndata: {\"type\":\"exit\"}\n\n";
        let events = parse_sse(text);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].0, "stdout");
        assert_eq!(events[0].1["data"], "hi");
        assert_eq!(events[1].0, "exit");
    }

    #[test]
    fn extra_yaml_merges_into_nested_maps() {
        let mut base = serde_json::json!({"a": 1, "sandbox": {"local": {"x": 1}, "keep": true}});
        merge(
            &mut base,
            serde_json::json!({"sandbox": {"local": {"y": 2}}, "a": 3}),
        );
        assert_eq!(
            base,
            serde_json::json!({"a": 3, "sandbox": {"local": {"x": 1, "y": 2}, "keep": true}})
        );
    }
}
