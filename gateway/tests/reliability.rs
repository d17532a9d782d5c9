//! Retries, Retry-After, fallbacks, timeouts, and provider errors translated
//! into the caller's format.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn chat(model: &str) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn retries_on_429_honouring_retry_after_then_succeeds() {
    let oa = fake_openai().await;
    let gw = start_gateway(
        &format!(
            "model_list:\n  - model_name: m\n    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1'}}\nlitellm_settings: {{num_retries: 2}}\n",
            oa.base()
        ),
        gateway::store::Store::Memory,
    )
    .await;
    oa.push(Behavior::Status(429, Some(1)));
    oa.push(Behavior::Status(500, None));
    let t = Instant::now();
    let (s, body) = post(&format!("{}/v1/chat/completions", gw.base), "x", &chat("m")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(oa.count(), 3);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was honoured"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn retries_exhausted_returns_provider_error_in_caller_format() {
    let an = fake_anthropic().await;
    let gw = start_gateway(
        &format!(
            "model_list:\n  - model_name: c\n    litellm_params: {{model: anthropic/claude-3-5-haiku, api_base: '{}'}}\nlitellm_settings: {{num_retries: 1}}\n",
            an.base()
        ),
        gateway::store::Store::Memory,
    )
    .await;
    for _ in 0..4 {
        an.push(Behavior::Status(529, None));
    }
    // OpenAI client: gets an OpenAI-shaped error with the upstream's status and message.
    let (s, body) = post(&format!("{}/v1/chat/completions", gw.base), "x", &chat("c")).await;
    assert_eq!(s, 529);
    let v = json(&body);
    assert_eq!(v["error"]["message"], "Fake Anthropic error");
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert_eq!(an.count(), 2, "1 try + 1 retry");
    // Anthropic client: the Anthropic error envelope.
    let r = client()
        .post(format!("{}/v1/messages", gw.base))
        .json(&json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 529);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn non_retryable_error_is_not_retried_and_translated() {
    let oa = fake_openai().await;
    let gw = start_gateway(
        &format!(
            "model_list:\n  - model_name: m\n    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1'}}\nlitellm_settings: {{num_retries: 3}}\n",
            oa.base()
        ),
        gateway::store::Store::Memory,
    )
    .await;
    oa.push(Behavior::Status(400, None));
    let r = client()
        .post(format!("{}/v1/messages", gw.base))
        .json(&json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "Invalid value for 'messages'");
    assert_eq!(oa.count(), 1);
}

#[tokio::test]
async fn fallback_to_other_model_group_after_retries() {
    let oa = fake_openai().await;
    let an = fake_anthropic().await;
    let gw = start_gateway(
        &format!(
            r#"
model_list:
  - model_name: primary
    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1'}}
  - model_name: backup
    litellm_params: {{model: anthropic/claude-3-5-haiku, api_base: '{}'}}
litellm_settings:
  num_retries: 1
  fallbacks: [{{primary: [backup]}}]
"#,
            oa.base(),
            an.base()
        ),
        gateway::store::Store::Memory,
    )
    .await;
    oa.push(Behavior::Status(500, None));
    oa.push(Behavior::Status(503, None));
    let (s, body) = post(
        &format!("{}/v1/chat/completions", gw.base),
        "x",
        &chat("primary"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        json(&body)["choices"][0]["message"]["content"],
        "Hello from fake-anthropic"
    );
    assert_eq!(oa.count(), 2);
    assert_eq!(an.count(), 1);
}

#[tokio::test]
async fn timeout_never_hangs_and_falls_back() {
    let slow = fake_openai().await;
    let fast = fake_openai().await;
    let gw = start_gateway(
        &format!(
            r#"
model_list:
  - model_name: slow
    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1', timeout: 0.3}}
  - model_name: fast
    litellm_params: {{model: openai/gpt-4o-mini, api_base: '{}/v1'}}
litellm_settings: {{num_retries: 0, request_timeout: 0.3, fallbacks: [{{slow: [fast]}}]}}
"#,
            slow.base(),
            fast.base()
        ),
        gateway::store::Store::Memory,
    )
    .await;
    slow.push(Behavior::Delay(Duration::from_secs(30)));
    let t = Instant::now();
    let (s, _) = post(
        &format!("{}/v1/chat/completions", gw.base),
        "x",
        &chat("slow"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(fast.count(), 1);
    // Without a fallback: a 504 in the caller's format, quickly.
    slow.push(Behavior::Delay(Duration::from_secs(30)));
    let t = Instant::now();
    let r = client()
        .post(format!("{}/v1/messages", gw.base))
        .json(&json!({"model": "fast-missing", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "unknown model is a 4xx");
    let gw2 = start_gateway(
        &format!(
            "model_list:\n  - model_name: slow\n    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1'}}\nlitellm_settings: {{request_timeout: 0.3}}\n",
            slow.base()
        ),
        gateway::store::Store::Memory,
    )
    .await;
    let (s, body) = post(
        &format!("{}/v1/chat/completions", gw2.base),
        "x",
        &chat("slow"),
    )
    .await;
    assert_eq!(s, 504, "{body}");
    assert_eq!(json(&body)["error"]["type"], "timeout");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn load_balancing_strategies_spread_and_skip_failing() {
    for strategy in [
        "simple-shuffle",
        "least-busy",
        "latency-based-routing",
        "usage-based-routing",
    ] {
        let a = fake_openai().await;
        let b = fake_openai().await;
        let gw = start_gateway(
            &format!(
                r#"
model_list:
  - model_name: m
    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1'}}
  - model_name: m
    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1'}}
router_settings: {{routing_strategy: {strategy}, num_retries: 1}}
"#,
                a.base(),
                b.base()
            ),
            gateway::store::Store::Memory,
        )
        .await;
        for _ in 0..20 {
            let (s, _) = post(&format!("{}/v1/chat/completions", gw.base), "x", &chat("m")).await;
            assert_eq!(s, 200);
        }
        assert_eq!(a.count() + b.count(), 20, "{strategy}");
        if strategy != "latency-based-routing" {
            assert!(
                a.count() > 0 && b.count() > 0,
                "{strategy}: both used ({} / {})",
                a.count(),
                b.count()
            );
        }
        // A failing deployment is retried on the other one.
        a.push(Behavior::Status(500, None));
        for _ in 0..3 {
            let (s, _) = post(&format!("{}/v1/chat/completions", gw.base), "x", &chat("m")).await;
            assert_eq!(s, 200, "{strategy}");
        }
    }
}

#[tokio::test]
async fn rpm_limit_is_enforced() {
    let oa = fake_openai().await;
    let gw = start_gateway(
        &format!(
            "model_list:\n  - model_name: m\n    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1', rpm: 2}}\n",
            oa.base()
        ),
        gateway::store::Store::Memory,
    )
    .await;
    clear_of_minute_end(Duration::from_secs(5)).await;
    for _ in 0..2 {
        assert_eq!(
            post(&format!("{}/v1/chat/completions", gw.base), "x", &chat("m"))
                .await
                .0,
            200
        );
    }
    let (s, body) = post(&format!("{}/v1/chat/completions", gw.base), "x", &chat("m")).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(oa.count(), 2);
}

#[tokio::test]
async fn failed_attempts_are_not_counted_as_spend() {
    let oa = fake_openai().await;
    let dir = tempfile::tempdir().unwrap();
    let store =
        gateway::store::Store::connect(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
    let gw = start_gateway(
        &format!(
            "model_list:\n  - model_name: m\n    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1'}}\nlitellm_settings: {{num_retries: 2}}\n",
            oa.base()
        ),
        store.clone(),
    )
    .await;
    oa.push(Behavior::Status(500, None));
    oa.push(Behavior::Status(502, None));
    let (s, _) = post(&format!("{}/v1/chat/completions", gw.base), "x", &chat("m")).await;
    assert_eq!(s, 200);
    gw.gw.flush().await;
    let spend = store.model_spend("anonymous").await.unwrap();
    assert_eq!(spend.len(), 1);
    assert_eq!(spend[0].requests, 1, "three attempts, one answered request");
    assert_eq!(spend[0].input_tokens, 11);
}

// ------------------------------------------------------------------ context_window_fallbacks
//
// A model with a context window, answering as OpenAI does when a prompt does not fit:
// 400 `invalid_request_error`, code `context_length_exceeded`, "This model's maximum
// context length is N tokens. However, your messages resulted in M tokens. …"
// (platform.openai.com/docs/guides/error-codes). Anthropic's wording is handled too:
// "prompt is too long: M tokens > N maximum". Tokens are estimated as characters / 4.

struct Windowed {
    name: &'static str,
    window: usize,
    anthropic_wording: bool,
    /// Refuse prompts containing "forbidden" as Azure OpenAI's content filter does.
    refuses: bool,
    calls: std::sync::atomic::AtomicUsize,
}

async fn windowed(
    axum::extract::State(w): axum::extract::State<std::sync::Arc<Windowed>>,
    axum::Json(b): axum::Json<serde_json::Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    w.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let tokens = b["messages"].to_string().len() / 4;
    if w.refuses && b["messages"].to_string().contains("forbidden") {
        // Azure OpenAI's content-filter refusal (learn.microsoft.com, "Content
        // filtering": HTTP 400, code `content_filter`, inner `ResponsibleAIPolicyViolation`).
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.",
                "type": null, "param": "prompt", "code": "content_filter", "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {"hate": {"filtered": true, "severity": "high"}}}}})),
        )
            .into_response();
    }
    if tokens > w.window {
        let message = if w.anthropic_wording {
            format!("prompt is too long: {tokens} tokens > {} maximum", w.window)
        } else {
            format!(
                "This model's maximum context length is {} tokens. However, your messages resulted in {tokens} tokens. Please reduce the length of the messages.",
                w.window
            )
        };
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": {"message": message, "type": "invalid_request_error",
                "param": "messages", "code": "context_length_exceeded"}}),
            ),
        )
            .into_response();
    }
    axum::Json(
        json!({"id": "chatcmpl-w", "object": "chat.completion", "created": 1,
        "model": b["model"], "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": format!("from {}", w.name)}}],
        "usage": {"prompt_tokens": tokens, "completion_tokens": 2, "total_tokens": tokens + 2}}),
    )
    .into_response()
}

async fn windowed_model(
    name: &'static str,
    window: usize,
    anthropic_wording: bool,
) -> (String, std::sync::Arc<Windowed>) {
    let w = std::sync::Arc::new(Windowed {
        name,
        window,
        anthropic_wording,
        refuses: name.starts_with("strict"),
        calls: Default::default(),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(windowed))
        .with_state(w.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/v1"), w)
}

fn calls(w: &Windowed) -> usize {
    w.calls.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn context_window_fallbacks_take_a_prompt_that_does_not_fit() {
    let (small, s) = windowed_model("small", 50, false).await;
    let (medium, m) = windowed_model("medium", 500, true).await;
    let (large, l) = windowed_model("large", 100_000, false).await;
    let (other, o) = windowed_model("other", 100_000, false).await;
    let yaml = format!(
        r#"
model_list:
  - model_name: small
    litellm_params: {{model: openai/gpt-4o, api_base: '{small}', api_key: k}}
  - model_name: medium
    litellm_params: {{model: openai/gpt-4o, api_base: '{medium}', api_key: k}}
  - model_name: large
    litellm_params: {{model: openai/gpt-4o, api_base: '{large}', api_key: k}}
  - model_name: other
    litellm_params: {{model: openai/gpt-4o, api_base: '{other}', api_key: k}}
litellm_settings:
  num_retries: 2
  fallbacks: [{{small: [other]}}]
  context_window_fallbacks: [{{small: [medium, large]}}]
"#
    );
    let gw = start_gateway(&yaml, gateway::store::Store::Memory).await;
    assert!(
        !gw.gw
            .warnings()
            .iter()
            .any(|w| w.contains("context_window")),
        "{:?}",
        gw.gw.warnings()
    );
    let url = format!("{}/v1/chat/completions", gw.base);
    let ask =
        |text: String| json!({"model": "small", "messages": [{"role": "user", "content": text}]});

    // Fits: the model asked for answers.
    let (st, b) = post(&url, "x", &ask("hi".into())).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(json(&b)["choices"][0]["message"]["content"], "from small");

    // Too long for small (not retried: the same prompt cannot fit), and for medium
    // (Anthropic's wording), fits large. The ordinary fallback is not used.
    let (st, b) = post(&url, "x", &ask("word ".repeat(1000))).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(json(&b)["choices"][0]["message"]["content"], "from large");
    assert_eq!((calls(&s), calls(&m), calls(&l), calls(&o)), (2, 1, 1, 0));

    // Too long for every model: the provider's 400 comes back, in the caller's format.
    let (st, b) = post(&url, "x", &ask("word ".repeat(200_000))).await;
    assert_eq!(st, 400, "{b}");
    assert!(
        json(&b)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length"),
        "{b}"
    );
}

#[tokio::test]
async fn context_window_error_without_its_own_fallbacks_uses_the_ordinary_ones() {
    // LiteLLM: "No context_window_fallback set. Defaulting to fallbacks, if available."
    let (small, s) = windowed_model("small", 50, false).await;
    let (other, o) = windowed_model("other", 100_000, false).await;
    let yaml = format!(
        r#"
model_list:
  - model_name: small
    litellm_params: {{model: openai/gpt-4o, api_base: '{small}', api_key: k}}
  - model_name: other
    litellm_params: {{model: openai/gpt-4o, api_base: '{other}', api_key: k}}
router_settings:
  fallbacks: [{{small: [other]}}]
"#
    );
    let gw = start_gateway(&yaml, gateway::store::Store::Memory).await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let body =
        json!({"model": "small", "messages": [{"role": "user", "content": "word ".repeat(1000)}]});
    let (st, b) = post(&url, "x", &body).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(json(&b)["choices"][0]["message"]["content"], "from other");
    assert_eq!((calls(&s), calls(&o)), (1, 1));
}

#[tokio::test]
async fn request_body_fallbacks_replace_the_configs() {
    // LiteLLM's router reads `fallbacks` from the call before its own settings
    // (`kwargs.get("fallbacks", self.fallbacks)`), in either shape.
    let oa = fake_openai().await;
    let (cfg, c) = windowed_model("cfgbackup", 100_000, false).await;
    let (req, r) = windowed_model("reqbackup", 100_000, false).await;
    let yaml = format!(
        r#"
model_list:
  - model_name: primary
    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1', api_key: k}}
  - model_name: cfgbackup
    litellm_params: {{model: openai/gpt-4o, api_base: '{cfg}', api_key: k}}
  - model_name: reqbackup
    litellm_params: {{model: openai/gpt-4o, api_base: '{req}', api_key: k}}
litellm_settings:
  num_retries: 0
  fallbacks: [{{primary: [cfgbackup]}}]
"#,
        oa.base()
    );
    let gw = start_gateway(&yaml, gateway::store::Store::Memory).await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let with = |f: serde_json::Value| {
        let mut b = chat("primary");
        b["fallbacks"] = f;
        b
    };
    for (i, f) in [
        json!(["reqbackup"]),
        json!([{"model": "reqbackup"}]),
        json!([{"other": ["cfgbackup"]}, {"primary": ["reqbackup"]}]),
        json!([{"*": ["reqbackup"]}]),
    ]
    .into_iter()
    .enumerate()
    {
        oa.push(Behavior::Status(500, None));
        let (st, b) = post(&url, "x", &with(f.clone())).await;
        assert_eq!(st, 200, "{f}: {b}");
        assert_eq!(
            json(&b)["choices"][0]["message"]["content"],
            "from reqbackup",
            "{f}"
        );
        assert_eq!((calls(&r), calls(&c)), (i + 1, 0), "{f}");
        assert!(
            oa.last_body().get("fallbacks").is_none(),
            "stripped upstream"
        );
    }
    // Without its own list, the config's applies.
    oa.push(Behavior::Status(500, None));
    let (st, b) = post(&url, "x", &chat("primary")).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        json(&b)["choices"][0]["message"]["content"],
        "from cfgbackup"
    );
    // An empty list means no fallback for this call.
    oa.push(Behavior::Status(500, None));
    let (st, _) = post(&url, "x", &with(json!([]))).await;
    assert_eq!(st, 500);
    // A shape the gateway cannot honour is a clear 400, before any upstream call.
    let before = oa.count();
    let (st, b) = post(
        &url,
        "x",
        &with(json!([{"model": "reqbackup", "temperature": 0}])),
    )
    .await;
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("not `temperature`"), "{b}");
    assert_eq!(oa.count(), before);
}

#[tokio::test]
async fn request_body_context_window_fallbacks_take_a_long_prompt() {
    let (small, s) = windowed_model("small", 50, false).await;
    let (large, l) = windowed_model("large", 100_000, false).await;
    let yaml = format!(
        r#"
model_list:
  - model_name: small
    litellm_params: {{model: openai/gpt-4o, api_base: '{small}', api_key: k}}
  - model_name: large
    litellm_params: {{model: openai/gpt-4o, api_base: '{large}', api_key: k}}
"#
    );
    let gw = start_gateway(&yaml, gateway::store::Store::Memory).await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let body = json!({"model": "small", "context_window_fallbacks": [{"small": ["large"]}],
        "messages": [{"role": "user", "content": "word ".repeat(1000)}]});
    let (st, b) = post(&url, "x", &body).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(json(&b)["choices"][0]["message"]["content"], "from large");
    assert_eq!((calls(&s), calls(&l)), (1, 1));
}

#[tokio::test]
async fn content_policy_fallbacks_take_a_refused_prompt() {
    // LiteLLM maps Azure's content-filter 400 to ContentPolicyViolationError and
    // sends it to `content_policy_fallbacks`, not the ordinary fallbacks.
    let (strict, s) = windowed_model("strict", 100_000, false).await;
    let (lenient, l) = windowed_model("lenient", 100_000, false).await;
    let (other, o) = windowed_model("other", 100_000, false).await;
    let yaml = format!(
        r#"
model_list:
  - model_name: strict
    litellm_params: {{model: openai/gpt-4o, api_base: '{strict}', api_key: k}}
  - model_name: lenient
    litellm_params: {{model: openai/gpt-4o, api_base: '{lenient}', api_key: k}}
  - model_name: other
    litellm_params: {{model: openai/gpt-4o, api_base: '{other}', api_key: k}}
litellm_settings:
  num_retries: 2
  content_policy_fallbacks: [{{strict: [lenient]}}]
router_settings:
  fallbacks: [{{strict: [other]}}]
"#
    );
    let gw = start_gateway(&yaml, gateway::store::Store::Memory).await;
    assert!(
        !gw.gw
            .warnings()
            .iter()
            .any(|w| w.contains("content_policy")),
        "{:?}",
        gw.gw.warnings()
    );
    let url = format!("{}/v1/chat/completions", gw.base);
    let ask =
        |text: &str| json!({"model": "strict", "messages": [{"role": "user", "content": text}]});
    let (st, b) = post(&url, "x", &ask("hello")).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(json(&b)["choices"][0]["message"]["content"], "from strict");
    // Refused: not retried (the same prompt is refused again), the policy list answers.
    let (st, b) = post(&url, "x", &ask("something forbidden")).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(json(&b)["choices"][0]["message"]["content"], "from lenient");
    assert_eq!((calls(&s), calls(&l), calls(&o)), (2, 1, 0));
    // The request's own list replaces the config's.
    let mut body = ask("something forbidden");
    body["content_policy_fallbacks"] = json!(["other"]);
    let (st, b) = post(&url, "x", &body).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(json(&b)["choices"][0]["message"]["content"], "from other");
    assert_eq!((calls(&s), calls(&l), calls(&o)), (3, 1, 1));
}

// ------------------------------------------------------------------ max_fallbacks

/// Groups `a`, `x`, `b`, `c`, each on its own fake, with fallbacks `a → [x, b]`,
/// `b → [a, c]`; `extra` goes under `router_settings`. `a`, `x` and `b` fail with a
/// 500 (retryable); `c` answers. Returns (status, calls to a, x, b, c).
async fn fallback_chain(extra: &str, env: &[(&str, &str)]) -> (u16, [usize; 4]) {
    let fakes = [
        fake_openai().await,
        fake_openai().await,
        fake_openai().await,
        fake_openai().await,
    ];
    let mut cfg = String::from("model_list:\n");
    for (name, f) in ["a", "x", "b", "c"].iter().zip(&fakes) {
        cfg.push_str(&format!(
            "  - model_name: {name}\n    litellm_params: {{model: openai/gpt-4o, api_base: '{}/v1'}}\n",
            f.base()
        ));
    }
    cfg.push_str(&format!(
        "router_settings:\n  num_retries: 0\n  fallbacks: [{{a: [x, b]}}, {{b: [a, c]}}]\n{extra}"
    ));
    let env: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cfg = gateway::config::Config::from_yaml_str_with_env(
        &cfg,
        std::path::Path::new("."),
        &|k: &str| env.get(k).cloned(),
    )
    .unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let gw = start_gateway_with_config(cfg, gateway::store::Store::Memory).await;
    for f in &fakes[..3] {
        f.push(Behavior::Status(500, None));
    }
    let (s, _) = post(&format!("{}/v1/chat/completions", gw.base), "x", &chat("a")).await;
    (s, [0, 1, 2, 3].map(|i| fakes[i].count()))
}

#[tokio::test]
async fn fallbacks_of_fallbacks_are_followed_up_to_max_fallbacks() {
    // LiteLLM's walk (`run_async_fallback`): a fails; its list is walked, x at depth 1,
    // b at depth 2; b fails and its own list is walked while 2 < max_fallbacks: a is
    // skipped (already tried in this request), c answers.
    assert_eq!(
        fallback_chain("", &[]).await,
        (200, [1, 1, 1, 1]),
        "default 5"
    );
    assert_eq!(
        fallback_chain("  max_fallbacks: 3\n", &[]).await,
        (200, [1, 1, 1, 1])
    );
    // max_fallbacks: 2: b was reached at depth 2, so its fallbacks are not walked.
    assert_eq!(
        fallback_chain("  max_fallbacks: 2\n", &[]).await,
        (500, [1, 1, 1, 0])
    );
    // The first list is always walked whole once fallbacks are on at all.
    assert_eq!(
        fallback_chain("  max_fallbacks: 1\n", &[]).await,
        (500, [1, 1, 1, 0])
    );
    // 0: no fallbacks.
    assert_eq!(
        fallback_chain("  max_fallbacks: 0\n", &[]).await,
        (500, [1, 0, 0, 0])
    );
    // Router(max_fallbacks) > litellm.max_fallbacks > ROUTER_MAX_FALLBACKS.
    assert_eq!(
        fallback_chain("litellm_settings: {max_fallbacks: 0}\n", &[]).await,
        (500, [1, 0, 0, 0])
    );
    assert_eq!(
        fallback_chain("", &[("ROUTER_MAX_FALLBACKS", "2")]).await,
        (500, [1, 1, 1, 0])
    );
    assert_eq!(
        fallback_chain(
            "  max_fallbacks: 4\nlitellm_settings: {max_fallbacks: 0}\n",
            &[("ROUTER_MAX_FALLBACKS", "0")]
        )
        .await,
        (200, [1, 1, 1, 1])
    );
}
