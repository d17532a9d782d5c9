//! Spare networks: one sandbox per network, removed with it, drained at shutdown, swept
//! after a crash (`spare.rs`).

use std::collections::BTreeSet;

use super::*;

async fn spare_backend(size: usize) -> Option<DockerBackend> {
    backend_with(DockerConfig {
        startup_timeout_seconds: 60,
        spare_networks: size,
        network: Some(SandboxNetwork::Internal),
        ..Default::default()
    })
    .await
}

/// Removes every network one backend instance made as a spare when dropped.
struct SpareCleanup(String);

impl Drop for SpareCleanup {
    fn drop(&mut self) {
        let filter = format!("label={SPARE_LABEL}={}", self.0);
        for n in cli(&["network", "ls", "-q", "--filter", &filter]).split_whitespace() {
            cli(&["network", "rm", n]);
        }
    }
}

/// Names of the networks carrying this instance's spare label (free or taken).
fn spares_of(instance: &str) -> BTreeSet<String> {
    let filter = format!("label={SPARE_LABEL}={instance}");
    cli(&[
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        "{{.Name}}",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

async fn wait_spares(b: &DockerBackend, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.spares.ready().len() < n || b.spares.filling() {
        assert!(Instant::now() < deadline, "spares not refilled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Container ids on a network.
async fn members(b: &DockerBackend, network: &str) -> Vec<String> {
    b.docker
        .inspect_network(network, None)
        .await
        .expect("inspect network")
        .containers
        .unwrap_or_default()
        .into_keys()
        .collect()
}

async fn network_exists(b: &DockerBackend, network: &str) -> bool {
    match b.docker.inspect_network(network, None).await {
        Ok(_) => true,
        Err(e) if status(&e) == Some(404) => false,
        Err(e) => panic!("inspect network: {e}"),
    }
}

#[tokio::test]
async fn spare_networks_are_never_shared_go_with_their_sandbox_and_drain_at_shutdown() {
    let Some(b) = spare_backend(2).await else {
        return;
    };
    let _spares = SpareCleanup(b.spares.instance().to_string());
    b.warm_up(TEST_OWNER);
    wait_spares(&b, 2).await;
    let first: BTreeSet<String> = b.spares.ready().into_iter().map(|s| s.id).collect();

    // Three sandboxes one after the other, then two at once: each on a network of its own.
    let mut handles = Vec::new();
    let mut cleanups = Vec::new();
    for round in 0..3 {
        let s = spec(&format!("spare{round}"));
        cleanups.push(Cleanup(s.id.clone()));
        handles.push(b.provision(&s).await.expect("provision"));
        wait_spares(&b, 2).await;
    }
    let (s3, s4) = (spec("spare3"), spec("spare4"));
    cleanups.push(Cleanup(s3.id.clone()));
    cleanups.push(Cleanup(s4.id.clone()));
    let (h3, h4) = tokio::join!(b.provision(&s3), b.provision(&s4));
    handles.extend([h3.expect("provision"), h4.expect("provision")]);
    wait_spares(&b, 2).await;

    let nets: Vec<&String> = handles.iter().map(|h| &h.extra[EXTRA_NETWORK_ID]).collect();
    let distinct: BTreeSet<&String> = nets.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        handles.len(),
        "a network was shared: {nets:?}"
    );
    assert!(
        first.iter().all(|id| nets.contains(&id)),
        "the first spares were used: {first:?} / {nets:?}"
    );
    let free: BTreeSet<String> = b.spares.ready().into_iter().map(|s| s.id).collect();
    for h in &handles {
        let net = &h.extra[EXTRA_NETWORK_ID];
        assert!(!free.contains(net), "a used network is offered again");
        // The network holds this sandbox's container and nothing else, and the container
        // records it for the label sweep.
        assert_eq!(members(&b, net).await, vec![h.backend_ref.clone()]);
        let inspect = b.docker.inspect_container(&h.backend_ref, None).await;
        let labels = inspect.unwrap().config.unwrap().labels.unwrap();
        assert_eq!(labels.get(NETWORK_LABEL), Some(net));
        assert_eq!(sh(&b, h, "echo up").await.stdout, "up\n");
    }
    assert!(
        handles
            .iter()
            .any(|h| h.extra[EXTRA_NETWORK_NAME].contains("spare-")),
        "no provision took a spare"
    );

    // Destroying a sandbox removes its network; the free spares are untouched.
    for h in &handles {
        b.destroy(h).await.expect("destroy");
        assert!(!network_exists(&b, &h.extra[EXTRA_NETWORK_ID]).await);
        assert_gone(&h.id);
    }
    for id in &free {
        assert!(network_exists(&b, id).await);
    }

    // Shutdown removes the free spares and makes no more.
    b.shutdown().await;
    assert!(spares_of(b.spares.instance()).is_empty());
    let s = spec("after-shutdown");
    let _cleanup = Cleanup(s.id.clone());
    let h = b.provision(&s).await.expect("provision after shutdown");
    assert_eq!(h.extra[EXTRA_NETWORK_NAME], b.network_name(&s.id));
    b.destroy(&h).await.expect("destroy");
    assert!(spares_of(b.spares.instance()).is_empty());
    assert_gone(&s.id);
}

#[tokio::test]
async fn a_crashed_instances_spares_are_swept_but_not_one_a_sandbox_uses() {
    let Some(crashed) = spare_backend(2).await else {
        return;
    };
    let _spares = SpareCleanup(crashed.spares.instance().to_string());
    crashed.warm_up(TEST_OWNER);
    wait_spares(&crashed, 2).await;
    let s = spec("crash");
    let _cleanup = Cleanup(s.id.clone());
    let h = crashed.provision(&s).await.expect("provision");
    wait_spares(&crashed, 2).await;
    let used = h.extra[EXTRA_NETWORK_ID].clone();
    let instance = crashed.spares.instance().to_string();
    assert_eq!(spares_of(&instance).len(), 3);
    // The brain dies: no shutdown, its spares stay on the engine.
    drop(crashed);

    let next = spare_backend(0).await.expect("engine still there");
    let found = next.list_labelled().await.unwrap();
    let spares: Vec<&LabelledSandbox> = found
        .iter()
        .filter(|f| f.backend_ref.starts_with(SPARE_REF_PREFIX))
        .filter(|f| spares_of(&instance).contains(&f.id))
        .collect();
    assert_eq!(spares.len(), 3, "{found:?}");
    assert!(
        spares
            .iter()
            .all(|f| f.owner.as_deref() == Some(TEST_OWNER))
    );
    for f in &spares {
        next.destroy_labelled(f).await.expect("sweep a spare");
    }
    // The free ones are gone; the one under a sandbox stays, and the sandbox still works.
    assert_eq!(
        spares_of(&instance),
        BTreeSet::from([h.extra[EXTRA_NETWORK_NAME].clone()])
    );
    assert_eq!(members(&next, &used).await, vec![h.backend_ref.clone()]);
    assert_eq!(sh(&next, &h, "echo still").await.stdout, "still\n");

    // The sandbox swept by its label (no handle) takes its spare network along.
    let orphan = found.iter().find(|f| f.id == s.id).expect("sandbox listed");
    next.destroy_labelled(orphan)
        .await
        .expect("sweep the sandbox");
    assert!(spares_of(&instance).is_empty());
    assert!(!network_exists(&next, &used).await);
    assert_gone(&s.id);
}
