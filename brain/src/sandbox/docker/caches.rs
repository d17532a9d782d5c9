//! Dependency caches for docker sandboxes (`sandbox.docker.caches`): named volumes mounted at
//! the tools' cache directories, so a sandbox does not download again what an earlier one
//! fetched. Opt-in per tool:
//!
//! ```yaml
//! sandbox:
//!   docker:
//!     caches:
//!       cargo: tenant   # read-write, one volume per tenant: <container_prefix>cache-cargo-<tenant hash>
//!       npm: shared     # read-only, one volume for every sandbox: <container_prefix>cache-npm
//!       pip: off        # the default: no cache
//! ```
//!
//! - `shared`: mounted read-only in every sandbox (pooled ones too). The operator fills it
//!   (e.g. `docker run --rm -v airlock-cache-pip:/c … pip download -d /c …`); a sandbox can
//!   read it but never write it, so one tenant cannot poison another's dependencies.
//! - `tenant`: read-write, one volume per tenant (the sandbox's session owner, see
//!   `lifecycle::cache_tenant`); a tenant's sandboxes share what they fetched, other tenants
//!   never see it. A sandbox without a tenant (a warm-pool sandbox) gets none, so pools do
//!   not serve requests while a `tenant` cache is configured (`SandboxBackend::needs_tenant`).
//!
//! Mount points and env (the env is added to the sandbox's own, the grant's keys win):
//! cargo: `CARGO_HOME=/var/cache/airlock/cargo` (its `registry/` and `git/` are the cache; a
//! `shared` one is read-only, so cargo must run `--offline`/`--frozen` there); npm:
//! `/var/cache/airlock/npm`, `npm_config_cache`; pip: `/var/cache/airlock/pip`,
//! `PIP_CACHE_DIR`.
//!
//! A new volume is owned by root; before first use a one-shot container of the sandbox image
//! (no network, only `CAP_CHOWN`) hands it to the sandbox user (uid 1000).

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::sandbox::BackendError;

/// Label on cache volumes (value: the tool).
pub const CACHE_LABEL: &str = "airlock.cache";

/// How one tool's cache is offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    #[default]
    Off,
    /// One read-only volume for every sandbox, filled by the operator.
    Shared,
    /// One read-write volume per tenant.
    Tenant,
}

/// `sandbox.docker.caches`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CachesConfig {
    pub cargo: CacheMode,
    pub npm: CacheMode,
    pub pip: CacheMode,
}

impl CachesConfig {
    /// Whether some cache is per tenant (a sandbox without a tenant would miss it).
    pub fn needs_tenant(&self) -> bool {
        self.tools().iter().any(|(_, m)| *m == CacheMode::Tenant)
    }

    fn tools(&self) -> [(&'static str, CacheMode); 3] {
        [("cargo", self.cargo), ("npm", self.npm), ("pip", self.pip)]
    }
}

/// What a sandbox gets from its caches.
#[derive(Debug, Default)]
pub struct CacheSetup {
    pub mounts: Vec<Mount>,
    /// `KEY=value` entries for the container env.
    pub env: Vec<String>,
}

/// Where a tool's cache is mounted and the env that points the tool there. Cargo's whole
/// home is the volume (its `registry/` and `git/` are the cache): a volume nested in the home
/// tmpfs would get a root-owned `.cargo` created around it, where cargo could not write its
/// lock files.
fn placement(tool: &str) -> (String, Vec<(String, String)>) {
    match tool {
        "cargo" => (
            "/var/cache/airlock/cargo".into(),
            vec![("CARGO_HOME".into(), "/var/cache/airlock/cargo".into())],
        ),
        "npm" => (
            "/var/cache/airlock/npm".into(),
            vec![("npm_config_cache".into(), "/var/cache/airlock/npm".into())],
        ),
        _ => (
            "/var/cache/airlock/pip".into(),
            vec![("PIP_CACHE_DIR".into(), "/var/cache/airlock/pip".into())],
        ),
    }
}

/// The volume of `tool`'s cache: shared, or the tenant's (named by a hash of the tenant, so
/// any tenant id fits a volume name and none is spelled out on the host).
pub fn volume_name(prefix: &str, tool: &str, tenant: Option<&str>) -> String {
    match tenant {
        None => format!("{prefix}cache-{tool}"),
        Some(t) => {
            let digest = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
            let hex: String = digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{prefix}cache-{tool}-{hex}")
        }
    }
}

/// The mounts and env for a sandbox of `tenant` (`None`: shared caches only). Creates missing
/// volumes (owned by the sandbox user).
pub async fn cache_setup(
    docker: &Docker,
    config: &CachesConfig,
    prefix: &str,
    image: &str,
    tenant: Option<&str>,
) -> Result<CacheSetup, BackendError> {
    let mut setup = CacheSetup::default();
    for (tool, mode) in config.tools() {
        let (volume, read_only) = match (mode, tenant) {
            (CacheMode::Off, _) | (CacheMode::Tenant, None) => continue,
            (CacheMode::Shared, _) => (volume_name(prefix, tool, None), true),
            (CacheMode::Tenant, Some(t)) => (volume_name(prefix, tool, Some(t)), false),
        };
        ensure_volume(docker, &volume, tool, image).await?;
        let (target, env) = placement(tool);
        setup.mounts.push(Mount {
            target: Some(target),
            source: Some(volume),
            typ: Some(MountType::VOLUME),
            read_only: Some(read_only),
            ..Default::default()
        });
        setup
            .env
            .extend(env.into_iter().map(|(k, v)| format!("{k}={v}")));
    }
    Ok(setup)
}

/// Creates `volume` unless it exists, then gives its root to uid 1000.
async fn ensure_volume(
    docker: &Docker,
    volume: &str,
    tool: &str,
    image: &str,
) -> Result<(), BackendError> {
    match docker.inspect_volume(volume).await {
        Ok(_) => return Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => return Err(engine("inspect a cache volume", e)),
    }
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(volume.to_string()),
            labels: Some(HashMap::from([(CACHE_LABEL.to_string(), tool.to_string())])),
            ..Default::default()
        })
        .await
        .map_err(|e| engine("create a cache volume", e))?;
    chown_volume(docker, volume, image).await
}

/// Runs `chown 1000:1000 /c` in a one-shot container of `image` with the volume at `/c`.
async fn chown_volume(docker: &Docker, volume: &str, image: &str) -> Result<(), BackendError> {
    let name = format!("{volume}-chown-{}", uuid::Uuid::new_v4().simple());
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        user: Some("0:0".into()),
        entrypoint: Some(vec!["chown".into()]),
        cmd: Some(vec!["1000:1000".into(), "/c".into()]),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(vec!["CHOWN".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            mounts: Some(vec![Mount {
                target: Some("/c".into()),
                source: Some(volume.to_string()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| engine("create the cache chown container", e))?;
    let run = async {
        docker
            .start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| engine("start the cache chown container", e))?;
        let mut wait =
            docker.wait_container(&name, Some(WaitContainerOptionsBuilder::default().build()));
        match wait.next().await {
            Some(Ok(r)) if r.status_code == 0 => Ok(()),
            Some(Ok(r)) => Err(BackendError::Unavailable(format!(
                "chown of cache volume {volume} exited {}",
                r.status_code
            ))),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Err(
                BackendError::Unavailable(format!("chown of cache volume {volume} exited {code}")),
            ),
            Some(Err(e)) => Err(engine("wait for the cache chown container", e)),
            None => Err(BackendError::Unavailable(
                "the cache chown container vanished".into(),
            )),
        }
    }
    .await;
    let _ = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    run
}

fn engine(what: &str, e: bollard::errors::Error) -> BackendError {
    BackendError::Unavailable(format!("docker: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_modes_and_refuses_unknown_tools() {
        let c: CachesConfig = serde_saphyr::from_str("cargo: tenant\nnpm: shared\n").unwrap();
        assert_eq!(c.cargo, CacheMode::Tenant);
        assert_eq!(c.npm, CacheMode::Shared);
        assert_eq!(c.pip, CacheMode::Off);
        assert!(c.needs_tenant());
        assert!(!CachesConfig::default().needs_tenant());
        assert!(serde_saphyr::from_str::<CachesConfig>("gem: shared\n").is_err());
        assert!(serde_saphyr::from_str::<CachesConfig>("pip: rw\n").is_err());
    }

    #[test]
    fn tenant_volumes_are_distinct_and_hide_the_tenant() {
        let a = volume_name("airlock-", "pip", Some("vk:abc"));
        let b = volume_name("airlock-", "pip", Some("vk:abd"));
        assert_ne!(a, b);
        assert!(a.starts_with("airlock-cache-pip-") && !a.contains("abc"));
        assert_eq!(volume_name("airlock-", "pip", None), "airlock-cache-pip");
        let (target, env) = placement("cargo");
        assert_eq!(target, "/var/cache/airlock/cargo");
        assert_eq!(
            env,
            vec![("CARGO_HOME".into(), "/var/cache/airlock/cargo".into())]
        );
    }

    /// Real containers: a file a sandbox writes in its tenant's read-write cache is there for
    /// the tenant's next sandbox and absent for another tenant's; the shared cache mounts
    /// read-only. Skips without a docker engine or the sandbox image (fails with
    /// `AIRLOCK_REQUIRE_DOCKER=1`).
    #[tokio::test]
    async fn tenant_caches_persist_per_tenant_and_shared_caches_are_read_only() {
        use crate::sandbox::docker::{DockerBackend, DockerConfig};
        use crate::sandbox::{Resources, SandboxBackend, SandboxHandle, SandboxSpec};
        let require = std::env::var("AIRLOCK_REQUIRE_DOCKER").as_deref() == Ok("1");
        let ok = std::process::Command::new("docker")
            .args(["image", "inspect", "airlock-sandbox:latest"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            assert!(
                !require,
                "AIRLOCK_REQUIRE_DOCKER=1 but no engine or no airlock-sandbox:latest"
            );
            eprintln!("SKIP docker cache test: no engine or no airlock-sandbox:latest");
            return;
        }
        let prefix = format!("airlock-ct{:08x}-", rand::random::<u32>());
        struct Volumes(String);
        impl Drop for Volumes {
            fn drop(&mut self) {
                let out = std::process::Command::new("docker")
                    .args([
                        "volume",
                        "ls",
                        "-q",
                        "--filter",
                        &format!("name={}", self.0),
                    ])
                    .output()
                    .unwrap();
                for v in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = std::process::Command::new("docker")
                        .args(["volume", "rm", "-f", v])
                        .output();
                }
            }
        }
        let _volumes = Volumes(prefix.clone());
        let backend = DockerBackend::connect(DockerConfig {
            container_prefix: prefix.clone(),
            network_prefix: format!("{prefix}net-"),
            startup_timeout_seconds: 60,
            caches: CachesConfig {
                cargo: CacheMode::Tenant,
                npm: CacheMode::Shared,
                pip: CacheMode::Tenant,
            },
            spare_networks: 0,
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(backend.needs_tenant());
        let spec = |tenant: &str| SandboxSpec {
            id: format!("sb-cache-{:08x}", rand::random::<u32>()),
            owner: "docker-cache-test".into(),
            image: None,
            resources: Resources::default(),
            env: Default::default(),
            files: Vec::new(),
            agent_token: format!("tok-{:016x}", rand::random::<u64>()),
            ttl_s: 600,
            workspace: None,
            cache_tenant: Some(tenant.into()),
        };
        async fn sh(b: &DockerBackend, h: &SandboxHandle, command: &str) -> (Option<i32>, String) {
            let req = airlock_wire::ExecRequest {
                command: Some(command.into()),
                timeout_ms: Some(60_000),
                ..Default::default()
            };
            let r = b.exec(h, req).await.expect("exec");
            (r.exit_code, format!("{}{}", r.stdout, r.stderr))
        }
        // Tenant A writes into its pip and cargo caches.
        let a1 = backend.provision(&spec("vk:tenant-a")).await.unwrap();
        let (code, out) = sh(
            &backend,
            &a1,
            "set -e; echo wheel > \"$PIP_CACHE_DIR/pkg.whl\"; \
             mkdir -p \"$CARGO_HOME/registry\"; echo crate > \"$CARGO_HOME/registry/index.txt\"; \
             touch \"$CARGO_HOME/.package-cache\"; echo $PIP_CACHE_DIR $CARGO_HOME",
        )
        .await;
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(
            out.trim(),
            "/var/cache/airlock/pip /var/cache/airlock/cargo"
        );
        backend.destroy(&a1).await.unwrap();
        // Tenant A's next sandbox sees both files.
        let a2 = backend.provision(&spec("vk:tenant-a")).await.unwrap();
        let (code, out) = sh(
            &backend,
            &a2,
            "cat \"$PIP_CACHE_DIR/pkg.whl\" \"$CARGO_HOME/registry/index.txt\"",
        )
        .await;
        assert_eq!((code, out.as_str()), (Some(0), "wheel\ncrate\n"));
        // The shared cache is mounted read-only, for every tenant.
        let (code, out) = sh(
            &backend,
            &a2,
            "test -d \"$npm_config_cache\" && touch \"$npm_config_cache/poison\"",
        )
        .await;
        assert_ne!(
            code,
            Some(0),
            "the shared cache must not be writable: {out}"
        );
        assert!(out.contains("Read-only file system"), "{out}");
        // Tenant B has its own caches: tenant A's files are not there.
        let b1 = backend.provision(&spec("vk:tenant-b")).await.unwrap();
        let (code, out) = sh(
            &backend,
            &b1,
            "ls -AR \"$PIP_CACHE_DIR\" \"$CARGO_HOME\"; touch \"$PIP_CACHE_DIR/b\" && echo writable",
        )
        .await;
        assert_eq!(code, Some(0), "{out}");
        assert!(
            !out.contains("pkg.whl") && !out.contains("index.txt"),
            "{out}"
        );
        assert!(out.contains("writable"), "{out}");
        for h in [&a2, &b1] {
            backend.destroy(h).await.unwrap();
        }
        // A sandbox without a tenant (a pooled one) gets the shared cache only.
        let mut pooled = spec("x");
        pooled.cache_tenant = None;
        let p = backend.provision(&pooled).await.unwrap();
        let (code, out) = sh(&backend, &p, "echo \"[$PIP_CACHE_DIR][$npm_config_cache]\"").await;
        assert_eq!(code, Some(0));
        assert_eq!(out.trim(), "[][/var/cache/airlock/npm]");
        backend.destroy(&p).await.unwrap();
    }
}
