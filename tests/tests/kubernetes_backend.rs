//! The kubernetes backend against the fake API server (`airlock_tests::fake_k8s`), driven
//! through the real `kube` client: first the backend as a library, then the real
//! `brain serve --backend kubernetes` over its HTTP API; and the `k8s/` manifests, parsed into
//! `k8s-openapi` types. With agent-sandbox's CRDs (`FakeKubeOptions::agent_sandbox`): Sandbox,
//! warm pool and claims; and the agent reached through port-forward.
//!
//! Needs `cargo build -p brain -p sandbox-agent` first (the fake kubelet runs the real agent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_tests::fake_k8s::{FakeKube, FakeKubeOptions, Fault};
use airlock_tests::{BrainOptions, BrainProcess, StatusCode, bin_path, eventually};
use brain::sandbox::kubernetes::{
    AgentAccess, AgentSandboxMode, Flavor, KubernetesBackend, KubernetesConfig, WarmPoolConfig,
    object_name, render,
};
use brain::sandbox::{
    BackendError, LabelledSandbox, OWNER_LABEL, Resources, SANDBOX_LABEL, SandboxBackend,
    SandboxSpec,
};
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

const OWNER: &str = "brain-k8s-test";

async fn fake(opts: impl FnOnce(&mut FakeKubeOptions)) -> FakeKube {
    let mut o = FakeKubeOptions::new(bin_path("sandbox-agent"));
    opts(&mut o);
    FakeKube::start(o).await
}

/// A backend config pointing at `fake` through a kubeconfig file written in `dir`.
fn config(fake: &FakeKube, dir: &Path, token: &str) -> KubernetesConfig {
    let path = dir.join("kubeconfig");
    fake.write_kubeconfig(&path, token);
    KubernetesConfig {
        namespace: fake.namespace().to_string(),
        kubeconfig: Some(path),
        ready_timeout_seconds: 20,
        api_timeout_seconds: 10,
        ..KubernetesConfig::default()
    }
}

fn spec(id: &str) -> SandboxSpec {
    SandboxSpec {
        id: id.into(),
        owner: OWNER.into(),
        image: None,
        resources: Resources::default(),
        env: BTreeMap::from([
            ("GITHUB_TOKEN".to_string(), "ghp_stubFROMSECRET".to_string()),
            (
                "SSL_CERT_FILE".to_string(),
                "/etc/airlock/ca.pem".to_string(),
            ),
        ]),
        files: vec![(
            "/etc/airlock/ca.pem".into(),
            Bytes::from_static(b"-----BEGIN CERTIFICATE-----\nfake\n"),
        )],
        agent_token: format!("agent-token-{id}"),
        ttl_s: 600,
        workspace: None,
        cache_tenant: None,
    }
}

fn unique_id(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("sb-{tag}-{nanos:08x}")
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
}

async fn assert_nothing_left(fake: &FakeKube) {
    let clean = eventually(Duration::from_secs(5), || {
        fake.pod_names().is_empty() && fake.secret_names().is_empty()
    })
    .await;
    assert!(
        clean,
        "left behind: pods {:?}, secrets {:?}",
        fake.pod_names(),
        fake.secret_names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_exec_files_list_and_destroy() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .expect("connect");
    let id = unique_id("main");
    let handle = backend.provision(&spec(&id)).await.expect("provision");
    let name = object_name(&id);
    assert_eq!(handle.backend_ref, name);
    let url = handle.agent_url.clone().unwrap();
    assert!(url.starts_with("http://127."), "{url}");

    // What the API server stored: labels on both objects, secret owned by the pod, no token in
    // the pod.
    let pod = fake.pod(&name).expect("pod stored");
    assert_eq!(pod["metadata"]["labels"][SANDBOX_LABEL], id.as_str());
    assert_eq!(pod["metadata"]["labels"][OWNER_LABEL], OWNER);
    assert_eq!(pod["status"]["phase"], "Running");
    assert!(!pod.to_string().contains(&handle.agent_token));
    let secret = fake.secret(&name).expect("secret stored");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        pod["metadata"]["uid"]
    );

    // Exec through the in-pod agent, with the env resolved from the Secret and the CA mounted.
    let r = backend
        .exec(
            &handle,
            airlock_wire::ExecRequest {
                command: Some(
                    "echo $GITHUB_TOKEN $AIRLOCK_SANDBOX_ID; head -1 \"$SSL_CERT_FILE\"".into(),
                ),
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert_eq!(
        r.stdout,
        format!("ghp_stubFROMSECRET {id}\n-----BEGIN CERTIFICATE-----\n")
    );

    backend
        .write_file(&handle, "notes/a.txt", Bytes::from_static(b"hello"))
        .await
        .expect("write");
    let back = backend
        .read_file(&handle, "notes/a.txt")
        .await
        .expect("read");
    assert_eq!(&back[..], b"hello");
    let listed = backend.list_files(&handle, "notes").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "a.txt");
    assert!(backend.is_alive(&handle).await);

    let found = backend.list_labelled().await.expect("list labelled");
    assert_eq!(
        found,
        vec![LabelledSandbox {
            id: id.clone(),
            owner: Some(OWNER.into()),
            backend_ref: name.clone(),
        }]
    );

    let pids = fake.agent_pids();
    assert_eq!(pids.len(), 1);
    backend.destroy(&handle).await.expect("destroy");
    assert_nothing_left(&fake).await;
    assert!(
        eventually(Duration::from_secs(5), || !pid_alive(pids[0])).await,
        "agent still runs"
    );
    assert!(!backend.is_alive(&handle).await);
    // Destroying again is fine.
    backend.destroy(&handle).await.expect("second destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_failure_is_a_clear_error_and_leaves_nothing() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    let mut s = spec(&unique_id("pull"));
    s.image = Some("registry.invalid/does-not-exist:1".into());
    let err = backend.provision(&s).await.expect_err("must fail");
    let msg = err.to_string();
    assert!(matches!(err, BackendError::NotReady(_)), "{err:?}");
    assert!(
        msg.contains("ErrImagePull") || msg.contains("ImagePullBackOff"),
        "{msg}"
    );
    assert!(msg.contains("does-not-exist"), "{msg}");
    assert_nothing_left(&fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_is_a_clear_error_and_leaves_nothing() {
    let fake = fake(|o| o.node_memory_mib = 4096).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    let mut s = spec(&unique_id("big"));
    s.resources.memory_mb = 64 * 1024;
    let started = Instant::now();
    let err = backend.provision(&s).await.expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.contains("unschedulable"), "{msg}");
    assert!(msg.contains("Insufficient memory"), "{msg}");
    // Fails on the scheduler's verdict, not at the ready timeout.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_nothing_left(&fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_and_foreign_namespace_are_clear_errors() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let err = KubernetesBackend::connect(config(&fake, dir.path(), "not-the-token"))
        .await
        .err()
        .expect("401 must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("401") && msg.contains("Unauthorized") && msg.contains("credentials"),
        "{msg}"
    );

    let mut cfg = config(&fake, dir.path(), fake.token());
    cfg.namespace = "kube-system".into();
    let err = KubernetesBackend::connect(cfg)
        .await
        .err()
        .expect("403 must fail");
    let msg = err.to_string();
    assert!(msg.contains("403") && msg.contains("RBAC"), "{msg}");
    assert!(msg.contains("cannot list resource \"pods\""), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    let id = unique_id("retry");
    let name = object_name(&id);
    fake.inject(Fault {
        method: Some(Method::POST),
        path_contains: "/secrets".into(),
        status: 429,
        retry_after: Some(1),
        times: 1,
    });
    fake.inject(Fault {
        method: Some(Method::POST),
        path_contains: "/pods".into(),
        status: 503,
        retry_after: None,
        times: 2,
    });
    // The readiness watch's list (no GET by name any more): the watcher retries.
    fake.inject(Fault {
        method: Some(Method::GET),
        path_contains: "/pods".into(),
        status: 500,
        retry_after: None,
        times: 2,
    });
    let started = Instant::now();
    let handle = backend
        .provision(&spec(&id))
        .await
        .expect("provision despite faults");
    // Retry-After: 1 was honoured.
    assert!(started.elapsed() >= Duration::from_secs(1));
    let statuses: Vec<u16> = fake.seen().iter().map(|s| s.status).collect();
    for code in [429, 503, 500] {
        assert!(
            statuses.contains(&code),
            "{code} never answered: {statuses:?}"
        );
    }
    assert_eq!(fake.pod_names(), vec![name.clone()]);
    backend.destroy(&handle).await.unwrap();

    // A persistent server error ends with the server's message, and nothing is left.
    fake.inject(Fault {
        method: Some(Method::POST),
        path_contains: "/pods".into(),
        status: 500,
        retry_after: None,
        times: 100,
    });
    let err = backend
        .provision(&spec(&unique_id("fail")))
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("500"), "{err}");
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert_nothing_left(&fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_timeout_is_a_clear_error_and_leaves_nothing() {
    let fake = fake(|o| o.ready_delay = Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake, dir.path(), fake.token());
    cfg.ready_timeout_seconds = 1;
    let backend = KubernetesBackend::connect(cfg).await.unwrap();
    let started = Instant::now();
    let err = backend
        .provision(&spec(&unique_id("slow")))
        .await
        .expect_err("must time out");
    let msg = err.to_string();
    assert!(msg.contains("not ready after 1s"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_nothing_left(&fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_within_the_timeout_succeeds() {
    let fake = fake(|o| o.ready_delay = Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    let handle = backend
        .provision(&spec(&unique_id("slowok")))
        .await
        .unwrap();
    assert!(backend.is_alive(&handle).await);
    backend.destroy(&handle).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_leftovers_are_listed_and_destroyed() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    let a = backend.provision(&spec(&unique_id("a"))).await.unwrap();
    // A brain killed between creating the Secret and the pod leaves only the Secret.
    let orphan = "sb-orphan-secret";
    let http = airlock_tests::http_client();
    let resp = http
        .post(format!(
            "{}/api/v1/namespaces/{}/secrets",
            fake.url(),
            fake.namespace()
        ))
        .bearer_auth(fake.token())
        .json(&json!({"metadata": {"name": object_name(orphan),
              "labels": {SANDBOX_LABEL: orphan, OWNER_LABEL: OWNER}}, "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let mut found = backend.list_labelled().await.unwrap();
    found.sort_by(|x, y| x.id.cmp(&y.id));
    let ids: Vec<_> = found.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{found:?}");
    assert!(ids.contains(&a.id.as_str()) && ids.contains(&orphan));
    assert!(found.iter().all(|f| f.owner.as_deref() == Some(OWNER)));
    for f in &found {
        backend.destroy_labelled(f).await.unwrap();
    }
    assert_nothing_left(&fake).await;
    assert!(backend.list_labelled().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_is_not_alive() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    let h = backend.provision(&spec(&unique_id("dead"))).await.unwrap();
    fake.kill_agent(&h.backend_ref);
    assert!(
        eventually_async(Duration::from_secs(5), || backend.is_alive(&h))
            .await
            .is_some_and(|alive| !alive)
    );
    backend.destroy(&h).await.unwrap();
    assert_nothing_left(&fake).await;
}

/// Polls `f` until it returns false (or the timeout); returns the last value.
async fn eventually_async<F, Fut>(timeout: Duration, f: F) -> Option<bool>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let v = f().await;
        if !v || Instant::now() >= deadline {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === the real brain ===

async fn exec(brain: &BrainProcess, id: &str, cmd: &str) -> (StatusCode, Value) {
    brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"command": cmd}),
        )
        .await
}

fn brain_yaml(fake: &FakeKube, kubeconfig: &Path, extra: &str) -> String {
    format!(
        "sandbox:\n  reaper_interval_ms: 200\n  kubernetes:\n    namespace: {}\n    kubeconfig: {}\n    ready_timeout_seconds: 20\n{extra}",
        fake.namespace(),
        kubeconfig.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brain_serves_kubernetes_sandboxes_and_reaps_by_label_after_restart() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, fake.token());
    let mut brain = BrainProcess::start(BrainOptions {
        backend: "kubernetes".into(),
        extra_yaml: brain_yaml(&fake, &kubeconfig, ""),
        ..BrainOptions::default()
    })
    .await;

    let (status, created) = brain
        .post_json("/v1/sandboxes", &json!({"task_description": "k8s e2e"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}\n{}", brain.log());
    assert_eq!(created["backend"], "kubernetes");
    assert_eq!(created["status"], "running");
    let id = created["id"].as_str().unwrap().to_string();
    let pod = fake.pod(&object_name(&id)).expect("pod created");
    let owner = pod["metadata"]["labels"][OWNER_LABEL]
        .as_str()
        .unwrap()
        .to_string();
    assert!(owner.starts_with("brain-"), "{owner}");

    let (status, r) = exec(&brain, &id, "echo hi from $AIRLOCK_SANDBOX_ID").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["stdout"], format!("hi from {id}\n"));
    // The embedded vault's grant reached the pod's env through the Secret.
    let (_, r) = exec(&brain, &id, "echo $HTTPS_PROXY").await;
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://{id}:")),
        "{r}"
    );

    // An orphan with our owner label and no row: a restart's label sweep removes it.
    let orphan_id = "sb-orphan-pod";
    let mut orphan_spec = spec(orphan_id);
    orphan_spec.owner = owner.clone();
    let (orphan_pod, _) = render(
        &KubernetesConfig {
            namespace: fake.namespace().into(),
            ..KubernetesConfig::default()
        },
        &orphan_spec,
    )
    .unwrap();
    let resp = airlock_tests::http_client()
        .post(format!(
            "{}/api/v1/namespaces/{}/pods",
            fake.url(),
            fake.namespace()
        ))
        .bearer_auth(fake.token())
        .json(&orphan_pod)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    brain.restart().await;
    let swept = eventually(Duration::from_secs(10), || {
        fake.pod(&object_name(orphan_id)).is_none()
    })
    .await;
    assert!(swept, "orphan not reaped; log:\n{}", brain.log());
    // The live sandbox was adopted: same pod, exec still works.
    let (status, row) = brain.get_json(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (status, row["status"].as_str()),
        (StatusCode::OK, Some("running")),
        "{row}"
    );
    let (status, r) = exec(&brain, &id, "echo still here").await;
    assert_eq!(
        (status, r["stdout"].as_str()),
        (StatusCode::OK, Some("still here\n")),
        "{r}"
    );

    let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert!(status.is_success());
    assert_nothing_left(&fake).await;

    // Provider errors reach the API caller with the provider's words.
    let (status, r) = brain
        .post_json(
            "/v1/sandboxes",
            &json!({"image": "registry.invalid/does-not-exist:2"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("ImagePull") || message.contains("ErrImagePull"),
        "{r}"
    );
    assert_nothing_left(&fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_can_pick_kubernetes_when_the_default_is_local() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, fake.token());
    let brain = BrainProcess::start(BrainOptions {
        backend: "local".into(),
        extra_yaml: brain_yaml(&fake, &kubeconfig, "  allowed_backends: [kubernetes]\n"),
        ..BrainOptions::default()
    })
    .await;
    let (status, created) = brain
        .post_json("/v1/sandboxes", &json!({"backend": "kubernetes"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}\n{}", brain.log());
    assert_eq!(created["backend"], "kubernetes");
    let id = created["id"].as_str().unwrap();
    assert!(fake.pod(&object_name(id)).is_some());
    let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert!(status.is_success());
    assert_nothing_left(&fake).await;
}

// === k8s/ manifests ===

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s")
}

/// Every document of every manifest file listed in kustomization.yaml.
fn manifest_docs() -> Vec<(String, Value)> {
    let dir = manifests_dir();
    let kustomization: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut docs = Vec::new();
    for file in kustomization["resources"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for (i, doc) in text.split("\n---\n").enumerate() {
            if doc
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                continue;
            }
            let v: Value =
                serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{file} document {i}: {e}"));
            docs.push((format!("{file}#{i}"), v));
        }
    }
    docs
}

/// Parses `v` as `T` and checks nothing was dropped on the way (a misspelled or misplaced
/// field would be silently ignored by the typed parser, so compare the round trip).
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(at: &str, v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_subset(at, v, &back);
    t
}

fn assert_subset(at: &str, original: &Value, parsed: &Value) {
    match (original, parsed) {
        (Value::Object(o), Value::Object(p)) => {
            for (k, v) in o {
                let Some(pv) = p.get(k) else {
                    panic!("{at}: field `{k}` is not part of the Kubernetes type");
                };
                assert_subset(&format!("{at}.{k}"), v, pv);
            }
        }
        (Value::Array(o), Value::Array(p)) => {
            assert_eq!(o.len(), p.len(), "{at}");
            for (i, (a, b)) in o.iter().zip(p).enumerate() {
                assert_subset(&format!("{at}[{i}]"), a, b);
            }
        }
        (o, p) => assert_eq!(o, p, "{at}"),
    }
}

#[test]
fn manifests_parse_into_kubernetes_types_and_policy_confines_sandboxes() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{
        ConfigMap, Namespace, PersistentVolumeClaim, Service, ServiceAccount,
    };
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

    let mut deployments = BTreeMap::new();
    let mut services = BTreeMap::new();
    let mut configmaps = BTreeMap::new();
    let mut policies = Vec::new();
    let mut roles = Vec::new();
    let mut bindings = Vec::new();
    let mut namespaces = Vec::new();
    for (at, doc) in manifest_docs() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match kind.as_str() {
            "Namespace" => namespaces.push(typed::<Namespace>(&at, &doc)),
            "ServiceAccount" => {
                typed::<ServiceAccount>(&at, &doc);
            }
            "Role" => roles.push(typed::<Role>(&at, &doc)),
            "RoleBinding" => bindings.push(typed::<RoleBinding>(&at, &doc)),
            "Deployment" => {
                deployments.insert(name, typed::<Deployment>(&at, &doc));
            }
            "Service" => {
                services.insert(name, typed::<Service>(&at, &doc));
            }
            "ConfigMap" => {
                configmaps.insert(name, typed::<ConfigMap>(&at, &doc));
            }
            "PersistentVolumeClaim" => {
                typed::<PersistentVolumeClaim>(&at, &doc);
            }
            "NetworkPolicy" => policies.push(typed::<NetworkPolicy>(&at, &doc)),
            // Secrets are referenced by the Deployments, never written in the manifests.
            other => panic!("{at}: unexpected kind {other:?}"),
        }
    }
    assert_eq!(namespaces.len(), 2);

    // The brain's own config parses with the brain's parser and matches the manifests.
    let brain_cfg = brain::config::Config::from_yaml(
        &configmaps["airlock-brain-config"].data.as_ref().unwrap()["airlock.yaml"],
    )
    .expect("brain config in the ConfigMap");
    let k8s_cfg = &brain_cfg.sandbox.kubernetes;
    let sandbox_ns = k8s_cfg.namespace.clone();
    assert_eq!(brain_cfg.vault.mode, brain::config::VaultMode::Remote);
    let vault_svc = &services["vault-proxy"];
    let vault_ns = vault_svc.metadata.namespace.clone().unwrap();
    let proxy_port = vault_svc
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("proxy"))
        .unwrap()
        .port;
    assert_eq!(
        k8s_cfg.proxy_url.as_deref(),
        Some(format!("vault-proxy.{vault_ns}.svc:{proxy_port}").as_str())
    );

    // RBAC: only pods and secrets, only in the sandbox namespace, no wildcards.
    assert_eq!(roles.len(), 1);
    let role = &roles[0];
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(sandbox_ns.as_str())
    );
    // Pods and Secrets, and agent-sandbox's objects; no wildcards, no other group.
    let mut granted = Vec::new();
    for rule in role.rules.as_ref().unwrap() {
        let groups = rule.api_groups.clone().unwrap();
        assert_eq!(groups.len(), 1, "{groups:?}");
        for r in rule.resources.as_ref().unwrap() {
            let allowed = match groups[0].as_str() {
                "" => matches!(r.as_str(), "pods" | "secrets"),
                "agents.x-k8s.io" => r == "sandboxes",
                "extensions.agents.x-k8s.io" => matches!(
                    r.as_str(),
                    "sandboxclaims" | "sandboxtemplates" | "sandboxwarmpools"
                ),
                _ => false,
            };
            assert!(allowed, "{}/{r}", groups[0]);
            granted.push(r.clone());
        }
        for v in &rule.verbs {
            assert!(
                matches!(
                    v.as_str(),
                    "create" | "get" | "list" | "watch" | "delete" | "patch"
                ),
                "{v}"
            );
        }
    }
    for needed in ["pods", "secrets", "sandboxes", "sandboxclaims"] {
        assert!(granted.iter().any(|g| g == needed), "{needed} missing");
    }
    let binding = &bindings[0];
    let brain_dep = &deployments["airlock-brain"];
    let brain_pod = brain_dep
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(Some(&subject.name), brain_pod.service_account_name.as_ref());
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());

    // Secrets referenced, not inlined.
    for dep in deployments.values() {
        let pod = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        for c in &pod.containers {
            for e in c.env.as_deref().unwrap_or_default() {
                assert!(e.value.is_none(), "{}: env {} is inline", c.name, e.name);
                assert!(e.value_from.as_ref().unwrap().secret_key_ref.is_some());
            }
        }
    }

    // The sandbox policy selects exactly what the backend creates, and allows only the vault
    // proxy and DNS out, and only the brain in, on the agent port.
    let policy = policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("airlock-sandbox-egress"))
        .expect("sandbox policy");
    assert_eq!(
        policy.metadata.namespace.as_deref(),
        Some(sandbox_ns.as_str())
    );
    let pspec = policy.spec.as_ref().unwrap();
    assert_eq!(
        pspec.policy_types.as_deref(),
        Some(&["Ingress".to_string(), "Egress".to_string()][..])
    );
    let mut probe = SandboxSpec {
        id: "sb-policy".into(),
        owner: "brain-x".into(),
        image: None,
        resources: Resources::default(),
        env: BTreeMap::new(),
        files: Vec::new(),
        agent_token: "t".into(),
        ttl_s: 60,
        workspace: None,
        cache_tenant: None,
    };
    probe
        .env
        .insert("HTTPS_PROXY".into(), "http://a:b@127.0.0.1:1".into());
    let (sandbox_pod, _) = render(k8s_cfg, &probe).unwrap();
    let pod_labels = sandbox_pod.metadata.labels.clone().unwrap();
    let selects = |sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
                   labels: &BTreeMap<String, String>| {
        assert!(
            sel.match_expressions.is_none(),
            "only matchLabels are checked here"
        );
        sel.match_labels
            .as_ref()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    assert!(selects(
        pspec.pod_selector.as_ref().expect("podSelector"),
        &pod_labels
    ));
    assert_eq!(
        sandbox_pod.metadata.namespace.as_deref(),
        Some(sandbox_ns.as_str())
    );

    let vault_dep = &deployments["vault-proxy"];
    let vault_labels = vault_dep
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let brain_labels = brain_dep
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let ns_labels =
        |ns: &str| BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())]);

    let egress = pspec.egress.as_ref().unwrap();
    assert_eq!(
        egress.len(),
        3,
        "exactly: the vault proxy, DNS pods, NodeLocal DNSCache"
    );
    let mut saw_vault = false;
    let mut saw_dns = false;
    let mut saw_nodelocal = false;
    for rule in egress {
        let peers = rule
            .to
            .as_ref()
            .expect("no rule may allow every destination");
        let ports = rule.ports.as_ref().expect("no rule may allow every port");
        for peer in peers {
            if let Some(block) = &peer.ip_block {
                // Only NodeLocal DNSCache's link-local address, only DNS.
                assert_eq!(block.cidr, "169.254.20.10/32", "{peer:?}");
                assert!(block.except.is_none());
                assert!(peer.namespace_selector.is_none() && peer.pod_selector.is_none());
                for p in ports {
                    assert_eq!(
                        p.port,
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(53))
                    );
                }
                saw_nodelocal = true;
                continue;
            }
            let ns_sel = peer.namespace_selector.as_ref().expect("namespace pinned");
            let pod_sel = peer.pod_selector.as_ref().expect("pods pinned");
            if selects(ns_sel, &ns_labels(&vault_ns)) && selects(pod_sel, &vault_labels) {
                saw_vault = true;
                let p: Vec<_> = ports
                    .iter()
                    .map(|p| (p.protocol.clone(), p.port.clone()))
                    .collect();
                assert_eq!(
                    p,
                    vec![(
                        Some("TCP".to_string()),
                        Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                                proxy_port
                            )
                        )
                    )]
                );
            } else if selects(ns_sel, &ns_labels("kube-system"))
                && pod_sel
                    .match_labels
                    .as_ref()
                    .unwrap()
                    .get("k8s-app")
                    .map(String::as_str)
                    == Some("kube-dns")
            {
                saw_dns = true;
                for p in ports {
                    assert_eq!(
                        p.port,
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(53))
                    );
                }
            } else {
                panic!("unexpected egress peer {peer:?}");
            }
        }
    }
    assert!(saw_vault && saw_dns && saw_nodelocal);
    // The policy must not also let sandboxes reach the brain or each other.
    assert!(!selects(
        pspec.pod_selector.as_ref().expect("podSelector"),
        &vault_labels
    ));

    let ingress = pspec.ingress.as_ref().unwrap();
    assert_eq!(ingress.len(), 1);
    let from = ingress[0].from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    let brain_ns = brain_dep.metadata.namespace.clone().unwrap();
    assert!(selects(
        from[0].namespace_selector.as_ref().unwrap(),
        &ns_labels(&brain_ns)
    ));
    assert!(selects(
        from[0].pod_selector.as_ref().unwrap(),
        &brain_labels
    ));
    let ports = ingress[0].ports.as_ref().unwrap();
    assert_eq!(
        ports[0].port,
        Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                k8s_cfg.agent_port
            ))
        )
    );
    // The namespaces carry the label the selectors use.
    for ns in &namespaces {
        let name = ns.metadata.name.clone().unwrap();
        assert_eq!(
            ns.metadata.labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            name
        );
    }
}

// === benchmark (bench/remote-backends/kubernetes.md) ===

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{name}: n={} p50={:.2}ms p99={:.2}ms",
        v.len(),
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3
    )
}

/// `cargo test -p airlock-tests --test kubernetes_backend -- --ignored --nocapture bench_`
/// Provision: total time of `KubernetesBackend::provision` vs the fake's own time from pod
/// creation to Ready; exec: `SandboxBackend::exec` of `true` vs the same request sent straight
/// to the agent with a plain HTTP client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_provision_and_exec_overhead() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let fake = fake(|o| o.ready_delay = Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    let (mut total, mut kubelet, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    let mut handles = Vec::new();
    for i in 0..n {
        let s = spec(&unique_id(&format!("bench{i}")));
        let t = Instant::now();
        let h = backend.provision(&s).await.unwrap();
        let took = t.elapsed();
        let fake_time = fake.ready_latency(&h.backend_ref).unwrap();
        total.push(took);
        kubelet.push(fake_time);
        overhead.push(took.saturating_sub(fake_time));
        handles.push(h);
    }
    let h = &handles[0];
    let http = airlock_tests::http_client();
    let url = format!("{}/exec", h.agent_url.as_ref().unwrap());
    let req = airlock_wire::ExecRequest {
        command: Some("true".into()),
        ..Default::default()
    };
    let (mut via_backend, mut direct, mut direct_ndjson) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        backend.exec(h, req.clone()).await.unwrap();
    }
    for _ in 0..(n * 5) {
        let t = Instant::now();
        let r = backend.exec(h, req.clone()).await.unwrap();
        via_backend.push(t.elapsed());
        assert_eq!(r.exit_code, Some(0));
        let t = Instant::now();
        let resp = http
            .post(&url)
            .bearer_auth(&h.agent_token)
            .json(&req)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        resp.bytes().await.unwrap();
        direct.push(t.elapsed());
        // The same streamed form the backend uses (`Accept: application/x-ndjson`).
        let t = Instant::now();
        let resp = http
            .post(&url)
            .bearer_auth(&h.agent_token)
            .header("accept", "application/x-ndjson")
            .json(&req)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        resp.bytes().await.unwrap();
        direct_ndjson.push(t.elapsed());
    }
    println!("{}", summary("provision total", total));
    println!(
        "{}",
        summary("provision fake kubelet (create->Ready)", kubelet)
    );
    println!("{}", summary("provision brain overhead", overhead));
    println!("{}", summary("exec true via backend", via_backend));
    println!("{}", summary("exec true direct to agent (JSON)", direct));
    println!(
        "{}",
        summary("exec true direct to agent (NDJSON)", direct_ndjson)
    );
    for h in &handles {
        backend.destroy(h).await.unwrap();
    }
}

/// `cargo test --workspace --test kubernetes_backend -- --ignored --nocapture bench_warm_pool`
/// agent-sandbox warm pool: a claim (`SandboxClaim` created → claim Ready → the agent's
/// `/configure` done) against a cold `Sandbox` (created → Ready → agent healthy), p50 of each in
/// one run, alternating, as a ratio. Against the fake API server (`ready_delay` 0): its
/// controllers act at once and re-check every 50–100 ms, and each pod runs a real
/// `sandbox-agent`. So the figure is our client-side work (requests, the watches until Ready,
/// `/configure` on a claim) plus the fake's watch latency and, on the cold path, an agent
/// process start; not a real cluster's scheduling or image pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_warm_pool_claim_vs_cold_sandbox() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let fake = fake(|o| {
        o.agent_sandbox = true;
        o.ready_delay = Duration::ZERO;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cold = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    assert_eq!(cold.flavor(), Flavor::Sandbox);
    let mut cfg = config(&fake, dir.path(), fake.token());
    cfg.warm_pool = WarmPoolConfig {
        name: "bench".into(),
        replicas: 2,
    };
    let warm = KubernetesBackend::connect(cfg).await.unwrap();
    assert_eq!(warm.flavor(), Flavor::Claim);
    // Ready sandboxes still in the pool (a claimed one is owned by its claim).
    let pooled_ready = |fake: &FakeKube| {
        fake.object_names("sandboxes")
            .iter()
            .filter_map(|n| fake.object("sandboxes", n))
            .filter(|sb| {
                sb["metadata"]["ownerReferences"][0]["kind"] == "SandboxWarmPool"
                    && sandbox_ready_reason(sb).as_deref() == Some("DependenciesReady")
            })
            .count()
    };
    let (mut claims, mut colds) = (Vec::new(), Vec::new());
    for i in 0..n {
        assert!(
            eventually(Duration::from_secs(30), || pooled_ready(&fake) == 2).await,
            "pool never refilled"
        );
        let s = spec(&unique_id(&format!("cold{i}")));
        let t = Instant::now();
        let h = cold.provision(&s).await.unwrap();
        colds.push(t.elapsed());
        assert_eq!(h.extra["flavor"], "sandbox");
        cold.destroy(&h).await.unwrap();

        let s = spec(&unique_id(&format!("claim{i}")));
        let t = Instant::now();
        let h = warm.provision(&s).await.unwrap();
        claims.push(t.elapsed());
        assert_eq!(h.extra["flavor"], "claim");
        assert!(h.extra["pod"].starts_with("bench-"), "{:?}", h.extra);
        warm.destroy(&h).await.unwrap();
    }
    let p50 = |v: &mut Vec<Duration>| {
        v.sort();
        percentile(v, 0.5)
    };
    let (claim_p50, cold_p50) = (p50(&mut claims), p50(&mut colds));
    println!(
        "{}",
        summary("warm-pool claim (SandboxClaim -> ready)", claims)
    );
    println!("{}", summary("cold Sandbox (Sandbox -> ready)", colds));
    println!(
        "claim p50 / cold p50 = {:.3}",
        claim_p50.as_secs_f64() / cold_p50.as_secs_f64()
    );
}

/// `brain doctor --backend kubernetes` (the library entry point the binary calls) against the
/// fake API server: every step passes, each with its latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_smoke_tests_the_kubernetes_backend() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let sandbox = brain::config::SandboxConfig {
        kubernetes: config(&fake, dir.path(), fake.token()),
        ..Default::default()
    };
    // The fake runs agents on this host without a pod network: the blocked probe is a closed
    // loopback port, so nothing leaves the host.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut out = Vec::new();
    let report = brain::cli::doctor::run(
        brain::sandbox::BackendKind::Kubernetes,
        &sandbox,
        &closed,
        &mut out,
    )
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(report.ok() && report.skipped.is_none(), "{text}");
    assert!(report.passed >= 14, "{text}");
    assert!(
        text.contains("ok    exec after destroy is sandbox_lost"),
        "{text}"
    );
}

// === watches, agent-sandbox, port-forward ===

/// Requests of `method` to exactly `path` (no sub-resource), with their query strings.
fn requests(fake: &FakeKube, method: Method, path: &str) -> Vec<String> {
    fake.seen()
        .into_iter()
        .filter(|s| s.method == method && s.path == path)
        .map(|s| s.query)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_watched_not_polled_and_survives_an_expired_watch() {
    let fake = fake(|o| o.ready_delay = Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    let id = unique_id("watch");
    let name = object_name(&id);
    // An etcd compaction between the watcher's list and its watch: 410 Expired, re-list.
    fake.expire_next_watches(1);
    let handle = backend.provision(&spec(&id)).await.expect("provision");
    let pods_path = format!("/api/v1/namespaces/{}/pods", fake.namespace());
    let queries = requests(&fake, Method::GET, &pods_path);
    let watches: Vec<_> = queries
        .iter()
        .filter(|q| q.contains("watch=true"))
        .collect();
    let lists: Vec<_> = queries
        .iter()
        .filter(|q| !q.contains("watch=true"))
        .collect();
    let by_name = format!("fieldSelector=metadata.name%3D{name}");
    assert!(
        watches.len() >= 2 && watches.iter().all(|q| q.contains(&by_name)),
        "{queries:?}"
    );
    assert!(
        watches.iter().all(|q| q.contains("resourceVersion=")),
        "{queries:?}"
    );
    // The connect probe, the first list, and the re-list after the 410.
    assert!(
        lists.iter().filter(|q| q.contains(&by_name)).count() >= 2,
        "{queries:?}"
    );
    // No polling of the pod by name.
    assert!(
        requests(&fake, Method::GET, &format!("{pods_path}/{name}")).is_empty(),
        "{:?}",
        fake.seen()
    );
    backend.destroy(&handle).await.unwrap();
    assert_nothing_left(&fake).await;
}

fn sandbox_ready_reason(sb: &Value) -> Option<String> {
    sb["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["reason"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sandbox_crd_is_used_when_installed() {
    let fake = fake(|o| o.agent_sandbox = true).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .expect("connect");
    assert_eq!(backend.flavor(), Flavor::Sandbox);
    let id = unique_id("crd");
    let name = object_name(&id);
    let handle = backend.provision(&spec(&id)).await.expect("provision");
    assert_eq!(handle.extra["flavor"], "sandbox");
    assert_eq!(handle.extra["pod"], name);

    // The Sandbox carries the pod template; the controller made the pod and reported Ready.
    let sb = fake.object("sandboxes", &name).expect("Sandbox stored");
    assert_eq!(sb["apiVersion"], "agents.x-k8s.io/v1beta1");
    assert_eq!(sb["metadata"]["labels"][SANDBOX_LABEL], id.as_str());
    assert_eq!(sb["spec"]["shutdownPolicy"], "Delete");
    assert_eq!(
        sb["spec"]["podTemplate"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(
        sandbox_ready_reason(&sb).as_deref(),
        Some("DependenciesReady")
    );
    let pod = fake.pod(&name).expect("pod made by the controller");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "Sandbox");
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["uid"],
        sb["metadata"]["uid"]
    );
    assert_eq!(pod["metadata"]["labels"][SANDBOX_LABEL], id.as_str());
    let secret = fake.secret(&name).expect("secret");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "Sandbox");
    assert!(!sb.to_string().contains(&handle.agent_token));

    let r = backend
        .exec(
            &handle,
            airlock_wire::ExecRequest {
                command: Some("echo $GITHUB_TOKEN".into()),
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    assert_eq!(r.stdout, "ghp_stubFROMSECRET\n");
    let found = backend.list_labelled().await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].backend_ref, name);

    backend.destroy(&handle).await.expect("destroy");
    assert_nothing_left(&fake).await;
    assert!(fake.object_names("sandboxes").is_empty());
    // The Sandbox is gone, so the pod stays gone (the controller would recreate it otherwise).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.pod_names().is_empty());
    let err = backend
        .exec(
            &handle,
            airlock_wire::ExecRequest {
                command: Some("true".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("destroyed");
    assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sandbox_failures_are_fast_and_clear() {
    let fake = fake(|o| o.agent_sandbox = true).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    // Image pull errors are not mirrored in the Sandbox status: the pod watch catches them.
    let mut s = spec(&unique_id("crdpull"));
    s.image = Some("registry.invalid/does-not-exist:3".into());
    let started = Instant::now();
    let err = backend.provision(&s).await.expect_err("must fail");
    assert!(err.to_string().contains("ImagePull"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Unschedulable comes through the Sandbox's mirrored PodScheduled condition.
    let mut s = spec(&unique_id("crdbig"));
    s.resources.memory_mb = 64 * 1024;
    let err = backend.provision(&s).await.expect_err("must fail");
    assert!(err.to_string().contains("unschedulable"), "{err}");
    assert_nothing_left(&fake).await;
    assert!(fake.object_names("sandboxes").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sandbox_modes_without_the_crds() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    // auto: plain pods.
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    assert_eq!(backend.flavor(), Flavor::Pod);
    // required: a clear refusal at start.
    let mut cfg = config(&fake, dir.path(), fake.token());
    cfg.agent_sandbox = AgentSandboxMode::Required;
    let err = KubernetesBackend::connect(cfg)
        .await
        .err()
        .expect("must fail");
    assert!(
        err.to_string()
            .contains("agents.x-k8s.io/v1beta1 sandboxes")
            && err.to_string().contains("agent-sandbox"),
        "{err}"
    );
    // A warm pool needs them too.
    let mut cfg = config(&fake, dir.path(), fake.token());
    cfg.warm_pool.replicas = 1;
    assert!(KubernetesBackend::connect(cfg).await.is_err());
    // off, with the CRDs installed: plain pods.
    let fake2 = fake_with_crds().await;
    let mut cfg = config(&fake2, dir.path(), fake2.token());
    cfg.agent_sandbox = AgentSandboxMode::Off;
    let backend = KubernetesBackend::connect(cfg).await.unwrap();
    assert_eq!(backend.flavor(), Flavor::Pod);
}

async fn fake_with_crds() -> FakeKube {
    fake(|o| o.agent_sandbox = true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_claims_hand_over_a_ready_pod_and_configure_it() {
    let fake = fake_with_crds().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake, dir.path(), fake.token());
    cfg.warm_pool = WarmPoolConfig {
        name: "warm".into(),
        replicas: 2,
    };
    let backend = KubernetesBackend::connect(cfg.clone())
        .await
        .expect("connect");
    assert_eq!(backend.flavor(), Flavor::Claim);
    let template = fake
        .object("sandboxtemplates", "airlock-warm")
        .expect("template");
    assert_eq!(template["spec"]["envVarsInjectionPolicy"], "Disallowed");
    let pool_secret = fake.secret("airlock-pool-warm").expect("pool secret");
    assert!(pool_secret["metadata"]["labels"][SANDBOX_LABEL].is_null());
    let warm_ready = |fake: &FakeKube| {
        fake.object_names("sandboxes")
            .iter()
            .filter_map(|n| fake.object("sandboxes", n))
            .filter(|sb| sandbox_ready_reason(sb).as_deref() == Some("DependenciesReady"))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(15), || warm_ready(&fake) == 2).await,
        "pool never warmed"
    );
    // The pool is not a leftover sandbox.
    assert!(backend.list_labelled().await.unwrap().is_empty());

    let id = unique_id("claim");
    let mut s = spec(&id);
    let ca = dir.path().join("ca.pem");
    s.files = vec![(
        ca.display().to_string(),
        Bytes::from_static(b"CA FROM CONFIGURE\n"),
    )];
    s.env
        .insert("SSL_CERT_FILE".into(), ca.display().to_string());
    let started = Instant::now();
    let handle = backend
        .provision(&s)
        .await
        .expect("provision from the pool");
    let took = started.elapsed();
    assert_eq!(handle.extra["flavor"], "claim");
    let pod = handle.extra["pod"].clone();
    assert!(pod.starts_with("warm-"), "{pod}");
    let claim = fake
        .object("sandboxclaims", &object_name(&id))
        .expect("claim");
    assert_eq!(claim["status"]["sandbox"]["name"], pod.as_str());
    assert!(claim["spec"].get("env").is_none(), "{claim}");
    let sb = fake.object("sandboxes", &pod).unwrap();
    assert_eq!(sb["metadata"]["ownerReferences"][0]["kind"], "SandboxClaim");

    // The grant arrived through /configure, not through the API server.
    let r = backend
        .exec(
            &handle,
            airlock_wire::ExecRequest {
                command: Some("echo $GITHUB_TOKEN; cat \"$SSL_CERT_FILE\"".into()),
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    assert_eq!(r.stdout, "ghp_stubFROMSECRET\nCA FROM CONFIGURE\n", "{r:?}");
    assert!(
        !fake
            .secret("airlock-pool-warm")
            .unwrap()
            .to_string()
            .contains("ghp_stub")
    );
    assert!(!claim.to_string().contains("ghp_stub"));
    println!("claim from a warm pool: {took:?}");

    // The pool refills; destroying the claim removes its sandbox and pod only.
    assert!(eventually(Duration::from_secs(15), || warm_ready(&fake) == 3).await);
    backend.destroy(&handle).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || fake.pod(&pod).is_none()
            && fake.object("sandboxes", &pod).is_none()
            && fake.object_names("sandboxclaims").is_empty())
        .await
    );
    assert_eq!(fake.object_names("sandboxes").len(), 2);

    // A second brain (or a restart) finds the pool and its token as they are.
    let again = KubernetesBackend::connect(cfg).await.expect("reconnect");
    let h2 = again
        .provision(&spec(&unique_id("claim2")))
        .await
        .expect("provision");
    assert_eq!(h2.agent_token, handle.agent_token);
    again.destroy(&h2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_a_missing_pool_fails_with_the_controllers_reason() {
    let fake = fake_with_crds().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake, dir.path(), fake.token());
    cfg.warm_pool = WarmPoolConfig {
        name: "gone".into(),
        replicas: 1,
    };
    let backend = KubernetesBackend::connect(cfg).await.unwrap();
    // Someone deletes the pool behind the brain's back.
    let resp = airlock_tests::http_client()
        .delete(format!(
            "{}/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/{}/sandboxwarmpools/gone",
            fake.url(),
            fake.namespace()
        ))
        .bearer_auth(fake.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let err = backend
        .provision(&spec(&unique_id("nopool")))
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("WarmPoolNotFound"), "{err}");
    assert!(fake.object_names("sandboxclaims").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_the_agent_through_the_api_server() {
    let fake = fake(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&fake, dir.path(), fake.token());
    cfg.agent_access = AgentAccess::PortForward;
    let backend = KubernetesBackend::connect(cfg.clone()).await.unwrap();
    let id = unique_id("pf");
    let name = object_name(&id);
    let handle = backend.provision(&spec(&id)).await.expect("provision");
    assert_eq!(handle.extra["access"], "port-forward");
    let url = handle.agent_url.clone().unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let pod_ip = fake.pod(&name).unwrap()["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!url.contains(&pod_ip));
    let pf_path = format!(
        "/api/v1/namespaces/{}/pods/{name}/portforward",
        fake.namespace()
    );
    let upgrades = fake
        .seen()
        .into_iter()
        .filter(|s| s.path == pf_path && s.status == 101)
        .count();
    assert!(upgrades >= 1, "{:?}", fake.seen());

    let r = backend
        .exec(
            &handle,
            airlock_wire::ExecRequest {
                command: Some("echo through the api server".into()),
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    assert_eq!(r.stdout, "through the api server\n");
    backend
        .write_file(&handle, "big.bin", Bytes::from(vec![7u8; 300_000]))
        .await
        .unwrap();
    assert_eq!(
        backend.read_file(&handle, "big.bin").await.unwrap().len(),
        300_000
    );

    // A restarted brain starts its own listener for the stored handle.
    let other = KubernetesBackend::connect(cfg).await.unwrap();
    assert!(other.is_alive(&handle).await);

    backend.destroy(&handle).await.unwrap();
    assert_nothing_left(&fake).await;
    let err = other
        .exec(
            &handle,
            airlock_wire::ExecRequest {
                command: Some("true".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("destroyed");
    assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_access_falls_back_to_port_forward_when_pod_ips_do_not_route() {
    // The fake reports pod IPs nothing listens on, as a brain outside the cluster sees them.
    let fake = fake(|o| o.unroutable_pod_ips = true).await;
    let dir = tempfile::tempdir().unwrap();
    let backend = KubernetesBackend::connect(config(&fake, dir.path(), fake.token()))
        .await
        .unwrap();
    let h = backend
        .provision(&spec(&unique_id("auto")))
        .await
        .expect("provision");
    assert_eq!(h.extra["access"], "port-forward");
    // The finding is remembered: the next provision goes straight to port-forward.
    let started = Instant::now();
    let h2 = backend.provision(&spec(&unique_id("auto2"))).await.unwrap();
    assert_eq!(h2.extra["access"], "port-forward");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let r = backend
        .exec(
            &h2,
            airlock_wire::ExecRequest {
                command: Some("echo ok".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "ok\n");
    backend.destroy(&h).await.unwrap();
    backend.destroy(&h2).await.unwrap();
    assert_nothing_left(&fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brain_serves_agent_sandbox_sandboxes_through_port_forward() {
    let fake = fake_with_crds().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, fake.token());
    let brain = BrainProcess::start(BrainOptions {
        backend: "kubernetes".into(),
        extra_yaml: brain_yaml(&fake, &kubeconfig, "    agent_access: port_forward\n"),
        ..BrainOptions::default()
    })
    .await;
    let (status, created) = brain
        .post_json("/v1/sandboxes", &json!({"task_description": "crd e2e"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}\n{}", brain.log());
    let id = created["id"].as_str().unwrap().to_string();
    assert!(fake.object("sandboxes", &object_name(&id)).is_some());
    let (status, r) = exec(&brain, &id, "echo hi from $AIRLOCK_SANDBOX_ID").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["stdout"], format!("hi from {id}\n"));
    let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert!(status.is_success());
    assert_nothing_left(&fake).await;
    assert!(fake.object_names("sandboxes").is_empty());
}
