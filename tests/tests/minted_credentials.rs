//! End to end: typed credentials the proxy mints (`github_app`, `oauth2_refresh`), used by
//! real clients (`git`, `curl`) inside real docker sandboxes of a real brain (embedded vault
//! proxy), against local fakes that verify what the real services verify:
//! - the fake GitHub issues installation tokens only for a JWT that verifies with the App's
//!   public key (generated here by `openssl`, never committed) and accepts them until they
//!   expire;
//! - the fake OAuth server expires access tokens after 4 s and rotates refresh tokens (an
//!   old one → `invalid_grant`).
//!
//! Skips (printing why) when no engine answers or the image is missing, unless
//! `AIRLOCK_REQUIRE_DOCKER=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_tests::fake_github::{API_HOST, FakeGithub, GIT_HOST};
use airlock_tests::fake_oauth::{self, FakeOAuth};
use airlock_tests::vault::DockerCleanup as Cleanup;
use airlock_tests::{BrainOptions, BrainProcess, StatusCode};
use serde_json::{Value, json};

const APP_ID: u64 = 31337;
const INSTALLATION_ID: u64 = 4242;

fn docker_ready() -> bool {
    airlock_tests::vault::docker_ready("minted credentials e2e")
}

/// A fresh App key: (private key PEM file, public key as PKCS#1 DER), made by openssl.
fn app_key(dir: &Path) -> (PathBuf, Vec<u8>) {
    let key = dir.join("app.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl genrsa");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::process::Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl rsa");
    assert!(public.status.success());
    (key, public.stdout)
}

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
    (id.clone(), Cleanup(id))
}

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

fn audit(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line"))
        .collect()
}

fn common_yaml(upstream_ca: &str, hosts: &[&str]) -> String {
    let resolve = hosts
        .iter()
        .map(|h| format!("\"{h}\": \"127.0.0.1\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "listen: 127.0.0.1:0\n\
         ca: {{ cert: ca.pem, key: ca-key.pem }}\n\
         upstream_roots: [{upstream_ca}]\n\
         audit_log: audit.jsonl\n\
         egress: {{ default: deny, allow_hosts: [{allow}] }}\n\
         network:\n  allow_private: true\n  resolve: {{ {resolve} }}\n",
        allow = hosts.join(", "),
    )
}

/// Decrypts one entry of the store as its documented format says (AES-256-GCM, AAD
/// `airlock-vault-store-v1\n<name>\n<hosts joined by ",">`), independently of the proxy.
fn decrypt_store_entry(path: &Path, key_hex: &str, name: &str) -> String {
    use base64::Engine as _;
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let entry = file["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .expect("entry");
    let hosts: Vec<&str> = entry["allowed_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let key_bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key_bytes).unwrap(),
    );
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(&b64(&entry["nonce"])).unwrap();
    let aad = format!("airlock-vault-store-v1\n{name}\n{}", hosts.join(","));
    let mut buf = b64(&entry["ciphertext"]);
    let plain = key
        .open_in_place(nonce, ring::aead::Aad::from(aad.as_bytes()), &mut buf)
        .expect("decrypts");
    String::from_utf8(plain.to_vec()).unwrap()
}

#[tokio::test]
async fn github_app_tokens_are_minted_renewed_and_swapped_for_git_push_and_the_api() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public_der) = app_key(dir.path());
    let github = FakeGithub::start(&["brain-token-unused-0123456789"]).await;
    // Short-lived installation tokens, so the test sees a renewal (GitHub: one hour).
    github.install_app(APP_ID, INSTALLATION_ID, public_der, Duration::from_secs(20));
    github.create_repo("acme", "widgets");
    std::fs::write(dir.path().join("github-ca.pem"), &github.ca_pem).unwrap();
    let port = github.port;
    let vault = dir.path().join("vault.yaml");
    std::fs::write(
        &vault,
        format!(
            "{common}credentials:\n  GH_APP:\n    type: github_app\n    app_id: {APP_ID}\n    installation_id: {INSTALLATION_ID}\n    private_key_file: {key}\n    api_base: \"https://{API_HOST}:{port}\"\n    allowed_hosts: [\"{GIT_HOST}:{port}\", \"{API_HOST}:{port}\"]\n",
            common = common_yaml("github-ca.pem", &[GIT_HOST, API_HOST]),
            key = key_file.display(),
        ),
    )
    .unwrap();
    let brain = BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        extra_yaml: format!("vault:\n  config: {}\n", vault.display()),
        ..Default::default()
    })
    .await;
    let (id, _cleanup) = provision(&brain, &["GH_APP"]).await;

    // One stable `ghs_` stub under three names.
    let (_, env, _) = sh(
        &brain,
        &id,
        "printf '%s %s %s' \"$GH_APP\" \"$GH_TOKEN\" \"$GITHUB_TOKEN\"",
    )
    .await;
    let names: Vec<&str> = env.split(' ').collect();
    let stub = names[0].to_string();
    assert!(stub.starts_with("ghs_") && stub.len() == 40, "{env}");
    assert_eq!(names, vec![stub.as_str(); 3], "{env}");
    assert!(
        github.installation_tokens().is_empty(),
        "minted lazily, on first use"
    );

    // git clone + push and the REST API, with the stub.
    let git = format!("{GIT_HOST}:{port}");
    let api = format!("https://{API_HOST}:{port}");
    let push = format!(
        "set -e; export GIT_TERMINAL_PROMPT=0; cd /tmp && \
         git clone -q \"https://x-access-token:$GH_TOKEN@{git}/acme/widgets.git\" w && cd w && \
         git checkout -q -b feature && echo one > ONE.md && git add ONE.md && \
         git -c user.name=t -c user.email=t@t commit -q -m one && git push -q origin feature && echo pushed"
    );
    let (code, out, err) = sh(&brain, &id, &push).await;
    assert_eq!((code, out.trim()), (0, "pushed"), "{err}\n{}", brain.log());
    let pr = format!(
        "curl -sS -X POST -H \"Authorization: Bearer $GH_TOKEN\" -H 'User-Agent: t' \
         -d '{{\"title\":\"t\",\"head\":\"feature\",\"base\":\"main\",\"draft\":true}}' \
         -w '\\n%{{http_code}}' {api}/repos/acme/widgets/pulls"
    );
    let (_, out, err) = sh(&brain, &id, &pr).await;
    assert!(out.ends_with("\n201"), "{out} {err}");
    let first = github.installation_tokens();
    // Renewal happens after half of the 20 s lifetime: clone, push and PR ran well before.
    assert_eq!(
        first.len(),
        1,
        "one token for all requests so far: {first:?}"
    );
    assert_eq!(
        github.pulls()[0].token,
        first[0],
        "the PR reached GitHub with the minted token"
    );
    assert!(
        github.jwt_rejections().is_empty(),
        "{:?}",
        github.jwt_rejections()
    );
    let seen = github.seen();
    assert!(
        seen.iter()
            .filter(|s| s.path.ends_with("/git-receive-pack"))
            .all(|s| s.token.as_deref() == Some(first[0].as_str())),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|s| s
            .authorization
            .as_deref()
            .is_none_or(|a| !a.contains(&stub))),
        "the stub never reached GitHub"
    );

    // Renewal before expiry: past half the lifetime, the next request gets a new token and
    // the sandbox keeps its stub.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (code, out, err) = sh(
        &brain,
        &id,
        "cd /tmp/w && echo two > TWO.md && git add TWO.md && git -c user.name=t -c user.email=t@t commit -q -m two && GIT_TERMINAL_PROMPT=0 git push -q origin feature && echo pushed",
    )
    .await;
    assert_eq!((code, out.trim()), (0, "pushed"), "{err}");
    let tokens = github.installation_tokens();
    assert_eq!(tokens.len(), 2, "renewed once: {tokens:?}");
    let last_push = github
        .seen()
        .into_iter()
        .rfind(|s| s.path.ends_with("/git-receive-pack"))
        .unwrap();
    assert_eq!(
        last_push.token.as_deref(),
        Some(tokens[1].as_str()),
        "the new token was used"
    );
    assert_eq!(
        github
            .file_on_branch("acme", "widgets", "feature", "TWO.md")
            .as_deref(),
        Some("two\n")
    );
    let (_, env2, _) = sh(&brain, &id, "printf %s \"$GH_TOKEN\"").await;
    assert_eq!(env2, stub);

    // Attack: the sandbox sends its stub to the token endpoint itself → refused, audited.
    let (_, out, _) = sh(
        &brain,
        &id,
        &format!("curl -sS -X POST -H \"Authorization: Bearer $GH_TOKEN\" -H 'User-Agent: t' -w '\\n%{{http_code}}' {api}/app/installations/{INSTALLATION_ID}/access_tokens"),
    )
    .await;
    assert!(
        out.ends_with("\n403") && out.contains("credential_path_not_allowed"),
        "{out}"
    );
    // A made-up JWT (no stub) is only egress: GitHub refuses it (401), nothing is minted.
    let (_, out, _) = sh(
        &brain,
        &id,
        &format!("curl -sS -X POST -H 'Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln' -H 'User-Agent: t' -w '\\n%{{http_code}}' {api}/app/installations/{INSTALLATION_ID}/access_tokens"),
    )
    .await;
    assert!(out.ends_with("\n401"), "{out}");
    assert_eq!(github.installation_tokens().len(), 2);

    // Audit: swaps name the type, the token fingerprint and expiry; no value, no stub.
    let records = audit(dir.path());
    let swaps: Vec<&Value> = records.iter().filter(|r| r["event"] == "swap").collect();
    assert!(!swaps.is_empty());
    for s in &swaps {
        let reason = s["reason"].as_str().unwrap();
        assert!(
            reason.contains("type=github_app")
                && reason.contains("token=sha256:")
                && reason.contains("expires_at="),
            "{s}"
        );
    }
    let fps: std::collections::BTreeSet<&str> = swaps
        .iter()
        .map(|s| {
            s["reason"]
                .as_str()
                .unwrap()
                .split("token=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(fps.len(), 2, "two tokens named: {fps:?}");
    assert!(records.iter().any(|r| r["event"] == "block"
        && r["credential"] == "GH_APP"
        && r["reason"].as_str().unwrap().contains("token_endpoint")));
    let raw = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    for t in tokens.iter().chain([&stub]) {
        assert!(
            !raw.contains(t.as_str()),
            "a token or the stub is in the audit log"
        );
        assert!(
            !brain.log().contains(t.as_str()),
            "a token or the stub is in the brain log"
        );
    }
    let (_, env_all, _) = sh(&brain, &id, "env; cat /tmp/w/.git/config").await;
    assert!(tokens.iter().all(|t| !env_all.contains(t.as_str())));
}

#[tokio::test]
async fn oauth2_refresh_rotates_scrubs_persists_and_fails_closed() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initial_rt = "rt-initial-0123456789abcdefghijklmnopqrstuv";
    let client_secret = "cs-0123456789abcdefghijklmnop";
    let oauth = FakeOAuth::start(
        "airlock-client",
        client_secret,
        initial_rt,
        Duration::from_secs(4),
    )
    .await;
    std::fs::write(dir.path().join("oauth-ca.pem"), &oauth.ca_pem).unwrap();
    let port = oauth.port;
    // The refresh token lives in the encrypted store; rotations are written back there.
    let store_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let vault = dir.path().join("vault.yaml");
    let api_host = fake_oauth::API_HOST;
    let token_host = fake_oauth::TOKEN_HOST;
    std::fs::write(
        &vault,
        format!(
            "{common}secrets_store: secrets.enc\ncredentials:\n  OAUTH_API:\n    type: oauth2_refresh\n    token_url: \"https://{token_host}:{port}/token\"\n    client_id: airlock-client\n    client_secret_env: OAUTH_CLIENT_SECRET\n    refresh_token_stored: oauth-refresh\n    allowed_hosts: [\"{api_host}:{port}\", \"{token_host}:{port}\"]\n",
            common = common_yaml("oauth-ca.pem", &[api_host, token_host]),
        ),
    )
    .unwrap();
    let mut put = std::process::Command::new(airlock_tests::bin_path("vault-proxy"))
        .args(["secrets", "--config"])
        .arg(&vault)
        .args(["put", "oauth-refresh", "--allowed-host"])
        .arg(format!("{api_host}:{port}"))
        .env("AIRLOCK_VAULT_KEY", store_key)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("vault-proxy secrets put");
    {
        use std::io::Write;
        put.stdin
            .take()
            .unwrap()
            .write_all(initial_rt.as_bytes())
            .unwrap();
    }
    assert!(put.wait().unwrap().success());
    let brain = BrainProcess::start(BrainOptions {
        backend: "docker".into(),
        extra_yaml: format!("vault:\n  config: {}\n", vault.display()),
        env: vec![
            ("AIRLOCK_VAULT_KEY".into(), store_key.into()),
            ("OAUTH_CLIENT_SECRET".into(), client_secret.into()),
        ],
        ..Default::default()
    })
    .await;
    let (id, _cleanup) = provision(&brain, &["OAUTH_API"]).await;
    let (_, stub, _) = sh(&brain, &id, "printf %s \"$OAUTH_API\"").await;
    assert_eq!(stub.len(), 64, "{stub}");
    let api = format!("https://{api_host}:{port}");
    let me =
        format!("curl -sS -H \"Authorization: Bearer $OAUTH_API\" -w '\\n%{{http_code}}' {api}/me");

    let (_, out, err) = sh(&brain, &id, &me).await;
    assert!(
        out.ends_with("\n200") && out.contains("alice"),
        "{out} {err}\n{}",
        brain.log()
    );
    assert_eq!(oauth.refreshes(), 1);
    // Cached while fresh.
    let (_, out, _) = sh(&brain, &id, &me).await;
    assert!(out.ends_with("\n200"), "{out}");
    assert_eq!(oauth.refreshes(), 1, "the access token is cached");
    // Past half its 4 s lifetime → refreshed with the rotated refresh token (the old one would be
    // invalid_grant), and the rotated one is stored back in the encrypted store.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, out, _) = sh(&brain, &id, &me).await;
    assert!(out.ends_with("\n200"), "{out}");
    assert_eq!(oauth.refreshes(), 2);
    assert!(oauth.refused().is_empty(), "{:?}", oauth.refused());
    let current_rt = oauth.current_refresh_token().unwrap();
    assert_eq!(
        decrypt_store_entry(&dir.path().join("secrets.enc"), store_key, "oauth-refresh"),
        current_rt,
        "the rotated refresh token is in the encrypted store"
    );

    // A bound API echoing the refresh token, client secret and access token: all scrubbed.
    let (_, out, _) = sh(
        &brain,
        &id,
        &format!("curl -sS -H \"Authorization: Bearer $OAUTH_API\" {api}/echo"),
    )
    .await;
    let echoed: Value = serde_json::from_str(&out).expect(&out);
    assert_ne!(echoed["refresh_token"], current_rt.as_str(), "{out}");
    assert!(
        echoed["refresh_token"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c == '*'),
        "{out}"
    );
    assert!(
        echoed["client_secret"]
            .as_str()
            .unwrap()
            .chars()
            .all(|c| c == '*'),
        "{out}"
    );
    assert_eq!(
        echoed["access_token"],
        stub.as_str(),
        "the access token reads as the stub"
    );

    // Attack: the stub sent to the token endpoint itself (as a bearer or as the refresh
    // token) is refused before anything leaves.
    let before = oauth.refreshes();
    let (_, out, _) = sh(&brain, &id, &format!(
        "curl -sS -X POST -H \"Authorization: Bearer $OAUTH_API\" -d grant_type=refresh_token -w '\\n%{{http_code}}' https://{token_host}:{port}/token")).await;
    assert!(
        out.ends_with("\n403") && out.contains("credential_path_not_allowed"),
        "{out}"
    );
    let (_, out, _) = sh(&brain, &id, &format!(
        "curl -sS -X POST -d \"grant_type=refresh_token&refresh_token=$OAUTH_API\" -w '\\n%{{http_code}}' https://{token_host}:{port}/token")).await;
    assert!(out.ends_with("\n403"), "{out}");
    assert_eq!(oauth.refreshes(), before);
    assert!(
        oauth.refused().is_empty(),
        "nothing reached the token endpoint: {:?}",
        oauth.refused()
    );

    // The grant is revoked at the provider: the next refresh fails → 502, audited.
    oauth.revoke();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, out, _) = sh(&brain, &id, &me).await;
    assert!(
        out.ends_with("\n502") && out.contains("credential_refresh_failed"),
        "{out}"
    );
    assert_eq!(oauth.refused(), vec!["invalid_grant".to_string()]);

    let records = audit(dir.path());
    assert!(
        records.iter().any(|r| r["event"] == "block"
            && r["status"] == 502
            && r["credential"] == "OAUTH_API"
            && r["reason"]
                .as_str()
                .unwrap()
                .contains("credential_refresh_failed: type=oauth2_refresh")
            && r["reason"].as_str().unwrap().contains("invalid_grant")),
        "{records:?}"
    );
    assert!(records.iter().any(|r| r["event"] == "scrub"));
    assert!(
        records
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("token_endpoint"))
    );
    let raw = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    for secret in oauth.access_tokens().iter().map(String::as_str).chain([
        initial_rt,
        current_rt.as_str(),
        client_secret,
        stub.as_str(),
    ]) {
        assert!(!raw.contains(secret), "a secret is in the audit log");
        assert!(
            !brain.log().contains(secret),
            "a secret is in the brain log"
        );
    }
}
