//! Containers: OpenAI-style ids (`cntr_…`) for sandboxes, owned by the
//! virtual key that made them. `{"type":"auto"}` gets a sandbox for one
//! response (destroyed at its end); a named container (made by
//! `POST /v1/containers`) keeps its sandbox, and the Python state in it, until
//! it has been idle for `idle_ttl`. Another key asking for it gets a 404, the
//! same answer as for an id that never existed (no probing of other keys' ids).
//! Sandbox seconds are recorded per key when a sandbox goes.

use super::{CodeInterpreter, HostError, SandboxRequest};
use crate::Inner;
use crate::canonical::Usage;
use crate::error::GatewayError;
use crate::keys::{Caller, SpendRecord};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the sandbox-seconds records are filed under in the spend log.
pub const SPEND_MODEL: &str = "code_interpreter";

pub(crate) struct Entry {
    pub id: String,
    pub name: String,
    pub sandbox_id: String,
    pub owner: Caller,
    pub created_ms: i64,
    pub last_used: Mutex<Instant>,
    /// One cell at a time per container (one REPL).
    pub busy: tokio::sync::Mutex<()>,
}

#[derive(Default)]
pub struct Containers {
    map: Mutex<HashMap<String, Arc<Entry>>>,
    reaper_started: std::sync::atomic::AtomicBool,
}

/// A container in use by one request. An `auto` one is destroyed when this drops.
pub(crate) struct Lease {
    pub entry: Arc<Entry>,
    ephemeral: Option<(Arc<CodeInterpreter>, Arc<Inner>)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((ci, inner)) = self.ephemeral.take() {
            let entry = self.entry.clone();
            // Destroying takes a backend round trip: never on the response path.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { release(&ci, &inner, &entry).await });
            }
        }
    }
}

fn same_owner(a: &Caller, b: &Caller) -> bool {
    match (a, b) {
        (Caller::Key(x), Caller::Key(y)) => x.token_hash == y.token_hash,
        (Caller::Master, Caller::Master) | (Caller::Anonymous, Caller::Anonymous) => true,
        _ => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The credential names a virtual key lets its code use:
/// `metadata.code_interpreter_credentials` (none otherwise).
fn allowed_credentials(caller: &Caller) -> Vec<String> {
    match caller {
        Caller::Key(k) => k
            .metadata
            .get("code_interpreter_credentials")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn host_err(e: HostError) -> GatewayError {
    GatewayError::Provider(crate::error::ProviderError::Status {
        status: 503,
        error_type: "sandbox_unavailable".into(),
        message: e.to_string(),
        retry_after: None,
    })
}

async fn create_entry(
    ci: &CodeInterpreter,
    caller: &Caller,
    name: &str,
) -> Result<Arc<Entry>, GatewayError> {
    let id = format!("cntr_{}", uuid::Uuid::new_v4().simple());
    let req = SandboxRequest {
        description: format!("code interpreter container {id}"),
        credentials: allowed_credentials(caller),
        ttl: ci.settings.idle_ttl.max(Duration::from_secs(60)) * 4,
    };
    let sandbox_id = ci.host.create(&req).await.map_err(host_err)?;
    Ok(Arc::new(Entry {
        id,
        name: name.to_owned(),
        sandbox_id,
        owner: caller.clone(),
        created_ms: chrono::Utc::now().timestamp_millis(),
        last_used: Mutex::new(Instant::now()),
        busy: tokio::sync::Mutex::new(()),
    }))
}

/// Destroy a container's sandbox and record its seconds to the owner's key.
async fn release(ci: &CodeInterpreter, inner: &Inner, e: &Entry) {
    if let Err(err) = ci.host.destroy(&e.sandbox_id).await {
        tracing::warn!(container = %e.id, sandbox = %e.sandbox_id, "destroying a code interpreter sandbox: {err}");
    }
    let (team_id, user_id) = match &e.owner {
        Caller::Key(k) => (k.row.team_id.clone(), k.row.user_id.clone()),
        _ => (None, None),
    };
    inner.keys.record(
        &e.owner,
        SpendRecord {
            bucket: e.owner.bucket(),
            model: Arc::from(SPEND_MODEL),
            upstream: SPEND_MODEL.to_owned(),
            usage: Usage::default(),
            cost: 0.0,
            start_ms: e.created_ms,
            end_ms: chrono::Utc::now().timestamp_millis(),
            team_id,
            user_id,
        },
    );
}

impl Containers {
    fn get_owned(&self, caller: &Caller, id: &str) -> Result<Arc<Entry>, GatewayError> {
        let map = lock(&self.map);
        match map.get(id) {
            Some(e) if same_owner(&e.owner, caller) => Ok(e.clone()),
            _ => Err(GatewayError::NotFound(format!(
                "No container found with id '{id}'."
            ))),
        }
    }

    /// The container a request's `container` field names.
    pub(crate) async fn lease(
        ci: &Arc<CodeInterpreter>,
        inner: &Arc<Inner>,
        caller: &Caller,
        spec: &Value,
    ) -> Result<Lease, GatewayError> {
        match spec {
            Value::String(id) => {
                let entry = ci.containers.get_owned(caller, id)?;
                *lock(&entry.last_used) = Instant::now();
                Ok(Lease {
                    entry,
                    ephemeral: None,
                })
            }
            Value::Null => Self::auto(ci, inner, caller).await,
            Value::Object(o) => match o.get("type").and_then(Value::as_str) {
                Some("auto") => Self::auto(ci, inner, caller).await,
                _ => Err(GatewayError::BadRequest(
                    "code_interpreter `container` must be {\"type\":\"auto\"} or a container id"
                        .into(),
                )),
            },
            _ => Err(GatewayError::BadRequest(
                "code_interpreter `container` must be {\"type\":\"auto\"} or a container id".into(),
            )),
        }
    }

    async fn auto(
        ci: &Arc<CodeInterpreter>,
        inner: &Arc<Inner>,
        caller: &Caller,
    ) -> Result<Lease, GatewayError> {
        let entry = create_entry(ci, caller, "auto").await?;
        Ok(Lease {
            entry,
            ephemeral: Some((ci.clone(), inner.clone())),
        })
    }

    /// `POST /v1/containers`: a named container for this key.
    pub(crate) async fn create(
        ci: &Arc<CodeInterpreter>,
        inner: &Arc<Inner>,
        caller: &Caller,
        name: &str,
    ) -> Result<Value, GatewayError> {
        Self::start_reaper(ci, inner);
        let entry = create_entry(ci, caller, name).await?;
        let v = Self::view(ci, &entry);
        lock(&ci.containers.map).insert(entry.id.clone(), entry);
        Ok(v)
    }

    pub(crate) fn show(
        ci: &CodeInterpreter,
        caller: &Caller,
        id: &str,
    ) -> Result<Value, GatewayError> {
        let e = ci.containers.get_owned(caller, id)?;
        Ok(Self::view(ci, &e))
    }

    pub(crate) fn list(ci: &CodeInterpreter, caller: &Caller) -> Value {
        let map = lock(&ci.containers.map);
        let data: Vec<Value> = map
            .values()
            .filter(|e| same_owner(&e.owner, caller))
            .map(|e| Self::view(ci, e))
            .collect();
        json!({"object": "list", "data": data, "has_more": false})
    }

    pub(crate) async fn delete(
        ci: &CodeInterpreter,
        inner: &Inner,
        caller: &Caller,
        id: &str,
    ) -> Result<Value, GatewayError> {
        let e = ci.containers.get_owned(caller, id)?;
        lock(&ci.containers.map).remove(id);
        release(ci, inner, &e).await;
        Ok(json!({"id": id, "object": "container.deleted", "deleted": true}))
    }

    /// OpenAI's container object (openai-python `types/container_create_response.py`).
    fn view(ci: &CodeInterpreter, e: &Entry) -> Value {
        let idle = lock(&e.last_used).elapsed();
        json!({
            "id": e.id,
            "object": "container",
            "created_at": e.created_ms / 1000,
            "status": "running",
            "name": e.name,
            "expires_after": {"anchor": "last_active_at", "minutes": ci.settings.idle_ttl.as_secs() / 60},
            "last_active_at": chrono::Utc::now().timestamp() - idle.as_secs() as i64,
        })
    }

    /// Destroy named containers idle for longer than the TTL (checked every
    /// tenth of the TTL, at least each second).
    fn start_reaper(ci: &Arc<CodeInterpreter>, inner: &Arc<Inner>) {
        use std::sync::atomic::Ordering;
        if ci.containers.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(ci);
        let inner = Arc::downgrade(inner);
        let every =
            (ci.settings.idle_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let (Some(ci), Some(inner)) = (weak.upgrade(), inner.upgrade()) else {
                    return;
                };
                let ttl = ci.settings.idle_ttl;
                let expired: Vec<Arc<Entry>> = {
                    let mut map = lock(&ci.containers.map);
                    let ids: Vec<String> = map
                        .values()
                        .filter(|e| lock(&e.last_used).elapsed() > ttl && e.busy.try_lock().is_ok())
                        .map(|e| e.id.clone())
                        .collect();
                    ids.iter().filter_map(|id| map.remove(id)).collect()
                };
                for e in expired {
                    tracing::info!(container = %e.id, "code interpreter container idle past its TTL: destroyed");
                    release(&ci, &inner, &e).await;
                }
            }
        });
    }
}
