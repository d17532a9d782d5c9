//! Limits and hardening of the container, and failed provisions.

use super::*;

#[tokio::test]
async fn limits_and_hardening_are_in_the_host_config() {
    for mode in [SandboxNetwork::None, SandboxNetwork::Internal] {
        let Some(b) = backend_on_network(mode).await else {
            return;
        };
        limits_and_hardening_with(&b, mode).await;
    }
}

async fn limits_and_hardening_with(b: &DockerBackend, mode: SandboxNetwork) {
    let mut s = spec("limits");
    s.resources = Resources {
        cpus: 0.5,
        memory_mb: 256,
        pids: 64,
    };
    let _cleanup = Cleanup(s.id.clone());
    let h = b.provision(&s).await.expect("provision");
    let inspect = b
        .docker
        .inspect_container(&h.backend_ref, None)
        .await
        .unwrap();
    let hc = inspect.host_config.unwrap();
    assert_eq!(hc.memory, Some(256 * 1024 * 1024));
    assert_eq!(hc.memory_swap, Some(256 * 1024 * 1024));
    assert_eq!(hc.nano_cpus, Some(500_000_000));
    assert_eq!(hc.pids_limit, Some(64));
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        hc.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    assert_eq!(
        hc.init,
        Some(true),
        "the engine has docker-init; zombies must be reaped"
    );
    assert!(
        hc.port_bindings.unwrap_or_default().is_empty(),
        "no published ports"
    );
    let tmpfs = hc.tmpfs.unwrap();
    assert!(tmpfs["/workspace"].contains("uid=1000") && tmpfs["/workspace"].contains("size="));
    assert!(tmpfs["/tmp"].contains("size="));
    let config = inspect.config.unwrap();
    assert_eq!(config.user.as_deref(), Some(SANDBOX_USER));
    let env = config.env.unwrap();
    assert!(env.contains(&format!("AIRLOCK_AGENT_TOKEN={}", s.agent_token)));
    let labels = config.labels.unwrap();
    assert_eq!(labels.get(SANDBOX_LABEL), Some(&s.id));
    assert_eq!(
        labels.get(OWNER_LABEL).map(String::as_str),
        Some(TEST_OWNER)
    );
    let networks = inspect.network_settings.unwrap().networks.unwrap();
    if mode == SandboxNetwork::None {
        // No network: loopback only, and nothing in the handle names one.
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(networks.keys().collect::<Vec<_>>(), vec!["none"]);
        for key in [EXTRA_NETWORK_ID, EXTRA_NETWORK_NAME, EXTRA_SANDBOX_IP] {
            assert!(!h.extra.contains_key(key), "{key} in {:?}", h.extra);
        }
        assert!(!labels.contains_key(NETWORK_LABEL));
        let r = sh(b, &h, "cat /proc/net/dev").await;
        let interfaces: Vec<&str> = r
            .stdout
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(interfaces, vec!["lo"], "{}", r.stdout);
        b.destroy(&h).await.unwrap();
        assert_gone(&s.id);
        return;
    }
    assert_eq!(
        hc.network_mode.as_deref(),
        Some(h.extra[EXTRA_NETWORK_NAME].as_str())
    );
    // The only network is the sandbox's own, and it is internal.
    assert_eq!(
        networks.keys().collect::<Vec<_>>(),
        vec![&h.extra[EXTRA_NETWORK_NAME]]
    );
    let net = b
        .docker
        .inspect_network(&h.extra[EXTRA_NETWORK_ID], None)
        .await
        .unwrap();
    assert_eq!(net.internal, Some(true));
    let options = net.options.unwrap_or_default();
    assert_eq!(options["com.docker.network.bridge.inhibit_ipv4"], "true");
    let bridge = options["com.docker.network.bridge.name"].clone();
    assert!(
        bridge.starts_with(BRIDGE_PREFIX) && bridge.len() <= 15,
        "{bridge}"
    );
    let link = Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .unwrap();
    assert!(link.status.success(), "host interface {bridge} missing");
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &bridge])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&addrs.stdout).trim(),
        "",
        "the sandbox bridge must have no host address"
    );
    assert_eq!(net.labels.unwrap().get(SANDBOX_LABEL), Some(&s.id));
    b.destroy(&h).await.unwrap();
    assert_gone(&s.id);
}

#[tokio::test]
async fn inside_the_sandbox_is_unprivileged_and_read_only() {
    let Some(b) = backend().await else { return };
    let s = spec("inside");
    let _cleanup = Cleanup(s.id.clone());
    let h = b.provision(&s).await.expect("provision");
    let r = sh(&b, &h, "id -u; id -g").await;
    assert_eq!(r.stdout, "1000\n1000\n");
    let r = sh(&b, &h, "touch /x").await;
    assert_ne!(r.exit_code, Some(0), "root fs must be read-only: {r:?}");
    assert!(r.stderr.contains("Read-only"), "{r:?}");
    let r = sh(
        &b,
        &h,
        "echo data > /workspace/f && cat /workspace/f && touch /tmp/t && touch $HOME/.x && echo ok",
    )
    .await;
    assert_eq!(r.stdout, "data\nok\n", "{r:?}");
    let r = sh(
        &b,
        &h,
        "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status",
    )
    .await;
    for line in r.stdout.lines() {
        let (key, value) = line.split_once(':').unwrap();
        let expected = if key == "NoNewPrivs" {
            "1"
        } else {
            "0000000000000000"
        };
        assert_eq!(value.trim(), expected, "{line}");
    }
    b.destroy(&h).await.unwrap();
    assert_gone(&s.id);
}

#[tokio::test]
async fn memory_hog_is_killed_and_the_sandbox_keeps_working() {
    let Some(b) = backend().await else { return };
    let mut s = spec("oom");
    s.resources.memory_mb = 256;
    let _cleanup = Cleanup(s.id.clone());
    let h = b.provision(&s).await.expect("provision");
    let has_python = sh(&b, &h, "command -v python3").await.exit_code == Some(0);
    let hog = if has_python {
        "python3 -c \"a=' '*2_000_000_000; print('survived')\""
    } else {
        // Images without python (dev images): `dd` fills a 1000 MB buffer.
        "dd if=/dev/zero of=/dev/null bs=1000M count=2 && echo survived"
    };
    let r = sh(&b, &h, hog).await;
    eprintln!("memory hog under a 256 MB limit: {r:?}");
    assert!(
        !r.stdout.contains("survived"),
        "a 2 GB allocation passed a 256 MB limit: {r:?}"
    );
    assert_ne!(r.exit_code, Some(0), "{r:?}");
    let r = sh(&b, &h, "echo still here").await;
    assert_eq!(r.stdout, "still here\n");
    assert!(b.is_alive(&h).await);
    b.destroy(&h).await.unwrap();
    assert_gone(&s.id);
}

#[tokio::test]
async fn fork_bomb_is_contained_by_the_pids_limit() {
    let Some(b) = backend().await else { return };
    let mut s = spec("forkbomb");
    s.resources.pids = 64;
    let _cleanup = Cleanup(s.id.clone());
    let h = b.provision(&s).await.expect("provision");
    // The outer shell stays until the timeout, so the bomb keeps pressing on the limit for
    // the whole 5 s and the agent has to kill the group. `exec`: with the pids limit full
    // the shell could not fork a `sleep` child (exit 2 at once, a flaky test).
    let bomb = "if command -v bash >/dev/null; then bash -c ':(){ :|:& };:'; else sh -c 'f(){ f|f& };f'; fi; exec sleep 60";
    let req = ExecRequest {
        command: Some(bomb.into()),
        timeout_ms: Some(5_000),
        ..Default::default()
    };
    let started = Instant::now();
    let r = b
        .exec(&h, req)
        .await
        .expect("the agent survives a fork bomb");
    eprintln!(
        "fork bomb under pids=64: {:?}, exit {:?}, timed_out {}",
        started.elapsed(),
        r.exit_code,
        r.timed_out
    );
    assert!(r.timed_out, "{r:?}");
    assert!(
        r.stderr.contains("Resource temporarily unavailable") || r.stderr.contains("fork"),
        "the pids limit was never hit: {r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{r:?}");
    // The group is killed at the timeout; give the kernel a moment to reap.
    let mut last = None;
    for _ in 0..50 {
        let r = b
            .exec(
                &h,
                ExecRequest {
                    command: Some("echo alive".into()),
                    timeout_ms: Some(5_000),
                    ..Default::default()
                },
            )
            .await;
        if let Ok(r) = &r
            && r.stdout == "alive\n"
        {
            last = None;
            break;
        }
        last = Some(r);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.is_none(),
        "sandbox unusable after a fork bomb: {last:?}"
    );
    let top = cli(&["top", &h.backend_ref]);
    assert!(
        top.lines().count() < 10,
        "processes left after the fork bomb:\n{top}"
    );
    b.destroy(&h).await.unwrap();
    assert_gone(&s.id);
}

#[tokio::test]
async fn files_are_bind_mounted_read_only() {
    let Some(b) = backend().await else { return };
    let mut s = spec("files");
    s.files = vec![
        (
            "/etc/airlock/ca.pem".into(),
            Bytes::from_static(b"CA PEM\n"),
        ),
        (
            "/workspace/.airlock/note.txt".into(),
            Bytes::from_static(b"note\n"),
        ),
    ];
    let _cleanup = Cleanup(s.id.clone());
    let h = b.provision(&s).await.expect("provision");
    let r = sh(
        &b,
        &h,
        "cat /etc/airlock/ca.pem /workspace/.airlock/note.txt",
    )
    .await;
    assert_eq!(r.stdout, "CA PEM\nnote\n", "{r:?}");
    let r = sh(&b, &h, "echo x > /etc/airlock/ca.pem").await;
    assert_ne!(r.exit_code, Some(0), "staged files must be read-only");
    let dir = PathBuf::from(&h.extra[EXTRA_FILES_DIR]);
    assert!(dir.exists());
    b.destroy(&h).await.unwrap();
    assert!(!dir.exists(), "staged files outlive the sandbox");
    assert_gone(&s.id);
}

#[tokio::test]
async fn missing_image_is_a_clear_error_and_leaves_nothing() {
    let Some(b) = backend().await else { return };
    let mut s = spec("noimage");
    s.image = Some("airlock-no-such-image:never".into());
    s.files = vec![("/etc/x".into(), Bytes::from_static(b"x"))];
    let _cleanup = Cleanup(s.id.clone());
    let err = b.provision(&s).await.expect_err("missing image");
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Invalid(_)), "{err:?}");
    assert!(
        msg.contains("airlock-no-such-image:never") && msg.contains("images/build-offline.sh"),
        "{msg}"
    );
    assert_gone(&s.id);
}

#[tokio::test]
async fn agent_that_never_answers_fails_with_its_log_and_leaves_nothing() {
    // The agent listens on another socket: the container runs but /health never answers
    // where we look.
    let config = DockerConfig {
        startup_timeout_seconds: 3,
        spare_networks: 0,
        ..Default::default()
    };
    let Some(mut b) = backend_with(config).await else {
        return;
    };
    b.agent_socket = "other.sock";
    let s = spec("notready");
    let _cleanup = Cleanup(s.id.clone());
    let err = b.provision(&s).await.expect_err("agent unreachable");
    assert!(matches!(err, BackendError::NotReady(_)), "{err:?}");
    // The container's own log is in the error: the agent printed where it listens.
    assert!(
        err.to_string()
            .contains("listening on unix:/run/airlock/other.sock"),
        "{err}"
    );
    assert_gone(&s.id);
}
