//! End to end: sessions on a real `brain` (local backend, scripted model): the loop, its
//! tools, limits, follow-ups, cancel, a SIGKILL mid-tool and two replicas on PostgreSQL.
//!
//! Needs `cargo build -p brain -p sandbox-agent` first (see `airlock_tests::bin_path`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_tests::{BrainOptions, BrainProcess, StatusCode, eventually, fresh_postgres_database};
use serde_json::{Value, json};

/// A scripted model file in its own temp dir (the brain loads it at start).
struct Script {
    dir: tempfile::TempDir,
}

impl Script {
    fn new(responses: Value) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("airlock-script-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("script.json"), responses.to_string()).expect("script");
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("script.json")
    }

    fn yaml(&self, extra: &str) -> String {
        format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{}\n{extra}",
            self.path().display()
        )
    }
}

async fn brain_with(script: &Script, extra: &str) -> BrainProcess {
    BrainProcess::start(BrainOptions {
        extra_yaml: script.yaml(extra),
        ..BrainOptions::default()
    })
    .await
}

async fn start(brain: &BrainProcess, body: Value) -> String {
    let (status, reply) = brain.post_json("/v1/sessions", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}\n{}", brain.log());
    assert_eq!(reply["status"], "queued");
    reply["id"].as_str().expect("id").to_string()
}

/// Polls until the session is terminal (and nothing is pending).
async fn settled(brain: &BrainProcess, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, s) = brain.get_json(&format!("/v1/sessions/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{s}");
        let terminal = matches!(
            s["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        );
        if terminal && s["pending_messages"] == 0 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "session {id} not settled: {s}\n{}",
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn events(brain: &BrainProcess, id: &str) -> Vec<Value> {
    let (status, reply) = brain.get_json(&format!("/v1/sessions/{id}/events")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply["events"].as_array().expect("events").clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

fn tool_results<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "tool_result" && e["data"]["name"] == name)
        .map(|e| &e["data"])
        .collect()
}

#[tokio::test]
async fn a_scripted_session_provisions_runs_commands_and_answers() {
    let script = Script::new(json!({"responses": [
        {"tool_calls": [{"id": "c1", "name": "sandbox_provision",
                         "arguments": {"task_description": "e2e"}}],
         "usage": {"input_tokens": 100, "output_tokens": 10}},
        {"tool_calls": [{"id": "c2", "name": "sandbox_execute",
                         "arguments": {"command": "echo hello from $AIRLOCK_SANDBOX_ID"}},
                        {"id": "c3", "name": "sandbox_execute",
                         "arguments": "{\"command\": 42}"},
                        {"id": "c4", "name": "no_such_tool", "arguments": {}}],
         "usage": {"input_tokens": 200, "output_tokens": 20}},
        {"tool_calls": [{"id": "c5", "name": "write_file",
                         "arguments": {"path": "notes/a.txt", "content": "written"}},
                        {"id": "c6", "name": "read_file", "arguments": {"path": "notes/a.txt"}},
                        {"id": "c7", "name": "sandbox_execute",
                         "arguments": {"command": "yes | head -c 100000"}}]},
        {"text": "All done.", "usage": {"input_tokens": 300, "output_tokens": 5}}
    ]}));
    let brain = brain_with(&script, "sessions:\n  max_tool_output_bytes: 2048\n").await;
    let id = start(&brain, json!({"task": "say hello"})).await;
    let session = settled(&brain, &id, Duration::from_secs(30)).await;
    assert_eq!(session["status"], "succeeded", "{session}");
    assert_eq!(session["result"], "All done.");
    assert_eq!(session["steps"], 4);
    // 10 + 20 + estimated + 5 output tokens, summed over the four model calls.
    assert!(session["usage"]["output_tokens"].as_u64().unwrap() >= 35);
    assert!(session["usage"]["input_tokens"].as_u64().unwrap() >= 600);
    assert_eq!(session["origin"]["kind"], "api");
    let sandbox = session["last_sandbox_id"]
        .as_str()
        .expect("a sandbox")
        .to_string();
    assert_eq!(session["sandbox_ids"], json!([sandbox]));

    let events = events(&brain, &id).await;
    let k = kinds(&events);
    assert_eq!(k[0], "session_started");
    assert_eq!(k[1], "user_message");
    assert_eq!(*k.last().unwrap(), "status");
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gapless seqs"
    );
    // Every tool result follows its own tool_started.
    for (i, e) in events.iter().enumerate() {
        if e["kind"] == "tool_result" {
            assert_eq!(events[i - 1]["kind"], "tool_started", "{e}");
            assert_eq!(events[i - 1]["data"]["call_id"], e["data"]["call_id"]);
        }
    }
    let execs = tool_results(&events, "sandbox_execute");
    let first: Value = serde_json::from_str(execs[0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(first["exit_code"], 0);
    assert_eq!(first["stdout"], format!("hello from {sandbox}\n"));
    // Malformed arguments and unknown tools are errors the model sees, not crashes.
    assert_eq!(execs[1]["is_error"], true);
    assert!(
        execs[1]["content"]
            .as_str()
            .unwrap()
            .contains("invalid arguments for sandbox_execute"),
        "{}",
        execs[1]
    );
    let unknown = tool_results(&events, "no_such_tool");
    assert_eq!(unknown[0]["is_error"], true);
    let read = tool_results(&events, "read_file");
    assert!(read[0]["content"].as_str().unwrap().contains("written"));
    // Output is cut to the budget before it reaches the model (and the log).
    let big = execs[2]["content"].as_str().unwrap();
    assert!(big.len() <= 2048, "{} bytes", big.len());
    assert!(big.contains("output truncated"));

    // The session's sandbox is destroyed once it finished.
    let gone = {
        let mut ok = false;
        for _ in 0..100 {
            let (_, sb) = brain.get_json(&format!("/v1/sandboxes/{sandbox}")).await;
            if sb["status"] == "destroyed" {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ok
    };
    assert!(gone, "sandbox {sandbox} not destroyed");

    // SSE replays everything after Last-Event-ID and ends at the settled status.
    let resp = brain
        .http
        .get(brain.url(&format!("/v1/sessions/{id}/events")))
        .bearer_auth(&brain.master_key)
        .header("accept", "text/event-stream")
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .expect("the stream ends for a settled session")
        .unwrap();
    let sse = airlock_tests::parse_sse(&text);
    assert_eq!(sse.len(), events.len() - 2);
    assert_eq!(sse[0].1["seq"], 3);
    assert_eq!(sse.last().unwrap().0, "status");

    // The list shows it, newest first, filterable by status.
    let (_, list) = brain.get_json("/v1/sessions?status=succeeded").await;
    assert_eq!(list["sessions"][0]["id"], id.as_str());
    let (_, list) = brain.get_json("/v1/sessions?status=failed").await;
    assert_eq!(list["sessions"], json!([]));
}

#[tokio::test]
async fn bad_requests_are_clear_errors() {
    let script = Script::new(json!([{"text": "ok"}]));
    let brain = brain_with(&script, "").await;
    let (status, reply) = brain
        .post_json("/v1/sessions", &json!({"task": "x", "sesion": 1}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sesion"),
        "{reply}"
    );
    let (status, reply) = brain
        .post_json("/v1/sessions", &json!({"task": "  "}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    let (status, reply) = brain
        .post_json("/v1/sessions", &json!({"task": "x", "model": "nope"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    let (status, _) = brain
        .post_json("/v1/sessions", &json!({"task": "x", "max_steps": 0}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = brain.get_json("/v1/sessions/ses-nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = brain
        .post_json("/v1/sessions/ses-nope/messages", &json!({"text": "hi"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Unauthenticated: refused.
    let resp = brain
        .http
        .post(brain.url("/v1/sessions"))
        .json(&json!({"task": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The gateway routes are mounted on the same server, behind the same key.
    let (status, models) = brain.get_json("/v1/models").await;
    assert_eq!(status, StatusCode::OK, "{models}");
    assert_eq!(models["data"][0]["id"], "scripted");
    let resp = brain
        .http
        .get(brain.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_a_model_sessions_answer_503() {
    let brain = BrainProcess::start(BrainOptions::default()).await;
    let (status, reply) = brain.post_json("/v1/sessions", &json!({"task": "x"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(reply["error"]["code"], "no_model_configured");
}

#[tokio::test]
async fn a_model_that_loops_on_tool_calls_hits_max_steps() {
    // Forever asks to run a command in a sandbox it never created.
    let script = Script::new(json!({"when_exhausted": "repeat_last", "responses": [
        {"tool_calls": [{"name": "sandbox_execute", "arguments": {"command": "true"}}]}
    ]}));
    let brain = brain_with(&script, "").await;
    let id = start(&brain, json!({"task": "loop", "max_steps": 3})).await;
    let session = settled(&brain, &id, Duration::from_secs(30)).await;
    assert_eq!(session["status"], "failed");
    assert_eq!(session["error"], "max_steps (3) reached");
    assert_eq!(session["steps"], 3);
    let events = events(&brain, &id).await;
    let results = tool_results(&events, "sandbox_execute");
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["is_error"] == true));
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("no sandbox yet"),
        "{}",
        results[0]
    );
}

#[tokio::test]
async fn max_cost_usd_stops_the_session() {
    let script = Script::new(json!({"when_exhausted": "repeat_last", "responses": [
        {"tool_calls": [{"name": "sandbox_execute", "arguments": {"command": "true"}}],
         "usage": {"input_tokens": 1000000, "output_tokens": 0}}
    ]}));
    // $1 per million input tokens: every step costs $1.
    let extra = "";
    let yaml = format!(
        "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{}\n        input_cost_per_token: 0.000001\n{extra}",
        script.path().display()
    );
    let brain = BrainProcess::start(BrainOptions {
        extra_yaml: yaml,
        ..BrainOptions::default()
    })
    .await;
    let id = start(&brain, json!({"task": "spend", "max_cost_usd": 2.5})).await;
    let session = settled(&brain, &id, Duration::from_secs(30)).await;
    assert_eq!(session["status"], "failed");
    assert!(
        session["error"]
            .as_str()
            .unwrap()
            .starts_with("max_cost_usd (2.5) exceeded"),
        "{session}"
    );
    assert_eq!(session["steps"], 3);
    assert!((session["cost_usd"].as_f64().unwrap() - 3.0).abs() < 1e-9);
}

#[tokio::test]
async fn follow_ups_queue_into_the_session_and_reopen_an_answered_one() {
    let script = Script::new(json!({"responses": [
        {"text": "first answer"},
        {"text": "second answer"}
    ]}));
    let brain = brain_with(&script, "").await;
    let id = start(&brain, json!({"task": "first"})).await;
    let s = settled(&brain, &id, Duration::from_secs(30)).await;
    assert_eq!(
        (s["status"].as_str(), s["result"].as_str()),
        (Some("succeeded"), Some("first answer"))
    );
    let (status, reply) = brain
        .post_json(
            &format!("/v1/sessions/{id}/messages"),
            &json!({"text": "and then?"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    // Give the loop the time to pick it up; then it answers again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = settled(&brain, &id, Duration::from_secs(30)).await;
    assert_eq!(
        (s["status"].as_str(), s["result"].as_str()),
        (Some("succeeded"), Some("second answer")),
        "{s}"
    );
    let events = events(&brain, &id).await;
    let follow: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "user_message" && e["data"]["message_id"].is_string())
        .collect();
    assert_eq!(follow.len(), 1);
    assert_eq!(follow[0]["data"]["text"], "and then?");
    assert_eq!(s["steps"], 2);
}

#[tokio::test]
async fn cancel_stops_a_session_waiting_on_the_model() {
    let script = Script::new(json!([{"text": "too late", "delay_ms": 30000}]));
    let brain = brain_with(&script, "").await;
    let id = start(&brain, json!({"task": "slow"})).await;
    // Wait until the model call is in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kinds(&events(&brain, &id).await).contains(&"model_request") {
        assert!(Instant::now() < deadline, "no model request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    let (status, s) = brain
        .post_json(&format!("/v1/sessions/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["status"], "cancelled", "{s}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Cancelled sessions take no more messages.
    let (status, _) = brain
        .post_json(
            &format!("/v1/sessions/{id}/messages"),
            &json!({"text": "hi"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

/// The marker file counts how many times the slow command actually ran.
fn marker_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_brain_killed_mid_tool_resumes_the_session_without_rerunning_the_tool() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("ran");
    let script = Script::new(json!({"responses": [
        {"tool_calls": [{"id": "p", "name": "sandbox_provision",
                         "arguments": {"task_description": "crash test"}}]},
        {"tool_calls": [{"id": "slow", "name": "sandbox_execute",
                         "arguments": {"command": format!("echo ran >> {}; sleep 20", marker.display())}}]},
        {"tool_calls": [{"id": "after", "name": "sandbox_execute",
                         "arguments": {"command": "echo after the restart"}}]},
        {"text": "recovered"}
    ]}));
    let mut brain = brain_with(&script, "").await;
    let id = start(&brain, json!({"task": "survive a crash"})).await;
    assert!(
        eventually(Duration::from_secs(20), || marker_lines(&marker) == 1).await,
        "the slow command never started\n{}",
        brain.log()
    );
    brain.kill9();
    brain.restart().await;
    let session = settled(&brain, &id, Duration::from_secs(60)).await;
    assert_eq!(session["status"], "succeeded", "{session}\n{}", brain.log());
    assert_eq!(session["result"], "recovered");
    assert_eq!(
        marker_lines(&marker),
        1,
        "the interrupted command ran again"
    );

    let events = events(&brain, &id).await;
    let k = kinds(&events);
    assert_eq!(k.iter().filter(|k| **k == "session_started").count(), 1);
    assert_eq!(k.iter().filter(|k| **k == "resumed").count(), 1);
    let slow: Vec<_> = events
        .iter()
        .filter(|e| e["data"]["call_id"] == "slow")
        .collect();
    assert_eq!(
        slow.len(),
        2,
        "one start, one (interrupted) result: {slow:?}"
    );
    assert_eq!(slow[1]["data"]["is_error"], true);
    assert_eq!(slow[1]["data"]["interrupted"], true);
    let after = tool_results(&events, "sandbox_execute")
        .into_iter()
        .find(|r| r["call_id"] == "after")
        .expect("the next call ran");
    let out: Value = serde_json::from_str(after["content"].as_str().unwrap()).unwrap();
    assert_eq!(out["stdout"], "after the restart\n", "{after}");
    // Exactly one step per scripted turn: nothing was asked twice after the restart.
    assert_eq!(session["steps"], 4);
}

#[tokio::test]
async fn two_replicas_on_postgres_share_sessions_without_running_one_twice() {
    let Some(url) = fresh_postgres_database().await else {
        eprintln!("skipped: AIRLOCK_TEST_POSTGRES_URL is not set");
        return;
    };
    let script = Script::new(json!({"responses": [
        {"text": "thinking", "tool_calls": [{"id": "t", "name": "sandbox_execute",
            "arguments": {"command": "true"}}], "delay_ms": 300},
        {"text": "done", "delay_ms": 300}
    ]}));
    let extra = "sessions:\n  max_concurrent: 4\n  poll_interval_ms: 100\n  lease_seconds: 5\n";
    let opts = BrainOptions {
        database_url: Some(url),
        extra_yaml: script.yaml(extra),
        ..BrainOptions::default()
    };
    let a = BrainProcess::start(opts.clone()).await;
    let b = BrainProcess::start(opts).await;
    let mut ids = Vec::new();
    for i in 0..16 {
        let brain = if i % 2 == 0 { &a } else { &b };
        ids.push(start(brain, json!({"task": format!("task {i}")})).await);
    }
    let mut instances = std::collections::HashSet::new();
    for id in &ids {
        let s = settled(&a, id, Duration::from_secs(90)).await;
        assert_eq!(s["status"], "succeeded", "{s}");
        assert_eq!(s["steps"], 2, "{s}");
        let events = events(&b, id).await;
        let k = kinds(&events);
        assert_eq!(
            k.iter().filter(|k| **k == "session_started").count(),
            1,
            "{k:?}"
        );
        assert_eq!(
            k.iter().filter(|k| **k == "model_response").count(),
            2,
            "{k:?}"
        );
        assert!(!k.contains(&"resumed"), "{k:?}");
        instances.insert(events[0]["data"]["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(instances.len(), 2, "both replicas took work: {instances:?}");
}
