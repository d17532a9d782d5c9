//! End to end: live egress approvals on a real `brain` (local backend, embedded vault proxy,
//! scripted model). A session started with `"egress":"ask"` runs `curl` to a host nobody
//! allowed; the proxy holds the request and the brain lists it at `GET /v1/approvals`;
//! `POST /v1/approvals/{id}` lets it complete (allow_once) or turns it into a 403 (deny), and
//! the proxy's audit log names the decision and who made it.
//!
//! Needs `cargo build -p brain -p sandbox-agent` first (see `airlock_tests::bin_path`).

use std::time::{Duration, Instant};

use airlock_tests::upstream::{UNBOUND_HOST, Upstream};
use airlock_tests::vault::{REAL_TOKEN_ENV, audit_log_path, write_vault_config};
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
use serde_json::{Value, json};

async fn brain(dir: &std::path::Path, up: &Upstream, script: &Value) -> BrainProcess {
    let vault = write_vault_config(dir, up);
    std::fs::write(dir.join("script.json"), script.to_string()).unwrap();
    BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        model: scripted/{}\nvault:\n  config: {}\n",
            dir.join("script.json").display(),
            vault.display()
        ),
        env: vec![(REAL_TOKEN_ENV.into(), "ghp_realrealrealrealrealrealrealrealreal".into())],
        ..Default::default()
    })
    .await
}

/// Waits for one pending approval whose path is `path`.
async fn pending(brain: &BrainProcess, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = brain.get_json("/v1/approvals").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        if let Some(a) = v["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["path"] == path)
        {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no approval for {path}: {v}\n{}",
            brain.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn curl(port: u16, path: &str) -> Value {
    json!({"command": format!("curl -sS -m 60 -o /dev/null -w '%{{http_code}}' https://{UNBOUND_HOST}:{port}{path}"),
           "timeout_s": 90})
}

#[tokio::test]
async fn a_held_request_completes_when_allowed_and_gets_403_when_denied() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let script = json!({"responses": [
        {"tool_calls": [{"id": "c1", "name": "sandbox_provision", "arguments": {"task_description": "ask"}}]},
        {"tool_calls": [{"id": "c2", "name": "sandbox_execute", "arguments": curl(up.port, "/approved")}]},
        {"tool_calls": [{"id": "c3", "name": "sandbox_execute", "arguments": curl(up.port, "/denied")}]},
        {"text": "done"}
    ]});
    let brain = brain(dir.path(), &up, &script).await;

    // Bad egress values are refused before anything starts.
    for bad in [json!("allow"), json!({"allow_hosts": ["*.com"]}), json!(7)] {
        let (status, v) = brain
            .post_json("/v1/sessions", json!({"task": "x", "egress": bad}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    }

    let (status, v) = brain
        .post_json("/v1/sessions", json!({"task": "fetch", "egress": "ask"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let session = v["id"].as_str().unwrap().to_string();

    let a = pending(&brain, "/approved").await;
    assert_eq!(a["host"], UNBOUND_HOST);
    assert_eq!(a["session"], session.as_str());
    assert!(up.with_path("/approved").is_empty(), "held, not sent");
    let (status, v) = brain
        .post_json(
            &format!("/v1/approvals/{}", a["id"].as_str().unwrap()),
            json!({"decision": "allow_once", "by": "tester"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // Answered: a second answer finds nothing.
    let (status, _) = brain
        .post_json(
            &format!("/v1/approvals/{}", a["id"].as_str().unwrap()),
            json!({"decision": "deny"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let d = pending(&brain, "/denied").await;
    let (status, _) = brain
        .post_json(
            &format!("/v1/approvals/{}", d["id"].as_str().unwrap()),
            json!({"decision": "deny", "by": "tester"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The session's two curls: 200 after the allow, 403 after the deny.
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let (_, s) = brain.get_json(&format!("/v1/sessions/{session}")).await;
        if matches!(
            s["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break s;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", brain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s["status"], "succeeded", "{s}");
    let (_, ev) = brain
        .get_json(&format!("/v1/sessions/{session}/events"))
        .await;
    let outs: Vec<String> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "tool_result" && e["data"]["name"] == "sandbox_execute")
        .map(|e| e["data"].to_string())
        .collect();
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert!(outs[0].contains("200"), "{}", outs[0]);
    assert!(outs[1].contains("403"), "{}", outs[1]);
    assert_eq!(up.with_path("/approved").len(), 1);
    assert!(up.with_path("/denied").is_empty());

    // Audited: who decided what, tied to the session.
    let (status, recs) = brain
        .get_json(&format!("/v1/audit/egress?session={session}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{recs}");
    let approvals: Vec<(String, String)> = recs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "approval")
        .map(|r| {
            (
                r["decision"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        approvals,
        [
            ("allow".to_string(), "allow_once by api:tester".to_string()),
            ("deny".to_string(), "deny by api:tester".to_string()),
        ]
    );
    assert!(audit_log_path(dir.path()).exists());
}

#[tokio::test]
async fn a_session_allow_list_lets_its_hosts_through_without_asking() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("unused").await;
    let script = json!({"responses": [
        {"tool_calls": [{"id": "c1", "name": "sandbox_provision", "arguments": {"task_description": "list"}}]},
        {"tool_calls": [{"id": "c2", "name": "sandbox_execute", "arguments": curl(up.port, "/listed")}]},
        {"text": "done"}
    ]});
    let brain = brain(dir.path(), &up, &script).await;
    let (status, v) = brain
        .post_json(
            "/v1/sessions",
            json!({"task": "fetch", "egress": {"allow_hosts": [UNBOUND_HOST]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let session = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = brain.get_json(&format!("/v1/sessions/{session}")).await;
        if s["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", brain.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up.with_path("/listed").len(), 1);
    let (_, v) = brain.get_json("/v1/approvals").await;
    assert_eq!(v["approvals"], json!([]));
}
