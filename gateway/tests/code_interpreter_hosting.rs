//! A gateway with no sandboxes (`code_interpreter.brain_url` unset) and a
//! hosted code tool in the request (DESIGN.md, "Contract: code interpreter
//! interception"): the tool passes through, unchanged, to a provider that hosts
//! it natively (OpenAI's Responses API, Anthropic's Messages API), and any
//! other route answers 400 with a message that says what to set, before a
//! provider is called.

mod common;
use axum::Json;
use axum::extract::State;
use common::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// OpenAI's `/v1/responses` with its hosted code interpreter: the answer as
/// the real API shapes it (openai-python `types/responses/response.py`,
/// `response_code_interpreter_tool_call.py`, `response_output_message.py`).
async fn fake_openai_responses() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    async fn handler(
        State(seen): State<Arc<Mutex<Vec<Value>>>>,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        seen.lock().unwrap().push(body.clone());
        Json(json!({
            "id": "resp_hosted1", "object": "response", "created_at": 1_760_000_000,
            "status": "completed", "model": body["model"], "error": null,
            "incomplete_details": null, "instructions": null, "metadata": {},
            "parallel_tool_calls": true, "temperature": 1.0, "top_p": 1.0,
            "tool_choice": "auto", "tools": body["tools"],
            "output": [
                {"id": "ci_hosted1", "type": "code_interpreter_call", "status": "completed",
                 "code": "print(sum(range(10)))", "container_id": "cntr_openai_hosted",
                 "outputs": [{"type": "logs", "logs": "45\n"}]},
                {"id": "msg_hosted1", "type": "message", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "45", "annotations": [], "logprobs": []}]}
            ],
            "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 19}
        }))
    }
    let app = axum::Router::new()
        .route("/v1/responses", axum::routing::post(handler))
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (base, seen)
}

async fn setup() -> (Arc<Mutex<Vec<Value>>>, Fake, Fake, TestGateway) {
    let (oa_base, oa_seen) = fake_openai_responses().await;
    let oa_chat = fake_openai().await;
    let an = fake_anthropic().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: gpt
    litellm_params: {{model: openai/gpt-4.1, api_key: sk-upstream-oa, api_base: "{oa_base}/v1"}}
  - model_name: gpt-chat
    litellm_params: {{model: openai/gpt-4.1, api_key: sk-upstream-oa, api_base: "{}/v1"}}
  - model_name: claude
    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_key: sk-ant-upstream, api_base: "{}"}}
general_settings: {{master_key: sk-master}}
"#,
        oa_chat.base(),
        an.base()
    );
    let gw = start_gateway(&yaml, gateway::store::Store::Memory).await;
    (oa_seen, oa_chat, an, gw)
}

const CI_AUTO: &str = r#"{"type": "code_interpreter", "container": {"type": "auto"}}"#;

#[tokio::test]
async fn responses_code_interpreter_passes_through_to_openai_unchanged() {
    let (seen, _, _, gw) = setup().await;
    let body = json!({"model": "gpt", "input": "what is the sum of 0..9? use python",
                      "tools": [json(CI_AUTO)]});
    let (status, text) = post(&format!("{}/v1/responses", gw.base), "sk-master", &body).await;
    assert_eq!(status, 200, "{text}");
    let v = json(&text);
    assert_eq!(v["output"][0]["type"], "code_interpreter_call", "{v}");
    assert_eq!(v["output"][0]["container_id"], "cntr_openai_hosted");
    let sent = seen.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["tools"],
        json!([json(CI_AUTO)]),
        "the tool went on as sent"
    );
    assert_eq!(sent[0]["model"], "gpt-4.1");
}

#[tokio::test]
async fn responses_code_interpreter_on_a_provider_without_it_is_a_clear_400() {
    let (_, _, an, gw) = setup().await;
    let body = json!({"model": "claude", "input": "sum 0..9", "tools": [json(CI_AUTO)]});
    let (status, text) = post(&format!("{}/v1/responses", gw.base), "sk-master", &body).await;
    assert_eq!(status, 400, "{text}");
    let v = json(&text);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("does not host the code_interpreter tool"),
        "{msg}"
    );
    assert!(msg.contains("code_interpreter.brain_url"), "{msg}");
    assert_eq!(an.count(), 0, "nothing reached the provider");
}

#[tokio::test]
async fn chat_completions_code_interpreter_without_sandboxes_is_a_clear_400() {
    let (_, oa_chat, an, gw) = setup().await;
    for model in ["gpt-chat", "claude"] {
        let body = json!({"model": model, "tools": [json(CI_AUTO)],
                          "messages": [{"role": "user", "content": "sum 0..9"}]});
        let (status, text) = post(
            &format!("{}/v1/chat/completions", gw.base),
            "sk-master",
            &body,
        )
        .await;
        assert_eq!(status, 400, "{model}: {text}");
        let msg = json(&text)["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains("code_interpreter.brain_url"), "{msg}");
    }
    assert_eq!(
        oa_chat.count() + an.count(),
        0,
        "nothing reached a provider"
    );
    // A request without the tool is served as always.
    let body = json!({"model": "gpt-chat", "messages": [{"role": "user", "content": "hi"}]});
    let (status, text) = post(
        &format!("{}/v1/chat/completions", gw.base),
        "sk-master",
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn messages_code_execution_passes_through_to_anthropic_and_is_refused_elsewhere() {
    let (_, oa_chat, an, gw) = setup().await;
    let tool = json!({"type": "code_execution_20250522", "name": "code_execution"});
    let body = json!({"model": "claude", "max_tokens": 64, "tools": [tool],
                      "messages": [{"role": "user", "content": "sum 0..9"}]});
    let (status, text) = post(&format!("{}/v1/messages", gw.base), "sk-master", &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(an.count(), 1);
    assert_eq!(
        an.last_body()["tools"],
        json!([tool]),
        "the tool went on as sent"
    );

    let body = json!({"model": "gpt-chat", "max_tokens": 64, "tools": [tool],
                      "messages": [{"role": "user", "content": "sum 0..9"}]});
    let (status, text) = post(&format!("{}/v1/messages", gw.base), "sk-master", &body).await;
    assert_eq!(status, 400, "{text}");
    let v = json(&text);
    assert_eq!(v["type"], "error", "Anthropic's error shape: {v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("code_interpreter.brain_url"), "{msg}");
    assert_eq!(oa_chat.count(), 0, "nothing reached OpenAI");
}
