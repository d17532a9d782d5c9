use std::process::Command;

use airlock_wire::{ExecRequest, ExecResult};
use bytes::Bytes;

use super::*;
use crate::sandbox::Resources;

const TEST_OWNER: &str = "docker-unit-test";

fn require_docker() -> bool {
    std::env::var("AIRLOCK_REQUIRE_DOCKER").as_deref() == Ok("1")
}

fn skip(why: &str) {
    assert!(!require_docker(), "AIRLOCK_REQUIRE_DOCKER=1 but {why}");
    eprintln!("SKIP docker backend test: {why}");
}

/// A backend whose sandboxes get network `mode`, with no spare networks.
async fn backend_on_network(mode: SandboxNetwork) -> Option<DockerBackend> {
    backend_with(DockerConfig {
        startup_timeout_seconds: 60,
        spare_networks: 0,
        network: Some(mode),
        ..Default::default()
    })
    .await
}

async fn backend_with(mut config: DockerConfig) -> Option<DockerBackend> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let info = Command::new("docker").arg("info").output();
    if !info.map(|o| o.status.success()).unwrap_or(false) {
        skip("`docker info` failed (no engine)");
        return None;
    }
    if let Ok(image) = std::env::var("AIRLOCK_TEST_IMAGE") {
        config.image = image;
    }
    let backend = DockerBackend::connect(config)
        .await
        .expect("connect to the engine");
    if let Err(e) = backend.check_image(&backend.config.image).await {
        skip(&e.to_string());
        return None;
    }
    Some(backend)
}

async fn backend() -> Option<DockerBackend> {
    backend_with(DockerConfig {
        startup_timeout_seconds: 60,
        spare_networks: 0,
        ..Default::default()
    })
    .await
}

fn spec(tag: &str) -> SandboxSpec {
    SandboxSpec {
        id: format!("sb-unit-{tag}-{:08x}", rand::random::<u32>()),
        owner: TEST_OWNER.into(),
        image: None,
        resources: Resources::default(),
        env: BTreeMap::from([("AIRLOCK_TEST".to_string(), "1".to_string())]),
        files: Vec::new(),
        agent_token: format!("tok-{:016x}", rand::random::<u64>()),
        ttl_s: 600,
        workspace: None,
        cache_tenant: None,
    }
}

fn cli(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Containers and networks still carrying the sandbox's label.
fn leftovers(id: &str) -> (String, String) {
    let filter = format!("label={SANDBOX_LABEL}={id}");
    (
        cli(&["ps", "-aq", "--filter", &filter]),
        cli(&["network", "ls", "-q", "--filter", &filter]),
    )
}

/// Removes everything labelled with the sandbox id when dropped (test passed or not).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (containers, networks) = leftovers(&self.0);
        for c in containers.split_whitespace() {
            cli(&["rm", "-f", "-v", c]);
        }
        for n in networks.split_whitespace() {
            cli(&["network", "rm", n]);
        }
        let dir = std::env::temp_dir()
            .join("airlock-docker-files")
            .join(&self.0);
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(default_runtime_dir().join(&self.0));
    }
}

async fn sh(b: &DockerBackend, h: &SandboxHandle, command: &str) -> ExecResult {
    let req = ExecRequest {
        command: Some(command.into()),
        timeout_ms: Some(60_000),
        ..Default::default()
    };
    b.exec(h, req).await.expect("exec")
}

fn assert_gone(id: &str) {
    let (containers, networks) = leftovers(id);
    assert!(
        containers.is_empty(),
        "containers left for {id}: {containers}"
    );
    assert!(networks.is_empty(), "networks left for {id}: {networks}");
}

#[test]
fn config_parses_with_defaults_and_rejects_unknown_fields() {
    let c: DockerConfig =
        serde_json::from_str(r#"{"image":"x:1","proxy":{"container":"vault-proxy"}}"#).unwrap();
    assert_eq!(c.image, "x:1");
    assert_eq!(c.agent_port, 7700);
    assert_eq!(c.proxy.unwrap().container, "vault-proxy");
    assert_eq!(DockerConfig::default().image, "airlock-sandbox:latest");
    assert!(serde_json::from_str::<DockerConfig>(r#"{"imgae":"x"}"#).is_err());
}

#[test]
fn the_network_mode_defaults_to_none_unless_a_proxy_container_needs_one() {
    let parse = |json: &str| serde_json::from_str::<DockerConfig>(json).unwrap();
    assert_eq!(parse("{}").sandbox_network(), SandboxNetwork::None);
    let proxy = r#""proxy":{"container":"vault-proxy"}"#;
    assert_eq!(
        parse(&format!("{{{proxy}}}")).sandbox_network(),
        SandboxNetwork::Internal
    );
    for (value, mode) in [
        ("none", SandboxNetwork::None),
        ("internal", SandboxNetwork::Internal),
    ] {
        let c = parse(&format!(r#"{{"network":"{value}"}}"#));
        assert_eq!(c.sandbox_network(), mode);
    }
    assert!(serde_json::from_str::<DockerConfig>(r#"{"network":"bridge"}"#).is_err());
}

#[test]
fn invalid_specs_are_refused_before_touching_the_engine() {
    let check = |edit: &dyn Fn(&mut SandboxSpec)| {
        let mut s = spec("v");
        edit(&mut s);
        matches!(validate(&s), Err(BackendError::Invalid(_)))
    };
    assert!(!check(&|_| {}));
    assert!(check(&|s| s.id = "../x".into()));
    assert!(check(&|s| s.id = String::new()));
    assert!(check(&|s| s.resources.cpus = 0.0));
    assert!(check(&|s| s.resources.memory_mb = 1));
    assert!(check(&|s| s.resources.pids = 0));
    assert!(check(&|s| s.files = vec![("rel/path".into(), Bytes::new())]));
    assert!(check(
        &|s| s.files = vec![("/a/../etc/passwd".into(), Bytes::new())]
    ));
}

#[tokio::test]
async fn provision_exec_destroy_leaves_no_container_or_network() {
    let Some(b) = backend().await else { return };
    let mut timings = Vec::new();
    for round in 0..3 {
        let s = spec(&format!("basic{round}"));
        let _cleanup = Cleanup(s.id.clone());
        let started = Instant::now();
        let h = b.provision(&s).await.expect("provision");
        timings.push(started.elapsed());

        assert_eq!(h.backend, BackendKind::Docker);
        let url = h.agent_url.as_deref().unwrap();
        let dir = b.runtime_dir(&s.id);
        assert_eq!(
            url,
            format!("unix:{}", dir.join(AGENT_SOCKET).display()),
            "the agent is reached over its unix socket"
        );
        // (The network keys depend on the mode: see `limits_and_hardening_are_in_the_host_config`.)
        for key in [EXTRA_CONTAINER_ID, EXTRA_RUNTIME_DIR] {
            assert!(
                h.extra.contains_key(key),
                "handle.extra lacks {key}: {:?}",
                h.extra
            );
        }
        let r = sh(&b, &h, "echo hello; echo oops >&2; exit 3").await;
        assert_eq!(
            (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
            ("hello\n", "oops\n", Some(3))
        );
        let r = sh(&b, &h, "pwd; echo $AIRLOCK_TEST").await;
        assert_eq!(r.stdout, "/workspace\n1\n");
        assert!(b.is_alive(&h).await);
        assert!(
            b.list_labelled()
                .await
                .unwrap()
                .iter()
                .any(|f| f.id == s.id)
        );

        b.destroy(&h).await.expect("destroy");
        assert_gone(&s.id);
        assert!(!dir.exists(), "runtime dir outlives the sandbox");
        assert!(!b.is_alive(&h).await);
        b.destroy(&h).await.expect("destroying again is Ok");
    }
    eprintln!("docker provision (create container, start, agent /health): {timings:?}");
}

#[tokio::test]
async fn files_round_trip_through_the_agent() {
    let Some(b) = backend().await else { return };
    let s = spec("files");
    let _cleanup = Cleanup(s.id.clone());
    let h = b.provision(&s).await.expect("provision");

    // Relative paths land in the workdir; parents are created; bytes come back intact.
    let payload = Bytes::from((0u8..=255).cycle().take(300_000).collect::<Vec<u8>>());
    b.write_file(&h, "src/deep/data.bin", payload.clone())
        .await
        .expect("write");
    assert_eq!(b.read_file(&h, "src/deep/data.bin").await.unwrap(), payload);
    let r = sh(
        &b,
        &h,
        "sha256sum /workspace/src/deep/data.bin | cut -c1-16",
    )
    .await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    assert_eq!(r.stdout.len(), 17, "the file is visible to commands: {r:?}");

    b.write_file(&h, "src/a.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let mut names: Vec<_> = b
        .list_files(&h, "src")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.is_dir, e.size))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("a.txt".to_string(), false, 5),
            ("deep".to_string(), true, names[1].2)
        ]
    );

    // Missing files and the read-only root are clean agent errors, not transport failures.
    match b.read_file(&h, "nope.txt").await {
        Err(BackendError::Agent { status: 404, .. }) => {}
        other => panic!("missing file: {other:?}"),
    }
    match b
        .write_file(&h, "/etc/evil", Bytes::from_static(b"x"))
        .await
    {
        Err(BackendError::Agent { status, .. }) if (400..500).contains(&status) => {}
        other => panic!("write to the read-only root: {other:?}"),
    }
    b.destroy(&h).await.expect("destroy");
}

mod hardening;
mod network;
mod spare;
