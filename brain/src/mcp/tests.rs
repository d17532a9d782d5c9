//! The MCP transport and tools through the real router, store (SQLite in a temp dir) and
//! lifecycle, with the fake backend, driven by `app(state).oneshot(request)`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::session::{self, McpSession};
use crate::config::{Config, MasterKey};
use crate::sandbox::fake::FakeBackend;
use crate::sandbox::{BackendKind, Backends};
use crate::state::AppState;
use crate::store::Store;

const KEY: &str = "test-master-key";
const LATEST: &str = "2025-11-25";

struct Harness {
    state: AppState,
    fake: Arc<FakeBackend>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

async fn harness_with(tweak: impl FnOnce(&mut Config)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        database_url: format!("sqlite://{}", dir.path().join("b.db").display()),
        ..Config::default()
    };
    tweak(&mut config);
    config.validate().unwrap();
    let store = Store::connect(&config.database_url).await.unwrap();
    let fake = Arc::new(FakeBackend::default());
    let backends = Backends::with_backend(BackendKind::Local, fake.clone(), config.sandbox.clone());
    let state = AppState::new(config, store, backends, MasterKey::new(KEY));
    Harness {
        state,
        fake,
        _dir: dir,
    }
}

/// A response: status, headers, body (JSON if it parses, else the text as a string).
struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    raw: String,
}

/// A request builder over the common headers an MCP client sends.
struct Call<'a> {
    method: &'a str,
    key: Option<&'a str>,
    session: Option<&'a str>,
    version: Option<&'a str>,
    extra: Vec<(&'a str, &'a str)>,
    content_type: Option<&'a str>,
    body: Option<String>,
}

impl<'a> Call<'a> {
    fn post(body: Value) -> Self {
        Self::post_raw(body.to_string())
    }

    fn post_raw(body: String) -> Self {
        Self {
            method: "POST",
            key: Some(KEY),
            session: None,
            version: None,
            extra: vec![("accept", "application/json, text/event-stream")],
            content_type: Some("application/json"),
            body: Some(body),
        }
    }

    fn method(method: &'a str) -> Self {
        Self {
            method,
            key: Some(KEY),
            session: None,
            version: None,
            extra: Vec::new(),
            content_type: None,
            body: None,
        }
    }

    fn session(mut self, id: &'a str) -> Self {
        self.session = Some(id);
        self
    }

    fn version(mut self, v: &'a str) -> Self {
        self.version = Some(v);
        self
    }

    fn key(mut self, key: Option<&'a str>) -> Self {
        self.key = key;
        self
    }

    fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.extra.retain(|(n, _)| *n != name);
        self.extra.push((name, value));
        self
    }

    fn content_type(mut self, ct: Option<&'a str>) -> Self {
        self.content_type = ct;
        self
    }

    async fn send(self, h: &Harness) -> Reply {
        let mut req = Request::builder().method(self.method).uri("/mcp");
        if let Some(key) = self.key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        if let Some(s) = self.session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(v) = self.version {
            req = req.header("mcp-protocol-version", v);
        }
        if let Some(ct) = self.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        for (n, v) in self.extra {
            req = req.header(n, v);
        }
        let req = req
            .body(self.body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response = crate::app(h.state.clone()).oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&raw).unwrap_or(Value::String(raw.clone()));
        Reply {
            status,
            headers,
            body,
            raw,
        }
    }
}

fn init_body(version: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "unit-test", "version": "1"},
        },
    })
}

fn request(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn call_tool(id: i64, name: &str, arguments: Value) -> Value {
    request(
        id,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    )
}

fn error_code(reply: &Reply) -> i64 {
    reply.body["error"]["code"].as_i64().unwrap_or(0)
}

impl Harness {
    /// Initializes a session at `version` and returns its id.
    async fn init(&self, version: &str) -> String {
        let r = Call::post(init_body(version)).send(self).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        let id = r.headers["mcp-session-id"].to_str().unwrap().to_string();
        let r = Call::post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .session(&id)
            .send(self)
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.raw);
        id
    }

    /// `tools/call` in a session; returns the JSON-RPC reply body.
    async fn tool(&self, session: &str, name: &str, arguments: Value) -> Value {
        let r = Call::post(call_tool(9, name, arguments))
            .session(session)
            .version(LATEST)
            .send(self)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        r.body
    }
}

#[tokio::test]
async fn initialize_negotiates_the_version_and_issues_a_session() {
    let h = harness().await;
    let r = Call::post(init_body(LATEST)).send(&h).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
    let id = r.headers["mcp-session-id"].to_str().unwrap();
    assert!(id.starts_with("mcp-") && id.len() > 30, "{id}");
    let result = &r.body["result"];
    assert_eq!(r.body["id"], 0);
    assert_eq!(result["protocolVersion"], LATEST);
    assert_eq!(
        result["capabilities"],
        json!({"tools": {"listChanged": false}})
    );
    assert_eq!(result["serverInfo"]["name"], "airlock-brain");
    assert!(
        result["instructions"]
            .as_str()
            .unwrap()
            .contains("sandbox_provision")
    );
    let stored = session::get(&h.state.store, id).await.unwrap().unwrap();
    assert_eq!(
        (stored.principal.as_str(), stored.protocol_version.as_str()),
        ("master", LATEST)
    );

    for (asked, got) in [
        ("2025-03-26", "2025-03-26"),
        ("2025-06-18", "2025-06-18"),
        ("2024-11-05", LATEST),
        ("1999-01-01", LATEST),
    ] {
        let r = Call::post(init_body(asked)).send(&h).await;
        assert_eq!(r.body["result"]["protocolVersion"], got, "{asked}");
    }

    let mut bad = init_body(LATEST);
    bad["params"]["protocolVersion"] = json!(20251125);
    let r = Call::post(bad).send(&h).await;
    assert_eq!(error_code(&r), -32602, "{}", r.raw);
    assert!(r.headers.get("mcp-session-id").is_none());
    let mut bad = init_body(LATEST);
    bad["params"]["capabilities"] = json!("all");
    let r = Call::post(bad).send(&h).await;
    assert_eq!(error_code(&r), -32602, "{}", r.raw);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("capabilities")
    );

    // `initialize` again inside a session, or with a session header, is refused.
    let r = Call::post(init_body(LATEST)).session(id).send(&h).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.raw);
    assert_eq!(error_code(&r), -32600);
}

#[tokio::test]
async fn notifications_and_responses_get_202_with_no_body() {
    let h = harness().await;
    let s = h.init(LATEST).await;
    for message in [
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}),
        json!({"jsonrpc": "2.0", "method": "notifications/unknown"}),
        json!({"jsonrpc": "2.0", "id": 5, "result": {}}),
        json!({"jsonrpc": "2.0", "id": 6, "error": {"code": -1, "message": "no"}}),
    ] {
        let r = Call::post(message.clone()).session(&s).send(&h).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{message}");
        assert_eq!(r.raw, "", "{message}");
    }
}

#[tokio::test]
async fn every_json_rpc_error_code() {
    let h = harness().await;
    let s = h.init(LATEST).await;

    let r = Call::post_raw("{not json".into())
        .session(&s)
        .send(&h)
        .await;
    assert_eq!(
        (r.status, error_code(&r)),
        (StatusCode::BAD_REQUEST, -32700)
    );
    assert_eq!(r.body["id"], Value::Null);

    let r = Call::post(json!({"id": 1, "method": "ping"}))
        .session(&s)
        .send(&h)
        .await;
    assert_eq!(
        (r.status, error_code(&r)),
        (StatusCode::BAD_REQUEST, -32600)
    );
    assert_eq!(r.body["id"], 1);

    let r = Call::post(request(2, "resources/list", json!({})))
        .session(&s)
        .send(&h)
        .await;
    assert_eq!(
        (r.status, error_code(&r), r.body["id"].clone()),
        (StatusCode::OK, -32601, json!(2))
    );

    let r = Call::post(request(3, "tools/call", json!({})))
        .session(&s)
        .send(&h)
        .await;
    assert_eq!(error_code(&r), -32602, "{}", r.raw);
    let r = Call::post(call_tool(4, "rm_rf", json!({})))
        .session(&s)
        .send(&h)
        .await;
    assert_eq!(error_code(&r), -32602);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unknown tool: rm_rf")
    );
    let r = Call::post(call_tool(5, "sandbox_execute", json!({"command": 1})))
        .session(&s)
        .send(&h)
        .await;
    assert_eq!(error_code(&r), -32602);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`command`"),
        "{}",
        r.raw
    );
    let r = Call::post(request(
        6,
        "tools/call",
        json!({"name": "sandbox_execute", "arguments": [1]}),
    ))
    .session(&s)
    .send(&h)
    .await;
    assert_eq!(error_code(&r), -32602);
    let r = Call::post(request(7, "tools/list", json!({"cursor": "x"})))
        .session(&s)
        .send(&h)
        .await;
    assert_eq!(error_code(&r), -32602);

    let r = Call::post(request(8, "ping", json!({})))
        .session(&s)
        .send(&h)
        .await;
    assert_eq!(r.body, json!({"jsonrpc": "2.0", "id": 8, "result": {}}));
    assert!(
        h.fake.lock().specs.is_empty(),
        "no protocol error reached a backend"
    );
}

#[tokio::test]
async fn session_header_rules() {
    let h = harness_with(|c| c.mcp.session_idle_timeout_seconds = 60).await;
    let ping = || request(1, "ping", json!({}));

    let r = Call::post(ping()).send(&h).await;
    assert_eq!(
        (r.status, error_code(&r)),
        (StatusCode::BAD_REQUEST, -32600)
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Mcp-Session-Id")
    );
    let r = Call::post(ping()).session("mcp-nope").send(&h).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bound to the principal: a session of another key is not found for this one.
    let now = session::now_ms(&h.state.store).await.unwrap();
    let other = McpSession {
        id: session::new_id(),
        principal: "vk-someone-else".into(),
        protocol_version: LATEST.into(),
        created_at: now,
        last_seen: now,
        closed_at: None,
    };
    assert!(
        session::insert_within_limit(&h.state.store, &other, 0, 10)
            .await
            .unwrap()
    );
    let r = Call::post(ping()).session(&other.id).send(&h).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Idle longer than the timeout: 404, and the row is closed for good.
    let idle = McpSession {
        id: session::new_id(),
        principal: "master".into(),
        last_seen: now - 61_000,
        ..other.clone()
    };
    assert!(
        session::insert_within_limit(&h.state.store, &idle, 0, 10)
            .await
            .unwrap()
    );
    let r = Call::post(ping()).session(&idle.id).send(&h).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let row = session::get(&h.state.store, &idle.id)
        .await
        .unwrap()
        .unwrap();
    assert!(row.closed_at.is_some());

    let s = h.init(LATEST).await;
    let r = Call::post(ping()).session(&s).send(&h).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "no version header: the negotiated one applies"
    );
    let r = Call::post(ping())
        .session(&s)
        .version(LATEST)
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = Call::post(ping())
        .session(&s)
        .version("2025-06-18")
        .send(&h)
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "differs from the negotiated one"
    );
    let r = Call::post(ping())
        .session(&s)
        .version("2030-01-01")
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unsupported")
    );
}

#[tokio::test]
async fn batches_only_in_2025_03_26() {
    let h = harness().await;
    let s = h.init(LATEST).await;
    let batch = json!([
        request(1, "ping", json!({})),
        request(2, "tools/list", json!({}))
    ]);
    let r = Call::post(batch.clone()).session(&s).send(&h).await;
    assert_eq!(
        (r.status, error_code(&r)),
        (StatusCode::BAD_REQUEST, -32600)
    );

    let old = h.init("2025-03-26").await;
    let r = Call::post(batch).session(&old).send(&h).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let replies = r.body.as_array().unwrap();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0], json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
    let tools = replies[1]["result"]["tools"].as_array().unwrap();
    assert!(tools.iter().all(|t| t.get("outputSchema").is_none()));

    let notes = json!([{"jsonrpc": "2.0", "method": "notifications/initialized"}]);
    let r = Call::post(notes).session(&old).send(&h).await;
    assert_eq!((r.status, r.raw.as_str()), (StatusCode::ACCEPTED, ""));

    let r = Call::post(json!([])).session(&old).send(&h).await;
    assert_eq!(
        (r.status, error_code(&r)),
        (StatusCode::BAD_REQUEST, -32600)
    );

    let mixed = json!([init_body("2025-03-26"), 5, request(3, "nope", json!({}))]);
    let r = Call::post(mixed).session(&old).send(&h).await;
    let replies = r.body.as_array().unwrap();
    let codes: Vec<(Value, i64)> = replies
        .iter()
        .map(|r| (r["id"].clone(), r["error"]["code"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (json!(0), -32600),
            (Value::Null, -32600),
            (json!(3), -32601)
        ]
    );
}

#[tokio::test]
async fn auth_origin_and_media_types() {
    let h = harness_with(|c| c.mcp.allowed_origins = vec!["https://IDE.example:8443".into()]).await;
    for key in [None, Some("wrong")] {
        let r = Call::post(init_body(LATEST)).key(key).send(&h).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(r.body["jsonrpc"], "2.0");
        assert!(r.body["error"]["code"].is_i64());
    }
    let r = Call::post(init_body(LATEST))
        .header("origin", "http://evil.example")
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["id"], Value::Null);
    let r = Call::post(init_body(LATEST))
        .header("origin", "null")
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Origin is checked before the key: a foreign page learns nothing about keys.
    let r = Call::post(init_body(LATEST))
        .key(None)
        .header("origin", "http://evil.example")
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = Call::post(init_body(LATEST))
        .header("origin", "https://ide.example:8443")
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);

    let r = Call::post(init_body(LATEST))
        .content_type(Some("text/plain"))
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = Call::post(init_body(LATEST))
        .content_type(None)
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = Call::post(init_body(LATEST))
        .header("accept", "text/event-stream")
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);
    let r = Call::post(init_body(LATEST))
        .header("accept", "*/*")
        .send(&h)
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let r = Call::method("GET").send(&h).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers[header::ALLOW], "POST, DELETE");
    let r = Call::method("GET").key(None).send(&h).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tools_are_bound_to_the_session() {
    let h = harness().await;
    let a = h.init(LATEST).await;
    let b = h.init(LATEST).await;

    let r = h
        .tool(&a, "sandbox_execute", json!({"command": "echo hi"}))
        .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("sandbox_provision")
    );

    let r = h
        .tool(&a, "sandbox_provision", json!({"task_description": "unit"}))
        .await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    let sb = r["result"]["structuredContent"]["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    let text: Value =
        serde_json::from_str(r["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, r["result"]["structuredContent"]);
    let row = h.state.store.get_sandbox(&sb).await.unwrap().unwrap();
    assert_eq!(row.session_id.as_deref(), Some(a.as_str()));

    // No sandbox_id: the session's most recent sandbox.
    let r = h
        .tool(&a, "sandbox_execute", json!({"command": "echo hello"}))
        .await;
    let out = &r["result"]["structuredContent"];
    assert_eq!(
        (out["exit_code"].clone(), out["stdout"].clone()),
        (json!(0), json!("hello\n"))
    );
    assert_eq!(out["sandbox_id"], sb.as_str());
    let r = h
        .tool(
            &a,
            "sandbox_execute",
            json!({"command": "exit 3", "sandbox_id": sb, "timeout_s": 999_999}),
        )
        .await;
    assert_eq!(r["result"]["isError"], false);
    assert_eq!(r["result"]["structuredContent"]["exit_code"], 3);
    let last = h.fake.lock().execs.last().cloned().unwrap();
    assert_eq!(
        last.timeout_ms,
        Some(h.state.config.sandbox.max_exec_timeout_seconds * 1000),
        "timeout clamped"
    );
    assert_eq!(
        last.max_output_bytes,
        Some(h.state.config.sandbox.max_output_bytes)
    );

    // Session b cannot reach a's sandbox, named or not; the command never runs.
    let execs_before = h.fake.lock().execs.len();
    let r = h
        .tool(
            &b,
            "sandbox_execute",
            json!({"command": "echo x", "sandbox_id": sb}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true);
    assert_eq!(
        r["result"]["content"][0]["text"],
        format!("no such sandbox in this session: {sb}")
    );
    let r = h
        .tool(&b, "sandbox_destroy", json!({"sandbox_id": sb}))
        .await;
    assert_eq!(r["result"]["isError"], true);
    let r = h
        .tool(&b, "sandbox_execute", json!({"command": "echo x"}))
        .await;
    assert_eq!(r["result"]["isError"], true);
    assert_eq!(h.fake.lock().execs.len(), execs_before);
    assert!(h.fake.lock().destroyed.is_empty());

    // Semantic failures are tool errors, not protocol errors.
    let r = h.tool(&a, "sandbox_execute", json!({"command": ""})).await;
    assert_eq!(r["result"]["isError"], true);
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("command must not be empty")
    );
    let r = h
        .tool(&a, "sandbox_execute", json!({"command": "fail"}))
        .await;
    assert_eq!(r["result"]["isError"], true);
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("agent_unreachable")
    );
    let r = h
        .tool(
            &a,
            "sandbox_provision",
            json!({"task_description": "t", "credentials": ["GITHUB_TOKEN"]}),
        )
        .await;
    assert_eq!(
        r["result"]["isError"], true,
        "no vault configured here: {r}"
    );
    let r = h
        .tool(
            &a,
            "sandbox_provision",
            json!({"task_description": "t", "credentials": ["bad name"]}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true);

    let r = h
        .tool(&a, "sandbox_destroy", json!({"sandbox_id": sb}))
        .await;
    assert_eq!(
        r["result"]["structuredContent"]["status"], "destroyed",
        "{r}"
    );
    let r = h
        .tool(&a, "sandbox_execute", json!({"command": "echo x"}))
        .await;
    assert_eq!(r["result"]["isError"], true);
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("sandbox_destroyed")
    );
}

#[tokio::test]
async fn delete_ends_the_session_and_destroys_its_sandboxes_if_configured() {
    for destroy in [true, false] {
        let h = harness_with(|c| c.mcp.destroy_sandboxes_on_close = destroy).await;
        let s = h.init(LATEST).await;
        let r = h
            .tool(&s, "sandbox_provision", json!({"task_description": "d"}))
            .await;
        let sb = r["result"]["structuredContent"]["sandbox_id"]
            .as_str()
            .unwrap()
            .to_string();

        let r = Call::method("DELETE").send(&h).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "no session header");
        let r = Call::method("DELETE")
            .session(&s)
            .key(Some("wrong"))
            .send(&h)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = Call::method("DELETE").session(&s).send(&h).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);

        let r = Call::post(request(1, "ping", json!({})))
            .session(&s)
            .send(&h)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = Call::method("DELETE").session(&s).send(&h).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let status = h
            .state
            .store
            .get_sandbox(&sb)
            .await
            .unwrap()
            .unwrap()
            .status;
        let destroyed = h.fake.lock().destroyed.contains(&sb);
        assert_eq!(destroyed, destroy);
        assert_eq!(status.is_live(), !destroy, "{status}");
    }
}

#[tokio::test]
async fn sessions_per_key_are_limited() {
    let h = harness_with(|c| c.mcp.max_sessions_per_key = 2).await;
    let first = h.init(LATEST).await;
    h.init(LATEST).await;
    let r = Call::post(init_body(LATEST)).send(&h).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.raw);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_sessions_per_key")
    );
    let r = Call::method("DELETE").session(&first).send(&h).await;
    assert_eq!(r.status, StatusCode::OK);
    h.init(LATEST).await;
}

#[tokio::test]
async fn disabled_means_no_route() {
    let h = harness_with(|c| c.mcp.enabled = false).await;
    let r = Call::post(init_body(LATEST)).send(&h).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[test]
fn config_keys_are_checked() {
    let c = Config::from_yaml(
        "mcp:\n  session_idle_timeout_seconds: 5\n  allowed_origins: [\"http://localhost:3000\"]\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.mcp.session_idle_timeout_seconds, 5);
    assert!(c.mcp.destroy_sandboxes_on_close && c.mcp.enabled);
    let err = Config::from_yaml("mcp:\n  idle: 5\n").unwrap_err();
    assert!(err.contains("idle"), "{err}");
    for yaml in [
        "mcp: { session_idle_timeout_seconds: 0 }\n",
        "mcp: { max_sessions_per_key: 0 }\n",
        "mcp: { allowed_origins: [\"localhost\"] }\n",
        "mcp: { allowed_origins: [\"http://a/b\"] }\n",
    ] {
        let c = Config::from_yaml(yaml).unwrap();
        assert!(c.validate().is_err(), "{yaml}");
    }
}

/// Idle timeouts are on the database clock: a session `last_seen` by one replica is not
/// idled out by another whose own clock runs two hours ahead (an injected offset).
#[tokio::test]
async fn a_skewed_brain_does_not_idle_out_a_live_session() {
    let h = harness_with(|c| c.mcp.session_idle_timeout_seconds = 60).await;
    let ping = || request(1, "ping", json!({}));
    crate::store::test_skew::set(0);
    let id = h.init(LATEST).await;
    crate::store::test_skew::set(2 * 3_600_000);
    let r = Call::post(ping())
        .session(&id)
        .version(LATEST)
        .send(&h)
        .await;
    crate::store::test_skew::set(0);
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a brain clock 2 h ahead idled out a live session: {}",
        r.raw
    );
    let row = session::get(&h.state.store, &id).await.unwrap().unwrap();
    assert_eq!(row.closed_at, None, "{row:?}");
}
