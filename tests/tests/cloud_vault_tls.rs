//! Issue 10, the embedded vault's TLS proxy listener: cloud sandboxes (the E2B and Daytona
//! fakes, which run commands on this host) reach the real `brain serve`'s embedded proxy
//! through `https://sandbox:token@<public addr>`, across a relay that stands for the internet
//! and records what crossed it. Needs `cargo build --workspace --bins` first.
//!
//! - The relay sees only TLS (a ClientHello first), never `CONNECT`, `Proxy-Authorization`,
//!   the proxy token or the stub.
//! - The swap still happens (the upstream gets the real token, the sandbox only its stub,
//!   reflected secrets are scrubbed) and is audited.
//! - A brain whose embedded vault has no TLS listener refuses cloud sandboxes with a vault
//!   grant (plain http), naming the fix, before anything is created.

use std::time::Duration;

use airlock_tests::fake_daytona::FakeDaytona;
use airlock_tests::fake_e2b::FakeE2b;
use airlock_tests::upstream::{BOUND_HOST, Upstream};
use airlock_tests::vault::{
    CLOUD_PROXY_IP, CaptureRelay, REAL_TOKEN_ENV, add_tls_listener, tls_listener_addr,
    write_vault_config,
};
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
use base64::Engine as _;
use serde_json::{Value, json};

const REAL_TOKEN: &str = "ghp_TLSrealTLSrealTLSrealTLSrealTLSrealTL";

fn proxy() -> String {
    format!("{CLOUD_PROXY_IP}:8443")
}

fn options(vault: &std::path::Path, e2b: &FakeE2b, daytona: &FakeDaytona) -> BrainOptions {
    BrainOptions {
        backend: "e2b".into(),
        extra_yaml: format!(
            "vault:\n  config: {}\nsandbox:\n  allowed_backends: [daytona]\n  e2b:\n    api_url: {}\n    envd_url: {}\n    proxy_url: \"{p}\"\n    retry_base_ms: 10\n  daytona:\n    api_url: {}\n    proxy_url: \"{p}\"\n    retry_base_ms: 10\n",
            vault.display(),
            e2b.api_url,
            e2b.envd_url,
            daytona.api_url,
            p = proxy(),
        ),
        env: vec![
            ("E2B_API_KEY".into(), e2b.api_key.clone()),
            ("DAYTONA_API_KEY".into(), daytona.api_key.clone()),
            (REAL_TOKEN_ENV.into(), REAL_TOKEN.into()),
        ],
        ..BrainOptions::default()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn cloud_sandboxes_reach_the_embedded_vault_over_tls_only() {
    let upstream = Upstream::start(REAL_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = write_vault_config(dir.path(), &upstream);
    let listener_ca = add_tls_listener(&vault);
    let e2b = FakeE2b::start().await;
    let daytona = FakeDaytona::start(Duration::from_secs(60)).await;
    let brain = BrainProcess::start(options(&vault, &e2b, &daytona)).await;
    let tls = tls_listener_addr(&brain.log())
        .unwrap_or_else(|| panic!("no TLS listener in the log:\n{}", brain.log()));
    let relay = CaptureRelay::start(tls).await;
    e2b.route_public(&proxy(), relay.addr);
    daytona.route_public(&proxy(), relay.addr);

    for backend in ["e2b", "daytona"] {
        let before = relay.client_bytes().len();
        let (status, created) = brain
            .post_json(
                "/v1/sandboxes",
                json!({"backend": backend, "credentials": ["GITHUB_TOKEN"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}\n{}", brain.log());
        let id = created["id"].as_str().unwrap().to_string();
        // What the provider was given: the TLS proxy URL, the stub, the bundle.
        let (env, bundle, curlrc) = match backend {
            "e2b" => {
                let sb = e2b.sandboxes().pop().unwrap();
                (
                    sb.env_vars.clone(),
                    e2b.file(&sb.id, "/etc/airlock/ca.pem"),
                    e2b.file(&sb.id, "/etc/airlock/.curlrc"),
                )
            }
            _ => {
                let sb = daytona.sandboxes().pop().unwrap();
                (
                    sb.env.clone(),
                    daytona.file(&sb.id, "/etc/airlock/ca.pem"),
                    daytona.file(&sb.id, "/etc/airlock/.curlrc"),
                )
            }
        };
        let url = env["HTTPS_PROXY"].clone();
        let token = url
            .strip_prefix(&format!("https://{id}:"))
            .and_then(|r| r.strip_suffix(&format!("@{}", proxy())))
            .unwrap_or_else(|| panic!("{backend}: not a TLS proxy URL: {url}"))
            .to_string();
        let stub = env["GITHUB_TOKEN"].clone();
        assert_ne!(stub, REAL_TOKEN);
        let bundle = String::from_utf8(bundle.expect("CA bundle uploaded")).unwrap();
        assert!(
            bundle.contains(listener_ca.trim()),
            "{backend}: listener CA"
        );
        assert!(!bundle.contains("PRIVATE KEY"), "{backend}: a key shipped");
        assert_eq!(
            curlrc.as_deref(),
            Some(&b"proxy-cacert = \"/etc/airlock/ca.pem\"\n"[..])
        );

        // The sandbox calls the bound API with its stub, through the TLS proxy URL. (The
        // fakes run commands on this host, so the bundle is read under AIRLOCK_FAKE_ROOT;
        // a real sandbox's curl finds it through CURL_HOME's .curlrc.)
        let curl = |path: &str| {
            format!(
                "curl -sS --max-time 20 --proxy-cacert \"$AIRLOCK_FAKE_ROOT$GIT_PROXY_SSL_CAINFO\" \
                 --cacert \"$AIRLOCK_FAKE_ROOT$SSL_CERT_FILE\" -H \"Authorization: Bearer $GITHUB_TOKEN\" \
                 https://{BOUND_HOST}:{}{path}",
                upstream.port
            )
        };
        let command = format!("{}; echo; {}", curl("/user"), curl("/echo-token"));
        let (status, r) = brain
            .post_json(
                &format!("/v1/sandboxes/{id}/exec"),
                json!({"command": command}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{r}");
        let out = format!("{}{}", r["stdout"], r["stderr"]);
        assert_eq!(r["exit_code"], 0, "{backend}: {r}");
        assert!(out.contains("ok /user"), "{backend}: {out}");
        assert!(
            !out.contains(REAL_TOKEN),
            "{backend}: the secret reached the sandbox"
        );
        assert!(
            out.contains(&stub),
            "{backend}: reflected secret not scrubbed: {out}"
        );
        let seen = upstream.with_path("/user");
        assert_eq!(
            seen.last().and_then(|s| s.authorization.clone()),
            Some(format!("Bearer {REAL_TOKEN}")),
            "{backend}: the swap"
        );

        // What crossed the "internet": TLS records only.
        let conns: Vec<Vec<u8>> = relay.client_bytes()[before..].to_vec();
        assert!(!conns.is_empty(), "{backend}: nothing crossed the relay");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{token}"));
        for c in &conns {
            // A TLS handshake record (0x16, version 3.x) holding a ClientHello (type 1).
            assert!(
                c.len() > 6 && c[0] == 0x16 && c[1] == 0x03 && c[5] == 0x01,
                "{backend}: not a ClientHello first: {:?}",
                &c[..c.len().min(16)]
            );
            for needle in [
                &b"CONNECT"[..],
                b"Proxy-Authorization",
                b"proxy-authorization",
                token.as_bytes(),
                basic.as_bytes(),
                stub.as_bytes(),
                REAL_TOKEN.as_bytes(),
                BOUND_HOST.as_bytes(),
            ] {
                assert!(
                    !contains(c, needle),
                    "{backend}: {:?} crossed in clear",
                    String::from_utf8_lossy(needle)
                );
            }
        }

        // Audited, through the brain.
        let (status, records) = brain
            .get_json(&format!("/v1/audit/egress?sandbox={id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{records}");
        let swapped = records.as_array().unwrap().iter().any(|r: &Value| {
            r["event"] == "swap" && r["decision"] == "allow" && r["credential"] == "GITHUB_TOKEN"
        });
        assert!(swapped, "{backend}: no swap record: {records}");
        assert!(!records.to_string().contains(REAL_TOKEN));
        let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK);
    }
}

/// Fail closed: an embedded vault without a TLS listener gives cloud sandboxes only a plain
/// http proxy URL, so provisioning refuses them (with and without credentials: the proxy
/// token alone is a bearer credential for the sandbox's egress) and names the fix; nothing
/// is created at either provider. Other backends keep the plain listener.
#[tokio::test]
async fn cloud_sandboxes_are_refused_a_plain_http_proxy() {
    let upstream = Upstream::start(REAL_TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = write_vault_config(dir.path(), &upstream);
    let e2b = FakeE2b::start().await;
    let daytona = FakeDaytona::start(Duration::from_secs(60)).await;
    let brain = BrainProcess::start(options(&vault, &e2b, &daytona)).await;
    assert!(
        brain.log().contains("no TLS"),
        "no startup warning:\n{}",
        brain.log()
    );
    for backend in ["e2b", "daytona"] {
        for body in [
            json!({"backend": backend, "credentials": ["GITHUB_TOKEN"]}),
            json!({"backend": backend}),
        ] {
            let (status, err) = brain.post_json("/v1/sandboxes", &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
            let msg = err["error"]["message"].as_str().unwrap_or_default();
            for needle in [
                "plain http",
                "listen_tls",
                "vault.remote.tls_url",
                &format!("sandbox.{backend}.proxy_url"),
            ] {
                assert!(msg.contains(needle), "{body}: {needle} not in {msg}");
            }
        }
    }
    assert_eq!(e2b.creates(), 0);
    assert!(daytona.sandboxes().is_empty());
    assert_eq!(daytona.creates(), 0);
}
