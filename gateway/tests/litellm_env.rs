//! A LiteLLM user's config and environment, unchanged: provider keys and
//! bases from the usual env vars, LITELLM_MASTER_KEY / DATABASE_URL, bare
//! model names, `include`, Azure deployments.

mod common;
mod fakes;

use fakes::*;
use gateway::config::ProviderKind;
use serde_json::json;

#[tokio::test]
async fn env_only_config_serves_every_provider_with_env_keys() {
    let oa = common::fake_openai().await;
    let an = common::fake_anthropic().await;
    let (az, az_state) = azure::start("az-secret", &["my-gpt4o-deployment"]).await;
    // gemini-pro infers vertex_ai, which needs a service account.
    let (sa, _) =
        google::service_account("http://127.0.0.1:9/token", "sa@p.iam.gserviceaccount.com");
    let dir = tempfile::tempdir().unwrap();
    let sa_path = dir.path().join("sa.json");
    std::fs::write(&sa_path, sa).unwrap();
    let env = env(&[
        ("GOOGLE_APPLICATION_CREDENTIALS", sa_path.to_str().unwrap()),
        ("OPENAI_API_KEY", "sk-env-openai"),
        ("OPENAI_API_BASE", &format!("{}/v1", oa.base())),
        ("ANTHROPIC_API_KEY", "sk-ant-env"),
        ("ANTHROPIC_API_BASE", &an.base()),
        ("AZURE_API_KEY", "az-secret"),
        ("AZURE_API_BASE", &az),
        ("AZURE_API_VERSION", "2024-10-21"),
        ("COHERE_API_KEY", "co-env"),
        ("LITELLM_MASTER_KEY", "sk-master-from-env"),
        ("DATABASE_URL", "postgresql://u:p@db:5432/litellm"),
    ]);
    let cfg = load_with_env(&fixture("env_only.yaml"), &env);
    assert_eq!(
        cfg.master_key.as_ref().unwrap().expose(),
        "sk-master-from-env"
    );
    assert_eq!(
        cfg.database_url.as_deref(),
        Some("postgresql://u:p@db:5432/litellm")
    );
    // include: the included file's model and settings are merged in.
    let names: Vec<&str> = cfg
        .model_list
        .iter()
        .map(|m| m.model_name.as_str())
        .collect();
    assert!(names.contains(&"gpt-4o-mini"), "{names:?}");
    assert_eq!(cfg.num_retries, 1);
    assert_eq!(cfg.default_fallbacks, vec!["claude".to_owned()]);
    assert!(cfg.drop_params);
    // Bare names: inferred, or skipped with a warning (never a failed load).
    let by = |n: &str| cfg.model_list.iter().find(|m| m.model_name == n).unwrap();
    assert_eq!(by("whisper").provider, ProviderKind::OpenAi);
    assert_eq!(by("whisper").provider_name, "openai");
    assert_eq!(by("legacy-gemini").provider, ProviderKind::VertexAi);
    assert_eq!(by("command-r").provider_name, "cohere_chat");
    assert_eq!(
        by("command-r").api_base.as_deref(),
        Some("https://api.cohere.ai/compatibility/v1")
    );
    assert_eq!(by("command-r").api_key.as_ref().unwrap().expose(), "co-env");
    assert_eq!(by("gpt-4o-mini").provider_name, "openai");
    assert!(!names.contains(&"mystery"));
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("mystery-model-9000") && w.contains("skipped")),
        "{:?}",
        cfg.warnings
    );
    assert_eq!(
        by("azure-gpt").model_info.as_ref().unwrap()["id"],
        "azure-1"
    );
    assert_eq!(by("gpt-4o").max_retries, Some(2));
    let gw = serve_config(cfg).await;

    // The master key from LITELLM_MASTER_KEY is enforced.
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let (s, _) = post(&format!("{}/v1/chat/completions", gw.base), "wrong", &body).await;
    assert_eq!(s, 401);
    let key = "sk-master-from-env";
    let (s, b) = post(&format!("{}/v1/chat/completions", gw.base), key, &body).await;
    assert_eq!(s, 200, "{b}");
    let h = oa.last_headers();
    assert_eq!(h["authorization"], "Bearer sk-env-openai");
    assert_eq!(h["openai-organization"], "org-airlock");

    let body = json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(&format!("{}/v1/chat/completions", gw.base), key, &body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(an.last_headers()["x-api-key"], "sk-ant-env");

    // Azure: deployment URL, api-version, api-key header; unstreamed and streamed.
    let body = json!({"model": "azure-gpt", "messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(&format!("{}/v1/chat/completions", gw.base), key, &body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "Hello from azure");
    let body = json!({"model": "azure-gpt", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (s, t) = post_text(&format!("{}/v1/chat/completions", gw.base), key, &body).await;
    assert_eq!(s, 200, "{t}");
    assert!(
        t.contains("Hello from azure") && t.ends_with("data: [DONE]\n\n"),
        "{t}"
    );
    // Anthropic client to an Azure deployment: translated.
    let body = json!({"model": "azure-gpt", "max_tokens": 50,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(&format!("{}/v1/messages", gw.base), key, &body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["content"][0]["text"], "Hello from azure");
    // model_info is exposed.
    let r = client()
        .get(format!("{}/model/info", gw.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let info: serde_json::Value = r.json().await.unwrap();
    let az_info = info["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["model_name"] == "azure-gpt")
        .unwrap();
    assert_eq!(az_info["model_info"]["base_model"], "azure/gpt-4o");
    assert_eq!(
        az_info["litellm_params"]["model"],
        "azure/my-gpt4o-deployment"
    );
    assert!(!info.to_string().contains("az-secret"));
    // max_retries: 2 on gpt-4o retries that deployment itself; then
    // default_fallbacks sends the request to `claude`.
    let before = oa.count();
    // Router num_retries: 1 (from the include) x (1 call + max_retries: 2) = 6 calls.
    for _ in 0..6 {
        oa.push(common::Behavior::Status(500, None));
    }
    let n_an = an.count();
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(&format!("{}/v1/chat/completions", gw.base), key, &body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        oa.count() - before,
        6,
        "2 router attempts x (1 + max_retries)"
    );
    assert_eq!(an.count(), n_an + 1, "default_fallbacks reached claude");
    let seen = az_state.seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|(d, v, _)| d == "my-gpt4o-deployment" && v == "2024-10-21")
    );
}

#[tokio::test]
async fn azure_wrong_key_is_the_providers_401() {
    let (az, _) = azure::start("right", &["dep"]).await;
    let cfg = yaml_with_env(
        &format!(
            "model_list:\n  - model_name: a\n    litellm_params: {{model: azure/dep, api_base: '{az}', api_key: wrong}}\n"
        ),
        &env(&[]),
    );
    let gw = serve_config(cfg).await;
    let body = json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(&format!("{}/v1/chat/completions", gw.base), "x", &body).await;
    assert_eq!(s, 401, "{b}");
    assert!(b.to_string().contains("Access denied"), "{b}");
}

#[test]
fn general_settings_win_over_env_and_unset_env_ref_fails_closed() {
    let e = env(&[
        ("LITELLM_MASTER_KEY", "from-env"),
        ("DATABASE_URL", "sqlite://x.db"),
    ]);
    let c = yaml_with_env(
        "general_settings: {master_key: sk-file, database_url: 'sqlite://file.db'}\n",
        &e,
    );
    assert_eq!(c.master_key.as_ref().unwrap().expose(), "sk-file");
    assert_eq!(c.database_url.as_deref(), Some("sqlite://file.db"));
    let r = gateway::config::Config::from_yaml_str_with_env(
        "general_settings: {master_key: os.environ/MY_KEY}\n",
        std::path::Path::new("."),
        &|_| None,
    );
    assert!(r.unwrap_err().to_string().contains("MY_KEY"));
    // No key anywhere: open (LiteLLM's behaviour), but only then.
    let c = yaml_with_env("model_list: []\n", &env(&[]));
    assert!(c.master_key.is_none());
}

#[tokio::test]
async fn litellm_only_fields_stripped_and_reasoning_models_get_max_completion_tokens() {
    let oa = common::fake_openai().await;
    let cfg = yaml_with_env(
        &format!(
            "model_list:\n  - model_name: o3\n    litellm_params: {{model: openai/o3, api_base: '{0}/v1', api_key: k}}\n  - model_name: gpt-4o\n    litellm_params: {{model: openai/gpt-4o, api_base: '{0}/v1', api_key: k}}\n",
            oa.base()
        ),
        &env(&[]),
    );
    let gw = serve_config(cfg).await;
    // OpenAI client, pass-through: LiteLLM's router fields never reach OpenAI.
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
        "fallbacks": ["o3"], "num_retries": 2, "mock_testing_fallbacks": false,
        "metadata": {"generation_name": "x"}, "temperature": 0.5});
    let (s, b) = post(&format!("{}/v1/chat/completions", gw.base), "x", &body).await;
    assert_eq!(s, 200, "{b}");
    let sent = oa.last_body();
    for k in [
        "fallbacks",
        "num_retries",
        "mock_testing_fallbacks",
        "metadata",
    ] {
        assert!(sent.get(k).is_none(), "{k} reached the upstream: {sent}");
    }
    assert_eq!(sent["temperature"], 0.5);
    // Anthropic client to a reasoning model: max_tokens becomes max_completion_tokens.
    let body =
        json!({"model": "o3", "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]});
    let (s, b) = post(&format!("{}/v1/messages", gw.base), "x", &body).await;
    assert_eq!(s, 200, "{b}");
    let sent = oa.last_body();
    assert_eq!(sent["max_completion_tokens"], 300, "{sent}");
    assert!(sent.get("max_tokens").is_none());
    let body = json!({"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]});
    let (s, _) = post(&format!("{}/v1/messages", gw.base), "x", &body).await;
    assert_eq!(s, 200);
    assert_eq!(oa.last_body()["max_tokens"], 300);
}

#[tokio::test]
async fn azure_deployment_is_priced_by_its_model_info_base_model() {
    // LiteLLM's docs for Azure cost tracking: a deployment's own name is not a model
    // in the price table, so `model_info.base_model` names the model it runs.
    let (az, _) = azure::start("k", &["prod-4o", "mystery-deploy"]).await;
    let cfg = yaml_with_env(
        &format!(
            r#"
model_list:
  - model_name: priced
    litellm_params: {{model: azure/prod-4o, api_base: '{az}', api_key: k, api_version: '2024-10-21'}}
    model_info: {{base_model: azure/gpt-4o}}
  - model_name: unpriced
    litellm_params: {{model: azure/mystery-deploy, api_base: '{az}', api_key: k, api_version: '2024-10-21'}}
"#
        ),
        &env(&[]),
    );
    let gw = serve_config(cfg).await;
    let w = gw.gw.warnings();
    assert!(!w.iter().any(|w| w.contains("prod-4o")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("mystery-deploy")), "{w:?}");
    let r = client()
        .post(format!("{}/v1/chat/completions", gw.base))
        .json(&json!({"model": "priced", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cost: f64 = r.headers()["x-litellm-response-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The fake answers 9 prompt and 3 completion tokens.
    let p = gateway::pricing::table()
        .find(Some("azure"), "gpt-4o")
        .unwrap();
    let want = 9.0 * p.input + 3.0 * p.output;
    assert!(
        want > 0.0 && (cost - want).abs() < 1e-12,
        "{cost} vs {want}"
    );
}
