//! End to end: code interpreter interception on a real brain (`--backend docker`,
//! scripted models that emit code calls), driven with the official `openai` (and
//! `anthropic`) Python SDKs (`code_interpreter_sdk.py`). The sandboxes really run
//! the code.
//!
//! Skips (printing why) without a docker engine, the sandbox image or the SDKs,
//! unless `AIRLOCK_REQUIRE_DOCKER=1`. Image: `AIRLOCK_SANDBOX_IMAGE` (default
//! `airlock-sandbox:latest`). Needs `cargo build -p brain -p sandbox-agent`.

use std::process::Command;

use airlock_tests::vault;
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
use serde_json::{Value, json};

const SDK_SCRIPT: &str = include_str!("code_interpreter_sdk.py");

fn ready() -> bool {
    const WHAT: &str = "code interpreter e2e";
    if !vault::docker_ready(WHAT) {
        return false;
    }
    Command::new("python3")
        .args(["-c", "import openai, anthropic"])
        .output()
        .is_ok_and(|o| o.status.success())
        || vault::skip(
            WHAT,
            "the openai/anthropic Python SDKs are missing (pip install openai anthropic)",
        )
}

struct Env {
    brain: BrainProcess,
    dir: tempfile::TempDir,
    /// Where the SDKs point: the brain itself, or a standalone gateway.
    base_url: String,
    key: String,
    other_key: String,
    /// The standalone gateway, when the SDKs go through one.
    gateway: Option<GatewayProcess>,
}

fn call(code: &str, then: &str) -> Value {
    json!([
        {"tool_calls": [{"id": "call_1", "name": "code_interpreter", "arguments": {"code": code}}]},
        {"text": then}
    ])
}

const NET_PROBE: &str = r#"
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

/// What the image's README promises a code interpreter: numpy, pandas and
/// matplotlib (a figure left open comes back as an image output).
const LIBS: &str = "import numpy as np, pandas as pd, matplotlib.pyplot as plt\n\
df = pd.DataFrame({'a': np.arange(4)})\n\
plt.plot(df.a, df.a ** 2)\n\
print(int(df.a.sum()))";

/// The scripted models (each: one code call, then an answer) as a `model_list`
/// under `indent`, their scripts written into `dir`.
fn model_list(dir: &std::path::Path, indent: &str) -> String {
    let scripts = [
        (
            "ci-sum",
            call("print(sum(range(10)))", "The sum of 0..9 is 45."),
        ),
        ("ci-set", call("x = 41\nprint('x is set')", "x is set.")),
        ("ci-get", call("print(x + 4)", "x + 4 is 45.")),
        ("ci-net", call(NET_PROBE, "I tried the network.")),
        ("ci-libs", call(LIBS, "Plotted.")),
        (
            "ci-slow",
            call(
                "import time\ntime.sleep(2)\nprint(sum(range(10)))",
                "The sum of 0..9 is 45.",
            ),
        ),
    ];
    let mut yaml = format!("{indent}model_list:\n");
    for (name, script) in &scripts {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, script.to_string()).expect("script");
        yaml.push_str(&format!(
            "{indent}  - model_name: {name}\n{indent}    litellm_params:\n{indent}      model: scripted/{}\n",
            path.display()
        ));
    }
    // A priced one, for budgets (scripted models are otherwise unpriced).
    let path = dir.join("ci-priced.json");
    std::fs::write(&path, call("print(1)", "done").to_string()).expect("script");
    yaml.push_str(&format!(
        "{indent}  - model_name: ci-priced\n{indent}    litellm_params:\n{indent}      model: scripted/{}\n\
         {indent}      input_cost_per_token: 0.001\n{indent}      output_cost_per_token: 0.001\n",
        path.display()
    ));
    yaml
}

async fn start_brain(dir: &std::path::Path, models: bool, extra_yaml: &str) -> BrainProcess {
    start_brain_with(dir, models.then_some(""), extra_yaml, Vec::new()).await
}

/// `models`: `None` for no models, else model-list entries (indented by four)
/// added to the scripted ones; `env` for the brain process.
async fn start_brain_with(
    dir: &std::path::Path,
    models: Option<&str>,
    extra_yaml: &str,
    env: Vec<(String, String)>,
) -> BrainProcess {
    let mut yaml = String::new();
    if let Some(extra) = models {
        yaml.push_str("models:\n");
        yaml.push_str(&model_list(dir, "  "));
        yaml.push_str(extra);
    }
    yaml.push_str(&format!(
        "sandbox:\n  docker:\n    image: {}\n",
        vault::sandbox_image()
    ));
    yaml.push_str(extra_yaml);
    BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        extra_yaml: yaml,
        env,
        ..Default::default()
    })
    .await
}

/// Two virtual keys made with `master` at `base`.
async fn two_keys(http: &reqwest::Client, base: &str, master: &str) -> (String, String) {
    let mut keys = Vec::new();
    for alias in ["ci-a", "ci-b"] {
        let r = http
            .post(format!("{base}/key/generate"))
            .bearer_auth(master)
            .json(&json!({"key_alias": alias}))
            .send()
            .await
            .expect("key/generate");
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("key JSON");
        keys.push(v["key"].as_str().expect("key").to_owned());
    }
    (keys[0].clone(), keys[1].clone())
}

/// A brain serving the models and the code interpreter itself.
async fn start() -> Env {
    start_with("").await
}

async fn start_with(extra_yaml: &str) -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let brain = start_brain(dir.path(), true, extra_yaml).await;
    let (key, other_key) = two_keys(&brain.http, &brain.base_url, &brain.master_key).await;
    std::fs::write(dir.path().join("sdk.py"), SDK_SCRIPT).expect("sdk script");
    Env {
        base_url: brain.base_url.clone(),
        brain,
        dir,
        key,
        other_key,
        gateway: None,
    }
}

/// The real standalone `gateway` binary.
struct GatewayProcess {
    child: std::process::Child,
    base_url: String,
    log: std::path::PathBuf,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A brain with no models, only sandboxes, and the standalone gateway serving
/// the models with `code_interpreter.brain_url` pointing at that brain and
/// authenticating with the brain's key from `key_env`.
async fn start_standalone() -> Env {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    // The brain's sandbox API takes its master key (DESIGN.md, brain HTTP API).
    let brain = start_brain(dir.path(), false, "").await;
    let brain_key = brain.master_key.clone();
    let master = "sk-gw-master-e2e";
    let cfg = format!(
        "{}general_settings:\n  master_key: {master}\ncode_interpreter:\n  brain_url: {}\n  key_env: E2E_BRAIN_KEY\n",
        model_list(dir.path(), ""),
        brain.base_url
    );
    let cfg_path = dir.path().join("gateway.yaml");
    std::fs::write(&cfg_path, cfg).expect("gateway config");
    let log = dir.path().join("gateway.log");
    let mut child = Command::new(airlock_tests::bin_path("gateway"))
        .arg("--config")
        .arg(&cfg_path)
        .args(["--listen", "127.0.0.1:0", "--database-url"])
        .arg(format!("sqlite://{}", dir.path().join("gw.db").display()))
        .env("E2E_BRAIN_KEY", &brain_key)
        .env_remove("LITELLM_MASTER_KEY")
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("gateway log"))
        .spawn()
        .expect("gateway binary (cargo build -p gateway)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("gateway stdout");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            panic!(
                "gateway did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    let gateway = GatewayProcess {
        child,
        base_url: format!("http://{addr}"),
        log,
    };
    let (key, other_key) = two_keys(&brain.http, &gateway.base_url, master).await;
    std::fs::write(dir.path().join("sdk.py"), SDK_SCRIPT).expect("sdk script");
    Env {
        base_url: gateway.base_url.clone(),
        brain,
        dir,
        key,
        other_key,
        gateway: Some(gateway),
    }
}

impl Env {
    async fn metrics(&self) -> String {
        let r = self.brain.http.get(self.brain.url("/metrics")).send().await;
        match r {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    fn sdk(&self, scenario: &str) -> Value {
        let out = Command::new("python3")
            .arg(self.dir.path().join("sdk.py"))
            .arg(scenario)
            .env("BASE_URL", &self.base_url)
            .env("API_KEY", &self.key)
            .env("OTHER_KEY", &self.other_key)
            .output()
            .expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{scenario}: {}\n{stdout}\nbrain log:\n{}\ngateway log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.brain.log(),
            self.gateway.as_ref().map(|g| g.log()).unwrap_or_default()
        );
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("scenario JSON")
    }

    /// No sandbox of this brain is left running (auto containers end with their
    /// response, the named one was deleted).
    async fn no_sandboxes_left(&self) {
        no_live_rows(&self.brain).await;
    }
}

/// Waits (up to 30 s) until no sandbox row of `brain` is live. A row turns `destroyed` only
/// once the backend removed its container.
async fn no_live_rows(brain: &BrainProcess) {
    let mut left = Vec::new();
    for _ in 0..300 {
        let (_, v) = brain.get_json("/v1/sandboxes").await;
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

/// [`no_live_rows`], then no container with `brain`'s owner label is left on the engine (a
/// brain with no pool). An `auto` container is destroyed after its response was sent (off
/// the response path), so a test that drops (SIGKILLs) its brain as soon as the last
/// response arrived kills that destroy half-way: the container stays running with nobody
/// left to remove it (the next start on the same database would, but a test's database
/// goes with it).
async fn no_containers_left(brain: &BrainProcess) {
    no_live_rows(brain).await;
    let owner = brain_owner(brain).await;
    let containers = vault::owner_containers(&owner);
    assert!(
        containers.is_empty(),
        "containers of this brain ({owner}) are still there: {containers:?}\n{}",
        brain.log()
    );
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

/// responses.create: the sandbox ran the code; its logs say 45; the answer follows.
fn check_responses(env: &Env) {
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
}

/// The same streamed: the SDK's accumulator accepted the sequence, and the
/// answer arrived as the model streamed it (the scripted model sends text in
/// 16-byte deltas), not as one delta at the end.
fn check_responses_stream(env: &Env) {
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
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ];
    assert_eq!(types, expect, "{s}");
    assert_eq!(s["deltas"], json!(["The sum of 0..9 ", "is 45."]), "{s}");
    assert_eq!(logs(code_calls(&s["output"])[0]).trim(), "45", "{s}");
    assert_eq!(s["text"], "The sum of 0..9 is 45.");
}

/// chat.completions: the final assistant message, unstreamed and streamed
/// (one role chunk, the model's own deltas, one finish reason).
fn check_chat(env: &Env) {
    let c = env.sdk("chat_sum");
    assert_eq!(c["content"], "The sum of 0..9 is 45.", "{c}");
    assert_eq!(c["finish"], "stop");
    let c = env.sdk("chat_stream");
    assert_eq!(c["deltas"], json!(["The sum of 0..9 ", "is 45."]), "{c}");
    assert_eq!(c["roles"], json!(["assistant"]), "{c}");
    assert_eq!(c["finish"], "stop", "{c}");
}

/// A named container keeps the interpreter's state across requests; another
/// key cannot use or see it.
fn check_container(env: &Env) {
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
}

/// Without a grant, code reaches nothing: not the internet, not the metadata
/// address, not around the proxy; and it holds no credentials.
fn check_network(env: &Env) {
    let n = env.sdk("network");
    let l = logs(code_calls(&n["output"])[0]);
    assert!(!l.contains("GOT'"), "something got through: {l}");
    assert_eq!(l.matches("BLOCKED").count(), 4, "{l}");
    assert!(l.contains("creds: []"), "{l}");
}

/// numpy, pandas and matplotlib are in the sandbox image; an open figure is an image output.
fn check_libs(env: &Env) {
    let r = env.sdk("libs");
    let call = code_calls(&r["output"])[0].clone();
    assert_eq!(logs(&call).trim(), "6", "{r}");
    let image = call["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "image")
        .unwrap_or_else(|| panic!("no image output: {call}"));
    assert!(
        image["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,"),
        "{image}"
    );
}

/// The Anthropic SDK with the code_execution server tool: Anthropic's blocks.
fn check_anthropic(env: &Env) {
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
}

/// The Anthropic SDK streaming `code_execution`: the raw events are Anthropic's
/// sequence (block indexes counting across the loop's turns, the code call
/// shown before it runs, its result when it ran, the answer as the model
/// streams it), sent as they happen (a cell that sleeps 2 s separates the call
/// from its result), and the SDK's accumulated message equals the unstreamed one.
fn check_anthropic_stream(env: &Env) {
    let a = env.sdk("anthropic_stream");
    let raw: Vec<&str> = a["raw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        raw,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ],
        "{a}"
    );
    let ev = |i: usize| &a["raw"][i];
    assert_eq!(ev(1)["content_block"]["type"], "server_tool_use", "{a}");
    assert_eq!(ev(1)["content_block"]["name"], "code_execution");
    assert_eq!(ev(1)["index"], 0);
    assert_eq!(ev(2)["delta"]["type"], "input_json_delta");
    assert_eq!(ev(4)["content_block"]["type"], "code_execution_tool_result");
    assert_eq!(ev(4)["index"], 1);
    assert_eq!(
        ev(4)["content_block"]["tool_use_id"],
        ev(1)["content_block"]["id"]
    );
    assert_eq!(ev(4)["content_block"]["content"]["stdout"], "45\n");
    assert_eq!(ev(6)["content_block"]["type"], "text");
    assert_eq!(ev(6)["index"], 2);
    assert_eq!(
        a["text_deltas"],
        json!(["The sum of 0..9 ", "is 45."]),
        "the answer as the model streamed it: {a}"
    );
    assert_eq!(ev(10)["delta"]["stop_reason"], "end_turn");
    assert!(
        ev(10)["delta"]["container"]["id"]
            .as_str()
            .unwrap()
            .starts_with("cntr_"),
        "{a}"
    );
    // The call went out before the cell ran, the result when it had run.
    let gap = a["call_to_result_s"].as_f64().unwrap();
    assert!(
        gap >= 1.0,
        "the result came {gap} s after the call: not streamed"
    );
    // The SDK's helper accumulated the same message.
    let m = &a["final"];
    let kinds: Vec<&str> = m["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["server_tool_use", "code_execution_tool_result", "text"],
        "{a}"
    );
    assert_eq!(
        m["content"][0]["input"]["code"],
        "import time\ntime.sleep(2)\nprint(sum(range(10)))"
    );
    assert_eq!(m["content"][1]["content"]["stdout"], "45\n");
    assert_eq!(m["content"][2]["text"], "The sum of 0..9 is 45.");
    assert_eq!(m["stop_reason"], "end_turn");
    assert!(m["usage"]["output_tokens"].as_u64().unwrap() > 0, "{m}");
    assert!(m["usage"]["input_tokens"].as_u64().unwrap() > 0, "{m}");
    // (another request, so another `auto` container)
    assert!(
        m["container"]["id"].as_str().unwrap().starts_with("cntr_"),
        "{m}"
    );
}

/// The spend log of `key` at `base` (read with `master`), once it holds a
/// record of `model_group` (the spend writer batches).
async fn spend_of(
    http: &reqwest::Client,
    base: &str,
    master: &str,
    key: &str,
    model_group: &str,
) -> Vec<Value> {
    let url = format!("{base}/spend/logs?api_key={key}&limit=500");
    let mut rows = Vec::new();
    for _ in 0..100 {
        let r = http
            .get(&url)
            .bearer_auth(master)
            .send()
            .await
            .expect("spend");
        assert_eq!(r.status(), StatusCode::OK);
        rows = r.json::<Vec<Value>>().await.expect("spend JSON");
        if rows.iter().any(|r| r["model_group"] == model_group) {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no {model_group} record for the key: {rows:?}");
}

#[tokio::test]
async fn code_interpreter_with_the_official_sdks() {
    if !ready() {
        return;
    }
    let env = start().await;
    check_responses(&env);
    check_responses_stream(&env);
    check_chat(&env);
    check_container(&env);
    check_network(&env);
    check_anthropic(&env);
    check_anthropic_stream(&env);
    check_libs(&env);

    // Sandbox seconds, and every model call of the loops, were recorded for the
    // caller's key.
    let b = &env.brain;
    let rows = spend_of(
        &b.http,
        &b.base_url,
        &b.master_key,
        &env.key,
        "code_interpreter",
    )
    .await;
    let model_calls = rows.iter().filter(|r| r["model_group"] == "ci-sum").count();
    // responses (2 turns), its stream (2), chat (2), its stream (2), anthropic (2)
    // (and its stream, on ci-slow).
    assert!(
        model_calls >= 10,
        "model calls of the loops not all charged to the key: {rows:?}"
    );
    env.no_sandboxes_left().await;
}

/// The model calls a loop makes count against the caller's budget as they are
/// made: a key whose budget the first call exhausts is refused the second.
#[tokio::test]
async fn loop_model_calls_count_against_the_callers_budget() {
    if !ready() {
        return;
    }
    let env = start().await;
    let b = &env.brain;
    let (status, v) = b
        .post_json(
            "/key/generate",
            json!({"key_alias": "ci-poor", "max_budget": 0.000001}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let poor = v["key"].as_str().unwrap().to_owned();
    let r = b
        .http
        .post(b.url("/v1/responses"))
        .bearer_auth(&poor)
        .json(&json!({"model": "ci-priced", "input": "go",
                      "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}))
        .send()
        .await
        .expect("responses");
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("Budget has been exceeded"), "{body}");
    let rows = spend_of(&b.http, &b.base_url, &b.master_key, &poor, "ci-priced").await;
    let first = rows
        .iter()
        .find(|r| r["model_group"] == "ci-priced")
        .unwrap();
    assert!(first["spend"].as_f64().unwrap_or(0.0) > 0.0, "{first}");
    env.no_sandboxes_left().await;
}

/// With `pools:` configured, a code interpreter container is a claimed warm
/// sandbox, not a cold start.
#[tokio::test]
async fn code_interpreter_claims_a_warm_pool_sandbox() {
    if !ready() {
        return;
    }
    let mut env = start_with("pools:\n  - {backend: docker, size: 1}\n").await;
    let ready_line = "airlock_brain_pool_ready_sandboxes{backend=\"docker\"} 1";
    let mut text = String::new();
    for _ in 0..600 {
        text = env.metrics().await;
        if text.lines().any(|l| l == ready_line) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        text.lines().any(|l| l == ready_line),
        "pool never filled:\n{text}"
    );
    check_responses(&env);
    let text = env.metrics().await;
    assert!(
        text.lines()
            .any(|l| l == "airlock_brain_pool_claims_total{backend=\"docker\"} 1"),
        "the container was not claimed from the pool:\n{text}"
    );
    assert!(
        !text.lines().any(
            |l| l.starts_with("airlock_brain_pool_misses_total{backend=\"docker\"}")
                && !l.ends_with(" 0")
        ),
        "{text}"
    );
    env.no_sandboxes_left().await;
    // The pool refilled after the claim: a graceful stop drains it, and no container of this
    // brain (its owner label) outlives it.
    let owner = brain_owner(&env.brain).await;
    env.brain.terminate();
    let mut left = Vec::new();
    for _ in 0..100 {
        left = vault::owner_containers(&owner);
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("containers outlive the brain that pooled them: {left:?}");
}

/// The owner id the brain labels its sandboxes with (`instance.owner` in its SQLite store).
async fn brain_owner(brain: &BrainProcess) -> String {
    let url = format!("sqlite://{}", brain.data_dir().join("brain.db").display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("open the brain's store");
    let owner: String = sqlx::query_scalar("SELECT owner FROM instance WHERE id = 1")
        .fetch_one(&pool)
        .await
        .expect("read the owner");
    pool.close().await;
    owner
}

/// The standalone gateway binary with `code_interpreter.brain_url`: the same
/// SDK calls through it run in the brain's docker sandboxes (asked for over the
/// brain's HTTP API), and the gateway's own keys own the containers.
#[tokio::test]
async fn standalone_gateway_with_brain_url_runs_code_in_brain_sandboxes() {
    if !ready() {
        return;
    }
    let env = start_standalone().await;
    check_responses(&env);
    check_responses_stream(&env);
    check_chat(&env);
    check_container(&env);
    check_network(&env);
    check_anthropic(&env);
    check_anthropic_stream(&env);

    // The sandboxes were the brain's, made through its API for the interceptor.
    let (_, v) = env.brain.get_json("/v1/sandboxes").await;
    let made: Vec<&Value> = v["sandboxes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["backend"] == "docker")
        .collect();
    assert!(made.len() >= 7, "{v}");
    // Spend is the gateway's: sandbox seconds and model calls under its key.
    let gw = env.gateway.as_ref().unwrap();
    let rows = spend_of(
        &env.brain.http,
        &gw.base_url,
        "sk-gw-master-e2e",
        &env.key,
        "code_interpreter",
    )
    .await;
    assert!(
        rows.iter().any(|r| r["model_group"] == "ci-sum"),
        "{rows:?}"
    );
    env.no_sandboxes_left().await;
}

/// A 1×1 PNG, the image the cell writes.
const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg==";

/// A cell that writes an image file into the outputs directory the tool's
/// description names (`$TMPDIR/airlock-ci/outputs`).
fn png_cell() -> String {
    format!(
        "import base64, os\n\
         d = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'airlock-ci', 'outputs')\n\
         os.makedirs(d, exist_ok=True)\n\
         open(os.path.join(d, 'dot.png'), 'wb').write(base64.b64decode('{PNG_B64}'))\n\
         print('wrote dot.png')"
    )
}

/// A stand-in for OpenAI's Chat Completions API (LLM providers cannot be
/// reached from tests), answering as the real API shapes a completion
/// (openai-python `types/chat/chat_completion.py`, `chat_completion_message.py`,
/// `chat_completion_message_tool_call.py`): a `code_interpreter` call with
/// [`png_cell`] until the conversation holds a tool result, then a text answer.
/// Records every request body.
async fn fake_openai_chat() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::extract::State;
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<Value>>>;
    async fn handler(
        State(seen): State<Seen>,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::Json<Value> {
        seen.lock().unwrap().push(body.clone());
        let answered = body["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
        let (message, finish) = if answered {
            (
                json!({"role": "assistant", "content": "I drew a dot.", "refusal": null}),
                "stop",
            )
        } else {
            let args = json!({"code": png_cell()}).to_string();
            (
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": "call_img1", "type": "function",
                     "function": {"name": "code_interpreter", "arguments": args}}]}),
                "tool_calls",
            )
        };
        axum::Json(json!({
            "id": "chatcmpl-img1", "object": "chat.completion", "created": 1_760_000_000,
            "model": body["model"], "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}
        }))
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(handler))
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (base, seen)
}

/// An image file the code writes reaches the model (as an image part of its
/// next turn, after the tool result) and the client (Responses: an `image`
/// output of the `code_interpreter_call`), through an `openai/` deployment —
/// a provider other than the scripted one — with the official SDK. Chat
/// Completions answers with the final message only (as LiteLLM's interceptor
/// does: its `code_interpreter_call`s are merged into Responses `output` only),
/// and its model saw the image too.
// Multi-threaded: the fake provider serves while the SDK run blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_the_code_writes_reach_the_model_and_the_response() {
    if !ready() {
        return;
    }
    let (upstream, seen) = fake_openai_chat().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let models = format!(
        "    - model_name: ci-img\n      litellm_params:\n        model: openai/gpt-4.1\n        \
         api_key: sk-fake-upstream\n        api_base: {upstream}/v1\n"
    );
    let brain = start_brain_with(dir.path(), Some(&models), "", Vec::new()).await;
    let (key, other_key) = two_keys(&brain.http, &brain.base_url, &brain.master_key).await;
    std::fs::write(dir.path().join("sdk.py"), SDK_SCRIPT).expect("sdk script");
    let env = Env {
        base_url: brain.base_url.clone(),
        brain,
        dir,
        key,
        other_key,
        gateway: None,
    };
    let r = env.sdk("image_files");
    let url = format!("data:image/png;base64,{PNG_B64}");

    // The client: the call's outputs hold the logs and the image.
    let calls = code_calls(&r["responses"]);
    assert_eq!(calls.len(), 1, "{r}");
    assert_eq!(logs(calls[0]).trim(), "wrote dot.png", "{r}");
    let images: Vec<&Value> = calls[0]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "image")
        .collect();
    assert_eq!(images.len(), 1, "{r}");
    assert_eq!(images[0]["url"], url.as_str());
    assert_eq!(r["responses_text"], "I drew a dot.");
    assert_eq!(r["chat"], "I drew a dot.");

    // The model: each loop's second turn carries the tool result, then the image.
    let bodies = seen.lock().unwrap().clone();
    assert_eq!(bodies.len(), 4, "two loops of two turns: {bodies:?}");
    for second in [&bodies[1], &bodies[3]] {
        let msgs = second["messages"].as_array().unwrap();
        let n = msgs.len();
        assert_eq!(msgs[n - 3]["role"], "assistant", "{second}");
        assert_eq!(
            msgs[n - 3]["tool_calls"][0]["function"]["name"],
            "code_interpreter"
        );
        assert_eq!(msgs[n - 2]["role"], "tool", "{second}");
        assert_eq!(msgs[n - 2]["tool_call_id"], "call_img1");
        let result = msgs[n - 2]["content"].as_str().unwrap();
        assert!(result.contains("wrote dot.png"), "{result}");
        assert!(result.contains("[image dot.png (image/png)"), "{result}");
        let last = &msgs[n - 1];
        assert_eq!(last["role"], "user", "{second}");
        let parts = last["content"].as_array().expect("content parts");
        assert_eq!(parts[0]["type"], "text");
        assert_eq!(parts[1]["type"], "image_url", "{last}");
        assert_eq!(parts[1]["image_url"]["url"], url.as_str());
    }
    env.no_sandboxes_left().await;
}

/// A virtual key whose settings name a credential
/// (`metadata.code_interpreter_credentials`) gets it in its code's sandbox as
/// a stub: the code's request to the credential's bound host reaches it with
/// the real value swapped in, and the swap is audited. A key without gets no
/// stub, and its request to the same host is blocked by the proxy (egress
/// `default: deny`): the host sees nothing.
#[tokio::test]
async fn a_key_allowed_a_named_credential_gets_it_in_the_code_sandbox() {
    use airlock_tests::upstream::{BOUND_HOST, Upstream};
    if !ready() {
        return;
    }
    const REAL: &str = "ghp_CIrealSECRETvalue0123456789abcdefghij";
    let upstream = Upstream::start(REAL).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("upstream-ca.pem"), &upstream.ca_pem).unwrap();
    let vault = dir.path().join("vault.yaml");
    std::fs::write(
        &vault,
        format!(
            "listen: 127.0.0.1:0\n\
             ca: {{ cert: ca.pem, key: ca-key.pem }}\n\
             upstream_roots: [upstream-ca.pem]\n\
             audit_log: audit.jsonl\n\
             egress: {{ default: deny }}\n\
             network:\n  allow_private: true\n  resolve: {{ \"{BOUND_HOST}\": \"127.0.0.1\" }}\n\
             credentials:\n  GITHUB_TOKEN:\n    value_env: CI_REAL_TOKEN\n    allowed_hosts: [\"{BOUND_HOST}:{}\"]\n",
            upstream.port
        ),
    )
    .unwrap();
    // One scripted model per key, each calling its own path.
    let mut models = String::new();
    for who in ["allowed", "plain"] {
        let code = format!(
            "import os, urllib.request, urllib.error\n\
             tok = os.environ.get('GITHUB_TOKEN', '')\n\
             print('token:', 'stub' if tok.startswith('ghp_') else 'none')\n\
             req = urllib.request.Request('https://{BOUND_HOST}:{port}/ci-{who}', headers={{'Authorization': 'Bearer ' + tok}})\n\
             try:\n    \
                 with urllib.request.urlopen(req, timeout=20) as r:\n        \
                     print('status', r.status, r.read().decode().strip())\n\
             except urllib.error.HTTPError as e:\n    \
                 print('status', e.code, e.read().decode()[:300])\n\
             except Exception as e:\n    \
                 print('failed', type(e).__name__, e)",
            port = upstream.port
        );
        let path = dir.path().join(format!("ci-cred-{who}.json"));
        std::fs::write(&path, call(&code, "done").to_string()).unwrap();
        models.push_str(&format!(
            "    - model_name: ci-cred-{who}\n      litellm_params:\n        model: scripted/{}\n",
            path.display()
        ));
    }
    let brain = start_brain_with(
        dir.path(),
        Some(&models),
        &format!("vault:\n  config: {}\n", vault.display()),
        vec![("CI_REAL_TOKEN".into(), REAL.into())],
    )
    .await;
    let (status, v) = brain
        .post_json(
            "/key/generate",
            json!({"key_alias": "ci-cred", "metadata": {"code_interpreter_credentials": ["GITHUB_TOKEN"]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let allowed = v["key"].as_str().unwrap().to_owned();
    let (status, v) = brain
        .post_json("/key/generate", json!({"key_alias": "ci-plain"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let plain = v["key"].as_str().unwrap().to_owned();

    // Runs the key's model; the call's logs and its container's sandbox.
    let run = async |key: &str, model: &str| -> (String, String) {
        let r = brain
            .http
            .post(brain.url("/v1/responses"))
            .bearer_auth(key)
            .json(&json!({"model": model, "input": "call it",
                          "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}))
            .send()
            .await
            .expect("responses");
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("response JSON");
        let call = code_calls(&v["output"])[0].clone();
        let container = call["container_id"].as_str().unwrap().to_owned();
        let (_, list) = brain.get_json("/v1/sandboxes").await;
        let sandbox = list["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["task_description"]
                    .as_str()
                    .is_some_and(|d| d.ends_with(&container))
            })
            .unwrap_or_else(|| panic!("no sandbox for {container}: {list}"))["id"]
            .as_str()
            .unwrap()
            .to_owned();
        (logs(&call), sandbox)
    };

    let (out, sandbox_a) = run(&allowed, "ci-cred-allowed").await;
    assert!(out.contains("token: stub"), "{out}\n{}", brain.log());
    assert!(
        out.contains("status 200 ok /ci-allowed"),
        "{out}\n{}",
        brain.log()
    );
    assert!(!out.contains(REAL), "{out}");
    let seen = upstream.with_path("/ci-allowed");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {REAL}").as_str()),
        "the real value was swapped in"
    );

    let (out, sandbox_b) = run(&plain, "ci-cred-plain").await;
    assert!(out.contains("token: none"), "{out}");
    assert!(!out.contains("status 200"), "{out}");
    assert!(
        upstream.with_path("/ci-plain").is_empty(),
        "the host saw the plain key's request"
    );

    // The audit log: a swap for the allowed key's sandbox, a block for the other's.
    let (status, records) = brain
        .get_json(&format!("/v1/audit/egress?sandbox={sandbox_a}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{records}");
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["event"] == "swap"
                && r["decision"] == "allow"
                && r["credential"] == "GITHUB_TOKEN"
                && r["host"] == BOUND_HOST),
        "{records}"
    );
    let (_, records) = brain
        .get_json(&format!("/v1/audit/egress?sandbox={sandbox_b}"))
        .await;
    let list = records.as_array().unwrap();
    // The tunnel opens (the proxy reads the request inside it); the request is blocked.
    assert!(
        list.iter()
            .any(|r| r["event"] == "block" && r["decision"] == "deny" && r["path"] == "/ci-plain"),
        "{records}"
    );
    assert!(!list.iter().any(|r| r["event"] == "swap"), "{records}");
    assert!(!records.to_string().contains(REAL));
    // The plain key's container is destroyed after its response: wait for it, or dropping
    // the brain kills that destroy and leaves the container running (a leak of the suite).
    no_containers_left(&brain).await;
}
