use std::collections::BTreeMap;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodCondition,
    PodStatus,
};

use super::*;
use crate::sandbox::Resources;

fn spec() -> SandboxSpec {
    SandboxSpec {
        id: "sb-0123abcd".into(),
        owner: "brain-test".into(),
        image: None,
        resources: Resources {
            cpus: 1.5,
            memory_mb: 768,
            pids: 128,
        },
        env: BTreeMap::from([
            ("GITHUB_TOKEN".to_string(), "ghp_stubSTUBSTUB".to_string()),
            (
                "HTTPS_PROXY".to_string(),
                "http://sb-0123abcd:proxytok@127.0.0.1:41000".to_string(),
            ),
            (
                "SSL_CERT_FILE".to_string(),
                "/etc/airlock/ca.pem".to_string(),
            ),
        ]),
        files: vec![("/etc/airlock/ca.pem".into(), Bytes::from_static(b"PEM"))],
        agent_token: "agent-secret-token".into(),
        ttl_s: 600,
        workspace: None,
        cache_tenant: None,
    }
}

fn config() -> KubernetesConfig {
    KubernetesConfig {
        runtime_class_name: Some("gvisor".into()),
        proxy_url: Some("vault-proxy.airlock-system.svc:8899".into()),
        pod_template: PodTemplateOverrides {
            node_selector: BTreeMap::from([("pool".to_string(), "sandboxes".to_string())]),
            annotations: BTreeMap::from([("team".to_string(), "x".to_string())]),
            ..Default::default()
        },
        ..KubernetesConfig::default()
    }
}

fn secret_value(secret: &Secret, env: &EnvVar) -> String {
    let key = &env
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{} is not from the secret", env.name))
        .key;
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[test]
fn pod_is_locked_down_and_labelled() {
    let (pod, secret) = render(&config(), &spec()).unwrap();
    let meta = &pod.metadata;
    assert_eq!(meta.name.as_deref(), Some("airlock-sb-0123abcd"));
    assert_eq!(meta.namespace.as_deref(), Some("airlock-sandboxes"));
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels[SANDBOX_LABEL], "sb-0123abcd");
    assert_eq!(labels[OWNER_LABEL], "brain-test");
    assert_eq!(labels[APP_LABEL], APP_LABEL_VALUE);
    assert_eq!(meta.annotations.as_ref().unwrap()["team"], "x");
    assert_eq!(
        secret.metadata.labels.as_ref().unwrap()[SANDBOX_LABEL],
        "sb-0123abcd"
    );

    let ps = pod.spec.as_ref().unwrap();
    assert_eq!(ps.runtime_class_name.as_deref(), Some("gvisor"));
    assert_eq!(ps.automount_service_account_token, Some(false));
    assert_eq!(ps.enable_service_links, Some(false));
    assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        ps.active_deadline_seconds,
        Some(600 + DEADLINE_GRACE_SECONDS)
    );
    assert_eq!(ps.node_selector.as_ref().unwrap()["pool"], "sandboxes");
    let psc = ps.security_context.as_ref().unwrap();
    assert_eq!(
        (psc.run_as_non_root, psc.run_as_user),
        (Some(true), Some(1000))
    );

    assert_eq!(ps.containers.len(), 1);
    let c = &ps.containers[0];
    assert_eq!(c.image.as_deref(), Some("airlock-sandbox:latest"));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");

    let res = c.resources.as_ref().unwrap();
    for q in [res.limits.as_ref().unwrap(), res.requests.as_ref().unwrap()] {
        assert_eq!(q["cpu"].0, "1500m");
        assert_eq!(q["memory"].0, "768Mi");
    }
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 7700);
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/health")
    );
    // The read-only root needs writable scratch space where the agent and tools write.
    let mounts: Vec<_> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for path in ["/workspace", "/tmp", "/home/sandbox", "/etc/airlock/ca.pem"] {
        assert!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
    }
}

#[test]
fn secrets_stay_out_of_the_pod_spec() {
    let (pod, secret) = render(&config(), &spec()).unwrap();
    let pod_json = serde_json::to_string(&pod).unwrap();
    for secret_text in ["agent-secret-token", "proxytok", "ghp_stubSTUBSTUB", "PEM"] {
        assert!(
            !pod_json.contains(secret_text),
            "{secret_text} visible in the pod spec"
        );
    }
    let env = pod.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let by_name = |n: &str| env.iter().find(|e| e.name == n).unwrap().clone();
    assert_eq!(
        secret_value(&secret, &by_name("AIRLOCK_AGENT_TOKEN")),
        "agent-secret-token"
    );
    assert_eq!(
        secret_value(&secret, &by_name("GITHUB_TOKEN")),
        "ghp_stubSTUBSTUB"
    );
    // Pods reach the proxy by its Service; the proxy credentials are kept.
    assert_eq!(
        secret_value(&secret, &by_name("HTTPS_PROXY")),
        "http://sb-0123abcd:proxytok@vault-proxy.airlock-system.svc:8899"
    );
    assert_eq!(
        by_name("AIRLOCK_SANDBOX_ID").value.as_deref(),
        Some("sb-0123abcd")
    );
    assert_eq!(secret.immutable, Some(true));
    // The CA is mounted from the secret by key.
    let ca = pod.spec.as_ref().unwrap().containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/etc/airlock/ca.pem")
        .unwrap()
        .clone();
    assert_eq!(ca.read_only, Some(true));
    let key = ca.sub_path.unwrap();
    assert_eq!(secret.data.as_ref().unwrap()[&key].0, b"PEM");
}

#[test]
fn bad_input_is_refused_before_anything_is_created() {
    let mut s = spec();
    s.image = Some("bad image".into());
    assert!(matches!(
        render(&config(), &s),
        Err(BackendError::Invalid(_))
    ));
    let mut s = spec();
    s.env.insert("BAD=NAME".into(), "x".into());
    assert!(matches!(
        render(&config(), &s),
        Err(BackendError::Invalid(_))
    ));
    let mut s = spec();
    s.files = vec![("relative/ca.pem".into(), Bytes::new())];
    assert!(matches!(
        render(&config(), &s),
        Err(BackendError::Invalid(_))
    ));
}

#[test]
fn without_proxy_url_the_vault_address_is_kept() {
    let cfg = KubernetesConfig::default();
    let (pod, secret) = render(&cfg, &spec()).unwrap();
    let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
    let proxy = env.iter().find(|e| e.name == "HTTPS_PROXY").unwrap();
    assert_eq!(
        secret_value(&secret, proxy),
        "http://sb-0123abcd:proxytok@127.0.0.1:41000"
    );
    assert_eq!(
        pod_state_of(None, None, None),
        PodState::Starting("no status yet".into())
    );
}

#[test]
fn proxy_address_rewrite_keeps_credentials() {
    assert_eq!(
        rewrite_proxy_addr("http://a:b@1.2.3.4:5", "svc:8899").as_deref(),
        Some("http://a:b@svc:8899")
    );
    assert_eq!(
        rewrite_proxy_addr("http://1.2.3.4:5", "svc:8899").as_deref(),
        Some("http://svc:8899")
    );
    assert_eq!(rewrite_proxy_addr("nonsense", "svc:8899"), None);
}

fn pod_state_of(
    phase: Option<&str>,
    conditions: Option<Vec<PodCondition>>,
    containers: Option<Vec<ContainerStatus>>,
) -> PodState {
    let pod = Pod {
        status: phase.map(|p| PodStatus {
            phase: Some(p.into()),
            pod_ip: Some("10.0.0.7".into()),
            conditions,
            container_statuses: containers,
            ..Default::default()
        }),
        ..Default::default()
    };
    pod_state(&pod)
}

fn cond(t: &str, status: &str, reason: Option<&str>, message: Option<&str>) -> PodCondition {
    PodCondition {
        type_: t.into(),
        status: status.into(),
        reason: reason.map(Into::into),
        message: message.map(Into::into),
        ..Default::default()
    }
}

fn container(state: ContainerState) -> ContainerStatus {
    ContainerStatus {
        name: CONTAINER_NAME.into(),
        state: Some(state),
        ..Default::default()
    }
}

#[test]
fn pod_states_are_classified() {
    assert_eq!(
        pod_state_of(
            Some("Running"),
            Some(vec![cond("Ready", "True", None, None)]),
            None
        ),
        PodState::Ready("10.0.0.7".into())
    );
    assert!(matches!(
        pod_state_of(
            Some("Running"),
            Some(vec![cond("Ready", "False", None, None)]),
            None
        ),
        PodState::Starting(_)
    ));
    let unsched = pod_state_of(
        Some("Pending"),
        Some(vec![cond(
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            Some("0/1 nodes are available: 1 Insufficient memory."),
        )]),
        None,
    );
    assert_eq!(
        unsched,
        PodState::Failed(
            "pod is unschedulable: 0/1 nodes are available: 1 Insufficient memory.".into()
        )
    );
    let pull = pod_state_of(
        Some("Pending"),
        None,
        Some(vec![container(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ImagePullBackOff".into()),
                message: Some("Back-off pulling image \"x\"".into()),
            }),
            ..Default::default()
        })]),
    );
    assert!(
        matches!(&pull, PodState::Failed(m) if m.contains("ImagePullBackOff") && m.contains("Back-off"))
    );
    let creating = pod_state_of(
        Some("Pending"),
        None,
        Some(vec![container(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..Default::default()
        })]),
    );
    assert_eq!(
        creating,
        PodState::Starting("Pending (ContainerCreating)".into())
    );
    let exited = pod_state_of(
        Some("Running"),
        None,
        Some(vec![container(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 2,
                reason: Some("Error".into()),
                ..Default::default()
            }),
            ..Default::default()
        })]),
    );
    assert!(matches!(&exited, PodState::Failed(m) if m.contains("code 2")));
    assert!(matches!(
        pod_state_of(Some("Failed"), None, None),
        PodState::Failed(_)
    ));
}

#[test]
fn config_parses_from_yaml() {
    let yaml = "namespace: sb\nruntime_class_name: kata\nagent_port: 7711\n\
                pod_template:\n  tolerations:\n    - key: sandbox\n      operator: Exists\n      effect: NoSchedule\n";
    let cfg: KubernetesConfig = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(cfg.namespace, "sb");
    assert_eq!(cfg.agent_port, 7711);
    assert_eq!(
        cfg.pod_template.tolerations[0].key.as_deref(),
        Some("sandbox")
    );
    assert!(serde_saphyr::from_str::<KubernetesConfig>("nope: 1\n").is_err());
    assert_eq!(agent_url("fd00::1", 7700), "http://[fd00::1]:7700");
}
