//! Settings of the docker backend (`sandbox.docker` in the brain config).

use super::*;

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
    /// Dependency caches (cargo, npm, pip) as named volumes; see `caches.rs`.
    pub caches: super::caches::CachesConfig,
    /// Empty sandbox networks kept made ahead of time (`spare.rs`), so a provision skips the
    /// network create. Each is used by one sandbox and removed with it; they count against
    /// the engine's (or `subnet_pool`'s) network capacity. 0: every provision creates its own.
    /// Only with [`SandboxNetwork::Internal`].
    pub spare_networks: usize,
    /// How a sandbox is networked. Unset: [`SandboxNetwork::Internal`] when `proxy` is set
    /// (the proxy container must join the sandbox's network), else [`SandboxNetwork::None`].
    pub network: Option<SandboxNetwork>,
}

/// A sandbox's network (`sandbox.docker.network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxNetwork {
    /// No network at all (`--network none`): loopback only. The agent's API and the egress
    /// forward already go over the unix sockets in the runtime directory, so nothing is lost,
    /// and there is no bridge, no address, no embedded DNS server and no network to sweep.
    /// Also saves the engine's per-container set-up of a user-defined network at `start`
    /// (its embedded DNS resolver: a re-exec of dockerd plus iptables calls in the container's
    /// namespace), the largest step of a cold provision on Docker 20.10.
    None,
    /// The sandbox's own `--internal` bridge network without a host address (spare networks,
    /// `subnet_pool`); the vault proxy container (`proxy`), when set, is its only other member.
    Internal,
}

impl DockerConfig {
    /// The network mode in effect (see [`DockerConfig::network`]).
    pub fn sandbox_network(&self) -> SandboxNetwork {
        self.network.unwrap_or(if self.proxy.is_some() {
            SandboxNetwork::Internal
        } else {
            SandboxNetwork::None
        })
    }
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
            spare_networks: 2,
            network: None,
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
