//! End to end on the real docker engine: workspace snapshots and persistent workspaces
//! (DESIGN.md, "Warm pools and snapshots"; issue 16, items 2 and 4).
//!
//! A snapshot is the sandbox's `/workspace` as a tar imported into a local image
//! `<container_prefix>snapshot:<id>`; a sandbox `from_snapshot` gets a fresh grant and the
//! files. A persistent workspace is a named volume `<container_prefix>ws-<name>` mounted at
//! `/workspace` instead of the tmpfs. Each test names containers, networks, images and volumes
//! with its own prefix and removes them when done. Skips when no engine or image is there,
//! unless `AIRLOCK_REQUIRE_DOCKER=1`.

use std::time::Duration;

use airlock_tests::upstream::Upstream;
use airlock_tests::vault::{self, DockerPrefix, brain_options, docker_cli, write_vault_config};
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
use serde_json::{Value, json};

const REAL_TOKEN: &str = "ghp_REALsecretVALUE0123456789abcdefghij";

fn docker_ready() -> bool {
    vault::docker_ready("snapshots e2e")
}

/// Per-test prefix for everything the brain creates on the engine (removed on drop), and the
/// YAML that sets it plus an optional pool.
struct Naming(DockerPrefix);

impl Naming {
    fn new() -> Self {
        Self(DockerPrefix::new("alksnap"))
    }

    fn yaml(&self, pool: usize) -> String {
        let mut yaml = self.0.docker_yaml();
        if pool > 0 {
            yaml.push_str(&format!("pools:\n  - {{backend: docker, size: {pool}}}\n"));
        }
        yaml
    }
}

impl std::ops::Deref for Naming {
    type Target = DockerPrefix;
    fn deref(&self) -> &DockerPrefix {
        &self.0
    }
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
            json!({"command": command, "timeout_s": 120}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "exec: {v}");
    (
        v["exit_code"].as_i64().unwrap_or(-1),
        v["stdout"].as_str().unwrap_or_default().to_string(),
        v["stderr"].as_str().unwrap_or_default().to_string(),
    )
}

fn env_value(env: &str, key: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} not in env: {env}"))
        .to_string()
}

/// Every file of a snapshot image, as one tar (`docker export` of a container made from it).
fn image_files(image_ref: &str) -> Vec<u8> {
    let name = format!("alksnapexport{:08x}", std::process::id());
    docker_cli(&["rm", "-f", &name]);
    let created = docker_cli(&["create", "--name", &name, image_ref, "/none"]);
    assert!(!created.is_empty(), "docker create {image_ref}");
    let out = std::process::Command::new("docker")
        .args(["export", &name])
        .output()
        .expect("docker export");
    docker_cli(&["rm", "-f", &name]);
    assert!(out.status.success());
    out.stdout
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn snapshot_holds_no_grant_and_a_restored_sandbox_gets_fresh_stubs_while_old_ones_are_refused()
 {
    if !docker_ready() {
        return;
    }
    let naming = Naming::new();
    let upstream = Upstream::start(REAL_TOKEN).await;
    let port = upstream.port;
    let dir = tempfile::tempdir().unwrap();
    let vault_yaml = write_vault_config(dir.path(), &upstream);
    let mut opts = brain_options("docker", &vault_yaml, REAL_TOKEN);
    // A pool of one: the restore also works on a claimed sandbox.
    opts.extra_yaml.push_str(&naming.yaml(1));
    let brain = BrainProcess::start(opts).await;

    let a = provision(&brain, json!({"credentials": ["GITHUB_TOKEN"]})).await;
    let (_, env_a, _) = sh(&brain, &a, "env").await;
    let stub_a = env_value(&env_a, "GITHUB_TOKEN");
    let proxy_a = env_value(&env_a, "HTTPS_PROXY");
    let (code, _, err) = sh(
        &brain,
        &a,
        "mkdir -p repo/src repo/target && echo 'fn main() {}' > repo/src/main.rs \
         && head -c 3000000 /dev/urandom > repo/target/blob && chmod 750 repo/src \
         && ln -s src/main.rs repo/link && sha256sum repo/target/blob | cut -c1-16 > /tmp/sum",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (_, sum, _) = sh(&brain, &a, "cat /tmp/sum").await;

    // A workspace file holding the stub or the proxy token is refused, naming what it holds.
    for (leak, what) in [
        ("echo \"$GITHUB_TOKEN\" > repo/.env", "GITHUB_TOKEN stub"),
        (
            "git config --file repo/cfg http.proxy \"$HTTPS_PROXY\"",
            "proxy token",
        ),
    ] {
        let (code, _, err) = sh(&brain, &a, leak).await;
        assert_eq!(code, 0, "{err}");
        let (status, v) = brain
            .post_json(&format!("/v1/sandboxes/{a}/snapshot"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains(what), "{v}");
        assert!(!v.to_string().contains(&stub_a), "{v}");
        let (code, _, _) = sh(&brain, &a, "rm -f repo/.env repo/cfg").await;
        assert_eq!(code, 0);
    }
    assert!(naming.images().is_empty(), "{:?}", naming.images());

    let (status, snap) = brain
        .post_json(&format!("/v1/sandboxes/{a}/snapshot"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snap}\n{}", brain.log());
    let snap_id = snap["snapshot"].as_str().expect("snapshot id").to_string();
    assert!(snap["size_bytes"].as_u64().unwrap() > 3_000_000, "{snap}");
    let images = naming.images();
    assert_eq!(images, vec![format!("{}snapshot:{snap_id}", naming.prefix)]);

    // The stored snapshot holds the files and nothing of the grant.
    let files = image_files(&images[0]);
    assert!(contains(&files, "workspace/repo/src/main.rs"));
    for secret in [
        stub_a.as_str(),
        proxy_a.as_str(),
        REAL_TOKEN,
        "AIRLOCK_AGENT_TOKEN",
    ] {
        assert!(!contains(&files, secret), "the snapshot holds {secret}");
    }
    let token_a = proxy_a
        .split('@')
        .next()
        .and_then(|s| s.rsplit(':').next())
        .unwrap()
        .to_string();
    assert!(token_a.len() >= 16 && !contains(&files, &token_a));

    // Restored: the same files, a fresh grant.
    let b = provision(
        &brain,
        json!({"credentials": ["GITHUB_TOKEN"], "from_snapshot": snap_id}),
    )
    .await;
    let (code, out, err) = sh(
        &brain,
        &b,
        "cat repo/src/main.rs && sha256sum repo/target/blob | cut -c1-16 && readlink repo/link \
         && stat -c %a repo/src && touch repo/new && echo writable",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("fn main() {{}}\n{}src/main.rs\n750\nwritable\n", sum),
        "{}",
        brain.log()
    );
    let (_, env_b, _) = sh(&brain, &b, "env").await;
    let stub_b = env_value(&env_b, "GITHUB_TOKEN");
    let proxy_b = env_value(&env_b, "HTTPS_PROXY");
    assert_ne!(stub_b, stub_a);
    assert_ne!(proxy_b, proxy_a);
    assert!(proxy_b.contains(&format!("http://{b}:")));

    // The new stub works toward the bound host.
    let curl = |auth: &str, extra: &str| {
        format!(
            "curl -sS -m 20 {extra} -w '\\n%{{http_code}}' https://api.github.test:{port}/user -H 'Authorization: Bearer {auth}'"
        )
    };
    let (_, out, err) = sh(&brain, &b, &curl(&stub_b, "")).await;
    assert!(out.ends_with("200"), "{out} {err}\n{}", brain.log());
    // The old sandbox's stub is refused by the proxy while that sandbox lives (foreign stub)…
    let (_, out, _) = sh(&brain, &b, &curl(&stub_a, "")).await;
    assert!(out.trim_end().ends_with("403"), "{out}");
    // …and the old proxy credentials do not open the proxy at all.
    let (_, out, _) = sh(&brain, &b, &curl(&stub_b, &format!("-x '{proxy_a}'"))).await;
    assert!(!out.trim_end().ends_with("200"), "{out}");
    let (status, _) = brain.delete(&format!("/v1/sandboxes/{a}")).await;
    assert_eq!(status, StatusCode::OK);
    // Once the old sandbox is gone its stub is nothing: never swapped for the secret.
    let _ = sh(&brain, &b, &curl(&stub_a, "")).await;
    let _ = sh(&brain, &b, &curl(&stub_b, &format!("-x '{proxy_a}'"))).await;
    let seen = upstream.with_path("/user");
    let real = format!("Bearer {REAL_TOKEN}");
    assert_eq!(
        seen.iter()
            .filter(|s| s.authorization.as_deref() == Some(real.as_str()))
            .count(),
        1,
        "only the fresh stub was swapped: {seen:?}"
    );

    // Bad requests name the problem and leave nothing behind.
    let (status, v) = brain
        .post_json("/v1/sandboxes", &json!({"from_snapshot": "snap-nope"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("no snapshot snap-nope"), "{v}");
    let (status, v) = brain
        .post_json(
            "/v1/sandboxes",
            &json!({"from_snapshot": snap_id, "image": "other:latest"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // Deleting the snapshot removes its image; a second delete is a 404.
    let (status, _) = brain.delete(&format!("/v1/snapshots/{snap_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(naming.images().is_empty());
    let (status, _) = brain.delete(&format!("/v1/snapshots/{snap_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let _ = brain.delete(&format!("/v1/sandboxes/{b}")).await;
}

#[tokio::test]
async fn a_persistent_workspace_outlives_its_sandbox_and_is_used_by_one_sandbox_at_a_time() {
    if !docker_ready() {
        return;
    }
    let naming = Naming::new();
    let brain = BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        extra_yaml: naming.yaml(0),
        ..Default::default()
    })
    .await;
    let ws = "repo-main";
    let first = provision(&brain, json!({"workspace": ws})).await;
    let (code, _, err) = sh(
        &brain,
        &first,
        "mkdir -p target && echo built > target/out && id -u && stat -c %u /workspace",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(naming.volumes(), vec![format!("{}ws-{ws}", naming.prefix)]);

    // One sandbox at a time.
    let (status, v) = brain
        .post_json("/v1/sandboxes", &json!({"workspace": ws}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("in use"), "{v}");

    let (status, _) = brain.delete(&format!("/v1/sandboxes/{first}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(naming.volumes().len(), 1, "the volume outlives the sandbox");

    let second = provision(&brain, json!({"workspace": ws})).await;
    let (code, out, _) = sh(&brain, &second, "cat target/out").await;
    assert_eq!((code, out.as_str()), (0, "built\n"));
    // Another name is another volume, empty.
    let other = provision(&brain, json!({"workspace": "other"})).await;
    let (_, out, _) = sh(&brain, &other, "ls -A /workspace | wc -l").await;
    assert_eq!(out.trim(), "0");

    let (status, v) = brain
        .post_json("/v1/sandboxes", &json!({"workspace": "Bad/Name"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // Concurrent provisions of one free workspace: exactly one wins (the store's lease is
    // atomic; the label check alone let two through), the others get 409.
    let body = json!({"workspace": "race"});
    let race =
        futures_util::future::join_all((0..5).map(|_| brain.post_json("/v1/sandboxes", &body)))
            .await;
    let won: Vec<&Value> = race
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(won.len(), 1, "{race:?}");
    assert!(
        race.iter()
            .all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{race:?}"
    );
    let winner = won[0]["id"].as_str().unwrap().to_string();
    let (status, _) = brain.delete(&format!("/v1/sandboxes/{winner}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = brain.delete("/v1/workspaces/race").await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Deleting a workspace in use is refused; once free it is removed.
    let (status, v) = brain.delete(&format!("/v1/workspaces/{ws}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    for id in [&second, &other] {
        let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    for name in [ws, "other"] {
        let (status, v) = brain.delete(&format!("/v1/workspaces/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(naming.volumes().is_empty(), "{:?}", naming.volumes());
}
