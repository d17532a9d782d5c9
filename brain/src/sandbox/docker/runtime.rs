//! The runtime directory on the host (agent and egress sockets) and the brain side of the
//! egress forwarder.

use super::*;

impl DockerBackend {
    /// The runtime directory recorded in a handle (it may predate a `runtime_dir` change).
    pub(super) fn handle_runtime_dir(&self, handle: &SandboxHandle) -> PathBuf {
        handle
            .extra
            .get(EXTRA_RUNTIME_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(|| self.runtime_dir(&handle.id))
    }

    /// Starts (or keeps) the brain side of the sandbox's egress socket in `runtime_dir`.
    pub(super) fn ensure_egress(
        &self,
        sandbox_id: &str,
        runtime_dir: &Path,
    ) -> Result<(), BackendError> {
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
pub(super) fn prepare_runtime_root(root: &Path) -> Result<(), BackendError> {
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
pub(super) fn prepare_sandbox_dir(dir: &Path) -> Result<(), BackendError> {
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

pub(super) async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "remove staged sandbox files"),
    }
}
