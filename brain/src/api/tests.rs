//! Component tests: the real router, store (SQLite in a temp dir) and lifecycle, with a fake
//! backend, driven through `app(state).oneshot(request)`.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::config::{Config, MasterKey};
use crate::credentials::{BrokerError, CredentialBroker, CredentialGrant, GrantRequest};
use crate::lifecycle;
use crate::sandbox::fake::FakeBackend;
use crate::sandbox::{BackendKind, Backends};
use crate::state::AppState;
use crate::store::{NewSandbox, SandboxStatus, Store};

const KEY: &str = "test-master-key";

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

impl Harness {
    async fn call(&self, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
        self.send(method, uri, body, Some(KEY)).await
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> (StatusCode, Value) {
        let (status, text) = self.raw(method, uri, body, key).await;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn raw(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let req = match body {
            Some(body) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let response = crate::app(self.state.clone()).oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn provision(&self) -> String {
        let (status, body) = self.call("POST", "/v1/sandboxes", Some("{}")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn v1_needs_the_master_key_but_health_and_metrics_do_not() {
    let h = harness().await;
    for key in [None, Some("wrong"), Some("")] {
        let (status, body) = h.send("GET", "/v1/sandboxes", None, key).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(error_code(&body), "unauthorized");
    }
    let (status, _) = h.send("GET", "/v1/sandboxes", None, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h.send("GET", "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, text) = h.raw("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("airlock_sandboxes_active{backend=\"local\"} 0"),
        "{text}"
    );
    let (status, body) = h.call("GET", "/v1/nope", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn provision_returns_the_contract_shape_and_commits_the_row() {
    let h = harness().await;
    let (status, body) = h
        .call(
            "POST",
            "/v1/sandboxes",
            Some(r#"{"task_description":"fix bug","ttl_s":120,"resources":{"memory_mb":256}}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("sb-"));
    assert_eq!(body["backend"], "local");
    assert_eq!(body["status"], "running");
    assert_eq!(body["credentials"], json!([]));
    assert_eq!(body["task_description"], "fix bug");
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        left.num_seconds() > 100 && left.num_seconds() <= 120,
        "{left}"
    );

    let spec = h.fake.lock().specs[0].clone();
    assert_eq!(spec.id, id);
    assert_eq!(spec.owner, h.state.store.owner());
    assert_eq!(spec.resources.memory_mb, 256);
    assert_eq!(
        spec.resources.cpus, 1.0,
        "defaults fill missing resource fields"
    );
    assert_eq!(spec.agent_token.len(), 64);
    let row = h.state.store.get_sandbox(id).await.unwrap().unwrap();
    assert_eq!(row.status, SandboxStatus::Running);
    assert!(row.handle.is_some());

    let (status, shown) = h.call("GET", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!((status, &shown["id"]), (StatusCode::OK, &body["id"]));
    assert!(
        shown.get("handle").is_none(),
        "the agent token never leaves the brain"
    );
    let (_, list) = h.call("GET", "/v1/sandboxes", None).await;
    assert_eq!(list["sandboxes"][0]["id"], body["id"]);
}

#[tokio::test]
async fn bad_requests_are_400_with_a_message_naming_the_problem() {
    let h = harness().await;
    let cases: &[(&str, &str, StatusCode, &str, &str)] = &[
        (
            "/v1/sandboxes",
            "{not json",
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "",
        ),
        (
            "/v1/sandboxes",
            r#"{"imagee":"x"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown field `imagee`",
        ),
        (
            "/v1/sandboxes",
            r#"{"ttl_s":"soon"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "ttl_s",
        ),
        (
            "/v1/sandboxes",
            r#"{"ttl_s":0}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "ttl_s",
        ),
        (
            "/v1/sandboxes",
            r#"{"ttl_s":99999999}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "ttl_s",
        ),
        (
            "/v1/sandboxes",
            r#"{"resources":{"cpus":64}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "cpus",
        ),
        (
            "/v1/sandboxes",
            r#"{"resources":{"disk":1}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown field `disk`",
        ),
        (
            "/v1/sandboxes",
            r#"{"backend":"podman"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "podman",
        ),
        (
            "/v1/sandboxes",
            r#"{"backend":"docker"}"#,
            StatusCode::BAD_REQUEST,
            "backend_not_allowed",
            "docker",
        ),
        (
            "/v1/sandboxes",
            r#"{"credentials":["GITHUB_TOKEN"]}"#,
            StatusCode::BAD_REQUEST,
            "no_vault_proxy",
            "no vault proxy configured",
        ),
        (
            "/v1/sandboxes",
            r#"{"credentials":["bad name"]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "bad name",
        ),
        (
            "/v1/sandboxes/sb-x/exec",
            r#"{"cmd":"ls"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown field `cmd`",
        ),
    ];
    for (uri, body, status, code, needle) in cases {
        let (got, reply) = h.call("POST", uri, Some(body)).await;
        assert_eq!(got, *status, "{body}: {reply}");
        assert_eq!(error_code(&reply), *code, "{body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert!(
        h.fake.lock().specs.is_empty(),
        "nothing reached the backend"
    );

    // No JSON content type at all.
    let req = Request::post("/v1/sandboxes")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::from("{}"))
        .unwrap();
    let response = crate::app(h.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn exec_maps_results_and_errors() {
    let h = harness_with(|c| c.sandbox.max_output_bytes = 4).await;
    let id = h.provision().await;
    let exec = format!("/v1/sandboxes/{id}/exec");

    let (status, body) = h.call("POST", &exec, Some(r#"{"command":"exit 3"}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["exit_code"], 3);
    for field in ["stdout", "stderr", "timed_out", "truncated", "duration_ms"] {
        assert!(body.get(field).is_some(), "{field} missing: {body}");
    }
    let (_, body) = h
        .call(
            "POST",
            &exec,
            Some(r#"{"command":"echo hello","timeout_s":999999,"cwd":"sub"}"#),
        )
        .await;
    assert_eq!(
        (body["stdout"].as_str(), body["truncated"].as_bool()),
        (Some("hell"), Some(true))
    );
    let sent = h.fake.lock().execs.last().cloned().unwrap();
    assert_eq!(
        sent.max_output_bytes,
        Some(4),
        "the cap from config reaches the agent"
    );
    assert_eq!(
        sent.timeout_ms,
        Some(3600 * 1000),
        "timeout clamped to max_exec_timeout_seconds"
    );
    assert_eq!(sent.cwd.as_deref(), Some("sub"));

    let cases: &[(&str, StatusCode, &str)] = &[
        (
            r#"{"command":"fail"}"#,
            StatusCode::BAD_GATEWAY,
            "agent_unreachable",
        ),
        (
            r#"{"command":"badcwd"}"#,
            StatusCode::BAD_REQUEST,
            "bad_cwd",
        ),
        (
            r#"{"command":""}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"command":"true","timeout_s":0}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let (got, reply) = h.call("POST", &exec, Some(body)).await;
        assert_eq!(
            (got, error_code(&reply)),
            (*status, *code),
            "{body}: {reply}"
        );
    }
    let (status, reply) = h
        .call(
            "POST",
            "/v1/sandboxes/sb-missing/exec",
            Some(r#"{"command":"true"}"#),
        )
        .await;
    assert_eq!(
        (status, error_code(&reply)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let (_, text) = h.raw("GET", "/metrics", None, None).await;
    assert!(
        text.contains("airlock_sandbox_execs_total{backend=\"local\",outcome=\"ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("airlock_sandbox_execs_total{backend=\"local\",outcome=\"error\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("airlock_sandboxes_active{backend=\"local\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn exec_streams_server_sent_events() {
    let h = harness().await;
    let id = h.provision().await;
    let (status, text) = h
        .raw(
            "POST",
            &format!("/v1/sandboxes/{id}/exec?stream=1"),
            Some(r#"{"command":"echo hi"}"#),
            Some(KEY),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("event: stdout\ndata: {\"type\":\"stdout\",\"data\":\"hi\\n\"}"),
        "{text}"
    );
    assert!(
        text.contains("event: exit\ndata: {\"type\":\"exit\",\"exit_code\":0"),
        "{text}"
    );
    let (_, metrics) = h.raw("GET", "/metrics", None, None).await;
    assert!(
        metrics.contains("airlock_sandbox_execs_total{backend=\"local\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn delete_during_provisioning_is_finished_by_the_provisioner() {
    let h = harness().await;
    h.fake.lock().provision_delay_ms = 300;
    let app = crate::app(h.state.clone());
    let request = Request::post("/v1/sandboxes")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let pending = tokio::spawn(app.oneshot(request));
    let id = loop {
        let rows = h.state.store.list_sandboxes(true, 10).await.unwrap();
        if let Some(row) = rows.first() {
            assert_eq!(row.status, SandboxStatus::Provisioning);
            break row.id.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let (status, body) = h.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("destroying")),
        "{body}"
    );

    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let row = h.state.store.get_sandbox(&id).await.unwrap().unwrap();
    assert_eq!(row.status, SandboxStatus::Destroyed);
    assert_eq!(row.error.as_deref(), Some("deleted during provisioning"));
    assert_eq!(h.fake.lock().destroyed, vec![id]);
}

#[tokio::test]
async fn delete_is_repeatable_and_exec_after_it_conflicts() {
    let h = harness().await;
    let id = h.provision().await;
    let uri = format!("/v1/sandboxes/{id}");
    for _ in 0..2 {
        let (status, body) = h.call("DELETE", &uri, None).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("destroyed")),
            "{body}"
        );
    }
    assert_eq!(h.fake.lock().destroyed, vec![id.clone()], "destroyed once");
    let (status, body) = h
        .call(
            "POST",
            &format!("{uri}/exec"),
            Some(r#"{"command":"true"}"#),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "sandbox_destroyed")
    );
    let (status, _) = h.call("DELETE", "/v1/sandboxes/sb-never", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn backend_failures_are_502_and_leave_rows_that_say_so() {
    let h = harness().await;
    h.fake.lock().fail_provision = Some("image missing".into());
    let (status, body) = h.call("POST", "/v1/sandboxes", Some("{}")).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_GATEWAY, "backend_unavailable")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image missing")
    );
    let (_, list) = h.call("GET", "/v1/sandboxes", None).await;
    assert_eq!(list["sandboxes"][0]["status"], "failed");
    assert!(
        list["sandboxes"][0]["error"]
            .as_str()
            .unwrap()
            .contains("image missing")
    );

    h.fake.lock().fail_provision = None;
    let id = h.provision().await;
    h.fake.lock().fail_destroy = true;
    let (status, _) = h.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let row = h.state.store.get_sandbox(&id).await.unwrap().unwrap();
    assert_eq!(
        row.status,
        SandboxStatus::Destroying,
        "kept for the reaper to retry"
    );

    h.fake.lock().fail_destroy = false;
    let later = chrono::Utc::now() + chrono::Duration::minutes(5);
    assert_eq!(lifecycle::reap_once(&h.state, later).await.unwrap(), 1);
    let row = h.state.store.get_sandbox(&id).await.unwrap().unwrap();
    assert_eq!(row.status, SandboxStatus::Destroyed);
}

#[tokio::test]
async fn reaper_destroys_expired_sandboxes_only() {
    let h = harness().await;
    let (_, short) = h
        .call("POST", "/v1/sandboxes", Some(r#"{"ttl_s":1}"#))
        .await;
    let keep = h.provision().await;
    let short = short["id"].as_str().unwrap().to_string();
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(lifecycle::reap_once(&h.state, later).await.unwrap(), 1);
    assert_eq!(h.fake.lock().destroyed, vec![short.clone()]);
    let (_, body) = h.call("GET", &format!("/v1/sandboxes/{short}"), None).await;
    assert_eq!(body["status"], "destroyed");
    let (_, body) = h.call("GET", &format!("/v1/sandboxes/{keep}"), None).await;
    assert_eq!(body["status"], "running");
}

#[tokio::test]
async fn restart_adopts_live_sandboxes_and_removes_the_rest() {
    let h = harness().await;
    let alive = h.provision().await;
    let dead = h.provision().await;
    h.fake.lock().alive.remove(&dead);
    // A row left mid-provision, and leftovers on the backend: one ours, one another brain's.
    let owner = h.state.store.owner().to_string();
    h.state
        .store
        .insert_sandbox(&NewSandbox {
            id: "sb-halfway".into(),
            backend: BackendKind::Local,
            image: None,
            request: json!({}),
            session_id: None,
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        })
        .await
        .unwrap();
    {
        let mut fake = h.fake.lock();
        fake.labelled.insert("sb-halfway".into(), owner.clone());
        fake.labelled.insert("sb-orphan".into(), owner);
        fake.labelled
            .insert("sb-foreign".into(), "brain-other".into());
        fake.destroyed.clear();
    }

    lifecycle::reconcile(&h.state).await.unwrap();

    let status = |id: &str| {
        let store = h.state.store.clone();
        let id = id.to_string();
        async move { store.get_sandbox(&id).await.unwrap().unwrap().status }
    };
    assert_eq!(status(&alive).await, SandboxStatus::Running);
    assert_eq!(status(&dead).await, SandboxStatus::Destroyed);
    assert_eq!(status("sb-halfway").await, SandboxStatus::Failed);
    let fake = h.fake.lock();
    let mut destroyed = fake.destroyed.clone();
    destroyed.sort();
    let mut expected = vec![
        dead.clone(),
        "sb-halfway".to_string(),
        "sb-orphan".to_string(),
    ];
    expected.sort();
    assert_eq!(destroyed, expected);
    assert!(
        fake.labelled.contains_key("sb-foreign"),
        "another owner's sandbox is left alone"
    );
    assert!(fake.alive.contains(&alive));
}

/// Records grants and revocations; hands out one stub env var per credential.
#[derive(Default)]
struct FakeBroker {
    log: Mutex<Vec<String>>,
}

#[async_trait]
impl CredentialBroker for FakeBroker {
    async fn grant(&self, req: GrantRequest<'_>) -> Result<CredentialGrant, BrokerError> {
        let (sandbox_id, credentials) = (req.sandbox_id, req.credentials);
        self.log
            .lock()
            .unwrap()
            .push(format!("grant {sandbox_id} {credentials:?}"));
        if credentials.iter().any(|c| c == "UNKNOWN") {
            return Err(BrokerError::UnknownCredential("UNKNOWN".into()));
        }
        let mut grant = CredentialGrant::default();
        for name in credentials {
            grant.env.insert(name.clone(), format!("stub-{name}"));
        }
        grant
            .files
            .push(("/etc/airlock/ca.pem".into(), "pem".into()));
        Ok(grant)
    }

    async fn revoke(&self, sandbox_id: &str) -> Result<(), BrokerError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("revoke {sandbox_id}"));
        Ok(())
    }
}

#[tokio::test]
async fn credentials_go_through_the_broker_when_one_is_configured() {
    let mut h = harness().await;
    let broker = Arc::new(FakeBroker::default());
    h.state = h.state.clone().with_broker(broker.clone());
    let (status, body) = h
        .call(
            "POST",
            "/v1/sandboxes",
            Some(r#"{"credentials":["GITHUB_TOKEN"]}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["credentials"], json!(["GITHUB_TOKEN"]));
    let id = body["id"].as_str().unwrap().to_string();
    let spec = h.fake.lock().specs[0].clone();
    assert_eq!(
        spec.env.get("GITHUB_TOKEN").map(String::as_str),
        Some("stub-GITHUB_TOKEN")
    );
    assert_eq!(spec.files.len(), 1);

    let (status, body) = h
        .call(
            "POST",
            "/v1/sandboxes",
            Some(r#"{"credentials":["UNKNOWN"]}"#),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "unknown_credential")
    );

    h.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    let log = broker.log.lock().unwrap().clone();
    assert_eq!(
        log.first().unwrap(),
        &format!("grant {id} [\"GITHUB_TOKEN\"]")
    );
    assert_eq!(log.last().unwrap(), &format!("revoke {id}"));
}

#[tokio::test]
async fn audit_egress_needs_a_vault_and_validates_its_filters() {
    let h = harness().await;
    let (status, body) = h.call("GET", "/v1/audit/egress", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_IMPLEMENTED, "not_available")
    );
    let (status, _) = h.send("GET", "/v1/audit/egress", None, Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A broker that cannot read its proxy's log (a remote one without `audit_log`): 501.
    let mut h = harness().await;
    h.state = h.state.clone().with_broker(Arc::new(FakeBroker::default()));
    let (status, body) = h.call("GET", "/v1/audit/egress?sandbox=sb-x", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_IMPLEMENTED, "not_available")
    );
    for bad in ["decision=maybe", "since=yesterday", "color=red"] {
        let (status, body) = h
            .call("GET", &format!("/v1/audit/egress?{bad}"), None)
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn embedded_vault_grants_every_sandbox_and_serves_its_audit_log() {
    use crate::credentials::vault::{EmbeddedVault, load_embedded_config};
    crate::install_crypto_provider();
    let mut h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    let config = load_embedded_config(None, dir.path()).unwrap();
    let vault = Arc::new(EmbeddedVault::start(config, Vec::new()).await.unwrap());
    h.state = h.state.clone().with_broker(vault.clone());

    // No credentials asked: still a grant (token, proxy env, CA).
    let (status, body) = h.call("POST", "/v1/sandboxes", Some("{}")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let spec = h.fake.lock().specs[0].clone();
    let proxy = &spec.env["HTTPS_PROXY"];
    assert!(
        proxy.starts_with(&format!("http://{id}:")) && proxy.ends_with(vault.proxy_addr()),
        "{proxy}"
    );
    assert_eq!(spec.env["SSL_CERT_FILE"], crate::credentials::CA_PATH);
    assert!(
        std::str::from_utf8(&spec.files[0].1)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    // The grant is kept with the handle for a restart.
    let row = h.state.store.get_sandbox(&id).await.unwrap().unwrap();
    let handle = row.handle.unwrap();
    let (token, stubs) = crate::credentials::recorded_grant(&handle).unwrap();
    assert!(proxy.contains(&format!(":{token}@")));
    assert!(stubs.is_empty());

    // The default vault has no credentials.
    let (status, body) = h
        .call(
            "POST",
            "/v1/sandboxes",
            Some(r#"{"credentials":["GITHUB_TOKEN"]}"#),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "unknown_credential"),
        "{body}"
    );

    // Egress with the sandbox's token is audited (default deny), and served filtered.
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy.as_str()).unwrap())
        .build()
        .unwrap();
    let _ = client.get("http://example.invalid/x").send().await;
    let (status, body) = h
        .call("GET", &format!("/v1/audit/egress?sandbox={id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let records = body.as_array().unwrap();
    assert!(!records.is_empty(), "{body}");
    assert!(records.iter().all(|r| r["sandbox"] == id.as_str()));
    assert!(records.iter().any(|r| r["decision"] == "deny"));
    let (_, body) = h
        .call("GET", "/v1/audit/egress?sandbox=sb-other", None)
        .await;
    assert_eq!(body, json!([]));

    // Destroy revokes: the token no longer authenticates (407).
    h.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    let resp = client.get("http://example.invalid/x").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 407);
    vault.shutdown().await;
}

#[tokio::test]
async fn restart_restores_vault_grants_and_destroys_sandboxes_whose_grant_is_lost() {
    use crate::credentials::vault::{EmbeddedVault, grants_to_restore, load_embedded_config};
    crate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness().await;
    let first = Arc::new(
        EmbeddedVault::start(load_embedded_config(None, dir.path()).unwrap(), Vec::new())
            .await
            .unwrap(),
    );
    h.state = h.state.clone().with_broker(first.clone());
    let kept = h.provision().await;
    let lost = h.provision().await;
    first.shutdown().await;

    // The restarted brain's proxy gets back only `kept`'s grant (as if `lost`'s were refused).
    let row = h.state.store.get_sandbox(&kept).await.unwrap().unwrap();
    let restore = grants_to_restore(row.handle.as_ref().map(|h| (h, row.session_id.as_deref())));
    assert_eq!(restore.len(), 1);
    let second = Arc::new(
        EmbeddedVault::start(load_embedded_config(None, dir.path()).unwrap(), restore)
            .await
            .unwrap(),
    );
    h.state.broker = Some(second.clone());
    h.fake.lock().destroyed.clear();
    lifecycle::reconcile(&h.state).await.unwrap();

    let kept_row = h.state.store.get_sandbox(&kept).await.unwrap().unwrap();
    assert_eq!(kept_row.status, SandboxStatus::Running);
    let lost_row = h.state.store.get_sandbox(&lost).await.unwrap().unwrap();
    assert_eq!(lost_row.status, SandboxStatus::Destroyed);
    assert!(
        lost_row
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not adopted after a brain restart")),
        "{lost_row:?}"
    );
    assert_eq!(h.fake.lock().destroyed, vec![lost]);
    second.shutdown().await;
}

#[tokio::test]
async fn delete_during_provisioning_revokes_the_grant_even_when_destroy_fails() {
    let mut h = harness().await;
    let broker = Arc::new(FakeBroker::default());
    h.state = h.state.clone().with_broker(broker.clone());
    {
        let mut fake = h.fake.lock();
        fake.provision_delay_ms = 300;
        fake.fail_destroy = true;
    }
    let app = crate::app(h.state.clone());
    let request = Request::post("/v1/sandboxes")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let pending = tokio::spawn(app.oneshot(request));
    let id = loop {
        let rows = h.state.store.list_sandboxes(true, 10).await.unwrap();
        if let Some(row) = rows.first() {
            break row.id.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    h.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    let _ = pending.await.unwrap();
    let row = h.state.store.get_sandbox(&id).await.unwrap().unwrap();
    assert_eq!(row.status, SandboxStatus::Destroying, "left for the reaper");
    let log = broker.log.lock().unwrap().clone();
    assert!(
        log.contains(&format!("revoke {id}")),
        "the grant outlived the delete: {log:?}"
    );
}

/// One brain per element (several replicas on one PostgreSQL schema; one brain on SQLite),
/// all on one fake backend with persistent workspaces; the schema to drop, if any.
async fn workspace_replicas() -> Vec<(Vec<Harness>, Arc<FakeBackend>, Option<(String, String)>)> {
    let fake = Arc::new(FakeBackend::default());
    fake.lock().workspaces = Some(Default::default());
    let build = |store: Store, fake: Arc<FakeBackend>| {
        let config = Config::default();
        let backends =
            Backends::with_backend(BackendKind::Local, fake.clone(), config.sandbox.clone());
        Harness {
            state: AppState::new(config, store, backends, MasterKey::new(KEY)),
            fake,
            _dir: tempfile::tempdir().unwrap(),
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("b.db").display());
    let mut sqlite = build(Store::connect(&url).await.unwrap(), fake.clone());
    sqlite._dir = dir;
    let mut out = vec![(vec![sqlite], fake, None)];
    match std::env::var("AIRLOCK_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let fake = Arc::new(FakeBackend::default());
            fake.lock().workspaces = Some(Default::default());
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            let mut replicas = Vec::new();
            for _ in 0..2 {
                let store = Store::connect_in_schema(&url, Some(&schema)).await.unwrap();
                replicas.push(build(store, fake.clone()));
            }
            out.push((replicas, fake, Some((url, schema))));
        }
        _ => {
            assert_ne!(
                std::env::var("AIRLOCK_REQUIRE_POSTGRES").as_deref(),
                Ok("1"),
                "AIRLOCK_REQUIRE_POSTGRES=1 but AIRLOCK_TEST_POSTGRES_URL is not set"
            );
            eprintln!("skipping the PostgreSQL half: AIRLOCK_TEST_POSTGRES_URL is not set");
        }
    }
    out
}

/// `DELETE /v1/workspaces/{name}` racing `POST /v1/sandboxes {"workspace"}` for the same
/// workspace, round after round at varying offsets (the fake creates the volume, then takes
/// a while before it mounts it, as docker does; its delete takes a while before the removal,
/// as docker's listing of the volume's users does), on SQLite and on two PostgreSQL replicas.
/// Whichever wins, no live sandbox ever mounts a removed volume, the volume exists exactly
/// when the provision won, no delete mark is left, and the loser gets a 409 naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workspace_delete_racing_a_provision_never_strands_a_sandbox() {
    for (replicas, fake, schema) in workspace_replicas().await {
        {
            let mut state = fake.lock();
            state.provision_delay_ms = 20;
            state.workspaces.as_mut().unwrap().delete_delay_ms = 15;
        }
        let ws = |fake: &FakeBackend| {
            let state = fake.lock();
            let w = state.workspaces.as_ref().unwrap();
            (w.volumes.clone(), w.mounts.clone(), state.alive.clone())
        };
        let mut outcomes = std::collections::BTreeMap::<(u16, u16), u32>::new();
        for round in 0..24u64 {
            let (a, b) = (
                &replicas[round as usize % replicas.len()],
                &replicas[(round as usize + 1) % replicas.len()],
            );
            // The workspace exists: a sandbox used it and ended.
            let (status, body) = a
                .call("POST", "/v1/sandboxes", Some(r#"{"workspace":"repo"}"#))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let setup = body["id"].as_str().unwrap().to_string();
            let (status, _) = a
                .call("DELETE", &format!("/v1/sandboxes/{setup}"), None)
                .await;
            assert_eq!(status, StatusCode::OK);
            assert!(ws(&fake).0.contains_key("repo"));
            let offset = std::time::Duration::from_millis(round % 8 * 4);
            let delete = async {
                if round % 2 == 0 {
                    tokio::time::sleep(offset).await;
                }
                a.call("DELETE", "/v1/workspaces/repo?backend=local", None)
                    .await
            };
            let provision = async {
                if round % 2 == 1 {
                    tokio::time::sleep(offset).await;
                }
                b.call("POST", "/v1/sandboxes", Some(r#"{"workspace":"repo"}"#))
                    .await
            };
            let ((del, del_body), (prov, prov_body)) = tokio::join!(delete, provision);
            *outcomes.entry((del.as_u16(), prov.as_u16())).or_default() += 1;
            let (volumes, mounts, alive) = ws(&fake);
            // Never a live sandbox on a removed volume.
            for (id, (volume, generation)) in &mounts {
                if alive.contains(id) {
                    assert_eq!(
                        volumes.get(volume),
                        Some(generation),
                        "round {round}: live sandbox {id} mounts a removed volume \
                         (delete {del} {del_body}, provision {prov} {prov_body})"
                    );
                }
            }
            match (del, prov) {
                (StatusCode::OK, StatusCode::CREATED) => {}
                (StatusCode::CONFLICT, StatusCode::CREATED) => {
                    let message = del_body["error"]["message"].as_str().unwrap_or_default();
                    assert!(message.contains("in use by sandbox"), "{del_body}");
                }
                (StatusCode::OK, StatusCode::CONFLICT) => {
                    let message = prov_body["error"]["message"].as_str().unwrap_or_default();
                    assert!(message.contains("is being deleted"), "{prov_body}");
                }
                other => panic!(
                    "round {round}: unexpected {other:?}: delete {del_body}, provision {prov_body}"
                ),
            }
            // Not leaked: the volume is there exactly when a sandbox got it.
            assert_eq!(
                volumes.contains_key("repo"),
                prov == StatusCode::CREATED,
                "round {round}: {volumes:?}"
            );
            assert!(
                !a.state
                    .store
                    .workspace_deleting(BackendKind::Local, "repo")
                    .await
                    .unwrap(),
                "round {round}: a delete mark was left"
            );
            if prov == StatusCode::CREATED {
                let id = prov_body["id"].as_str().unwrap();
                let (status, _) = b.call("DELETE", &format!("/v1/sandboxes/{id}"), None).await;
                assert_eq!(status, StatusCode::OK);
            }
        }
        eprintln!("delete/provision outcomes (delete, provision) → rounds: {outcomes:?}");
        // Deleting what is left works, and a second delete finds nothing.
        let (status, body) = replicas[0]
            .call("DELETE", "/v1/workspaces/repo?backend=local", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _) = replicas[0]
            .call("DELETE", "/v1/workspaces/repo?backend=local", None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        if let Some((url, schema)) = schema {
            for r in &replicas {
                r.state.store.close().await;
            }
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{schema}\" CASCADE"
            )))
            .execute(&pool)
            .await
            .unwrap();
        }
    }
}
