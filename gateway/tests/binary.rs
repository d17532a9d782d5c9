//! Starts the real `gateway` binary with the scripted demo config and drives
//! both routes over HTTP: a multi-turn tool-calling conversation, concurrent
//! sessions, keys and spend persisted across a restart of the process.

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Proc {
    child: Child,
    base: String,
}

impl Proc {
    /// SIGTERM: the gateway flushes pending spend and exits.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("gateway did not exit on SIGTERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(db: &str) -> Proc {
    let cfg =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/demo_scripted.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            db,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    Proc {
        child,
        base: format!("http://{addr}"),
    }
}

const TOOLS: &str = r#"[{"type":"function","function":{"name":"sandbox_execute","parameters":{"type":"object","properties":{"command":{"type":"string"}}}}}]"#;

#[tokio::test]
async fn binary_serves_scripted_agent_conversation_on_both_routes() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("gw.db").display());
    let p = start(&db);
    let c = client();
    let health: Value = c
        .get(format!("{}/health/readiness", p.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    let (s, _) = post(
        &format!("{}/v1/chat/completions", p.base),
        "wrong",
        &json!({"model": "demo", "messages": []}),
    )
    .await;
    assert_eq!(s, 401);

    let k: Value = json(
        &post(
            &format!("{}/key/generate", p.base),
            "sk-demo-master",
            &json!({"max_budget": 10, "models": ["demo", "claude-demo"]}),
        )
        .await
        .1,
    );
    let key = k["key"].as_str().unwrap().to_owned();

    // OpenAI route: turn 1 = provision tool call, turn 2 = execute, turn 3 = text.
    let mut messages = vec![json!({"role": "user", "content": "what is in the repo?"})];
    let mut names = Vec::new();
    for _ in 0..3 {
        let (s, b) = post(&format!("{}/v1/chat/completions", p.base), &key,
            &json!({"model": "demo", "messages": messages, "tools": serde_json::from_str::<Value>(TOOLS).unwrap()})).await;
        assert_eq!(s, 200, "{b}");
        let v = json(&b);
        let msg = v["choices"][0]["message"].clone();
        messages.push(msg.clone());
        if let Some(calls) = msg["tool_calls"].as_array() {
            assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
            names.push(calls[0]["function"]["name"].as_str().unwrap().to_owned());
            messages.push(json!({"role": "tool", "tool_call_id": calls[0]["id"], "content": "ok"}));
        } else {
            assert_eq!(
                msg["content"],
                "The repository contains README.md and src/."
            );
        }
    }
    assert_eq!(names, ["sandbox_provision", "sandbox_execute"]);

    // Anthropic route, streamed, concurrent sessions each start at step 1.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (base, key) = (p.base.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(format!("{base}/v1/messages"))
                .header("x-api-key", key)
                .json(
                    &json!({"model": "claude-demo", "max_tokens": 100, "stream": true,
                              "messages": [{"role": "user", "content": "go"}]}),
                )
                .send()
                .await
                .unwrap();
            sse_events(&r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let evs = t.await.unwrap();
        let start = evs
            .iter()
            .find(|e| e.0.as_deref() == Some("content_block_start") && e.1.contains("tool_use"))
            .unwrap();
        assert_eq!(json(&start.1)["content_block"]["name"], "sandbox_provision");
        assert_eq!(evs.last().unwrap().0.as_deref(), Some("message_stop"));
    }
    p.stop();

    // Restart the process on the same database: the key and its spend are still there.
    let p = start(&db);
    let info: Value = client()
        .get(format!("{}/key/info", p.base))
        .query(&[("key", key.as_str())])
        .bearer_auth("sk-demo-master")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reqs: i64 = info["info"]["model_spend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["requests"].as_i64().unwrap())
        .sum();
    assert_eq!(reqs, 11, "{info}");
    let (s, _) = post(
        &format!("{}/v1/chat/completions", p.base),
        &key,
        &json!({"model": "demo", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(s, 200);
}
