//! The E2B and Daytona backends against local fakes that follow the providers' published APIs
//! (`airlock_tests::fake_e2b`, `fake_daytona`).
//!
//! Two layers: the brain's clients driven directly (`e2b_*`, `daytona_*`: provider errors,
//! retries, slow starts, timeouts, caps, cleanup), and the real `brain serve` pointed at the
//! fakes over its HTTP API (`brain_*`; needs `cargo build -p brain` first).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use airlock_tests::fake_daytona::{self, FakeDaytona};
use airlock_tests::fake_e2b::{self, FakeE2b};
use airlock_tests::vault::tls_vault_yaml;
use airlock_tests::{BrainOptions, BrainProcess, StatusCode, eventually};
use airlock_wire::{ExecCollector, ExecEvent, ExecRequest};
use brain::sandbox::daytona::{DaytonaBackend, DaytonaConfig};
use brain::sandbox::e2b::{E2bBackend, E2bConfig};
use brain::sandbox::{BackendError, Resources, SandboxBackend, SandboxSpec};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

const CA: &str = "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n";
/// The vault proxy as the cloud reaches it: a public IPv4 address (a documentation range;
/// the fakes run commands on this host and never dial it).
const PROXY: &str = "203.0.113.7:3128";

/// A spec as the brain builds it with a vault grant (over the proxy's TLS listener, as cloud
/// sandboxes get it) and one credential.
fn spec(id: &str, ttl_s: u64) -> SandboxSpec {
    let mut env = BTreeMap::new();
    for k in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
        env.insert(k.to_string(), format!("https://{id}:tok@127.0.0.1:41443"));
    }
    env.insert("NO_PROXY".into(), "localhost,127.0.0.1,::1".into());
    env.insert("SSL_CERT_FILE".into(), "/etc/airlock/ca.pem".into());
    env.insert("GITHUB_TOKEN".into(), "ghp_stubstubstub".into());
    SandboxSpec {
        id: id.into(),
        owner: "owner-1".into(),
        image: None,
        resources: Resources::default(),
        env,
        files: vec![(
            "/etc/airlock/ca.pem".into(),
            Bytes::from_static(CA.as_bytes()),
        )],
        agent_token: "unused".into(),
        ttl_s,
        workspace: None,
        cache_tenant: None,
    }
}

fn cmd(command: &str) -> ExecRequest {
    ExecRequest {
        command: Some(command.into()),
        timeout_ms: Some(10_000),
        max_output_bytes: Some(1 << 20),
        ..ExecRequest::default()
    }
}

// === E2B client ===

fn e2b_config(fake: &FakeE2b) -> E2bConfig {
    E2bConfig {
        api_url: fake.api_url.clone(),
        envd_url: fake.envd_url.clone(),
        proxy_url: Some(PROXY.into()),
        ready_timeout_ms: 5_000,
        max_retries: 2,
        retry_base_ms: 10,
        ..E2bConfig::default()
    }
}

fn e2b(fake: &FakeE2b) -> E2bBackend {
    E2bBackend::with_key(e2b_config(fake), fake.api_key.clone()).unwrap()
}

#[tokio::test]
async fn e2b_provision_restricts_egress_runs_commands_moves_files_and_destroys() {
    let fake = FakeE2b::start().await;
    let backend = e2b(&fake);
    let handle = backend.provision(&spec("sb-e1", 600)).await.unwrap();

    let [sb] = fake.sandboxes().try_into().expect("one sandbox");
    assert_eq!(handle.backend_ref, sb.id);
    assert_eq!(sb.template_id, "base");
    assert!(
        sb.secure,
        "created with secure: true (envd needs the access token)"
    );
    assert_eq!(sb.timeout_s, 600 + 300, "TTL plus grace set at creation");
    assert_eq!(sb.metadata["airlock.sandbox"], "sb-e1");
    assert_eq!(sb.metadata["airlock.owner"], "owner-1");
    assert_eq!(
        sb.network,
        json!({"allowOut": ["203.0.113.7/32"], "denyOut": ["0.0.0.0/0"]}),
        "egress only to the vault proxy"
    );
    assert_eq!(
        sb.env_vars["HTTPS_PROXY"],
        "https://sb-e1:tok@203.0.113.7:3128"
    );
    assert_eq!(sb.env_vars["GITHUB_TOKEN"], "ghp_stubstubstub");
    assert_eq!(
        fake.file(&sb.id, "/etc/airlock/ca.pem").as_deref(),
        Some(CA.as_bytes()),
        "CA written through envd /files before first use"
    );
    // Handles keep the envd access token; it never shows in Debug of the backend.
    assert!(handle.extra.contains_key("e2b.envd_access_token"));

    let r = backend
        .exec(
            &handle,
            cmd("echo out; echo err >&2; echo $GITHUB_TOKEN; exit 3"),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "out\nghp_stubstubstub\n");
    assert_eq!(r.stderr, "err\n");
    assert_eq!(
        (r.exit_code, r.signal, r.timed_out, r.truncated),
        (Some(3), None, false, false)
    );

    let ok = backend.exec(&handle, cmd("true")).await.unwrap();
    assert_eq!(ok.exit_code, Some(0), "proto3 omits exitCode 0");

    let mut req = cmd("pwd; ls");
    req.cwd = Some("/work".into());
    let err = backend.exec(&handle, req.clone()).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    backend
        .write_file(&handle, "/work/a.txt", Bytes::from_static(b"payload"))
        .await
        .unwrap();
    let r = backend.exec(&handle, req).await.unwrap();
    assert!(r.stdout.ends_with("/work\na.txt\n"), "{}", r.stdout);

    let mut events = backend
        .exec_stream(&handle, cmd("echo one; sleep 0.2; echo two >&2"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(e) = events.next().await {
        seen.push(e.unwrap());
    }
    assert_eq!(
        seen[0],
        ExecEvent::Stdout {
            data: "one\n".into()
        }
    );
    assert_eq!(
        seen[1],
        ExecEvent::Stderr {
            data: "two\n".into()
        }
    );
    assert!(matches!(&seen[2], ExecEvent::Exit(e) if e.exit_code == Some(0)));

    assert_eq!(
        backend.read_file(&handle, "/work/a.txt").await.unwrap(),
        Bytes::from_static(b"payload")
    );
    let missing = backend.read_file(&handle, "/nope").await.unwrap_err();
    assert!(
        matches!(missing, BackendError::Agent { status: 404, .. }),
        "{missing}"
    );
    let listed = backend.list_files(&handle, "/work").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].size, listed[0].is_dir),
        ("a.txt", 7, false)
    );

    let mut forged = handle.clone();
    forged
        .extra
        .insert("e2b.envd_access_token".into(), "wrong".into());
    let err = backend.exec(&forged, cmd("true")).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("401"), "{err}");

    assert!(backend.is_alive(&handle).await);
    let labelled = backend.list_labelled().await.unwrap();
    assert_eq!(labelled.len(), 1);
    assert_eq!(labelled[0].id, "sb-e1");
    assert_eq!(labelled[0].owner.as_deref(), Some("owner-1"));

    backend.destroy(&handle).await.unwrap();
    assert!(fake.sandboxes().is_empty());
    assert_eq!(fake.killed(), std::slice::from_ref(&sb.id));
    backend.destroy(&handle).await.unwrap();
    assert!(!backend.is_alive(&handle).await);
    let gone = backend.exec(&handle, cmd("true")).await.unwrap_err();
    assert!(matches!(gone, BackendError::NotFound(_)), "{gone}");
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

#[tokio::test]
async fn e2b_wrong_key_and_provider_errors_carry_the_providers_message() {
    let fake = FakeE2b::start().await;
    let wrong = E2bBackend::with_key(e2b_config(&fake), "e2b_0000".into()).unwrap();
    let err = wrong.provision(&spec("sb-k", 60)).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable(_)), "{err}");
    assert!(
        err.to_string().contains("401") && err.to_string().contains("Invalid API key"),
        "{err}"
    );

    let mut s = spec("sb-t", 60);
    s.image = Some("missing-template".into());
    let err = e2b(&fake).provision(&s).await.unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "{err}");
    assert!(
        err.to_string()
            .contains("template 'missing-template' not found"),
        "{err}"
    );
    assert_eq!(fake.creates(), 0);
}

#[tokio::test]
async fn e2b_retries_429_and_5xx_without_creating_twice_and_gives_up_cleanly() {
    let fake = FakeE2b::start().await;
    let backend = e2b(&fake);
    fake.fail_next(fake_e2b::Route::Create, 429, 1, Some(0));
    fake.fail_next(fake_e2b::Route::List, 503, 1, None);
    let h = backend.provision(&spec("sb-r1", 60)).await.unwrap();
    assert_eq!(fake.creates(), 1);
    assert_eq!(fake.calls(fake_e2b::Route::Create), [429, 201]);
    // The retry looked for a sandbox the failed attempt might have made (and retried that 503).
    assert_eq!(fake.calls(fake_e2b::Route::List)[0], 503);
    backend.destroy(&h).await.unwrap();

    fake.fail_next(fake_e2b::Route::Create, 500, 3, None);
    let started = Instant::now();
    let err = backend.provision(&spec("sb-r2", 60)).await.unwrap_err();
    assert!(
        err.to_string().contains("500") && err.to_string().contains("injected failure"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded backoff"
    );
    assert_eq!(fake.creates(), 1, "no second sandbox");
    assert!(fake.sandboxes().is_empty());

    // A create whose answer was lost after the VM was made: the retry finds it by metadata
    // and takes it over (`/connect` gives its envd token) instead of making a second.
    fake.lose_next_creates(504, 1);
    let h = backend.provision(&spec("sb-lost", 60)).await.unwrap();
    assert_eq!(fake.creates(), 2, "one sandbox for sb-lost");
    assert_eq!(fake.sandboxes().len(), 1);
    let r = backend.exec(&h, cmd("echo adopted")).await.unwrap();
    assert_eq!(r.stdout, "adopted\n");
    backend.destroy(&h).await.unwrap();

    // DELETE retried through a 502.
    let h = backend.provision(&spec("sb-r3", 60)).await.unwrap();
    fake.fail_next(fake_e2b::Route::Delete, 502, 1, None);
    backend.destroy(&h).await.unwrap();
    assert!(fake.sandboxes().is_empty());
}

#[tokio::test]
async fn e2b_slow_start_within_and_over_the_ready_timeout() {
    let fake = FakeE2b::start().await;
    fake.set_create_delay(Duration::from_millis(300));
    let h = e2b(&fake).provision(&spec("sb-s1", 60)).await.unwrap();
    assert_eq!(fake.sandboxes().len(), 1);
    e2b(&fake).destroy(&h).await.unwrap();

    fake.set_create_delay(Duration::from_millis(1500));
    let impatient = E2bBackend::with_key(
        E2bConfig {
            ready_timeout_ms: 400,
            ..e2b_config(&fake)
        },
        fake.api_key.clone(),
    )
    .unwrap();
    let err = impatient.provision(&spec("sb-s2", 60)).await.unwrap_err();
    assert!(matches!(err, BackendError::NotReady(_)), "{err}");
    // The VM is built anyway after the brain gave up; it must not stay.
    assert!(eventually(Duration::from_secs(5), || fake.creates() == 2).await);
    assert!(
        eventually(Duration::from_secs(5), || fake.sandboxes().is_empty()).await,
        "late sandbox left running: {:?}",
        fake.sandboxes()
    );
    assert_eq!(fake.killed().len(), 2);
}

#[tokio::test]
async fn e2b_exec_timeout_output_cap_and_expiry() {
    let fake = FakeE2b::start().await;
    let backend = E2bBackend::with_key(
        E2bConfig {
            ttl_grace_seconds: 0,
            ..e2b_config(&fake)
        },
        fake.api_key.clone(),
    )
    .unwrap();
    let h = backend.provision(&spec("sb-x", 3)).await.unwrap();
    let mut slow = cmd("echo started; sleep 5; echo never");
    slow.timeout_ms = Some(400);
    let started = Instant::now();
    let r = backend.exec(&h, slow).await.unwrap();
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.stdout, "started\n");
    assert_eq!(r.exit_code, None);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let mut big = cmd("head -c 100000 /dev/zero | tr '\\0' a; echo done >&2");
    big.max_output_bytes = Some(1000);
    let r = backend.exec(&h, big).await.unwrap();
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.truncated);
    assert_eq!(r.exit_code, Some(0));

    // E2B kills it when its timeout (TTL, no grace here) passes.
    assert!(eventually(Duration::from_secs(6), || fake.sandboxes().is_empty()).await);
    assert_eq!(fake.expired().len(), 1);
    assert!(!backend.is_alive(&h).await);
}

/// Issue 11 item 1: E2B refuses a `timeout` over the team's cap (1 h on the base tier); the
/// brain clamps TTL + grace to `max_timeout_seconds`, on create and on `/connect`.
#[tokio::test]
async fn e2b_lifetime_is_clamped_to_the_teams_cap_on_create_and_connect() {
    let fake = FakeE2b::start().await;
    let backend = e2b(&fake);
    // Default TTL (3600) + grace (300) is over the base tier's hour.
    let h = backend.provision(&spec("sb-cap", 3600)).await.unwrap();
    assert_eq!(fake.sandboxes()[0].timeout_s, 3600);
    backend.destroy(&h).await.unwrap();
    // A lost create is taken over through /connect, with the same clamp.
    fake.lose_next_creates(502, 1);
    let h = backend.provision(&spec("sb-cap2", 3600)).await.unwrap();
    assert!(!h.backend_ref.is_empty());
    assert_eq!(fake.creates(), 2, "taken over, not created twice");
    // A Pro team may ask for more.
    fake.set_max_timeout(24 * 3600);
    let pro = E2bBackend::with_key(
        E2bConfig {
            max_timeout_seconds: 24 * 3600,
            ..e2b_config(&fake)
        },
        fake.api_key.clone(),
    )
    .unwrap();
    pro.provision(&spec("sb-pro", 3600)).await.unwrap();
    let sb = fake
        .sandboxes()
        .into_iter()
        .find(|s| s.metadata["airlock.sandbox"] == "sb-pro")
        .unwrap();
    assert_eq!(sb.timeout_s, 3900);
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

/// Issue 16: E2B pause (`POST /sandboxes/{id}/pause`, memory kept) and resume (`POST
/// /sandboxes/{id}/connect` → 201): a paused sandbox is unreachable but alive (a restarted
/// brain adopts it), a second pause is not an error, and the resume re-arms E2B's timer to
/// what is left of the TTL plus the grace (the TTL kept counting while paused).
#[tokio::test]
async fn e2b_pause_keeps_the_sandbox_and_resume_rearms_the_remaining_ttl() {
    let fake = FakeE2b::start().await;
    let backend = e2b(&fake);
    let h = backend.provision(&spec("sb-pause", 600)).await.unwrap();
    let r = backend
        .exec(&h, cmd("echo kept > state.txt && echo ok"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "ok\n");
    backend.pause(&h).await.unwrap();
    assert!(fake.is_paused(&h.backend_ref));
    // Alive (adopted on restart), but envd is not routable while paused.
    assert!(backend.is_alive(&h).await);
    let err = backend.exec(&h, cmd("true")).await.unwrap_err();
    assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
    // A second pause: E2B answers 409 "already paused", which is done, not an error.
    backend.pause(&h).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    backend.resume(&h).await.unwrap();
    assert!(!fake.is_paused(&h.backend_ref));
    let r = backend.exec(&h, cmd("cat state.txt")).await.unwrap();
    assert_eq!(r.stdout, "kept\n");
    // TTL 600 + grace 300, minus the time that passed (at least the second slept).
    let t = fake.sandboxes()[0].timeout_s;
    assert!((890..900).contains(&t), "resume timeout {t}");
    // Resuming a running sandbox is a keep-alive (200), not an error.
    backend.resume(&h).await.unwrap();
    // Pausing something E2B does not know is the provider's 404.
    backend.destroy(&h).await.unwrap();
    let err = backend.pause(&h).await.unwrap_err();
    assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
    assert!(!backend.is_alive(&h).await);
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

/// Issue 16: an E2B snapshot is an E2B snapshot template (`POST /sandboxes/{id}/snapshots`)
/// of a helper sandbox that never had a grant, holding the source's home: a sandbox started
/// from it has the files and its own fresh env, never the source's stubs or proxy token
/// (the fake carries a snapshotted sandbox's env into sandboxes started from it, as E2B's
/// memory snapshot does: snapshotting the source itself would leak them). A workspace file
/// holding the grant is refused; deleting removes the template.
#[tokio::test]
async fn e2b_snapshot_holds_the_workspace_and_never_the_grant() {
    let fake = FakeE2b::start().await;
    let backend = e2b(&fake);
    let mut src = spec("sb-snap-src", 600);
    src.env
        .insert("SOURCE_ONLY".into(), "from-the-source".into());
    let mut h = backend.provision(&src).await.unwrap();
    brain::credentials::CredentialGrant {
        token: Some("proxytoken-5c1f8e2a9b".into()),
        stubs: BTreeMap::from([("GITHUB_TOKEN".to_string(), "ghp_stubstubstub".to_string())]),
        ..Default::default()
    }
    .record_in(&mut h);
    let r = backend
        .exec(
            &h,
            cmd("mkdir -p src/deep && echo fn main > src/deep/main.rs && echo $GITHUB_TOKEN"),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "ghp_stubstubstub\n");
    let stored = backend.snapshot(&h, "snap-1").await.unwrap();
    assert!(
        stored.backend_ref.ends_with(":default"),
        "{}",
        stored.backend_ref
    );
    assert!(stored.size_bytes > 0);
    assert!(backend.snapshot_is_image());
    // The helper is gone; only the source runs.
    assert_eq!(fake.sandboxes().len(), 1);
    assert_eq!(fake.templates().len(), 1);
    // A sandbox from the snapshot: the files, and only its own (fresh) grant.
    let mut fresh = spec("sb-snap-dst", 600);
    fresh.image = Some(stored.backend_ref.clone());
    fresh
        .env
        .insert("GITHUB_TOKEN".into(), "ghp_freshfreshfresh".into());
    let h2 = backend.provision(&fresh).await.unwrap();
    backend
        .restore_snapshot(&h2, &stored.backend_ref)
        .await
        .unwrap();
    let r = backend
        .exec(
            &h2,
            cmd("cat src/deep/main.rs; echo \"[$GITHUB_TOKEN][$SOURCE_ONLY]\""),
        )
        .await
        .unwrap();
    assert_eq!(
        r.stdout, "fn main\n[ghp_freshfreshfresh][]\n",
        "{}",
        r.stderr
    );
    // A sandbox of another template is not "restored".
    let err = backend
        .restore_snapshot(&h, &stored.backend_ref)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "{err:?}");
    // A workspace file holding the grant: refused, and no helper or template is made.
    backend
        .exec(
            &h,
            cmd("echo \"export GITHUB_TOKEN=$GITHUB_TOKEN\" > .envrc"),
        )
        .await
        .unwrap();
    let err = backend.snapshot(&h, "snap-2").await.unwrap_err();
    assert!(err.to_string().contains("GITHUB_TOKEN stub"), "{err}");
    assert_eq!(fake.templates().len(), 1);
    assert_eq!(fake.sandboxes().len(), 2);
    // E2B refuses to delete a template sandboxes still run from (400); then it goes.
    let err = backend
        .delete_snapshot(&stored.backend_ref)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "{err:?}");
    backend.destroy(&h2).await.unwrap();
    backend.delete_snapshot(&stored.backend_ref).await.unwrap();
    assert!(fake.templates().is_empty());
    // Deleting again: already gone.
    backend.delete_snapshot(&stored.backend_ref).await.unwrap();
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

/// Issue 11 items 2-4: the edge's 502 "sandbox was not found" is `sandbox_lost`; a bad cwd
/// (an end-of-stream error inside HTTP 200) is the caller's mistake; ListDir's "path not
/// found" is a missing path, not a lost sandbox.
#[tokio::test]
async fn e2b_errors_are_classified_as_the_real_envd_and_edge_send_them() {
    let fake = FakeE2b::start().await;
    let backend = e2b(&fake);
    let h = backend.provision(&spec("sb-err", 60)).await.unwrap();
    let mut req = cmd("pwd");
    req.cwd = Some("/no/such/dir".into());
    let err = backend.exec(&h, req).await.unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = backend.list_files(&h, "/no/such/dir").await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Agent { status: 404, .. }),
        "{err:?}"
    );
    let err = backend.read_file(&h, "/no/such/file").await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Agent { status: 404, .. }),
        "{err:?}"
    );
    backend.destroy(&h).await.unwrap();
    for err in [
        backend.exec(&h, cmd("true")).await.unwrap_err(),
        backend.read_file(&h, "/etc/hostname").await.unwrap_err(),
        backend.list_files(&h, "/").await.unwrap_err(),
        backend
            .write_file(&h, "/tmp/x", Bytes::from_static(b"x"))
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
    }
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

/// Issue 11 item 5: raw uploads only for envd >= 0.5.7 (multipart before), the Basic user
/// header only for envd < 0.4.0 (the SDK omits it from 0.4.0 on).
#[tokio::test]
async fn e2b_follows_the_envd_version_gates() {
    let fake = FakeE2b::start().await;
    let backend = e2b(&fake);
    for (version, header) in [("0.3.9", true), ("0.5.6", false), ("0.6.4", false)] {
        fake.set_envd_version(version);
        let before = fake.basic_auth_seen().len();
        let id = format!("sb-v{}", version.replace('.', ""));
        let h = backend.provision(&spec(&id, 60)).await.unwrap();
        let sb = fake
            .sandboxes()
            .into_iter()
            .find(|s| s.id == h.backend_ref)
            .unwrap();
        assert_eq!(
            fake.file(&sb.id, "/etc/airlock/ca.pem").as_deref(),
            Some(CA.as_bytes()),
            "envd {version}: CA uploaded"
        );
        let r = backend.exec(&h, cmd("echo ok")).await.unwrap();
        assert_eq!(r.stdout, "ok\n", "envd {version}");
        let seen = fake.basic_auth_seen()[before..].to_vec();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|s| *s == header),
            "envd {version}: Basic header sent {seen:?}"
        );
        backend.destroy(&h).await.unwrap();
    }
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

#[tokio::test]
async fn e2b_failed_provision_leaves_nothing_and_credentials_need_a_reachable_proxy() {
    let fake = FakeE2b::start().await;
    let backend = e2b(&fake);
    let mut s = spec("sb-f", 60);
    // envd refuses to write over a directory: the provision fails after the VM exists.
    s.files
        .push(("/home/user".into(), Bytes::from_static(b"x")));
    let err = backend.provision(&s).await.unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert_eq!(fake.creates(), 1);
    assert!(fake.sandboxes().is_empty(), "the failed sandbox was killed");

    let no_proxy = E2bBackend::with_key(
        E2bConfig {
            proxy_url: None,
            ..e2b_config(&fake)
        },
        fake.api_key.clone(),
    )
    .unwrap();
    let err = no_proxy.provision(&spec("sb-np", 60)).await.unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("sandbox.e2b.proxy_url"), "{err}");
    assert_eq!(fake.creates(), 1, "refused before anything was created");

    // Without credentials, no proxy means no egress at all.
    let mut s = spec("sb-np2", 60);
    s.env.remove("GITHUB_TOKEN");
    let h = no_proxy.provision(&s).await.unwrap();
    let sb = fake.sandboxes().pop().unwrap();
    assert_eq!(sb.network, json!({"denyOut": ["0.0.0.0/0"]}));
    assert!(!sb.env_vars.contains_key("HTTPS_PROXY"));
    no_proxy.destroy(&h).await.unwrap();
}

// === Daytona client ===

fn daytona_config(fake: &FakeDaytona) -> DaytonaConfig {
    DaytonaConfig {
        api_url: fake.api_url.clone(),
        proxy_url: Some(PROXY.into()),
        ready_timeout_ms: 5_000,
        max_retries: 2,
        retry_base_ms: 10,
        ..DaytonaConfig::default()
    }
}

fn daytona(fake: &FakeDaytona) -> DaytonaBackend {
    DaytonaBackend::with_key(daytona_config(fake), fake.api_key.clone()).unwrap()
}

#[tokio::test]
async fn daytona_provision_waits_for_started_restricts_egress_runs_commands_and_destroys() {
    let fake = FakeDaytona::start(Duration::from_secs(60)).await;
    fake.set_start_delay(Duration::from_millis(400));
    let backend = daytona(&fake);
    let handle = backend.provision(&spec("sb-d1", 600)).await.unwrap();
    assert!(fake.gets() >= 2, "polled GET /sandbox/{{id}} until started");

    let [sb] = fake.sandboxes().try_into().expect("one sandbox");
    assert_eq!(handle.backend_ref, sb.id);
    assert_eq!(sb.labels["airlock.sandbox"], "sb-d1");
    assert_eq!(sb.labels["airlock.owner"], "owner-1");
    assert!(!sb.network_block_all);
    assert_eq!(sb.network_allow_list.as_deref(), Some("203.0.113.7/32"));
    assert_eq!(
        sb.request["ttlMinutes"], 15,
        "(600 + 300 grace) s in whole minutes"
    );
    assert_eq!(sb.request["autoStopInterval"], 15);
    assert_eq!(sb.request["autoDeleteInterval"], 0, "deleted when stopped");
    assert_eq!(sb.env["HTTPS_PROXY"], "https://sb-d1:tok@203.0.113.7:3128");
    assert_eq!(
        fake.file(&sb.id, "/etc/airlock/ca.pem").as_deref(),
        Some(CA.as_bytes())
    );

    let r = backend
        .exec(
            &handle,
            cmd("echo out; echo err >&2; echo $GITHUB_TOKEN; exit 3"),
        )
        .await
        .unwrap();
    // Daytona's execute returns one combined output.
    assert_eq!(r.stdout, "out\nerr\nghp_stubstubstub\n");
    assert_eq!(r.stderr, "");
    assert_eq!(r.exit_code, Some(3));

    let mut argv = ExecRequest {
        argv: Some(vec![
            "printf".into(),
            "%s|".into(),
            "a b".into(),
            "it's".into(),
        ]),
        ..ExecRequest::default()
    };
    argv.cwd = Some("/tmp".into());
    backend
        .write_file(&handle, "/tmp/x", Bytes::from_static(b"1"))
        .await
        .unwrap();
    let r = backend.exec(&handle, argv).await.unwrap();
    assert_eq!(r.stdout, "a b|it's|");

    let events: Vec<_> = backend
        .exec_stream(&handle, cmd("echo streamed"))
        .await
        .unwrap()
        .collect()
        .await;
    let mut c = ExecCollector::default();
    for e in events {
        c.push(e.unwrap());
    }
    let r = c.finish().unwrap();
    assert_eq!((r.stdout.as_str(), r.exit_code), ("streamed\n", Some(0)));

    backend
        .write_file(&handle, "/work/f.bin", Bytes::from_static(b"\x00\x01data"))
        .await
        .unwrap();
    assert_eq!(
        backend.read_file(&handle, "/work/f.bin").await.unwrap(),
        Bytes::from_static(b"\x00\x01data")
    );
    let listed = backend.list_files(&handle, "/work").await.unwrap();
    assert_eq!((listed[0].name.as_str(), listed[0].size), ("f.bin", 6));
    let err = backend.read_file(&handle, "/work/none").await.unwrap_err();
    assert!(
        matches!(err, BackendError::Agent { status: 404, ref code, .. } if code == "FILE_NOT_FOUND"),
        "{err}"
    );

    assert!(backend.is_alive(&handle).await);
    let labelled = backend.list_labelled().await.unwrap();
    assert_eq!(labelled.len(), 1);
    assert_eq!(labelled[0].id, "sb-d1");

    backend.destroy(&handle).await.unwrap();
    assert!(fake.sandboxes().is_empty());
    assert_eq!(fake.deleted(), [sb.id]);
    backend.destroy(&handle).await.unwrap();
    assert!(!backend.is_alive(&handle).await);
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

#[tokio::test]
async fn daytona_wrong_key_validation_errors_and_failed_starts_leave_nothing() {
    let fake = FakeDaytona::start(Duration::from_secs(60)).await;
    let wrong = DaytonaBackend::with_key(daytona_config(&fake), "dtn_wrong".into()).unwrap();
    let err = wrong.provision(&spec("sb-k", 60)).await.unwrap_err();
    assert!(
        err.to_string().contains("401") && err.to_string().contains("Unauthorized"),
        "{err}"
    );

    // A start the provider fails surfaces with the provider's words.
    let s = spec("sb-v", 60);
    let backend = daytona(&fake);
    fake.set_fail_start(Some("Failed to pull snapshot: not found"));
    let err = backend.provision(&s).await.unwrap_err();
    assert!(matches!(err, BackendError::NotReady(_)), "{err}");
    assert!(err.to_string().contains("Failed to pull snapshot"), "{err}");
    assert_eq!(fake.creates(), 1);
    assert!(
        fake.sandboxes().is_empty(),
        "the errored sandbox was deleted"
    );
    fake.set_fail_start(None);

    fake.set_start_delay(Duration::from_secs(5));
    let impatient = DaytonaBackend::with_key(
        DaytonaConfig {
            ready_timeout_ms: 500,
            ..daytona_config(&fake)
        },
        fake.api_key.clone(),
    )
    .unwrap();
    let err = impatient.provision(&spec("sb-slow", 60)).await.unwrap_err();
    assert!(err.to_string().contains("still `creating`"), "{err}");
    assert!(fake.sandboxes().is_empty());

    let no_proxy = DaytonaBackend::with_key(
        DaytonaConfig {
            proxy_url: None,
            ..daytona_config(&fake)
        },
        fake.api_key.clone(),
    )
    .unwrap();
    let err = no_proxy.provision(&spec("sb-np", 60)).await.unwrap_err();
    assert!(
        err.to_string().contains("sandbox.daytona.proxy_url"),
        "{err}"
    );
    assert_eq!(fake.creates(), 2);
}

#[tokio::test]
async fn daytona_retries_429_and_5xx_and_reuses_a_sandbox_a_failed_attempt_made() {
    let fake = FakeDaytona::start(Duration::from_secs(60)).await;
    let backend = daytona(&fake);
    fake.set_start_delay(Duration::from_millis(200));
    fake.fail_next(fake_daytona::Route::Create, 429, 1, Some(0));
    fake.fail_next(fake_daytona::Route::Get, 503, 2, None);
    let h = backend.provision(&spec("sb-r1", 60)).await.unwrap();
    assert_eq!(fake.creates(), 1);
    backend.destroy(&h).await.unwrap();

    fake.fail_next(fake_daytona::Route::Create, 502, 3, None);
    let err = backend.provision(&spec("sb-r2", 60)).await.unwrap_err();
    assert!(
        err.to_string().contains("502") && err.to_string().contains("Internal server error"),
        "{err}"
    );
    assert_eq!(fake.creates(), 1);
    assert!(fake.sandboxes().is_empty());

    // The answer of a create that did make the sandbox is lost: the retry finds it by label.
    fake.lose_next_creates(503, 1);
    let h = backend.provision(&spec("sb-lost", 60)).await.unwrap();
    assert_eq!(fake.creates(), 2);
    let [sb] = fake
        .sandboxes()
        .try_into()
        .expect("exactly one sandbox for sb-lost");
    assert_eq!(h.backend_ref, sb.id);
    let r = backend.exec(&h, cmd("echo adopted")).await.unwrap();
    assert_eq!(r.stdout, "adopted\n");
    backend.destroy(&h).await.unwrap();
    assert!(fake.sandboxes().is_empty());
}

/// Issue 11 item 6: the daemon pipes the command into whichever shell it picks; the brain
/// wraps it so it runs under `bash -c` with stdin from /dev/null.
#[tokio::test]
async fn daytona_commands_run_under_bash_without_stdin_whatever_shell_the_daemon_picks() {
    let fake = FakeDaytona::start(Duration::from_secs(60)).await;
    let backend = daytona(&fake);
    let h = backend.provision(&spec("sb-sh", 60)).await.unwrap();
    // A command that reads stdin must not swallow the rest of the script.
    let r = backend
        .exec(&h, cmd("read x\necho \"got:$x\"\necho after"))
        .await
        .unwrap();
    assert_eq!(r.stdout, "got:\nafter\n");
    // A cwd that does not exist is the caller's mistake (400-class), as on E2B.
    let mut bad = cmd("pwd");
    bad.cwd = Some("/no/such/dir".into());
    let err = backend.exec(&h, bad).await.unwrap_err();
    assert!(matches!(err, BackendError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
    // Quotes, substitutions and bash-only syntax survive the wrapping.
    let r = backend
        .exec(
            &h,
            cmd("echo 'it'\"'\"'s' \"$(echo ok)\"; [[ a == a ]] && echo bash; exit 4"),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "it's ok\nbash\n");
    assert_eq!(r.exit_code, Some(4));
    let argv = ExecRequest {
        argv: Some(vec![
            "printf".into(),
            "%s|".into(),
            "a b".into(),
            "it's *".into(),
        ]),
        ..cmd("x")
    };
    let argv = ExecRequest {
        command: None,
        ..argv
    };
    let r = backend.exec(&h, argv).await.unwrap();
    assert_eq!(r.stdout, "a b|it's *|");
    backend.destroy(&h).await.unwrap();
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

/// Issue 11 item 7: the v0.190.0 daemon has no `/files/upload-v2` (multipart `/files/upload`
/// only) and answers a missing file with an empty 404; both daemon generations work.
#[tokio::test]
async fn daytona_files_work_against_both_daemon_generations() {
    let fake = FakeDaytona::start(Duration::from_secs(60)).await;
    let backend = daytona(&fake);
    for legacy in [true, false] {
        fake.set_legacy_daemon(legacy);
        let id = format!("sb-gen-{legacy}");
        let h = backend.provision(&spec(&id, 60)).await.unwrap();
        let sb = fake
            .sandboxes()
            .into_iter()
            .find(|s| s.id == h.backend_ref)
            .unwrap();
        assert_eq!(
            fake.file(&sb.id, "/etc/airlock/ca.pem").as_deref(),
            Some(CA.as_bytes()),
            "legacy={legacy}: CA written"
        );
        backend
            .write_file(&h, "/tmp/w/a.bin", Bytes::from_static(b"\x00\xffdata"))
            .await
            .unwrap();
        assert_eq!(
            backend.read_file(&h, "/tmp/w/a.bin").await.unwrap(),
            Bytes::from_static(b"\x00\xffdata")
        );
        for err in [
            backend.read_file(&h, "/no/such/file").await.unwrap_err(),
            backend.list_files(&h, "/no/such/dir").await.unwrap_err(),
        ] {
            assert!(
                matches!(&err, BackendError::Agent { status: 404, .. }),
                "legacy={legacy}: {err:?}"
            );
        }
        backend.destroy(&h).await.unwrap();
        let gone = backend.read_file(&h, "/tmp/w/a.bin").await.unwrap_err();
        assert!(matches!(gone, BackendError::NotFound(_)), "{gone:?}");
    }
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

/// Issue 11 item 8: `GET /sandbox` lags behind creates and hides errored sandboxes unless
/// asked: the lost-create takeover must not create twice, and the sweep must see them.
#[tokio::test]
async fn daytona_lost_create_and_sweep_allow_for_a_lagging_list_and_errored_sandboxes() {
    let fake = FakeDaytona::start(Duration::from_secs(60)).await;
    let backend = daytona(&fake);
    fake.set_list_lag(Duration::from_secs(30));
    fake.lose_next_creates(503, 1);
    let h = backend.provision(&spec("sb-lag", 60)).await.unwrap();
    assert_eq!(
        fake.creates(),
        1,
        "the first attempt's sandbox was taken over"
    );
    assert_eq!(fake.sandboxes().len(), 1);
    backend.destroy(&h).await.unwrap();

    // An errored sandbox a crashed brain left behind.
    fake.set_list_lag(Duration::ZERO);
    fake.set_fail_start(Some("no capacity"));
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/sandbox", fake.api_url))
        .bearer_auth(&fake.api_key)
        .json(&json!({"labels": {"airlock.sandbox": "sb-orphan", "airlock.owner": "o"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    fake.set_fail_start(None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let found = backend.list_labelled().await.unwrap();
    assert_eq!(
        found.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
        ["sb-orphan"]
    );
    backend.destroy_labelled(&found[0]).await.unwrap();
    assert!(fake.sandboxes().is_empty());
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

#[tokio::test]
async fn daytona_exec_timeout_output_cap_and_ttl_expiry() {
    // One Daytona "minute" lasts 300 ms here.
    let fake = FakeDaytona::start(Duration::from_millis(300)).await;
    let backend = DaytonaBackend::with_key(
        DaytonaConfig {
            ttl_grace_seconds: 0,
            ..daytona_config(&fake)
        },
        fake.api_key.clone(),
    )
    .unwrap();
    // 600 s = 10 fake minutes = 3 s.
    let h = backend.provision(&spec("sb-x", 600)).await.unwrap();
    let mut slow = cmd("sleep 5");
    slow.timeout_ms = Some(1000);
    let started = Instant::now();
    let r = backend.exec(&h, slow).await.unwrap();
    assert!(r.timed_out && r.exit_code.is_none(), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(4));

    let mut big = cmd("head -c 50000 /dev/zero | tr '\\0' b");
    big.max_output_bytes = Some(100);
    let r = backend.exec(&h, big).await.unwrap();
    assert_eq!((r.stdout.len(), r.truncated), (100, true));

    assert!(eventually(Duration::from_secs(5), || fake.sandboxes().is_empty()).await);
    assert_eq!(fake.expired().len(), 1);
}

// === the real brain ===

fn e2b_brain_options(fake: &FakeE2b, extra: &str) -> BrainOptions {
    BrainOptions {
        backend: "e2b".into(),
        extra_yaml: format!(
            "{}sandbox:\n  e2b:\n    api_url: {}\n    envd_url: {}\n    proxy_url: \"{PROXY}\"\n    retry_base_ms: 10\n{extra}",
            tls_vault_yaml(),
            fake.api_url,
            fake.envd_url
        ),
        env: vec![("E2B_API_KEY".into(), fake.api_key.clone())],
        ..BrainOptions::default()
    }
}

async fn create(brain: &BrainProcess, body: Value) -> Value {
    let (status, reply) = brain.post_json("/v1/sandboxes", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}\n{}", brain.log());
    reply
}

/// Starts a sandbox `from_snapshot`, checks its `notes.txt` holds `notes`, then deletes it,
/// the source sandbox `source` and the snapshot.
async fn restore_read_and_delete(brain: &BrainProcess, source: &str, snapshot: &str, notes: &str) {
    let restored = create(brain, json!({"from_snapshot": snapshot})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, r) = brain
        .post_json(
            &format!("/v1/sandboxes/{restored}/exec"),
            &json!({"command": "cat notes.txt"}),
        )
        .await;
    assert_eq!(
        (status, r["stdout"].as_str()),
        (StatusCode::OK, Some(notes)),
        "{r}"
    );
    for sb in [source, restored.as_str()] {
        let (status, _) = brain.delete(&format!("/v1/sandboxes/{sb}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, v) = brain.delete(&format!("/v1/snapshots/{snapshot}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

/// Issue 16 through the brain's API on E2B: pause/resume, a snapshot, and a sandbox started
/// `from_snapshot` (an E2B snapshot template) that holds the workspace.
#[tokio::test]
async fn brain_serve_e2b_pauses_resumes_snapshots_and_restores_through_the_api() {
    let fake = FakeE2b::start().await;
    let brain = BrainProcess::start(e2b_brain_options(&fake, "")).await;
    let id = create(&brain, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let exec = |command: &str| {
        let path = format!("/v1/sandboxes/{id}/exec");
        let body = json!({"command": command});
        let brain = &brain;
        async move { brain.post_json(&path, &body).await }
    };
    let (status, r) = exec("echo v1 > notes.txt && echo ok").await;
    assert_eq!(
        (status, r["stdout"].as_str()),
        (StatusCode::OK, Some("ok\n")),
        "{r}"
    );
    let (status, v) = brain
        .post_json(&format!("/v1/sandboxes/{id}/pause"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(fake.sandboxes().len(), 1);
    let (status, _) = exec("true").await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a paused sandbox does not run commands"
    );
    let (status, v) = brain
        .post_json(&format!("/v1/sandboxes/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, r) = exec("cat notes.txt").await;
    assert_eq!(
        (status, r["stdout"].as_str()),
        (StatusCode::OK, Some("v1\n")),
        "{r}"
    );

    let (status, snap) = brain
        .post_json(&format!("/v1/sandboxes/{id}/snapshot"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snap}\n{}", brain.log());
    let snap_id = snap["snapshot"].as_str().unwrap().to_string();
    restore_read_and_delete(&brain, &id, &snap_id, "v1\n").await;
    assert!(fake.templates().is_empty());
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

#[tokio::test]
async fn brain_serve_e2b_provisions_execs_streams_and_deletes_through_the_api() {
    let fake = FakeE2b::start().await;
    let brain = BrainProcess::start(e2b_brain_options(&fake, "")).await;
    let created = create(&brain, json!({"task_description": "e2e"})).await;
    assert_eq!(created["backend"], "e2b");
    assert_eq!(created["status"], "running");
    let id = created["id"].as_str().unwrap().to_string();

    let [sb] = fake.sandboxes().try_into().expect("one sandbox");
    assert_eq!(sb.metadata["airlock.sandbox"], id);
    assert_eq!(sb.network["allowOut"], json!(["203.0.113.7/32"]));
    let ca = fake
        .file(&sb.id, "/etc/airlock/ca.pem")
        .expect("CA uploaded");
    assert!(String::from_utf8_lossy(&ca).contains("BEGIN CERTIFICATE"));
    assert!(sb.env_vars["HTTPS_PROXY"].ends_with(&format!("@{PROXY}")));
    assert!(sb.env_vars["HTTPS_PROXY"].starts_with(&format!("https://{id}:")));

    let (status, r) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"command": "echo hi; echo no >&2; exit 4"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["stdout"].as_str(),
            r["stderr"].as_str(),
            r["exit_code"].as_i64()
        ),
        (Some("hi\n"), Some("no\n"), Some(4))
    );

    let (_, r) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"command": "sleep 10", "timeout_s": 1}),
        )
        .await;
    assert_eq!(r["timed_out"], true, "{r}");

    let (status, events) = brain
        .post_sse(
            &format!("/v1/sandboxes/{id}/exec?stream=1"),
            json!({"command": "echo a; sleep 0.1; echo b >&2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["stdout", "stderr", "exit"], "{events:?}");

    // The provider's message reaches the caller (and so the model) as the tool error.
    let (status, err) = brain
        .post_json("/v1/sandboxes", json!({"image": "missing-template"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("template 'missing-template' not found"),
        "{err}"
    );

    let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(fake.sandboxes().is_empty());
    assert!(
        !brain.log().contains(&fake.api_key),
        "API key in the brain log"
    );
}

#[tokio::test]
async fn brain_e2b_credentials_need_a_reachable_proxy_and_only_stubs_reach_the_cloud() {
    let fake = FakeE2b::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault.yaml");
    std::fs::write(
        &vault,
        "listen: 127.0.0.1:0\nca: { cert: ca.pem, key: ca-key.pem }\naudit_log: audit.jsonl\n\
         egress: { default: deny }\ncredentials:\n  GITHUB_TOKEN:\n    value_env: REAL_GITHUB_TOKEN\n\
         \x20   allowed_hosts: [api.github.com]\n",
    )
    .unwrap();
    airlock_tests::vault::add_tls_listener(&vault);
    let real = format!("ghp_{}", "R".repeat(36));
    let options = |proxy: &str| BrainOptions {
        backend: "e2b".into(),
        extra_yaml: format!(
            "vault:\n  config: {}\nsandbox:\n  e2b:\n    api_url: {}\n    envd_url: {}\n{proxy}",
            vault.display(),
            fake.api_url,
            fake.envd_url
        ),
        env: vec![
            ("E2B_API_KEY".into(), fake.api_key.clone()),
            ("REAL_GITHUB_TOKEN".into(), real.clone()),
        ],
        ..BrainOptions::default()
    };

    // No proxy the cloud can reach: credentials are refused before anything is created.
    let brain = BrainProcess::start(options("")).await;
    let (status, err) = brain
        .post_json("/v1/sandboxes", json!({"credentials": ["GITHUB_TOKEN"]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sandbox.e2b.proxy_url"),
        "{err}"
    );
    assert_eq!(fake.creates(), 0);
    // Without credentials it runs, with no egress at all.
    let id = create(&brain, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sb = fake.sandboxes().pop().unwrap();
    assert_eq!(sb.metadata["airlock.sandbox"], id);
    assert_eq!(sb.network, json!({"denyOut": ["0.0.0.0/0"]}));
    assert!(!sb.env_vars.contains_key("HTTPS_PROXY"));
    brain.delete(&format!("/v1/sandboxes/{id}")).await;
    drop(brain);

    // With one: the sandbox gets a stub, never the real token, and egress only to the proxy.
    let brain = BrainProcess::start(options(&format!("    proxy_url: \"{PROXY}\"\n"))).await;
    let created = create(&brain, json!({"credentials": ["GITHUB_TOKEN"]})).await;
    assert_eq!(created["credentials"], json!(["GITHUB_TOKEN"]));
    let id = created["id"].as_str().unwrap();
    let sb = fake.sandboxes().pop().unwrap();
    let stub = sb.env_vars["GITHUB_TOKEN"].clone();
    assert!(
        stub.starts_with("ghp_") && stub.len() == real.len() && stub != real,
        "{stub}"
    );
    assert!(!format!("{:?}", sb.env_vars).contains(&real));
    assert_eq!(sb.network["allowOut"], json!(["203.0.113.7/32"]));
    let (_, r) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"command": "echo $GITHUB_TOKEN"}),
        )
        .await;
    assert_eq!(r["stdout"], format!("{stub}\n"));
}

/// Issue 16, crash safety of E2B snapshots: a brain SIGKILLed after E2B created a snapshot
/// template (and while its helper sandbox still runs) but before the brain recorded it.
/// After a restart, E2B holds neither that template nor the helper; a template with our
/// owner's marker and no record at all is swept too, another brain's is left alone, and a
/// snapshot completed before the crash survives and still restores.
#[tokio::test]
async fn brain_killed_mid_snapshot_leaves_no_e2b_template_or_helper_after_restart() {
    let fake = FakeE2b::start().await;
    let mut brain = BrainProcess::start(e2b_brain_options(&fake, "")).await;
    let id = create(&brain, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let exec_path = format!("/v1/sandboxes/{id}/exec");
    let (status, r) = brain
        .post_json(&exec_path, &json!({"command": "echo kept > notes.txt"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let (status, snap) = brain
        .post_json(&format!("/v1/sandboxes/{id}/snapshot"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snap}\n{}", brain.log());
    let kept = snap["snapshot"].as_str().unwrap().to_string();
    assert_eq!(fake.templates().len(), 1);

    // Leftovers as other crashes leave them: a template with our marker and no row at all,
    // and one of another brain's.
    let source = fake.sandboxes()[0].clone();
    let owner: String = source.metadata["airlock.owner"]
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    let http = airlock_tests::http_client();
    for name in [
        format!("airlock-{owner}-snap-ghost"),
        "airlock-someoneelse-snap-theirs".to_string(),
    ] {
        let resp = http
            .post(format!(
                "{}/sandboxes/{}/snapshots",
                fake.api_url, source.id
            ))
            .header("X-API-Key", &fake.api_key)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    assert_eq!(fake.templates().len(), 3);

    // The interrupted snapshot: E2B makes the template but answers only after the kill.
    fake.set_snapshot_delay(Duration::from_secs(60));
    let (status, r) = brain
        .post_json(&exec_path, &json!({"command": "echo lost > notes.txt"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let pending = {
        let req = brain
            .http
            .post(brain.url(&format!("/v1/sandboxes/{id}/snapshot")))
            .bearer_auth(&brain.master_key)
            .json(&json!({}));
        // Never answered: the brain dies first.
        tokio::spawn(async move { req.send().await.map(|r| r.status()) })
    };
    assert!(
        eventually(Duration::from_secs(20), || fake.templates().len() == 4).await,
        "the template was never made\n{}",
        brain.log()
    );
    let helpers = || {
        fake.sandboxes()
            .iter()
            .filter(|s| s.metadata["airlock.sandbox"].ends_with("-helper"))
            .count()
    };
    assert_eq!(helpers(), 1, "the helper runs while E2B snapshots it");
    brain.kill9();
    let _ = pending.await;
    fake.set_snapshot_delay(Duration::ZERO);
    brain.restart().await;

    let names = || {
        let mut v = fake.template_names();
        v.sort();
        v
    };
    assert!(
        eventually(Duration::from_secs(20), || helpers() == 0
            && fake.templates().len() == 2)
        .await,
        "templates {:?}, helpers {}\n{}",
        names(),
        helpers(),
        brain.log()
    );
    let fake_team = airlock_tests::fake_e2b::TEAM_SLUG;
    assert_eq!(
        names(),
        [
            format!("{fake_team}/airlock-{owner}-{kept}"),
            format!("{fake_team}/airlock-someoneelse-snap-theirs"),
        ],
        "only the completed snapshot and another brain's template are left"
    );
    // The source sandbox was adopted; the completed snapshot still restores.
    restore_read_and_delete(&brain, &id, &kept, "kept\n").await;
    assert_eq!(
        names(),
        [format!("{fake_team}/airlock-someoneelse-snap-theirs")]
    );
    assert!(fake.sandboxes().is_empty());
    assert_eq!(fake.spec_violations(), Vec::<String>::new());
}

#[tokio::test]
async fn brain_restart_adopts_its_e2b_sandbox_and_reaps_labelled_leftovers() {
    let fake = FakeE2b::start().await;
    let mut brain = BrainProcess::start(e2b_brain_options(&fake, "")).await;
    let id = create(&brain, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let owner = fake.sandboxes()[0].metadata["airlock.owner"].clone();

    // Leftovers as a crashed brain leaves them: ours (no row) and another brain's.
    let http = airlock_tests::http_client();
    for (sandbox, owner) in [("sb-ghost", owner.as_str()), ("sb-other", "someone-else")] {
        let resp = http
            .post(format!("{}/sandboxes", fake.api_url))
            .header("X-API-Key", &fake.api_key)
            .json(&json!({"templateID": "base", "timeout": 600,
                "metadata": {"airlock.sandbox": sandbox, "airlock.owner": owner}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    assert_eq!(fake.sandboxes().len(), 3);

    brain.kill9();
    brain.restart().await;
    let labels = || -> Vec<String> {
        let mut v: Vec<String> = fake
            .sandboxes()
            .iter()
            .map(|s| s.metadata["airlock.sandbox"].clone())
            .collect();
        v.sort();
        v
    };
    assert!(
        eventually(Duration::from_secs(10), || labels()
            == [id.clone(), "sb-other".to_string()])
        .await,
        "{:?}\n{}",
        labels(),
        brain.log()
    );
    // The adopted sandbox still works.
    let (status, r) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"command": "echo again"}),
        )
        .await;
    assert_eq!(
        (status, r["stdout"].as_str()),
        (StatusCode::OK, Some("again\n")),
        "{r}"
    );
}

#[tokio::test]
async fn brain_serve_local_default_with_daytona_per_request_and_reaper_on_restart() {
    let fake = FakeDaytona::start(Duration::from_secs(60)).await;
    fake.set_start_delay(Duration::from_millis(200));
    let opts = BrainOptions {
        backend: "local".into(),
        extra_yaml: format!(
            "{}sandbox:\n  allowed_backends: [daytona]\n  daytona:\n    api_url: {}\n    proxy_url: \"{PROXY}\"\n    retry_base_ms: 10\n",
            tls_vault_yaml(),
            fake.api_url
        ),
        env: vec![("DAYTONA_API_KEY".into(), fake.api_key.clone())],
        ..BrainOptions::default()
    };
    let mut brain = BrainProcess::start(opts).await;
    let created = create(&brain, json!({"backend": "daytona"})).await;
    assert_eq!(created["backend"], "daytona");
    let id = created["id"].as_str().unwrap().to_string();
    let sb = fake.sandboxes().pop().unwrap();
    assert_eq!(sb.labels["airlock.sandbox"], id);
    assert_eq!(sb.network_allow_list.as_deref(), Some("203.0.113.7/32"));
    assert!(fake.file(&sb.id, "/etc/airlock/ca.pem").is_some());

    let (status, r) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"command": "echo hi; exit 2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        (r["stdout"].as_str(), r["exit_code"].as_i64()),
        (Some("hi\n"), Some(2))
    );
    let (_, r) = brain
        .post_json(
            &format!("/v1/sandboxes/{id}/exec"),
            json!({"command": "sleep 10", "timeout_s": 1}),
        )
        .await;
    assert_eq!(r["timed_out"], true, "{r}");

    // A leftover labelled with this brain's owner but without a row is removed on restart.
    let http = airlock_tests::http_client();
    let owner = sb.labels["airlock.owner"].clone();
    let resp = http
        .post(format!("{}/sandbox", fake.api_url))
        .bearer_auth(&fake.api_key)
        .json(&json!({"labels": {"airlock.sandbox": "sb-ghost", "airlock.owner": owner}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    brain.kill9();
    brain.restart().await;
    // Daytona is not this brain's default backend: its row makes the brain build it again.
    assert!(
        eventually(Duration::from_secs(10), || fake.sandboxes().len() == 1).await,
        "{:?}\n{}",
        fake.sandboxes(),
        brain.log()
    );
    assert_eq!(fake.sandboxes()[0].labels["airlock.sandbox"], id);
    let (status, _) = brain.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(fake.sandboxes().is_empty());
}

// === overhead bench (run by bench/remote-backends/run.sh) ===

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut direct: Vec<f64>, mut brain: Vec<f64>) -> String {
    direct.sort_by(f64::total_cmp);
    brain.sort_by(f64::total_cmp);
    let (d50, b50) = (percentile(&direct, 0.5), percentile(&brain, 0.5));
    let (d99, b99) = (percentile(&direct, 0.99), percentile(&brain, 0.99));
    format!(
        "{name:<18} fake p50 {d50:8.2} ms  p99 {d99:8.2} ms | brain p50 {b50:8.2} ms  p99 {b99:8.2} ms | added p50 {:+8.2} ms ({:.2}x)",
        b50 - d50,
        b50 / d50
    )
}

/// Mean of a brain histogram for `backend` from `/metrics` (sum / count), in ms.
async fn metric_mean_ms(brain: &BrainProcess, name: &str, backend: &str) -> f64 {
    let text = brain
        .http
        .get(brain.url("/metrics"))
        .bearer_auth(&brain.master_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |suffix: &str| -> f64 {
        let prefix = format!("{name}_{suffix}{{backend=\"{backend}\"");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    value("sum") / value("count") * 1000.0
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The calls the brain makes to the fake for one E2B provision, made directly.
async fn e2b_direct_provision(
    http: &reqwest::Client,
    fake: &FakeE2b,
    i: usize,
) -> (String, String) {
    let sb: Value = http
        .post(format!("{}/sandboxes", fake.api_url))
        .header("X-API-Key", &fake.api_key)
        .json(
            &json!({"templateID": "base", "timeout": 600, "secure": true,
            "envVars": {"HTTPS_PROXY": "http://x:y@127.0.0.1:3128"},
            "metadata": {"airlock.sandbox": format!("sb-bench-{i}"), "airlock.owner": "bench"},
            "network": {"allowOut": ["127.0.0.1/32"], "denyOut": ["0.0.0.0/0"]}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = sb["sandboxID"].as_str().unwrap().to_string();
    let token = sb["envdAccessToken"].as_str().unwrap().to_string();
    let envd = |r: reqwest::RequestBuilder| {
        r.header("E2b-Sandbox-Id", &id)
            .header("E2b-Sandbox-Port", "49983")
            .header("X-Access-Token", &token)
    };
    let s = envd(http.get(format!("{}/health", fake.envd_url)))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, StatusCode::NO_CONTENT);
    let s = envd(http.post(format!(
        "{}/files?path=/etc/airlock/ca.pem&username=user",
        fake.envd_url
    )))
    .header("Content-Type", "application/octet-stream")
    .body(CA)
    .send()
    .await
    .unwrap()
    .status();
    assert!(s.is_success());
    (id, token)
}

async fn e2b_direct_exec(http: &reqwest::Client, fake: &FakeE2b, id: &str, token: &str) {
    let msg = serde_json::to_vec(&json!({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "true"], "envs": {}}, "stdin": false})).unwrap();
    let body = brain::sandbox::e2b::envelope(0, &msg);
    let resp = http
        .post(format!("{}/process.Process/Start", fake.envd_url))
        .header("E2b-Sandbox-Id", id)
        .header("E2b-Sandbox-Port", "49983")
        .header("X-Access-Token", token)
        .header("Content-Type", "application/connect+json")
        .header("Connect-Protocol-Version", "1")
        .header("Connect-Timeout-Ms", "60000")
        .body(body)
        .send()
        .await
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    assert!(bytes.len() > 5);
}

#[tokio::test]
#[ignore = "benchmark: bench/remote-backends/run.sh"]
async fn bench_brain_overhead_over_the_fakes() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let http = airlock_tests::http_client();
    let mut lines = Vec::new();

    // E2B.
    let fake = FakeE2b::start().await;
    let brain = BrainProcess::start(e2b_brain_options(&fake, "")).await;
    let (mut direct_p, mut brain_p, mut direct_x, mut brain_x) = (vec![], vec![], vec![], vec![]);
    // Warm both paths (connections, the brain's first build of the client).
    let (wid, wtok) = e2b_direct_provision(&http, &fake, 9999).await;
    e2b_direct_exec(&http, &fake, &wid, &wtok).await;
    let warm = create(&brain, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..n {
        let t = Instant::now();
        let (id, tok) = e2b_direct_provision(&http, &fake, i).await;
        direct_p.push(ms(t));
        let t = Instant::now();
        e2b_direct_exec(&http, &fake, &id, &tok).await;
        direct_x.push(ms(t));
        let t = Instant::now();
        let sid = create(&brain, json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        brain_p.push(ms(t));
        let t = Instant::now();
        let (s, _) = brain
            .post_json(
                &format!("/v1/sandboxes/{sid}/exec"),
                json!({"command": "true"}),
            )
            .await;
        brain_x.push(ms(t));
        assert_eq!(s, StatusCode::OK);
        brain.delete(&format!("/v1/sandboxes/{sid}")).await;
    }
    let _ = brain.delete(&format!("/v1/sandboxes/{warm}")).await;
    let inside = metric_mean_ms(&brain, "airlock_sandbox_provision_duration_seconds", "e2b").await;
    lines.push(format!(
        "e2b provision split: brain mean {:.2} ms = grant + provider calls {:.2} ms (/metrics) + API/store/task {:.2} ms; direct provider calls mean {:.2} ms",
        mean(&brain_p),
        inside,
        mean(&brain_p) - inside,
        mean(&direct_p)
    ));
    lines.push(summary("e2b provision", direct_p, brain_p));
    lines.push(summary("e2b exec true", direct_x, brain_x));
    drop(brain);
    drop(fake);

    // Daytona.
    let fake = FakeDaytona::start(Duration::from_secs(60)).await;
    let brain = BrainProcess::start(BrainOptions {
        backend: "daytona".into(),
        extra_yaml: format!(
            "{}sandbox:\n  daytona:\n    api_url: {}\n    proxy_url: \"{PROXY}\"\n",
            tls_vault_yaml(),
            fake.api_url
        ),
        env: vec![("DAYTONA_API_KEY".into(), fake.api_key.clone())],
        ..BrainOptions::default()
    })
    .await;
    let (mut direct_p, mut brain_p, mut direct_x, mut brain_x) = (vec![], vec![], vec![], vec![]);
    let direct_provision = |i: usize| {
        let http = http.clone();
        let url = fake.api_url.clone();
        let key = fake.api_key.clone();
        async move {
            let sb: Value = http
                .post(format!("{url}/sandbox"))
                .bearer_auth(&key)
                .json(&json!({"env": {"HTTPS_PROXY": "http://x:y@127.0.0.1:3128"},
                    "labels": {"airlock.sandbox": format!("sb-bench-{i}"), "airlock.owner": "bench"},
                    "autoStopInterval": 15, "autoDeleteInterval": 0, "ttlMinutes": 15,
                    "networkBlockAll": false, "networkAllowList": "127.0.0.1/32"}))
                .send().await.unwrap().json().await.unwrap();
            let id = sb["id"].as_str().unwrap().to_string();
            let got: Value = http
                .get(format!("{url}/sandbox/{id}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(got["state"], "started");
            let tb = format!("{}/{id}", got["toolboxProxyUrl"].as_str().unwrap());
            let s = http
                .post(format!("{tb}/files/upload-v2?path=/etc/airlock/ca.pem"))
                .bearer_auth(&key)
                .header("Content-Type", "application/octet-stream")
                .body(CA)
                .send()
                .await
                .unwrap()
                .status();
            assert!(s.is_success());
            tb
        }
    };
    let direct_exec = |tb: String| {
        let http = http.clone();
        let key = fake.api_key.clone();
        async move {
            let r: Value = http
                .post(format!("{tb}/process/execute"))
                .bearer_auth(&key)
                .json(&json!({"command": "true", "timeout": 60}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(r["exitCode"], 0);
        }
    };
    let wtb = direct_provision(9999).await;
    direct_exec(wtb).await;
    let warm = create(&brain, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..n {
        let t = Instant::now();
        let tb = direct_provision(i).await;
        direct_p.push(ms(t));
        let t = Instant::now();
        direct_exec(tb).await;
        direct_x.push(ms(t));
        let t = Instant::now();
        let sid = create(&brain, json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        brain_p.push(ms(t));
        let t = Instant::now();
        let (s, _) = brain
            .post_json(
                &format!("/v1/sandboxes/{sid}/exec"),
                json!({"command": "true"}),
            )
            .await;
        brain_x.push(ms(t));
        assert_eq!(s, StatusCode::OK);
        brain.delete(&format!("/v1/sandboxes/{sid}")).await;
    }
    let _ = brain.delete(&format!("/v1/sandboxes/{warm}")).await;
    let inside = metric_mean_ms(
        &brain,
        "airlock_sandbox_provision_duration_seconds",
        "daytona",
    )
    .await;
    lines.push(format!(
        "daytona provision split: brain mean {:.2} ms = grant + provider calls {:.2} ms (/metrics) + API/store/task {:.2} ms; direct provider calls mean {:.2} ms",
        mean(&brain_p),
        inside,
        mean(&brain_p) - inside,
        mean(&direct_p)
    ));
    lines.push(summary("daytona provision", direct_p, brain_p));
    lines.push(summary("daytona exec true", direct_x, brain_x));
    println!("\n== brain overhead over the fakes (n = {n}) ==");
    for l in lines {
        println!("{l}");
    }
}

/// Issue 11 item 9: `proxy_url` is checked when the backend is built: a public IPv4 address
/// (or a host name, checked after each resolution), with a clear error naming the key.
#[tokio::test]
async fn cloud_backends_refuse_a_proxy_the_cloud_cannot_reach() {
    for bad in [
        "127.0.0.1:3128",
        "10.0.0.5:3128",
        "100.64.0.1:3128",
        "[2001:db8::1]:3128",
    ] {
        let e = E2bBackend::with_key(
            E2bConfig {
                proxy_url: Some(bad.into()),
                ..E2bConfig::default()
            },
            "e2b_x".into(),
        )
        .unwrap_err();
        assert!(matches!(e, BackendError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("sandbox.e2b.proxy_url"), "{e}");
        let e = DaytonaBackend::with_key(
            DaytonaConfig {
                proxy_url: Some(bad.into()),
                ..DaytonaConfig::default()
            },
            "k".into(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("sandbox.daytona.proxy_url"), "{e}");
    }
    // A host name resolving to a private address is refused at provision, before any create.
    let fake = FakeDaytona::start(Duration::from_secs(60)).await;
    let backend = DaytonaBackend::with_key(
        DaytonaConfig {
            proxy_url: Some("localhost:3128".into()),
            ..daytona_config(&fake)
        },
        fake.api_key.clone(),
    )
    .unwrap();
    let err = backend.provision(&spec("sb-lh", 60)).await.unwrap_err();
    assert!(err.to_string().contains("public IPv4"), "{err}");
    assert_eq!(fake.creates(), 0);
}

/// Daytona's allow-list rules as the API applies them (the fake ports them from
/// `network-validation.util.ts`), table-driven.
#[test]
fn daytona_network_allow_list_rules() {
    let eleven = ["203.0.113.7/32"; 11].join(",");
    let ten_and_blanks = format!("{},,,", ["203.0.113.7/32"; 10].join(","));
    let table: &[(&str, Result<(), &str>)] = &[
        ("203.0.113.7/32", Ok(())),
        ("10.0.0.0/8,172.16.0.0/12", Ok(())),
        ("0.0.0.0/0", Ok(())),
        (&ten_and_blanks, Ok(())),
        ("203.0.113.7", Err("Missing CIDR prefix length")),
        ("2001:db8::1/128", Err("Must be a valid IPv4 address")),
        ("10.0.0.0/33", Err("Prefix must be between 0 and 32")),
        ("10.0.0.0/24/extra", Err("Must be CIDR notation")),
        (&eleven, Err("cannot contain more than 10 networks")),
    ];
    for (list, want) in table {
        let got = fake_daytona::validate_network_allow_list(list);
        match (want, &got) {
            (Ok(()), Ok(())) => {}
            (Err(w), Err(g)) if g.contains(w) => {}
            _ => panic!("{list}: want {want:?}, got {got:?}"),
        }
    }
}

/// `brain doctor --backend B` (the real binary) runs every smoke step against the fakes, by
/// URL + key, and without the key says so and exits 0.
#[tokio::test]
async fn brain_doctor_smoke_tests_e2b_and_daytona_and_skips_without_credentials() {
    let e2b_fake = FakeE2b::start().await;
    let daytona_fake = FakeDaytona::start(Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "sandbox:\n  e2b:\n    api_url: {}\n    envd_url: {}\n    retry_base_ms: 10\n  \
             daytona:\n    api_url: {}\n    retry_base_ms: 10\n",
            e2b_fake.api_url, e2b_fake.envd_url, daytona_fake.api_url
        ),
    )
    .unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let doctor = |backend: &str, env: Vec<(&str, String)>| {
        let mut c = std::process::Command::new(airlock_tests::bin_path("brain"));
        // The fakes run commands on this host and do not emulate the providers' firewalls:
        // the "blocked" probe targets a closed loopback port, so no traffic leaves the host.
        c.args([
            "doctor",
            "--backend",
            backend,
            "--blocked-probe",
            &closed,
            "--config",
        ])
        .arg(&config)
        .env_remove("E2B_API_KEY")
        .env_remove("DAYTONA_API_KEY");
        for (k, v) in env {
            c.env(k, v);
        }
        c
    };
    for (backend, key_env, key) in [
        ("e2b", "E2B_API_KEY", e2b_fake.api_key.clone()),
        ("daytona", "DAYTONA_API_KEY", daytona_fake.api_key.clone()),
    ] {
        let mut c = doctor(backend, vec![(key_env, key)]);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{backend}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for step in [
            "provision",
            "exec echo",
            "exec with a bad cwd",
            "exec that times out",
            "write file",
            "read file back",
            "list directory",
            "read a missing file is not found",
            "list a missing directory is not found",
            "direct egress is blocked",
            "destroy",
            "exec after destroy is sandbox_lost",
            "sweep doctor leftovers",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("ok ") && l.contains(step) && l.contains(" ms")),
                "{backend}: step {step:?} not ok:\n{text}"
            );
        }
        assert!(text.contains("skip  egress to the vault proxy"), "{text}");
        assert!(text.contains(" 0 failed"), "{text}");
        let mut c = doctor(backend, vec![]);
        let out = tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!(
                "skipped: no credentials (env {key_env} is not set)"
            )),
            "{text}"
        );
    }
    assert!(e2b_fake.sandboxes().is_empty());
    assert!(daytona_fake.sandboxes().is_empty());
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(e2b_fake.spec_violations(), Vec::<String>::new());
    // Every body the brain sent and the fake answered matches the provider spec.
    assert_eq!(daytona_fake.spec_violations(), Vec::<String>::new());
}

/// E2B's timeout cap and egress-rule validation as the fake applies them, table-driven.
#[test]
fn e2b_timeout_and_egress_rule_validation() {
    for (t, cap, ok) in [
        (0, 3600, true),
        (3600, 3600, true),
        (3601, 3600, false),
        (3900, 3600, false),
        (86_400, 86_400, true),
        (86_401, 86_400, false),
        (-1, 3600, false),
    ] {
        let r = fake_e2b::check_timeout(t, cap);
        assert_eq!(r.is_ok(), ok, "{t} under {cap}: {r:?}");
        if t > cap {
            assert!(r.unwrap_err().contains("Timeout cannot be greater than"));
        }
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for (allow, deny, want) in [
        (s(&["203.0.113.7/32"]), s(&["0.0.0.0/0"]), None),
        (
            s(&["8.8.8.8", "example.com", "*.example.com"]),
            s(&[]),
            None,
        ),
        (s(&[]), s(&["10.0.0.0/8", "1.2.3.4"]), None),
        (
            s(&[]),
            s(&["example.com"]),
            Some("not supported for deny rules"),
        ),
        (s(&["2001:db8::1/128"]), s(&[]), Some("allowOut[0]")),
        (s(&["10.0.0.0/33"]), s(&[]), Some("allowOut[0]")),
        (s(&[""]), s(&[]), Some("allowOut[0]")),
        (s(&[]), s(&["::/0"]), Some("denyOut[0]")),
    ] {
        let r = fake_e2b::validate_egress_rules(&allow, &deny);
        match (want, &r) {
            (None, Ok(())) => {}
            (Some(w), Err(e)) if e.contains(w) => {}
            _ => panic!("{allow:?} / {deny:?}: want {want:?}, got {r:?}"),
        }
    }
}
