//! The Daytona backend: sandboxes created through Daytona's REST API, commands and files
//! through the sandbox's toolbox (the in-sandbox daemon, reached via Daytona's toolbox proxy).
//!
//! Wire formats follow Daytona's published OpenAPI specs (daytona/clients @ d94a1281,
//! 2026-08-20; the daytonaio/daytona repo is frozen at v0.190.0):
//! - control plane `api-client-go/api/openapi.yaml`: `POST /sandbox` (`CreateSandbox` → **200**
//!   `Sandbox`), `GET /sandbox/{sandboxIdOrName}` (`Sandbox`, `state` from `SandboxState`),
//!   `GET /sandbox` (`labels` = JSON object, `cursor`, `limit` ≤ 200 → `ListSandboxesResponse
//!   {items, nextCursor}`), `DELETE /sandbox/{sandboxIdOrName}` (200 `Sandbox`); auth
//!   `Authorization: Bearer <API key>`; errors are NestJS bodies `{statusCode, error, message,
//!   path, timestamp}` (`message` may be a list of validation messages);
//! - toolbox `toolbox-api-client-go/api/openapi.yaml`, at `{toolboxProxyUrl}/{sandboxId}`
//!   (same Bearer key): `POST /process/execute` (`ExecuteRequest {command, cwd, envs, timeout}`
//!   → `ExecuteResponse {exitCode, result}`, **408** `ErrorResponse` on timeout),
//!   `GET /files/download?path=`, `POST /files/upload-v2?path=` (raw body), `GET /files?path=`
//!   (`FileInfo[]`); errors `ErrorResponse {statusCode, message, code, path, timestamp}`.
//!
//! Limits of the provider's one-shot execute: stdout and stderr arrive as one combined
//! `result` (reported as stdout, stderr empty), nothing streams (an `exec_stream` yields the
//! whole output once the command ends), and the daemon buffers all output before the cap here
//! applies. The old API-hosted `/toolbox/{id}/toolbox/...` routes are deprecated and not used.
//!
//! Lifetime: `ttlMinutes` (wall clock, destroys even a stopped sandbox), `autoStopInterval`
//! (idle) and `autoDeleteInterval: 0` (delete on stop) are set at creation from the sandbox TTL
//! plus a grace period; `labels` carry `airlock.sandbox`/`airlock.owner` for the reaper.
//! CPU/memory are not sent: Daytona rejects resources together with a snapshot.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_wire::{ExecEvent, ExecRequest, ExecResult, FileEntry};
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::remote::{
    self, Attempt, Channel, OutputCap, RetryPolicy, control_plane_error, provider_error,
    sandbox_api_error, transport_error,
};
use super::{
    BackendError, BackendKind, ExecStream, LabelledSandbox, OWNER_LABEL, SANDBOX_LABEL,
    SandboxBackend, SandboxHandle, SandboxSpec,
};

const PROVIDER: &str = "daytona";
const EXTRA_TOOLBOX_URL: &str = "daytona.toolbox_url";
/// Daytona refuses a `networkAllowList` of more than 10 entries (daytonaio/daytona@v0.190.0:
/// apps/api/src/sandbox/utils/network-validation.util.ts).
const DAYTONA_MAX_ALLOW_LIST: usize = 10;
/// Extra time past the command's own timeout before the brain stops waiting for the answer.
const EXEC_GRACE: Duration = Duration::from_secs(10);

/// `sandbox.daytona` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaytonaConfig {
    /// Control-plane base URL (with the `/api` prefix).
    pub api_url: String,
    /// Env var holding the API key (sent as `Authorization: Bearer`).
    pub api_key_env: String,
    /// Snapshot used when a request names no `image`; unset = Daytona's default.
    pub snapshot: Option<String>,
    /// Region (`target`), e.g. `us`; unset = the organisation's default.
    pub target: Option<String>,
    /// The vault proxy as the Daytona cloud reaches it (`host:port`); the only egress allowed.
    pub proxy_url: Option<String>,
    /// Seconds added to the sandbox TTL for Daytona's own timers (the brain reaps first).
    pub ttl_grace_seconds: u64,
    /// Bound on create + `state == started`.
    pub ready_timeout_ms: u64,
    /// Timeout of one control-plane or file call.
    pub request_timeout_ms: u64,
    /// Retries of idempotent calls on 429/5xx/transport errors.
    pub max_retries: u32,
    /// First backoff delay; doubles per retry (capped at 5 s).
    pub retry_base_ms: u64,
}

impl Default for DaytonaConfig {
    fn default() -> Self {
        Self {
            api_url: "https://app.daytona.io/api".into(),
            api_key_env: "DAYTONA_API_KEY".into(),
            snapshot: None,
            target: None,
            proxy_url: None,
            ttl_grace_seconds: 300,
            ready_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
            max_retries: 3,
            retry_base_ms: 200,
        }
    }
}

/// `CreateSandbox` (the fields used).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateSandbox<'a> {
    /// `airlock-<id>`: unique per organisation, and readable with `GET /sandbox/{name}` right
    /// after the create (the list is eventually consistent).
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    env: &'a BTreeMap<String, String>,
    labels: BTreeMap<&'static str, &'a str>,
    auto_stop_interval: u64,
    auto_delete_interval: i64,
    ttl_minutes: u64,
    network_block_all: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_allow_list: Option<String>,
}

/// `Sandbox` (the fields used).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sandbox {
    id: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error_reason: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    toolbox_proxy_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListSandboxesResponse {
    items: Vec<Sandbox>,
    #[serde(default)]
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecuteResponse {
    #[serde(default)]
    exit_code: Option<i32>,
    result: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileInfo {
    name: String,
    #[serde(default)]
    is_dir: bool,
    #[serde(default)]
    size: u64,
}

#[derive(Clone)]
pub struct DaytonaBackend {
    config: DaytonaConfig,
    api_url: String,
    api_key: String,
    http: reqwest::Client,
    retry: RetryPolicy,
    /// Sandboxes whose daemon has no `/files/upload-v2` (v0.190.0 and older): their uploads
    /// go straight to the multipart `/files/upload`.
    legacy_upload: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for DaytonaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaytonaBackend")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl DaytonaBackend {
    /// Reads the API key from `api_key_env`; nothing is contacted until first use.
    pub fn new(config: DaytonaConfig) -> Result<Self, BackendError> {
        let api_key = remote::api_key_from_env(PROVIDER, &config.api_key_env)?;
        Self::with_key(config, api_key)
    }

    pub fn with_key(config: DaytonaConfig, api_key: String) -> Result<Self, BackendError> {
        remote::validate_proxy_url(
            PROVIDER,
            "sandbox.daytona.proxy_url",
            config.proxy_url.as_deref(),
        )?;
        Ok(Self {
            legacy_upload: Arc::default(),
            api_url: config.api_url.trim_end_matches('/').to_string(),
            retry: RetryPolicy::new(config.max_retries, config.retry_base_ms),
            http: remote::http_client()?,
            config,
            api_key,
        })
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .timeout(self.request_timeout())
            .bearer_auth(&self.api_key)
    }

    fn toolbox(
        &self,
        handle: &SandboxHandle,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, BackendError> {
        let base = handle.extra.get(EXTRA_TOOLBOX_URL).ok_or_else(|| {
            BackendError::Invalid(format!("sandbox {} has no toolbox address", handle.id))
        })?;
        Ok(self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&self.api_key))
    }

    async fn idempotent(
        &self,
        call: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        match remote::send_with_retry(self.retry, make).await {
            Attempt::Response(resp) => Ok(resp),
            Attempt::Transport(e) => Err(transport_error(PROVIDER, call, e)),
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        call: &str,
        resp: reqwest::Response,
    ) -> Result<T, BackendError> {
        resp.json().await.map_err(|e| {
            BackendError::Unavailable(format!("{PROVIDER} {call}: unreadable response: {e}"))
        })
    }

    /// One `POST /sandbox`; `Ok(None)` = retryable failure (the error is kept in `last`).
    async fn create_once(
        &self,
        body: &CreateSandbox<'_>,
        last: &mut Option<(BackendError, Option<Duration>)>,
    ) -> Result<Option<Sandbox>, BackendError> {
        let call = "POST /sandbox";
        let resp = match self
            .api(reqwest::Method::POST, "/sandbox")
            .json(body)
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                *last = Some((transport_error(PROVIDER, call, e), None));
                return Ok(None);
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Self::json(call, resp).await.map(Some);
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(20)));
        let err = control_plane_error(PROVIDER, call, provider_error(resp).await);
        if remote::retryable(status) {
            *last = Some((err, retry_after));
            Ok(None)
        } else {
            Err(err)
        }
    }

    /// Creates the sandbox; a retry first looks for one an earlier attempt made anyway (by
    /// its `airlock.sandbox` label) and takes it over instead of creating a second.
    async fn create(
        &self,
        spec: &SandboxSpec,
        body: &CreateSandbox<'_>,
    ) -> Result<Sandbox, BackendError> {
        let mut last = None;
        for attempt in 0..self.retry.attempts {
            if attempt > 0 {
                let wait = last
                    .as_ref()
                    .and_then(|(_, after): &(BackendError, Option<Duration>)| *after);
                let backoff = self
                    .retry
                    .base_delay
                    .saturating_mul(1 << (attempt - 1).min(10))
                    .min(self.retry.max_delay);
                tokio::time::sleep(wait.unwrap_or(backoff)).await;
                if let Some(found) = self.find(&spec.id).await? {
                    if found.state.as_deref() == Some("error") {
                        // The lost attempt made a sandbox that failed: replace it.
                        let _ = self.delete(&found.id).await;
                    } else {
                        return Ok(found);
                    }
                }
            }
            if let Some(sb) = self.create_once(body, &mut last).await? {
                return Ok(sb);
            }
        }
        Err(last
            .map(|(e, _)| e)
            .unwrap_or_else(|| BackendError::Unavailable(format!("{PROVIDER}: create failed"))))
    }

    async fn get(&self, id: &str) -> Result<Sandbox, BackendError> {
        let call = "GET /sandbox/{id}";
        let path = format!("/sandbox/{id}");
        let resp = self
            .idempotent(call, || self.api(reqwest::Method::GET, &path))
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(control_plane_error(
                PROVIDER,
                call,
                provider_error(resp).await,
            ));
        }
        Self::json(call, resp).await
    }

    /// Lists sandboxes (all pages), optionally filtered by labels.
    async fn list(
        &self,
        labels: Option<&BTreeMap<&str, &str>>,
    ) -> Result<Vec<Sandbox>, BackendError> {
        let call = "GET /sandbox";
        let labels = labels
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let resp = self
                .idempotent(call, || {
                    // Errored sandboxes are hidden unless asked for; the sweep and the
                    // lost-create lookup need them.
                    let mut q: Vec<(&str, &str)> =
                        vec![("limit", "200"), ("includeErroredDeleted", "true")];
                    if let Some(l) = &labels {
                        q.push(("labels", l.as_str()));
                    }
                    if let Some(c) = &cursor {
                        q.push(("cursor", c.as_str()));
                    }
                    self.api(reqwest::Method::GET, "/sandbox").query(&q)
                })
                .await?;
            if resp.status() != StatusCode::OK {
                return Err(control_plane_error(
                    PROVIDER,
                    call,
                    provider_error(resp).await,
                ));
            }
            let page: ListSandboxesResponse = Self::json(call, resp).await?;
            out.extend(page.items);
            cursor = page.next_cursor.filter(|c| !c.is_empty());
            if cursor.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// The sandbox made for `airlock_id`, if any: first by its name (a read of one row,
    /// consistent right after the create), then by label in the list (which may lag, but also
    /// finds sandboxes created without a name).
    async fn find(&self, airlock_id: &str) -> Result<Option<Sandbox>, BackendError> {
        let live = |s: &Sandbox| !matches!(s.state.as_deref(), Some("destroyed" | "destroying"));
        let call = "GET /sandbox/{name}";
        let path = format!("/sandbox/{}", sandbox_name(airlock_id));
        let resp = self
            .idempotent(call, || self.api(reqwest::Method::GET, &path))
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let sb: Sandbox = Self::json(call, resp).await?;
                if live(&sb)
                    && sb
                        .labels
                        .get(SANDBOX_LABEL)
                        .is_some_and(|v| v == airlock_id)
                {
                    return Ok(Some(sb));
                }
            }
            StatusCode::NOT_FOUND => {}
            _ => {
                return Err(control_plane_error(
                    PROVIDER,
                    call,
                    provider_error(resp).await,
                ));
            }
        }
        let labels = BTreeMap::from([(SANDBOX_LABEL, airlock_id)]);
        Ok(self
            .list(Some(&labels))
            .await?
            .into_iter()
            .find(|s| live(s) && s.labels.get(SANDBOX_LABEL).is_some_and(|v| v == airlock_id)))
    }

    async fn delete(&self, id: &str) -> Result<(), BackendError> {
        let call = "DELETE /sandbox/{id}";
        let path = format!("/sandbox/{id}");
        let resp = self
            .idempotent(call, || self.api(reqwest::Method::DELETE, &path))
            .await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(control_plane_error(
            PROVIDER,
            call,
            provider_error(resp).await,
        ))
    }

    /// Polls until `state == started` (like the SDK: 100 ms, ×1.1 after 5 s, at most 1 s).
    async fn wait_started(
        &self,
        mut sb: Sandbox,
        deadline: Instant,
    ) -> Result<Sandbox, BackendError> {
        let begun = Instant::now();
        let mut interval = Duration::from_millis(100);
        loop {
            match sb.state.as_deref() {
                Some("started") => return Ok(sb),
                Some(state @ ("error" | "build_failed" | "destroyed" | "destroying")) => {
                    return Err(BackendError::NotReady(format!(
                        "{PROVIDER}: sandbox {} is `{state}`: {}",
                        sb.id,
                        sb.error_reason.as_deref().unwrap_or("no reason given")
                    )));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(BackendError::NotReady(format!(
                    "{PROVIDER}: sandbox {} still `{}` after {} ms",
                    sb.id,
                    sb.state.as_deref().unwrap_or("unknown"),
                    self.config.ready_timeout_ms
                )));
            }
            tokio::time::sleep(interval.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            if begun.elapsed() > Duration::from_secs(5) {
                interval = interval.mul_f64(1.1).min(Duration::from_secs(1));
            }
            sb = self.get(&sb.id).await?;
        }
    }

    async fn finish_provision(
        &self,
        spec: &SandboxSpec,
        sb: Sandbox,
        deadline: Instant,
    ) -> Result<SandboxHandle, BackendError> {
        let sb = self.wait_started(sb, deadline).await?;
        let toolbox = sb
            .toolbox_proxy_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                BackendError::Unavailable(format!(
                    "{PROVIDER}: sandbox {} has no toolboxProxyUrl",
                    sb.id
                ))
            })?;
        let handle = SandboxHandle {
            id: spec.id.clone(),
            backend: BackendKind::Daytona,
            backend_ref: sb.id.clone(),
            agent_url: None,
            agent_token: String::new(),
            extra: BTreeMap::from([(
                EXTRA_TOOLBOX_URL.to_string(),
                format!("{}/{}", toolbox.trim_end_matches('/'), sb.id),
            )]),
        };
        // The CA must be in place before any command can use the proxy.
        for (path, data) in &spec.files {
            self.write_file(&handle, path, data.clone()).await?;
        }
        Ok(handle)
    }

    /// A toolbox error answer. The proxy's 404 for a sandbox that is gone names the sandbox;
    /// the daemon's 404 for a missing path is `FILE_NOT_FOUND` (newer) or an empty body
    /// (v0.190.0, gin's bare `AbortWithError`) and stays a per-call error.
    async fn toolbox_error(resp: reqwest::Response, path: &str) -> BackendError {
        let mut e = provider_error(resp).await;
        let gone = e.status == 404
            && e.code != "FILE_NOT_FOUND"
            && e.message.to_ascii_lowercase().contains("sandbox");
        if e.status == 404 && !gone && e.message == "Not Found" {
            e.message = format!("no such file or directory: {path}");
        }
        sandbox_api_error(PROVIDER, e, gone)
    }

    fn unreachable(e: reqwest::Error) -> BackendError {
        BackendError::AgentUnreachable(format!("{PROVIDER} toolbox: {e}"))
    }
}

/// Minutes covering `secs`, at least 1.
fn minutes(secs: u64) -> u64 {
    secs.div_ceil(60).max(1)
}

/// The name a sandbox is created with.
fn sandbox_name(airlock_id: &str) -> String {
    format!("airlock-{airlock_id}").to_ascii_lowercase()
}

/// The daemon pipes `command` into the first of zsh, bash or sh it finds (newer daemons; the
/// older ones split it on spaces and quotes and exec it with no shell): a command that reads
/// stdin would swallow the rest of the script, and zsh globbing and word splitting would
/// apply. So the command runs as `bash -c` with stdin from /dev/null, and travels base64 so
/// no quoting rule of either daemon generation can touch it (base64 has no quote, space or
/// shell metacharacter).
fn wrap_command(command: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(command);
    format!("bash -c 'eval \"$(printf %s {b64} | base64 -d)\"' < /dev/null")
}

/// POSIX single-quoting, for running an argv through the toolbox's shell.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[async_trait]
impl SandboxBackend for DaytonaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Daytona
    }

    async fn provision(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        let egress = remote::remote_egress(
            PROVIDER,
            "sandbox.daytona.proxy_url",
            self.config.proxy_url.as_deref(),
            DAYTONA_MAX_ALLOW_LIST,
            spec,
        )
        .await?;
        let lifetime = minutes(spec.ttl_s.saturating_add(self.config.ttl_grace_seconds));
        let body = CreateSandbox {
            name: sandbox_name(&spec.id),
            snapshot: spec.image.as_deref().or(self.config.snapshot.as_deref()),
            target: self.config.target.as_deref(),
            env: &egress.env,
            labels: BTreeMap::from([
                (SANDBOX_LABEL, spec.id.as_str()),
                (OWNER_LABEL, spec.owner.as_str()),
            ]),
            auto_stop_interval: lifetime,
            auto_delete_interval: 0,
            ttl_minutes: lifetime,
            // Daytona applies the allow-list only when "block all" is off.
            network_block_all: egress.allow_cidrs.is_empty(),
            network_allow_list: (!egress.allow_cidrs.is_empty())
                .then(|| egress.allow_cidrs.join(",")),
        };
        let deadline = Instant::now() + Duration::from_millis(self.config.ready_timeout_ms);
        let sb = match self.create(spec, &body).await {
            Ok(sb) => sb,
            Err(e) => {
                // A failed attempt may still have made one; leave nothing behind.
                if let Ok(Some(found)) = self.find(&spec.id).await {
                    let _ = self.delete(&found.id).await;
                }
                return Err(e);
            }
        };
        let id = sb.id.clone();
        match self.finish_provision(spec, sb, deadline).await {
            Ok(handle) => Ok(handle),
            Err(e) => {
                if let Err(del) = self.delete(&id).await {
                    tracing::warn!(sandbox = %spec.id, error = %del, "daytona: deleting a failed provision failed");
                }
                Err(e)
            }
        }
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        self.delete(&handle.backend_ref).await
    }

    async fn destroy_labelled(&self, found: &LabelledSandbox) -> Result<(), BackendError> {
        self.delete(&found.backend_ref).await
    }

    async fn list_labelled(&self) -> Result<Vec<LabelledSandbox>, BackendError> {
        Ok(self
            .list(None)
            .await?
            .into_iter()
            .filter(|s| !matches!(s.state.as_deref(), Some("destroyed" | "destroying")))
            .filter_map(|s| {
                Some(LabelledSandbox {
                    id: s.labels.get(SANDBOX_LABEL)?.clone(),
                    owner: s.labels.get(OWNER_LABEL).cloned(),
                    backend_ref: s.id,
                })
            })
            .collect())
    }

    async fn is_alive(&self, handle: &SandboxHandle) -> bool {
        self.get(&handle.backend_ref)
            .await
            .is_ok_and(|s| s.state.as_deref() == Some("started"))
    }

    async fn exec(
        &self,
        handle: &SandboxHandle,
        req: ExecRequest,
    ) -> Result<ExecResult, BackendError> {
        if req.stdin.is_some() {
            return Err(BackendError::Invalid(format!(
                "{PROVIDER}: exec stdin is not supported"
            )));
        }
        let command = match (req.command, req.argv) {
            (Some(c), None) => c,
            (None, Some(argv)) if !argv.is_empty() => argv
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            _ => {
                return Err(BackendError::Invalid(
                    "exactly one of command or a non-empty argv is required".into(),
                ));
            }
        };
        let timeout_s = req.timeout_ms.filter(|t| *t > 0).map(|t| t.div_ceil(1000));
        let mut body = serde_json::json!({ "command": wrap_command(&command) });
        if let Some(cwd) = req.cwd {
            body["cwd"] = cwd.into();
        }
        if let Some(env) = req.env.filter(|e| !e.is_empty()) {
            body["envs"] =
                serde_json::to_value(env).map_err(|e| BackendError::Invalid(e.to_string()))?;
        }
        if let Some(t) = timeout_s {
            body["timeout"] = t.into();
        }
        let started = Instant::now();
        let mut r = self
            .toolbox(handle, reqwest::Method::POST, "/process/execute")?
            .json(&body);
        if let Some(t) = timeout_s {
            r = r.timeout(Duration::from_secs(t) + EXEC_GRACE);
        }
        // Not retried: a command may have side effects.
        let resp = r.send().await.map_err(Self::unreachable)?;
        let status = resp.status();
        let mut cap = OutputCap::new(req.max_output_bytes.unwrap_or(u64::MAX));
        if status == StatusCode::REQUEST_TIMEOUT {
            // The daemon killed the command's process group; its output is not returned.
            let _ = resp.bytes().await;
            return Ok(ExecResult {
                exit_code: None,
                signal: Some(9),
                stdout: String::new(),
                stderr: String::new(),
                timed_out: true,
                truncated: false,
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        if !status.is_success() {
            return Err(Self::toolbox_error(resp, "").await);
        }
        let out: ExecuteResponse = resp.json().await.map_err(|e| {
            BackendError::AgentUnreachable(format!("{PROVIDER} toolbox: bad ExecuteResponse: {e}"))
        })?;
        if out.exit_code == Some(-1) && out.result.starts_with("chdir ") {
            // The daemon could not start the command in `cwd` (Go's `cmd.Start` error, exit
            // -1): the caller's mistake, as E2B's invalid_argument is.
            return Err(BackendError::Invalid(format!(
                "{PROVIDER}: {}",
                out.result.trim()
            )));
        }
        let mut stdout = String::new();
        for event in cap
            .push(Channel::Stdout, out.result.as_bytes())
            .into_iter()
            .chain(cap.flush())
        {
            if let ExecEvent::Stdout { data } = event {
                stdout.push_str(&data);
            }
        }
        Ok(ExecResult {
            exit_code: Some(out.exit_code.unwrap_or(0)),
            signal: None,
            stdout,
            stderr: String::new(),
            timed_out: false,
            truncated: cap.truncated(),
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    async fn exec_stream(
        &self,
        handle: &SandboxHandle,
        req: ExecRequest,
    ) -> Result<ExecStream, BackendError> {
        let r = self.exec(handle, req).await?;
        let mut events = Vec::with_capacity(2);
        if !r.stdout.is_empty() {
            events.push(Ok(ExecEvent::Stdout { data: r.stdout }));
        }
        events.push(Ok(ExecEvent::Exit(airlock_wire::ExecExit {
            exit_code: r.exit_code,
            signal: r.signal,
            timed_out: r.timed_out,
            truncated: r.truncated,
            duration_ms: r.duration_ms,
        })));
        Ok(Box::pin(futures_util::stream::iter(events)))
    }

    async fn read_file(&self, handle: &SandboxHandle, path: &str) -> Result<Bytes, BackendError> {
        let resp = self
            .toolbox(handle, reqwest::Method::GET, "/files/download")?
            .query(&[("path", path)])
            .timeout(self.request_timeout())
            .send()
            .await
            .map_err(Self::unreachable)?;
        if !resp.status().is_success() {
            return Err(Self::toolbox_error(resp, path).await);
        }
        resp.bytes().await.map_err(Self::unreachable)
    }

    async fn write_file(
        &self,
        handle: &SandboxHandle,
        path: &str,
        data: Bytes,
    ) -> Result<(), BackendError> {
        let legacy = self
            .legacy_upload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&handle.backend_ref);
        if !legacy {
            let resp = self
                .toolbox(handle, reqwest::Method::POST, "/files/upload-v2")?
                .query(&[("path", path)])
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .timeout(self.request_timeout())
                .body(data.clone())
                .send()
                .await
                .map_err(Self::unreachable)?;
            if resp.status().is_success() {
                return Ok(());
            }
            match Self::toolbox_error(resp, path).await {
                // Uploads create parent directories: a 404 that is not "sandbox gone" means
                // the route is missing (a v0.190.0 daemon).
                BackendError::Agent { status: 404, .. } => {
                    self.legacy_upload
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(handle.backend_ref.clone());
                }
                e => return Err(e),
            }
        }
        // Every daemon generation takes multipart on `/files/upload` (field `file`).
        let (content_type, body) = remote::multipart_file("file", path, &data);
        let resp = self
            .toolbox(handle, reqwest::Method::POST, "/files/upload")?
            .query(&[("path", path)])
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .timeout(self.request_timeout())
            .body(body)
            .send()
            .await
            .map_err(Self::unreachable)?;
        if !resp.status().is_success() {
            return Err(Self::toolbox_error(resp, path).await);
        }
        Ok(())
    }

    async fn list_files(
        &self,
        handle: &SandboxHandle,
        path: &str,
    ) -> Result<Vec<FileEntry>, BackendError> {
        let resp = self
            .toolbox(handle, reqwest::Method::GET, "/files")?
            .query(&[("path", path)])
            .timeout(self.request_timeout())
            .send()
            .await
            .map_err(Self::unreachable)?;
        if !resp.status().is_success() {
            return Err(Self::toolbox_error(resp, path).await);
        }
        let list: Vec<FileInfo> = resp.json().await.map_err(|e| {
            BackendError::AgentUnreachable(format!("{PROVIDER} toolbox: bad FileInfo list: {e}"))
        })?;
        Ok(list
            .into_iter()
            .map(|f| FileEntry {
                name: f.name,
                size: f.size,
                is_dir: f.is_dir,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_quoted_for_the_toolbox_shell() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }

    #[test]
    fn wrapped_commands_run_under_bash_with_no_stdin_and_survive_any_quoting() {
        let cmd = "echo 'a b' \"$HOME\" `x`; read y\nexit 3";
        let w = wrap_command(cmd);
        assert!(w.starts_with("bash -c 'eval \"$(printf %s "), "{w}");
        assert!(w.ends_with(" | base64 -d)\"' < /dev/null"), "{w}");
        // The payload has no character any shell or the old quote-splitter would act on.
        let b64 = w.split(' ').nth(5).unwrap();
        assert!(
            b64.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        );
        use base64::Engine as _;
        let back = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(back, cmd.as_bytes());
    }

    #[test]
    fn lifetimes_round_up_to_whole_minutes() {
        assert_eq!(minutes(0), 1);
        assert_eq!(minutes(60), 1);
        assert_eq!(minutes(61), 2);
    }

    #[test]
    fn the_create_body_uses_the_published_field_names() {
        let env = BTreeMap::from([("A".to_string(), "b".to_string())]);
        let body = CreateSandbox {
            name: "airlock-sb-1".into(),
            snapshot: Some("snap"),
            target: None,
            env: &env,
            labels: BTreeMap::from([(SANDBOX_LABEL, "sb-1")]),
            auto_stop_interval: 2,
            auto_delete_interval: 0,
            ttl_minutes: 2,
            network_block_all: false,
            network_allow_list: Some("203.0.113.7/32".into()),
        };
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name":"airlock-sb-1","snapshot":"snap","env":{"A":"b"},"labels":{"airlock.sandbox":"sb-1"},
                "autoStopInterval":2,"autoDeleteInterval":0,"ttlMinutes":2,
                "networkBlockAll":false,"networkAllowList":"203.0.113.7/32"})
        );
    }
}
