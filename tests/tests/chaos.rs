//! Chaos: two brains on one PostgreSQL, behind a TCP proxy the test can cut. Sessions run
//! long commands on the local backend through:
//! 1. a SIGKILL of one replica while the other runs with its clock 40 s ahead (leases follow
//!    the database clock, so the skewed one takes only the dead replica's sessions);
//! 2. a PostgreSQL outage of 10 s while commands finish (the proxy drops every connection and
//!    refuses new ones; the shared server keeps running for other tests);
//! 3. a graceful restart of one replica while the other runs work (the stop itself must be
//!    quick: under 5 s).
//!
//! Beside it: a Slack webhook flood across a kill and an outage (no acknowledged event lost,
//! none doubled), billing across a resume (no model call charged twice or dropped), and the
//! docker backend under replica kills (no container outlives its session; skips without docker
//! and the sandbox image unless `AIRLOCK_REQUIRE_DOCKER=1`).
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
/// sandbox of a settled session is still live. Returns how many tool calls were reported
/// interrupted (their loop was stopped or taken over mid-call).
async fn check_invariants(brain: &BrainProcess, views: &[Value]) -> usize {
    let mut interrupted = 0;
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
        interrupted += events
            .iter()
            .filter(|e| e["kind"] == "tool_result" && e["data"]["interrupted"] == true)
            .count();
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
    interrupted
}

fn instance_of(events: &[Value]) -> String {
    events
        .iter()
        .find(|e| e["kind"] == "session_started")
        .and_then(|e| e["data"]["instance"].as_str())
        .unwrap_or_default()
        .to_string()
}

// Multi-threaded: `BrainProcess::terminate` blocks its thread while the brain stops, and the
// database proxy must keep forwarding meanwhile (on one thread it froze, and every last write
// of the stopping brain waited out its timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    let interrupted = check_invariants(&b, &views).await;
    println!("chaos: {interrupted} tool calls reported interrupted by the kill");
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
    // An outage is not a crash: every loop lives through it, so no replica may take over
    // another's sessions when the database comes back (their running tools would be reported
    // interrupted and their results lost).
    let interrupted = check_invariants(&a, &views).await;
    assert_eq!(
        interrupted,
        0,
        "the outage made a replica take over live sessions\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );

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
    // Its last writes are bounded (2 s each, side by side); on a loaded machine allow twice.
    assert!(
        stop_took < Duration::from_secs(5),
        "graceful stop too slow ({stop_took:?}):\n{}",
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

// === Webhook flood during failures ===

const SLACK_SECRET: &str = "chaos-slack-signing-secret";
const SLACK_BOT_TOKEN: &str = "xoxb-chaos-bot-token";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signed `app_mention` Events API request, as Slack sends it.
fn mention(event_id: &str, ts: &str) -> String {
    json!({"type": "event_callback", "token": "unused", "team_id": "T1", "api_app_id": "A1",
           "event_id": event_id, "event_time": unix_now(),
           "event": {"type": "app_mention", "user": "U1", "text": "<@UBOT> run the slow thing",
                     "ts": ts, "channel": "C1", "event_ts": ts}})
    .to_string()
}

/// Posts one delivery; `true` when the brain acknowledged it (200). Errors and timeouts are
/// "not acknowledged": Slack retries those.
async fn deliver(brain: &BrainProcess, body: &str) -> bool {
    let ts = unix_now().to_string();
    let sent = brain
        .http
        .post(brain.url("/hooks/slack"))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", &ts)
        .header(
            "x-slack-signature",
            airlock_tests::fake_slack::sign(SLACK_SECRET, &ts, body.as_bytes()),
        )
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    matches!(sent, Ok(r) if r.status() == StatusCode::OK)
}

/// Per owning replica, the acknowledged webhook events that have no session yet (queued for a
/// run slot), read straight from the database.
async fn waiting_events_per_owner(url: &str) -> HashMap<String, i64> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT owner, COUNT(*) FROM trigger_events WHERE session_id IS NULL GROUP BY owner",
    )
    .fetch_all(&mut conn)
    .await
    .expect("reading trigger_events");
    let _ = conn.close().await;
    rows.into_iter().collect()
}

/// Two brains with the Slack trigger on one PostgreSQL behind the cuttable proxy. A flood of
/// mentions, each also redelivered to the other replica (Slack retries), across a SIGKILL of
/// one replica (events it acknowledged are in flight: with one Slack run slot per replica,
/// most still wait for it, recorded only in the trigger inbox), a 10 s database outage (deliveries then
/// are refused and redelivered after it) and its restart. Invariants: every acknowledged event
/// gets its session and exactly one answer in its thread; no event starts two sessions or is
/// answered twice; every session succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_flood_across_a_kill_and_an_outage_loses_and_doubles_nothing() {
    let Some(url) = fresh_postgres_database().await else {
        eprintln!("skipped: AIRLOCK_TEST_POSTGRES_URL is not set");
        return;
    };
    let proxy = Proxy::start(upstream_of(&url)).await;
    let fake = airlock_tests::fake_slack::FakeSlack::start(SLACK_BOT_TOKEN).await;
    let script = Script::long_command(2);
    let opts = BrainOptions {
        database_url: Some(through(&url, &proxy)),
        extra_yaml: format!(
            "{}triggers:\n  reply_retry_base_ms: 100\n  reply_retry_max_ms: 1000\n  \
             slack:\n    api_base_url: {}\n    bot_user_id: UBOT\n    max_concurrent: 1\n    \
             max_queued: 32\n",
            script.yaml(),
            fake.base_url
        ),
        env: vec![
            ("SLACK_SIGNING_SECRET".into(), SLACK_SECRET.into()),
            ("SLACK_BOT_TOKEN".into(), SLACK_BOT_TOKEN.into()),
        ],
        ..BrainOptions::default()
    };
    let mut a = BrainProcess::start(opts.clone()).await;
    let b = BrainProcess::start(opts).await;
    let thread_of = |i: usize| format!("1700001000.{i:06}");
    let body_of = |i: usize| mention(&format!("EvChaos{i}"), &thread_of(i));
    let mut acked = Vec::new();
    let mut unacked = Vec::new();

    // 1. Eight events, each to one replica and redelivered to the other.
    for i in 0..8 {
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let body = body_of(i);
        let one = deliver(first, &body).await;
        let two = deliver(second, &body).await;
        if one || two {
            acked.push(i);
        } else {
            unacked.push(i);
        }
    }
    // 2. A dies with events acknowledged and in flight: one running (its session and owed
    //    reply recorded), the rest still waiting for its single Slack run slot, so they exist
    //    only as rows of the trigger inbox (no session yet). Only draining that inbox after
    //    the kill answers those.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = waiting_events_per_owner(&url).await;
    a.kill9();
    println!(
        "chaos: webhook flood: acknowledged events still waiting for a run slot at the kill, per replica: {waiting:?}"
    );
    assert!(
        waiting.len() == 2 && waiting.values().all(|n| *n >= 2),
        "the kill must find acknowledged events of both replicas still waiting for a run \
         slot (no session yet), or the test proves nothing about the inbox: {waiting:?}"
    );
    // 3. A 10 s database outage while more events arrive: none can be recorded, so none may
    //    be acknowledged; Slack redelivers them later.
    proxy.set_up(false);
    let outage = Instant::now();
    for i in 8..12 {
        if deliver(&b, &body_of(i)).await {
            acked.push(i);
        } else {
            unacked.push(i);
        }
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;
    proxy.set_up(true);
    let outage_ended = Instant::now();
    a.restart().await;
    // 4. More events, and the redeliveries of those refused.
    for i in 12..16 {
        let brain = if i % 2 == 0 { &a } else { &b };
        if deliver(brain, &body_of(i)).await {
            acked.push(i);
        } else {
            unacked.push(i);
        }
    }
    for i in std::mem::take(&mut unacked) {
        let mut ok = false;
        for attempt in 0..20 {
            let brain = if attempt % 2 == 0 { &b } else { &a };
            if deliver(brain, &body_of(i)).await {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            ok,
            "event {i} never acknowledged after the outage\n{}",
            b.log()
        );
        acked.push(i);
    }
    acked.sort_unstable();
    assert_eq!(acked, (0..16).collect::<Vec<_>>());

    // Every event is answered once in its thread ("done" is the script's answer).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing: Vec<usize> = (0..16)
            .filter(|i| {
                !fake
                    .thread("C1", &thread_of(*i))
                    .iter()
                    .any(|m| m.text == "done")
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer in the threads of events {missing:?}\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "chaos: webhook flood (16 events, a kill, a 10 s outage): all answered {:?} after the outage ended",
        outage_ended.elapsed()
    );
    // A duplicate would show up within the retry schedule.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, list) = b.get_json("/v1/sessions?origin=slack&limit=100").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let sessions = list["sessions"].as_array().unwrap();
    for i in 0..16 {
        let thread = fake.thread("C1", &thread_of(i));
        let answers = thread.iter().filter(|m| m.text == "done").count();
        assert_eq!(answers, 1, "event {i} answered {answers} times: {thread:?}");
        let started: Vec<&Value> = sessions
            .iter()
            .filter(|s| s["origin"]["thread_ts"] == thread_of(i).as_str())
            .collect();
        assert_eq!(
            started.len(),
            1,
            "event {i} started {} sessions: {started:#?}",
            started.len()
        );
        assert_eq!(started[0]["status"], "succeeded", "{:#}", started[0]);
        // Nor was the task handed to it twice (as a follow-up of itself).
        let ev = events(&b, started[0]["id"].as_str().unwrap()).await;
        let messages = ev.iter().filter(|e| e["kind"] == "user_message").count();
        assert_eq!(
            messages, 1,
            "event {i}'s task reached its session {messages} times: {ev:#?}"
        );
    }
    drop(b);
    drop(a);
}

// === Billing across a resume ===

/// Two brains on PostgreSQL; sessions whose second model call takes 4 s. A is SIGKILLed while
/// those calls are in flight; B resumes the sessions and asks again. The call A abandoned was
/// (probably) billed by the provider, so it must be accounted exactly once, and no answered
/// call may be charged twice: per session, `steps` equals the model requests made, `cost_usd`
/// equals the answered calls' costs plus the charges recorded for abandoned ones, and no step
/// has two answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_never_bills_a_model_call_twice_or_drops_one() {
    let Some(url) = fresh_postgres_database().await else {
        eprintln!("skipped: AIRLOCK_TEST_POSTGRES_URL is not set");
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("airlock-chaos-")
        .tempdir()
        .unwrap();
    let script = json!({"responses": [
        {"tool_calls": [{"id": "sb", "name": "sandbox_provision", "arguments": {"task_description": "bill"}}],
         "usage": {"input_tokens": 1000, "output_tokens": 100}},
        {"tool_calls": [{"id": "run", "name": "sandbox_execute", "arguments": {"command": "echo hi"}}],
         "usage": {"input_tokens": 2000, "output_tokens": 200}, "delay_ms": 4000},
        {"text": "done", "usage": {"input_tokens": 500, "output_tokens": 50}}
    ]});
    std::fs::write(dir.path().join("script.json"), script.to_string()).unwrap();
    let opts = BrainOptions {
        database_url: Some(url),
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        \
             model: scripted/{}\n        input_cost_per_token: 0.000001\n        \
             output_cost_per_token: 0.000002\n\
             sessions:\n  max_concurrent: 8\n  poll_interval_ms: 200\n  lease_seconds: 3\n",
            dir.path().join("script.json").display()
        ),
        ..BrainOptions::default()
    };
    let mut a = BrainProcess::start(opts.clone()).await;
    let b = BrainProcess::start(opts).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(start_session(&a, &format!("bill {i}")).await);
    }
    // Kill A once every session's second call is in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut in_flight = 0;
        for id in &ids {
            let ev = events(&a, id).await;
            let asked = ev
                .iter()
                .any(|e| e["kind"] == "model_request" && e["data"]["step"] == 2);
            let answered = ev
                .iter()
                .any(|e| e["kind"] == "model_response" && e["data"]["step"] == 2);
            if asked && !answered {
                in_flight += 1;
            }
        }
        if in_flight == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second calls never started\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.kill9();
    let (views, took) = settle_all(&b, &ids, Duration::from_secs(60)).await;
    println!(
        "chaos: SIGKILL during model calls: {} sessions settled {took:?} after the kill",
        ids.len()
    );
    for s in &views {
        let id = s["id"].as_str().unwrap();
        assert_eq!(s["status"], "succeeded", "{s}");
        let ev = events(&b, id).await;
        let requests = ev.iter().filter(|e| e["kind"] == "model_request").count();
        let mut answered: HashMap<i64, usize> = HashMap::new();
        let mut answered_cost = 0.0;
        for e in ev.iter().filter(|e| e["kind"] == "model_response") {
            *answered
                .entry(e["data"]["step"].as_i64().unwrap())
                .or_default() += 1;
            answered_cost += e["data"]["cost_usd"].as_f64().unwrap_or_default();
        }
        assert!(
            answered.values().all(|n| *n == 1),
            "{id}: a step answered twice (billed twice): {ev:#?}"
        );
        let mut abandoned = 0;
        let mut abandoned_cost = 0.0;
        for e in ev.iter().filter(|e| e["kind"] == "resumed") {
            abandoned += e["data"]["abandoned_model_calls"]
                .as_u64()
                .unwrap_or_default();
            abandoned_cost += e["data"]["abandoned_cost_usd"].as_f64().unwrap_or_default();
        }
        assert!(
            abandoned >= 1,
            "{id}: the call in flight at the kill was not accounted: {ev:#?}"
        );
        assert!(
            abandoned_cost > 0.0,
            "{id}: the abandoned call was charged nothing: {ev:#?}"
        );
        assert_eq!(
            s["steps"].as_u64().unwrap(),
            requests as u64,
            "{id}: every model request (answered or abandoned) is a step: {s}\n{ev:#?}"
        );
        assert_eq!(
            answered.len() as u64 + abandoned,
            requests as u64,
            "{id}: {ev:#?}"
        );
        let cost = s["cost_usd"].as_f64().unwrap();
        assert!(
            (cost - (answered_cost + abandoned_cost)).abs() < 1e-9,
            "{id}: cost {cost} != answered {answered_cost} + abandoned {abandoned_cost}"
        );
    }
    drop(b);
    drop(a);
}

// === Docker sandboxes under a kill ===

/// Two brains on PostgreSQL with the docker backend (real containers). A is SIGKILLed once its
/// sessions' containers run their commands, and again later while provisioning; B (and A's
/// restart) settle everything. Invariant: once every session settled, no container of any
/// sandbox row of the store is left, and no row is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_sandboxes_leave_no_orphan_after_replica_kills() {
    if !airlock_tests::vault::docker_ready("docker chaos") {
        return;
    }
    let Some(url) = fresh_postgres_database().await else {
        eprintln!("skipped: AIRLOCK_TEST_POSTGRES_URL is not set");
        return;
    };
    let script = Script::long_command(3);
    let opts = BrainOptions {
        backend: "docker".into(),
        database_url: Some(url),
        extra_yaml: script.yaml(),
        ..BrainOptions::default()
    };
    let mut a = BrainProcess::start(opts.clone()).await;
    let b = BrainProcess::start(opts).await;
    let mut ids = Vec::new();
    // 1. Killed while the commands run in the containers.
    let on_a: Vec<String> = start_sessions(&a, "docker run", 2).await;
    wait_until_tool_running(&a, &on_a, "run", on_a.len()).await;
    a.kill9();
    ids.extend(on_a);
    a.restart().await;
    // 2. Killed while provisioning (the container may or may not exist yet).
    let on_a: Vec<String> = start_sessions(&a, "docker provision", 2).await;
    wait_until_tool_running(&a, &on_a, "sb", 1).await;
    a.kill9();
    ids.extend(on_a);
    let (views, took) = settle_all(&b, &ids, Duration::from_secs(90)).await;
    println!(
        "chaos: docker backend, two kills: {} sessions settled {took:?} after the second",
        ids.len()
    );
    for s in &views {
        assert!(
            matches!(s["status"].as_str(), Some("succeeded")),
            "{s}\n{}",
            b.log()
        );
    }
    let (status, list) = b.get_json("/v1/sandboxes").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let rows = list["sandboxes"].as_array().unwrap().clone();
    assert!(!rows.is_empty(), "no sandbox was made");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = Vec::new();
        for row in &rows {
            let id = row["id"].as_str().unwrap();
            let (_, now) = b.get_json(&format!("/v1/sandboxes/{id}")).await;
            let live = matches!(now["status"].as_str(), Some("provisioning" | "running"));
            let containers = airlock_tests::vault::labelled_containers(id);
            if live || !containers.is_empty() {
                left.push(format!("{id}: {} {containers:?}", now["status"]));
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sandboxes outlive their sessions: {left:#?}\nB:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(b);
    drop(a);
}

/// Starts `n` sessions on `brain`.
async fn start_sessions(brain: &BrainProcess, task: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(start_session(brain, &format!("{task} {i}")).await);
    }
    ids
}

/// Waits until at least `min` of the sessions have started the tool call `call` and not
/// finished it.
async fn wait_until_tool_running(brain: &BrainProcess, ids: &[String], call: &str, min: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut running = 0;
        for id in ids {
            let ev = events(brain, id).await;
            let started = ev
                .iter()
                .any(|e| e["kind"] == "tool_started" && e["data"]["call_id"] == call);
            let done = ev
                .iter()
                .any(|e| e["kind"] == "tool_result" && e["data"]["call_id"] == call);
            if started && !done {
                running += 1;
            }
        }
        if running >= min {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tool {call} never ran in every session\n{}",
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
