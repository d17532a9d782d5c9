//! Removal: what a failed provision left, and everything carrying a sandbox's label.

use super::*;

impl DockerBackend {
    /// Removes whatever a failed provision created. Errors are logged, not returned: the
    /// provision error is what the caller needs, and the label sweep catches leftovers.
    pub(super) async fn cleanup(&self, sandbox_id: &str, created: &Created) {
        if let Err(e) = self
            .remove_all(sandbox_id, created.container.as_deref())
            .await
        {
            tracing::warn!(sandbox = sandbox_id, error = %e, "cleanup after failed provision");
        }
        // A spare network carries no sandbox label: removed by the id recorded.
        if let Some(network) = &created.network
            && let Err(e) = self.remove_network(network).await
        {
            tracing::warn!(sandbox = sandbox_id, error = %e, "removing the network after a failed provision");
        }
        if let Some(dir) = &created.files_dir {
            remove_dir(dir).await;
        }
        if let Some(dir) = &created.runtime_dir {
            remove_dir(dir).await;
        }
    }

    /// Removes every container and network of one sandbox: the known container first, then
    /// anything else carrying its label, then the networks: those labelled with the sandbox
    /// and the spare its container names in [`NETWORK_LABEL`] (after their members).
    pub(super) async fn remove_all(
        &self,
        sandbox_id: &str,
        container: Option<&str>,
    ) -> Result<(), BackendError> {
        // The egress listener first: the sandbox loses its way out before anything else.
        if let Some(egress) = &self.egress {
            egress.stop(sandbox_id);
        }
        // Listed before anything is removed, so the known container's labels are read too.
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
        let mut networks: Vec<String> = containers
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(NETWORK_LABEL).cloned())
            .collect();
        if let Some(container) = container {
            self.remove_container(container).await?;
        }
        for c in containers.into_iter().filter_map(|c| c.id) {
            self.remove_container(&c).await?;
        }
        let labelled = self.networks_with(&filter).await?;
        networks.extend(labelled.into_iter().filter_map(|n| n.id));
        networks.sort();
        networks.dedup();
        for n in networks {
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

    pub(super) async fn remove_container(&self, container: &str) -> Result<(), BackendError> {
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
}

/// `label=airlock.sandbox` (any value) or `label=airlock.sandbox=<id>`.
pub(super) fn label_filter(sandbox_id: Option<&str>) -> HashMap<String, Vec<String>> {
    let value = match sandbox_id {
        Some(id) => format!("{SANDBOX_LABEL}={id}"),
        None => SANDBOX_LABEL.to_string(),
    };
    HashMap::from([("label".to_string(), vec![value])])
}
