//! Chaos: two brains on one PostgreSQL, behind a TCP proxy the test can cut. Sessions run
//! long commands on the local backend through:
//! 1. a SIGKILL of one replica while the other runs with its clock 40 s ahead (leases follow
//!    the database clock, so the skewed one takes only the dead replica's sessions);
//! 2. a PostgreSQL outage of 10 s while commands finish (the proxy drops every connection and
//!    refuses new ones; the shared server keeps running for other tests);
//! 3. a graceful restart of one replica while the other runs work.
//!
//! Invariants after each fault: every session settles, none failed, no tool call has two
//! results (nor two starts), no sandbox row stays live after its session settled, and the
//! restart of one replica changes nothing in the other's sessions. Time to settle after each
//! fault is printed (`chaos: …`). Skips without `AIRLOCK_TEST_POSTGRES_URL` (fails with
//! `AIRLOCK_REQUIRE_POSTGRES=1`). Bounded: about a minute and a half.
//!
//! Needs `cargo build -p brain -p sandbox-agent` first (see `airlock_tests::bin_path`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use airlock_tests::{BrainOptions, BrainProcess, StatusCode, fresh_postgres_database};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to PostgreSQL that the test can cut: while down, live connections are dropped
/// and new ones are closed at once (what a database outage looks like to the brains).
struct Proxy {
    addr: std::net::SocketAddr,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (up, _) = watch::channel(true);
        let up_tx = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut up_rx = up_tx.subscribe();
                if !*up_rx.borrow() {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up_rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, task }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `url` with its host:port replaced by the proxy's.
fn through(url: &str, proxy: &Proxy) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("database url");
    parsed.set_host(Some("127.0.0.1")).unwrap();
    parsed.set_port(Some(proxy.addr.port())).unwrap();
    parsed.to_string()
}

fn upstream_of(url: &str) -> String {
    let parsed = reqwest::Url::parse(url).expect("database url");
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let host = if host.starts_with('/') || host.is_empty() {
        "127.0.0.1".to_string()
    } else {
        host
    };
    format!("{host}:{}", parsed.port().unwrap_or(5432))
}

struct Script {
    dir: tempfile::TempDir,
}

impl Script {
    /// Each session: provision + a command of `secs` seconds, then answer.
    fn long_command(secs: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("airlock-chaos-")
            .tempdir()
            .unwrap();
        let script = json!({"responses": [
            {"tool_calls": [{"id": "sb", "name": "sandbox_provision", "arguments": {"task_description": "chaos"}}]},
            {"tool_calls": [{"id": "run", "name": "sandbox_execute",
                "arguments": {"command": format!("sleep {secs}; echo finished")}}]},
            {"text": "done"}
        ]});
        std::fs::write(dir.path().join("script.json"), script.to_string()).unwrap();
        Self { dir }
    }

    fn yaml(&self) -> String {
        format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{}\n\
             sessions:\n  max_concurrent: 8\n  poll_interval_ms: 200\n  lease_seconds: 3\n",
            self.dir.path().join("script.json").display()
        )
    }
}

async fn start_session(brain: &BrainProcess, task: &str) -> String {
    let (status, reply) = brain
        .post_json("/v1/sessions", json!({ "task": task }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}\n{}", brain.log());
    reply["id"].as_str().unwrap().to_string()
}

/// Polls (through `brain`, tolerating errors while the database is down) until every
/// session is settled; returns the views and how long it took.
async fn settle_all(
    brain: &BrainProcess,
    ids: &[String],
    within: Duration,
) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    let mut done: HashMap<String, Value> = HashMap::new();
    while done.len() < ids.len() {
        for id in ids {
            if done.contains_key(id) {
                continue;
            }
            let (status, s) = brain.get_json(&format!("/v1/sessions/{id}")).await;
            if status != StatusCode::OK {
                continue;
            }
            let terminal = matches!(
                s["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            );
            if terminal && s["pending_messages"] == 0 {
                done.insert(id.clone(), s);
            }
        }
        assert!(
            started.elapsed() < within,
            "not settled within {within:?}: {:?}\n{}",
            ids.iter()
                .filter(|i| !done.contains_key(*i))
                .collect::<Vec<_>>(),
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (
        ids.iter().map(|i| done[i].clone()).collect(),
        started.elapsed(),
    )
}

async fn events(brain: &BrainProcess, id: &str) -> Vec<Value> {
    let (status, reply) = brain.get_json(&format!("/v1/sessions/{id}/events")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["events"].as_array().unwrap().clone()
}

/// Every session succeeded; every tool call started once and has exactly one result; no
/// sandbox of a settled session is still live.
async fn check_invariants(brain: &BrainProcess, views: &[Value]) {
    for s in views {
        let id = s["id"].as_str().unwrap();
        assert_eq!(s["status"], "succeeded", "{s}\n{}", brain.log());
        let events = events(brain, id).await;
        let mut started: HashMap<String, usize> = HashMap::new();
        let mut results: HashMap<String, usize> = HashMap::new();
        for e in &events {
            let call = e["data"]["call_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match e["kind"].as_str() {
                Some("tool_started") => *started.entry(call).or_default() += 1,
                Some("tool_result") => *results.entry(call).or_default() += 1,
                _ => {}
            }
        }
        assert!(
            started.values().all(|n| *n == 1),
            "{id}: a tool started twice: {events:#?}"
        );
        assert!(
            results.values().all(|n| *n == 1),
            "{id}: a tool call has two results: {events:#?}"
        );
        assert_eq!(
            started.len(),
            results.len(),
            "{id}: a tool call has no result"
        );
        // The long command really ran (or was reported interrupted by a kill, never run twice).
        let run = events
            .iter()
            .find(|e| e["kind"] == "tool_result" && e["data"]["call_id"] == "run")
            .unwrap_or_else(|| panic!("{id}: the command never ran: {events:#?}"));
        let content = run["data"]["content"].as_str().unwrap_or_default();
        assert!(
            content.contains("finished") || run["data"]["interrupted"] == true,
            "{id}: {run}\n{events:#?}"
        );
        for sandbox in s["sandbox_ids"].as_array().unwrap() {
            let sandbox = sandbox.as_str().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (_, row) = brain.get_json(&format!("/v1/sandboxes/{sandbox}")).await;
                let live = matches!(row["status"].as_str(), Some("provisioning" | "running"));
                if !live {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{id}: sandbox {sandbox} outlives its session: {row}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn instance_of(events: &[Value]) -> String {
    events
        .iter()
        .find(|e| e["kind"] == "session_started")
        .and_then(|e| e["data"]["instance"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn brains_on_postgres_survive_a_kill_an_outage_a_restart_and_clock_skew() {
    let Some(url) = fresh_postgres_database().await else {
        eprintln!("skipped: AIRLOCK_TEST_POSTGRES_URL is not set");
        return;
    };
    let proxy = Proxy::start(upstream_of(&url)).await;
    let script = Script::long_command(3);
    let opts = BrainOptions {
        database_url: Some(through(&url, &proxy)),
        extra_yaml: script.yaml(),
        ..BrainOptions::default()
    };
    let mut a = BrainProcess::start(opts.clone()).await;
    let mut skewed = opts.clone();
    skewed
        .env
        .push(("AIRLOCK_TEST_CLOCK_SKEW_MS".into(), "40000".into()));
    let mut b = BrainProcess::start(skewed).await;

    // 1. SIGKILL of A mid-command, with B's clock 40 s ahead.
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..3 {
        on_a.push(start_session(&a, &format!("kill {i}")).await);
        on_b.push(start_session(&b, &format!("skew {i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.kill9();
    let all: Vec<String> = on_a.iter().chain(&on_b).cloned().collect();
    let (views, took) = settle_all(&b, &all, Duration::from_secs(40)).await;
    println!(
        "chaos: SIGKILL of a replica (clock skew 40 s on the other): {} sessions settled {took:?} after the kill",
        all.len()
    );
    check_invariants(&b, &views).await;
    a.restart().await;

    // 2. A 10 s PostgreSQL outage while commands finish.
    let mut ids = Vec::new();
    for i in 0..4 {
        let brain = if i % 2 == 0 { &a } else { &b };
        ids.push(start_session(brain, &format!("outage {i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set_up(false);
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.set_up(true);
    let (views, took) = settle_all(&a, &ids, Duration::from_secs(40)).await;
    println!(
        "chaos: 10 s database outage: {} sessions settled {took:?} after it ended",
        ids.len()
    );
    check_invariants(&a, &views).await;

    // 3. A graceful restart of B while A runs work: A's sessions are untouched.
    let mut ids = Vec::new();
    for i in 0..4 {
        let brain = if i % 2 == 0 { &a } else { &b };
        ids.push(start_session(brain, &format!("restart {i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A brain's claim owner id is `brain-<pid>-<uuid>`.
    let a_prefix = format!("brain-{}-", a.pid().expect("A runs"));
    let restarted = Instant::now();
    b.terminate();
    let stop_took = restarted.elapsed();
    println!("chaos: graceful stop of a replica took {stop_took:?}");
    assert!(
        stop_took < Duration::from_secs(10),
        "graceful stop hung:\n{}",
        b.log()
    );
    b.restart().await;
    let (views, took) = settle_all(&a, &ids, Duration::from_secs(40)).await;
    println!(
        "chaos: graceful restart of a replica: {} sessions settled {took:?} after it came back ({:?} restart)",
        ids.len(),
        restarted.elapsed() - took
    );
    check_invariants(&a, &views).await;
    let mut untouched = 0;
    for id in &ids {
        let ev = events(&a, id).await;
        if instance_of(&ev).starts_with(&a_prefix) {
            untouched += 1;
            assert!(
                !ev.iter().any(|e| e["kind"] == "resumed"),
                "B's restart disturbed A's session {id}: {ev:#?}"
            );
        }
    }
    assert!(
        untouched > 0,
        "A ran none of the sessions of the restart phase"
    );
    drop(b);
    drop(a);
}
