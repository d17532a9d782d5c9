//! Smoke tests against the real OpenAI / Anthropic APIs. They run only when
//! OPENAI_API_KEY / ANTHROPIC_API_KEY are set (never in CI without keys).

mod common;
use common::*;
use serde_json::json;

async fn smoke(provider_model: &str, key_env: &str) {
    let Ok(_) = std::env::var(key_env) else {
        eprintln!("skipping: {key_env} not set");
        return;
    };
    let gw = start_gateway(
        &format!("model_list:\n  - model_name: real\n    litellm_params: {{model: {provider_model}, api_key: os.environ/{key_env}}}\n"),
        gateway::store::Store::Memory,
    )
    .await;
    let body = json!({"model": "real", "max_tokens": 20, "messages": [{"role": "user", "content": "Say OK."}]});
    let (s, b) = post(&format!("{}/v1/chat/completions", gw.base), "x", &body).await;
    assert_eq!(s, 200, "{b}");
    let r = client()
        .post(format!("{}/v1/messages", gw.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn real_openai() {
    smoke("openai/gpt-4o-mini", "OPENAI_API_KEY").await;
}

#[tokio::test]
async fn real_anthropic() {
    smoke("anthropic/claude-3-5-haiku-latest", "ANTHROPIC_API_KEY").await;
}
