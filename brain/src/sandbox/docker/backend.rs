//! The `SandboxBackend` implementation: provision, destroy, exec, files, pool, pause,
//! snapshots, workspaces, adopt; the steps themselves live in the sibling modules.

use super::*;

#[async_trait]
impl SandboxBackend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    async fn provision(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        self.provision_with(spec, true).await
    }

    /// A warm pool's fill is not waited on by anyone: it leaves the spare networks to the
    /// provisions that are, and so triggers no spare refill next to the claims it serves.
    async fn provision_for_pool(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        self.provision_with(spec, false).await
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
        if let Some(network) = found.backend_ref.strip_prefix(SPARE_REF_PREFIX) {
            return self.remove_spare(network).await;
        }
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
        let networks = self.networks_with(&filter).await?;
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
        // Spare networks another brain process made (a crashed one's, listed under the
        // network's name, which no sandbox row has).
        found.extend(self.foreign_spares().await?);
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

    fn warm_up(&self, owner: &str) {
        self.refill_spares(owner);
    }

    async fn shutdown(&self) {
        self.drain_spares().await;
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
        let mut fill = Vec::new();
        for (target, data) in files {
            match staged.get(target) {
                Some(source) => fill.push((source.clone(), data.clone())),
                None => rest.push((target.clone(), data.clone())),
            }
        }
        let request = airlock_wire::ConfigureRequest {
            env: env.clone(),
            files: crate::sandbox::files_as_text(&rest)?,
        };
        let agent = self.agent(handle)?;
        // Side by side: the claim returns only after both, and nothing runs in the sandbox
        // before it returns. The host files are written in one blocking task (a claim's
        // latency is mostly hops between threads on a loaded host).
        let (filled, configured) = tokio::join!(
            async {
                tokio::task::spawn_blocking(move || {
                    fill.iter()
                        .try_for_each(|(source, data)| rewrite_staged(source, data))
                })
                .await
                .map_err(|e| BackendError::Unavailable(format!("fill staged files: {e}")))?
            },
            agent.configure(&request)
        );
        filled?;
        configured
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
    ) -> Result<crate::sandbox::StoredSnapshot, BackendError> {
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
        crate::sandbox::ensure_no_grant(handle, &data)?;
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
        Ok(crate::sandbox::StoredSnapshot {
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

    /// The image `snapshot` imports is named by the snapshot id alone
    /// (`<container_prefix>snapshot:<id>`): remove it if an interrupted snapshot left it.
    async fn discard_snapshot(&self, _owner: &str, snapshot_id: &str) -> Result<(), BackendError> {
        let tag = snapshot_tag(snapshot_id)?;
        self.delete_snapshot(&format!("{}:{tag}", self.snapshot_repo()))
            .await
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

impl DockerBackend {
    /// Provisions in a task of its own (see the module docs); `spares`: whether it may take a
    /// spare network (and refill them after).
    async fn provision_with(
        &self,
        spec: &SandboxSpec,
        spares: bool,
    ) -> Result<SandboxHandle, BackendError> {
        let this = self.clone();
        let owned = spec.clone();
        let task = tokio::spawn(async move {
            let spec = owned;
            let started = Instant::now();
            let mut created = Created::default();
            let mut result = this.provision_steps(&spec, spares, &mut created).await;
            if spares && matches!(&result, Err(e) if network_vanished(e)) {
                // The spare was removed under us between our create and start: another
                // replica's start-up sweep lists every spare it did not make (it cannot tell a
                // crashed brain's from a live one's), and the engine lets a network go while its
                // container is only created. Start over once on a network of the sandbox's own.
                tracing::info!(sandbox = %spec.id, "spare network vanished during provision; retrying on a new network");
                this.cleanup(&spec.id, &created).await;
                created = Created::default();
                result = this.provision_steps(&spec, false, &mut created).await;
            }
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
            // After the provision, so the fill never competes with it for the engine.
            if spares {
                this.refill_spares(&spec.owner);
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
}

/// Whether a provision failed because its network disappeared (the engine's 404 naming a
/// network) rather than for a reason a retry would meet again.
fn network_vanished(e: &BackendError) -> bool {
    let text = e.to_string();
    text.contains("404") && text.contains("network") && text.contains("not found")
}

#[cfg(test)]
mod network_vanished_tests {
    use super::*;

    #[test]
    fn only_a_missing_network_is_retried() {
        // The engine's answer seen when another replica's sweep removed a taken spare.
        let gone = BackendError::Unavailable(
            "docker start container: Docker responded with status code 404: network airlock-net-spare-2a9e87d73d2d5244 not found".into(),
        );
        assert!(network_vanished(&gone));
        let image = BackendError::Unavailable(
            "docker create container: Docker responded with status code 404: No such image: x:latest".into(),
        );
        assert!(!network_vanished(&image));
        let busy = BackendError::Unavailable("docker start container: status code 500".into());
        assert!(!network_vanished(&busy));
    }
}
