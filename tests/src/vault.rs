//! The vault side of the e2e setup shared by `tests/vault_e2e.rs` and the demo: a vault
//! config that binds `GITHUB_TOKEN` to the local [`Upstream`](crate::upstream::Upstream),
//! brain options that use it with the embedded proxy, and docker helpers (image check,
//! removal of a sandbox's containers and networks by label).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BrainOptions;
use crate::upstream::{BOUND_HOST, UNBOUND_HOST, Upstream};

/// The image the docker backend runs.
pub const SANDBOX_IMAGE: &str = "airlock-sandbox:latest";
/// The env var the vault config reads the real `GITHUB_TOKEN` from (set on the brain).
pub const REAL_TOKEN_ENV: &str = "REAL_GITHUB_TOKEN";

/// A vault config in `dir` (`vault.yaml`, the upstream CA next to it, the proxy CA and the
/// audit log `audit.jsonl` created there by the proxy):
///
/// - `GITHUB_TOKEN` (value from [`REAL_TOKEN_ENV`]) bound to `api.github.test` on the
///   upstream's port only, at the default position (`header:Authorization`, which covers
///   Bearer and git's Basic with any user name);
/// - egress default deny, with `api.github.test` allowed without credentials too (git's first,
///   credential-less request only gets credentials sent after a 401); `evil.test` stays deny;
/// - both names resolve to `127.0.0.1` (`network.resolve`, `allow_private`) and the upstream's
///   CA is trusted (`upstream_roots`).
///
/// Returns the config's path.
pub fn write_vault_config(dir: &Path, upstream: &Upstream) -> PathBuf {
    std::fs::write(dir.join("upstream-ca.pem"), &upstream.ca_pem).expect("writing upstream CA");
    let path = dir.join("vault.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         ca: {{ cert: ca.pem, key: ca-key.pem }}\n\
         upstream_roots: [upstream-ca.pem]\n\
         audit_log: audit.jsonl\n\
         egress: {{ default: deny, allow_hosts: [{BOUND_HOST}] }}\n\
         network:\n  allow_private: true\n  resolve: {{ \"{BOUND_HOST}\": \"127.0.0.1\", \"{UNBOUND_HOST}\": \"127.0.0.1\" }}\n\
         credentials:\n  GITHUB_TOKEN:\n    value_env: {REAL_TOKEN_ENV}\n    allowed_hosts: [\"{BOUND_HOST}:{port}\"]\n",
        port = upstream.port,
    );
    std::fs::write(&path, yaml).expect("writing vault config");
    path
}

/// The audit log of a config written by [`write_vault_config`] into `dir`.
pub fn audit_log_path(dir: &Path) -> PathBuf {
    dir.join("audit.jsonl")
}

/// Options for a brain on `backend` whose embedded vault proxy uses `vault_config`, with the
/// real token in its environment.
pub fn brain_options(backend: &str, vault_config: &Path, real_token: &str) -> BrainOptions {
    BrainOptions {
        backend: backend.into(),
        extra_yaml: format!("vault:\n  config: {}\n", vault_config.display()),
        env: vec![(REAL_TOKEN_ENV.into(), real_token.into())],
        ..Default::default()
    }
}

/// The embedded proxy's listener, from the brain's log line `embedded vault proxy listening`.
pub fn proxy_addr_from_log(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("embedded vault proxy listening"))?;
    // `proxy=127.0.0.1:NNNN` (possibly with ANSI colour codes around `=`).
    let at = line.find("127.0.0.1:")?;
    Some(
        line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect(),
    )
}

/// Runs the docker CLI; its trimmed stdout (empty on failure).
pub fn docker_cli(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The sandbox image docker e2e tests run: `AIRLOCK_SANDBOX_IMAGE`, else [`SANDBOX_IMAGE`].
pub fn sandbox_image() -> String {
    std::env::var("AIRLOCK_SANDBOX_IMAGE").unwrap_or_else(|_| SANDBOX_IMAGE.into())
}

/// Whether [`sandbox_image`] exists on the engine.
pub fn sandbox_image_present() -> bool {
    image_present(&sandbox_image())
}

fn image_present(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the docker e2e tests of `what` can run (an engine answers and [`sandbox_image`]
/// exists). Otherwise prints `SKIP <what>: <why>` and returns false, or fails when
/// `AIRLOCK_REQUIRE_DOCKER=1`.
pub fn docker_ready(what: &str) -> bool {
    docker_ready_with(what, &sandbox_image(), "bash images/build-offline.sh")
}

/// [`docker_ready`] for another `image`, built by `build` (said when it is missing).
pub fn docker_ready_with(what: &str, image: &str, build: &str) -> bool {
    let why = if !crate::docker_available() {
        "no docker engine answers".to_string()
    } else if !image_present(image) {
        format!("image {image} is missing (run `{build}`)")
    } else {
        return true;
    };
    skip(what, &why)
}

/// Skips a test of `what` for `why` (prints it, returns false), or fails when
/// `AIRLOCK_REQUIRE_DOCKER=1`.
pub fn skip(what: &str, why: &str) -> bool {
    assert!(
        std::env::var("AIRLOCK_REQUIRE_DOCKER").as_deref() != Ok("1"),
        "AIRLOCK_REQUIRE_DOCKER=1 but {why}"
    );
    eprintln!("SKIP {what}: {why}");
    false
}

/// A per-test name prefix for what a brain makes on the docker engine
/// (`sandbox.docker.container_prefix`, with `<prefix>net-` as `network_prefix`); everything
/// carrying it (containers, networks, snapshot images, volumes) is removed on drop.
pub struct DockerPrefix {
    pub prefix: String,
}

impl DockerPrefix {
    /// `<tag><8 hex>-`, unique per test run.
    pub fn new(tag: &str) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let n = t.subsec_nanos() ^ std::process::id().rotate_left(16);
        Self {
            prefix: format!("{tag}{n:08x}-"),
        }
    }

    /// The brain YAML for the docker backend with [`sandbox_image`] and these prefixes.
    pub fn docker_yaml(&self) -> String {
        format!(
            "sandbox:\n  docker:\n    image: \"{image}\"\n    container_prefix: \"{p}\"\n    network_prefix: \"{p}net-\"\n",
            image = sandbox_image(),
            p = self.prefix
        )
    }

    /// Containers (any state) with our prefix.
    pub fn containers(&self) -> Vec<String> {
        lines(docker_cli(&[
            "ps",
            "-aq",
            "--filter",
            &format!("name=^{}", self.prefix),
        ]))
    }

    pub fn networks(&self) -> Vec<String> {
        lines(docker_cli(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{}net-", self.prefix),
        ]))
    }

    /// Snapshot images (`<prefix>snapshot:<id>`).
    pub fn images(&self) -> Vec<String> {
        lines(docker_cli(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            &format!("{}snapshot", self.prefix),
        ]))
    }

    pub fn volumes(&self) -> Vec<String> {
        lines(docker_cli(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{}", self.prefix),
        ]))
    }
}

impl Drop for DockerPrefix {
    fn drop(&mut self) {
        for c in self.containers() {
            docker_cli(&["rm", "-f", "-v", &c]);
        }
        for n in self.networks() {
            docker_cli(&["network", "rm", &n]);
        }
        for i in self.images() {
            docker_cli(&["rmi", "-f", &i]);
        }
        for v in self.volumes() {
            docker_cli(&["volume", "rm", "-f", &v]);
        }
    }
}

fn lines(out: String) -> Vec<String> {
    out.split_whitespace().map(str::to_string).collect()
}

/// Containers (any state) labelled `airlock.owner=<owner>`.
pub fn owner_containers(owner: &str) -> Vec<String> {
    lines(docker_cli(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=airlock.owner={owner}"),
    ]))
}

/// IDs of the containers labelled `airlock.sandbox=<id>`, running or not.
pub fn labelled_containers(sandbox_id: &str) -> Vec<String> {
    let label = format!("label=airlock.sandbox={sandbox_id}");
    lines(docker_cli(&["ps", "-aq", "--filter", &label]))
}

/// IDs of the networks labelled `airlock.sandbox=<id>`.
pub fn labelled_networks(sandbox_id: &str) -> Vec<String> {
    let label = format!("label=airlock.sandbox={sandbox_id}");
    let mut nets = lines(docker_cli(&[
        "network",
        "ls",
        "-q",
        "--no-trunc",
        "--filter",
        &label,
    ]));
    // A spare network (made before the provision) carries no sandbox label: the one its
    // container named at provision time counts while it still exists.
    let recorded = SANDBOX_NETWORKS.lock().unwrap().get(sandbox_id).cloned();
    if let Some(net) = recorded
        && !nets.contains(&net)
        && docker_cli(&["network", "inspect", "-f", "{{.Id}}", &net]) == net
    {
        nets.push(net);
    }
    nets
}

/// Sandbox id -> network id, read from the container's `airlock.network` label by
/// [`remember_sandbox_network`].
static SANDBOX_NETWORKS: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Records the network sandbox `sandbox_id`'s container is on (its `airlock.network` label), so
/// [`labelled_networks`] and [`DockerCleanup`] still see it when it was a spare network.
pub fn remember_sandbox_network(sandbox_id: &str) {
    let containers = labelled_containers(sandbox_id);
    let container = containers.first().expect("the sandbox has a container");
    // A sandbox without a network (`network: none`, the default) has none to remember.
    let mode = docker_cli(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", container]);
    if mode == "none" {
        return;
    }
    let label = "{{index .Config.Labels \"airlock.network\"}}";
    let net = docker_cli(&["inspect", "-f", label, container]);
    assert!(!net.is_empty(), "the container names its network");
    SANDBOX_NETWORKS
        .lock()
        .unwrap()
        .insert(sandbox_id.to_string(), net);
}

/// Removes a docker sandbox's containers and networks (by label) when dropped, so a failing
/// test or demo leaves nothing behind.
pub struct DockerCleanup(pub String);

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for c in labelled_containers(&self.0) {
            docker_cli(&["rm", "-f", "-v", &c]);
        }
        for n in labelled_networks(&self.0) {
            docker_cli(&["network", "rm", &n]);
        }
    }
}

/// The public address cloud sandboxes (the E2B and Daytona fakes) dial for the vault proxy: a
/// documentation range, which the fakes route to a local address (`route_public`).
pub const CLOUD_PROXY_IP: &str = "203.0.113.7";

/// Issue 10: gives the vault config at `path` the TLS proxy listener that cloud sandboxes
/// are granted. A throwaway CA signs a certificate for [`CLOUD_PROXY_IP`] and `127.0.0.1`
/// (where the fakes route that address); `tls.cert` holds it and the CA (the chain up to its
/// root, whose certificates the brain adds to cloud sandboxes' bundle), and `tls:` and
/// `listen_tls: 127.0.0.1:0` are appended to the config. Returns the CA's PEM.
pub fn add_tls_listener(path: &Path) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let dir = path.parent().expect("config dir");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "airlock e2e proxy listener CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("listener key");
    let mut params =
        CertificateParams::new(vec![CLOUD_PROXY_IP.to_string(), "127.0.0.1".to_string()])
            .expect("listener params");
    params
        .distinguished_name
        .push(DnType::CommonName, "airlock vault proxy");
    let cert = params.signed_by(&key, &issuer).expect("listener cert");
    std::fs::write(
        dir.join("proxy-tls.pem"),
        format!("{}{}", cert.pem(), ca_cert.pem()),
    )
    .expect("writing proxy-tls.pem");
    std::fs::write(dir.join("proxy-tls-key.pem"), key.serialize_pem())
        .expect("writing proxy-tls-key.pem");
    let mut yaml = std::fs::read_to_string(path).expect("reading vault config");
    yaml.push_str(
        "tls: { cert: proxy-tls.pem, key: proxy-tls-key.pem }\nlisten_tls: 127.0.0.1:0\n",
    );
    std::fs::write(path, yaml).expect("writing vault config");
    ca_cert.pem()
}

/// For a brain that provisions cloud sandboxes with the default (credential-less) embedded
/// vault: a vault config with the TLS listener ([`add_tls_listener`]) in a directory that
/// outlives the brain. Returns the `vault:` YAML to put in `BrainOptions::extra_yaml`.
pub fn tls_vault_yaml() -> String {
    let dir = tempfile::Builder::new()
        .prefix("airlock-vault-tls-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let path = dir.join("vault.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:0\nca: { cert: ca.pem, key: ca-key.pem }\naudit_log: audit.jsonl\n",
    )
    .expect("writing vault config");
    add_tls_listener(&path);
    format!("vault:\n  config: {}\n", path.display())
}

/// The embedded vault's TLS proxy listener (`listen_tls`), as the brain logs it at start.
pub fn tls_listener_addr(brain_log: &str) -> Option<std::net::SocketAddr> {
    let at = brain_log.find("tls_proxy")?;
    let rest = &brain_log[at..];
    let start = rest.find("https://")? + "https://".len();
    let addr: String = rest[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse().ok()
}

/// A TCP relay standing for the internet between a cloud sandbox and the proxy: forwards
/// both ways and keeps every byte the sandbox sent, so a test sees what crossed the wire.
pub struct CaptureRelay {
    pub addr: std::net::SocketAddr,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl CaptureRelay {
    /// Listens on `127.0.0.1:0` and relays each connection to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the relay");
        let addr = listener.local_addr().expect("relay address");
        let sent: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
        let log = sent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let idx = {
                        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                        l.push(Vec::new());
                        l.len() - 1
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            log.lock().unwrap_or_else(|e| e.into_inner())[idx]
                                .extend_from_slice(&buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self { addr, sent }
    }

    /// The bytes each connection's client sent, in accept order.
    pub fn client_bytes(&self) -> Vec<Vec<u8>> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
