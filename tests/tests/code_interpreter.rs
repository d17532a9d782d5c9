//! End to end: code interpreter interception on a real brain (`--backend docker`,
//! scripted models that emit code calls), driven with the official `openai` (and
//! `anthropic`) Python SDKs (`code_interpreter_sdk.py`). The sandboxes really run
//! the code.
//!
//! Skips (printing why) without a docker engine, the sandbox image or the SDKs,
//! unless `AIRLOCK_REQUIRE_DOCKER=1`. Image: `AIRLOCK_SANDBOX_IMAGE` (default
//! `airlock-sandbox:latest`). Needs `cargo build -p brain -p sandbox-agent`.

use std::process::Command;

use airlock_tests::{BrainOptions, BrainProcess, StatusCode, docker_available};
use serde_json::{Value, json};

const SDK_SCRIPT: &str = include_str!("code_interpreter_sdk.py");

fn image() -> String {
    std::env::var("AIRLOCK_SANDBOX_IMAGE").unwrap_or_else(|_| "airlock-sandbox:latest".into())
}

fn ready() -> bool {
    let image = image();
    let why = if !docker_available() {
        "no docker engine answers".to_owned()
    } else if !Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        format!("image {image} is missing (run `bash images/build-offline.sh`)")
    } else if !Command::new("python3")
        .args(["-c", "import openai, anthropic"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "the openai/anthropic Python SDKs are missing (pip install openai anthropic)".to_owned()
    } else {
        return true;
    };
    assert!(
        std::env::var("AIRLOCK_REQUIRE_DOCKER").as_deref() != Ok("1"),
        "AIRLOCK_REQUIRE_DOCKER=1 but {why}"
    );
    eprintln!("SKIP code interpreter e2e: {why}");
    false
}

struct Env {
    brain: BrainProcess,
    dir: tempfile::TempDir,
    key: String,
    other_key: String,
}

fn call(code: &str, then: &str) -> Value {
    json!([
        {"tool_calls": [{"id": "call_1", "name": "code_interpreter", "arguments": {"code": code}}]},
        {"text": then}
    ])
}

async fn start() -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let net_probe = r#"
import os, urllib.request
results = []
for url in ["http://example.com/", "https://example.com/", "http://169.254.169.254/latest/meta-data/"]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            results.append((url, "GOT", r.read(200)))
    except Exception as e:
        results.append((url, "BLOCKED", type(e).__name__))
for url in ["http://example.com/"]:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(url, timeout=5).read(200)
        results.append((url, "DIRECT GOT", ""))
    except Exception as e:
        results.append((url, "DIRECT BLOCKED", type(e).__name__))
print(results)
print("creds:", sorted(k for k in os.environ if k.endswith(("_TOKEN", "_KEY")) and k != "AIRLOCK_AGENT_TOKEN"))
"#;
    let scripts = [
        (
            "ci-sum",
            call("print(sum(range(10)))", "The sum of 0..9 is 45."),
        ),
        ("ci-set", call("x = 41\nprint('x is set')", "x is set.")),
        ("ci-get", call("print(x + 4)", "x + 4 is 45.")),
        ("ci-net", call(net_probe, "I tried the network.")),
    ];
    let mut yaml = String::from("models:\n  model_list:\n");
    for (name, script) in &scripts {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, script.to_string()).expect("script");
        yaml.push_str(&format!(
            "    - model_name: {name}\n      litellm_params:\n        model: scripted/{}\n",
            path.display()
        ));
    }
    yaml.push_str(&format!("sandbox:\n  docker:\n    image: {}\n", image()));
    let brain = BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        extra_yaml: yaml,
        ..Default::default()
    })
    .await;
    let mut keys = Vec::new();
    for alias in ["ci-a", "ci-b"] {
        let (status, v) = brain
            .post_json("/key/generate", json!({"key_alias": alias}))
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        keys.push(v["key"].as_str().expect("key").to_owned());
    }
    std::fs::write(dir.path().join("sdk.py"), SDK_SCRIPT).expect("sdk script");
    Env {
        brain,
        dir,
        key: keys[0].clone(),
        other_key: keys[1].clone(),
    }
}

impl Env {
    fn sdk(&self, scenario: &str) -> Value {
        let out = Command::new("python3")
            .arg(self.dir.path().join("sdk.py"))
            .arg(scenario)
            .env("BASE_URL", &self.brain.base_url)
            .env("API_KEY", &self.key)
            .env("OTHER_KEY", &self.other_key)
            .output()
            .expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{scenario}: {}\n{stdout}\nbrain log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.brain.log()
        );
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("scenario JSON")
    }

    /// No sandbox of this brain is left running (auto containers end with their
    /// response, the named one was deleted).
    async fn no_sandboxes_left(&self) {
        let mut left = Vec::new();
        for _ in 0..300 {
            let (_, v) = self.brain.get_json("/v1/sandboxes").await;
            left = v["sandboxes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["status"] != "destroyed" && s["status"] != "failed")
                .cloned()
                .collect();
            if left.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("sandboxes left: {left:?}");
    }
}

fn code_calls(output: &Value) -> Vec<&Value> {
    output
        .as_array()
        .expect("output")
        .iter()
        .filter(|i| i["type"] == "code_interpreter_call")
        .collect()
}

fn logs(item: &Value) -> String {
    item["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["type"] == "logs")
        .filter_map(|o| o["logs"].as_str())
        .collect()
}

#[tokio::test]
async fn code_interpreter_with_the_official_sdks() {
    if !ready() {
        return;
    }
    let env = start().await;

    // responses.create: the sandbox ran the code; its logs say 45; the answer follows.
    let r = env.sdk("responses_sum");
    let calls = code_calls(&r["output"]);
    assert_eq!(calls.len(), 1, "{r}");
    assert_eq!(calls[0]["code"], "print(sum(range(10)))");
    assert_eq!(logs(calls[0]).trim(), "45", "{r}");
    assert_eq!(calls[0]["status"], "completed");
    assert!(
        calls[0]["container_id"]
            .as_str()
            .unwrap()
            .starts_with("cntr_")
    );
    let last = r["output"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last["type"], "message",
        "the message comes after the call: {r}"
    );
    assert_eq!(r["text"], "The sum of 0..9 is 45.");
    assert_eq!(r["status"], "completed");
    assert!(r["usage"]["input_tokens"].as_u64().unwrap() > 0, "{r}");

    // The same streamed: the SDK's accumulator accepted the sequence.
    let s = env.sdk("responses_stream");
    let types: Vec<&str> = s["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let expect = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call_code.delta",
        "response.code_interpreter_call_code.done",
        "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ];
    assert_eq!(types, expect, "{s}");
    assert_eq!(logs(code_calls(&s["output"])[0]).trim(), "45", "{s}");
    assert_eq!(s["text"], "The sum of 0..9 is 45.");

    // chat.completions: the final assistant message.
    let c = env.sdk("chat_sum");
    assert_eq!(c["content"], "The sum of 0..9 is 45.", "{c}");
    assert_eq!(c["finish"], "stop");

    // A named container keeps the interpreter's state across requests; another
    // key cannot use or see it.
    let c = env.sdk("container_reuse");
    let first = code_calls(&c["first"]);
    let second = code_calls(&c["second"]);
    assert_eq!(logs(first[0]).trim(), "x is set", "{c}");
    assert_eq!(logs(second[0]).trim(), "45", "state carried over: {c}");
    assert_eq!(first[0]["container_id"], c["container"]);
    assert_eq!(second[0]["container_id"], c["container"]);
    assert_eq!(c["refused"]["status"], 404, "{c}");
    assert_eq!(c["other_retrieve"], 404, "{c}");
    assert_eq!(c["mine"], c["container"]);

    // Without a grant, code reaches nothing: not the internet, not the metadata
    // address, not around the proxy; and it holds no credentials.
    let n = env.sdk("network");
    let l = logs(code_calls(&n["output"])[0]);
    assert!(!l.contains("GOT'"), "something got through: {l}");
    assert_eq!(l.matches("BLOCKED").count(), 4, "{l}");
    assert!(l.contains("creds: []"), "{l}");

    // The Anthropic SDK with the code_execution server tool: Anthropic's blocks.
    let a = env.sdk("anthropic_sum");
    let blocks = a["content"].as_array().expect("content");
    let kinds: Vec<&str> = blocks.iter().filter_map(|b| b["type"].as_str()).collect();
    assert_eq!(
        kinds,
        ["server_tool_use", "code_execution_tool_result", "text"],
        "{a}"
    );
    assert_eq!(blocks[0]["name"], "code_execution");
    assert_eq!(blocks[0]["input"]["code"], "print(sum(range(10)))");
    assert_eq!(blocks[1]["tool_use_id"], blocks[0]["id"]);
    assert_eq!(blocks[1]["content"]["type"], "code_execution_result");
    assert_eq!(blocks[1]["content"]["stdout"], "45\n");
    assert_eq!(blocks[1]["content"]["return_code"], 0);
    assert_eq!(blocks[2]["text"], "The sum of 0..9 is 45.");
    assert_eq!(a["stop"], "end_turn");

    // Sandbox seconds were recorded for the caller's key (the spend writer batches).
    let path = format!("/spend/logs?api_key={}&limit=500", env.key);
    let mut found = None;
    for _ in 0..100 {
        let (status, v) = env.brain.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        found = v
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["model_group"] == "code_interpreter")
            .cloned();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found.is_some(), "no sandbox-seconds record for the key");

    env.no_sandboxes_left().await;
}
