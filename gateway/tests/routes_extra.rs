//! `/v1/embeddings`, `/v1/completions` and `/v1/messages/count_tokens`: pass-through
//! to providers that serve them, translation (completions) or estimates
//! (count_tokens) for those that do not, virtual-key model lists and spend.

mod common;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post as route_post;
use common::*;
use gateway::store::Store;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// What an extra-endpoint fake saw: (path and query, headers, body).
type Seen = Arc<Mutex<Vec<(String, HeaderMap, Value)>>>;

fn openai_error(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": null}})),
    )
        .into_response()
}

/// OpenAI `POST /v1/embeddings` (platform.openai.com/docs/api-reference/embeddings/create;
/// openai/openai-openapi@master:openapi.yaml `CreateEmbeddingResponse`); Azure serves the
/// same body at `/openai/deployments/{d}/embeddings?api-version=`. `input` is required.
async fn embeddings(State(seen): State<Seen>, uri: Uri, h: HeaderMap, body: Value) -> Response {
    seen.lock()
        .unwrap()
        .push((uri.to_string(), h, body.clone()));
    let n = match &body["input"] {
        Value::String(_) => 1,
        Value::Array(a) if !a.is_empty() => a.len(),
        _ => return openai_error("'input' is a required property"),
    };
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.0023, -0.0093, 0.015]}))
        .collect();
    axum::Json(
        json!({"object": "list", "data": data, "model": body["model"],
        "usage": {"prompt_tokens": 8, "total_tokens": 8}}),
    )
    .into_response()
}

/// OpenAI legacy `POST /v1/completions` (platform.openai.com/docs/api-reference/completions;
/// openai-openapi `CreateCompletionResponse`): `text_completion` objects, SSE chunks of the
/// same shape, and a usage-only chunk (`choices: []`) with `stream_options.include_usage`.
async fn completions(State(seen): State<Seen>, uri: Uri, h: HeaderMap, body: Value) -> Response {
    seen.lock()
        .unwrap()
        .push((uri.to_string(), h, body.clone()));
    if body.get("prompt").is_none() {
        return openai_error("'prompt' is a required property");
    }
    let model = body["model"].clone();
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7});
    if !body["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({"id": "cmpl-fake", "object": "text_completion", "created": 1700000000,
            "model": model, "choices": [{"text": " world", "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage}))
        .into_response();
    }
    let chunk = |text: &str, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "cmpl-fake", "object": "text_completion", "created": 1700000000, "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
        )
    };
    let mut out = chunk(" wor", Value::Null) + &chunk("ld", json!("stop"));
    if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
        out += &format!(
            "data: {}\n\n",
            json!({"id": "cmpl-fake", "object": "text_completion", "created": 1700000000,
                "model": model, "choices": [], "usage": usage})
        );
    }
    out += "data: [DONE]\n\n";
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(out))
        .unwrap()
}

/// Anthropic `POST /v1/messages/count_tokens` (docs.anthropic.com/en/api/messages-count-tokens):
/// needs `x-api-key`, `anthropic-version`, `model` and `messages`; answers `{"input_tokens"}`.
async fn count_tokens(State(seen): State<Seen>, uri: Uri, h: HeaderMap, body: Value) -> Response {
    seen.lock()
        .unwrap()
        .push((uri.to_string(), h.clone(), body.clone()));
    if h.get("x-api-key").is_none() || h.get("anthropic-version").is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"type": "error", "error": {"type": "authentication_error", "message": "x-api-key header is required"}})),
        )
            .into_response();
    }
    if body.get("model").is_none() || body.get("messages").is_none() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: Field required"}})),
        )
            .into_response();
    }
    axum::Json(json!({"input_tokens": 42})).into_response()
}

async fn fake_extra() -> (String, Seen) {
    let seen: Seen = Default::default();
    let app = Router::new()
        .route("/v1/embeddings", route_post(emb_h))
        .route("/openai/deployments/{d}/embeddings", route_post(emb_h))
        .route("/v1/completions", route_post(cmp_h))
        .route("/v1/messages/count_tokens", route_post(cnt_h))
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (base, seen)
}

async fn emb_h(s: State<Seen>, u: Uri, h: HeaderMap, axum::Json(b): axum::Json<Value>) -> Response {
    embeddings(s, u, h, b).await
}
async fn cmp_h(s: State<Seen>, u: Uri, h: HeaderMap, axum::Json(b): axum::Json<Value>) -> Response {
    completions(s, u, h, b).await
}
async fn cnt_h(s: State<Seen>, u: Uri, h: HeaderMap, axum::Json(b): axum::Json<Value>) -> Response {
    count_tokens(s, u, h, b).await
}

fn config(extra: &str, an: &Fake) -> String {
    format!(
        r#"
model_list:
  - model_name: emb
    litellm_params: {{model: openai/text-embedding-3-small, api_base: '{extra}/v1', api_key: sk-up, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}
  - model_name: emb-azure
    litellm_params: {{model: azure/my-emb, api_base: '{extra}', api_key: az-key, api_version: '2024-10-21', input_cost_per_token: 0.001, output_cost_per_token: 0.002}}
  - model_name: inst
    litellm_params: {{model: openai/gpt-3.5-turbo-instruct, api_base: '{extra}/v1', api_key: sk-up, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}
  - model_name: claude
    litellm_params: {{model: anthropic/claude-x, api_base: '{an}', api_key: sk-ant-up, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}
  - model_name: claude-count
    litellm_params: {{model: anthropic/claude-y, api_base: '{extra}', api_key: sk-ant-up, input_cost_per_token: 0.001, output_cost_per_token: 0.002}}
general_settings: {{master_key: sk-master}}
"#,
        an = an.base()
    )
}

async fn setup() -> (TestGateway, Seen, Fake) {
    let an = fake_anthropic().await;
    let (extra, seen) = fake_extra().await;
    let gw = start_gateway(&config(&extra, &an), Store::Memory).await;
    (gw, seen, an)
}

async fn new_key(base: &str, models: Value) -> String {
    let (s, b) = post(
        &format!("{base}/key/generate"),
        "sk-master",
        &json!({"models": models}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    json(&b)["key"].as_str().unwrap().to_owned()
}

/// POST; returns (status, x-litellm-response-cost, body).
async fn call(url: &str, key: &str, body: &Value) -> (u16, Option<f64>, String) {
    let r = client()
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let cost = r
        .headers()
        .get("x-litellm-response-cost")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (r.status().as_u16(), cost, r.text().await.unwrap())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn embeddings_pass_through_with_auth_and_spend() {
    let (gw, seen, _an) = setup().await;
    let base = &gw.base;
    let key = new_key(base, json!(["emb", "emb-azure"])).await;

    // OpenAI-compatible: body passed through, model rewritten, provider key sent.
    let (s, cost, b) = call(
        &format!("{base}/v1/embeddings"),
        &key,
        &json!({"model": "emb", "input": ["a", "b"], "encoding_format": "float"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert!(close(cost.unwrap(), 8.0 * 0.001), "{cost:?}");
    {
        let seen = seen.lock().unwrap();
        let (path, h, body) = seen.last().unwrap();
        assert_eq!(path, "/v1/embeddings");
        assert_eq!(h["authorization"], "Bearer sk-up");
        assert_eq!(body["model"], "text-embedding-3-small");
        assert_eq!(body["encoding_format"], "float");
    }

    // Without the /v1 prefix too.
    let (s, _, b) = call(
        &format!("{base}/embeddings"),
        &key,
        &json!({"model": "emb", "input": "a"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    // Azure: the deployment's embeddings URL, api-version and api-key.
    let (s, cost, b) = call(
        &format!("{base}/v1/embeddings"),
        &key,
        &json!({"model": "emb-azure", "input": "a"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(close(cost.unwrap(), 0.008));
    {
        let seen = seen.lock().unwrap();
        let (path, h, _) = seen.last().unwrap();
        assert_eq!(
            path,
            "/openai/deployments/my-emb/embeddings?api-version=2024-10-21"
        );
        assert_eq!(h["api-key"], "az-key");
    }

    // The upstream's own 400 comes back as is.
    let (s, _, b) = call(
        &format!("{base}/v1/embeddings"),
        &key,
        &json!({"model": "emb"}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("'input' is a required property"), "{b}");

    // A key without the model is refused before the upstream is called.
    let before = seen.lock().unwrap().len();
    let (s, _, b) = call(
        &format!("{base}/v1/embeddings"),
        &key,
        &json!({"model": "inst", "input": "a"}),
    )
    .await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(seen.lock().unwrap().len(), before);
    let (s, _, _) = call(
        &format!("{base}/v1/embeddings"),
        "sk-wrong",
        &json!({"model": "emb", "input": "a"}),
    )
    .await;
    assert_eq!(s, 401);

    // Spend: three answered calls x 8 prompt tokens at the input price.
    gw.gw.flush().await;
    let r = client()
        .get(format!("{base}/key/info"))
        .query(&[("key", key.as_str())])
        .bearer_auth("sk-master")
        .send()
        .await
        .unwrap();
    let info: Value = r.json().await.unwrap();
    assert!(
        close(info["info"]["spend"].as_f64().unwrap(), 3.0 * 0.008),
        "{info}"
    );
}

#[tokio::test]
async fn embeddings_on_a_provider_without_them_is_a_400() {
    let (gw, _seen, an) = setup().await;
    let (s, cost, b) = call(
        &format!("{}/v1/embeddings", gw.base),
        "sk-master",
        &json!({"model": "claude", "input": "a"}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(cost, None);
    let v = json(&b);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no embeddings endpoint"),
        "{b}"
    );
    assert_eq!(an.count(), 0);
}

#[tokio::test]
async fn completions_pass_through_and_stream() {
    let (gw, seen, _an) = setup().await;
    let base = &gw.base;
    let (s, cost, b) = call(
        &format!("{base}/v1/completions"),
        "sk-master",
        &json!({"model": "inst", "prompt": "hello", "max_tokens": 5}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], " world");
    assert!(close(cost.unwrap(), 5.0 * 0.001 + 2.0 * 0.002));
    assert_eq!(
        seen.lock().unwrap().last().unwrap().2["model"],
        "gpt-3.5-turbo-instruct"
    );

    // Streamed: the gateway asks for usage (for spend) and cuts the usage-only
    // chunk the client did not ask for.
    let (s, _, b) = call(
        &format!("{base}/completions"),
        "sk-master",
        &json!({"model": "inst", "prompt": "hello", "stream": true}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        seen.lock().unwrap().last().unwrap().2["stream_options"]["include_usage"],
        true
    );
    let events = sse_events(&b);
    let texts: String = events
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .map(|(_, d)| json(d)["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, " world");
    assert!(!b.contains("\"usage\""), "{b}");
    assert_eq!(events.last().unwrap().1, "[DONE]");
}

#[tokio::test]
async fn completions_translated_for_anthropic() {
    let (gw, _seen, an) = setup().await;
    let base = &gw.base;
    let (s, cost, b) = call(
        &format!("{base}/v1/completions"),
        "sk-master",
        &json!({"model": "claude", "prompt": "Say hi", "max_tokens": 20, "stop": "\n"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "claude");
    assert_eq!(v["choices"][0]["text"], "Hello from fake-anthropic");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 13);
    assert_eq!(v["usage"]["completion_tokens"], 9);
    assert!(close(cost.unwrap(), 13.0 * 0.001 + 9.0 * 0.002));
    let up = an.last_body();
    assert_eq!(up["model"], "claude-x");
    assert_eq!(up["messages"].as_array().unwrap().len(), 1);
    assert_eq!(up["messages"][0]["role"], "user");
    assert!(up["messages"][0].to_string().contains("Say hi"));
    assert_eq!(up["max_tokens"], 20);
    assert_eq!(up["stop_sequences"], json!(["\n"]));

    // Streaming on a translated provider: text_completion chunks, then usage if asked, [DONE].
    let (s, _, b) = call(
        &format!("{base}/v1/completions"),
        "sk-master",
        &json!({"model": "claude", "prompt": "Say hi", "stream": true, "echo": true,
                "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let events = sse_events(&b);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| json(d))
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "Say hiHello from fake-anthropic");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 13);
    assert_eq!(usage["completion_tokens"], 9);
    assert!(an.last_body()["stream"] == true);
    let n = an.count();
    // Several prompts cannot be one chat turn.
    let (s, _, b) = call(
        &format!("{base}/v1/completions"),
        "sk-master",
        &json!({"model": "claude", "prompt": ["a", "b"]}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(an.count(), n);
}

#[tokio::test]
async fn count_tokens_pass_through_and_estimate() {
    let (gw, seen, _an) = setup().await;
    let base = &gw.base;
    let key = new_key(base, json!(["claude-count", "inst"])).await;
    let req = json!({"model": "claude-count", "system": "be brief",
        "messages": [{"role": "user", "content": "hello there"}]});

    // Anthropic: passed through with the deployment's key and version, and the client's beta.
    let r = client()
        .post(format!("{base}/v1/messages/count_tokens"))
        .header("x-api-key", &key)
        .header("anthropic-beta", "token-counting-2024-11-01")
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"input_tokens": 42})
    );
    {
        let seen = seen.lock().unwrap();
        let (path, h, body) = seen.last().unwrap();
        assert_eq!(path, "/v1/messages/count_tokens");
        assert_eq!(h["x-api-key"], "sk-ant-up");
        assert_eq!(h["anthropic-version"], "2023-06-01");
        assert_eq!(h["anthropic-beta"], "token-counting-2024-11-01");
        assert_eq!(body["model"], "claude-y");
    }

    // Another provider: an estimate, bytes/4 of system+messages+tools rounded up.
    let n = seen.lock().unwrap().len();
    let mut other = req.clone();
    other["model"] = json!("inst");
    let (s, _, b) = call(&format!("{base}/messages/count_tokens"), &key, &other).await;
    assert_eq!(s, 200, "{b}");
    let bytes = json!("be brief").to_string().len() + other["messages"].to_string().len();
    assert_eq!(
        json(&b),
        json!({"input_tokens": bytes.div_ceil(4)}),
        "{bytes}"
    );
    assert_eq!(seen.lock().unwrap().len(), n, "no upstream call");

    // A key without the model: refused, in Anthropic's error shape.
    let mut denied = req.clone();
    denied["model"] = json!("claude");
    let (s, _, b) = call(&format!("{base}/v1/messages/count_tokens"), &key, &denied).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(json(&b)["type"], "error");

    // Counting is free: no spend recorded.
    gw.gw.flush().await;
    let r = client()
        .get(format!("{base}/key/info"))
        .query(&[("key", key.as_str())])
        .bearer_auth("sk-master")
        .send()
        .await
        .unwrap();
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["info"]["spend"].as_f64().unwrap(), 0.0, "{info}");
}

#[tokio::test]
async fn translated_completion_stream_records_spend() {
    let (gw, _seen, _an) = setup().await;
    let base = &gw.base;
    let key = new_key(base, json!(["claude"])).await;
    let (s, _, b) = call(
        &format!("{base}/v1/completions"),
        &key,
        &json!({"model": "claude", "prompt": "Say hi", "stream": true}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(!b.contains("\"usage\""), "usage only when asked: {b}");
    gw.gw.flush().await;
    let r = client()
        .get(format!("{base}/key/info"))
        .query(&[("key", key.as_str())])
        .bearer_auth("sk-master")
        .send()
        .await
        .unwrap();
    let info: Value = r.json().await.unwrap();
    // 13 input tokens at 0.001 + 9 output tokens at 0.002.
    assert!(
        close(info["info"]["spend"].as_f64().unwrap(), 0.031),
        "{info}"
    );
}

#[tokio::test]
async fn every_inference_route_also_answers_without_v1() {
    // Contract: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
    // `/v1/responses`, `/v1/messages`, `/v1/messages/count_tokens`, `/v1/models`,
    // "each also without /v1".
    let (gw, _seen, _an) = setup().await;
    let base = &gw.base;
    let key = new_key(base, json!([])).await;
    let hi = json!([{"role": "user", "content": "hi"}]);
    for (path, body) in [
        (
            "/chat/completions",
            json!({"model": "claude", "messages": hi}),
        ),
        (
            "/messages",
            json!({"model": "claude", "max_tokens": 5, "messages": hi}),
        ),
        ("/completions", json!({"model": "inst", "prompt": "hi"})),
        ("/embeddings", json!({"model": "emb", "input": "hi"})),
        ("/responses", json!({"model": "claude", "input": "hi"})),
        (
            "/messages/count_tokens",
            json!({"model": "inst", "messages": hi}),
        ),
    ] {
        let (s, _, b) = call(&format!("{base}{path}"), &key, &body).await;
        let (s1, _, b1) = call(&format!("{base}/v1{path}"), &key, &body).await;
        assert_eq!(s, 200, "{path}: {b}");
        assert_eq!(s1, 200, "/v1{path}: {b1}");
    }
    let r = client()
        .get(format!("{base}/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
