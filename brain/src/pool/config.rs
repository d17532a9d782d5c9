//! `pools:` in the brain config (one [`PoolConfig`] per pool) and its checks.

use serde::{Deserialize, Serialize};

use crate::sandbox::BackendKind;

/// Largest `size` of one pool (each is a running container holding memory).
pub const MAX_POOL_SIZE: usize = 256;

/// One entry of `pools:` in the brain config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub backend: BackendKind,
    /// Image of the pooled sandboxes; unset: the backend's default image. A request claims
    /// from this pool only when it names the same image (or both name none).
    #[serde(default)]
    pub image: Option<String>,
    /// Sandboxes kept ready.
    pub size: usize,
}

impl PoolConfig {
    /// The value of `sandboxes.pool` for this pool's rows.
    pub fn key(&self) -> String {
        match &self.image {
            Some(image) => format!("{}:{image}", self.backend),
            None => self.backend.to_string(),
        }
    }
}

/// Config checks: backends with pools, sizes, no duplicate pool.
pub fn validate(pools: &[PoolConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for p in pools {
        if !matches!(p.backend, BackendKind::Docker | BackendKind::Local) {
            return Err(format!(
                "pools: the {} backend has no warm pools (supported: docker, local)",
                p.backend
            ));
        }
        if p.size == 0 || p.size > MAX_POOL_SIZE {
            return Err(format!(
                "pools: size must be between 1 and {MAX_POOL_SIZE}, got {}",
                p.size
            ));
        }
        if p.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err("pools: image must not be empty".into());
        }
        if !seen.insert(p.key()) {
            return Err(format!("pools: pool `{}` is listed twice", p.key()));
        }
    }
    Ok(())
}
