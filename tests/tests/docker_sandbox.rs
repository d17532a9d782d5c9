//! End to end: a real brain (`--backend docker`) provisioning real containers from
//! `airlock-sandbox:latest` on the local engine, driven over its HTTP API.
//!
//! Skips (printing why) when no engine answers or the image is missing, unless
//! `AIRLOCK_REQUIRE_DOCKER=1`. Every sandbox a test creates is removed by label when the test
//! ends, passed or not.

use std::time::{Duration, Instant};

use airlock_tests::vault::{
    self, DockerCleanup as Cleanup, docker_cli, labelled_containers, labelled_networks,
};
use airlock_tests::{BrainOptions, BrainProcess, StatusCode, eventually};
use serde_json::{Value, json};

fn docker_ready() -> bool {
    vault::docker_ready("docker e2e")
}

fn assert_nothing_left(id: &str) {
    let (c, n) = (labelled_containers(id), labelled_networks(id));
    assert!(c.is_empty(), "containers left for {id}: {c:?}");
    assert!(n.is_empty(), "networks left for {id}: {n:?}");
}

async fn start_brain() -> BrainProcess {
    start_brain_with("").await
}

/// A docker brain with `extra_yaml` merged into its config.
async fn start_brain_with(extra_yaml: &str) -> BrainProcess {
    BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        extra_yaml: extra_yaml.into(),
        ..Default::default()
    })
    .await
}

/// Sandboxes on networks of their own (the mode a proxy container needs).
const INTERNAL_NETWORK: &str = "sandbox:\n  docker:\n    network: internal\n";

/// Provisions a sandbox and returns its id with a cleanup guard.
async fn provision(brain: &BrainProcess, body: Value) -> (String, Cleanup) {
    let started = Instant::now();
    let (status, v) = brain.post_json("/v1/sandboxes", &body).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "provision: {v}\n{}",
        brain.log()
    );
    let id = v["id"].as_str().expect("sandbox id").to_string();
    eprintln!("POST /v1/sandboxes (docker) took {:?}", started.elapsed());
    vault::remember_sandbox_network(&id);
    assert_eq!(v["backend"], "docker", "{v}");
    assert_eq!(v["status"], "running", "{v}");
    (id.clone(), Cleanup(id))
}

async fn exec(brain: &BrainProcess, id: &str, body: Value) -> Value {
    let (status, v) = brain
        .post_json(&format!("/v1/sandboxes/{id}/exec"), &body)
        .await;
    assert_eq!(status, StatusCode::OK, "exec: {v}");
    v
}

async fn delete(brain: &BrainProcess, id: &str) {
    let (status, v) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("destroyed")),
        "{v}"
    );
}

fn container_of(id: &str) -> String {
    let c = labelled_containers(id);
    assert_eq!(c.len(), 1, "expected one container for {id}: {c:?}");
    c[0].clone()
}

#[tokio::test]
async fn docker_sandbox_exec_stream_timeout_and_delete() {
    if !docker_ready() {
        return;
    }
    let brain = start_brain().await;
    let (id, _cleanup) = provision(
        &brain,
        json!({"task_description": "e2e docker", "ttl_s": 600}),
    )
    .await;
    let container = container_of(&id);
    // The default: no network at all (the agent and egress go over unix sockets).
    assert!(labelled_networks(&id).is_empty(), "a network for {id}");
    let mode = docker_cli(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &container]);
    assert_eq!(mode, "none");

    // Exit code, stdout, stderr, default cwd, explicit cwd, user.
    let v = exec(
        &brain,
        &id,
        json!({"command": "echo hello; echo oops >&2; exit 3"}),
    )
    .await;
    assert_eq!(
        (v["stdout"].as_str(), v["stderr"].as_str()),
        (Some("hello\n"), Some("oops\n"))
    );
    assert_eq!(
        (v["exit_code"].as_i64(), v["timed_out"].as_bool()),
        (Some(3), Some(false))
    );
    let v = exec(&brain, &id, json!({"command": "pwd; id -u"})).await;
    assert_eq!(v["stdout"], "/workspace\n1000\n");
    let v = exec(
        &brain,
        &id,
        json!({"command": "mkdir -p sub && cd sub && echo data > f"}),
    )
    .await;
    assert_eq!(v["exit_code"], 0, "{v}");
    let v = exec(
        &brain,
        &id,
        json!({"command": "pwd; cat f", "cwd": "/workspace/sub"}),
    )
    .await;
    assert_eq!(v["stdout"], "/workspace/sub\ndata\n");

    // `?stream=1`: Server-Sent Events of the same chunks, ending with the exit.
    let (status, events) = brain
        .post_sse(
            &format!("/v1/sandboxes/{id}/exec?stream=1"),
            &json!({"command": "echo one; sleep 0.2; echo two >&2; exit 5"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = |name: &str| -> String {
        events
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, d)| d["data"].as_str())
            .collect()
    };
    assert_eq!(
        (text("stdout").as_str(), text("stderr").as_str()),
        ("one\n", "two\n"),
        "{events:?}"
    );
    let (last, exit) = events.last().expect("SSE events");
    assert_eq!(
        (last.as_str(), exit["exit_code"].as_i64()),
        ("exit", Some(5)),
        "{events:?}"
    );

    // timeout_s kills the whole process group, background children included.
    let started = Instant::now();
    let v = exec(
        &brain,
        &id,
        json!({"command": "sleep 300 & sleep 301 & sleep 302", "timeout_s": 2}),
    )
    .await;
    assert_eq!(v["timed_out"], true, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "timeout took {:?}",
        started.elapsed()
    );
    let no_sleep = eventually(Duration::from_secs(5), || {
        !docker_cli(&["top", &container]).contains("sleep 30")
    })
    .await;
    assert!(
        no_sleep,
        "processes survived the timeout:\n{}",
        docker_cli(&["top", &container])
    );

    // DELETE removes the container and the network; a second DELETE is still fine.
    delete(&brain, &id).await;
    assert_nothing_left(&id);
    delete(&brain, &id).await;
}

#[tokio::test]
async fn docker_sandbox_caps_huge_output_and_contains_a_fork_bomb() {
    if !docker_ready() {
        return;
    }
    let brain = start_brain().await;
    let (id, _cleanup) = provision(
        &brain,
        json!({"task_description": "abuse", "resources": {"cpus": 1.0, "memory_mb": 512, "pids": 128}}),
    )
    .await;

    // 1 GB of output: capped, flagged truncated, and the brain does not hold it.
    let started = Instant::now();
    let v = exec(
        &brain,
        &id,
        json!({"command": "head -c 1000000000 /dev/zero | tr '\\0' a", "timeout_s": 120}),
    )
    .await;
    let kept = v["stdout"].as_str().unwrap_or_default().len();
    eprintln!(
        "1 GB print: {kept} bytes kept, {:?}, exit {}",
        started.elapsed(),
        v["exit_code"]
    );
    assert_eq!(v["truncated"], true, "{}", v["stderr"]);
    assert!(kept > 0 && kept <= 1024 * 1024, "stdout is {kept} bytes");
    let peak_kb = brain.peak_rss_kb().expect("VmHWM");
    assert!(peak_kb < 200 * 1024, "brain peak RSS {peak_kb} KiB");

    // A fork bomb hits the pids limit and is killed at its timeout; brain and sandbox go on.
    let started = Instant::now();
    let v = exec(
        &brain,
        &id,
        json!({"command": "bash -c ':(){ :|:& };:'", "timeout_s": 5}),
    )
    .await;
    eprintln!(
        "fork bomb: {:?} -> exit {} timed_out {}",
        started.elapsed(),
        v["exit_code"],
        v["timed_out"]
    );
    // It ends either at the agent's pipe grace (the group is killed once the first shell
    // returns) or at its timeout; the pids limit must have been hit on the way.
    let stderr = v["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.contains("Resource temporarily unavailable"),
        "pids limit never hit: {v}"
    );
    let (status, _) = brain.get_json("/healthz").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "brain stopped serving after a fork bomb"
    );
    let mut alive = false;
    for _ in 0..40 {
        let (status, v) = brain
            .post_json(
                &format!("/v1/sandboxes/{id}/exec"),
                &json!({"command": "echo alive", "timeout_s": 5}),
            )
            .await;
        if status == StatusCode::OK && v["stdout"] == "alive\n" {
            alive = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(alive, "sandbox unusable after the fork bomb");
    let top = docker_cli(&["top", &container_of(&id)]);
    assert!(top.lines().count() < 10, "fork bomb processes left:\n{top}");

    delete(&brain, &id).await;
    assert_nothing_left(&id);
}

#[tokio::test]
async fn docker_sandboxes_are_adopted_or_reaped_after_the_brain_is_killed() {
    if !docker_ready() {
        return;
    }
    // With networks, so that a network left by a dead sandbox is seen to be reaped too.
    let mut brain = start_brain_with(INTERNAL_NETWORK).await;
    let (adopted, _c1) = provision(&brain, json!({"task_description": "survives"})).await;
    let (lost, _c2) = provision(
        &brain,
        json!({"task_description": "dies while the brain is down"}),
    )
    .await;
    let lost_container = container_of(&lost);

    // SIGKILL the brain while an exec is in flight.
    let url = brain.url(&format!("/v1/sandboxes/{adopted}/exec"));
    let (http, key) = (brain.http.clone(), brain.master_key.clone());
    let in_flight = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(key)
            .json(&json!({"command": "sleep 1005"}))
            .send()
            .await
    });
    let container = container_of(&adopted);
    let running = eventually(Duration::from_secs(10), || {
        docker_cli(&["top", &container]).contains("sleep 1005")
    })
    .await;
    assert!(running, "the in-flight command never started");
    brain.kill9();
    let _ = in_flight.await;
    assert_eq!(
        labelled_containers(&adopted).len(),
        1,
        "the sandbox outlives its brain"
    );

    // One container dies while the brain is down (its network stays behind).
    docker_cli(&["rm", "-f", &lost_container]);
    assert_eq!(labelled_networks(&lost).len(), 1);

    brain.restart().await;
    let (_, row) = brain.get_json(&format!("/v1/sandboxes/{adopted}")).await;
    assert_eq!(row["status"], "running", "{row}\n{}", brain.log());
    let v = exec(&brain, &adopted, json!({"command": "echo adopted"})).await;
    assert_eq!(v["stdout"], "adopted\n");

    // The dead one is reaped: row destroyed, network removed.
    let (_, row) = brain.get_json(&format!("/v1/sandboxes/{lost}")).await;
    assert_eq!(row["status"], "destroyed", "{row}\n{}", brain.log());
    let reaped = eventually(Duration::from_secs(10), || {
        labelled_networks(&lost).is_empty()
    })
    .await;
    assert!(reaped, "network of the dead sandbox left behind");
    assert_nothing_left(&lost);

    delete(&brain, &adopted).await;
    assert_nothing_left(&adopted);
}
