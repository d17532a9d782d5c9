//! End to end: the real `brain` with the local backend and the real `sandbox-agent`.
//!
//! Needs `cargo build -p brain -p sandbox-agent` first (see `airlock_tests::bin_path`).

use std::time::{Duration, Instant};

use airlock_tests::{
    BrainOptions, BrainProcess, StatusCode, eventually, fresh_postgres_database,
    processes_with_cmdline, processes_with_env,
};
use serde_json::{Value, json};

const SANDBOX_ID_ENV: &str = "AIRLOCK_SANDBOX_ID";

async fn brain() -> BrainProcess {
    BrainProcess::start(BrainOptions::default()).await
}

async fn provision(brain: &BrainProcess, body: Value) -> String {
    let (status, reply) = brain.post_json("/v1/sandboxes", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}\n{}", brain.log());
    reply["id"].as_str().expect("id").to_string()
}

async fn exec(brain: &BrainProcess, id: &str, body: Value) -> Value {
    let (status, reply) = brain
        .post_json(&format!("/v1/sandboxes/{id}/exec"), &body)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}: {reply}");
    reply
}

/// Processes of one sandbox still running (agent and commands all carry its id in env).
fn sandbox_processes(id: &str) -> Vec<i32> {
    processes_with_env(SANDBOX_ID_ENV, id)
}

async fn assert_no_processes(id: &str) {
    let gone = eventually(Duration::from_secs(5), || sandbox_processes(id).is_empty()).await;
    assert!(
        gone,
        "sandbox {id} left processes {:?}",
        sandbox_processes(id)
    );
}

#[tokio::test]
async fn provision_exec_stream_and_destroy() {
    let brain = brain().await;
    let (status, created) = brain
        .post_json("/v1/sandboxes", &json!({"task_description": "e2e"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["backend"], "local");
    assert_eq!(created["status"], "running");
    assert_eq!(created["credentials"], json!([]));
    assert!(created["expires_at"].as_str().is_some());
    let id = created["id"].as_str().unwrap().to_string();
    assert!(!sandbox_processes(&id).is_empty(), "the agent runs");

    let r = exec(&brain, &id, json!({"command": "echo hello"})).await;
    assert_eq!(
        (r["exit_code"].as_i64(), r["stdout"].as_str()),
        (Some(0), Some("hello\n"))
    );
    assert_eq!(
        (r["timed_out"].as_bool(), r["truncated"].as_bool()),
        (Some(false), Some(false))
    );
    assert!(r["duration_ms"].as_u64().is_some());

    let r = exec(&brain, &id, json!({"command": "echo oops >&2; exit 7"})).await;
    assert_eq!(
        (
            r["exit_code"].as_i64(),
            r["stderr"].as_str(),
            r["stdout"].as_str()
        ),
        (Some(7), Some("oops\n"), Some(""))
    );

    exec(
        &brain,
        &id,
        json!({"command": "mkdir -p sub/dir && echo data > sub/dir/f"}),
    )
    .await;
    let r = exec(
        &brain,
        &id,
        json!({"command": "pwd; cat f", "cwd": "sub/dir"}),
    )
    .await;
    let out = r["stdout"].as_str().unwrap();
    assert!(out.ends_with("/work/sub/dir\ndata\n"), "{out}");

    // Env: the sandbox id is set, the agent token is not visible to commands.
    let r = exec(
        &brain,
        &id,
        json!({"command": "echo $AIRLOCK_SANDBOX_ID; echo token=${AIRLOCK_AGENT_TOKEN:-none}"}),
    )
    .await;
    assert_eq!(r["stdout"].as_str().unwrap(), format!("{id}\ntoken=none\n"));

    let (status, events) = brain
        .post_sse(
            &format!("/v1/sandboxes/{id}/exec?stream=1"),
            &json!({"command": "echo one; echo two >&2; exit 3"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"exit"), "{events:?}");
    let stdout: String = events
        .iter()
        .filter(|(n, _)| n == "stdout")
        .map(|(_, d)| d["data"].as_str().unwrap())
        .collect();
    let stderr: String = events
        .iter()
        .filter(|(n, _)| n == "stderr")
        .map(|(_, d)| d["data"].as_str().unwrap())
        .collect();
    assert_eq!((stdout.as_str(), stderr.as_str()), ("one\n", "two\n"));
    assert_eq!(events.last().unwrap().1["exit_code"], 3);
    assert_eq!(events.last().unwrap().1["type"], "exit");

    let (status, shown) = brain.get_json(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (status, shown["status"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let (_, list) = brain.get_json("/v1/sandboxes").await;
    assert!(
        list["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str())
    );

    let (status, deleted) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (status, deleted["status"].as_str()),
        (StatusCode::OK, Some("destroyed")),
        "{deleted}"
    );
    assert_no_processes(&id).await;
    let root = brain
        .data_dir()
        .join("sandboxes")
        .join(format!("airlock-sb-{id}"));
    assert!(!root.exists(), "sandbox directory removed");

    let (status, again) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (status, again["status"].as_str()),
        (StatusCode::OK, Some("destroyed"))
    );
    let (status, reply) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"command": "true"}),
        )
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("sandbox_destroyed"))
    );

    let (status, metrics) = send_plain(&brain, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("airlock_sandbox_provisions_total{backend=\"local\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
}

async fn send_plain(brain: &BrainProcess, path: &str) -> (StatusCode, String) {
    let resp = brain.http.get(brain.url(path)).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let brain = brain().await;
    let id = provision(&brain, json!({})).await;
    let started = Instant::now();
    let r = exec(
        &brain,
        &id,
        json!({"command": "sleep 1001 & sleep 1002; echo never", "timeout_s": 1}),
    )
    .await;
    assert_eq!(r["timed_out"], true, "{r}");
    assert_eq!(r["exit_code"], Value::Null, "{r}");
    assert!(!r["stdout"].as_str().unwrap().contains("never"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let gone = eventually(Duration::from_secs(5), || {
        processes_with_cmdline("sleep 1001").is_empty()
            && processes_with_cmdline("sleep 1002").is_empty()
    })
    .await;
    assert!(
        gone,
        "timed-out commands survive: {:?}",
        processes_with_cmdline("sleep 100")
    );

    // A process left running by an exec is killed when the sandbox is destroyed.
    exec(
        &brain,
        &id,
        json!({"command": "nohup sleep 1003 >/dev/null 2>&1 &"}),
    )
    .await;
    assert!(
        !processes_with_cmdline("sleep 1003").is_empty(),
        "background process started"
    );
    brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_no_processes(&id).await;
    assert!(processes_with_cmdline("sleep 1003").is_empty());
}

#[tokio::test]
async fn bad_requests_unknown_ids_and_auth() {
    let brain = brain().await;
    let (status, reply) = brain
        .post_raw("/v1/sandboxes", "{nope", "application/json")
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json")),
        "{reply}"
    );
    let (status, reply) = brain.post_json("/v1/sandboxes", &json!({"ttl": 5})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `ttl`"),
        "{reply}"
    );
    let (status, reply) = brain
        .post_json("/v1/sandboxes", &json!({"credentials": ["GITHUB_TOKEN"]}))
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_credential"))
    );

    for (method, path) in [
        ("GET", "/v1/sandboxes/sb-nope"),
        ("DELETE", "/v1/sandboxes/sb-nope"),
        ("POST", "/v1/sandboxes/sb-nope/exec"),
    ] {
        let (status, reply) = match method {
            "GET" => brain.get_json(path).await,
            "DELETE" => brain.delete(path).await,
            _ => brain.post_json(path, &json!({"command": "true"})).await,
        };
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{method} {path}"
        );
    }

    let id = provision(&brain, json!({})).await;
    let (status, reply) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"command": "true", "shell": "bash"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `shell`"),
        "{reply}"
    );

    for auth in [None, Some("Bearer wrong"), Some("Basic Zm9vOmJhcg==")] {
        let mut req = brain.http.get(brain.url("/v1/sandboxes"));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (status, _) = send_plain(&brain, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_no_processes(&id).await;
}

#[tokio::test]
async fn gigabyte_of_output_is_capped_and_brain_memory_stays_bounded() {
    let brain = brain().await;
    let id = provision(&brain, json!({})).await;
    let started = Instant::now();
    let r = exec(
        &brain,
        &id,
        json!({"command": "head -c 1000000000 /dev/zero | tr '\\0' a", "timeout_s": 300}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r["truncated"], true);
    assert_eq!(r["exit_code"], 0, "{}", r["stderr"]);
    let len = r["stdout"].as_str().unwrap().len();
    assert!(len > 0 && len <= 1024 * 1024, "stdout is {len} bytes");
    assert!(took < Duration::from_secs(120), "took {took:?}");
    let peak_kb = brain.peak_rss_kb().expect("VmHWM");
    eprintln!("1 GB of output: {len} bytes returned in {took:?}; brain peak RSS {peak_kb} KiB");
    assert!(peak_kb < 200 * 1024, "brain peak RSS {peak_kb} KiB");

    // Streaming is capped the same way.
    let (status, events) = brain
        .post_sse(
            &format!("/v1/sandboxes/{id}/exec?stream=1"),
            &json!({"command": "head -c 100000000 /dev/zero | tr '\\0' b"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let streamed: usize = events
        .iter()
        .filter(|(n, _)| n == "stdout")
        .map(|(_, d)| d["data"].as_str().unwrap().len())
        .sum();
    assert!(streamed <= 1024 * 1024, "streamed {streamed} bytes");
    assert_eq!(events.last().unwrap().1["truncated"], true);
    assert!(brain.peak_rss_kb().unwrap() < 200 * 1024);
    brain.delete(&format!("/v1/sandboxes/{id}")).await;
}

#[tokio::test]
async fn brain_killed_mid_exec_restarts_adopts_live_and_reaps_dead_sandboxes() {
    let mut brain = brain().await;
    let adopted = provision(&brain, json!({})).await;
    let lost = provision(&brain, json!({})).await;

    // SIGKILL the brain while a command runs.
    let url = brain.url(&format!("/v1/sandboxes/{adopted}/exec"));
    let (http, key) = (brain.http.clone(), brain.master_key.clone());
    let inflight = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(key)
            .json(&json!({"command": "sleep 1004; echo done"}))
            .send()
            .await
    });
    assert!(
        eventually(Duration::from_secs(5), || !processes_with_cmdline(
            "sleep 1004"
        )
        .is_empty())
        .await
    );
    brain.kill9();
    // The client sees the connection drop; what matters is what the restart finds.
    let _ = inflight.await;
    // The agents outlive the brain; the in-flight command died with its connection.
    assert!(!sandbox_processes(&adopted).is_empty());
    assert!(
        eventually(Duration::from_secs(5), || processes_with_cmdline(
            "sleep 1004"
        )
        .is_empty())
        .await
    );

    // One sandbox dies while the brain is down.
    for pid in processes_with_cmdline(&format!("airlock-sb-{lost}")) {
        // SAFETY: plain syscall on the agent process found by its work dir.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(
        eventually(Duration::from_secs(5), || processes_with_cmdline(&format!(
            "airlock-sb-{lost}"
        ))
        .is_empty())
        .await
    );

    brain.restart().await;
    let (_, row) = brain.get_json(&format!("/v1/sandboxes/{adopted}")).await;
    assert_eq!(row["status"], "running", "{row}\n{}", brain.log());
    let r = exec(&brain, &adopted, json!({"command": "echo still here"})).await;
    assert_eq!(r["stdout"], "still here\n");

    let (_, row) = brain.get_json(&format!("/v1/sandboxes/{lost}")).await;
    assert_eq!(row["status"], "destroyed", "{row}");
    assert_no_processes(&lost).await;
    assert!(
        !brain
            .data_dir()
            .join("sandboxes")
            .join(format!("airlock-sb-{lost}"))
            .exists()
    );

    // A graceful restart (SIGTERM) also leaves the sandbox for adoption.
    brain.restart().await;
    let r = exec(&brain, &adopted, json!({"command": "echo again"})).await;
    assert_eq!(r["stdout"], "again\n");

    let (status, _) = brain.delete(&format!("/v1/sandboxes/{adopted}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_no_processes(&adopted).await;
    let state_files = std::fs::read_dir(brain.data_dir().join("local-state"))
        .unwrap()
        .count();
    assert_eq!(state_files, 0, "no local state left");
}

#[tokio::test]
async fn ttl_reaper_destroys_expired_sandboxes() {
    let brain = BrainProcess::start(BrainOptions {
        extra_yaml: "sandbox:\n  reaper_interval_ms: 200\n".into(),
        ..BrainOptions::default()
    })
    .await;
    let short = provision(&brain, json!({"ttl_s": 1})).await;
    let long = provision(&brain, json!({"ttl_s": 600})).await;
    exec(
        &brain,
        &short,
        json!({"command": "nohup sleep 1005 >/dev/null 2>&1 &"}),
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, row) = brain.get_json(&format!("/v1/sandboxes/{short}")).await;
        if row["status"] == "destroyed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reaped: {row}\n{}",
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_processes(&short).await;
    assert!(processes_with_cmdline("sleep 1005").is_empty());
    let (status, reply) = brain
        .post_json(
            &format!("/v1/sandboxes/{short}/exec"),
            &json!({"command": "true"}),
        )
        .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("sandbox_destroyed"))
    );

    let (_, row) = brain.get_json(&format!("/v1/sandboxes/{long}")).await;
    assert_eq!(row["status"], "running");
    brain.delete(&format!("/v1/sandboxes/{long}")).await;
    assert_no_processes(&long).await;
}

#[tokio::test]
async fn postgres_store_keeps_sandboxes_across_a_crash() {
    let Some(database_url) = fresh_postgres_database().await else {
        eprintln!("skipping: AIRLOCK_TEST_POSTGRES_URL is not set");
        return;
    };
    let mut brain = BrainProcess::start(BrainOptions {
        database_url: Some(database_url),
        ..BrainOptions::default()
    })
    .await;
    let id = provision(&brain, json!({"task_description": "pg"})).await;
    let r = exec(&brain, &id, json!({"command": "echo pg"})).await;
    assert_eq!(r["stdout"], "pg\n");
    brain.kill9();
    brain.restart().await;
    let (_, row) = brain.get_json(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (row["status"].as_str(), row["task_description"].as_str()),
        (Some("running"), Some("pg")),
        "{row}"
    );
    let r = exec(&brain, &id, json!({"command": "echo adopted"})).await;
    assert_eq!(r["stdout"], "adopted\n");
    let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_no_processes(&id).await;
}
