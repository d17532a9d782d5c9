//! LiteLLM parameter semantics across providers: `drop_params` (global, per
//! deployment, per request) and `additional_drop_params`; `response_format` for
//! Anthropic (forced `json_tool_call`), Gemini (native) and Bedrock (forced tool);
//! reasoning (`reasoning_content` + `thinking_blocks`) and cache token counts the
//! same in streamed and unstreamed answers, in both translation directions.

mod fakes;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fakes::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

// ------------------------------------------------------------------ Anthropic fake
//
// Follows docs.anthropic.com/en/api/messages: unknown top-level fields answer 400
// `invalid_request_error` "<field>: Extra inputs are not permitted"; `max_tokens` must
// exceed `thinking.budget_tokens`; thinking cannot be combined with a forced tool
// (400 "Thinking may not be enabled when tool_choice forces tool use."); a forced
// `tool_choice` answers with only that tool_use block; usage counts cache reads and
// writes apart from `input_tokens`.

const ANTHROPIC_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "thinking",
    "service_tier",
];

#[derive(Default)]
struct Seen {
    bodies: Mutex<Vec<Value>>,
}

impl Seen {
    fn last(&self) -> Value {
        self.bodies.lock().unwrap().last().cloned().unwrap()
    }
    fn count(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

fn anthropic_400(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": msg}}),
        ),
    )
        .into_response()
}

async fn anthropic(State(seen): State<Arc<Seen>>, axum::Json(b): axum::Json<Value>) -> Response {
    seen.bodies.lock().unwrap().push(b.clone());
    for k in b.as_object().unwrap().keys() {
        if !ANTHROPIC_FIELDS.contains(&k.as_str()) {
            return anthropic_400(&format!("{k}: Extra inputs are not permitted"));
        }
    }
    let thinking = b.pointer("/thinking/type") == Some(&json!("enabled"));
    let forced = (b.pointer("/tool_choice/type") == Some(&json!("tool")))
        .then(|| b["tool_choice"]["name"].as_str().unwrap().to_owned());
    if thinking {
        if b["max_tokens"].as_u64() <= b.pointer("/thinking/budget_tokens").and_then(Value::as_u64)
        {
            return anthropic_400("`max_tokens` must be greater than `thinking.budget_tokens`");
        }
        if forced.is_some() {
            return anthropic_400("Thinking may not be enabled when tool_choice forces tool use.");
        }
    }
    let (content, stop) = match (&forced, thinking) {
        (Some(name), _) => (
            json!([{"type": "tool_use", "id": "toolu_01", "name": name, "input": {"name": "Ada", "age": 36}}]),
            "tool_use",
        ),
        (None, true) => (
            json!([{"type": "thinking", "thinking": "Let me think.", "signature": "sig-abc"},
                   {"type": "text", "text": "Done thinking."}]),
            "end_turn",
        ),
        (None, false) => (json!([{"type": "text", "text": "Hello"}]), "end_turn"),
    };
    let usage = json!({"input_tokens": 5, "cache_creation_input_tokens": 10,
                       "cache_read_input_tokens": 80, "output_tokens": 7});
    if !b["stream"].as_bool().unwrap_or(false) {
        return axum::Json(
            json!({"id": "msg_01", "type": "message", "role": "assistant",
            "model": b["model"], "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": usage}),
        )
        .into_response();
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_01", "type": "message",
            "role": "assistant", "model": b["model"], "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 5, "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 80, "output_tokens": 1}}}),
    );
    for (i, block) in content.as_array().unwrap().iter().enumerate() {
        let (start, deltas): (Value, Vec<Value>) = match block["type"].as_str().unwrap() {
            "thinking" => (
                json!({"type": "thinking", "thinking": ""}),
                vec![
                    json!({"type": "thinking_delta", "thinking": "Let me "}),
                    json!({"type": "thinking_delta", "thinking": "think."}),
                    json!({"type": "signature_delta", "signature": "sig-abc"}),
                ],
            ),
            "text" => (
                json!({"type": "text", "text": ""}),
                vec![json!({"type": "text_delta", "text": block["text"]})],
            ),
            _ => (
                json!({"type": "tool_use", "id": "toolu_01", "name": block["name"], "input": {}}),
                vec![
                    json!({"type": "input_json_delta", "partial_json": "{\"name\": \"Ada\""}),
                    json!({"type": "input_json_delta", "partial_json": ", \"age\": 36}"}),
                ],
            ),
        };
        out += &ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": start}),
        );
        for d in deltas {
            out += &ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": d}),
            );
        }
        out += &ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        );
    }
    out += &ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": 7}}),
    );
    out += &ev("message_stop", json!({"type": "message_stop"}));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from(out))
        .unwrap()
}

// ------------------------------------------------------------------ OpenAI fake
//
// Chat Completions (platform.openai.com/docs/api-reference/chat): reasoning models
// (o-series, gpt-5) answer 400 `unsupported_value` to a temperature other than 1;
// usage reports cached prompt tokens in `prompt_tokens_details.cached_tokens`.

async fn openai(State(seen): State<Arc<Seen>>, axum::Json(b): axum::Json<Value>) -> Response {
    seen.bodies.lock().unwrap().push(b.clone());
    let model = b["model"].as_str().unwrap_or_default().to_owned();
    if (model.starts_with('o') || model.starts_with("gpt-5"))
        && b.get("temperature")
            .is_some_and(|t| t.as_f64() != Some(1.0))
    {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {
            "message": format!("Unsupported value: 'temperature' does not support {} with this model. Only the default (1) value is supported.", b["temperature"]),
            "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}})))
            .into_response();
    }
    let usage = json!({"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103,
                       "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0}});
    if !b["stream"].as_bool().unwrap_or(false) {
        return axum::Json(json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": model, "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
            "message": {"role": "assistant", "content": "Hi there", "refusal": null}}], "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                   "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        )
    };
    let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    out += &chunk(json!({"content": "Hi there"}), Value::Null);
    out += &chunk(json!({}), json!("stop"));
    if b.pointer("/stream_options/include_usage") == Some(&json!(true)) {
        out += &format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                   "model": model, "choices": [], "usage": usage})
        );
    }
    out += "data: [DONE]\n\n";
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from(out))
        .unwrap()
}

struct Upstreams {
    anthropic: String,
    openai: String,
    an: Arc<Seen>,
    oa: Arc<Seen>,
}

async fn upstreams() -> Upstreams {
    let an = Arc::new(Seen::default());
    let oa = Arc::new(Seen::default());
    // The headers each provider really sends with an answer (request id, rate limits).
    async fn anthropic_headers(mut r: Response) -> Response {
        let h = r.headers_mut();
        h.insert("request-id", "req_ant_1".parse().unwrap());
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            "49".parse().unwrap(),
        );
        r
    }
    async fn openai_headers(mut r: Response) -> Response {
        let h = r.headers_mut();
        h.insert("x-request-id", "req_oa_1".parse().unwrap());
        h.insert("x-ratelimit-remaining-requests", "99".parse().unwrap());
        h.insert("set-cookie", "__cf_bm=secret".parse().unwrap());
        r
    }
    let a = serve(
        axum::Router::new()
            .route("/v1/messages", axum::routing::post(anthropic))
            .layer(axum::middleware::map_response(anthropic_headers))
            .with_state(an.clone()),
    )
    .await;
    let o = serve(
        axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(openai))
            .layer(axum::middleware::map_response(openai_headers))
            .with_state(oa.clone()),
    )
    .await;
    Upstreams {
        anthropic: format!("http://{a}"),
        openai: format!("http://{o}/v1"),
        an,
        oa,
    }
}

fn config(u: &Upstreams, litellm_settings: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: claude
    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_key: sk-ant, api_base: "{a}"}}
  - model_name: claude-dropping
    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_key: sk-ant, api_base: "{a}", drop_params: true}}
  - model_name: claude-no-temp
    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_key: sk-ant, api_base: "{a}", additional_drop_params: [temperature]}}
  - model_name: o3
    litellm_params: {{model: openai/o3, api_key: sk-oa, api_base: "{o}"}}
  - model_name: o3-dropping
    litellm_params: {{model: openai/o3, api_key: sk-oa, api_base: "{o}", drop_params: true}}
  - model_name: gpt
    litellm_params: {{model: openai/gpt-4o, api_key: sk-oa, api_base: "{o}"}}
{litellm_settings}
"#,
        a = u.anthropic,
        o = u.openai
    )
}

async fn gateway(u: &Upstreams, litellm_settings: &str) -> Served {
    serve_config(yaml_with_env(&config(u, litellm_settings), &env(&[]))).await
}

fn chat(model: &str, extra: Value) -> Value {
    let mut b = json!({"model": model, "max_tokens": 50,
                       "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// OpenAI SSE `data:` payloads (without `[DONE]`).
fn chunks(sse: &str) -> Vec<Value> {
    sse.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Anthropic SSE events as (name, data).
fn events(sse: &str) -> Vec<(String, Value)> {
    sse.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap()
                .to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

// ------------------------------------------------------------------ drop_params

#[tokio::test]
async fn unsupported_params_are_refused_like_litellm_unless_dropped() {
    let u = upstreams().await;
    let gw = gateway(&u, "").await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let params = json!({"frequency_penalty": 0.5, "seed": 7, "temperature": 0.3});
    // Without drop_params: LiteLLM's UnsupportedParamsError, and nothing goes upstream.
    let (s, b) = post(&url, "k", &chat("claude", params.clone())).await;
    assert_eq!(s, 400, "{b}");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("UnsupportedParamsError")
            && msg.contains("'frequency_penalty'")
            && msg.contains("'seed'")
            && msg.contains("drop_params: true"),
        "{msg}"
    );
    assert_eq!(u.an.count(), 0);
    // Per deployment (litellm_params.drop_params): dropped, the rest goes.
    let (s, b) = post(&url, "k", &chat("claude-dropping", params.clone())).await;
    assert_eq!(s, 200, "{b}");
    let up = u.an.last();
    assert!(up.get("frequency_penalty").is_none() && up.get("seed").is_none());
    assert_eq!(up["temperature"], 0.3);
    // Per request: `drop_params: true` in the body (and never forwarded itself).
    let mut p = params.clone();
    p["drop_params"] = true.into();
    let (s, b) = post(&url, "k", &chat("claude", p)).await;
    assert_eq!(s, 200, "{b}");
    assert!(u.an.last().get("drop_params").is_none());
    assert!(u.an.last().get("seed").is_none());
    // additional_drop_params: always removed, supported or not.
    let (s, b) = post(
        &url,
        "k",
        &chat("claude-no-temp", json!({"temperature": 0.3})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(u.an.last().get("temperature").is_none());
    // Supported parameters are translated, not dropped: top_k reaches Anthropic.
    let (s, _) = post(&url, "k", &chat("claude", json!({"top_k": 5}))).await;
    assert_eq!(s, 200);
    assert_eq!(u.an.last()["top_k"], 5);
}

#[tokio::test]
async fn global_drop_params_applies_to_every_deployment() {
    let u = upstreams().await;
    let gw = gateway(&u, "litellm_settings: {drop_params: true}").await;
    let url = format!("{}/v1/chat/completions", gw.base);
    for stream in [false, true] {
        let (s, b) = post_text(
            &url,
            "k",
            &chat(
                "claude",
                json!({"presence_penalty": 1, "logit_bias": {"1": 2}, "stream": stream}),
            ),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let up = u.an.last();
        assert!(up.get("presence_penalty").is_none() && up.get("logit_bias").is_none());
    }
    // OpenAI reasoning models: temperature != 1 dropped on the pass-through path too.
    let (s, b) = post(&url, "k", &chat("o3", json!({"temperature": 0.2}))).await;
    assert_eq!(s, 200, "{b}");
    assert!(u.oa.last().get("temperature").is_none());
}

#[tokio::test]
async fn reasoning_model_temperature_is_refused_or_dropped_on_pass_through() {
    let u = upstreams().await;
    let gw = gateway(&u, "").await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let (s, b) = post(&url, "k", &chat("o3", json!({"temperature": 0.2}))).await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UnsupportedParamsError"),
        "{b}"
    );
    assert_eq!(u.oa.count(), 0, "refused before the upstream");
    let (s, b) = post(&url, "k", &chat("o3-dropping", json!({"temperature": 0.2}))).await;
    assert_eq!(s, 200, "{b}");
    assert!(u.oa.last().get("temperature").is_none());
    // temperature 1 is the default and goes through; other models keep theirs.
    let (s, _) = post(&url, "k", &chat("o3", json!({"temperature": 1}))).await;
    assert_eq!(s, 200);
    let (s, _) = post(&url, "k", &chat("gpt", json!({"temperature": 0.2}))).await;
    assert_eq!(s, 200);
    assert_eq!(u.oa.last()["temperature"], 0.2);
}

// ------------------------------------------------------------------ response_format

fn person_format() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": {
        "type": "object", "additionalProperties": false,
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"]}}})
}

#[tokio::test]
async fn response_format_to_anthropic_is_a_forced_tool_answered_as_content() {
    let u = upstreams().await;
    let gw = gateway(&u, "").await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let (s, b) = post(
        &url,
        "k",
        &chat("claude", json!({"response_format": person_format()})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let up = u.an.last();
    assert_eq!(up["tools"][0]["name"], "json_tool_call");
    assert_eq!(up["tools"][0]["input_schema"]["required"][1], "age");
    assert_eq!(
        up["tool_choice"],
        json!({"type": "tool", "name": "json_tool_call"})
    );
    let m = &b["choices"][0]["message"];
    let content: Value = serde_json::from_str(m["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"name": "Ada", "age": 36}));
    assert!(m.get("tool_calls").is_none(), "{m}");
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
    // Streamed: the same JSON, as content deltas.
    let (s, body) = post_text(
        &url,
        "k",
        &chat(
            "claude",
            json!({"response_format": {"type": "json_object"}, "stream": true}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        u.an.last()["tools"][0]["input_schema"]["additionalProperties"],
        true
    );
    let cs = chunks(&body);
    let text: String = cs
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"name": "Ada", "age": 36})
    );
    assert!(
        cs.iter()
            .all(|c| c.pointer("/choices/0/delta/tool_calls").is_none())
    );
    assert!(
        cs.iter()
            .any(|c| c.pointer("/choices/0/finish_reason") == Some(&json!("stop")))
    );
    // An Anthropic client's structured output (`output_format`) reaches an OpenAI
    // upstream as its `response_format`.
    let (s, b) = post(
        &format!("{}/v1/messages", gw.base),
        "k",
        &json!({"model": "gpt", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}],
                "output_format": {"type": "json_schema", "schema": person_format()["json_schema"]["schema"]}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let rf = &u.oa.last()["response_format"];
    assert_eq!(rf["type"], "json_schema");
    assert_eq!(rf["json_schema"]["schema"]["required"][0], "name");
}

#[tokio::test]
async fn response_format_to_gemini_is_native_and_bedrock_forces_the_tool() {
    use fakes::google::{self, GoogleState};
    let (gbase, gst) = google::start(GoogleState {
        api_key: "AIza".into(),
        ..Default::default()
    })
    .await;
    let (bbase, bst) = fakes::bedrock::start("AKIDEXAMPLE", "secret", "us-east-1").await;
    let cfg = yaml_with_env(
        &format!(
            "model_list:\n  - model_name: flash\n    litellm_params: {{model: gemini/gemini-2.5-flash, api_key: AIza, api_base: '{gbase}/v1beta'}}\n  - model_name: br\n    litellm_params: {{model: bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0, aws_access_key_id: AKIDEXAMPLE, aws_secret_access_key: secret, aws_region_name: us-east-1, aws_bedrock_runtime_endpoint: '{bbase}'}}\n"
        ),
        &env(&[]),
    );
    let gw = serve_config(cfg).await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let (s, b) = post(
        &url,
        "k",
        &chat(
            "flash",
            json!({"response_format": person_format(), "seed": 3, "frequency_penalty": 0.1, "reasoning_effort": "low"}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let sent = gst.seen.lock().unwrap().last().unwrap().1.clone();
    let g = &sent["generationConfig"];
    assert_eq!(g["responseMimeType"], "application/json");
    assert_eq!(g["responseSchema"]["required"][0], "name");
    assert!(g["responseSchema"].get("additionalProperties").is_none());
    assert_eq!(g["seed"], 3);
    assert_eq!(g["frequencyPenalty"], 0.1);
    assert_eq!(
        g["thinkingConfig"],
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    // Gemini has no logit_bias: refused without drop_params.
    let (s, b) = post(&url, "k", &chat("flash", json!({"logit_bias": {"1": 1}}))).await;
    assert_eq!(s, 400, "{b}");

    let (s, b) = post(
        &url,
        "k",
        &chat("br", json!({"response_format": {"type": "json_object"}})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let sent = bst.seen.lock().unwrap().last().unwrap().1.clone();
    assert_eq!(
        sent["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "json_tool_call"
    );
    assert_eq!(
        sent["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "json_tool_call"}})
    );
    let m = &b["choices"][0]["message"];
    // The fake answers the forced tool with its canned input; it comes back as content.
    assert_eq!(
        serde_json::from_str::<Value>(m["content"].as_str().unwrap()).unwrap(),
        json!({"command": "ls -la"})
    );
    assert!(m.get("tool_calls").is_none());
}

// ------------------------------------------------------------------ reasoning and cache

#[tokio::test]
async fn reasoning_and_cache_tokens_match_streamed_and_unstreamed() {
    let u = upstreams().await;
    let gw = gateway(&u, "").await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let req = chat("claude", json!({"reasoning_effort": "low"}));
    let (s, b) = post(&url, "k", &req).await;
    assert_eq!(s, 200, "{b}");
    // reasoning_effort -> Anthropic thinking budget (LiteLLM: low = 1024), max_tokens raised above it.
    let up = u.an.last();
    assert_eq!(
        up["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert!(up["max_tokens"].as_u64().unwrap() > 1024);
    let m = &b["choices"][0]["message"];
    assert_eq!(m["content"], "Done thinking.");
    assert_eq!(m["reasoning_content"], "Let me think.");
    assert_eq!(
        m["thinking_blocks"],
        json!([{"type": "thinking", "thinking": "Let me think.", "signature": "sig-abc"}])
    );
    // Prompt tokens include the cache; cached_tokens and LiteLLM's cache fields say how much.
    let usage = &b["usage"];
    assert_eq!(usage["prompt_tokens"], 95);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 80);
    assert_eq!(usage["cache_read_input_tokens"], 80);
    assert_eq!(usage["cache_creation_input_tokens"], 10);

    let mut sreq = req.clone();
    sreq["stream"] = true.into();
    sreq["stream_options"] = json!({"include_usage": true});
    let (s, body) = post_text(&url, "k", &sreq).await;
    assert_eq!(s, 200, "{body}");
    let cs = chunks(&body);
    let delta = |k: &str| -> String {
        cs.iter()
            .filter_map(|c| {
                c.pointer(&format!("/choices/0/delta/{k}"))
                    .and_then(Value::as_str)
            })
            .collect()
    };
    assert_eq!(delta("reasoning_content"), "Let me think.");
    assert_eq!(delta("content"), "Done thinking.");
    let sigs: Vec<&Value> = cs
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/thinking_blocks/0/signature"))
        .collect();
    assert_eq!(sigs, vec![&json!("sig-abc")]);
    let mut su = cs.last().unwrap()["usage"].clone();
    // Streams also carry their cost there (the unstreamed answer has it as a header).
    assert!(su.as_object_mut().unwrap().remove("cost").is_some());
    assert_eq!(&su, usage, "streamed usage = unstreamed usage");

    // The client sends the thinking block back: it reaches Anthropic signed.
    let turn2 = json!({"model": "claude", "max_tokens": 2000, "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Done thinking.", "thinking_blocks": m["thinking_blocks"]},
        {"role": "user", "content": "more"}]});
    let (s, b) = post(&url, "k", &turn2).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        u.an.last()["messages"][1]["content"][0],
        json!({"type": "thinking", "thinking": "Let me think.", "signature": "sig-abc"})
    );
}

#[tokio::test]
async fn anthropic_client_gets_cache_counts_from_openai_upstream() {
    let u = upstreams().await;
    let gw = gateway(&u, "").await;
    let url = format!("{}/v1/messages", gw.base);
    let req =
        json!({"model": "gpt", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(&url, "k", &req).await;
    assert_eq!(s, 200, "{b}");
    // Anthropic's input_tokens excludes cache reads.
    assert_eq!(
        b["usage"],
        json!({"input_tokens": 36, "output_tokens": 3, "cache_read_input_tokens": 64,
               "cache_creation_input_tokens": 0})
    );
    let mut sreq = req.clone();
    sreq["stream"] = true.into();
    let (s, body) = post_text(&url, "k", &sreq).await;
    assert_eq!(s, 200, "{body}");
    let evs = events(&body);
    let (_, md) = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    // The stream's usage also carries its cost (the unstreamed answer has it as a header).
    let mut su = md["usage"].clone();
    assert!(su.as_object_mut().unwrap().remove("cost").is_some(), "{su}");
    assert_eq!(su, b["usage"], "streamed usage = unstreamed usage");
}

#[tokio::test]
async fn anthropic_client_sees_thinking_from_openai_compatible_reasoning_both_ways() {
    // An OpenAI-compatible server (vLLM, DeepSeek) returns `reasoning_content`.
    async fn reasoning(axum::Json(b): axum::Json<Value>) -> Response {
        if b["stream"].as_bool() == Some(true) {
            let c = |d: Value, f: Value| {
                format!(
                    "data: {}\n\n",
                    json!({"id": "c1", "object": "chat.completion.chunk",
                "created": 1, "model": "r1", "choices": [{"index": 0, "delta": d, "finish_reason": f}]})
                )
            };
            let body = c(
                json!({"role": "assistant", "reasoning_content": "Hmm."}),
                Value::Null,
            ) + &c(json!({"content": "Yes."}), json!("stop"))
                + "data: [DONE]\n\n";
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(axum::body::Body::from(body))
                .unwrap();
        }
        axum::Json(
            json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "r1",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
            "content": "Yes.", "reasoning_content": "Hmm."}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}),
        )
        .into_response()
    }
    let addr =
        serve(axum::Router::new().route("/v1/chat/completions", axum::routing::post(reasoning)))
            .await;
    let cfg = yaml_with_env(
        &format!(
            "model_list:\n  - model_name: r1\n    litellm_params: {{model: hosted_vllm/r1, api_base: 'http://{addr}/v1'}}\n"
        ),
        &env(&[]),
    );
    let gw = serve_config(cfg).await;
    let url = format!("{}/v1/messages", gw.base);
    let req =
        json!({"model": "r1", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(&url, "k", &req).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["content"][0]["type"], "thinking");
    assert_eq!(b["content"][0]["thinking"], "Hmm.");
    assert_eq!(b["content"][1], json!({"type": "text", "text": "Yes."}));
    let mut sreq = req.clone();
    sreq["stream"] = true.into();
    let (_, body) = post_text(&url, "k", &sreq).await;
    let evs = events(&body);
    let kinds: Vec<&str> = evs
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d["content_block"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["thinking", "text"], "same blocks as unstreamed");
}

// ------------------------------------------------------------------ headers

#[tokio::test]
async fn upstream_headers_pass_through_as_litellm_does_and_streams_carry_their_cost() {
    let u = upstreams().await;
    let gw = gateway(&u, "").await;
    let c = client();
    let url = format!("{}/v1/chat/completions", gw.base);
    for (model, stream) in [
        ("gpt", false),
        ("gpt", true),
        ("claude", false),
        ("claude", true),
    ] {
        let r = c
            .post(&url)
            .bearer_auth("k")
            .json(&chat(
                model,
                json!({"stream": stream, "stream_options": {"include_usage": true}}),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{model} {stream}");
        let h = r.headers().clone();
        let get = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_owned());
        if model == "gpt" {
            assert_eq!(
                get("llm_provider-x-request-id").as_deref(),
                Some("req_oa_1")
            );
            // OpenAI's own rate-limit headers also under their names, as LiteLLM returns them.
            assert_eq!(get("x-ratelimit-remaining-requests").as_deref(), Some("99"));
            assert_eq!(get("set-cookie"), None);
            assert_eq!(get("llm_provider-set-cookie"), None);
        } else {
            assert_eq!(get("llm_provider-request-id").as_deref(), Some("req_ant_1"));
            assert_eq!(
                get("llm_provider-anthropic-ratelimit-requests-remaining").as_deref(),
                Some("49")
            );
        }
        assert_eq!(get("llm_provider-content-length"), None);
        let body = r.text().await.unwrap();
        if !stream {
            let cost: f64 = get("x-litellm-response-cost").unwrap().parse().unwrap();
            assert!(cost > 0.0, "{model}: {cost}");
        } else if model == "claude" {
            // Translated stream: the cost rides in the usage chunk (LiteLLM's
            // include_cost_in_streaming_usage); headers left before it was known.
            let last = chunks(&body).pop().unwrap();
            let cost = last["usage"]["cost"].as_f64().unwrap();
            // claude-sonnet-4-5 list prices: 5 input, 10 cache write, 80 cache read, 7 output.
            let want = 5.0 * 3e-6 + 10.0 * 3.75e-6 + 80.0 * 3e-7 + 7.0 * 15e-6;
            assert!((cost - want).abs() < 1e-12, "{cost} vs {want}");
        }
    }
}

// ------------------------------------------------------------------ streamed cost and spend

/// A gateway over `u` with a SQLite store (so `/spend/logs` has rows) and a master key.
async fn gateway_with_spend_log(u: &Upstreams, extra: &str) -> (Served, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gw.db").display());
    let yaml = format!(
        "{}\ngeneral_settings: {{master_key: sk-m}}\n",
        config(u, extra)
    );
    let cfg = yaml_with_env(&yaml, &env(&[]));
    let gw =
        gateway::Gateway::from_config(cfg, gateway::store::Store::connect(&url).await.unwrap())
            .await
            .unwrap();
    let addr = serve(gw.router()).await;
    let s = Served {
        gw,
        base: format!("http://{addr}"),
    };
    (s, dir)
}

/// The table's price, applied by hand: uncached input, cache reads and writes, output.
fn priced(
    provider: &str,
    model: &str,
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
) -> f64 {
    let p = gateway::pricing::table()
        .find(Some(provider), model)
        .unwrap();
    (input - cache_read - cache_write) as f64 * p.input
        + cache_read as f64 * p.cache_read.unwrap()
        + cache_write as f64 * p.cache_creation.unwrap_or(p.input)
        + output as f64 * p.output
}

fn message_delta_cost(sse: &str) -> Option<f64> {
    let evs = events(sse);
    let (_, d) = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    d["usage"]["cost"].as_f64()
}

#[tokio::test]
async fn pass_through_and_anthropic_streams_carry_their_cost_and_record_it_as_spend() {
    let u = upstreams().await;
    let (gw, _dir) = gateway_with_spend_log(&u, "").await;
    let key = "sk-m";
    // gpt-4o: 100 prompt tokens, 64 of them cached, 3 completion tokens.
    let gpt_cost = priced("openai", "gpt-4o", 100, 64, 0, 3);
    // claude-sonnet-4-5: 5 plain input, 80 cache reads, 10 cache writes, 7 output.
    let claude_cost = priced("anthropic", "claude-sonnet-4-5", 95, 80, 10, 7);

    // OpenAI client, OpenAI upstream (pass-through): the usage chunk gets `cost`.
    let chat_url = format!("{}/v1/chat/completions", gw.base);
    let req = chat(
        "gpt",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (s, body) = post_text(&chat_url, key, &req).await;
    assert_eq!(s, 200, "{body}");
    let last = chunks(&body).pop().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"]["prompt_tokens"], 100,
        "the upstream's usage, untouched"
    );
    let cost = last["usage"]["cost"]
        .as_f64()
        .expect("usage.cost on a pass-through stream");
    assert!((cost - gpt_cost).abs() < 1e-12, "{cost} vs {gpt_cost}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // Without include_usage the client still gets no usage chunk (the gateway asked for it).
    let (_, body) = post_text(&chat_url, key, &chat("gpt", json!({"stream": true}))).await;
    assert!(
        chunks(&body)
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "{body}"
    );

    // Anthropic client, Anthropic upstream (pass-through): message_delta's usage gets `cost`.
    let msg_url = format!("{}/v1/messages", gw.base);
    let req = chat("claude", json!({"stream": true}));
    let (s, body) = post_text(&msg_url, key, &req).await;
    assert_eq!(s, 200, "{body}");
    let cost = message_delta_cost(&body).expect("usage.cost on an Anthropic pass-through stream");
    assert!(
        (cost - claude_cost).abs() < 1e-12,
        "{cost} vs {claude_cost}"
    );
    assert!(body.contains("event: message_stop"), "{body}");

    // Anthropic client, OpenAI upstream (translated): the same.
    let (s, body) = post_text(&msg_url, key, &chat("gpt", json!({"stream": true}))).await;
    assert_eq!(s, 200, "{body}");
    let cost = message_delta_cost(&body).expect("usage.cost on a translated Anthropic stream");
    assert!((cost - gpt_cost).abs() < 1e-12, "{cost} vs {gpt_cost}");

    // Every stream above is in the spend log at the cost its client was told.
    gw.gw.flush().await;
    let logs: Value = client()
        .get(format!("{}/spend/logs", gw.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut spends: Vec<(String, f64)> = logs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["model_group"].as_str().unwrap().to_owned(),
                l["spend"].as_f64().unwrap(),
            )
        })
        .collect();
    spends.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    assert_eq!(spends.len(), 4, "{logs}");
    let want = [
        ("claude", claude_cost),
        ("gpt", gpt_cost),
        ("gpt", gpt_cost),
        ("gpt", gpt_cost),
    ];
    for ((m, s), (wm, ws)) in spends.iter().zip(want) {
        assert_eq!(m, wm);
        assert!((s - ws).abs() < 1e-9, "{m}: {s} vs {ws}");
    }
    let claude_log = logs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["model_group"] == "claude")
        .unwrap();
    assert_eq!(claude_log["metadata"]["cache_read_input_tokens"], 80);
    assert_eq!(claude_log["metadata"]["cache_creation_input_tokens"], 10);
}

#[tokio::test]
async fn include_cost_in_streaming_usage_false_leaves_usage_as_the_upstream_sent_it() {
    let u = upstreams().await;
    let gw = gateway(
        &u,
        "litellm_settings: {include_cost_in_streaming_usage: false}",
    )
    .await;
    assert!(gw.gw.warnings().is_empty(), "{:?}", gw.gw.warnings());
    let req = chat(
        "gpt",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (_, body) = post_text(&format!("{}/v1/chat/completions", gw.base), "k", &req).await;
    let last = chunks(&body).pop().unwrap();
    assert_eq!(last["usage"]["prompt_tokens"], 100);
    assert!(last["usage"].get("cost").is_none(), "{last}");
    for model in ["claude", "gpt"] {
        let (_, body) = post_text(
            &format!("{}/v1/messages", gw.base),
            "k",
            &chat(model, json!({"stream": true})),
        )
        .await;
        assert_eq!(message_delta_cost(&body), None, "{model}: {body}");
    }
}
