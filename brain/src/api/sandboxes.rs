//! `/v1/sandboxes`: the `sandbox_provision` and `sandbox_execute` tools over HTTP.
//!
//! Delete semantics: `DELETE` on a sandbox returns `200` with its row (status `destroyed`, or
//! `destroying` while a provision still in flight finishes the cleanup); repeating it returns
//! the same `200`; an id that never existed is `404`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Instant;

use airlock_wire::{ErrorBody, ExecEvent, ExecRequest};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::extract::ApiJson;
use crate::error::ApiError;
use crate::lifecycle::{self, ProvisionParams};
use crate::metrics::Outcome;
use crate::sandbox::{BackendKind, Resources, SandboxHandle};
use crate::state::AppState;
use crate::store::{SandboxRow, SandboxStatus, SnapshotRow};

/// Most rows `GET /v1/sandboxes` returns.
const LIST_LIMIT: i64 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionBody {
    pub task_description: Option<String>,
    pub backend: Option<BackendKind>,
    pub image: Option<String>,
    pub credentials: Option<Vec<String>>,
    pub ttl_s: Option<u64>,
    pub resources: Option<ResourcesBody>,
    /// A snapshot id: start with its workspace.
    pub from_snapshot: Option<String>,
    /// A persistent workspace name: mounted at `/workspace`, outlives the sandbox.
    pub workspace: Option<String>,
}

/// Requested resources; missing fields come from `sandbox.resources`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    pub command: String,
    pub cwd: Option<String>,
    pub timeout_s: Option<u64>,
}

/// What the API shows of a sandbox (never the handle: it holds the agent token).
#[derive(Debug, Serialize)]
pub struct SandboxView {
    pub id: String,
    pub backend: BackendKind,
    pub status: String,
    pub image: Option<String>,
    pub task_description: Option<String>,
    pub credentials: Vec<String>,
    pub session_id: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub destroyed_at: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecResponse {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub truncated: bool,
    pub duration_ms: u64,
}

impl From<&SandboxRow> for SandboxView {
    fn from(row: &SandboxRow) -> Self {
        let params = serde_json::from_value::<ProvisionParams>(row.request.clone()).ok();
        Self {
            id: row.id.clone(),
            backend: row.backend,
            status: row.status.to_string(),
            image: row.image.clone(),
            task_description: params.as_ref().and_then(|p| p.task_description.clone()),
            credentials: params.map(|p| p.credentials).unwrap_or_default(),
            session_id: row.session_id.clone(),
            created_at: rfc3339(row.created_at),
            expires_at: rfc3339(row.expires_at),
            destroyed_at: row.destroyed_at.map(rfc3339),
            error: row.error.clone(),
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ProvisionBody>,
) -> Result<(StatusCode, Json<SandboxView>), ApiError> {
    let params = validate_provision(&state, body)?;
    let row = lifecycle::provision(&state, params).await?;
    Ok((StatusCode::CREATED, Json(SandboxView::from(&row))))
}

pub(crate) fn validate_provision(
    state: &AppState,
    body: ProvisionBody,
) -> Result<ProvisionParams, ApiError> {
    let limits = &state.config.sandbox;
    let default_backend = state.backends.default_kind();
    let backend = body.backend.unwrap_or(default_backend);
    if backend != default_backend && !limits.allowed_backends.contains(&backend) {
        return Err(ApiError::bad_request(
            "backend_not_allowed",
            format!(
                "backend `{backend}` is not enabled (default is `{default_backend}`; \
                 others must be listed in sandbox.allowed_backends)"
            ),
        ));
    }
    let ttl_s = body.ttl_s.unwrap_or(limits.default_ttl_seconds);
    if ttl_s == 0 || ttl_s > limits.max_ttl_seconds {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("ttl_s must be between 1 and {}", limits.max_ttl_seconds),
        ));
    }
    let defaults = limits.resources;
    let max = limits.max_resources;
    let requested = body.resources.unwrap_or(ResourcesBody {
        cpus: None,
        memory_mb: None,
        pids: None,
    });
    let resources = Resources {
        cpus: requested.cpus.unwrap_or(defaults.cpus),
        memory_mb: requested.memory_mb.unwrap_or(defaults.memory_mb),
        pids: requested.pids.unwrap_or(defaults.pids),
    };
    if !(resources.cpus > 0.0 && resources.cpus <= max.cpus) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("resources.cpus must be in (0, {}]", max.cpus),
        ));
    }
    if resources.memory_mb < 16 || resources.memory_mb > max.memory_mb {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "resources.memory_mb must be between 16 and {}",
                max.memory_mb
            ),
        ));
    }
    if resources.pids < 8 || resources.pids > max.pids {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("resources.pids must be between 8 and {}", max.pids),
        ));
    }
    let credentials = body.credentials.unwrap_or_default();
    for name in &credentials {
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("credential name {name:?} must be [A-Za-z0-9_]+"),
            ));
        }
    }
    if !credentials.is_empty() && state.broker.is_none() {
        return Err(ApiError::bad_request(
            "no_vault_proxy",
            "no vault proxy configured: credentials cannot be granted to sandboxes",
        ));
    }
    if let Some(name) = &body.workspace {
        crate::sandbox::docker::check_workspace_name(name).map_err(ApiError::from)?;
    }
    if body.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "image must not be empty",
        ));
    }
    Ok(ProvisionParams {
        backend,
        image: body.image,
        task_description: body.task_description,
        credentials,
        ttl_s,
        resources,
        session_id: None,
        from_snapshot: body.from_snapshot,
        workspace: body.workspace,
    })
}

pub async fn list(State(state): State<AppState>) -> Result<Json<SandboxList>, ApiError> {
    let rows = state.store.list_sandboxes(false, LIST_LIMIT).await?;
    Ok(Json(SandboxList {
        sandboxes: rows.iter().map(SandboxView::from).collect(),
    }))
}

pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    let row = state
        .store
        .get_sandbox(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no sandbox {id}")))?;
    Ok(Json(SandboxView::from(&row)))
}

pub async fn destroy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    // Spawned so a client hanging up mid-destroy cannot leave the row half-way.
    let task = tokio::spawn(async move { lifecycle::destroy(&state, &id).await });
    let row = task
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(SandboxView::from(&row)))
}

pub async fn exec(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<Response, ApiError> {
    let row = state
        .store
        .get_sandbox(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no sandbox {id}")))?;
    let handle = usable_handle(&row, state.store.clock().await?)?;
    let request = exec_request(&state, body)?;
    let wants_stream = query.get("stream").is_some_and(|v| v == "1" || v == "true")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_stream {
        return Ok(Json(exec_collect(&state, &row, &handle, request).await?).into_response());
    }
    let backend = state.backends.get(row.backend).await?;
    let kind = row.backend.as_str();
    let started = Instant::now();
    let events = match backend.exec_stream(&handle, request).await {
        Ok(events) => events,
        Err(e) => {
            state.metrics.exec(kind, Outcome::Error, started.elapsed());
            return Err(e.into());
        }
    };
    let metrics = state.metrics.clone();
    let on_exit = move |exit: &airlock_wire::ExecExit| {
        let outcome = if exit.timed_out {
            Outcome::Timeout
        } else {
            Outcome::Ok
        };
        metrics.exec(kind, outcome, started.elapsed());
    };
    Ok(sse_response(events, on_exit).into_response())
}

/// `POST /v1/sandboxes/{id}/pause`: freezes the sandbox (memory kept); its TTL keeps counting.
pub async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    pause_or_resume(&state, &id, true).await
}

/// `POST /v1/sandboxes/{id}/resume`.
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxView>, ApiError> {
    pause_or_resume(&state, &id, false).await
}

pub(crate) async fn pause_or_resume(
    state: &AppState,
    id: &str,
    pause: bool,
) -> Result<Json<SandboxView>, ApiError> {
    let row = state
        .store
        .get_sandbox(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no sandbox {id}")))?;
    let handle = usable_handle(&row, state.store.clock().await?)?;
    let backend = state.backends.get(row.backend).await?;
    if pause {
        backend.pause(&handle).await?;
    } else {
        backend.resume(&handle).await?;
    }
    Ok(Json(SandboxView::from(&row)))
}

/// `POST /v1/sandboxes/{id}/snapshot` → `201 {"snapshot", …}`: the sandbox's workspace,
/// never its grant (see `crate::snapshots`).
pub async fn snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<SnapshotView>), ApiError> {
    let row = state
        .store
        .get_sandbox(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no sandbox {id}")))?;
    let handle = usable_handle(&row, state.store.clock().await?)?;
    // Spawned: a client hanging up cannot leave a stored snapshot without its row.
    let task = tokio::spawn(async move { crate::snapshots::take(&state, &row, &handle).await });
    let snapshot = task
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(SnapshotView::from(&snapshot))))
}

/// `GET /v1/snapshots/{id}`.
pub async fn show_snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SnapshotView>, ApiError> {
    let snapshot = state
        .store
        .get_snapshot(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no snapshot {id}")))?;
    Ok(Json(SnapshotView::from(&snapshot)))
}

/// `DELETE /v1/snapshots/{id}`: removes what the backend stored, then the row.
pub async fn delete_snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id2 = id.clone();
    let task = tokio::spawn(async move { crate::snapshots::delete(&state, &id2).await });
    let deleted = task
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    if !deleted {
        return Err(ApiError::not_found(format!("no snapshot {id}")));
    }
    Ok(Json(serde_json::json!({ "snapshot": id, "deleted": true })))
}

/// `DELETE /v1/workspaces/{name}` (default backend, or `?backend=`): removes a persistent
/// workspace no sandbox uses (`409` while one does; a provision racing it either holds it
/// first, or fails with `409` "being deleted", see `lifecycle::delete_workspace`).
pub async fn delete_workspace(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kind = match query.get("backend") {
        Some(b) => b.parse::<BackendKind>().map_err(|_| {
            ApiError::bad_request("invalid_request", format!("unknown backend {b:?}"))
        })?,
        None => state.backends.default_kind(),
    };
    if !lifecycle::delete_workspace(&state, kind, &name).await? {
        return Err(ApiError::not_found(format!("no workspace {name}")));
    }
    Ok(Json(
        serde_json::json!({ "workspace": name, "deleted": true }),
    ))
}

/// What the API shows of a snapshot.
#[derive(Debug, Serialize)]
pub struct SnapshotView {
    pub snapshot: String,
    pub backend: BackendKind,
    pub image: Option<String>,
    pub source_sandbox: String,
    pub size_bytes: u64,
    pub created_at: String,
}

impl From<&SnapshotRow> for SnapshotView {
    fn from(row: &SnapshotRow) -> Self {
        Self {
            snapshot: row.id.clone(),
            backend: row.backend,
            image: row.image.clone(),
            source_sandbox: row.source_sandbox.clone(),
            size_bytes: row.size_bytes,
            created_at: rfc3339(row.created_at),
        }
    }
}

/// The handle of a sandbox that can take commands and file operations now, or why not
/// (shared by the HTTP API and the MCP tools). `now` is the database clock (`Store::clock`),
/// which TTLs are set on: a replica whose own clock runs ahead must not refuse a live sandbox.
pub(crate) fn usable_handle(
    row: &SandboxRow,
    now: chrono::DateTime<Utc>,
) -> Result<SandboxHandle, ApiError> {
    let id = &row.id;
    match (row.status, &row.handle) {
        (SandboxStatus::Running, Some(_)) if row.expires_at <= now => Err(ApiError::conflict(
            "sandbox_destroyed",
            format!("sandbox {id} expired at {}", rfc3339(row.expires_at)),
        )),
        (SandboxStatus::Running, Some(handle)) => Ok(handle.clone()),
        (SandboxStatus::Destroying | SandboxStatus::Destroyed, _) => Err(ApiError::conflict(
            "sandbox_destroyed",
            format!("sandbox {id} is {}", row.status),
        )),
        (SandboxStatus::Failed, _) => Err(ApiError::conflict(
            "sandbox_failed",
            format!("sandbox {id} failed to provision"),
        )),
        (SandboxStatus::Provisioning, _) | (SandboxStatus::Running, None) => {
            Err(ApiError::conflict(
                "sandbox_not_ready",
                format!("sandbox {id} is still provisioning"),
            ))
        }
    }
}

/// Checks an exec body against the configured limits (timeout clamped, output capped) and
/// builds the agent request.
pub(crate) fn exec_request(state: &AppState, body: ExecBody) -> Result<ExecRequest, ApiError> {
    if body.command.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "command must not be empty",
        ));
    }
    let limits = &state.config.sandbox;
    let timeout_s = match body.timeout_s {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "timeout_s must be at least 1",
            ));
        }
        Some(t) => t.min(limits.max_exec_timeout_seconds),
        None => limits.default_exec_timeout_seconds,
    };
    Ok(ExecRequest {
        command: Some(body.command),
        cwd: body.cwd,
        timeout_ms: Some(timeout_s.saturating_mul(1000)),
        max_output_bytes: Some(limits.max_output_bytes),
        ..ExecRequest::default()
    })
}

/// Runs a command to completion on `row`'s backend and records the exec metric.
pub(crate) async fn exec_collect(
    state: &AppState,
    row: &SandboxRow,
    handle: &SandboxHandle,
    request: ExecRequest,
) -> Result<ExecResponse, ApiError> {
    let backend = state.backends.get(row.backend).await?;
    let kind = row.backend.as_str();
    let started = Instant::now();
    match backend.exec(handle, request).await {
        Ok(result) => {
            let outcome = if result.timed_out {
                Outcome::Timeout
            } else {
                Outcome::Ok
            };
            state.metrics.exec(kind, outcome, started.elapsed());
            Ok(ExecResponse {
                exit_code: result.exit_code,
                signal: result.signal,
                stdout: result.stdout,
                stderr: result.stderr,
                timed_out: result.timed_out,
                truncated: result.truncated,
                duration_ms: result.duration_ms,
            })
        }
        Err(e) => {
            state.metrics.exec(kind, Outcome::Error, started.elapsed());
            Err(e.into())
        }
    }
}

/// One SSE event per exec event: `event: stdout|stderr|exit`, `data:` the NDJSON line's JSON.
/// A failure mid-stream becomes a final `event: error` with the error body; a stream that ends
/// without an exit record gets one too.
fn sse_response(
    events: crate::sandbox::ExecStream,
    on_exit: impl Fn(&airlock_wire::ExecExit) + Send + 'static,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let init = (events, on_exit, false);
    let stream = futures_util::stream::unfold(init, |(mut events, on_exit, done)| async move {
        if done {
            return None;
        }
        let (event, done) = match events.next().await {
            Some(Ok(event)) => {
                if let ExecEvent::Exit(exit) = &event {
                    on_exit(exit);
                }
                let name = match &event {
                    ExecEvent::Stdout { .. } => "stdout",
                    ExecEvent::Stderr { .. } => "stderr",
                    ExecEvent::Exit(_) => "exit",
                };
                let is_exit = matches!(event, ExecEvent::Exit(_));
                (json_event(name, &event), is_exit)
            }
            Some(Err(e)) => {
                let err = ApiError::from(e);
                (
                    json_event("error", &ErrorBody::new(err.code, err.message)),
                    true,
                )
            }
            None => {
                let body = ErrorBody::new(
                    "agent_unreachable",
                    "exec stream ended without an exit record",
                );
                (json_event("error", &body), true)
            }
        };
        Some((Ok(event), (events, on_exit, done)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn json_event<T: Serialize>(name: &str, value: &T) -> Event {
    let data = serde_json::to_string(value).unwrap_or_else(|e| {
        format!(r#"{{"error":{{"code":"internal","message":"encoding event: {e}"}}}}"#)
    });
    Event::default().event(name).data(data)
}
