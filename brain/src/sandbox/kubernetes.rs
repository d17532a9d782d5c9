//! Kubernetes backend: each sandbox is one Pod running `sandbox-agent` (the sandbox image's
//! entrypoint), plus one Secret holding what must not be readable by whoever can read pods.
//!
//! - **Pod** `airlock-<id>`: the configured image and `runtimeClassName` (gVisor/Kata), non-root
//!   uid 1000, read-only root with `emptyDir` at `/workspace`, `/tmp` and the home directory, all
//!   capabilities dropped, no privilege escalation, `RuntimeDefault` seccomp, no service-account
//!   token, no service links, `activeDeadlineSeconds` = the sandbox TTL plus a grace (so the
//!   cluster kills it even if every brain is gone), requests = limits from the request's
//!   resources. Labels `airlock.sandbox=<id>`, `airlock.owner=<store id>`; the NetworkPolicy in
//!   `k8s/` selects sandbox pods by the `app.kubernetes.io/name=airlock-sandbox` label.
//! - **Secret** `airlock-<id>`: the agent token and every env value of the spec (stub
//!   credentials and `HTTPS_PROXY`, which carries the proxy token) as `secretKeyRef`s, and the
//!   spec's files (the proxy CA) mounted read-only with `subPath`. The pod spec names the keys,
//!   never the values. After the pod exists the Secret gets an owner reference to it, so the
//!   cluster's garbage collector removes it with the pod even if the brain never comes back.
//!
//! Provision creates the Secret, then the Pod, then **watches** the Pod (kube-runtime's
//! `watch_object`: a list, then a watch from its `resourceVersion`, re-listing on `410 Gone`)
//! until it is Running and Ready with an IP (the readiness probe is the agent's `/health`),
//! failing fast on an image pull error, an unschedulable pod, a failed container or a pod that
//! ended, and then checks the agent itself from the brain. Any failure deletes what was
//! created.
//!
//! **agent-sandbox** (`agent_sandbox.rs`): when kubernetes-sigs/agent-sandbox's CRDs are
//! installed (`agent_sandbox: auto`, the default, asks API discovery; `required` fails without
//! them; `off` never uses them), the pod is wrapped in a `Sandbox` the controller runs, and the
//! brain watches the Sandbox's `Ready` condition (and the pod, to fail fast). With
//! `warm_pool.replicas > 0` the brain keeps a `SandboxTemplate` + `SandboxWarmPool` and each
//! sandbox is a `SandboxClaim` on it, given its env and files by the agent's `/configure`.
//! Plain Pods remain the fallback.
//!
//! **Reaching the agent** (`agent_access`): `pod_ip` (`http://<podIP>:<agent_port>`, a brain
//! inside the cluster), `port_forward` (a loopback listener per pod relayed through the API
//! server's `pods/portforward`, `forward.rs`: a brain outside the cluster), or `auto` (the
//! default: the pod IP if the agent answers there, else port-forward). The choice is kept in
//! the handle, so a restarted brain reaches adopted sandboxes the same way.
//!
//! Client: `kube` with rustls/ring; in-cluster config, or `kubeconfig` (+ `context`), else the
//! usual `KUBECONFIG`/`~/.kube/config`. kube's client already retries 429/503/504 honouring
//! `Retry-After`; on top of that every call here is bounded by `api_timeout_seconds` and
//! idempotent calls are retried on 500/502 and transport errors.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements,
    SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext, Toleration,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use std::sync::atomic::{AtomicU8, Ordering};

use agent_sandbox::CrState;

use super::agent_client::AgentClient;
use super::{
    BackendError, BackendKind, LabelledSandbox, OWNER_LABEL, SANDBOX_LABEL, SandboxBackend,
    SandboxHandle, SandboxSpec,
};

/// Label every sandbox pod carries; the NetworkPolicy in `k8s/` selects pods by it.
pub const APP_LABEL: &str = "app.kubernetes.io/name";
pub const APP_LABEL_VALUE: &str = "airlock-sandbox";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
const MANAGED_BY_VALUE: &str = "airlock-brain";
/// Name of the sandbox container (the agent) in the pod.
pub const CONTAINER_NAME: &str = "sandbox";
/// Secret key of the agent token.
pub const TOKEN_KEY: &str = "agent-token";
const SANDBOX_ID_ENV: &str = "AIRLOCK_SANDBOX_ID";
const EXTRA_NAMESPACE: &str = "namespace";
const EXTRA_SECRET: &str = "secret";
/// Seconds the pod may outlive its TTL before the cluster kills it: the brain's reaper
/// destroys it at the TTL; this is the backstop when no brain is left to do so.
const DEADLINE_GRACE_SECONDS: i64 = 300;
/// Waiting reasons of the sandbox container that will not resolve by waiting.
const FATAL_WAITING: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CrashLoopBackOff",
];

/// `sandbox.kubernetes.agent_sandbox`: whether sandboxes are kubernetes-sigs/agent-sandbox
/// `Sandbox` objects or plain Pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentSandboxMode {
    /// `Sandbox` objects when API discovery lists the CRDs, else plain Pods.
    #[default]
    Auto,
    /// `Sandbox` objects; the backend refuses to start without the CRDs.
    Required,
    /// Plain Pods.
    Off,
}

/// `sandbox.kubernetes.agent_access`: how the brain reaches the agent in a pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAccess {
    /// The pod IP when the agent answers there, else port-forward.
    #[default]
    Auto,
    /// `http://<podIP>:<agent_port>` (the brain runs in the cluster).
    PodIp,
    /// Through the API server's `pods/portforward` (the brain runs outside the cluster).
    PortForward,
}

/// `sandbox.kubernetes.warm_pool`: an agent-sandbox `SandboxWarmPool` sandboxes are claimed
/// from (needs the CRDs; `replicas: 0` disables it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmPoolConfig {
    /// Name of the `SandboxWarmPool` (its `SandboxTemplate` is `airlock-<name>`, the Secret
    /// holding the pool's agent token `airlock-pool-<name>`).
    pub name: String,
    /// Warm pods kept ready; 0: no pool, every sandbox is its own `Sandbox`.
    pub replicas: u32,
}

impl Default for WarmPoolConfig {
    fn default() -> Self {
        Self {
            name: "airlock-warm".into(),
            replicas: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Namespace sandbox pods live in (the brain's RBAC is limited to it).
    pub namespace: String,
    /// Image with `sandbox-agent` as entrypoint, when the request names none.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`; unset: the cluster's default.
    pub image_pull_policy: Option<String>,
    /// `runtimeClassName` of sandbox pods (e.g. `gvisor`, `kata`); unset: the node default.
    pub runtime_class_name: Option<String>,
    /// Kubeconfig file; unset: in-cluster config, else `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; unset: its current context.
    pub context: Option<String>,
    /// Port the agent listens on inside the pod.
    pub agent_port: u16,
    /// How long provision waits for the pod to be Ready.
    pub ready_timeout_seconds: u64,
    /// Bound on each Kubernetes API call (including kube's own 429/503 retries).
    pub api_timeout_seconds: u64,
    /// `host:port` of the vault proxy as pods reach it (its Service, e.g.
    /// `vault-proxy.airlock-system.svc:8899`); replaces the address in `HTTPS_PROXY` & co.
    /// Unset: the vault's own address is used.
    pub proxy_url: Option<String>,
    /// The image user's home directory (gets its own `emptyDir`, the root being read-only).
    pub home: String,
    /// Size limit of each `emptyDir` (workspace, tmp, home), in MiB.
    pub scratch_size_mb: u64,
    pub pod_template: PodTemplateOverrides,
    /// Whether to use kubernetes-sigs/agent-sandbox's `Sandbox` CRD.
    pub agent_sandbox: AgentSandboxMode,
    /// How the brain reaches the agent in a pod.
    pub agent_access: AgentAccess,
    pub warm_pool: WarmPoolConfig,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            namespace: "airlock-sandboxes".into(),
            image: "airlock-sandbox:latest".into(),
            image_pull_policy: None,
            runtime_class_name: None,
            kubeconfig: None,
            context: None,
            agent_port: 7700,
            ready_timeout_seconds: 120,
            api_timeout_seconds: 30,
            proxy_url: None,
            home: "/home/sandbox".into(),
            scratch_size_mb: 1024,
            pod_template: PodTemplateOverrides::default(),
            agent_sandbox: AgentSandboxMode::Auto,
            agent_access: AgentAccess::Auto,
            warm_pool: WarmPoolConfig::default(),
        }
    }
}

/// `sandbox.kubernetes.pod_template`: what a cluster needs beyond the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodTemplateOverrides {
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub annotations: BTreeMap<String, String>,
    /// Extra labels (the `airlock.*` and `app.kubernetes.io/*` labels cannot be overridden).
    pub labels: BTreeMap<String, String>,
    /// `priorityClassName` of sandbox pods.
    pub priority_class_name: Option<String>,
}

/// Name of a sandbox's pod and Secret.
pub fn object_name(sandbox_id: &str) -> String {
    format!("airlock-{sandbox_id}")
}

/// `cpus` as a Kubernetes quantity in millicores (at least 1m).
fn cpu_quantity(cpus: f64) -> Quantity {
    let milli = (cpus * 1000.0).round().max(1.0) as u64;
    Quantity(format!("{milli}m"))
}

/// Env var names Kubernetes accepts (`C_IDENTIFIER`-like, plus `-` and `.`).
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Replaces the `host:port` of a proxy URL (`http://user:token@host:port`), keeping the
/// credentials: pods reach the proxy by its Service name, not by the address the brain knows.
pub fn rewrite_proxy_addr(url: &str, addr: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let userinfo = rest.rsplit_once('@').map(|(u, _)| u);
    Some(match userinfo {
        Some(userinfo) => format!("{scheme}://{userinfo}@{addr}"),
        None => format!("{scheme}://{addr}"),
    })
}

/// An env value as the pod needs it: proxy URLs point at the proxy's in-cluster address.
fn pod_env_value(config: &KubernetesConfig, key: &str, value: &str) -> String {
    match (&config.proxy_url, key.to_ascii_lowercase().as_str()) {
        (Some(addr), "https_proxy" | "http_proxy" | "all_proxy") => {
            rewrite_proxy_addr(value, addr).unwrap_or_else(|| value.to_string())
        }
        _ => value.to_string(),
    }
}

/// The Pod and Secret for one sandbox (pure: unit-tested below, no cluster needed).
pub fn render(
    config: &KubernetesConfig,
    spec: &SandboxSpec,
) -> Result<(Pod, Secret), BackendError> {
    let name = object_name(&spec.id);
    let mut labels = config.pod_template.labels.clone();
    labels.insert(SANDBOX_LABEL.into(), spec.id.clone());
    labels.insert(OWNER_LABEL.into(), spec.owner.clone());
    labels.insert(APP_LABEL.into(), APP_LABEL_VALUE.into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    let image = spec.image.clone().unwrap_or_else(|| config.image.clone());
    if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
        return Err(BackendError::Invalid(format!(
            "invalid image name `{image}`"
        )));
    }

    let mut data = BTreeMap::new();
    data.insert(
        TOKEN_KEY.to_string(),
        ByteString(spec.agent_token.clone().into_bytes()),
    );
    let secret_ref = |key: &str| EnvVarSource {
        secret_key_ref: Some(SecretKeySelector {
            name: name.clone(),
            key: key.to_string(),
            optional: Some(false),
        }),
        ..Default::default()
    };
    let mut env = vec![
        EnvVar {
            name: SANDBOX_ID_ENV.into(),
            value: Some(spec.id.clone()),
            ..Default::default()
        },
        EnvVar {
            name: airlock_wire::AGENT_TOKEN_ENV.into(),
            value_from: Some(secret_ref(TOKEN_KEY)),
            ..Default::default()
        },
    ];
    for (i, (key, value)) in spec.env.iter().enumerate() {
        if !valid_env_name(key) {
            return Err(BackendError::Invalid(format!(
                "invalid env var name `{key}`"
            )));
        }
        let value = pod_env_value(config, key, value);
        let secret_key = format!("env-{i}");
        data.insert(secret_key.clone(), ByteString(value.into_bytes()));
        env.push(EnvVar {
            name: key.clone(),
            value_from: Some(secret_ref(&secret_key)),
            ..Default::default()
        });
    }

    let scratch = |vol: &str| Volume {
        name: vol.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity(format!("{}Mi", config.scratch_size_mb))),
        }),
        ..Default::default()
    };
    let mut volumes = vec![scratch("workspace"), scratch("tmp")];
    let mut mounts = vec![
        VolumeMount {
            name: "workspace".into(),
            mount_path: "/workspace".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if !config.home.is_empty() && config.home != "/workspace" && config.home != "/tmp" {
        volumes.push(scratch("home"));
        mounts.push(VolumeMount {
            name: "home".into(),
            mount_path: config.home.clone(),
            ..Default::default()
        });
    }
    let mut items = Vec::new();
    for (i, (path, bytes)) in spec.files.iter().enumerate() {
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(BackendError::Invalid(format!(
                "sandbox file path `{path}` must be absolute"
            )));
        }
        let key = format!("file-{i}");
        data.insert(key.clone(), ByteString(bytes.to_vec()));
        items.push(KeyToPath {
            key: key.clone(),
            path: key.clone(),
            mode: Some(0o444),
        });
        mounts.push(VolumeMount {
            name: "airlock-files".into(),
            mount_path: path.clone(),
            sub_path: Some(key),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if !items.is_empty() {
        volumes.push(Volume {
            name: "airlock-files".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.clone()),
                items: Some(items),
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Default::default()
        });
    }

    let quantities = BTreeMap::from([
        ("cpu".to_string(), cpu_quantity(spec.resources.cpus)),
        (
            "memory".to_string(),
            Quantity(format!("{}Mi", spec.resources.memory_mb.max(1))),
        ),
    ]);
    let port = i32::from(config.agent_port);
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(image),
        image_pull_policy: config.image_pull_policy.clone(),
        // Appended to the image's entrypoint (`sandbox-agent … --listen 0.0.0.0:7700`); the
        // agent lets a later flag override an earlier one.
        args: Some(vec![
            "--listen".into(),
            format!("0.0.0.0:{port}"),
            "--workdir".into(),
            "/workspace".into(),
        ]),
        working_dir: Some("/workspace".into()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("agent".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/health".into()),
                port: IntOrString::Int(port),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            limits: Some(quantities.clone()),
            requests: Some(quantities),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            run_as_group: Some(1000),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let ttl = i64::try_from(spec.ttl_s).unwrap_or(i64::MAX / 2);
    let annotations = (!config.pod_template.annotations.is_empty())
        .then(|| config.pod_template.annotations.clone());
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels.clone()),
            annotations,
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(ttl.saturating_add(DEADLINE_GRACE_SECONDS).max(1)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_network: Some(false),
            host_pid: Some(false),
            host_ipc: Some(false),
            runtime_class_name: config.runtime_class_name.clone(),
            node_selector: (!config.pod_template.node_selector.is_empty())
                .then(|| config.pod_template.node_selector.clone()),
            tolerations: (!config.pod_template.tolerations.is_empty())
                .then(|| config.pod_template.tolerations.clone()),
            priority_class_name: config.pod_template.priority_class_name.clone(),
            termination_grace_period_seconds: Some(5),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                fs_group: Some(1000),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        ..Default::default()
    };
    Ok((pod, secret))
}

/// What the pod's status says about readiness.
#[derive(Debug, PartialEq)]
pub enum PodState {
    /// Running, Ready, with this IP.
    Ready(String),
    /// Still starting; the string says at what stage (for the timeout message).
    Starting(String),
    /// Will not become ready (image pull failure, unschedulable, container failed, ended).
    Failed(String),
}

/// Classifies a pod's status.
pub fn pod_state(pod: &Pod) -> PodState {
    let Some(status) = &pod.status else {
        return PodState::Starting("no status yet".into());
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
    if let Some(c) = condition("PodScheduled")
        && c.status == "False"
        && c.reason.as_deref() == Some("Unschedulable")
    {
        return PodState::Failed(format!(
            "pod is unschedulable: {}",
            c.message.as_deref().unwrap_or("no node fits")
        ));
    }
    for cs in status.container_statuses.as_deref().unwrap_or_default() {
        let Some(state) = &cs.state else { continue };
        if let Some(w) = &state.waiting
            && let Some(reason) = w.reason.as_deref()
            && FATAL_WAITING.contains(&reason)
        {
            return PodState::Failed(format!(
                "container {}: {reason}: {}",
                cs.name,
                w.message.as_deref().unwrap_or("")
            ));
        }
        if let Some(t) = &state.terminated {
            return PodState::Failed(format!(
                "container {} exited (code {}, {}): {}",
                cs.name,
                t.exit_code,
                t.reason.as_deref().unwrap_or("no reason"),
                t.message.as_deref().unwrap_or("")
            ));
        }
    }
    match phase {
        "Failed" | "Succeeded" => {
            return PodState::Failed(format!(
                "pod {phase}: {} {}",
                status.reason.as_deref().unwrap_or(""),
                status.message.as_deref().unwrap_or("")
            ));
        }
        "Running" => {
            let ready = condition("Ready").is_some_and(|c| c.status == "True");
            match status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
                Some(ip) if ready => return PodState::Ready(ip.to_string()),
                _ => return PodState::Starting("running, not ready yet".into()),
            }
        }
        _ => {}
    }
    let waiting = status
        .container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|cs| cs.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .next();
    PodState::Starting(match waiting {
        Some(reason) => format!("{phase} ({reason})"),
        None => phase.to_string(),
    })
}

/// `http://<ip>:<port>`, bracketing IPv6 addresses.
fn agent_url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

/// Turns a kube error into a backend error that carries the API server's message.
fn api_error(what: &str, e: kube::Error) -> BackendError {
    match e {
        kube::Error::Api(s) => {
            let detail = format!("{what}: {} {} ({})", s.code, s.reason, s.message);
            match s.code {
                401 => BackendError::Unavailable(format!(
                    "kubernetes API rejected the credentials: {detail}"
                )),
                403 => BackendError::Unavailable(format!(
                    "kubernetes API forbids this (check the brain's RBAC): {detail}"
                )),
                404 => BackendError::NotFound(detail),
                400 | 422 => BackendError::Invalid(format!("kubernetes API: {detail}")),
                _ => BackendError::Unavailable(format!("kubernetes API: {detail}")),
            }
        }
        other => BackendError::Unavailable(format!("kubernetes API: {what}: {other}")),
    }
}

/// Whether repeating the call may help: overload and server errors (kube has already retried
/// 429/503/504 with backoff), and transport failures.
fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// What a sandbox is on this cluster; kept in the handle (`extra["flavor"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A plain Pod (and its Secret).
    Pod,
    /// An agent-sandbox `Sandbox` (and its Secret).
    Sandbox,
    /// A `SandboxClaim` on the brain's warm pool.
    Claim,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Pod => "pod",
            Flavor::Sandbox => "sandbox",
            Flavor::Claim => "claim",
        }
    }
}

const EXTRA_FLAVOR: &str = "flavor";
/// The pod the agent runs in (a claimed warm pod keeps its pool name).
const EXTRA_POD: &str = "pod";
/// `pod-ip` or `port-forward`.
const EXTRA_ACCESS: &str = "access";
const ACCESS_POD_IP: &str = "pod-ip";
const ACCESS_FORWARD: &str = "port-forward";
/// How long `agent_access: auto` waits for the agent at the pod IP before trying
/// port-forward (a pod IP the brain cannot route never answers).
const DIRECT_PROBE: Duration = Duration::from_secs(2);

/// The agent-sandbox APIs, when the cluster serves them.
struct Crds {
    sandboxes: Api<DynamicObject>,
    claims: Api<DynamicObject>,
}

/// What one watch event means to the waiter.
enum Judged<T> {
    Done(T),
    Wait(String),
    Fail(String),
}

pub struct KubernetesBackend {
    config: KubernetesConfig,
    client: kube::Client,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    crds: Option<Crds>,
    /// The warm pool's agent token, when sandboxes are claims on it.
    pool_token: Option<String>,
    forwards: forward::Forwarders,
    /// `agent_access: auto`'s finding (0 unknown, 1 pod IP, 2 port-forward): a brain either
    /// routes pod IPs or does not, so later provisions skip the probe that failed.
    auto_access: AtomicU8,
    api_timeout: Duration,
}

const ATTEMPTS: u32 = 4;

fn pod_of(handle: &SandboxHandle) -> &str {
    handle
        .extra
        .get(EXTRA_POD)
        .map(String::as_str)
        .unwrap_or(&handle.backend_ref)
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === impl KubernetesBackend ===

impl KubernetesBackend {
    /// Loads the client config and checks that the API answers and lets us list pods in the
    /// namespace (a wrong token or missing RBAC fails here, at start, with the server's words);
    /// then finds out whether agent-sandbox is installed and sets up the warm pool.
    pub async fn connect(config: KubernetesConfig) -> Result<Self, BackendError> {
        // kube's rustls stack needs a process-wide provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kube_config = load_config(&config).await?;
        let client = kube::Client::try_from(kube_config)
            .map_err(|e| BackendError::Unavailable(format!("kubernetes client: {e}")))?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
        let mut backend = Self {
            forwards: forward::Forwarders::new(pods.clone(), config.agent_port),
            pods,
            secrets: Api::namespaced(client.clone(), &config.namespace),
            client,
            crds: None,
            pool_token: None,
            auto_access: AtomicU8::new(match config.agent_access {
                AgentAccess::Auto => 0,
                AgentAccess::PodIp => 1,
                AgentAccess::PortForward => 2,
            }),
            api_timeout: Duration::from_secs(config.api_timeout_seconds.max(1)),
            config,
        };
        let probe = ListParams::default().labels(SANDBOX_LABEL).limit(1);
        backend
            .call("listing sandbox pods", true, || backend.pods.list(&probe))
            .await?;
        let want_pool = backend.config.warm_pool.replicas > 0;
        let use_crds = match backend.config.agent_sandbox {
            AgentSandboxMode::Off if want_pool => {
                return Err(BackendError::Invalid(
                    "sandbox.kubernetes.warm_pool needs agent_sandbox: auto or required".into(),
                ));
            }
            AgentSandboxMode::Off => false,
            mode => {
                let sandboxes = backend
                    .serves(
                        &format!(
                            "{}/{}",
                            agent_sandbox::SANDBOX_GROUP,
                            agent_sandbox::VERSION
                        ),
                        "sandboxes",
                    )
                    .await?;
                let claims = !want_pool
                    || backend
                        .serves(
                            &format!(
                                "{}/{}",
                                agent_sandbox::EXTENSIONS_GROUP,
                                agent_sandbox::VERSION
                            ),
                            "sandboxclaims",
                        )
                        .await?;
                if !(sandboxes && claims) && (mode == AgentSandboxMode::Required || want_pool) {
                    return Err(BackendError::Unavailable(format!(
                        "the cluster does not serve {} (install kubernetes-sigs/agent-sandbox{}), \
                         but sandbox.kubernetes {} needs it",
                        if sandboxes {
                            "extensions.agents.x-k8s.io/v1beta1 sandboxclaims"
                        } else {
                            "agents.x-k8s.io/v1beta1 sandboxes"
                        },
                        if sandboxes {
                            " with its extensions"
                        } else {
                            ""
                        },
                        if want_pool {
                            "warm_pool"
                        } else {
                            "agent_sandbox: required"
                        },
                    )));
                }
                sandboxes
            }
        };
        if use_crds {
            let ns = &backend.config.namespace;
            backend.crds = Some(Crds {
                sandboxes: Api::namespaced_with(
                    backend.client.clone(),
                    ns,
                    &agent_sandbox::sandboxes(),
                ),
                claims: Api::namespaced_with(backend.client.clone(), ns, &agent_sandbox::claims()),
            });
        }
        if want_pool {
            backend.pool_token = Some(backend.ensure_pool().await?);
        }
        tracing::info!(
            namespace = %backend.config.namespace,
            flavor = backend.flavor().as_str(),
            "kubernetes backend ready"
        );
        Ok(backend)
    }

    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    /// What new sandboxes are on this cluster.
    pub fn flavor(&self) -> Flavor {
        match (&self.crds, &self.pool_token) {
            (Some(_), Some(_)) => Flavor::Claim,
            (Some(_), None) => Flavor::Sandbox,
            _ => Flavor::Pod,
        }
    }

    /// Whether API discovery lists `resource` in `group_version` (404: the group is not
    /// served, i.e. the CRD is not installed).
    async fn serves(&self, group_version: &str, resource: &str) -> Result<bool, BackendError> {
        match tokio::time::timeout(
            self.api_timeout,
            self.client.list_api_group_resources(group_version),
        )
        .await
        {
            Ok(Ok(list)) => Ok(list.resources.iter().any(|r| r.name == resource)),
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(false),
            Ok(Err(e)) => Err(api_error(&format!("discovering {group_version}"), e)),
            Err(_) => Err(BackendError::Unavailable(format!(
                "kubernetes API: discovering {group_version}: no answer within {:?}",
                self.api_timeout
            ))),
        }
    }

    /// Creates (or brings up to date) the pool's Secret, `SandboxTemplate` and
    /// `SandboxWarmPool`; returns the agent token every warm pod demands.
    async fn ensure_pool(&self) -> Result<String, BackendError> {
        let pool = self.config.warm_pool.name.clone();
        let template_name = format!("airlock-{pool}");
        let spec = SandboxSpec {
            id: format!("pool-{pool}"),
            owner: String::new(),
            image: None,
            resources: super::Resources::default(),
            env: BTreeMap::new(),
            files: Vec::new(),
            agent_token: random_token(),
            ttl_s: 0,
            workspace: None,
            cache_tenant: None,
        };
        let (mut pod, mut secret) = render(&self.config, &spec)?;
        // Pool objects are not sandboxes: the reaper must never list them.
        for labels in [&mut pod.metadata.labels, &mut secret.metadata.labels]
            .into_iter()
            .flatten()
        {
            labels.remove(SANDBOX_LABEL);
            labels.remove(OWNER_LABEL);
            labels.insert(agent_sandbox::POOL_LABEL.into(), pool.clone());
        }
        // A warm pod waits for its claim; the claim's shutdownTime is the backstop instead.
        if let Some(s) = pod.spec.as_mut() {
            s.active_deadline_seconds = None;
        }
        let secret_name = object_name(&spec.id);
        let pp = PostParams::default();
        let token = match self
            .call("reading the pool secret", true, || self.secrets.get_opt(&secret_name))
            .await?
        {
            Some(existing) => existing
                .data
                .as_ref()
                .and_then(|d| d.get(TOKEN_KEY))
                .and_then(|t| String::from_utf8(t.0.clone()).ok())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    BackendError::Unavailable(format!(
                        "the pool secret {secret_name} has no `{TOKEN_KEY}`; delete it to let the brain recreate it"
                    ))
                })?,
            None => {
                self.create("creating the pool secret", || self.secrets.create(&pp, &secret))
                    .await?;
                spec.agent_token.clone()
            }
        };
        let crds_client = self.client.clone();
        let ns = &self.config.namespace;
        let templates: Api<DynamicObject> =
            Api::namespaced_with(crds_client.clone(), ns, &agent_sandbox::templates());
        let pools: Api<DynamicObject> =
            Api::namespaced_with(crds_client, ns, &agent_sandbox::warm_pools());
        let (template, warm_pool) =
            agent_sandbox::render_pool(&pod, &template_name, &pool, self.config.warm_pool.replicas);
        for (api, obj, what) in [
            (&templates, &template, "the pool's SandboxTemplate"),
            (&pools, &warm_pool, "the SandboxWarmPool"),
        ] {
            let name = obj.metadata.name.clone().unwrap_or_default();
            match tokio::time::timeout(self.api_timeout, api.create(&pp, obj)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if status_code(&e) == Some(409) => {
                    // Already there (another replica, an earlier run): bring its spec up to date.
                    let patch = serde_json::json!({"spec": obj.data["spec"]});
                    let merge = Patch::Merge(&patch);
                    let params = PatchParams::default();
                    self.call(&format!("updating {what}"), true, || {
                        api.patch(&name, &params, &merge)
                    })
                    .await?;
                }
                Ok(Err(e)) => return Err(api_error(&format!("creating {what}"), e)),
                Err(_) => {
                    return Err(BackendError::Unavailable(format!(
                        "kubernetes API: creating {what}: no answer within {:?}",
                        self.api_timeout
                    )));
                }
            }
        }
        Ok(token)
    }

    /// `r`, except that an unreachable agent whose pod is gone (absent, finished, or being
    /// deleted) becomes `NotFound` (`sandbox_lost`). An API error leaves `r` as it was.
    async fn or_lost<T>(
        &self,
        handle: &SandboxHandle,
        r: Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let Err(BackendError::AgentUnreachable(why)) = r else {
            return r;
        };
        let name = pod_of(handle);
        let gone = match tokio::time::timeout(self.api_timeout, self.pods.get_opt(name)).await {
            Ok(Ok(None)) => true,
            Ok(Ok(Some(pod))) => {
                pod.metadata.deletion_timestamp.is_some()
                    || pod
                        .status
                        .and_then(|s| s.phase)
                        .is_some_and(|p| p == "Succeeded" || p == "Failed")
            }
            _ => false,
        };
        if gone {
            self.forwards.remove(name);
            Err(BackendError::NotFound(format!(
                "kubernetes: pod {name} is gone ({why})"
            )))
        } else {
            Err(BackendError::AgentUnreachable(why))
        }
    }

    /// One API call, bounded in time; retried with backoff if `idempotent` and retryable.
    async fn call<T, F, Fut>(&self, what: &str, idempotent: bool, f: F) -> Result<T, BackendError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match tokio::time::timeout(self.api_timeout, f()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if idempotent && attempt < ATTEMPTS && retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "{what}: retrying");
                }
                Ok(Err(e)) => return Err(api_error(what, e)),
                Err(_) if idempotent && attempt < ATTEMPTS => {
                    tracing::debug!(attempt, "{what}: timed out; retrying");
                }
                Err(_) => {
                    return Err(BackendError::Unavailable(format!(
                        "kubernetes API: {what}: no answer within {:?}",
                        self.api_timeout
                    )));
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            attempt += 1;
        }
    }

    /// Creates an object; a retry that finds it already there means an earlier attempt went
    /// through (its answer was lost), which counts as success. Returns the object's uid when
    /// the answer carried it.
    async fn create<K, F, Fut>(&self, what: &str, f: F) -> Result<Option<String>, BackendError>
    where
        K: kube::Resource,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<K, kube::Error>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match tokio::time::timeout(self.api_timeout, f()).await {
                Ok(Ok(created)) => return Ok(created.meta().uid.clone()),
                Ok(Err(e)) if attempt > 1 && status_code(&e) == Some(409) => return Ok(None),
                Ok(Err(e)) if attempt < ATTEMPTS && retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "{what}: retrying");
                }
                Ok(Err(e)) => return Err(api_error(what, e)),
                Err(_) if attempt < ATTEMPTS => {}
                Err(_) => {
                    return Err(BackendError::Unavailable(format!(
                        "kubernetes API: {what}: no answer within {:?}",
                        self.api_timeout
                    )));
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            attempt += 1;
        }
    }

    /// Deletes everything named `name` a sandbox may consist of (claim, Sandbox, pod,
    /// Secret), plus the claimed warm `pod`'s Sandbox; already gone is fine. The
    /// agent-sandbox objects go first: deleting only the pod would have the controller
    /// recreate it.
    async fn delete_objects(&self, name: &str, pod: &str) -> Result<(), BackendError> {
        self.forwards.remove(pod);
        let mut results = Vec::new();
        let dp = DeleteParams::default();
        if let Some(crds) = &self.crds {
            results.push(
                self.call("deleting the sandbox claim", true, || {
                    crds.claims.delete(name, &dp)
                })
                .await
                .map(|_| ()),
            );
            for sb in [name, pod] {
                results.push(
                    self.call("deleting the Sandbox", true, || {
                        crds.sandboxes.delete(sb, &dp)
                    })
                    .await
                    .map(|_| ()),
                );
                if sb == pod {
                    break;
                }
            }
        }
        let pod_dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        for p in [name, pod] {
            results.push(
                self.call("deleting the sandbox pod", true, || {
                    self.pods.delete(p, &pod_dp)
                })
                .await
                .map(|_| ()),
            );
            if p == pod {
                break;
            }
        }
        results.push(
            self.call("deleting the sandbox secret", true, || {
                self.secrets.delete(name, &dp)
            })
            .await
            .map(|_| ()),
        );
        for result in results {
            match result {
                Ok(()) | Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Follows one object by watching it (a list, then a watch from its resourceVersion;
    /// kube-runtime re-lists after `410 Gone`) until `judge` says done or failed, or the
    /// deadline passes. `None` is the object missing or deleted.
    async fn watch_until<K, T>(
        &self,
        api: Api<K>,
        name: &str,
        what: &str,
        deadline: Instant,
        mut judge: impl FnMut(Option<&K>) -> Judged<T>,
    ) -> Result<T, BackendError>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let timeout = Duration::from_secs(self.config.ready_timeout_seconds.max(1));
        let mut events = std::pin::pin!(kube::runtime::watcher::watch_object(api, name));
        let mut last = "no status yet".to_string();
        let mut errors = 0u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.next()).await {
                Err(_) => {
                    return Err(BackendError::NotReady(format!(
                        "{what} {name} not ready after {timeout:?}; last state: {last}"
                    )));
                }
                Ok(None) => {
                    return Err(BackendError::Unavailable(format!(
                        "kubernetes API: the watch on {what} {name} ended"
                    )));
                }
                Ok(Some(Ok(obj))) => {
                    errors = 0;
                    match judge(obj.as_ref()) {
                        Judged::Done(t) => return Ok(t),
                        Judged::Fail(why) => return Err(BackendError::NotReady(why)),
                        Judged::Wait(state) => last = state,
                    }
                }
                Ok(Some(Err(e))) => {
                    // The next poll re-lists (410 Gone) or re-watches; back off a little so a
                    // failing API server is not hammered.
                    errors += 1;
                    tracing::debug!(error = %e, "watching {what} {name}");
                    last = format!("watch error: {e}");
                    let pause = Duration::from_millis(100 * u64::from(errors.min(10)));
                    tokio::time::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
            }
        }
    }

    /// Watches a pod until it is Ready; returns its IP.
    async fn pod_ready(&self, name: &str, deadline: Instant) -> Result<String, BackendError> {
        self.watch_until(self.pods.clone(), name, "pod", deadline, |pod| match pod {
            None => Judged::Fail(format!("pod {name} was deleted while starting")),
            Some(pod) => match pod_state(pod) {
                PodState::Ready(ip) => Judged::Done(ip),
                PodState::Failed(why) => Judged::Fail(why),
                PodState::Starting(stage) => Judged::Wait(stage),
            },
        })
        .await
    }

    /// Watches a `Sandbox` until Ready, and its pod to fail fast on what the Sandbox status
    /// does not mirror (image pull errors); returns the pod's name and IP.
    async fn sandbox_ready(
        &self,
        crds: &Crds,
        name: &str,
        deadline: Instant,
    ) -> Result<(String, String), BackendError> {
        let sandbox =
            self.watch_until(
                crds.sandboxes.clone(),
                name,
                "Sandbox",
                deadline,
                |sb| match sb {
                    None => Judged::Fail(format!("Sandbox {name} was deleted while starting")),
                    Some(sb) => match agent_sandbox::sandbox_state(sb) {
                        CrState::Ready { pod, ip } => Judged::Done((pod, ip)),
                        CrState::Starting(s) => Judged::Wait(s),
                        CrState::Failed(s) => Judged::Fail(s),
                    },
                },
            );
        // A little later than the Sandbox's deadline, so a timeout reports the Sandbox state.
        let pod_deadline = deadline + Duration::from_secs(1);
        let pod = self.watch_until(
            self.pods.clone(),
            name,
            "pod",
            pod_deadline,
            |pod| match pod.map(pod_state) {
                Some(PodState::Failed(why)) => Judged::<()>::Fail(why),
                Some(PodState::Starting(s)) => Judged::Wait(s),
                Some(PodState::Ready(_)) => Judged::Wait("pod ready".into()),
                None => Judged::Wait("the controller has not created the pod yet".into()),
            },
        );
        tokio::select! {
            r = sandbox => r,
            r = pod => Err(r.err().unwrap_or_else(|| BackendError::NotReady("pod watch ended".into()))),
        }
    }

    /// Watches a `SandboxClaim` until the controller hands over a Ready warm sandbox.
    async fn claim_ready(
        &self,
        crds: &Crds,
        name: &str,
        deadline: Instant,
    ) -> Result<(String, String), BackendError> {
        self.watch_until(
            crds.claims.clone(),
            name,
            "SandboxClaim",
            deadline,
            |c| match c {
                None => Judged::Fail(format!("SandboxClaim {name} was deleted while starting")),
                Some(c) => match agent_sandbox::claim_state(c) {
                    CrState::Ready { pod, ip } => Judged::Done((pod, ip)),
                    CrState::Starting(s) => Judged::Wait(s),
                    CrState::Failed(s) => Judged::Fail(s),
                },
            },
        )
        .await
    }

    /// Finds how to reach the agent of a Ready pod (pod IP or port-forward, per
    /// `agent_access`) and waits for it to answer; returns its URL and the access kind.
    async fn reach_agent(
        &self,
        pod: &str,
        ip: &str,
        token: &str,
        deadline: Instant,
    ) -> Result<(String, &'static str), BackendError> {
        let direct = agent_url(ip, self.config.agent_port);
        let mut last;
        loop {
            let choice = self.auto_access.load(Ordering::Relaxed);
            if choice != 2 {
                let agent = AgentClient::new(&direct, token);
                let probe = tokio::time::timeout(DIRECT_PROBE, agent.health()).await;
                match probe {
                    Ok(Ok(_)) => {
                        self.learn_access(1);
                        return Ok((direct, ACCESS_POD_IP));
                    }
                    Ok(Err(e)) => last = format!("pod Ready at {ip} but its agent: {e}"),
                    Err(_) => last = format!("pod Ready at {ip} but its agent: no answer"),
                }
            } else {
                last = String::new();
            }
            if choice != 1 {
                let url = self.forwards.url_for(pod)?;
                match AgentClient::new(&url, token).health().await {
                    Ok(_) => {
                        self.learn_access(2);
                        return Ok((url, ACCESS_FORWARD));
                    }
                    Err(e) => {
                        last = format!("{last}; through port-forward: {e}");
                        self.forwards.remove(pod);
                    }
                }
            }
            if Instant::now() >= deadline {
                let timeout = Duration::from_secs(self.config.ready_timeout_seconds.max(1));
                return Err(BackendError::NotReady(format!(
                    "pod {pod} not ready after {timeout:?}; last state: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `agent_access: auto` remembers the first access that worked.
    fn learn_access(&self, found: u8) {
        if self.config.agent_access == AgentAccess::Auto
            && self
                .auto_access
                .compare_exchange(0, found, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(
                access = if found == 1 {
                    ACCESS_POD_IP
                } else {
                    ACCESS_FORWARD
                },
                "kubernetes backend: agents are reached this way from now on"
            );
        }
    }

    /// Owner reference from the Secret to what it belongs to, so the cluster's garbage
    /// collector deletes the Secret with it even if the brain never comes back.
    async fn own_secret(&self, name: &str, api_version: &str, kind: &str, uid: String) {
        let owner = OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.to_string(),
            uid,
            controller: Some(false),
            block_owner_deletion: None,
        };
        let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        let params = PatchParams::default();
        let merge = Patch::Merge(&patch);
        if let Err(e) = self
            .call("setting the secret's owner", true, || {
                self.secrets.patch(name, &params, &merge)
            })
            .await
        {
            // Not fatal: destroy and the label sweep delete the Secret explicitly too.
            tracing::warn!(secret = %name, error = %e, "secret left without owner reference");
        }
    }

    /// Creates the sandbox's objects and waits for its agent; returns the pod, the agent URL,
    /// the access kind and the agent token.
    async fn provision_steps(
        &self,
        spec: &SandboxSpec,
        name: &str,
        flavor: Flavor,
    ) -> Result<(String, String, &'static str, String), BackendError> {
        let timeout = Duration::from_secs(self.config.ready_timeout_seconds.max(1));
        let deadline = Instant::now() + timeout;
        // Renders (and so validates) even for a claim, before anything is created.
        let (pod, secret) = render(&self.config, spec)?;
        let pp = PostParams::default();
        let shutdown_in = i64::try_from(spec.ttl_s)
            .unwrap_or(i64::MAX / 2)
            .saturating_add(DEADLINE_GRACE_SECONDS);
        let (pod_name, ip, token) = match (flavor, &self.crds) {
            (Flavor::Claim, Some(crds)) => {
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let claim = agent_sandbox::render_claim(
                    name,
                    &self.config.namespace,
                    labels,
                    &self.config.warm_pool.name,
                    shutdown_in,
                );
                self.create("creating the sandbox claim", || {
                    crds.claims.create(&pp, &claim)
                })
                .await?;
                let (pod, ip) = self.claim_ready(crds, name, deadline).await?;
                let token = self.pool_token.clone().unwrap_or_default();
                (pod, ip, token)
            }
            (Flavor::Sandbox, Some(crds)) => {
                self.create("creating the sandbox secret", || {
                    self.secrets.create(&pp, &secret)
                })
                .await?;
                let sandbox = agent_sandbox::render_sandbox(&pod, shutdown_in);
                let uid = self
                    .create("creating the Sandbox", || {
                        crds.sandboxes.create(&pp, &sandbox)
                    })
                    .await?;
                if let Some(uid) = uid {
                    let api_version = agent_sandbox::sandboxes().api_version;
                    self.own_secret(name, &api_version, "Sandbox", uid).await;
                }
                let (pod, ip) = self.sandbox_ready(crds, name, deadline).await?;
                (pod, ip, spec.agent_token.clone())
            }
            _ => {
                self.create("creating the sandbox secret", || {
                    self.secrets.create(&pp, &secret)
                })
                .await?;
                let uid = self
                    .create("creating the sandbox pod", || self.pods.create(&pp, &pod))
                    .await?;
                let uid = match uid {
                    Some(uid) => Some(uid),
                    // The create was retried and found it there: read the uid.
                    None => {
                        self.call("reading the sandbox pod", true, || self.pods.get(name))
                            .await?
                            .metadata
                            .uid
                    }
                };
                if let Some(uid) = uid {
                    self.own_secret(name, "v1", "Pod", uid).await;
                }
                let ip = self.pod_ready(name, deadline).await?;
                (name.to_string(), ip, spec.agent_token.clone())
            }
        };
        let (url, access) = self.reach_agent(&pod_name, &ip, &token, deadline).await?;
        if flavor == Flavor::Claim {
            // The warm pod started without a grant: give it this sandbox's env and files,
            // addressed as pods reach the proxy.
            let env = spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), pod_env_value(&self.config, k, v)))
                .collect();
            let files = super::files_as_text(&spec.files)?;
            AgentClient::new(&url, &token)
                .configure(&airlock_wire::ConfigureRequest { env, files })
                .await?;
        }
        Ok((pod_name, url, access, token))
    }
}

async fn load_config(config: &KubernetesConfig) -> Result<kube::Config, BackendError> {
    let options = kube::config::KubeConfigOptions {
        context: config.context.clone(),
        ..Default::default()
    };
    let err =
        |e: &dyn std::fmt::Display| BackendError::Unavailable(format!("kubernetes config: {e}"));
    match &config.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| err(&format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| err(&format!("{}: {e}", path.display())))
        }
        None if config.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| err(&e)),
        None => kube::Config::infer().await.map_err(|e| err(&e)),
    }
}

#[async_trait]
impl SandboxBackend for KubernetesBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kubernetes
    }

    async fn provision(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        let name = object_name(&spec.id);
        let flavor = self.flavor();
        match self.provision_steps(spec, &name, flavor).await {
            Ok((pod, url, access, token)) => Ok(SandboxHandle {
                id: spec.id.clone(),
                backend: BackendKind::Kubernetes,
                backend_ref: name.clone(),
                agent_url: Some(url),
                agent_token: token,
                extra: BTreeMap::from([
                    (EXTRA_NAMESPACE.to_string(), self.config.namespace.clone()),
                    (EXTRA_SECRET.to_string(), name),
                    (EXTRA_FLAVOR.to_string(), flavor.as_str().to_string()),
                    (EXTRA_POD.to_string(), pod),
                    (EXTRA_ACCESS.to_string(), access.to_string()),
                ]),
            }),
            Err(e) => {
                // A claim names its warm pod only in its status; deleting the claim lets the
                // controller remove the Sandbox and pod it handed over.
                if let Err(cleanup) = self.delete_objects(&name, &name).await {
                    // The label sweep retries; the pod's deadline is the last backstop.
                    tracing::warn!(sandbox = %spec.id, error = %cleanup, "cleanup after a failed provision");
                }
                Err(e)
            }
        }
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        self.delete_objects(&handle.backend_ref, pod_of(handle))
            .await
    }

    /// Not supported: agent-sandbox's only scale-to-zero (`spec.operatingMode: Suspended`,
    /// v1alpha1 `replicas: 0`; kubernetes-sigs/agent-sandbox@2fd412d5
    /// `api/v1beta1/sandbox_types.go`) deletes the pod, so memory and the emptyDir workspace
    /// are lost and the pod returns with a new IP; plain pods have nothing at all.
    async fn pause(&self, _handle: &SandboxHandle) -> Result<(), BackendError> {
        Err(BackendError::NotSupported(
            "the kubernetes backend does not support pause: agent-sandbox's \
             operatingMode: Suspended deletes the pod (memory and workspace are lost)"
                .into(),
        ))
    }

    async fn resume(&self, _handle: &SandboxHandle) -> Result<(), BackendError> {
        Err(BackendError::NotSupported(
            "the kubernetes backend does not support resume (it has no pause)".into(),
        ))
    }

    /// The agent at the handle's URL, or through this process's port-forward listener when
    /// the handle was reached that way (a restarted brain starts a new listener).
    fn agent(&self, handle: &SandboxHandle) -> Result<AgentClient, BackendError> {
        if handle.extra.get(EXTRA_ACCESS).map(String::as_str) == Some(ACCESS_FORWARD) {
            let url = self.forwards.url_for(pod_of(handle))?;
            return Ok(AgentClient::new(url, handle.agent_token.clone()));
        }
        AgentClient::for_handle(handle)
    }

    // The agent calls: when the agent cannot be reached, a pod that is gone (deleted,
    // finished, being deleted) makes it `sandbox_lost` rather than a transport error.
    async fn exec(
        &self,
        handle: &SandboxHandle,
        req: airlock_wire::ExecRequest,
    ) -> Result<airlock_wire::ExecResult, BackendError> {
        let r = self.agent(handle)?.exec(req).await;
        self.or_lost(handle, r).await
    }

    async fn exec_stream(
        &self,
        handle: &SandboxHandle,
        req: airlock_wire::ExecRequest,
    ) -> Result<super::ExecStream, BackendError> {
        let r = self.agent(handle)?.exec_stream(req).await;
        self.or_lost(handle, r).await
    }

    async fn read_file(
        &self,
        handle: &SandboxHandle,
        path: &str,
    ) -> Result<bytes::Bytes, BackendError> {
        let r = self.agent(handle)?.read_file(path).await;
        self.or_lost(handle, r).await
    }

    async fn write_file(
        &self,
        handle: &SandboxHandle,
        path: &str,
        data: bytes::Bytes,
    ) -> Result<(), BackendError> {
        let r = self.agent(handle)?.write_file(path, data).await;
        self.or_lost(handle, r).await
    }

    async fn list_files(
        &self,
        handle: &SandboxHandle,
        path: &str,
    ) -> Result<Vec<airlock_wire::FileEntry>, BackendError> {
        let r = self.agent(handle)?.list_files(path).await;
        self.or_lost(handle, r).await
    }

    async fn destroy_labelled(&self, found: &LabelledSandbox) -> Result<(), BackendError> {
        self.delete_objects(&found.backend_ref, &found.backend_ref)
            .await
    }

    async fn list_labelled(&self) -> Result<Vec<LabelledSandbox>, BackendError> {
        let lp = ListParams::default().labels(SANDBOX_LABEL);
        let pods = self
            .call("listing sandbox pods", true, || self.pods.list(&lp))
            .await?;
        // Secrets too: a brain killed between creating the Secret and the pod leaves only it.
        let secrets = self
            .call("listing sandbox secrets", true, || self.secrets.list(&lp))
            .await?;
        // And the agent-sandbox objects: a Sandbox or claim whose pod is not there yet.
        let mut crd_metas = Vec::new();
        if let Some(crds) = &self.crds {
            for (api, what) in [
                (&crds.sandboxes, "listing Sandboxes"),
                (&crds.claims, "listing sandbox claims"),
            ] {
                match self.call(what, true, || api.list(&lp)).await {
                    Ok(list) => crd_metas.extend(list.items.into_iter().map(|o| o.metadata)),
                    // Claims need the extensions CRDs, which may be absent.
                    Err(BackendError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let mut found = BTreeMap::new();
        let metas = pods
            .items
            .into_iter()
            .map(|p| p.metadata)
            .chain(secrets.items.into_iter().map(|s| s.metadata))
            .chain(crd_metas);
        for meta in metas {
            let (Some(name), Some(labels)) = (meta.name, meta.labels) else {
                continue;
            };
            let Some(id) = labels.get(SANDBOX_LABEL) else {
                continue;
            };
            found.entry(id.clone()).or_insert_with(|| LabelledSandbox {
                id: id.clone(),
                owner: labels.get(OWNER_LABEL).cloned(),
                backend_ref: name,
            });
        }
        Ok(found.into_values().collect())
    }
}

pub mod agent_sandbox;
mod forward;
#[cfg(test)]
mod tests;
