//! Both inbound formats against both upstream formats, streamed and not,
//! with tool calls: pass-through and translation in both directions.

mod common;
use common::*;
use serde_json::{Value, json};

fn config(oa: &Fake, an: &Fake) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt-alias
    litellm_params: {{model: openai/gpt-4o, api_key: sk-upstream-oa, api_base: "{}/v1"}}
  - model_name: claude-alias
    litellm_params: {{model: anthropic/claude-sonnet-4-5, api_key: sk-ant-upstream, api_base: "{}"}}
general_settings: {{master_key: sk-master}}
"#,
        oa.base(),
        an.base()
    )
}

fn openai_tool_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model, "stream": stream,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "List files"}
        ],
        "tools": [{"type": "function", "function": {"name": "sandbox_execute", "description": "run",
                   "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}],
        "tool_choice": "auto"
    })
}

fn anthropic_tool_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model, "max_tokens": 256, "stream": stream, "system": "You are terse.",
        "messages": [{"role": "user", "content": "List files"}],
        "tools": [{"name": "sandbox_execute", "description": "run",
                   "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]
    })
}

async fn setup() -> (Fake, Fake, TestGateway) {
    let oa = fake_openai().await;
    let an = fake_anthropic().await;
    let gw = start_gateway(&config(&oa, &an), gateway::store::Store::Memory).await;
    (oa, an, gw)
}

#[tokio::test]
async fn openai_client_to_anthropic_upstream_tool_call() {
    let (_oa, an, gw) = setup().await;
    let (s, body) = post(
        &format!("{}/v1/chat/completions", gw.base),
        "sk-master",
        &openai_tool_request("claude-alias", false),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let v = json(&body);
    // What the Anthropic upstream received.
    let up = an.last_body();
    assert_eq!(up["model"], "claude-sonnet-4-5");
    assert_eq!(up["system"], "You are terse.");
    assert_eq!(up["max_tokens"], 4096);
    assert_eq!(up["tools"][0]["input_schema"]["required"][0], "command");
    assert_eq!(up["tool_choice"]["type"], "auto");
    assert_eq!(an.last_headers()["x-api-key"], "sk-ant-upstream");
    // What the OpenAI client got.
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_fake1");
    assert_eq!(call["function"]["name"], "sandbox_execute");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["command"], "ls -la");
    assert_eq!(v["choices"][0]["message"]["content"], "Let me look.");
    assert_eq!(v["usage"]["prompt_tokens"], 13);
    assert_eq!(v["usage"]["completion_tokens"], 9);

    // Second turn: the tool result goes back as an Anthropic tool_result block.
    let mut req = openai_tool_request("claude-alias", false);
    let msgs = req["messages"].as_array_mut().unwrap();
    msgs.push(v["choices"][0]["message"].clone());
    msgs.push(json!({"role": "tool", "tool_call_id": "toolu_fake1", "content": "a.txt"}));
    let (s, body) = post(
        &format!("{}/v1/chat/completions", gw.base),
        "sk-master",
        &req,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let up = an.last_body();
    let m = up["messages"].as_array().unwrap();
    assert_eq!(m[1]["role"], "assistant");
    assert_eq!(m[1]["content"][1]["type"], "tool_use");
    assert_eq!(m[1]["content"][1]["input"]["command"], "ls -la");
    assert_eq!(m[2]["content"][0]["type"], "tool_result");
    assert_eq!(m[2]["content"][0]["tool_use_id"], "toolu_fake1");
    let v = json(&body);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from fake-anthropic"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn anthropic_client_to_openai_upstream_tool_call() {
    let (oa, _an, gw) = setup().await;
    let c = client();
    let r = c
        .post(format!("{}/v1/messages", gw.base))
        .header("x-api-key", "sk-master")
        .header("anthropic-version", "2023-06-01")
        .json(&anthropic_tool_request("gpt-alias", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let up = oa.last_body();
    assert_eq!(up["model"], "gpt-4o");
    assert_eq!(up["messages"][0]["role"], "system");
    assert_eq!(up["messages"][0]["content"], "You are terse.");
    assert_eq!(up["max_tokens"], 256);
    assert_eq!(up["tools"][0]["function"]["name"], "sandbox_execute");
    assert_eq!(oa.last_headers()["authorization"], "Bearer sk-upstream-oa");
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(v["content"][0]["id"], "call_fake1");
    assert_eq!(v["content"][0]["input"]["command"], "ls -la");
    assert_eq!(v["usage"]["input_tokens"], 11);
    assert_eq!(v["usage"]["output_tokens"], 7);

    // Tool result turn: becomes an OpenAI role=tool message.
    let mut req = anthropic_tool_request("gpt-alias", false);
    let msgs = req["messages"].as_array_mut().unwrap();
    msgs.push(json!({"role": "assistant", "content": v["content"].clone()}));
    msgs.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_fake1", "content": "a.txt"}]}));
    let r = c
        .post(format!("{}/v1/messages", gw.base))
        .header("x-api-key", "sk-master")
        .json(&req)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let up = oa.last_body();
    let m = up["messages"].as_array().unwrap();
    assert_eq!(m[2]["role"], "assistant");
    assert_eq!(m[2]["tool_calls"][0]["id"], "call_fake1");
    assert!(m[2]["tool_calls"][0]["function"]["arguments"].is_string());
    assert_eq!(m[3]["role"], "tool");
    assert_eq!(m[3]["tool_call_id"], "call_fake1");
    assert_eq!(v["content"][0]["text"], "Hello from fake-openai");
    assert_eq!(v["stop_reason"], "end_turn");
}

#[tokio::test]
async fn openai_client_to_anthropic_upstream_stream() {
    let (_oa, an, gw) = setup().await;
    let mut req = openai_tool_request("claude-alias", true);
    req["stream_options"] = json!({"include_usage": true});
    let (s, body) = post(
        &format!("{}/v1/chat/completions", gw.base),
        "sk-master",
        &req,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(an.last_body()["stream"], true);
    let evs = sse_events(&body);
    assert_eq!(evs.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = evs[..evs.len() - 1].iter().map(|e| json(&e.1)).collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut args = String::new();
    let mut finish = None;
    let mut usage = None;
    for c in &chunks {
        if let Some(ch) = c["choices"].get(0) {
            if let Some(t) = ch["delta"]["content"].as_str() {
                text += t;
            }
            if let Some(tc) = ch["delta"]["tool_calls"].get(0) {
                if tc.get("id").is_some() {
                    assert_eq!(tc["id"], "toolu_fake1");
                    assert_eq!(tc["function"]["name"], "sandbox_execute");
                }
                args += tc["function"]["arguments"].as_str().unwrap_or("");
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
        } else {
            usage = Some(c["usage"].clone());
        }
    }
    assert_eq!(text, "Let me look.");
    assert_eq!(json(&args)["command"], "ls -la");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let usage = usage.expect("usage chunk");
    assert_eq!(usage["prompt_tokens"], 13);
    assert_eq!(usage["completion_tokens"], 9);
}

#[tokio::test]
async fn anthropic_client_to_openai_upstream_stream() {
    let (oa, _an, gw) = setup().await;
    let r = client()
        .post(format!("{}/v1/messages", gw.base))
        .header("x-api-key", "sk-master")
        .json(&anthropic_tool_request("gpt-alias", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.text().await.unwrap();
    // The gateway asks the OpenAI upstream for usage.
    assert_eq!(oa.last_body()["stream_options"]["include_usage"], true);
    let evs = sse_events(&body);
    let names: Vec<&str> = evs.iter().map(|e| e.0.as_deref().unwrap()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(names[1], "ping");
    assert_eq!(*names.last().unwrap(), "message_stop");
    assert_eq!(names[names.len() - 2], "message_delta");
    for (n, d) in &evs {
        assert_eq!(
            json(d)["type"],
            n.as_deref().unwrap(),
            "event name matches data.type"
        );
    }
    let start = evs
        .iter()
        .find(|e| e.0.as_deref() == Some("content_block_start"))
        .unwrap();
    let sb = json(&start.1);
    assert_eq!(sb["content_block"]["type"], "tool_use");
    assert_eq!(sb["content_block"]["id"], "call_fake1");
    let partial: String = evs
        .iter()
        .filter(|e| e.0.as_deref() == Some("content_block_delta"))
        .map(|e| {
            json(&e.1)["delta"]["partial_json"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(json(&partial)["command"], "ls -la");
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "content_block_start")
            .count(),
        names.iter().filter(|n| **n == "content_block_stop").count()
    );
    let md = json(&evs[evs.len() - 2].1);
    assert_eq!(md["delta"]["stop_reason"], "tool_use");
    assert_eq!(md["usage"]["output_tokens"], 7);
}

#[tokio::test]
async fn openai_passthrough_rewrites_model_and_hides_injected_usage() {
    let (oa, _an, gw) = setup().await;
    let (s, body) = post(&format!("{}/v1/chat/completions", gw.base), "sk-master",
        &json!({"model": "gpt-alias", "messages": [{"role": "user", "content": "hi"}], "stream": true})).await;
    assert_eq!(s, 200);
    let up = oa.last_body();
    assert_eq!(up["model"], "gpt-4o");
    assert_eq!(
        up["stream_options"]["include_usage"], true,
        "gateway asks for usage for spend"
    );
    let evs = sse_events(&body);
    assert_eq!(evs.last().unwrap().1, "[DONE]");
    // The client did not ask for usage, so the usage-only chunk is removed.
    assert!(
        evs.iter()
            .all(|e| e.1 == "[DONE]" || !json(&e.1)["choices"].as_array().unwrap().is_empty())
    );
    let text: String = evs
        .iter()
        .filter(|e| e.1 != "[DONE]")
        .filter_map(|e| {
            json(&e.1)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Hello from fake-openai");

    // Non-streamed pass-through: the upstream body reaches the client unchanged.
    let (s, body) = post(
        &format!("{}/v1/chat/completions", gw.base),
        "sk-master",
        &json!({"model": "gpt-alias", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(s, 200);
    let v = json(&body);
    assert_eq!(v["system_fingerprint"], "fp_fake");
    assert_eq!(v["model"], "gpt-4o");
}

#[tokio::test]
async fn anthropic_passthrough_stream_is_byte_identical() {
    let (_oa, an, gw) = setup().await;
    let req = anthropic_tool_request("claude-alias", true);
    let r = client()
        .post(format!("{}/v1/messages", gw.base))
        .header("x-api-key", "sk-master")
        .header("anthropic-beta", "interleaved-thinking-2025-05-14")
        .json(&req)
        .send()
        .await
        .unwrap();
    let via_gateway = r.text().await.unwrap();
    assert_eq!(
        an.last_headers()["anthropic-beta"],
        "interleaved-thinking-2025-05-14"
    );
    let mut direct_req = req.clone();
    direct_req["model"] = json!("claude-sonnet-4-5");
    let direct = client()
        .post(format!("{}/v1/messages", an.base()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .json(&direct_req)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Byte-identical but for the cost the gateway appends to message_delta's usage
    // (LiteLLM's include_cost_in_streaming_usage).
    let at = via_gateway
        .find(",\"cost\":")
        .expect("usage.cost in message_delta");
    let end = at + via_gateway[at..].find('}').unwrap();
    let without_cost = format!("{}{}", &via_gateway[..at], &via_gateway[end..]);
    assert_eq!(without_cost, direct);
    assert_eq!(an.last_headers()["anthropic-version"], "2023-06-01");
}

#[tokio::test]
async fn anthropic_client_to_openai_upstream_text_stream() {
    let (_oa, _an, gw) = setup().await;
    let r = client()
        .post(format!("{}/v1/messages", gw.base))
        .header("x-api-key", "sk-master")
        .json(
            &json!({"model": "gpt-alias", "max_tokens": 50, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    let evs = sse_events(&r.text().await.unwrap());
    let names: Vec<&str> = evs.iter().map(|e| e.0.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = evs
        .iter()
        .filter(|e| e.0.as_deref() == Some("content_block_delta"))
        .map(|e| json(&e.1)["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "Hello from fake-openai");
    assert_eq!(json(&evs[7].1)["delta"]["stop_reason"], "end_turn");
}

#[tokio::test]
async fn in_process_chat_api() {
    let (_oa, _an, gw) = setup().await;
    // OpenAI-shaped JSON, translated to the Anthropic upstream, no HTTP hop on our side.
    let r = gw
        .gw
        .chat(
            openai_tool_request("claude-alias", false),
            Some("sk-master"),
        )
        .await
        .unwrap();
    assert_eq!(r.stop_reason, gateway::canonical::StopReason::ToolUse);
    let call = r.tool_calls().next().unwrap();
    assert_eq!(call.name, "sandbox_execute");
    assert_eq!(json(&call.arguments)["command"], "ls -la");
    // Canonical request, streamed upstream and collected.
    let req = gateway::canonical::ChatRequest {
        model: "gpt-alias".into(),
        messages: vec![gateway::canonical::Message::user("hi")],
        stream: true,
        ..Default::default()
    };
    let r = gw.gw.chat(req, None).await.unwrap();
    assert_eq!(r.text(), "Hello from fake-openai");
    assert_eq!(r.usage.input_tokens, 11);
    // Bad key is refused.
    let e = gw
        .gw
        .chat(openai_tool_request("gpt-alias", false), Some("sk-wrong"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 401);
}
