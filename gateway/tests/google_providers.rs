//! `gemini/` (API key) and `vertex_ai/` (service account → JWT → OAuth token,
//! cached; Gemini and Anthropic models) against local fakes of their wire formats.

mod fakes;

use fakes::google::{self, GoogleState};
use fakes::*;
use serde_json::json;
use std::sync::atomic::Ordering;

fn tool_body(model: &str, stream: bool) -> serde_json::Value {
    json!({"model": model, "stream": stream,
           "messages": [{"role": "user", "content": "list files"}],
           "tools": [{"type": "function", "function": {"name": "bash", "description": "run",
                      "parameters": {"type": "object", "additionalProperties": false,
                                     "properties": {"command": {"type": "string"}}}}}]})
}

#[tokio::test]
async fn gemini_api_key_from_env_translates_both_ways() {
    let (base, st) = google::start(GoogleState {
        api_key: "AIza-env".into(),
        ..Default::default()
    })
    .await;
    let cfg = yaml_with_env(
        &format!(
            "model_list:\n  - model_name: flash\n    litellm_params: {{model: gemini/gemini-2.0-flash, api_base: '{base}/v1beta'}}\n  - model_name: bad-key\n    litellm_params: {{model: gemini/gemini-2.0-flash, api_base: '{base}/v1beta', api_key: nope}}\n"
        ),
        &env(&[("GEMINI_API_KEY", "AIza-env")]),
    );
    let gw = serve_config(cfg).await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let (s, b) = post(&url, "x", &json!({"model": "flash", "max_tokens": 20, "temperature": 0.2,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "Hello from gemini");
    assert_eq!(b["usage"]["prompt_tokens"], 12);
    assert_eq!(b["usage"]["completion_tokens"], 5);
    {
        let seen = st.seen.lock().unwrap();
        let (path, sent) = seen.last().unwrap();
        assert_eq!(path, "/v1beta/models/gemini-2.0-flash:generateContent");
        assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "be brief");
        assert_eq!(sent["generationConfig"]["maxOutputTokens"], 20);
        assert_eq!(sent["contents"][0]["role"], "user");
    }
    // Tools: Gemini's functionCall comes back as an OpenAI tool call; schema keys
    // Gemini rejects are stripped.
    let (s, b) = post(&url, "x", &tool_body("flash", false)).await;
    assert_eq!(s, 200, "{b}");
    let call = &b["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "bash");
    assert_eq!(b["choices"][0]["finish_reason"], "tool_calls");
    let id = call["id"].as_str().unwrap().to_owned();
    assert!(
        st.seen.lock().unwrap().last().unwrap().1["tools"][0]["functionDeclarations"][0]["parameters"]
            .get("additionalProperties")
            .is_none()
    );
    // The tool result goes back as a functionResponse naming the function.
    let mut follow = tool_body("flash", false);
    follow["messages"] = json!([
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "a.txt"}]);
    let (s, b) = post(&url, "x", &follow).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "Hello from gemini");
    {
        let seen = st.seen.lock().unwrap();
        let c = &seen.last().unwrap().1["contents"];
        assert_eq!(c[1]["role"], "model");
        assert_eq!(c[1]["parts"][0]["functionCall"]["name"], "bash");
        assert_eq!(c[2]["parts"][0]["functionResponse"]["name"], "bash");
        assert_eq!(
            c[2]["parts"][0]["functionResponse"]["response"]["content"],
            "a.txt"
        );
    }
    // Streaming (alt=sse), to an OpenAI client and to an Anthropic client.
    let (s, t) = post_text(&url, "x", &json!({"model": "flash", "stream": true,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(s, 200, "{t}");
    assert!(
        t.contains("\"Hello\"") && t.contains("\" from gemini\""),
        "{t}"
    );
    assert!(t.contains("\"prompt_tokens\":12"), "{t}");
    assert!(t.ends_with("data: [DONE]\n\n"));
    let (s, t) = post_text(&url, "x", &tool_body("flash", true)).await;
    assert_eq!(s, 200);
    assert!(
        t.contains("\"name\":\"bash\"") && t.contains("tool_calls"),
        "{t}"
    );
    let (s, t) = post_text(
        &format!("{}/v1/messages", gw.base),
        "x",
        &json!({"model": "flash",
        "max_tokens": 30, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        t.contains("event: message_start")
            && t.contains("from gemini")
            && t.contains("event: message_stop"),
        "{t}"
    );
    // The provider's own error comes back.
    let (s, b) = post(
        &url,
        "x",
        &json!({"model": "bad-key", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.to_string().contains("API key not valid"), "{b}");
}

#[tokio::test]
async fn vertex_service_account_token_is_verified_cached_and_used() {
    let email = "gw-test@sa-project.iam.gserviceaccount.com";
    let (base, st) = google::start(GoogleState {
        email: email.into(),
        ..Default::default()
    })
    .await;
    let token_uri = st.token_uri.lock().unwrap().clone();
    let (sa, public_key) = google::service_account(&token_uri, email);
    // The fake learns the public key after generation.
    let st_ptr = std::sync::Arc::as_ptr(&st) as *mut GoogleState;
    // SAFETY: no request has reached the fake yet, so nothing reads the field concurrently.
    unsafe { (*st_ptr).public_key = public_key };
    let dir = tempfile::tempdir().unwrap();
    let sa_path = dir.path().join("sa.json");
    std::fs::write(&sa_path, &sa).unwrap();
    let cfg = yaml_with_env(
        &format!(
            "model_list:\n  - model_name: vgem\n    litellm_params: {{model: vertex_ai/gemini-1.5-pro, api_base: '{base}'}}\n  - model_name: vclaude\n    litellm_params: {{model: vertex_ai/claude-sonnet-4@20250514, api_base: '{base}', vertex_location: europe-west1}}\n"
        ),
        &env(&[
            ("GOOGLE_APPLICATION_CREDENTIALS", sa_path.to_str().unwrap()),
            ("VERTEXAI_PROJECT", "env-project"),
            ("VERTEXAI_LOCATION", "us-east5"),
        ]),
    );
    let gw = serve_config(cfg).await;
    let url = format!("{}/v1/chat/completions", gw.base);
    for _ in 0..2 {
        let (s, b) = post(
            &url,
            "x",
            &json!({"model": "vgem", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["choices"][0]["message"]["content"], "Hello from gemini");
    }
    assert_eq!(st.exchanges.load(Ordering::SeqCst), 1, "token cached");
    assert_eq!(
        st.seen.lock().unwrap().last().unwrap().0,
        "/v1/projects/env-project/locations/us-east5/publishers/google/models/gemini-1.5-pro:generateContent"
    );
    let (s, t) = post_text(
        &url,
        "x",
        &json!({"model": "vgem", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(t.contains(" from gemini"), "{t}");
    // Anthropic on Vertex: rawPredict / streamRawPredict, from both client formats.
    let (s, b) = post(
        &format!("{}/v1/messages", gw.base),
        "x",
        &json!({"model": "vclaude", "max_tokens": 40,
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["content"][0]["text"], "Hello from claude on vertex");
    assert_eq!(
        st.seen.lock().unwrap().last().unwrap().0,
        "/v1/projects/env-project/locations/europe-west1/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict"
    );
    let (s, t) = post_text(&url, "x", &json!({"model": "vclaude", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(s, 200);
    assert!(
        t.contains("Hello from claude on vertex") && t.ends_with("data: [DONE]\n\n"),
        "{t}"
    );
    // One exchange per deployment (each caches its own token).
    assert_eq!(st.exchanges.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn vertex_with_a_foreign_key_is_refused_by_the_token_endpoint() {
    let email = "gw-test@sa-project.iam.gserviceaccount.com";
    let (base, st) = google::start(GoogleState {
        email: email.into(),
        ..Default::default()
    })
    .await;
    let token_uri = st.token_uri.lock().unwrap().clone();
    let (_, public_key) = google::service_account(&token_uri, email);
    let (other_sa, _) = google::service_account(&token_uri, email);
    let st_ptr = std::sync::Arc::as_ptr(&st) as *mut GoogleState;
    // SAFETY: no request has reached the fake yet.
    unsafe { (*st_ptr).public_key = public_key };
    let mut e = env(&[("VERTEXAI_PROJECT", "p")]);
    e.insert("SA_JSON".into(), other_sa);
    let cfg = yaml_with_env(
        &format!(
            "model_list:\n  - model_name: v\n    litellm_params: {{model: vertex_ai/gemini-1.5-pro, api_base: '{base}', vertex_credentials: os.environ/SA_JSON}}\n"
        ),
        &e,
    );
    let gw = serve_config(cfg).await;
    let (s, b) = post(
        &format!("{}/v1/chat/completions", gw.base),
        "x",
        &json!({"model": "v", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 401, "{b}");
    assert!(b.to_string().contains("invalid_grant"), "{b}");
    assert_eq!(st.exchanges.load(Ordering::SeqCst), 0);
}
