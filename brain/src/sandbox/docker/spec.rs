//! The container spec: validation, image check, staged files, the create call, and waiting
//! for the agent to answer.

use super::*;

/// While waiting for the agent, how often the engine is asked whether the container exited.
const EXIT_CHECK_EVERY: Duration = Duration::from_millis(250);

impl DockerBackend {
    pub(super) async fn provision_steps(
        &self,
        spec: &SandboxSpec,
        spares: bool,
        created: &mut Created,
    ) -> Result<SandboxHandle, BackendError> {
        validate(spec)?;
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.config.image.clone());
        // No separate image check: the create below answers 404 for a missing image
        // (reported as such), and what was made before it is cleaned up.

        let labels = HashMap::from([
            (SANDBOX_LABEL.to_string(), spec.id.clone()),
            (OWNER_LABEL.to_string(), spec.owner.clone()),
        ]);

        let t0 = Instant::now();
        // Per-step timings of the cold path (`RUST_LOG=brain::sandbox::docker=debug`).
        let step = |name: &str| {
            tracing::debug!(sandbox = %spec.id, step = name, elapsed_us = t0.elapsed().as_micros() as u64, "docker provision step");
        };

        // 1. The network, if any (`SandboxNetwork`): internal (no gateway to the outside), no
        //    masquerading. A spare made ahead of time when there is one (`spare.rs`), else the
        //    sandbox's own.
        let internal = self.config.sandbox_network() == SandboxNetwork::Internal;
        let mut spare = if spares && internal {
            self.spares.take(&spec.owner)
        } else {
            None
        };
        let network_labels = labels.clone();
        let mut network = if internal {
            let network = self
                .sandbox_network(spec, &network_labels, spare.clone(), created)
                .await?;
            step(if spare.is_some() {
                "spare network taken"
            } else {
                "network created"
            });
            Some(network)
        } else {
            None
        };

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
        step("files and runtime dir ready");
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
            // Set per attempt below.
            network_mode: None,
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
        let mut body = ContainerCreateBody {
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
        let container = loop {
            // The container records its network, so a sweep by label removes a spare too.
            if let (Some(l), Some((network_id, _))) = (body.labels.as_mut(), &network) {
                l.insert(NETWORK_LABEL.to_string(), network_id.clone());
            }
            if let Some(hc) = body.host_config.as_mut() {
                hc.network_mode = Some(match &network {
                    Some((_, name)) => name.clone(),
                    None => "none".to_string(),
                });
            }
            match self
                .docker
                .create_container(Some(options.clone()), body.clone())
                .await
            {
                Ok(container) => break container,
                // A spare another brain's sweep removed meanwhile: make our own and retry.
                Err(e) if spare.is_some() && status(&e) == Some(404) && !no_such_image(&e) => {
                    tracing::info!(sandbox = %spec.id, network = ?network.as_ref().map(|n| &n.1), error = %e, "spare network gone; creating one");
                    spare = None;
                    network = Some(
                        self.sandbox_network(spec, &network_labels, None, created)
                            .await?,
                    );
                }
                Err(e) if status(&e) == Some(404) && no_such_image(&e) => {
                    return Err(image_missing(&image));
                }
                Err(e) => return Err(engine("create container", e)),
            }
        };
        created.container = Some(container.id.clone());
        step("container created");

        // 5. Start, wait for the agent on its socket. The container's address on its network
        //    (if it has one) is read while the agent starts (the sandbox is not ready before
        //    the agent answers anyway).
        self.docker
            .start_container(&container.id, None)
            .await
            .map_err(|e| engine("start container", e))?;
        step("container started");
        let agent_url = format!("{UNIX_PREFIX}{}", runtime_dir.join(AGENT_SOCKET).display());
        let inspect = async {
            let Some((_, network_name)) = &network else {
                return Ok(None);
            };
            let inspect = self
                .docker
                .inspect_container(&container.id, None)
                .await
                .map_err(|e| engine("inspect container", e))?;
            inspect
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|mut n| n.remove(network_name))
                .map(Some)
                .ok_or_else(|| {
                    BackendError::Unavailable(format!(
                        "container is not attached to {network_name}"
                    ))
                })
        };
        let (endpoint, ready) = tokio::join!(
            inspect,
            self.wait_ready(&container.id, &agent_url, &spec.agent_token)
        );
        ready?;
        let endpoint = endpoint?;
        step("agent ready");

        let mut extra = BTreeMap::from([
            (EXTRA_CONTAINER_ID.to_string(), container.id.clone()),
            (EXTRA_CONTAINER_NAME.to_string(), container_name),
        ]);
        if let Some((network_id, network_name)) = network {
            extra.insert(EXTRA_NETWORK_ID.to_string(), network_id);
            extra.insert(EXTRA_NETWORK_NAME.to_string(), network_name);
        }
        if let Some(ip) = endpoint
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
        {
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

    /// The sandbox's network: `spare` when given, else a new one named after the sandbox.
    /// Recorded in `created` (removed if the provision fails); the vault proxy container, when
    /// configured, is connected to it. Returns (network id, name).
    async fn sandbox_network(
        &self,
        spec: &SandboxSpec,
        labels: &HashMap<String, String>,
        spare: Option<Spare>,
        created: &mut Created,
    ) -> Result<(String, String), BackendError> {
        let (id, name) = match spare {
            Some(spare) => (spare.id, spare.name),
            None => {
                let name = self.network_name(&spec.id);
                let network = self.create_network(&name, labels).await?;
                (network.id, name)
            }
        };
        created.network = Some(id.clone());
        if let Some(proxy) = &self.config.proxy {
            self.docker
                .connect_network(
                    &id,
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
        Ok((id, name))
    }

    /// Whether the image is on the engine (tests skip without it).
    #[cfg(test)]
    pub(super) async fn check_image(&self, image: &str) -> Result<(), BackendError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(image_missing(image)),
            Err(e) => Err(engine("inspect image", e)),
        }
    }

    /// Waits until the agent answers `/health` or the startup timeout passes; fails early
    /// (with the container's log) if the container exits.
    ///
    /// The agent binds its socket in the bind-mounted runtime directory a few milliseconds
    /// after `start` returns, so the wait watches for that file on the host: a `stat` every
    /// 1 ms at first (no engine call, no connection attempt), backing off to 20 ms, and asks
    /// `/health` once the socket is there. Whether the container still runs is asked of the
    /// engine only every [`EXIT_CHECK_EVERY`], not per poll.
    pub(super) async fn wait_ready(
        &self,
        container: &str,
        url: &str,
        token: &str,
    ) -> Result<(), BackendError> {
        let agent = AgentClient::new(url, token);
        let socket = agent_client::unix_socket_path(url).map(Path::to_path_buf);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.config.startup_timeout_seconds);
        let mut delay = Duration::from_millis(1);
        let mut next_exit_check = started + EXIT_CHECK_EVERY;
        let mut last_error = String::from("the agent socket does not exist yet");
        loop {
            if socket.as_deref().is_none_or(Path::exists) {
                match agent.health().await {
                    Ok(_) => return Ok(()),
                    Err(e) => last_error = e.to_string(),
                }
            }
            let now = Instant::now();
            if now >= next_exit_check {
                next_exit_check = now + EXIT_CHECK_EVERY;
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
            if now >= deadline {
                let logs = self.logs_tail(container).await;
                return Err(BackendError::NotReady(format!(
                    "agent at {url} did not answer /health within {}s ({last_error}); log:\n{logs}",
                    self.config.startup_timeout_seconds
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 3 / 2).min(Duration::from_millis(20));
        }
    }

    /// The last lines of a container's log, for error messages (never fails).
    pub(super) async fn logs_tail(&self, container: &str) -> String {
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
}

pub(super) fn validate(spec: &SandboxSpec) -> Result<(), BackendError> {
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

pub(super) fn mib_to_bytes(mb: u64) -> Result<i64, BackendError> {
    mb.checked_mul(1024 * 1024)
        .and_then(|b| i64::try_from(b).ok())
        .ok_or_else(|| BackendError::Invalid(format!("memory_mb {mb} is too large")))
}

/// Whether an engine 404 is about the image (not, say, a network that vanished).
fn no_such_image(e: &DockerError) -> bool {
    e.to_string().contains("No such image")
}

/// Container hostnames are limited to 63 characters.
pub(super) fn hostname(id: &str) -> String {
    id.chars().take(63).collect()
}

/// Writes each file as `<dir>/f<N>` (mode 0444, readable by the sandbox user) and returns the
/// read-only bind mounts that place them at their target paths.
pub(super) async fn stage_files(
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
pub(super) fn staged_name(dir: &Path, n: usize) -> String {
    dir.join(format!("f{n}")).display().to_string()
}

/// Replaces a staged file's content in place (same inode: the container's bind mount sees
/// it). Blocking: called from a blocking task.
pub(super) fn rewrite_staged(source: &str, data: &[u8]) -> Result<(), BackendError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, e: std::io::Error| {
        BackendError::Unavailable(format!("fill staged file {source}: {what}: {e}"))
    };
    std::fs::set_permissions(source, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| io("chmod", e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(source)
        .map_err(|e| io("open", e))?;
    f.write_all(data).map_err(|e| io("write", e))?;
    f.flush().map_err(|e| io("flush", e))?;
    drop(f);
    std::fs::set_permissions(source, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| io("chmod", e))
}
