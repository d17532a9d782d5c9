//! End to end: an independent MCP client (the official Rust SDK, `rmcp`, over its streamable
//! HTTP transport) drives the real `brain serve` (local backend, real `sandbox-agent`).
//!
//! Needs `cargo build -p brain -p sandbox-agent` first (see `airlock_tests::bin_path`).

use std::time::Duration;

use airlock_tests::{
    BrainOptions, BrainProcess, StatusCode, eventually, fresh_postgres_database, processes_with_env,
};
use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

type Client = RunningService<RoleClient, ClientConfig>;

/// An MCP client for `brain` with `key`. Transparent re-initialization on 404 is off, so a
/// session the server lost shows up as an error instead of being papered over.
async fn connect(brain: &BrainProcess, key: &str) -> Result<Client, String> {
    let config = StreamableHttpClientTransportConfig::with_uri(brain.url("/mcp"))
        .auth_header(key)
        .reinit_on_expired_session(false);
    let transport = StreamableHttpClientTransport::with_client(brain.http.clone(), config);
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("airlock-e2e", "0.1.0"),
    );
    info.serve(transport).await.map_err(|e| format!("{e:?}"))
}

async fn call(client: &Client, name: &str, arguments: Value) -> CallToolResult {
    let args = arguments.as_object().cloned().expect("arguments object");
    client
        .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{name} {arguments}: {e:?}"))
}

/// The structured result of a successful call.
fn ok(result: &CallToolResult) -> Value {
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let structured = result
        .structured_content
        .clone()
        .expect("structuredContent");
    assert_eq!(
        text(result),
        structured.to_string(),
        "the text block mirrors structuredContent"
    );
    structured
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("")
}

fn tool_error(result: &CallToolResult) -> String {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    text(result)
}

async fn provision(client: &Client) -> String {
    let r = call(
        client,
        "sandbox_provision",
        json!({"task_description": "mcp e2e"}),
    )
    .await;
    ok(&r)["sandbox_id"]
        .as_str()
        .expect("sandbox_id")
        .to_string()
}

async fn sandbox_status(brain: &BrainProcess, id: &str) -> (String, Option<String>) {
    let (status, row) = brain.get_json(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{row}");
    (
        row["status"].as_str().unwrap_or_default().to_string(),
        row["session_id"].as_str().map(str::to_string),
    )
}

#[tokio::test]
async fn mcp_client_lists_provisions_executes_and_uses_files() {
    let brain = BrainProcess::start(BrainOptions::default()).await;
    let a = connect(&brain, &brain.master_key)
        .await
        .expect("initialize");
    let server = a.peer_info().expect("server info");
    assert_eq!(server.protocol_version.to_string(), "2025-11-25");
    assert_eq!(
        server.server_info.as_ref().map(|i| i.name.as_str()),
        Some("airlock-brain")
    );
    assert!(server.capabilities.tools.is_some());

    let tools = a.list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "sandbox_destroy",
            "sandbox_execute",
            "sandbox_list_files",
            "sandbox_pause",
            "sandbox_provision",
            "sandbox_read_file",
            "sandbox_resume",
            "sandbox_snapshot",
            "sandbox_write_file"
        ]
    );
    let exec_tool = tools.iter().find(|t| t.name == "sandbox_execute").unwrap();
    assert_eq!(
        exec_tool.input_schema.get("required"),
        Some(&json!(["command"]))
    );
    assert!(exec_tool.output_schema.is_some());

    let sb = provision(&a).await;
    let (status, session) = sandbox_status(&brain, &sb).await;
    assert_eq!(status, "running");
    assert!(
        session.as_deref().is_some_and(|s| s.starts_with("mcp-")),
        "{session:?}"
    );
    assert!(
        !processes_with_env("AIRLOCK_SANDBOX_ID", &sb).is_empty(),
        "the agent runs"
    );

    let out = ok(&call(&a, "sandbox_execute", json!({"command": "echo hello"})).await);
    assert_eq!(
        (out["exit_code"].clone(), out["stdout"].clone()),
        (json!(0), json!("hello\n"))
    );
    assert_eq!(out["sandbox_id"], sb.as_str());
    let out = ok(&call(
        &a,
        "sandbox_execute",
        json!({"sandbox_id": sb, "command": "echo oops >&2; exit 7"}),
    )
    .await);
    assert_eq!(
        (out["exit_code"].clone(), out["stderr"].clone()),
        (json!(7), json!("oops\n"))
    );

    let content = "héllo from mcp\nline 2\n";
    let w = ok(&call(
        &a,
        "sandbox_write_file",
        json!({"path": "notes/a.txt", "content": content}),
    )
    .await);
    assert_eq!(w["bytes_written"], content.len());
    let r = ok(&call(&a, "sandbox_read_file", json!({"path": "notes/a.txt"})).await);
    assert_eq!(r["content"], content);
    let l = ok(&call(&a, "sandbox_list_files", json!({"path": "notes"})).await);
    assert_eq!(
        l["entries"],
        json!([{"name": "a.txt", "size": content.len(), "is_dir": false}])
    );
    // The file is really in the sandbox: a command sees it.
    let out = ok(&call(&a, "sandbox_execute", json!({"command": "cat notes/a.txt"})).await);
    assert_eq!(out["stdout"], content);
    let e = tool_error(&call(&a, "sandbox_read_file", json!({"path": "missing.txt"})).await);
    assert!(!e.is_empty());

    // Protocol errors reach the client as JSON-RPC errors that name the problem.
    let args = json!({"command": 5}).as_object().cloned().unwrap();
    let err = a
        .call_tool(CallToolRequestParams::new("sandbox_execute").with_arguments(args))
        .await
        .expect_err("wrong argument type");
    let err = format!("{err:?}");
    assert!(err.contains("-32602") && err.contains("`command`"), "{err}");

    // A second session (same key) cannot reach the first session's sandbox.
    let b = connect(&brain, &brain.master_key)
        .await
        .expect("second session");
    let e = tool_error(
        &call(
            &b,
            "sandbox_execute",
            json!({"sandbox_id": sb, "command": "touch /tmp/pwned-by-b"}),
        )
        .await,
    );
    assert_eq!(e, format!("no such sandbox in this session: {sb}"));
    let e = tool_error(&call(&b, "sandbox_read_file", json!({"path": "notes/a.txt"})).await);
    assert!(e.contains("sandbox_provision"), "{e}");
    let e = tool_error(&call(&b, "sandbox_destroy", json!({"sandbox_id": sb})).await);
    assert!(e.contains("no such sandbox in this session"), "{e}");
    let out = ok(&call(
        &a,
        "sandbox_execute",
        json!({"command": "test ! -e /tmp/pwned-by-b && echo clean"}),
    )
    .await);
    assert_eq!(out["stdout"], "clean\n");
    b.cancel().await.expect("closing b");
    assert_eq!(
        sandbox_status(&brain, &sb).await.0,
        "running",
        "b's close left a's sandbox alone"
    );

    // Closing the session (DELETE /mcp) destroys its sandboxes (mcp.destroy_sandboxes_on_close).
    a.cancel().await.expect("closing a");
    let gone = eventually(Duration::from_secs(10), || {
        processes_with_env("AIRLOCK_SANDBOX_ID", &sb).is_empty()
    })
    .await;
    assert!(gone, "sandbox processes left after the session closed");
    assert_eq!(sandbox_status(&brain, &sb).await.0, "destroyed");
}

#[tokio::test]
async fn mcp_session_survives_a_brain_restart() {
    session_survives_restart(BrainOptions::default()).await;
}

/// The same on PostgreSQL (skipped unless `AIRLOCK_TEST_POSTGRES_URL` is set; `tests/run.sh`
/// sets it).
#[tokio::test]
async fn mcp_session_survives_a_brain_restart_on_postgres() {
    let Some(url) = fresh_postgres_database().await else {
        eprintln!("skipped: AIRLOCK_TEST_POSTGRES_URL not set");
        return;
    };
    session_survives_restart(BrainOptions {
        database_url: Some(url),
        ..BrainOptions::default()
    })
    .await;
}

async fn session_survives_restart(opts: BrainOptions) {
    let mut brain = BrainProcess::start(opts).await;
    let client = connect(&brain, &brain.master_key)
        .await
        .expect("initialize");
    let sb = provision(&client).await;
    ok(&call(
        &client,
        "sandbox_write_file",
        json!({"path": "state", "content": "kept"}),
    )
    .await);

    brain.restart_same_port().await;

    // Same client, same Mcp-Session-Id (re-initialization is off): the session and its
    // binding to the sandbox came back from the store.
    let out = ok(&call(&client, "sandbox_execute", json!({"command": "cat state"})).await);
    assert_eq!(
        (out["sandbox_id"].clone(), out["stdout"].clone()),
        (json!(sb), json!("kept"))
    );
    client.cancel().await.expect("closing");
    assert_eq!(sandbox_status(&brain, &sb).await.0, "destroyed");
}

#[tokio::test]
async fn mcp_refuses_bad_keys_foreign_origins_and_missing_sessions() {
    let brain = BrainProcess::start(BrainOptions::default()).await;
    let err = connect(&brain, "not-the-key").await.expect_err("bad key");
    assert!(
        err.to_lowercase().contains("auth") || err.contains("401"),
        "{err}"
    );

    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "raw", "version": "1"}},
    });
    let post = |key: Option<&str>, origin: Option<&str>, session: Option<&str>, body: &Value| {
        let mut req = brain
            .http
            .post(brain.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(body);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        if let Some(session) = session {
            req = req.header("mcp-session-id", session);
        }
        req.send()
    };
    for key in [None, Some("not-the-key")] {
        let r = post(key, None, None, &init).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let key = Some(brain.master_key.as_str());
    let r = post(key, Some("http://attacker.example"), None, &init)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let r = post(key, None, None, &init).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let ping = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"});
    let r = post(key, None, None, &ping).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "no session header");
    let r = post(
        key,
        None,
        Some("mcp-00000000000000000000000000000000"),
        &ping,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = post(key, None, Some(&session), &ping).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = brain
        .http
        .get(brain.url("/mcp"))
        .bearer_auth(&brain.master_key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// Virtual keys minted by the brain's gateway (`POST /key/generate`) open MCP sessions of
/// their own: a key's sandboxes are unreachable from another key's session, and an expired
/// key is refused.
#[tokio::test]
async fn mcp_accepts_gateway_virtual_keys_and_keeps_their_sessions_apart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("script.json");
    std::fs::write(&script, r#"[{"text": "unused"}]"#).expect("script");
    let brain = BrainProcess::start(BrainOptions {
        extra_yaml: format!(
            "models:\n  model_list:\n    - model_name: scripted\n      litellm_params:\n        \
             model: scripted/{}\n",
            script.display()
        ),
        ..BrainOptions::default()
    })
    .await;
    let mint = |body: Value| {
        let brain = &brain;
        async move {
            let (status, key) = brain.post_json("/key/generate", &body).await;
            assert_eq!(status, StatusCode::OK, "{key}");
            key["key"].as_str().expect("key").to_string()
        }
    };
    let key = mint(json!({"metadata": {"team": "harness"}})).await;

    let vk = connect(&brain, &key)
        .await
        .expect("a virtual key opens a session");
    let sandbox = provision(&vk).await;
    let r = call(&vk, "sandbox_execute", json!({"command": "printf vk-ran"})).await;
    assert!(text(&r).contains("vk-ran"), "{r:?}");
    let (_, session) = sandbox_status(&brain, &sandbox).await;
    assert!(session.is_some_and(|s| s.starts_with("mcp-")));

    // The master key's session cannot reach the virtual key's sandbox.
    let master = connect(&brain, &brain.master_key).await.expect("master");
    let r = call(
        &master,
        "sandbox_execute",
        json!({"sandbox_id": sandbox, "command": "printf should-not-run"}),
    )
    .await;
    assert!(tool_error(&r).contains("no such sandbox"), "{r:?}");

    // An expired key and a deleted key are refused.
    let expired = mint(json!({"expires": "2000-01-01T00:00:00Z"})).await;
    assert!(connect(&brain, &expired).await.is_err());
    let (status, body) = brain
        .post_json("/key/delete", &json!({"keys": [key.clone()]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(connect(&brain, &key).await.is_err());
    let _ = vk.cancel().await;
    let _ = master.cancel().await;
}
