//! `bedrock/` deployments: Converse and ConverseStream, SigV4-signed with
//! credentials from the environment, against a fake that verifies the
//! signature with the real secret.

mod fakes;

use fakes::*;
use serde_json::json;

const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

#[tokio::test]
async fn bedrock_converse_signed_with_env_credentials() {
    let (base, st) = bedrock::start(KEY_ID, SECRET, "eu-central-1").await;
    let cfg = yaml_with_env(
        &format!(
            "model_list:\n  - model_name: haiku\n    litellm_params: {{model: bedrock/anthropic.claude-3-haiku-20240307-v1:0, api_base: '{base}'}}\n  - model_name: wrong-secret\n    litellm_params: {{model: bedrock/anthropic.claude-3-haiku-20240307-v1:0, api_base: '{base}', aws_secret_access_key: nope}}\n"
        ),
        &env(&[
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_REGION_NAME", "eu-central-1"),
        ]),
    );
    let gw = serve_config(cfg).await;
    let url = format!("{}/v1/chat/completions", gw.base);
    let (s, b) = post(
        &url,
        "x",
        &json!({"model": "haiku", "max_tokens": 64,
        "messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "Hello from bedrock");
    assert_eq!(b["usage"]["prompt_tokens"], 15);
    {
        let seen = st.seen.lock().unwrap();
        let (path, body) = seen.last().unwrap();
        // The model id's ':' goes encoded, and is signed double-encoded.
        assert_eq!(
            path,
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        assert_eq!(body["system"][0]["text"], "terse");
        assert_eq!(body["inferenceConfig"]["maxTokens"], 64);
    }
    // Tools, unstreamed: toolUse -> tool_calls; the result goes back as toolResult.
    let tools = json!([{"type": "function", "function": {"name": "bash", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}]);
    let (s, b) = post(
        &url,
        "x",
        &json!({"model": "haiku", "tools": tools,
        "messages": [{"role": "user", "content": "list"}]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let call = b["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["id"], "tooluse_abc123");
    assert_eq!(call["function"]["name"], "bash");
    assert_eq!(b["choices"][0]["finish_reason"], "tool_calls");
    let (s, b) = post(
        &url,
        "x",
        &json!({"model": "haiku", "tools": tools, "messages": [
        {"role": "user", "content": "list"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "tooluse_abc123", "content": "a.txt"}]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "Hello from bedrock");
    {
        let seen = st.seen.lock().unwrap();
        let msgs = &seen.last().unwrap().1["messages"];
        assert_eq!(
            msgs[1]["content"][0]["toolUse"]["toolUseId"],
            "tooluse_abc123"
        );
        assert_eq!(
            msgs[2]["content"][0]["toolResult"]["content"][0]["text"],
            "a.txt"
        );
    }
    // ConverseStream (binary event-stream) to an OpenAI client, text and tools.
    let (s, t) = post_text(&url, "x", &json!({"model": "haiku", "stream": true,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(s, 200, "{t}");
    assert!(
        t.contains("\"Hello\"")
            && t.contains("\" from bedrock\"")
            && t.contains("\"prompt_tokens\":15"),
        "{t}"
    );
    assert!(t.ends_with("data: [DONE]\n\n"));
    let (s, t) = post_text(
        &url,
        "x",
        &json!({"model": "haiku", "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "list"}]}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        t.contains("tooluse_abc123")
            && t.contains("\\\"ls -la\\\"")
            && t.contains("\"finish_reason\":\"tool_calls\""),
        "{t}"
    );
    // ... and to an Anthropic client.
    let (s, t) = post_text(
        &format!("{}/v1/messages", gw.base),
        "x",
        &json!({"model": "haiku", "max_tokens": 20,
        "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        t.contains("event: message_start")
            && t.contains(" from bedrock")
            && t.contains("\"output_tokens\":8"),
        "{t}"
    );
    assert!(st.rejected.lock().unwrap().is_empty());
    // A wrong secret: AWS's own 403 comes back; nothing is served.
    let (s, b) = post(
        &url,
        "x",
        &json!({"model": "wrong-secret", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b.to_string()
            .contains("signature we calculated does not match"),
        "{b}"
    );
    assert_eq!(st.rejected.lock().unwrap().len(), 1);
}

#[test]
fn bedrock_without_credentials_is_skipped_not_fatal() {
    let c = yaml_with_env(
        "model_list:\n  - model_name: b\n    litellm_params: {model: bedrock/anthropic.claude-3-haiku-20240307-v1:0}\n  - model_name: o\n    litellm_params: {model: openai/gpt-4o, api_key: k}\n",
        &env(&[]),
    );
    assert_eq!(c.model_list.len(), 1);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("bedrock") && w.contains("skipped")),
        "{:?}",
        c.warnings
    );
}
