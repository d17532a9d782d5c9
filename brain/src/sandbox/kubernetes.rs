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
//! Provision creates the Secret, then the Pod, then polls the Pod until it is Running and Ready
//! with an IP (the readiness probe is the agent's `/health`), failing fast on an image pull
//! error, an unschedulable pod, a failed container or a pod that ended, and then checks the
//! agent itself from the brain. Any failure deletes what was created. The brain reaches the
//! agent at `http://<podIP>:<agent_port>` (it runs in the cluster, see `k8s/`).
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
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize;

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

/// `sandbox.kubernetes.use_agent_sandbox_crd` is deliberately absent: only plain Pods are
/// implemented (see ARCHITECTURE.md).
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
        let value = match (&config.proxy_url, key.to_ascii_lowercase().as_str()) {
            (Some(addr), "https_proxy" | "http_proxy" | "all_proxy") => {
                rewrite_proxy_addr(value, addr).unwrap_or_else(|| value.clone())
            }
            _ => value.clone(),
        };
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

pub struct KubernetesBackend {
    config: KubernetesConfig,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    api_timeout: Duration,
}

const ATTEMPTS: u32 = 4;

// === impl KubernetesBackend ===

impl KubernetesBackend {
    /// Loads the client config and checks that the API answers and lets us list pods in the
    /// namespace (a wrong token or missing RBAC fails here, at start, with the server's words).
    pub async fn connect(config: KubernetesConfig) -> Result<Self, BackendError> {
        // kube's rustls stack needs a process-wide provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kube_config = load_config(&config).await?;
        let client = kube::Client::try_from(kube_config)
            .map_err(|e| BackendError::Unavailable(format!("kubernetes client: {e}")))?;
        let backend = Self {
            pods: Api::namespaced(client.clone(), &config.namespace),
            secrets: Api::namespaced(client, &config.namespace),
            api_timeout: Duration::from_secs(config.api_timeout_seconds.max(1)),
            config,
        };
        let probe = ListParams::default().labels(SANDBOX_LABEL).limit(1);
        backend
            .call("listing sandbox pods", true, || backend.pods.list(&probe))
            .await?;
        tracing::info!(namespace = %backend.config.namespace, "kubernetes backend ready");
        Ok(backend)
    }

    pub fn config(&self) -> &KubernetesConfig {
        &self.config
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
        let name = &handle.backend_ref;
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
    /// through (its answer was lost), which counts as success.
    async fn create<K, F, Fut>(&self, what: &str, f: F) -> Result<(), BackendError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<K, kube::Error>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match tokio::time::timeout(self.api_timeout, f()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if attempt > 1 && status_code(&e) == Some(409) => return Ok(()),
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

    /// Deletes the pod and the Secret of a sandbox; already gone is fine.
    async fn delete_objects(&self, name: &str) -> Result<(), BackendError> {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let pod = self
            .call("deleting the sandbox pod", true, || {
                self.pods.delete(name, &dp)
            })
            .await;
        let secret_dp = DeleteParams::default();
        let secret = self
            .call("deleting the sandbox secret", true, || {
                self.secrets.delete(name, &secret_dp)
            })
            .await;
        for result in [pod.map(|_| ()), secret.map(|_| ())] {
            match result {
                Ok(()) | Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits for the pod to be Ready and its agent to answer; returns the agent URL.
    async fn wait_ready(&self, name: &str, token: &str) -> Result<String, BackendError> {
        let timeout = Duration::from_secs(self.config.ready_timeout_seconds.max(1));
        let deadline = Instant::now() + timeout;
        // Short first polls: a warm node readies a pod in tens of milliseconds.
        let mut delay = Duration::from_millis(10);
        let mut last;
        loop {
            let pod = self
                .call("reading the sandbox pod", true, || self.pods.get(name))
                .await?;
            match pod_state(&pod) {
                PodState::Ready(ip) => {
                    let url = agent_url(&ip, self.config.agent_port);
                    let agent = AgentClient::new(&url, token);
                    match agent.health().await {
                        Ok(_) => return Ok(url),
                        Err(e) => last = format!("pod Ready at {ip} but its agent: {e}"),
                    }
                }
                PodState::Failed(why) => return Err(BackendError::NotReady(why)),
                PodState::Starting(stage) => last = stage,
            }
            if Instant::now() >= deadline {
                return Err(BackendError::NotReady(format!(
                    "pod {name} not ready after {timeout:?}; last state: {last}"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(delay.min(left)).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    async fn provision_steps(
        &self,
        spec: &SandboxSpec,
        name: &str,
    ) -> Result<String, BackendError> {
        let (pod, secret) = render(&self.config, spec)?;
        let pp = PostParams::default();
        self.create("creating the sandbox secret", || {
            self.secrets.create(&pp, &secret)
        })
        .await?;
        self.create("creating the sandbox pod", || self.pods.create(&pp, &pod))
            .await?;
        let created = self
            .call("reading the sandbox pod", true, || self.pods.get(name))
            .await?;
        if let Some(uid) = created.metadata.uid.clone() {
            // The cluster's garbage collector then deletes the Secret with the pod.
            let owner = OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
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
                tracing::warn!(sandbox = %spec.id, error = %e, "secret left without owner reference");
            }
        }
        self.wait_ready(name, &spec.agent_token).await
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
        match self.provision_steps(spec, &name).await {
            Ok(url) => Ok(SandboxHandle {
                id: spec.id.clone(),
                backend: BackendKind::Kubernetes,
                backend_ref: name.clone(),
                agent_url: Some(url),
                agent_token: spec.agent_token.clone(),
                extra: BTreeMap::from([
                    (EXTRA_NAMESPACE.to_string(), self.config.namespace.clone()),
                    (EXTRA_SECRET.to_string(), name),
                ]),
            }),
            Err(e) => {
                if let Err(cleanup) = self.delete_objects(&name).await {
                    // The label sweep retries; the pod's deadline is the last backstop.
                    tracing::warn!(sandbox = %spec.id, error = %cleanup, "cleanup after a failed provision");
                }
                Err(e)
            }
        }
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        self.delete_objects(&handle.backend_ref).await
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
        self.delete_objects(&found.backend_ref).await
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
        let mut found = BTreeMap::new();
        let metas = pods
            .items
            .into_iter()
            .map(|p| p.metadata)
            .chain(secrets.items.into_iter().map(|s| s.metadata));
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

#[cfg(test)]
mod tests;
