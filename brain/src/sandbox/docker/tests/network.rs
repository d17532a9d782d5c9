//! Labels and adoption, the proxy container, subnet pools, isolation and egress.

use super::*;

#[tokio::test]
async fn orphans_of_a_previous_run_are_listed_and_destroyed() {
    let Some(b) = backend().await else { return };
    // A sandbox whose handle was lost (the brain died), plus a network left without its
    // container (the brain died between the two creates).
    let mut s = spec("orphan");
    s.owner = "previous-run".into();
    let _cleanup = Cleanup(s.id.clone());
    let lost = b.provision(&s).await.expect("provision");
    let net_only = format!("sb-unit-orphannet-{:08x}", rand::random::<u32>());
    let _cleanup2 = Cleanup(net_only.clone());
    b.docker
        .create_network(NetworkCreateRequest {
            name: b.network_name(&net_only),
            internal: Some(true),
            labels: Some(HashMap::from([(
                SANDBOX_LABEL.to_string(),
                net_only.clone(),
            )])),
            ..Default::default()
        })
        .await
        .unwrap();

    let found = b.list_labelled().await.unwrap();
    let orphan = found
        .iter()
        .find(|f| f.id == s.id)
        .expect("container orphan listed");
    assert_eq!(orphan.owner.as_deref(), Some("previous-run"));
    assert_eq!(orphan.backend_ref, lost.backend_ref);
    let net = found
        .iter()
        .find(|f| f.id == net_only)
        .expect("network orphan listed");
    assert!(net.backend_ref.starts_with(NETWORK_REF_PREFIX));

    for f in [orphan, net] {
        b.destroy_labelled(f).await.expect("destroy_labelled");
    }
    assert_gone(&s.id);
    assert_gone(&net_only);
    let found = b.list_labelled().await.unwrap();
    assert!(!found.iter().any(|f| f.id == s.id || f.id == net_only));
}

#[tokio::test]
async fn proxy_container_joins_the_network_and_is_detached_on_destroy() {
    let Some(probe) = backend().await else { return };
    // A stand-in for the vault proxy: any running container (labelled for cleanup).
    let proxy_id = format!("sb-unit-proxy-{:08x}", rand::random::<u32>());
    let _proxy_cleanup = Cleanup(proxy_id.clone());
    let proxy_name = format!("airlock-unit-proxy-{proxy_id}");
    let label = format!("{SANDBOX_LABEL}={proxy_id}");
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &proxy_name, "--label", &label])
        .args(["-e", "AIRLOCK_AGENT_TOKEN=x", &probe.config.image])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = DockerConfig {
        image: probe.config.image.clone(),
        proxy: Some(DockerProxyConfig {
            container: proxy_name.clone(),
            alias: Some("vault-proxy".into()),
        }),
        spare_networks: 0,
        ..Default::default()
    };
    let b = DockerBackend::connect(config).await.unwrap();
    let s = spec("withproxy");
    let _cleanup = Cleanup(s.id.clone());
    let h = b.provision(&s).await.expect("provision with a proxy");
    let r = sh(&b, &h, "getent hosts vault-proxy").await;
    assert_eq!(
        r.exit_code,
        Some(0),
        "the proxy alias does not resolve: {r:?}"
    );
    b.destroy(&h)
        .await
        .expect("destroy detaches the proxy, then removes the network");
    assert_gone(&s.id);
    let running = cli(&["inspect", "-f", "{{.State.Running}}", &proxy_name]);
    assert_eq!(
        running, "true",
        "the proxy itself must survive a sandbox's destroy"
    );
}

#[test]
fn subnet_pools_are_parsed_and_checked() {
    assert_eq!(parse_pool("10.213.7.9/16", 28).unwrap(), (0x0AD5_0000, 16));
    for bad in ["10.213.0.0", "10.213.0.0/29", "x/16", "10.0.0.0/0"] {
        assert!(parse_pool(bad, 28).is_err(), "{bad}");
    }
    assert!(parse_pool("10.213.0.0/16", 31).is_err());
}

#[tokio::test]
async fn networks_are_carved_from_the_subnet_pool() {
    let Some(probe) = backend().await else { return };
    let config = DockerConfig {
        image: probe.config.image.clone(),
        subnet_pool: Some("10.213.0.0/16".into()),
        spare_networks: 0,
        network: Some(SandboxNetwork::Internal),
        ..Default::default()
    };
    let b = DockerBackend::connect(config).await.unwrap();
    let (s1, s2) = (spec("pool1"), spec("pool2"));
    let _cleanup = (Cleanup(s1.id.clone()), Cleanup(s2.id.clone()));
    let (h1, h2) = tokio::join!(b.provision(&s1), b.provision(&s2));
    let (h1, h2) = (h1.expect("provision 1"), h2.expect("provision 2"));
    for h in [&h1, &h2] {
        let ip = &h.extra[EXTRA_SANDBOX_IP];
        assert!(ip.starts_with("10.213."), "address {ip} not from the pool");
        assert_eq!(sh(&b, h, "echo ok").await.stdout, "ok\n");
    }
    assert_ne!(h1.extra[EXTRA_SANDBOX_IP], h2.extra[EXTRA_SANDBOX_IP]);
    b.destroy(&h1).await.unwrap();
    b.destroy(&h2).await.unwrap();
    assert_gone(&s1.id);
    assert_gone(&s2.id);
}
/// Every IPv4 address of this machine (its interfaces, docker bridges, loopback).
fn host_ipv4s() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .expect("ip -4 -o addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .collect()
}

fn docker0_ipv4() -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "docker0"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(3)
        .and_then(|c| c.split('/').next())
        .map(str::to_string)
}

/// Tries a TCP connect (2 s timeout) to each `ip:port` and prints `OPEN`/`closed` per
/// target. The first target is a listener the script opens on the sandbox's own loopback,
/// so a probe that cannot connect to anything is caught.
const PROBE: &str = r#"
import socket, sys
own = socket.socket(); own.bind(("127.0.0.1", 0)); own.listen(8)
targets = [("127.0.0.1", own.getsockname()[1])]
targets += [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sys.argv[1:]]
for addr, port in targets:
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((addr, port)); print("OPEN", addr, port)
    except Exception as e:
        print("closed", addr, port, type(e).__name__)
    finally:
        s.close()
"#;

/// Runs [`PROBE`] in the sandbox and returns the lines of the targets it found open.
async fn probe(b: &DockerBackend, h: &SandboxHandle, targets: &[String]) -> Vec<String> {
    b.write_file(h, "/tmp/probe.py", Bytes::from_static(PROBE.as_bytes()))
        .await
        .expect("write probe");
    let r = sh(
        b,
        h,
        &format!("python3 /tmp/probe.py {}", targets.join(" ")),
    )
    .await;
    assert_eq!(r.exit_code, Some(0), "{r:?}");
    eprintln!("probe from {}:\n{}", h.id, r.stdout);
    let mut lines = r.stdout.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("OPEN 127.0.0.1")),
        "the probe cannot even reach its own loopback: {r:?}"
    );
    lines
        .filter(|l| l.starts_with("OPEN"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_host_and_other_sandboxes_are_unreachable() {
    for mode in [SandboxNetwork::None, SandboxNetwork::Internal] {
        let Some(b) = backend_on_network(mode).await else {
            return;
        };
        unreachable_with(&b, mode).await;
    }
}

async fn unreachable_with(b: &DockerBackend, mode: SandboxNetwork) {
    let b = b.clone();
    // Host services a sandbox must not reach: one on every address, one on docker0.
    let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let any_port = any.local_addr().unwrap().port();
    let docker0 = docker0_ipv4();
    let on_docker0 = docker0
        .as_ref()
        .map(|ip| std::net::TcpListener::bind((ip.as_str(), 0)).unwrap());
    let host = host_ipv4s();
    assert!(!host.is_empty());
    let mut targets: Vec<String> = host.iter().map(|ip| format!("{ip}:{any_port}")).collect();
    if let (Some(ip), Some(l)) = (&docker0, &on_docker0) {
        targets.push(format!("{ip}:{}", l.local_addr().unwrap().port()));
    }

    let (s1, s2) = (spec("reach1"), spec("reach2"));
    let _cleanup = (Cleanup(s1.id.clone()), Cleanup(s2.id.clone()));
    let (h1, h2) = tokio::join!(b.provision(&s1), b.provision(&s2));
    let (h1, h2) = (h1.expect("provision 1"), h2.expect("provision 2"));

    let open = probe(&b, &h1, &targets).await;
    assert!(
        open.is_empty(),
        "host services reachable from a sandbox: {open:?}"
    );

    // Another sandbox's listener: reachable from itself, not from the first sandbox. (Without
    // a network a sandbox has no address another could try; 127.0.0.1 is its own.)
    let other = match mode {
        SandboxNetwork::Internal => format!("{}:8000", h2.extra[EXTRA_SANDBOX_IP]),
        SandboxNetwork::None => "127.0.0.1:8000".to_string(),
    };
    let serve = "nohup python3 -c 'import socket,time; s=socket.socket(); \
                     s.bind((\"0.0.0.0\", 8000)); s.listen(8); time.sleep(600)' >/dev/null 2>&1 &";
    assert_eq!(sh(&b, &h2, serve).await.exit_code, Some(0));
    let mut seen = false;
    for _ in 0..20 {
        if !probe(&b, &h2, std::slice::from_ref(&other))
            .await
            .is_empty()
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "the second sandbox cannot reach its own listener at {other}"
    );
    let open = probe(&b, &h1, std::slice::from_ref(&other)).await;
    assert!(open.is_empty(), "one sandbox reaches another: {open:?}");
    if mode == SandboxNetwork::None {
        let r = sh(&b, &h1, "cat /proc/net/route").await;
        assert_eq!(
            r.stdout.lines().count(),
            1,
            "routes without a network:\n{}",
            r.stdout
        );
    }

    // No IPv6 either: the host side of the bridge has a link-local address, so the
    // sandbox must have no IPv6 address besides loopback (Docker disables IPv6 in
    // containers on non-IPv6 networks; without CAP_NET_ADMIN it cannot be re-enabled).
    let r = sh(&b, &h1, "cat /proc/net/if_inet6").await;
    assert!(
        r.stdout.lines().all(|l| l.trim_end().ends_with(" lo")),
        "sandbox has IPv6 beyond loopback:\n{}",
        r.stdout
    );

    // Routes: whatever gateway a route names does not exist on this machine.
    let r = sh(&b, &h1, "cat /proc/net/route").await;
    eprintln!("sandbox routes:\n{}", r.stdout);
    for line in r.stdout.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let gw = u32::from_str_radix(cols[2], 16).unwrap();
        if gw == 0 {
            continue;
        }
        let gw = Ipv4Addr::from(gw.to_le_bytes()).to_string();
        assert!(
            !host.contains(&gw),
            "route via {gw}, an address of this machine: {line}"
        );
    }
    b.destroy(&h1).await.unwrap();
    b.destroy(&h2).await.unwrap();
    assert_gone(&s1.id);
    assert_gone(&s2.id);
}

/// A plain HTTP server on the host (all addresses) that records request lines.
async fn recording_upstream() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                log.lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or_default().to_string());
                let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nupstream-ok")
                        .await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn egress_goes_only_through_the_socket_and_survives_a_brain_restart() {
    let Some(probe_backend) = backend().await else {
        return;
    };
    let (port, seen) = recording_upstream().await;
    let config = DockerConfig {
        image: probe_backend.config.image.clone(),
        startup_timeout_seconds: 60,
        egress_upstream: Some(format!("127.0.0.1:{port}")),
        spare_networks: 0,
        ..Default::default()
    };
    let b = DockerBackend::connect(config.clone()).await.unwrap();
    let s = spec("egress");
    let _cleanup = Cleanup(s.id.clone());
    let h = b.provision(&s).await.expect("provision with egress");
    assert!(b.runtime_dir(&s.id).join(EGRESS_SOCKET).exists());

    let via_proxy = format!("curl -sS -m 10 -x http://{SANDBOX_PROXY_ADDR} http://anything.test/");
    let r = sh(&b, &h, &via_proxy).await;
    assert_eq!(r.stdout, "upstream-ok", "{r:?}");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["GET http://anything.test/ HTTP/1.1"],
        "the proxy-form request reaches the upstream"
    );

    // Straight to the same server, on every address of this machine: refused.
    let direct: Vec<String> = host_ipv4s()
        .iter()
        .map(|ip| {
            format!(
                "curl -sS -m 3 --noproxy '*' http://{ip}:{port}/ >/dev/null 2>&1; echo \"{ip} $?\""
            )
        })
        .collect();
    let r = sh(&b, &h, &direct.join("; ")).await;
    eprintln!("direct curl exit codes:\n{}", r.stdout);
    for line in r.stdout.lines() {
        assert!(
            !line.ends_with(" 0"),
            "reached the host without the proxy: {line}"
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "{:?}", seen.lock().unwrap());

    // The brain goes away: its egress listener with it.
    drop(b);
    let r = sh(&probe_backend, &h, &via_proxy).await;
    assert_ne!(r.stdout, "upstream-ok", "egress without a brain: {r:?}");
    // A new brain adopts the sandbox and re-creates the egress socket.
    let b2 = DockerBackend::connect(config).await.unwrap();
    assert!(b2.is_alive(&h).await);
    b2.adopt(&h).await.expect("adopt");
    assert!(b2.egress().unwrap().is_running(&s.id));
    let r = sh(&b2, &h, &via_proxy).await;
    assert_eq!(r.stdout, "upstream-ok", "{r:?}");

    b2.destroy(&h).await.unwrap();
    assert!(!b2.egress().unwrap().is_running(&s.id));
    assert!(!b2.runtime_dir(&s.id).exists());
    assert_gone(&s.id);
}

#[tokio::test]
async fn a_bad_egress_upstream_or_runtime_dir_is_refused() {
    if !Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return skip("`docker info` failed (no engine)");
    }
    let err = DockerBackend::connect(DockerConfig {
        egress_upstream: Some("no-port".into()),
        ..Default::default()
    })
    .await
    .expect_err("host:port required");
    assert!(matches!(err, BackendError::Invalid(_)), "{err:?}");
    // A proxy container joins each sandbox's network: a sandbox without one cannot reach it.
    let err = DockerBackend::connect(DockerConfig {
        proxy: Some(DockerProxyConfig {
            container: "vault-proxy".into(),
            alias: None,
        }),
        network: Some(SandboxNetwork::None),
        ..Default::default()
    })
    .await
    .expect_err("a proxy container without a network");
    assert!(err.to_string().contains("network: internal"), "{err}");
    // A runtime dir that is a symlink (e.g. planted in /tmp by someone else) is refused.
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("rt");
    std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
    let err = DockerBackend::connect(DockerConfig {
        runtime_dir: Some(link),
        ..Default::default()
    })
    .await
    .expect_err("symlink refused");
    assert!(err.to_string().contains("not a directory"), "{err}");
}
