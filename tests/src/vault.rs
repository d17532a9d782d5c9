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

/// Whether [`SANDBOX_IMAGE`] exists on the engine.
pub fn sandbox_image_present() -> bool {
    Command::new("docker")
        .args(["image", "inspect", SANDBOX_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// IDs of the containers labelled `airlock.sandbox=<id>`, running or not.
pub fn labelled_containers(sandbox_id: &str) -> Vec<String> {
    let label = format!("label=airlock.sandbox={sandbox_id}");
    docker_cli(&["ps", "-aq", "--filter", &label])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// IDs of the networks labelled `airlock.sandbox=<id>`.
pub fn labelled_networks(sandbox_id: &str) -> Vec<String> {
    let label = format!("label=airlock.sandbox={sandbox_id}");
    docker_cli(&["network", "ls", "-q", "--filter", &label])
        .split_whitespace()
        .map(str::to_string)
        .collect()
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
