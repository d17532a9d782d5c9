//! The official Python SDKs (`openai`, `anthropic` from PyPI) against the real
//! `gateway` binary: chat, streaming, embeddings, errors as the SDKs' typed
//! exceptions, and the LiteLLM proxy's response headers. The SDKs are installed with
//! pip when missing; the test fails (does not skip) when they cannot be had.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An OpenAI upstream following platform.openai.com/docs/api-reference (chat
/// completions with SSE streaming and `stream_options.include_usage`, embeddings),
/// with the `x-request-id` and `x-ratelimit-*` headers api.openai.com sends.
async fn fake_openai() -> String {
    async fn chat(axum::Json(b): axum::Json<Value>) -> Response {
        let model = b["model"].clone();
        let usage = json!({"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
                           "prompt_tokens_details": {"cached_tokens": 0}});
        if b["stream"] != json!(true) {
            return axum::Json(json!({"id": "chatcmpl-py", "object": "chat.completion", "created": 1,
                "model": model, "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                "message": {"role": "assistant", "content": "Hello from upstream", "refusal": null}}],
                "usage": usage}))
            .into_response();
        }
        let chunk = |d: Value, f: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-py", "object": "chat.completion.chunk",
                "created": 1, "model": model, "choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": f}]})
            )
        };
        let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
        for p in ["Hello", " from", " upstream"] {
            out += &chunk(json!({"content": p}), Value::Null);
        }
        out += &chunk(json!({}), json!("stop"));
        if b.pointer("/stream_options/include_usage") == Some(&json!(true)) {
            out += &format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-py", "object": "chat.completion.chunk",
                "created": 1, "model": model, "choices": [], "usage": usage})
            );
        }
        out += "data: [DONE]\n\n";
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(axum::body::Body::from(out))
            .unwrap()
    }
    async fn embeddings(axum::Json(b): axum::Json<Value>) -> Response {
        let inputs = match &b["input"] {
            Value::Array(a) => a.len(),
            _ => 1,
        };
        let data: Vec<Value> = (0..inputs)
            .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.25, -0.5, 0.125]}))
            .collect();
        axum::Json(json!({"object": "list", "data": data, "model": b["model"],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}}))
        .into_response()
    }
    async fn headers(mut r: Response) -> Response {
        let h = r.headers_mut();
        h.insert("x-request-id", "req_py_1".parse().unwrap());
        h.insert("x-ratelimit-remaining-tokens", "9000".parse().unwrap());
        r
    }
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .route("/v1/embeddings", axum::routing::post(embeddings))
        .layer(axum::middleware::map_response(headers));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/v1")
}

fn python_has_sdks() -> bool {
    Command::new("python3")
        .args(["-c", "import openai, anthropic"])
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_sdks() {
    if python_has_sdks() {
        return;
    }
    let st = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "openai", "anthropic"])
        .status()
        .expect("python3 -m pip");
    assert!(
        st.success() && python_has_sdks(),
        "the openai and anthropic Python packages are needed (pip install openai anthropic)"
    );
}

const SCRIPT: &str = r#"
import json, os, sys
import openai, anthropic
base, key = os.environ["GW_BASE"], os.environ["GW_KEY"]
c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
out = {}

raw = c.chat.completions.with_raw_response.create(
    model="gpt", messages=[{"role": "user", "content": "hi"}])
r = raw.parse()
out["chat"] = r.choices[0].message.content
out["usage"] = [r.usage.prompt_tokens, r.usage.completion_tokens]
out["headers"] = {k: raw.headers.get(k) for k in [
    "x-litellm-response-cost", "x-ratelimit-remaining-requests", "x-ratelimit-limit-requests",
    "llm_provider-x-request-id", "x-ratelimit-remaining-tokens"]}

s = c.chat.completions.create(model="gpt", stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "hi"}])
text, usage = "", None
for ch in s:
    if ch.choices and ch.choices[0].delta.content:
        text += ch.choices[0].delta.content
    if ch.usage:
        usage = ch.usage.total_tokens
out["stream"] = [text, usage]

e = c.embeddings.create(model="embed", input=["a", "b"])
out["embeddings"] = [len(e.data), e.data[1].embedding]

def err(f):
    try:
        f()
        return None
    except openai.APIStatusError as x:
        return [type(x).__name__, x.status_code]

bad = openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0)
out["bad_key"] = err(lambda: bad.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}]))
out["unknown_model"] = err(lambda: c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}]))
out["unsupported_param"] = err(lambda: c.chat.completions.create(model="claude", frequency_penalty=0.5,
    messages=[{"role": "user", "content": "hi"}]))
# Refused by the gateway itself (translation needs a message list).
out["bad_request"] = err(lambda: c.chat.completions.create(model="claude", messages="not a list"))

a = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
m = a.messages.create(model="gpt", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
out["anthropic"] = [m.content[0].text, m.usage.input_tokens, m.stop_reason]
with a.messages.stream(model="gpt", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as st:
    out["anthropic_stream"] = "".join(st.text_stream)
try:
    anthropic.Anthropic(base_url=base, api_key="sk-wrong", max_retries=0).messages.create(
        model="gpt", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
except anthropic.APIStatusError as x:
    out["anthropic_bad_key"] = [type(x).__name__, x.status_code]

# Past the key's rpm_limit (9): the SDK's RateLimitError. Twenty tries, so that a new
# minute's window starting mid-loop still ends in a refusal.
out["rate_limited"] = None
for _ in range(20):
    x = err(lambda: c.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}]))
    if x:
        out["rate_limited"] = x
        break
print(json.dumps(out))
"#;

#[tokio::test]
async fn official_python_sdks_against_the_gateway_binary() {
    ensure_sdks();
    let upstream = fake_openai().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
model_list:
  - model_name: gpt
    litellm_params: {{model: openai/gpt-4o, api_base: "{upstream}", api_key: sk-up}}
  - model_name: embed
    litellm_params: {{model: openai/text-embedding-3-small, api_base: "{upstream}", api_key: sk-up}}
  - model_name: claude
    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_base: "http://127.0.0.1:9", api_key: sk-ant}}
general_settings: {{master_key: sk-master}}
"#
        ),
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.path().join("gw.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--database-url", &db])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _proc = Proc(child);
    let base = format!(
        "http://{}",
        line.trim().strip_prefix("listening on ").unwrap()
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let k: Value = c
        .post(format!("{base}/key/generate"))
        .bearer_auth("sk-master")
        .json(&json!({"rpm_limit": 9}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = k["key"].as_str().unwrap().to_owned();

    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", SCRIPT])
            .env("GW_BASE", &base)
            .env("GW_KEY", &key)
            .env("NO_PROXY", "127.0.0.1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chat"], "Hello from upstream");
    assert_eq!(v["usage"], json!([12, 4]));
    let h = &v["headers"];
    let cost: f64 = h["x-litellm-response-cost"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // gpt-4o: $2.50 / 1M input, $10 / 1M output.
    assert!(
        (cost - (12.0 * 2.5e-6 + 4.0 * 1e-5)).abs() < 1e-12,
        "{cost}"
    );
    assert_eq!(h["x-ratelimit-limit-requests"], "9");
    assert_eq!(h["x-ratelimit-remaining-requests"], "8");
    assert_eq!(h["llm_provider-x-request-id"], "req_py_1");
    assert_eq!(h["x-ratelimit-remaining-tokens"], "9000");
    assert_eq!(v["stream"], json!(["Hello from upstream", 16]));
    assert_eq!(v["embeddings"], json!([2, [0.25, -0.5, 0.125]]));
    assert_eq!(v["bad_key"], json!(["AuthenticationError", 401]));
    assert_eq!(
        v["unknown_model"][1].as_u64().map(|s| s == 400 || s == 404),
        Some(true),
        "{v}"
    );
    assert_eq!(v["unsupported_param"], json!(["BadRequestError", 400]));
    assert_eq!(v["bad_request"], json!(["BadRequestError", 400]));
    assert_eq!(
        v["anthropic"],
        json!(["Hello from upstream", 12, "end_turn"])
    );
    assert_eq!(v["anthropic_stream"], "Hello from upstream");
    assert_eq!(v["anthropic_bad_key"], json!(["AuthenticationError", 401]));
    assert_eq!(v["rate_limited"], json!(["RateLimitError", 429]));
}
