//! Docker backend (`bollard`): one container per sandbox, with no network (the default) or
//! its own `--internal` bridge network.
//!
//! What a sandbox gets (DESIGN.md, "Sandbox backends"):
//! - by default ([`SandboxNetwork::None`]) no network at all: loopback only, so it can reach
//!   nothing by IP and its only ways out are the two unix sockets below;
//! - with [`SandboxNetwork::Internal`] (the default when [`DockerProxyConfig`] is set) its own
//!   internal network, `<network_prefix><id>` or a spare `<network_prefix>spare-<hex>`
//!   made empty ahead of time and used by this sandbox alone (`spare.rs`), whose bridge has
//!   **no host address**
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
//! - the labels `airlock.sandbox=<id>` and `airlock.owner=<owner>` on the container and its
//!   network (if any), so a restarted brain finds (and reaps) what an earlier run left.
//!
//! Why unix sockets: on a plain internal network the host owns the bridge's gateway address,
//! and Docker's isolation rules only drop *forwarded* packets, so a sandbox could open
//! connections to any host service on `0.0.0.0` or the gateway address (measured on Docker
//! 20.10). Without a host address on the bridge there is no such path, and also no way for the
//! host to reach the container by IP, hence the sockets. Nothing is published on a host port.
//!
//! Why no network by default: with both sockets, the internal network carries nothing, yet it
//! costs. Starting a container on any user-defined network makes the engine set up its
//! embedded DNS server in the container's namespace (a re-exec of dockerd running iptables
//! there): 60–110 ms of a cold start on Docker 20.10 on a loaded 2-core host, against a
//! `none` or default-bridge container (`bench/engine_options.py`). That server is also a way
//! out of its own on engines before 23.0.11/25.0.5/26.0 (CVE-2024-29018: names asked on an
//! internal network are forwarded through a host loopback resolver). `--network none` has
//! neither: only loopback, where the agent's egress forward listens.
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

mod backend;
pub mod caches;
mod config;
mod network;
mod runtime;
mod snapshots;
mod spare;
mod spec;
mod sweep;

pub use config::{DockerConfig, DockerProxyConfig, SandboxNetwork};
use network::*;
pub use runtime::default_runtime_dir;
use runtime::*;
use snapshots::*;
pub use snapshots::{SNAPSHOT_LABEL, WORKSPACE_LABEL, check_workspace_name};
use spare::*;
pub use spare::{NETWORK_LABEL, SPARE_LABEL, SPARE_PID_LABEL};
use spec::*;
use sweep::*;

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
    /// Networks made ahead of provisions (`spare_networks`). Shared by clones.
    spares: Arc<SpareNetworks>,
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
        if config.proxy.is_some() && config.sandbox_network() == SandboxNetwork::None {
            return Err(BackendError::Invalid(
                "docker proxy (a vault-proxy container joined to each sandbox network) needs \
                 network: internal"
                    .into(),
            ));
        }
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
            init,
            files_root,
            runtime_root,
            egress,
            agent_socket: AGENT_SOCKET,
            subnet_pool,
            // Spares are networks: none are made for sandboxes that have none.
            spares: Arc::new(SpareNetworks::new(match config.sandbox_network() {
                SandboxNetwork::Internal => config.spare_networks,
                SandboxNetwork::None => 0,
            })),
            config: Arc::new(config),
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
mod tests;
