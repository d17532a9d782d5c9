//! Docker backend (`bollard`): one container plus one `--internal` bridge network per sandbox.
//!
//! What a sandbox gets (DESIGN.md, "Sandbox backends"):
//! - its own internal network `<network_prefix><id>` whose bridge has **no host address**
//!   (`com.docker.network.bridge.inhibit_ipv4`): the sandbox can reach nothing by IP, not the
//!   outside, not the host, not another sandbox (its only other member is a vault-proxy
//!   container, when [`DockerProxyConfig`] is set);
//! - a runtime directory `<runtime_dir>/<id>/` on the host, bind-mounted read-write at
//!   `/run/airlock`, holding two unix sockets: `agent.sock`, where `sandbox-agent` serves its
//!   HTTP API (the brain's agent URL is `unix:<host dir>/agent.sock`), and, when
//!   [`DockerConfig::egress_upstream`] is set, `egress.sock`, where the brain listens and copies
//!   each connection to the vault proxy ([`super::egress`]). Inside, the agent forwards
//!   `127.0.0.1:3128` ([`SANDBOX_PROXY_ADDR`]) to that socket, so `HTTPS_PROXY` pointing there
//!   is the sandbox's one way out;
//! - a container `<container_prefix><id>` from the sandbox image, whose entrypoint is
//!   `sandbox-agent`: user `1000:1000`, `cap_drop ALL`, `no-new-privileges`, memory (swap
//!   included), CPU and pids limits, a read-only root file system with size-limited tmpfs at
//!   `/workspace` (owned by uid 1000, exec allowed) and `/tmp`, `docker-init` as PID 1 so
//!   zombies are reaped, a capped log, no published ports;
//! - the labels `airlock.sandbox=<id>` and `airlock.owner=<owner>` on both, so a restarted brain
//!   finds (and reaps) what an earlier run left.
//!
//! Why unix sockets: on a plain internal network the host owns the bridge's gateway address,
//! and Docker's isolation rules only drop *forwarded* packets, so a sandbox could open
//! connections to any host service on `0.0.0.0` or the gateway address (measured on Docker
//! 20.10). Without a host address on the bridge there is no such path, and also no way for the
//! host to reach the container by IP, hence the sockets. Nothing is published on a host port.
//!
//! Runtime directory permissions: the parent `<runtime_dir>` is created mode 0711 and must be
//! owned by the brain's uid (refused otherwise, e.g. a pre-planted `/tmp` path). Each
//! per-sandbox directory must let the sandbox user (uid 1000, no capabilities) create
//! `agent.sock`: a root brain chowns it to 1000:1000 with mode 0700 (only root and the sandbox
//! user get in); a brain running as uid 1000 keeps it 0700; any other brain uid falls back to
//! mode 1733 (others may create entries but not list or remove ours), logged as a warning.
//! Sockets are 0666; the directories decide who reaches them. (Engines with user-namespace
//! remapping map uid 1000 to another host uid; that setup is not handled.)
//!
//! Files from [`SandboxSpec::files`] are staged in a per-sandbox host directory and bind-mounted
//! read-only at their target paths. Copying them in with the archive API is not possible: the
//! engine refuses `PUT /archive` on a read-only root file system ("container rootfs is marked
//! read-only"), and tmpfs mounts only exist once the container runs. Bind mounts need the
//! engine to see the brain's file system (local socket, the default); see
//! [`DockerConfig::files_dir`].
//!
//! Provisioning runs in its own task, so a caller that gives up (an HTTP client disconnecting)
//! cannot cancel it half-way: it either returns a ready sandbox or removes everything it made.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_wire::ExecRequest;
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Ipam, IpamConfig, Mount, MountType,
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures_util::StreamExt;
use serde::Deserialize;

use super::agent_client::{self, AgentClient, UNIX_PREFIX};
use super::egress::EgressForwarders;
use super::{
    BackendError, BackendKind, LabelledSandbox, OWNER_LABEL, SANDBOX_LABEL, SandboxBackend,
    SandboxHandle, SandboxSpec,
};

/// Script that builds the default image without a registry; named in "image missing" errors.
const BUILD_HINT: &str = "build it with `bash images/build-offline.sh` (or `docker build images/sandbox`); \
     nothing is pulled from a registry";
/// Keys of [`SandboxHandle::extra`] this backend writes.
pub const EXTRA_CONTAINER_ID: &str = "container_id";
pub const EXTRA_CONTAINER_NAME: &str = "container_name";
pub const EXTRA_NETWORK_ID: &str = "network_id";
pub const EXTRA_NETWORK_NAME: &str = "network_name";
/// The container's own address on its network (no one else on the network answers).
pub const EXTRA_SANDBOX_IP: &str = "sandbox_ip";
pub const EXTRA_FILES_DIR: &str = "files_dir";
/// JSON map: target path in the sandbox → staged host file bind-mounted there (read-only).
/// A pooled sandbox's CA placeholders are filled through it at the claim.
pub const EXTRA_STAGED_FILES: &str = "staged_files";
/// Host path of the sandbox's runtime directory (mounted at [`SANDBOX_RUNTIME_DIR`]).
pub const EXTRA_RUNTIME_DIR: &str = "runtime_dir";
/// Host interface name prefix of every sandbox bridge, so host tooling can recognise them.
/// The bridges have no host address, so no host firewall rule is needed to keep sandboxes off
/// host services.
pub const BRIDGE_PREFIX: &str = "alk-";
/// Where the per-sandbox runtime directory is mounted inside the container.
pub const SANDBOX_RUNTIME_DIR: &str = "/run/airlock";
/// The agent's HTTP API socket, in the runtime directory.
const AGENT_SOCKET: &str = "agent.sock";
/// The egress socket (brain listens, agent connects), in the runtime directory.
const EGRESS_SOCKET: &str = "egress.sock";
/// The in-sandbox HTTP proxy address (the agent's egress forward): what `HTTPS_PROXY`
/// and `HTTP_PROXY` must point at in a docker sandbox.
pub const SANDBOX_PROXY_ADDR: &str = "127.0.0.1:3128";
/// Uid that owns the per-sandbox runtime directory (the image's `sandbox` user).
const SANDBOX_UID: u32 = 1000;

/// `http://<sandbox>:<token>@127.0.0.1:3128`: the proxy URL for a docker sandbox's env, with
/// its vault-proxy grant as the proxy credentials. Sandbox ids and grant tokens are URL-safe
/// (letters, digits, `-_.`), so no escaping is needed.
pub fn sandbox_proxy_url(sandbox_id: &str, token: &str) -> String {
    format!("http://{sandbox_id}:{token}@{SANDBOX_PROXY_ADDR}")
}
/// Prefix of [`LabelledSandbox::backend_ref`] for a labelled network whose container is gone.
const NETWORK_REF_PREFIX: &str = "network:";
/// Uid/gid every sandbox process runs as (the image's `sandbox` user).
const SANDBOX_USER: &str = "1000:1000";
/// Longest a snapshot's `tar` (pack or unpack) may run inside the sandbox.
const SNAPSHOT_TOOL_TIMEOUT: Duration = Duration::from_secs(600);

/// Settings of the docker backend (`sandbox.docker` in the brain config).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Engine address (`unix:///var/run/docker.sock`, `tcp://host:2375`). Unset: `DOCKER_HOST`,
    /// else the local default socket (bollard's `connect_with_defaults`).
    pub host: Option<String>,
    /// Image used when a provision request names none. Built offline by
    /// `images/build-offline.sh`; never pulled.
    pub image: String,
    /// Ignored: the agent listens on a unix socket in the runtime directory. Still accepted so
    /// existing config files load.
    pub agent_port: u16,
    /// Per-sandbox network name: this prefix followed by the sandbox id.
    pub network_prefix: String,
    /// Container name: this prefix followed by the sandbox id.
    pub container_prefix: String,
    /// How long to wait after `start` for the agent to answer `/health`.
    pub startup_timeout_seconds: u64,
    /// Size of the tmpfs mounted at `/workspace` (counts against the memory limit when used).
    pub workspace_size_mb: u64,
    /// Size of the tmpfs mounted at `/tmp`.
    pub tmp_size_mb: u64,
    /// The sandbox user's home (the image's `HOME`), given its own tmpfs (owned by uid 1000,
    /// `tmp_size_mb`) because the root file system is read-only and tools write dotfiles there.
    /// Unset: no home tmpfs.
    pub home_dir: Option<String>,
    /// Run `docker-init` as PID 1 to reap zombies. Unset: on when the engine reports an init
    /// binary.
    pub init: Option<bool>,
    /// IPv4 range (CIDR, e.g. `10.213.0.0/16`) each sandbox network is carved from, in
    /// `/subnet_prefix_len` blocks. Unset: the engine's default address pools, which on a stock
    /// engine hold only about 30 bridge networks, i.e. about 30 concurrent sandboxes (measured
    /// on Docker 20.10). Set this, or `default-address-pools` in the engine's `daemon.json`,
    /// to run more; pick a range the host does not route anywhere else.
    pub subnet_pool: Option<String>,
    /// Prefix length of each network carved from `subnet_pool`; 28 = 16 addresses (network,
    /// gateway, sandbox, proxy, broadcast and spare).
    pub subnet_prefix_len: u8,
    /// OCI runtime for sandboxes (`runsc` for gVisor, `kata`); unset: the engine's default.
    pub runtime: Option<String>,
    /// Host directory where [`SandboxSpec::files`] are staged (`<files_dir>/<sandbox id>/`) and
    /// bind-mounted from. Must be the same path for the brain and the engine (true with a local
    /// socket). Unset: `<temp dir>/airlock-docker-files`.
    pub files_dir: Option<PathBuf>,
    /// Size cap of the container's json-file log (the agent's own output).
    pub log_max_size_mb: u64,
    /// The vault proxy to join to every sandbox network, when it runs as a container. Unset: no
    /// proxy is joined (a proxy on the host is reached through `egress_upstream` instead).
    pub proxy: Option<DockerProxyConfig>,
    /// Host directory holding one runtime directory per sandbox (`<runtime_dir>/<id>/`, the
    /// agent and egress sockets), created mode 0711 and owned by the brain's uid. Must be the
    /// same path for the brain and the engine (local socket) and short enough for unix socket
    /// paths (under 108 bytes with the sandbox id). Unset: `$XDG_RUNTIME_DIR/airlock`, else
    /// `/tmp/airlock-runtime`.
    pub runtime_dir: Option<PathBuf>,
    /// `host:port` of the vault proxy's HTTP proxy listener as the brain reaches it (e.g.
    /// `127.0.0.1:8899` for the embedded proxy). Set: every sandbox gets an egress socket
    /// forwarded there, reached inside at [`SANDBOX_PROXY_ADDR`]. Unset: sandboxes have no
    /// egress at all.
    pub egress_upstream: Option<String>,
    /// Most concurrent egress connections per sandbox (on each side of the socket).
    pub egress_max_connections: usize,
    /// Dependency caches (cargo, npm, pip) as named volumes; see `docker_caches`.
    pub caches: super::docker_caches::CachesConfig,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: None,
            image: "airlock-sandbox:latest".into(),
            agent_port: airlock_wire::DEFAULT_AGENT_PORT,
            network_prefix: "airlock-net-".into(),
            container_prefix: "airlock-".into(),
            startup_timeout_seconds: 30,
            workspace_size_mb: 1024,
            tmp_size_mb: 256,
            home_dir: Some("/home/sandbox".into()),
            subnet_pool: None,
            subnet_prefix_len: 28,
            init: None,
            runtime: None,
            files_dir: None,
            log_max_size_mb: 5,
            proxy: None,
            runtime_dir: None,
            egress_upstream: None,
            egress_max_connections: 256,
            caches: Default::default(),
        }
    }
}

/// A vault-proxy container that is connected to each sandbox network (and disconnected before
/// the network is removed), so it is the sandbox's only reachable peer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerProxyConfig {
    /// Name or id of the running proxy container.
    pub container: String,
    /// DNS alias the proxy gets on each sandbox network (`HTTPS_PROXY=http://<alias>:<port>`).
    #[serde(default)]
    pub alias: Option<String>,
}

/// The docker backend. Cheap to clone (the engine client and config are shared).
#[derive(Clone)]
pub struct DockerBackend {
    docker: Docker,
    config: Arc<DockerConfig>,
    init: bool,
    files_root: PathBuf,
    runtime_root: PathBuf,
    /// Brain-side egress forwarders, when `egress_upstream` is set. Shared by clones; dropping
    /// the last clone stops them.
    egress: Option<Arc<EgressForwarders>>,
    /// Socket name the agent is told to listen on (tests point it elsewhere).
    agent_socket: &'static str,
    /// Parsed `subnet_pool`: (first address, prefix length).
    subnet_pool: Option<(u32, u8)>,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What provisioning has created so far, removed again if a later step fails.
#[derive(Debug, Default)]
struct Created {
    network: Option<String>,
    container: Option<String>,
    files_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
}

// === impl DockerBackend ===

impl DockerBackend {
    /// Connects to the engine, negotiates the API version (Docker 20.10 speaks 1.41) and pings.
    pub async fn connect(config: DockerConfig) -> Result<Self, BackendError> {
        let docker = match &config.host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| BackendError::Unavailable(format!("docker client: {e}")))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| BackendError::Unavailable(format!("docker engine not reachable: {e}")))?;
        docker
            .ping()
            .await
            .map_err(|e| BackendError::Unavailable(format!("docker engine ping failed: {e}")))?;
        let init = match config.init {
            Some(init) => init,
            None => docker
                .info()
                .await
                .map(|i| i.init_binary.is_some_and(|b| !b.is_empty()))
                .unwrap_or(false),
        };
        let files_root = config
            .files_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("airlock-docker-files"));
        let subnet_pool = match &config.subnet_pool {
            Some(pool) => Some(parse_pool(pool, config.subnet_prefix_len)?),
            None => None,
        };
        let runtime_root = config
            .runtime_dir
            .clone()
            .unwrap_or_else(default_runtime_dir);
        prepare_runtime_root(&runtime_root)?;
        let egress = match config.egress_upstream.as_deref() {
            Some(up)
                if up
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                Some(Arc::new(EgressForwarders::new(
                    up,
                    config.egress_max_connections,
                )))
            }
            Some(up) => {
                return Err(BackendError::Invalid(format!(
                    "docker egress_upstream `{up}` must be host:port"
                )));
            }
            None => None,
        };
        Ok(Self {
            docker,
            config: Arc::new(config),
            init,
            files_root,
            runtime_root,
            egress,
            agent_socket: AGENT_SOCKET,
            subnet_pool,
        })
    }

    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// The engine client, for callers (tests, the vault-proxy wiring) that need more.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn network_name(&self, sandbox_id: &str) -> String {
        format!("{}{}", self.config.network_prefix, sandbox_id)
    }

    pub fn container_name(&self, sandbox_id: &str) -> String {
        format!("{}{}", self.config.container_prefix, sandbox_id)
    }

    fn files_dir(&self, sandbox_id: &str) -> PathBuf {
        self.files_root.join(sandbox_id)
    }

    /// The sandbox's runtime directory on the host (mounted at [`SANDBOX_RUNTIME_DIR`]).
    pub fn runtime_dir(&self, sandbox_id: &str) -> PathBuf {
        self.runtime_root.join(sandbox_id)
    }

    /// The brain-side egress forwarders (unset without `egress_upstream`).
    pub fn egress(&self) -> Option<&EgressForwarders> {
        self.egress.as_deref()
    }

    /// The runtime directory recorded in a handle (it may predate a `runtime_dir` change).
    fn handle_runtime_dir(&self, handle: &SandboxHandle) -> PathBuf {
        handle
            .extra
            .get(EXTRA_RUNTIME_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(|| self.runtime_dir(&handle.id))
    }

    /// Starts (or keeps) the brain side of the sandbox's egress socket in `runtime_dir`.
    fn ensure_egress(&self, sandbox_id: &str, runtime_dir: &Path) -> Result<(), BackendError> {
        let Some(egress) = &self.egress else {
            return Ok(());
        };
        let socket = runtime_dir.join(EGRESS_SOCKET);
        egress.ensure(sandbox_id, &socket).map_err(|e| {
            BackendError::Unavailable(format!(
                "egress socket {} for sandbox {sandbox_id}: {e}",
                socket.display()
            ))
        })
    }

    async fn provision_steps(
        &self,
        spec: &SandboxSpec,
        created: &mut Created,
    ) -> Result<SandboxHandle, BackendError> {
        validate(spec)?;
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.config.image.clone());
        self.check_image(&image).await?;

        let labels = HashMap::from([
            (SANDBOX_LABEL.to_string(), spec.id.clone()),
            (OWNER_LABEL.to_string(), spec.owner.clone()),
        ]);

        let t0 = Instant::now();
        let step = |name: &str| {
            tracing::debug!(sandbox = %spec.id, step = name, elapsed_ms = t0.elapsed().as_millis() as u64, "docker provision step");
        };

        // 1. The network: internal (no gateway to the outside), no masquerading.
        let network_name = self.network_name(&spec.id);
        let network = self.create_network(&network_name, &labels).await?;
        created.network = Some(network.id.clone());
        step("network created");

        if let Some(proxy) = &self.config.proxy {
            self.docker
                .connect_network(
                    &network.id,
                    NetworkConnectRequest {
                        container: proxy.container.clone(),
                        endpoint_config: Some(bollard::models::EndpointSettings {
                            aliases: proxy.alias.clone().map(|a| vec![a]),
                            ..Default::default()
                        }),
                    },
                )
                .await
                .map_err(|e| engine("connect the vault proxy to the sandbox network", e))?;
        }

        // 2. Files, staged for read-only bind mounts.
        let mut mounts = if spec.files.is_empty() {
            Vec::new()
        } else {
            let dir = self.files_dir(&spec.id);
            created.files_dir = Some(dir.clone());
            stage_files(&dir, &spec.files).await?
        };

        // 3. The runtime directory with the sockets; the egress listener exists before the
        //    container starts, so the sandbox's first request already finds it.
        let runtime_dir = self.runtime_dir(&spec.id);
        created.runtime_dir = Some(runtime_dir.clone());
        prepare_sandbox_dir(&runtime_dir)?;
        self.ensure_egress(&spec.id, &runtime_dir)?;
        mounts.push(Mount {
            target: Some(SANDBOX_RUNTIME_DIR.into()),
            source: Some(runtime_dir.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        });
        // Appended to the image's entrypoint (`sandbox-agent … --listen 0.0.0.0:7700`); the
        // agent lets a later `--listen` override the earlier one.
        let mut cmd = vec![
            "--listen".to_string(),
            format!("unix:{SANDBOX_RUNTIME_DIR}/{}", self.agent_socket),
        ];
        if self.egress.is_some() {
            cmd.extend([
                "--egress-forward".to_string(),
                format!("{SANDBOX_PROXY_ADDR}=unix:{SANDBOX_RUNTIME_DIR}/{EGRESS_SOCKET}"),
                "--egress-max-connections".to_string(),
                self.config.egress_max_connections.max(1).to_string(),
            ]);
        }

        // 4. The container.
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(k, _)| k.as_str() != airlock_wire::AGENT_TOKEN_ENV)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!(
            "{}={}",
            airlock_wire::AGENT_TOKEN_ENV,
            spec.agent_token
        ));

        let memory = mib_to_bytes(spec.resources.memory_mb)?;
        self.add_caches(spec, &image, &mut mounts, &mut env).await?;
        let mut labels = labels;
        if let Some(name) = &spec.workspace {
            // A persistent workspace: the named volume instead of the tmpfs. A new volume
            // starts as a copy of the image's `/workspace` (empty, owned by uid 1000).
            let volume = self.ensure_workspace(name, &labels).await?;
            labels.insert(WORKSPACE_LABEL.to_string(), name.clone());
            mounts.push(Mount {
                target: Some("/workspace".into()),
                source: Some(volume),
                typ: Some(MountType::VOLUME),
                read_only: Some(false),
                ..Default::default()
            });
        }
        let mut tmpfs = HashMap::from([(
            "/tmp".to_string(),
            format!(
                "rw,exec,nosuid,nodev,size={}m,mode=1777",
                self.config.tmp_size_mb
            ),
        )]);
        if spec.workspace.is_none() {
            tmpfs.insert(
                "/workspace".to_string(),
                format!(
                    "rw,exec,nosuid,nodev,size={}m,uid=1000,gid=1000,mode=0755",
                    self.config.workspace_size_mb
                ),
            );
        }
        if let Some(home) = self
            .config
            .home_dir
            .as_ref()
            .filter(|h| h.as_str() != "/workspace")
        {
            tmpfs.insert(
                home.clone(),
                format!(
                    "rw,exec,nosuid,nodev,size={}m,uid=1000,gid=1000,mode=0700",
                    self.config.tmp_size_mb
                ),
            );
        }
        let host_config = HostConfig {
            network_mode: Some(network_name.clone()),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((spec.resources.cpus * 1e9).round() as i64),
            pids_limit: Some(i64::try_from(spec.resources.pids).unwrap_or(i64::MAX)),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            mounts: Some(mounts),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            init: self.init.then_some(true),
            runtime: self.config.runtime.clone(),
            // Sandboxes are the preferred victims if the host itself runs out of memory.
            oom_score_adj: Some(500),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    (
                        "max-size".to_string(),
                        format!("{}m", self.config.log_max_size_mb.max(1)),
                    ),
                    ("max-file".to_string(), "1".to_string()),
                ])),
            }),
            ..Default::default()
        };
        let container_name = self.container_name(&spec.id);
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            hostname: Some(hostname(&spec.id)),
            user: Some(SANDBOX_USER.into()),
            working_dir: Some("/workspace".into()),
            cmd: Some(cmd),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(host_config),
            stop_timeout: Some(2),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&container_name)
            .build();
        let container = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                if status(&e) == Some(404) {
                    image_missing(&image)
                } else {
                    engine("create container", e)
                }
            })?;
        created.container = Some(container.id.clone());
        step("container created");

        // 5. Start, wait for the agent on its socket.
        self.docker
            .start_container(&container.id, None)
            .await
            .map_err(|e| engine("start container", e))?;
        step("container started");
        let inspect = self
            .docker
            .inspect_container(&container.id, None)
            .await
            .map_err(|e| engine("inspect container", e))?;
        let endpoint = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&network_name))
            .ok_or_else(|| {
                BackendError::Unavailable(format!("container is not attached to {network_name}"))
            })?;
        let agent_url = format!("{UNIX_PREFIX}{}", runtime_dir.join(AGENT_SOCKET).display());
        self.wait_ready(&container.id, &agent_url, &spec.agent_token)
            .await?;

        let mut extra = BTreeMap::from([
            (EXTRA_CONTAINER_ID.to_string(), container.id.clone()),
            (EXTRA_CONTAINER_NAME.to_string(), container_name),
            (EXTRA_NETWORK_ID.to_string(), network.id),
            (EXTRA_NETWORK_NAME.to_string(), network_name),
        ]);
        if let Some(ip) = endpoint.ip_address.filter(|ip| !ip.is_empty()) {
            extra.insert(EXTRA_SANDBOX_IP.to_string(), ip);
        }
        if let Some(dir) = &created.files_dir {
            extra.insert(EXTRA_FILES_DIR.to_string(), dir.display().to_string());
            let staged: BTreeMap<&str, String> = spec
                .files
                .iter()
                .enumerate()
                .map(|(n, (target, _))| (target.as_str(), staged_name(dir, n)))
                .collect();
            extra.insert(
                EXTRA_STAGED_FILES.to_string(),
                serde_json::to_string(&staged).unwrap_or_default(),
            );
        }
        extra.insert(
            EXTRA_RUNTIME_DIR.to_string(),
            runtime_dir.display().to_string(),
        );
        Ok(SandboxHandle {
            id: spec.id.clone(),
            backend: BackendKind::Docker,
            backend_ref: container.id,
            agent_url: Some(agent_url),
            agent_token: spec.agent_token.clone(),
            extra,
        })
    }

    /// Creates the sandbox's internal network, in a free block of `subnet_pool` when one is
    /// configured (a block another network holds is refused by the engine: try another).
    async fn create_network(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<bollard::models::NetworkCreateResponse, BackendError> {
        let request = |ipam: Option<Ipam>| NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            internal: Some(true),
            attachable: Some(false),
            ipam,
            options: Some(HashMap::from([
                (
                    "com.docker.network.bridge.enable_ip_masquerade".to_string(),
                    "false".to_string(),
                ),
                // No host address on the bridge: the sandbox cannot reach host services, and
                // with `internal` there is no route anywhere else (see the module docs).
                (
                    "com.docker.network.bridge.inhibit_ipv4".to_string(),
                    "true".to_string(),
                ),
                // A recognisable host interface (`alk-` + 11 hex), so one host firewall rule
                // (`-i alk-+`) can cover every sandbox bridge; see BRIDGE_PREFIX.
                (
                    "com.docker.network.bridge.name".to_string(),
                    format!("{BRIDGE_PREFIX}{:011x}", rand::random::<u64>() >> 20),
                ),
            ])),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let Some((base, pool_len)) = self.subnet_pool else {
            return self
                .docker
                .create_network(request(None))
                .await
                .map_err(|e| engine("create network", e));
        };
        let len = self.config.subnet_prefix_len;
        let blocks = 1u32 << (len - pool_len);
        let mut last = None;
        for _ in 0..32 {
            let subnet = base + (rand::random_range(0..blocks) << (32 - len));
            let ipam = Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{}/{len}", Ipv4Addr::from(subnet))),
                    gateway: Some(Ipv4Addr::from(subnet + 1).to_string()),
                    ..Default::default()
                }]),
                options: None,
            };
            match self.docker.create_network(request(Some(ipam))).await {
                Ok(created) => return Ok(created),
                Err(e) if e.to_string().contains("overlap") => last = Some(e),
                Err(e) => return Err(engine("create network", e)),
            }
        }
        Err(BackendError::Unavailable(format!(
            "no free /{len} block found in subnet_pool {} after 32 tries (last: {})",
            self.config.subnet_pool.as_deref().unwrap_or_default(),
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    async fn check_image(&self, image: &str) -> Result<(), BackendError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(image_missing(image)),
            Err(e) => Err(engine("inspect image", e)),
        }
    }

    /// Polls `/health` until it answers or the startup timeout passes; fails early (with the
    /// container's log) if the container exits.
    async fn wait_ready(
        &self,
        container: &str,
        url: &str,
        token: &str,
    ) -> Result<(), BackendError> {
        let agent = AgentClient::new(url, token);
        let deadline = Instant::now() + Duration::from_secs(self.config.startup_timeout_seconds);
        let mut delay = Duration::from_millis(10);
        let mut attempt = 0u32;
        loop {
            let last_error = match agent.health().await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            attempt += 1;
            if attempt.is_multiple_of(5) {
                let running = self
                    .docker
                    .inspect_container(container, None)
                    .await
                    .ok()
                    .and_then(|i| i.state)
                    .and_then(|s| s.running)
                    .unwrap_or(false);
                if !running {
                    let logs = self.logs_tail(container).await;
                    return Err(BackendError::NotReady(format!(
                        "container exited before the agent answered /health; log:\n{logs}"
                    )));
                }
            }
            if Instant::now() >= deadline {
                let logs = self.logs_tail(container).await;
                return Err(BackendError::NotReady(format!(
                    "agent at {url} did not answer /health within {}s ({last_error}); log:\n{logs}",
                    self.config.startup_timeout_seconds
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    /// The last lines of a container's log, for error messages (never fails).
    async fn logs_tail(&self, container: &str) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("50")
            .build();
        let mut stream = self.docker.logs(container, Some(options));
        let mut out = String::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => out.push_str(&String::from_utf8_lossy(&chunk.into_bytes())),
                Err(e) => {
                    out.push_str(&format!("<log unavailable: {e}>"));
                    break;
                }
            }
            if out.len() > 8192 {
                break;
            }
        }
        if out.is_empty() {
            "<empty>".into()
        } else {
            out
        }
    }

    /// Removes whatever a failed provision created. Errors are logged, not returned: the
    /// provision error is what the caller needs, and the label sweep catches leftovers.
    /// Repository of snapshot images: `<container_prefix>snapshot`.
    fn snapshot_repo(&self) -> String {
        format!("{}snapshot", self.config.container_prefix).to_ascii_lowercase()
    }

    /// Mounts the configured dependency caches (`docker_caches`) and adds their env (a key
    /// the sandbox's own env sets wins).
    async fn add_caches(
        &self,
        spec: &SandboxSpec,
        image: &str,
        mounts: &mut Vec<Mount>,
        env: &mut Vec<String>,
    ) -> Result<(), BackendError> {
        let caches = super::docker_caches::cache_setup(
            &self.docker,
            &self.config.caches,
            &self.config.container_prefix,
            image,
            spec.cache_tenant.as_deref(),
        )
        .await?;
        mounts.extend(caches.mounts);
        for entry in caches.env {
            let key = entry.split('=').next().unwrap_or_default();
            if !spec.env.contains_key(key) {
                env.push(entry);
            }
        }
        Ok(())
    }

    /// Volume of a persistent workspace: `<container_prefix>ws-<name>`.
    fn workspace_volume(&self, name: &str) -> String {
        format!("{}ws-{name}", self.config.container_prefix)
    }

    /// Creates the workspace's volume unless it exists, after checking no live container
    /// mounts it (one sandbox at a time: two writers would corrupt a checkout). Returns its
    /// name.
    async fn ensure_workspace(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<String, BackendError> {
        check_workspace_name(name)?;
        if let Some(user) = self.workspace_user(name).await? {
            return Err(BackendError::Conflict(format!(
                "workspace {name} is in use by sandbox {user}"
            )));
        }
        let volume = self.workspace_volume(name);
        let mut labels = labels.clone();
        labels.remove(SANDBOX_LABEL);
        labels.insert(WORKSPACE_LABEL.to_string(), name.to_string());
        self.docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|e| engine("create the workspace volume", e))?;
        Ok(volume)
    }

    /// The sandbox whose container (any state) mounts workspace `name`, if any.
    async fn workspace_user(&self, name: &str) -> Result<Option<String>, BackendError> {
        let filter = HashMap::from([(
            "label".to_string(),
            vec![format!("{WORKSPACE_LABEL}={name}")],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filter)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| engine("list containers", e))?;
        Ok(containers
            .into_iter()
            .find_map(|c| c.labels.and_then(|mut l| l.remove(SANDBOX_LABEL)).or(c.id)))
    }

    async fn cleanup(&self, sandbox_id: &str, created: &Created) {
        if let Err(e) = self
            .remove_all(sandbox_id, created.container.as_deref())
            .await
        {
            tracing::warn!(sandbox = sandbox_id, error = %e, "cleanup after failed provision");
        }
        if let Some(dir) = &created.files_dir {
            remove_dir(dir).await;
        }
        if let Some(dir) = &created.runtime_dir {
            remove_dir(dir).await;
        }
    }

    /// Removes every container and network of one sandbox: the known container first, then
    /// anything else carrying its label (a network is removed after its members).
    async fn remove_all(
        &self,
        sandbox_id: &str,
        container: Option<&str>,
    ) -> Result<(), BackendError> {
        // The egress listener first: the sandbox loses its way out before anything else.
        if let Some(egress) = &self.egress {
            egress.stop(sandbox_id);
        }
        if let Some(container) = container {
            self.remove_container(container).await?;
        }
        let filter = label_filter(Some(sandbox_id));
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filter)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| engine("list containers", e))?;
        for c in containers.into_iter().filter_map(|c| c.id) {
            self.remove_container(&c).await?;
        }
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filter)
            .build();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| engine("list networks", e))?;
        for n in networks.into_iter().filter_map(|n| n.id) {
            self.remove_network(&n).await?;
        }
        remove_dir(&self.files_dir(sandbox_id)).await;
        let runtime_dir = self.runtime_dir(sandbox_id);
        agent_client::forget_unix_socket(&runtime_dir.join(AGENT_SOCKET));
        remove_dir(&runtime_dir).await;
        // Again: an `adopt` racing this destroy may have restarted the forwarder in between;
        // with the directory gone it cannot start another.
        if let Some(egress) = &self.egress {
            egress.stop(sandbox_id);
        }
        Ok(())
    }

    async fn remove_container(&self, container: &str) -> Result<(), BackendError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            // 409: removal already in progress (another destroy, or the engine's own).
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(engine("remove container", e)),
        }
    }

    /// Disconnects whatever is still attached (the proxy) and removes the network.
    async fn remove_network(&self, network: &str) -> Result<(), BackendError> {
        let members = match self.docker.inspect_network(network, None).await {
            Ok(n) => n.containers.unwrap_or_default(),
            Err(e) if status(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(engine("inspect network", e)),
        };
        for member in members.keys() {
            let req = NetworkDisconnectRequest {
                container: member.clone(),
                force: Some(true),
            };
            match self.docker.disconnect_network(network, req).await {
                Ok(()) => {}
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => return Err(engine("disconnect from network", e)),
            }
        }
        match self.docker.remove_network(network).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(engine("remove network", e)),
        }
    }
}

#[async_trait]
impl SandboxBackend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    async fn provision(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        let this = self.clone();
        let owned = spec.clone();
        let task = tokio::spawn(async move {
            let spec = owned;
            let started = Instant::now();
            let mut created = Created::default();
            let result = this.provision_steps(&spec, &mut created).await;
            match &result {
                Ok(_) => tracing::info!(
                    sandbox = %spec.id,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "docker sandbox ready"
                ),
                Err(e) => {
                    tracing::warn!(sandbox = %spec.id, error = %e, "docker provision failed; cleaning up");
                    this.cleanup(&spec.id, &created).await;
                }
            }
            result
        });
        match task.await {
            Ok(result) => result,
            Err(e) => {
                // The task panicked: what it created is unknown, so sweep by label.
                if let Err(sweep) = self.remove_all(&spec.id, None).await {
                    tracing::warn!(sandbox = %spec.id, error = %sweep, "cleanup after provision panic");
                }
                Err(BackendError::Unavailable(format!(
                    "provision task failed: {e}"
                )))
            }
        }
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        let container = handle
            .extra
            .get(EXTRA_CONTAINER_ID)
            .map(String::as_str)
            .or(Some(handle.backend_ref.as_str()).filter(|r| !r.is_empty()));
        self.remove_all(&handle.id, container).await?;
        // A network recorded in the handle but somehow unlabelled is removed too.
        if let Some(net) = handle.extra.get(EXTRA_NETWORK_ID) {
            self.remove_network(net).await?;
        }
        // So is a runtime directory under an earlier `runtime_dir`.
        let dir = self.handle_runtime_dir(handle);
        if dir != self.runtime_dir(&handle.id) {
            agent_client::forget_unix_socket(&dir.join(AGENT_SOCKET));
            remove_dir(&dir).await;
        }
        Ok(())
    }

    async fn destroy_labelled(&self, found: &LabelledSandbox) -> Result<(), BackendError> {
        let container = (!found.backend_ref.starts_with(NETWORK_REF_PREFIX)
            && !found.backend_ref.is_empty())
        .then_some(found.backend_ref.as_str());
        self.remove_all(&found.id, container).await
    }

    async fn list_labelled(&self) -> Result<Vec<LabelledSandbox>, BackendError> {
        let filter = label_filter(None);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filter)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| engine("list containers", e))?;
        let mut found: Vec<LabelledSandbox> = Vec::new();
        for c in containers {
            let labels = c.labels.unwrap_or_default();
            let (Some(id), Some(cid)) = (labels.get(SANDBOX_LABEL), c.id) else {
                continue;
            };
            found.push(LabelledSandbox {
                id: id.clone(),
                owner: labels.get(OWNER_LABEL).cloned(),
                backend_ref: cid,
            });
        }
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filter)
            .build();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| engine("list networks", e))?;
        for n in networks {
            let labels = n.labels.unwrap_or_default();
            let (Some(id), Some(nid)) = (labels.get(SANDBOX_LABEL), n.id) else {
                continue;
            };
            if found.iter().any(|f| &f.id == id) {
                continue;
            }
            found.push(LabelledSandbox {
                id: id.clone(),
                owner: labels.get(OWNER_LABEL).cloned(),
                backend_ref: format!("{NETWORK_REF_PREFIX}{nid}"),
            });
        }
        Ok(found)
    }

    async fn is_alive(&self, handle: &SandboxHandle) -> bool {
        let state = self
            .docker
            .inspect_container(&handle.backend_ref, None)
            .await
            .ok()
            .and_then(|i| i.state);
        let running = state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            return false;
        }
        // A paused sandbox's agent cannot answer; it is alive (and resumable) all the same.
        if state.and_then(|s| s.paused).unwrap_or(false) {
            return self.adopt(handle).await.is_ok();
        }
        let healthy = match self.agent(handle) {
            Ok(agent) => agent.health().await.is_ok(),
            Err(_) => false,
        };
        // Adoption after a restart checks liveness first; re-creating the egress listener here
        // too means a caller that never calls `adopt` still gets a working sandbox.
        healthy && self.adopt(handle).await.is_ok()
    }

    fn supports_pool(&self) -> bool {
        true
    }

    /// Files bind-mounted at creation (the CA placeholders of a pooled sandbox) are filled on
    /// the host, since the root file system is read-only inside; the env and any other file
    /// go to the agent's one-time `POST /configure`.
    async fn configure(
        &self,
        handle: &SandboxHandle,
        env: &BTreeMap<String, String>,
        files: &[(String, bytes::Bytes)],
    ) -> Result<(), BackendError> {
        let staged: BTreeMap<String, String> = handle
            .extra
            .get(EXTRA_STAGED_FILES)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut rest = Vec::new();
        for (target, data) in files {
            match staged.get(target) {
                Some(source) => rewrite_staged(source, data).await?,
                None => rest.push((target.clone(), data.clone())),
            }
        }
        self.agent(handle)?
            .configure(&airlock_wire::ConfigureRequest {
                env: env.clone(),
                files: super::files_as_text(&rest)?,
            })
            .await
    }

    async fn pause(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        match self.docker.pause_container(&handle.backend_ref).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(BackendError::NotFound(handle.id.clone())),
            Err(e) if status(&e) == Some(409) => Err(BackendError::Invalid(format!(
                "sandbox {} cannot be paused now: {e}",
                handle.id
            ))),
            Err(e) => Err(engine("pause container", e)),
        }
    }

    async fn resume(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        match self.docker.unpause_container(&handle.backend_ref).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(BackendError::NotFound(handle.id.clone())),
            Err(e) if status(&e) == Some(409) => Err(BackendError::Invalid(format!(
                "sandbox {} is not paused: {e}",
                handle.id
            ))),
            Err(e) => Err(engine("unpause container", e)),
        }
    }

    /// The workspace as a tar, written by the sandbox's own `tar` to its `/tmp` and read back
    /// through the agent's files API (the engine's archive API cannot see a tmpfs), checked
    /// for any part of the grant, then imported as a one-layer image
    /// `<container_prefix>snapshot:<snapshot id>` (labelled, so it can be listed and removed).
    async fn snapshot(
        &self,
        handle: &SandboxHandle,
        snapshot_id: &str,
    ) -> Result<super::StoredSnapshot, BackendError> {
        let tag = snapshot_tag(snapshot_id)?;
        let agent = self.agent(handle)?;
        let tar_path = format!("/tmp/.airlock-snapshot-{tag}.tar");
        // Files the brain placed under /workspace (bind mounts) are not the workspace's.
        let staged: BTreeMap<String, String> = handle
            .extra
            .get(EXTRA_STAGED_FILES)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let mut argv = vec!["tar".to_string(), "-C".into(), "/".into()];
        for target in staged.keys() {
            if let Some(rel) = target.strip_prefix("/workspace/") {
                argv.push(format!("--exclude=workspace/{rel}"));
            }
        }
        argv.extend(["-cf".into(), tar_path.clone(), "workspace".into()]);
        let packed = run_tool(&agent, argv).await;
        let data = match packed {
            Ok(()) => agent.read_file(&tar_path).await,
            Err(e) => Err(e),
        };
        // Always leave /tmp as it was, whatever happened above.
        let _ = run_tool(&agent, vec!["rm".into(), "-f".into(), tar_path]).await;
        let data = data?;
        super::ensure_no_grant(handle, &data)?;
        let size_bytes = data.len() as u64;
        let repo = self.snapshot_repo();
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(&repo)
            .tag(&tag)
            .changes(vec![format!("LABEL {SNAPSHOT_LABEL}={tag}")])
            .build();
        let mut progress =
            self.docker
                .create_image(Some(options), Some(bollard::body_full(data)), None);
        while let Some(step) = progress.next().await {
            let step = step.map_err(|e| engine("import the workspace snapshot", e))?;
            if let Some(err) = step.error_detail.and_then(|d| d.message) {
                return Err(BackendError::Unavailable(format!(
                    "importing the workspace snapshot: {err}"
                )));
            }
        }
        Ok(super::StoredSnapshot {
            backend_ref: format!("{repo}:{tag}"),
            size_bytes,
        })
    }

    /// Reads the snapshot image's `/workspace` through a container created from it and never
    /// started (labelled with the sandbox's id, so a destroy or the sweep removes a leftover),
    /// hands the tar to the sandbox and unpacks it there with its own `tar`.
    async fn restore_snapshot(
        &self,
        handle: &SandboxHandle,
        backend_ref: &str,
    ) -> Result<(), BackendError> {
        let reader = format!(
            "{}snapshot-reader-{}",
            self.config.container_prefix, handle.id
        );
        let body = ContainerCreateBody {
            image: Some(backend_ref.to_string()),
            // Never run: the image holds only the workspace files.
            cmd: Some(vec!["/airlock-snapshot-is-never-started".into()]),
            labels: Some(HashMap::from([(
                SANDBOX_LABEL.to_string(),
                handle.id.clone(),
            )])),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&reader)
            .build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                if status(&e) == Some(404) {
                    BackendError::Invalid(format!("snapshot image {backend_ref} is gone"))
                } else {
                    engine("create the snapshot reader", e)
                }
            })?;
        let read = async {
            let options = DownloadFromContainerOptionsBuilder::default()
                .path("/workspace")
                .build();
            let mut stream = self.docker.download_from_container(&reader, Some(options));
            let mut data = bytes::BytesMut::new();
            while let Some(chunk) = stream.next().await {
                data.extend_from_slice(&chunk.map_err(|e| engine("read the snapshot", e))?);
            }
            Ok::<_, BackendError>(data.freeze())
        }
        .await;
        self.remove_container(&reader).await?;
        let data = read?;
        let agent = self.agent(handle)?;
        let tar_path = "/tmp/.airlock-restore.tar";
        agent.write_file(tar_path, data).await?;
        let unpacked = run_tool(
            &agent,
            vec![
                "tar".into(),
                "-C".into(),
                "/".into(),
                "--no-same-owner".into(),
                "-xf".into(),
                tar_path.into(),
            ],
        )
        .await;
        let _ = run_tool(&agent, vec!["rm".into(), "-f".into(), tar_path.into()]).await;
        unpacked
    }

    async fn delete_snapshot(&self, backend_ref: &str) -> Result<(), BackendError> {
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        match self
            .docker
            .remove_image(backend_ref, Some(options), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(engine("remove the snapshot image", e)),
        }
    }

    fn supports_workspaces(&self) -> bool {
        true
    }

    fn needs_tenant(&self) -> bool {
        self.config.caches.needs_tenant()
    }

    async fn delete_workspace(&self, name: &str) -> Result<bool, BackendError> {
        check_workspace_name(name)?;
        if let Some(user) = self.workspace_user(name).await? {
            return Err(BackendError::Conflict(format!(
                "workspace {name} is in use by sandbox {user}"
            )));
        }
        let volume = self.workspace_volume(name);
        match self
            .docker
            .remove_volume(
                &volume,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) if status(&e) == Some(409) => Err(BackendError::Conflict(format!(
                "workspace {name} is in use: {e}"
            ))),
            Err(e) => Err(engine("remove the workspace volume", e)),
        }
    }

    /// Re-establishes the brain side of the egress socket (a new brain process has none).
    async fn adopt(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        // Only a sandbox whose directory is still there: never re-create a destroyed one's.
        // (A handle from before the unix-socket layout has none and is not adopted.)
        let dir = self.handle_runtime_dir(handle);
        if !dir.is_dir() {
            return Err(BackendError::NotFound(handle.id.clone()));
        }
        self.ensure_egress(&handle.id, &dir)
    }
}

// === helpers ===

/// Label on snapshot images (value: the snapshot's tag).
pub const SNAPSHOT_LABEL: &str = "airlock.snapshot";

/// A snapshot id as an image tag (`[A-Za-z0-9_.-]`, at most 128 characters).
fn snapshot_tag(snapshot_id: &str) -> Result<String, BackendError> {
    let ok = !snapshot_id.is_empty()
        && snapshot_id.len() <= 128
        && snapshot_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(BackendError::Invalid(format!(
            "snapshot id {snapshot_id:?} is not a valid image tag"
        )));
    }
    Ok(snapshot_id.to_ascii_lowercase())
}

/// Runs one of the image's tools (tar, rm) through the agent; a non-zero exit is an error
/// carrying its stderr.
async fn run_tool(agent: &AgentClient, argv: Vec<String>) -> Result<(), BackendError> {
    let what = argv.first().cloned().unwrap_or_default();
    let result = agent
        .exec(ExecRequest {
            argv: Some(argv),
            timeout_ms: Some(SNAPSHOT_TOOL_TIMEOUT.as_millis() as u64),
            max_output_bytes: Some(16 * 1024),
            ..ExecRequest::default()
        })
        .await?;
    if result.exit_code == Some(0) {
        return Ok(());
    }
    Err(BackendError::Invalid(format!(
        "{what} in the sandbox failed ({}): {}",
        match (result.exit_code, result.timed_out) {
            (_, true) => "timed out".to_string(),
            (Some(code), _) => format!("exit {code}"),
            (None, _) => format!("signal {}", result.signal.unwrap_or(0)),
        },
        result.stderr.trim()
    )))
}

/// Label on workspace volumes and on the containers that mount one (value: the name).
pub const WORKSPACE_LABEL: &str = "airlock.workspace";

/// A workspace name (`[a-z0-9][a-z0-9_.-]{0,62}`), as it appears in a volume name.
pub fn check_workspace_name(name: &str) -> Result<(), BackendError> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(BackendError::Invalid(format!(
            "workspace name {name:?} must match [a-z0-9][a-z0-9_.-]{{0,62}}"
        )))
    }
}

fn validate(spec: &SandboxSpec) -> Result<(), BackendError> {
    let id_ok = !spec.id.is_empty()
        && spec.id.len() <= 100
        && spec
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && spec.id.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !id_ok {
        return Err(BackendError::Invalid(format!(
            "sandbox id `{}` cannot name a docker container (letters, digits, `-_.`)",
            spec.id
        )));
    }
    let r = &spec.resources;
    if !(r.cpus.is_finite() && r.cpus > 0.0 && r.cpus <= 1024.0) {
        return Err(BackendError::Invalid(format!(
            "cpus must be in (0, 1024], got {}",
            r.cpus
        )));
    }
    // Docker refuses memory limits below 6 MiB.
    if r.memory_mb < 6 {
        return Err(BackendError::Invalid(format!(
            "memory_mb must be at least 6, got {}",
            r.memory_mb
        )));
    }
    if r.pids == 0 {
        return Err(BackendError::Invalid("pids must be at least 1".into()));
    }
    for (path, _) in &spec.files {
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") || path.ends_with('/') {
            return Err(BackendError::Invalid(format!(
                "file path `{path}` must be absolute, without `..`, naming a file"
            )));
        }
    }
    Ok(())
}

/// Parses `a.b.c.d/n` into (network address, n) and checks `n <= block <= 30`.
fn parse_pool(pool: &str, block: u8) -> Result<(u32, u8), BackendError> {
    let invalid = |why: &str| BackendError::Invalid(format!("docker subnet_pool `{pool}`: {why}"));
    let (addr, len) = pool
        .split_once('/')
        .ok_or_else(|| invalid("expected a.b.c.d/len"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| invalid("bad IPv4 address"))?;
    let len: u8 = len.parse().map_err(|_| invalid("bad prefix length"))?;
    if len > block || block > 30 || len == 0 {
        return Err(invalid(&format!(
            "need 0 < prefix length ({len}) <= subnet_prefix_len ({block}) <= 30"
        )));
    }
    let mask = u32::MAX << (32 - len);
    Ok((u32::from(addr) & mask, len))
}

fn mib_to_bytes(mb: u64) -> Result<i64, BackendError> {
    mb.checked_mul(1024 * 1024)
        .and_then(|b| i64::try_from(b).ok())
        .ok_or_else(|| BackendError::Invalid(format!("memory_mb {mb} is too large")))
}

/// Container hostnames are limited to 63 characters.
fn hostname(id: &str) -> String {
    id.chars().take(63).collect()
}

/// Writes each file as `<dir>/f<N>` (mode 0444, readable by the sandbox user) and returns the
/// read-only bind mounts that place them at their target paths.
async fn stage_files(
    dir: &Path,
    files: &[(String, bytes::Bytes)],
) -> Result<Vec<Mount>, BackendError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, e: std::io::Error| {
        BackendError::Unavailable(format!(
            "stage sandbox files in {}: {what}: {e}",
            dir.display()
        ))
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io("create dir", e))?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .await
        .map_err(|e| io("chmod dir", e))?;
    let mut mounts = Vec::with_capacity(files.len());
    for (n, (target, data)) in files.iter().enumerate() {
        let source = PathBuf::from(staged_name(dir, n));
        tokio::fs::write(&source, data)
            .await
            .map_err(|e| io("write", e))?;
        tokio::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o444))
            .await
            .map_err(|e| io("chmod", e))?;
        mounts.push(Mount {
            target: Some(target.clone()),
            source: Some(source.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// Host path of the `n`th staged file.
fn staged_name(dir: &Path, n: usize) -> String {
    dir.join(format!("f{n}")).display().to_string()
}

/// Replaces a staged file's content in place (same inode: the container's bind mount sees it).
async fn rewrite_staged(source: &str, data: &[u8]) -> Result<(), BackendError> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncWriteExt;
    let io = |what: &str, e: std::io::Error| {
        BackendError::Unavailable(format!("fill staged file {source}: {what}: {e}"))
    };
    tokio::fs::set_permissions(source, std::fs::Permissions::from_mode(0o644))
        .await
        .map_err(|e| io("chmod", e))?;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(source)
        .await
        .map_err(|e| io("open", e))?;
    f.write_all(data).await.map_err(|e| io("write", e))?;
    f.flush().await.map_err(|e| io("flush", e))?;
    drop(f);
    tokio::fs::set_permissions(source, std::fs::Permissions::from_mode(0o444))
        .await
        .map_err(|e| io("chmod", e))
}

/// `$XDG_RUNTIME_DIR/airlock`, else `/tmp/airlock-runtime`.
pub fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("airlock"),
        None => PathBuf::from("/tmp/airlock-runtime"),
    }
}

/// Creates the runtime root (mode 0711: others may pass through to a per-sandbox directory
/// whose name they know, never list them) and refuses one the brain does not own, such as a
/// directory or symlink another user planted at a predictable `/tmp` path.
fn prepare_runtime_root(root: &Path) -> Result<(), BackendError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let bad = |why: String| {
        BackendError::Invalid(format!("docker runtime_dir {}: {why}", root.display()))
    };
    std::fs::create_dir_all(root).map_err(|e| bad(format!("create: {e}")))?;
    let meta = std::fs::symlink_metadata(root).map_err(|e| bad(e.to_string()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err(bad("not a directory (a symlink?)".into()));
    }
    if meta.uid() != euid {
        return Err(bad(format!(
            "owned by uid {}, not by the brain (uid {euid})",
            meta.uid()
        )));
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| bad(format!("chmod 0711: {e}")))
}

/// Creates a sandbox's runtime directory so that the sandbox user can create its socket in it
/// and no other host user can touch it (see the module docs for the three cases).
fn prepare_sandbox_dir(dir: &Path) -> Result<(), BackendError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, e: std::io::Error| {
        BackendError::Unavailable(format!(
            "sandbox runtime dir {}: {what}: {e}",
            dir.display()
        ))
    };
    // The longest socket path must fit sun_path (108 bytes with the NUL).
    let longest = dir.join(if EGRESS_SOCKET.len() > AGENT_SOCKET.len() {
        EGRESS_SOCKET
    } else {
        AGENT_SOCKET
    });
    if longest.as_os_str().len() > 107 {
        return Err(BackendError::Invalid(format!(
            "socket path {} is longer than 107 bytes; set a shorter docker runtime_dir",
            longest.display()
        )));
    }
    std::fs::create_dir(dir).map_err(|e| io("create", e))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mode = if euid == 0 {
        std::os::unix::fs::chown(dir, Some(SANDBOX_UID), Some(SANDBOX_UID))
            .map_err(|e| io("chown to the sandbox user", e))?;
        0o700
    } else if euid == SANDBOX_UID {
        0o700
    } else {
        tracing::warn!(
            dir = %dir.display(),
            "brain runs as neither root nor uid {SANDBOX_UID}: sandbox runtime directory is mode 1733"
        );
        0o1733
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| io("chmod", e))
}

async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "remove staged sandbox files"),
    }
}

/// `label=airlock.sandbox` (any value) or `label=airlock.sandbox=<id>`.
fn label_filter(sandbox_id: Option<&str>) -> HashMap<String, Vec<String>> {
    let value = match sandbox_id {
        Some(id) => format!("{SANDBOX_LABEL}={id}"),
        None => SANDBOX_LABEL.to_string(),
    };
    HashMap::from([("label".to_string(), vec![value])])
}

fn status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn engine(what: &str, e: DockerError) -> BackendError {
    BackendError::Unavailable(format!("docker {what}: {e}"))
}

fn image_missing(image: &str) -> BackendError {
    BackendError::Invalid(format!(
        "image `{image}` is not on the docker engine; {BUILD_HINT}"
    ))
}

// Component tests against the real engine. They skip (printing why) when `docker info` fails
// or the image is missing, unless AIRLOCK_REQUIRE_DOCKER=1. AIRLOCK_TEST_IMAGE overrides the
// image. Every sandbox they create is removed by label on drop, also when an assertion fails.
#[cfg(test)]
mod tests {
    use std::process::Command;

    use airlock_wire::{ExecRequest, ExecResult};
    use bytes::Bytes;

    use super::*;
    use crate::sandbox::Resources;

    const TEST_OWNER: &str = "docker-unit-test";

    fn require_docker() -> bool {
        std::env::var("AIRLOCK_REQUIRE_DOCKER").as_deref() == Ok("1")
    }

    fn skip(why: &str) {
        assert!(!require_docker(), "AIRLOCK_REQUIRE_DOCKER=1 but {why}");
        eprintln!("SKIP docker backend test: {why}");
    }

    async fn backend_with(mut config: DockerConfig) -> Option<DockerBackend> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let info = Command::new("docker").arg("info").output();
        if !info.map(|o| o.status.success()).unwrap_or(false) {
            skip("`docker info` failed (no engine)");
            return None;
        }
        if let Ok(image) = std::env::var("AIRLOCK_TEST_IMAGE") {
            config.image = image;
        }
        let backend = DockerBackend::connect(config)
            .await
            .expect("connect to the engine");
        if let Err(e) = backend.check_image(&backend.config.image).await {
            skip(&e.to_string());
            return None;
        }
        Some(backend)
    }

    async fn backend() -> Option<DockerBackend> {
        backend_with(DockerConfig {
            startup_timeout_seconds: 60,
            ..Default::default()
        })
        .await
    }

    fn spec(tag: &str) -> SandboxSpec {
        SandboxSpec {
            id: format!("sb-unit-{tag}-{:08x}", rand::random::<u32>()),
            owner: TEST_OWNER.into(),
            image: None,
            resources: Resources::default(),
            env: BTreeMap::from([("AIRLOCK_TEST".to_string(), "1".to_string())]),
            files: Vec::new(),
            agent_token: format!("tok-{:016x}", rand::random::<u64>()),
            ttl_s: 600,
            workspace: None,
            cache_tenant: None,
        }
    }

    fn cli(args: &[&str]) -> String {
        let out = Command::new("docker")
            .args(args)
            .output()
            .expect("run docker cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Containers and networks still carrying the sandbox's label.
    fn leftovers(id: &str) -> (String, String) {
        let filter = format!("label={SANDBOX_LABEL}={id}");
        (
            cli(&["ps", "-aq", "--filter", &filter]),
            cli(&["network", "ls", "-q", "--filter", &filter]),
        )
    }

    /// Removes everything labelled with the sandbox id when dropped (test passed or not).
    struct Cleanup(String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let (containers, networks) = leftovers(&self.0);
            for c in containers.split_whitespace() {
                cli(&["rm", "-f", "-v", c]);
            }
            for n in networks.split_whitespace() {
                cli(&["network", "rm", n]);
            }
            let dir = std::env::temp_dir()
                .join("airlock-docker-files")
                .join(&self.0);
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_dir_all(default_runtime_dir().join(&self.0));
        }
    }

    async fn sh(b: &DockerBackend, h: &SandboxHandle, command: &str) -> ExecResult {
        let req = ExecRequest {
            command: Some(command.into()),
            timeout_ms: Some(60_000),
            ..Default::default()
        };
        b.exec(h, req).await.expect("exec")
    }

    fn assert_gone(id: &str) {
        let (containers, networks) = leftovers(id);
        assert!(
            containers.is_empty(),
            "containers left for {id}: {containers}"
        );
        assert!(networks.is_empty(), "networks left for {id}: {networks}");
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let c: DockerConfig =
            serde_json::from_str(r#"{"image":"x:1","proxy":{"container":"vault-proxy"}}"#).unwrap();
        assert_eq!(c.image, "x:1");
        assert_eq!(c.agent_port, 7700);
        assert_eq!(c.proxy.unwrap().container, "vault-proxy");
        assert_eq!(DockerConfig::default().image, "airlock-sandbox:latest");
        assert!(serde_json::from_str::<DockerConfig>(r#"{"imgae":"x"}"#).is_err());
    }

    #[test]
    fn invalid_specs_are_refused_before_touching_the_engine() {
        let check = |edit: &dyn Fn(&mut SandboxSpec)| {
            let mut s = spec("v");
            edit(&mut s);
            matches!(validate(&s), Err(BackendError::Invalid(_)))
        };
        assert!(!check(&|_| {}));
        assert!(check(&|s| s.id = "../x".into()));
        assert!(check(&|s| s.id = String::new()));
        assert!(check(&|s| s.resources.cpus = 0.0));
        assert!(check(&|s| s.resources.memory_mb = 1));
        assert!(check(&|s| s.resources.pids = 0));
        assert!(check(&|s| s.files = vec![("rel/path".into(), Bytes::new())]));
        assert!(check(
            &|s| s.files = vec![("/a/../etc/passwd".into(), Bytes::new())]
        ));
    }

    #[tokio::test]
    async fn provision_exec_destroy_leaves_no_container_or_network() {
        let Some(b) = backend().await else { return };
        let mut timings = Vec::new();
        for round in 0..3 {
            let s = spec(&format!("basic{round}"));
            let _cleanup = Cleanup(s.id.clone());
            let started = Instant::now();
            let h = b.provision(&s).await.expect("provision");
            timings.push(started.elapsed());

            assert_eq!(h.backend, BackendKind::Docker);
            let url = h.agent_url.as_deref().unwrap();
            let dir = b.runtime_dir(&s.id);
            assert_eq!(
                url,
                format!("unix:{}", dir.join(AGENT_SOCKET).display()),
                "the agent is reached over its unix socket"
            );
            for key in [
                EXTRA_CONTAINER_ID,
                EXTRA_NETWORK_ID,
                EXTRA_NETWORK_NAME,
                EXTRA_SANDBOX_IP,
                EXTRA_RUNTIME_DIR,
            ] {
                assert!(
                    h.extra.contains_key(key),
                    "handle.extra lacks {key}: {:?}",
                    h.extra
                );
            }
            let r = sh(&b, &h, "echo hello; echo oops >&2; exit 3").await;
            assert_eq!(
                (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
                ("hello\n", "oops\n", Some(3))
            );
            let r = sh(&b, &h, "pwd; echo $AIRLOCK_TEST").await;
            assert_eq!(r.stdout, "/workspace\n1\n");
            assert!(b.is_alive(&h).await);
            assert!(
                b.list_labelled()
                    .await
                    .unwrap()
                    .iter()
                    .any(|f| f.id == s.id)
            );

            b.destroy(&h).await.expect("destroy");
            assert_gone(&s.id);
            assert!(!dir.exists(), "runtime dir outlives the sandbox");
            assert!(!b.is_alive(&h).await);
            b.destroy(&h).await.expect("destroying again is Ok");
        }
        eprintln!("docker provision (create network+container, start, agent /health): {timings:?}");
    }

    #[tokio::test]
    async fn files_round_trip_through_the_agent() {
        let Some(b) = backend().await else { return };
        let s = spec("files");
        let _cleanup = Cleanup(s.id.clone());
        let h = b.provision(&s).await.expect("provision");

        // Relative paths land in the workdir; parents are created; bytes come back intact.
        let payload = Bytes::from((0u8..=255).cycle().take(300_000).collect::<Vec<u8>>());
        b.write_file(&h, "src/deep/data.bin", payload.clone())
            .await
            .expect("write");
        assert_eq!(b.read_file(&h, "src/deep/data.bin").await.unwrap(), payload);
        let r = sh(
            &b,
            &h,
            "sha256sum /workspace/src/deep/data.bin | cut -c1-16",
        )
        .await;
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        assert_eq!(r.stdout.len(), 17, "the file is visible to commands: {r:?}");

        b.write_file(&h, "src/a.txt", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        let mut names: Vec<_> = b
            .list_files(&h, "src")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.is_dir, e.size))
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                ("a.txt".to_string(), false, 5),
                ("deep".to_string(), true, names[1].2)
            ]
        );

        // Missing files and the read-only root are clean agent errors, not transport failures.
        match b.read_file(&h, "nope.txt").await {
            Err(BackendError::Agent { status: 404, .. }) => {}
            other => panic!("missing file: {other:?}"),
        }
        match b
            .write_file(&h, "/etc/evil", Bytes::from_static(b"x"))
            .await
        {
            Err(BackendError::Agent { status, .. }) if (400..500).contains(&status) => {}
            other => panic!("write to the read-only root: {other:?}"),
        }
        b.destroy(&h).await.expect("destroy");
    }

    #[tokio::test]
    async fn limits_and_hardening_are_in_the_host_config() {
        let Some(b) = backend().await else { return };
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
        assert_eq!(
            hc.network_mode.as_deref(),
            Some(h.extra[EXTRA_NETWORK_NAME].as_str())
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
        // The only network is the sandbox's own, and it is internal.
        let networks = inspect.network_settings.unwrap().networks.unwrap();
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
        let r = sh(&b, &h, "echo data > /workspace/f && cat /workspace/f && touch /tmp/t && touch $HOME/.x && echo ok").await;
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
        let Some(b) = backend().await else { return };
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

        // Another sandbox's listener: reachable from itself, not from the first sandbox.
        let other = format!("{}:8000", h2.extra[EXTRA_SANDBOX_IP]);
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
            ..Default::default()
        };
        let b = DockerBackend::connect(config.clone()).await.unwrap();
        let s = spec("egress");
        let _cleanup = Cleanup(s.id.clone());
        let h = b.provision(&s).await.expect("provision with egress");
        assert!(b.runtime_dir(&s.id).join(EGRESS_SOCKET).exists());

        let via_proxy =
            format!("curl -sS -m 10 -x http://{SANDBOX_PROXY_ADDR} http://anything.test/");
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
            .map(|ip| format!("curl -sS -m 3 --noproxy '*' http://{ip}:{port}/ >/dev/null 2>&1; echo \"{ip} $?\""))
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
}
