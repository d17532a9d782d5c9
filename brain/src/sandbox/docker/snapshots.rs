//! Snapshot images and persistent workspace volumes.

use super::*;

impl DockerBackend {
    /// Repository of snapshot images: `<container_prefix>snapshot`.
    pub(super) fn snapshot_repo(&self) -> String {
        format!("{}snapshot", self.config.container_prefix).to_ascii_lowercase()
    }

    /// Mounts the configured dependency caches (`caches.rs`) and adds their env (a key
    /// the sandbox's own env sets wins).
    pub(super) async fn add_caches(
        &self,
        spec: &SandboxSpec,
        image: &str,
        mounts: &mut Vec<Mount>,
        env: &mut Vec<String>,
    ) -> Result<(), BackendError> {
        let caches = super::caches::cache_setup(
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
    pub(super) fn workspace_volume(&self, name: &str) -> String {
        format!("{}ws-{name}", self.config.container_prefix)
    }

    /// Creates the workspace's volume unless it exists, after checking no live container
    /// mounts it (one sandbox at a time: two writers would corrupt a checkout). Returns its
    /// name.
    pub(super) async fn ensure_workspace(
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
    pub(super) async fn workspace_user(&self, name: &str) -> Result<Option<String>, BackendError> {
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
}

/// Label on snapshot images (value: the snapshot's tag).
pub const SNAPSHOT_LABEL: &str = "airlock.snapshot";

/// A snapshot id as an image tag (`[A-Za-z0-9_.-]`, at most 128 characters).
pub(super) fn snapshot_tag(snapshot_id: &str) -> Result<String, BackendError> {
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
pub(super) async fn run_tool(agent: &AgentClient, argv: Vec<String>) -> Result<(), BackendError> {
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
