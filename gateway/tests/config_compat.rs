//! Real-world LiteLLM configs (tests/configs/) load unchanged: unknown keys
//! are warnings, unsupported providers are skipped with a warning, wrong
//! types are errors naming the key.

mod common;
use common::*;
use gateway::config::{Config, ProviderKind, RoutingStrategy};
use std::path::Path;
use std::time::Duration;

fn load(name: &str) -> Config {
    Config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/configs")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn warned(c: &Config, needle: &str) -> bool {
    c.warnings.iter().any(|w| w.contains(needle))
}

#[tokio::test]
async fn litellm_docs_example_loads() {
    let c = load("litellm_docs_example.yaml");
    // All five deployments load, azure included.
    assert_eq!(c.model_list.len(), 5);
    assert_eq!(c.model_list[0].provider, ProviderKind::Azure);
    assert_eq!(c.model_list[0].api_version.as_deref(), Some("2023-05-15"));
    assert!(c.drop_params);
    for k in [
        "success_callback",
        "cache",
        "redis_host",
        "alerting",
        "proxy_batch_write_at",
        "max_tokens",
    ] {
        assert!(warned(&c, k), "no warning for {k}: {:?}", c.warnings);
    }
    // context_window_fallbacks is honoured, not warned about.
    assert!(!warned(&c, "context_window_fallbacks"), "{:?}", c.warnings);
    assert_eq!(
        c.context_window_fallbacks["gpt-3.5-turbo"],
        vec!["claude-3-5-sonnet".to_owned()]
    );
    assert!(warned(&c, "usage-based-routing-v2"));
    assert_eq!(c.routing_strategy, RoutingStrategy::SimpleShuffle);
    assert_eq!(c.num_retries, 3);
    assert_eq!(c.request_timeout, Duration::from_secs(10));
    assert_eq!(
        c.fallbacks["gpt-3.5-turbo"],
        vec!["claude-3-5-sonnet".to_owned()]
    );
    assert_eq!(c.master_key.as_ref().unwrap().expose(), "sk-1234");
    assert_eq!(
        c.database_url.as_deref(),
        Some("postgresql://user:pass@localhost:5432/litellm")
    );
    let llama = c
        .model_list
        .iter()
        .find(|m| m.model_name == "llama3")
        .unwrap();
    assert_eq!(llama.api_base.as_deref(), Some("http://localhost:11434/v1"));
    let vllm = c
        .model_list
        .iter()
        .find(|m| m.model_name == "vllm-model")
        .unwrap();
    assert_eq!(vllm.model, "facebook/opt-125m");
    assert_eq!(vllm.provider, ProviderKind::OpenAi);
    assert_eq!(vllm.input_cost_per_token, Some(1e-7));
    assert_eq!(c.model_list[1].rpm, Some(1440));
    // Builds into a gateway (no network used).
    gateway::Gateway::from_config(c, gateway::store::Store::Memory)
        .await
        .unwrap();
}

#[tokio::test]
async fn wildcards_and_compatible_providers_load_and_route() {
    // SAFETY: test-only env var with a unique name.
    unsafe { std::env::set_var("GW_COMPAT_MASTER_KEY", "sk-compat") };
    let c = load("wildcards_and_compatible.yaml");
    assert!(c.warnings.iter().any(|w| w.contains("allowed_fails")));
    assert_eq!(c.routing_strategy, RoutingStrategy::LatencyBased);
    assert_eq!(c.num_retries, 2);
    assert_eq!(c.cooldown_time, Duration::from_secs(10));
    let groq = c
        .model_list
        .iter()
        .find(|m| m.model == "llama-3.1-70b-versatile")
        .unwrap();
    assert_eq!(
        groq.api_base.as_deref(),
        Some("https://api.groq.com/openai/v1")
    );
    assert_eq!((groq.rpm, groq.tpm), (Some(30), Some(100000)));
    assert_eq!(c.master_key.as_ref().unwrap().expose(), "sk-compat");
    gateway::Gateway::from_config(c, gateway::store::Store::Memory)
        .await
        .unwrap();

    // Wildcard routing against local fakes.
    let oa = fake_openai().await;
    let an = fake_anthropic().await;
    let gw = start_gateway(
        &format!(
            "model_list:\n  - model_name: 'anthropic/*'\n    litellm_params: {{model: 'anthropic/*', api_base: '{}'}}\n  - model_name: '*'\n    litellm_params: {{model: 'openai/*', api_base: '{}/v1'}}\n",
            an.base(),
            oa.base()
        ),
        gateway::store::Store::Memory,
    )
    .await;
    let body = serde_json::json!({"model": "anthropic/claude-3-haiku-20240307", "messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(&format!("{}/v1/chat/completions", gw.base), "x", &body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(an.last_body()["model"], "claude-3-haiku-20240307");
    let body = serde_json::json!({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]});
    let (s, _) = post(&format!("{}/v1/chat/completions", gw.base), "x", &body).await;
    assert_eq!(s, 200);
    assert_eq!(oa.last_body()["model"], "gpt-4.1-mini");
}

#[tokio::test]
async fn least_busy_config_loads() {
    let c = load("least_busy_load_balanced.yaml");
    assert_eq!(c.routing_strategy, RoutingStrategy::LeastBusy);
    assert_eq!(c.model_list.len(), 3);
    assert_eq!(c.model_list[0].stream_timeout, Some(Duration::from_secs(5)));
    assert_eq!(
        c.model_list[1].extra_headers,
        vec![("X-Org".to_owned(), "airlock".to_owned())]
    );
    assert_eq!(c.model_list[2].provider, ProviderKind::Anthropic);
    assert_eq!(c.fallbacks["gpt-4o"], vec!["claude-sonnet-4".to_owned()]);
    gateway::Gateway::from_config(c, gateway::store::Store::Memory)
        .await
        .unwrap();
}

#[test]
fn wrong_types_and_missing_env_are_clear_errors() {
    let check = |yaml: &str, needle: &str| {
        let e = Config::from_yaml_str(yaml, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "`{e}` should mention `{needle}`");
    };
    check(
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, timeout: fast}\n",
        "model_list[0].litellm_params.timeout",
    );
    check(
        "model_list:\n  - model_name: a\n    litellm_params: [1]\n",
        "model_list[0].litellm_params",
    );
    check(
        "model_list:\n  - litellm_params: {model: openai/a}\n",
        "model_list[0].model_name",
    );
    check(
        "router_settings: {routing_strategy: 3}\n",
        "router_settings.routing_strategy",
    );
    check(
        "litellm_settings: {fallbacks: 3}\n",
        "litellm_settings.fallbacks",
    );
    check(
        "general_settings: {master_key: os.environ/GW_SURELY_UNSET_VAR}\n",
        "GW_SURELY_UNSET_VAR",
    );
    check("model_list: [\n", "YAML");
}
