//! Sandbox backends: one trait, one module per backend (the registry, as in Vector).
//!
//! Exec and file calls for backends that run `sandbox-agent` inside the sandbox (local, docker,
//! kubernetes) are written once, in `agent_client`, and reached through the trait's default
//! methods. Backends whose provider has its own exec API (e2b, daytona) override them.

pub mod agent_client;
pub mod config;
pub mod daytona;
pub mod docker;
pub mod e2b;
pub mod egress;
#[cfg(test)]
pub(crate) mod fake;
pub mod kubernetes;
pub mod local;
pub(crate) mod remote;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use airlock_wire::{ExecEvent, ExecRequest, ExecResult, FileEntry};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use agent_client::AgentClient;

use config::{BackendChoice, SandboxConfig};

/// Label (docker/kubernetes) or metadata key (e2b/daytona) every Airlock sandbox carries, so a
/// restarted brain can find what an earlier run created.
pub const SANDBOX_LABEL: &str = "airlock.sandbox";
/// Label naming the brain instance that owns a sandbox (its store identity).
pub const OWNER_LABEL: &str = "airlock.owner";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Local,
    Docker,
    Kubernetes,
    E2b,
    Daytona,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Docker => "docker",
            BackendKind::Kubernetes => "kubernetes",
            BackendKind::E2b => "e2b",
            BackendKind::Daytona => "daytona",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self::Local),
            "docker" => Ok(Self::Docker),
            "kubernetes" => Ok(Self::Kubernetes),
            "e2b" => Ok(Self::E2b),
            "daytona" => Ok(Self::Daytona),
            other => Err(format!(
                "unknown backend `{other}` (expected local, docker, kubernetes, e2b or daytona)"
            )),
        }
    }
}

/// Resource limits requested for one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (fractions allowed).
    pub cpus: f64,
    pub memory_mb: u64,
    /// Maximum number of processes/threads (fork-bomb guard).
    pub pids: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus: 1.0,
            memory_mb: 512,
            pids: 256,
        }
    }
}

/// Everything a backend needs to create one sandbox. The brain has already committed the
/// sandbox row (status `provisioning`) before this is handed to a backend.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Airlock's id for the sandbox (`sb-…`), used for labels and names.
    pub id: String,
    /// Identity of the brain store that owns it (label `airlock.owner`).
    pub owner: String,
    pub image: Option<String>,
    pub resources: Resources,
    /// Environment for every process in the sandbox (stub credentials, proxy URLs, CA paths).
    pub env: BTreeMap<String, String>,
    /// Extra files placed in the sandbox before it starts (path → bytes), e.g. the proxy CA.
    pub files: Vec<(String, Bytes)>,
    /// Token the in-sandbox agent must demand (`AIRLOCK_AGENT_TOKEN`).
    pub agent_token: String,
    pub ttl_s: u64,
    /// A persistent workspace (named volume) mounted at `/workspace` instead of a scratch
    /// one; only backends whose `supports_workspaces` is true get one.
    pub workspace: Option<String>,
    /// Whose per-tenant dependency caches (docker `caches`, mode `tenant`) the sandbox mounts:
    /// the owner of its session (a virtual key), else `default`. `None` (a warm-pool sandbox,
    /// no tenant yet): no per-tenant cache is mounted.
    pub cache_tenant: Option<String>,
}

/// What [`SandboxBackend::snapshot`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// What [`SandboxBackend::restore_snapshot`] and `delete_snapshot` take.
    pub backend_ref: String,
    pub size_bytes: u64,
}

/// A snapshot a backend holds under a brain's ownership marker
/// ([`SandboxBackend::list_snapshots`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSnapshot {
    /// The brain's snapshot id it was taken for (`snapshots.id`).
    pub snapshot_id: String,
    /// What [`SandboxBackend::delete_snapshot`] takes.
    pub backend_ref: String,
}

/// Keys in [`SandboxHandle::extra`] that keep a sandbox's grant across a brain restart (the
/// handle is never shown by the API: it already holds the agent token).
pub const HANDLE_TOKEN_KEY: &str = "vault.token";
pub const HANDLE_STUBS_KEY: &str = "vault.stubs";

/// A grant as recorded in a handle: `(token, stubs)`.
pub fn recorded_grant(handle: &SandboxHandle) -> Option<(String, BTreeMap<String, String>)> {
    let token = handle.extra.get(HANDLE_TOKEN_KEY)?.clone();
    let stubs = handle
        .extra
        .get(HANDLE_STUBS_KEY)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    Some((token, stubs))
}

/// Refuses workspace bytes that hold any part of the sandbox's grant (its proxy token, its
/// stubs): a snapshot never captures one. Scans the whole archive once (Aho-Corasick).
pub fn ensure_no_grant(handle: &SandboxHandle, data: &[u8]) -> Result<(), BackendError> {
    let Some((token, stubs)) = recorded_grant(handle) else {
        return Ok(());
    };
    let mut needles: Vec<(String, &str)> = vec![("the proxy token".into(), token.as_str())];
    for (name, stub) in &stubs {
        needles.push((format!("the {name} stub"), stub.as_str()));
        // Typed stubs kept as one string (`ID:SECRET[:REGION]`) leak part by part too.
        if stub.contains(':') {
            for part in stub.split(':').filter(|p| p.len() >= 16) {
                needles.push((format!("part of the {name} stub"), part));
            }
        }
    }
    needles.retain(|(_, n)| !n.is_empty());
    if needles.is_empty() {
        return Ok(());
    }
    let matcher = aho_corasick::AhoCorasick::new(needles.iter().map(|(_, n)| *n))
        .map_err(|e| BackendError::Unavailable(format!("building the grant scan: {e}")))?;
    if let Some(found) = matcher.find(data) {
        return Err(BackendError::Invalid(format!(
            "the workspace holds {} in a file; a snapshot never captures a sandbox's grant: \
             remove it from /workspace and snapshot again",
            needles[found.pattern().as_usize()].0
        )));
    }
    Ok(())
}

/// `configure` files as the agent takes them (UTF-8 text: CA bundles, config files).
pub fn files_as_text(files: &[(String, Bytes)]) -> Result<BTreeMap<String, String>, BackendError> {
    files
        .iter()
        .map(|(path, data)| {
            let text = std::str::from_utf8(data).map_err(|_| {
                BackendError::Invalid(format!("file {path} for configure is not UTF-8 text"))
            })?;
            Ok((path.clone(), text.to_string()))
        })
        .collect()
}

/// What a backend returns for a created sandbox; persisted in the sandbox row so that a
/// restarted brain can reach (re-adopt) or destroy it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxHandle {
    pub id: String,
    pub backend: BackendKind,
    /// Backend-specific reference: container id, pod name, pid, remote sandbox id.
    pub backend_ref: String,
    /// Base URL of the in-sandbox agent (`http://10.1.2.3:7700`, or `unix:/abs/agent.sock`
    /// for the docker backend), when there is one.
    pub agent_url: Option<String>,
    /// Bearer token for the agent.
    pub agent_token: String,
    /// Anything else the backend needs to find its resources again (network id, temp dir…).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// Env vars that name the CA bundle for common tools (OpenSSL/Python, requests, Node, curl,
/// git, pip).
pub const CA_ENV_VARS: [&str; 6] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
];

/// Hosts that bypass the proxy: the sandbox itself (in docker, loopback is the sandbox's own).
pub const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// Where curl reads its `.curlrc` in sandboxes whose proxy URL is `https://` (`CURL_HOME`).
/// curl verifies an HTTPS proxy against its built-in bundle, never `CURL_CA_BUNDLE` or
/// `SSL_CERT_FILE`, so that `.curlrc` names the CA bundle with `proxy-cacert`; git reads
/// `GIT_PROXY_SSL_CAINFO`. Python (urllib3) verifies the proxy with `REQUESTS_CA_BUNDLE`.
pub const CURL_HOME: &str = "/etc/airlock";
/// Env vars a grant adds when the proxy URL is `https://` (not credentials).
pub const PROXY_TLS_ENV: [&str; 2] = ["CURL_HOME", "GIT_PROXY_SSL_CAINFO"];

/// A sandbox a backend found by label when listing for reaping/adoption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledSandbox {
    pub id: String,
    pub owner: Option<String>,
    pub backend_ref: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The caller asked for something the backend cannot do (bad image name, limits).
    #[error("invalid sandbox request: {0}")]
    Invalid(String),
    /// The sandbox no longer exists on the backend.
    #[error("sandbox {0} not found on the backend")]
    NotFound(String),
    /// The backend (docker engine, cloud API) failed or is unreachable.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The in-sandbox agent answered with an error body.
    #[error("sandbox agent error {code}: {message}")]
    Agent {
        status: u16,
        code: String,
        message: String,
    },
    /// Transport to the agent failed (sandbox died, network).
    #[error("cannot reach the sandbox agent: {0}")]
    AgentUnreachable(String),
    #[error("sandbox did not become ready: {0}")]
    NotReady(String),
    /// The backend does not have this feature (named in the message): `501 not_supported`.
    #[error("{0}")]
    NotSupported(String),
    /// The request conflicts with the backend's current state (a workspace in use): `409`.
    #[error("{0}")]
    Conflict(String),
}

impl BackendError {
    /// `NotSupported` naming `feature` on `kind`.
    pub fn not_supported(kind: BackendKind, feature: &str) -> Self {
        BackendError::NotSupported(format!("the {kind} backend does not support {feature}"))
    }
}

pub type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecEvent, BackendError>> + Send>>;

/// One sandbox backend. Implementations live in one module each.
#[async_trait]
pub trait SandboxBackend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Create and start a sandbox and wait until its agent answers `/health`.
    async fn provision(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError>;

    /// [`SandboxBackend::provision`] for a warm pool's background fill, which no caller waits
    /// on: a backend may leave what it keeps ready for waited-on provisions alone. Default:
    /// the same as `provision`.
    async fn provision_for_pool(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        self.provision(spec).await
    }

    /// Destroy the sandbox and everything created for it (container, network, temp dir).
    /// Destroying something already gone is `Ok`.
    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError>;

    /// Destroy a sandbox found by label whose handle the brain no longer has.
    async fn destroy_labelled(&self, found: &LabelledSandbox) -> Result<(), BackendError>;

    /// Every sandbox on this backend that carries the `airlock.sandbox` label.
    async fn list_labelled(&self) -> Result<Vec<LabelledSandbox>, BackendError>;

    /// Whether the sandbox still runs (used when adopting after a restart).
    async fn is_alive(&self, handle: &SandboxHandle) -> bool {
        match self.agent(handle) {
            Ok(agent) => agent.health().await.is_ok(),
            Err(_) => false,
        }
    }

    /// Re-creates the host-side pieces of a sandbox found alive after a brain restart (the
    /// docker backend's egress forwarder). Called after `is_alive` said yes; an error means
    /// the sandbox cannot be used as it was provisioned. Default: nothing to do.
    async fn adopt(&self, _handle: &SandboxHandle) -> Result<(), BackendError> {
        Ok(())
    }

    fn agent(&self, handle: &SandboxHandle) -> Result<AgentClient, BackendError> {
        AgentClient::for_handle(handle)
    }

    /// Starts whatever the backend keeps ready ahead of provisions for sandboxes of `owner`
    /// (the docker backend's spare networks). Returns at once; called after the start-up
    /// reconciliation. Default: nothing.
    fn warm_up(&self, _owner: &str) {}

    /// Graceful shutdown: removes what [`SandboxBackend::warm_up`] keeps ready and no sandbox
    /// uses. Sandboxes themselves stay (adopted by the next start). Default: nothing.
    async fn shutdown(&self) {}

    /// Whether this backend's sandboxes can wait in a warm pool: started with no grant, then
    /// given one by [`SandboxBackend::configure`] when claimed.
    fn supports_pool(&self) -> bool {
        false
    }

    /// Gives a sandbox started without its grant (a pooled one) its env and files, once,
    /// before anything runs in it: the agent's `POST /configure`. Backends that pre-mount
    /// some of the files (docker) fill those themselves.
    async fn configure(
        &self,
        handle: &SandboxHandle,
        env: &BTreeMap<String, String>,
        files: &[(String, Bytes)],
    ) -> Result<(), BackendError> {
        if !self.supports_pool() {
            return Err(BackendError::not_supported(self.kind(), "warm pools"));
        }
        let files = files_as_text(files)?;
        self.agent(handle)?
            .configure(&airlock_wire::ConfigureRequest {
                env: env.clone(),
                files,
            })
            .await
    }

    /// Freezes every process of the sandbox (memory kept); its TTL keeps counting.
    async fn pause(&self, _handle: &SandboxHandle) -> Result<(), BackendError> {
        Err(BackendError::not_supported(self.kind(), "pause"))
    }

    /// Undoes [`SandboxBackend::pause`].
    async fn resume(&self, _handle: &SandboxHandle) -> Result<(), BackendError> {
        Err(BackendError::not_supported(self.kind(), "resume"))
    }

    /// Captures the sandbox's workspace (never its env: grants live there; see
    /// [`ensure_no_grant`]) and returns what [`SandboxBackend::restore_snapshot`] takes.
    async fn snapshot(
        &self,
        _handle: &SandboxHandle,
        _snapshot_id: &str,
    ) -> Result<StoredSnapshot, BackendError> {
        Err(BackendError::not_supported(self.kind(), "snapshots"))
    }

    /// Fills a fresh sandbox's workspace from a snapshot, before it is handed out.
    async fn restore_snapshot(
        &self,
        _handle: &SandboxHandle,
        _backend_ref: &str,
    ) -> Result<(), BackendError> {
        Err(BackendError::not_supported(self.kind(), "snapshots"))
    }

    /// Whether a snapshot is itself what a sandbox is started from (E2B: a snapshot
    /// template): a restore then asks for [`StoredSnapshot::backend_ref`] as the image
    /// instead of the source's image.
    fn snapshot_is_image(&self) -> bool {
        false
    }

    /// Removes what [`SandboxBackend::snapshot`] stored.
    async fn delete_snapshot(&self, _backend_ref: &str) -> Result<(), BackendError> {
        Err(BackendError::not_supported(self.kind(), "snapshots"))
    }

    /// The snapshots this backend holds that brain `owner` took (found by the marker
    /// `snapshot` puts on them), recorded or not: a brain that died between storing a
    /// snapshot and recording it finds the leftover here (`crate::snapshots::reconcile`).
    /// Backends that keep no such marker list none.
    async fn list_snapshots(&self, _owner: &str) -> Result<Vec<ListedSnapshot>, BackendError> {
        Ok(Vec::new())
    }

    /// Removes whatever an unfinished `snapshot(_, snapshot_id)` of brain `owner` may have
    /// left (the stored snapshot and any helper), found from the ids alone: its brain died
    /// before it recorded what was stored. Nothing left is success.
    async fn discard_snapshot(&self, _owner: &str, _snapshot_id: &str) -> Result<(), BackendError> {
        Ok(())
    }

    /// Whether a sandbox depends on [`SandboxSpec::cache_tenant`] (per-tenant caches): a
    /// warm-pool sandbox, made before its tenant is known, cannot serve such a backend.
    fn needs_tenant(&self) -> bool {
        false
    }

    /// Whether [`SandboxSpec::workspace`] (a persistent workspace) is honoured.
    fn supports_workspaces(&self) -> bool {
        false
    }

    /// Removes a persistent workspace; `Ok(false)` when there was none, `Conflict` while a
    /// sandbox uses it.
    async fn delete_workspace(&self, _name: &str) -> Result<bool, BackendError> {
        Err(BackendError::not_supported(
            self.kind(),
            "persistent workspaces",
        ))
    }

    async fn exec(
        &self,
        handle: &SandboxHandle,
        req: ExecRequest,
    ) -> Result<ExecResult, BackendError> {
        self.agent(handle)?.exec(req).await
    }

    async fn exec_stream(
        &self,
        handle: &SandboxHandle,
        req: ExecRequest,
    ) -> Result<ExecStream, BackendError> {
        self.agent(handle)?.exec_stream(req).await
    }

    async fn read_file(&self, handle: &SandboxHandle, path: &str) -> Result<Bytes, BackendError> {
        self.agent(handle)?.read_file(path).await
    }

    async fn write_file(
        &self,
        handle: &SandboxHandle,
        path: &str,
        data: Bytes,
    ) -> Result<(), BackendError> {
        self.agent(handle)?.write_file(path, data).await
    }

    async fn list_files(
        &self,
        handle: &SandboxHandle,
        path: &str,
    ) -> Result<Vec<FileEntry>, BackendError> {
        self.agent(handle)?.list_files(path).await
    }
}

// === registry ===

/// Builds one backend from the config. Adding a backend is one module plus one arm here.
pub async fn build(
    kind: BackendKind,
    config: &SandboxConfig,
) -> Result<Arc<dyn SandboxBackend>, BackendError> {
    match kind {
        BackendKind::Local => Ok(Arc::new(local::LocalBackend::new(&config.local)?)),
        BackendKind::Docker => Ok(Arc::new(
            docker::DockerBackend::connect(config.docker.clone()).await?,
        )),
        BackendKind::Kubernetes => Ok(Arc::new(
            kubernetes::KubernetesBackend::connect(config.kubernetes.clone()).await?,
        )),
        BackendKind::E2b => Ok(Arc::new(e2b::E2bBackend::new(config.e2b.clone())?)),
        BackendKind::Daytona => Ok(Arc::new(daytona::DaytonaBackend::new(
            config.daytona.clone(),
        )?)),
    }
}

/// The backends this brain uses: the default one, built at start, and any other built on first
/// use (a request naming it, or rows left by an earlier run with another default).
pub struct Backends {
    default: BackendKind,
    config: SandboxConfig,
    built: tokio::sync::Mutex<HashMap<BackendKind, Arc<dyn SandboxBackend>>>,
}

impl Backends {
    /// Builds the default backend. `auto` tries docker (a ping) and falls back to local.
    pub async fn start(choice: BackendChoice, config: SandboxConfig) -> Result<Self, BackendError> {
        let (kind, backend) = match choice.kind() {
            Some(kind) => (kind, build(kind, &config).await?),
            None => match build(BackendKind::Docker, &config).await {
                Ok(docker) => (BackendKind::Docker, docker),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "backend auto: docker engine not available, falling back to the LOCAL \
                         backend, which has NO ISOLATION"
                    );
                    (
                        BackendKind::Local,
                        build(BackendKind::Local, &config).await?,
                    )
                }
            },
        };
        Ok(Self::with_backend(kind, backend, config))
    }

    /// A registry around an already built default backend (tests use fakes this way).
    pub fn with_backend(
        kind: BackendKind,
        backend: Arc<dyn SandboxBackend>,
        config: SandboxConfig,
    ) -> Self {
        let built = HashMap::from([(kind, backend)]);
        Self {
            default: kind,
            config,
            built: tokio::sync::Mutex::new(built),
        }
    }

    pub fn default_kind(&self) -> BackendKind {
        self.default
    }

    /// The backend for `kind`, building it on first use. Failures are not cached, so a docker
    /// engine that comes back is picked up on the next call.
    pub async fn get(&self, kind: BackendKind) -> Result<Arc<dyn SandboxBackend>, BackendError> {
        if let Some(backend) = self.built.lock().await.get(&kind) {
            return Ok(backend.clone());
        }
        // Built outside the lock: connecting to a slow engine must not stall requests for the
        // backends already built. Two racing builds keep the first one inserted.
        let backend = build(kind, &self.config).await?;
        Ok(self
            .built
            .lock()
            .await
            .entry(kind)
            .or_insert(backend)
            .clone())
    }

    /// Backends built so far (for the label sweep).
    pub async fn built(&self) -> Vec<Arc<dyn SandboxBackend>> {
        let built = self.built.lock().await;
        let mut list: Vec<_> = built.values().cloned().collect();
        list.sort_by_key(|b| b.kind().as_str());
        list
    }
}
