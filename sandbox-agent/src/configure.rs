//! `POST /configure`: the one-time setup of a sandbox started without its grant (a warm pool).
//!
//! A pooled sandbox is started before anyone asked for it, so it cannot carry the stub
//! credentials, the proxy token or the CA in its process environment. When the brain hands it
//! out it calls `/configure` once: `env` is inherited by every later exec, `files` are written.
//! The call is refused (409) a second time, and after anything ran or was written through the
//! API, so a sandbox that was used before its claim can never be configured and handed out.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use airlock_wire::{AGENT_TOKEN_ENV, ConfigureRequest};
use axum::extract::State;
use axum::http::StatusCode;

use crate::error::ApiError;
use crate::{ApiJson, AppState};

/// Configuration and use state shared by the handlers.
#[derive(Debug, Default)]
pub struct Setup {
    inner: Mutex<SetupInner>,
}

#[derive(Debug, Default)]
struct SetupInner {
    /// Set once by `/configure`.
    env: Option<Arc<BTreeMap<String, String>>>,
    /// A command ran or a file was written.
    used: bool,
}

impl Setup {
    fn lock(&self) -> std::sync::MutexGuard<'_, SetupInner> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the sandbox used and returns the configured env for the command about to run.
    pub fn begin_use(&self) -> Option<Arc<BTreeMap<String, String>>> {
        let mut inner = self.lock();
        inner.used = true;
        inner.env.clone()
    }

    /// `(configured, used)` for `GET /health`.
    pub fn status(&self) -> (bool, bool) {
        let inner = self.lock();
        (inner.env.is_some(), inner.used)
    }
}

pub async fn handle(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ConfigureRequest>,
) -> Result<StatusCode, ApiError> {
    validate(&req)?;
    let setup = state.setup.clone();
    // Files are small (a CA bundle); written under the lock so a concurrent exec cannot start
    // between "checked unused" and "configured".
    tokio::task::spawn_blocking(move || {
        let mut inner = setup.lock();
        if inner.env.is_some() {
            return Err(ApiError::Conflict(
                "already_configured",
                "this sandbox was configured already".into(),
            ));
        }
        if inner.used {
            return Err(ApiError::Conflict(
                "already_used",
                "a command ran in this sandbox before it was configured".into(),
            ));
        }
        for (path, content) in &req.files {
            write_file(Path::new(path), content.as_bytes())?;
        }
        inner.env = Some(Arc::new(req.env));
        Ok(())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("configure task: {e}")))??;
    tracing::info!("sandbox configured");
    Ok(StatusCode::NO_CONTENT)
}

fn validate(req: &ConfigureRequest) -> Result<(), ApiError> {
    for key in req.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ApiError::BadRequest(format!("bad env var name {key:?}")));
        }
        if key == AGENT_TOKEN_ENV {
            return Err(ApiError::BadRequest(format!(
                "{AGENT_TOKEN_ENV} cannot be configured"
            )));
        }
    }
    if req.env.values().any(|v| v.contains('\0')) {
        return Err(ApiError::BadRequest("env values cannot hold NUL".into()));
    }
    for path in req.files.keys() {
        let p = Path::new(path);
        if !p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            || path.ends_with('/')
        {
            return Err(ApiError::BadRequest(format!(
                "file path {path:?} must be absolute, without `..`, naming a file"
            )));
        }
    }
    Ok(())
}

/// Writes through a temporary sibling and a rename, so no reader sees half a CA bundle.
fn write_file(path: &Path, data: &[u8]) -> Result<(), ApiError> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| ApiError::BadRequest(format!("{} has no parent", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| ApiError::from_io(dir, "create", e))?;
    let tmp = dir.join(format!(
        ".{}.configure",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| ApiError::from_io(&tmp, "create", e))?;
    f.write_all(data)
        .map_err(|e| ApiError::from_io(&tmp, "write", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ApiError::from_io(path, "rename onto", e)
    })
}
