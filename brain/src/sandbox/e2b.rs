//! The E2B backend: Firecracker microVMs created through E2B's REST API, commands run by the
//! in-VM daemon `envd` over Connect-RPC (no `sandbox-agent` inside).
//!
//! Wire formats follow E2B's published specs (e2b-dev/E2B @ b8029973, 2026-08-21):
//! - control plane `spec/openapi.yml`: `POST /sandboxes` (`NewSandbox` → 201 `Sandbox`),
//!   `GET /v2/sandboxes` (`ListedSandbox[]`, `metadata`/`state`/`limit`/`nextToken`, header
//!   `X-Next-Token`), `GET|DELETE /sandboxes/{sandboxID}`, `POST /sandboxes/{id}/timeout`,
//!   `POST /sandboxes/{id}/connect`; auth `X-API-Key`; errors `Error {code, message}`;
//! - envd `spec/envd/process/process.proto` (`process.Process/Start`: server stream of
//!   `StartResponse {event: ProcessEvent}` with `start{pid}`, `data{stdout|stderr}` (bytes =
//!   base64 in proto-JSON), `end{exitCode, exited, status, error}`, `keepalive{}`), Connect
//!   protocol with the JSON codec: every message is an envelope (1 flag byte, u32 big-endian
//!   length, JSON), the last one flagged `0x02` carries `{}` or `{"error":{code,message}}`;
//!   `Connect-Timeout-Ms` bounds the process's life (envd kills it at the deadline);
//! - envd `spec/envd/envd.yaml`: `GET /health` (204), `GET|POST /files?path=&username=`
//!   (raw `application/octet-stream` upload), `spec/envd/filesystem/filesystem.proto`
//!   `filesystem.Filesystem/ListDir` (unary Connect, `application/json`); auth
//!   `X-Access-Token: <envdAccessToken>` (the sandbox is created with `secure: true`).
//!
//! The envd address is `https://49983-{sandbox_id}.{domain}` (`sandbox.e2b.envd_url`); a
//! template without `{sandbox_id}` (a shared host such as `https://sandbox.e2b.app`, or a
//! local fake) routes by the `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers instead.
//!
//! Lifetime: the VM is created with `timeout` = the sandbox TTL plus a grace period, so E2B
//! kills it even if the brain never comes back; `metadata` carries `airlock.sandbox` and
//! `airlock.owner` so a restarted brain finds leftovers (`list_labelled`). CPU and memory come
//! from the template (E2B has no per-sandbox resource fields), so `resources` are not sent.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use airlock_wire::{ExecCollector, ExecEvent, ExecRequest, ExecResult, FileEntry};
use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::remote::{
    self, Attempt, Channel, OutputCap, ProviderError, RetryPolicy, control_plane_error,
    provider_error, sandbox_api_error, transport_error,
};
use super::{
    BackendError, BackendKind, ExecStream, LabelledSandbox, ListedSnapshot, OWNER_LABEL,
    SANDBOX_LABEL, SandboxBackend, SandboxHandle, SandboxSpec,
};

const PROVIDER: &str = "e2b";
/// envd's port inside every sandbox.
pub const ENVD_PORT: u16 = 49983;
/// Handle `extra` keys.
const EXTRA_ENVD_URL: &str = "e2b.envd_url";
const EXTRA_ACCESS_TOKEN: &str = "e2b.envd_access_token";
const EXTRA_HEADER_ROUTING: &str = "e2b.header_routing";
const EXTRA_ENVD_VERSION: &str = "e2b.envd_version";
/// The brain's end of the sandbox's TTL (unix seconds): a resume re-arms E2B's own timer to
/// what is left of it plus the grace, so a pause never extends the sandbox's life.
const EXTRA_EXPIRES_AT: &str = "e2b.expires_at";
/// The template the sandbox was started from, and the brain owner (for a snapshot's helper).
const EXTRA_TEMPLATE: &str = "e2b.template";
const EXTRA_OWNER: &str = "e2b.owner";
/// Where a snapshot's tar is staged in a sandbox (`/tmp`), named relative to the home
/// directory, the default cwd of a command, so the same command works wherever the home is.
const SNAPSHOT_TAR_FROM_HOME: &str = "../../tmp/.airlock-snapshot.tar";
const SNAPSHOT_TAR: &str = "/tmp/.airlock-snapshot.tar";
/// Longest a snapshot's `tar` (pack or unpack) may run.
const SNAPSHOT_TOOL_TIMEOUT_MS: u64 = 600_000;
/// Lifetime of a snapshot's helper sandbox (it is killed as soon as the snapshot is taken).
const SNAPSHOT_HELPER_TIMEOUT_S: u64 = 900;
/// envd from which a call may omit the user (the template's default user applies), and from
/// which `/files` takes a raw `application/octet-stream` body (js-sdk
/// e2b-dev/E2B@b8029973:packages/js-sdk/src/envd/versions.ts `ENVD_DEFAULT_USER`,
/// `ENVD_OCTET_STREAM_UPLOAD`).
const ENVD_DEFAULT_USER: (u64, u64, u64) = (0, 4, 0);
const ENVD_OCTET_STREAM_UPLOAD: (u64, u64, u64) = (0, 5, 7);
/// Largest envelope accepted from envd (a data event carries at most a pipe buffer or so).
const MAX_ENVELOPE: usize = 16 * 1024 * 1024;
/// Extra time past `Connect-Timeout-Ms` before the brain stops waiting for envd's own end.
const EXEC_GRACE: Duration = Duration::from_secs(10);
/// Connect envelope flag of the end-of-stream message.
const END_STREAM: u8 = 0x02;

/// `sandbox.e2b` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct E2bConfig {
    /// Control-plane base URL.
    pub api_url: String,
    /// Env var holding the API key (`e2b_…`), sent as `X-API-Key`.
    pub api_key_env: String,
    /// Template used when a request names no `image`.
    pub template: String,
    /// envd base URL; `{sandbox_id}` and `{domain}` are substituted. Without `{sandbox_id}`
    /// the sandbox is chosen by the `E2b-Sandbox-Id` header.
    pub envd_url: String,
    /// Domain when the create response carries none.
    pub domain: String,
    /// Unix user commands and files run as (`Authorization: Basic user:`). Unset = the
    /// template's default user (envd >= 0.4.0, which the SDK then leaves unnamed) or `user`
    /// for older envd, which needs one named.
    pub user: Option<String>,
    /// The vault proxy as the E2B cloud reaches it (`host:port`); the only egress allowed.
    pub proxy_url: Option<String>,
    /// Seconds added to the sandbox TTL for E2B's own `timeout` (the brain's reaper destroys
    /// first; E2B's timer is the backstop when the brain is gone).
    pub ttl_grace_seconds: u64,
    /// The team's longest sandbox lifetime: E2B refuses a `timeout` above it with 400
    /// (1 h on the base tier, 24 h on Pro). TTL + grace is clamped to it.
    pub max_timeout_seconds: u64,
    /// Bound on create + envd ready.
    pub ready_timeout_ms: u64,
    /// Read timeout of control-plane calls.
    pub request_timeout_ms: u64,
    /// Retries of idempotent calls on 429/5xx/transport errors.
    pub max_retries: u32,
    /// First backoff delay; doubles per retry (capped at 5 s).
    pub retry_base_ms: u64,
}

impl Default for E2bConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.e2b.app".into(),
            api_key_env: "E2B_API_KEY".into(),
            template: "base".into(),
            envd_url: format!("https://{ENVD_PORT}-{{sandbox_id}}.{{domain}}"),
            domain: "e2b.app".into(),
            user: None,
            proxy_url: None,
            ttl_grace_seconds: 300,
            max_timeout_seconds: 3600,
            ready_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
            max_retries: 3,
            retry_base_ms: 200,
        }
    }
}

/// `NewSandbox`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox<'a> {
    #[serde(rename = "templateID")]
    template_id: &'a str,
    timeout: i32,
    secure: bool,
    env_vars: &'a BTreeMap<String, String>,
    metadata: BTreeMap<&'static str, &'a str>,
    network: Network,
}

/// `SandboxNetworkConfig`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Network {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allow_out: Vec<String>,
    deny_out: Vec<String>,
}

/// `Sandbox` (create/connect response).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sandbox {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(default)]
    envd_access_token: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    /// Required in the schema; absent is treated as the oldest envd.
    #[serde(default)]
    envd_version: Option<String>,
}

/// `SnapshotInfo`.
#[derive(Debug, Deserialize)]
struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    snapshot_id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// The name (alias) a snapshot template of brain `owner` gets for snapshot `snapshot_id`:
/// `airlock-<owner>-<snapshot id>`, the owner reduced to `[a-z0-9]` so the `-` after it
/// ends it (no owner's marker is a prefix of another's). E2B aliases are `^[a-z0-9-_]+$`
/// (infra packages/shared/pkg/id `ParseName`). It is the ownership marker a restarted brain
/// lists templates by (`list_snapshots`), and makes a repeated create reuse the template
/// (`SandboxSnapshotRequest.name`: "If a snapshot template with this name already exists, a
/// new build will be assigned to the existing template").
fn snapshot_name(owner: &str, snapshot_id: &str) -> Result<String, BackendError> {
    let id = snapshot_id.to_ascii_lowercase();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(BackendError::Invalid(format!(
            "snapshot id {snapshot_id:?} is not a valid E2B template name"
        )));
    }
    Ok(format!("{}{id}", snapshot_prefix(owner)))
}

fn snapshot_prefix(owner: &str) -> String {
    let owner: String = owner
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect();
    format!("airlock-{owner}-")
}

/// `s` as one URL path segment: everything but unreserved characters and `:` percent-encoded.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The snapshot id a template name (`[namespace/]alias[:tag]`) of brain `owner` carries.
fn snapshot_of(owner: &str, name: &str) -> Option<String> {
    let name = name.split_once(':').map_or(name, |(n, _)| n);
    let alias = name.rsplit_once('/').map_or(name, |(_, a)| a);
    alias
        .strip_prefix(&snapshot_prefix(owner))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// `ListedSandbox` / `SandboxDetail` (the fields used).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Clone)]
pub struct E2bBackend {
    config: E2bConfig,
    api_url: String,
    api_key: String,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl std::fmt::Debug for E2bBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2bBackend")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

/// How one create attempt ended.
enum Created {
    Ok(Sandbox),
    /// Worth another attempt (after the provider's `Retry-After`, else the backoff).
    Retry(BackendError, Option<Duration>),
    Fail(BackendError),
}

impl E2bBackend {
    /// Reads the API key from `api_key_env`; nothing is contacted until first use.
    pub fn new(config: E2bConfig) -> Result<Self, BackendError> {
        let api_key = remote::api_key_from_env(PROVIDER, &config.api_key_env)?;
        Self::with_key(config, api_key)
    }

    pub fn with_key(config: E2bConfig, api_key: String) -> Result<Self, BackendError> {
        remote::validate_proxy_url(
            PROVIDER,
            "sandbox.e2b.proxy_url",
            config.proxy_url.as_deref(),
        )?;
        let http = remote::http_client()?;
        Ok(Self {
            api_url: config.api_url.trim_end_matches('/').to_string(),
            retry: RetryPolicy::new(config.max_retries, config.retry_base_ms),
            config,
            api_key,
            http,
        })
    }

    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .timeout(Duration::from_millis(self.config.request_timeout_ms))
            .header("X-API-Key", &self.api_key)
    }

    async fn create_once(&self, body: &NewSandbox<'_>, deadline: Instant) -> Created {
        let call = "POST /sandboxes";
        // A create may take as long as the whole ready budget (E2B answers once it runs).
        let send = self
            .api(reqwest::Method::POST, "/sandboxes")
            // The deadline below decides; this only lifts `api`'s per-call bound.
            .timeout(deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1))
            .json(body)
            .send();
        let resp = match tokio::time::timeout_at(deadline.into(), send).await {
            Err(_) => {
                return Created::Fail(BackendError::NotReady(format!(
                    "{PROVIDER}: {call} did not answer within {} ms",
                    self.config.ready_timeout_ms
                )));
            }
            Ok(Err(e)) => return Created::Retry(transport_error(PROVIDER, call, e), None),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status == StatusCode::CREATED || status == StatusCode::OK {
            return match resp.json::<Sandbox>().await {
                Ok(sb) => Created::Ok(sb),
                Err(e) => Created::Fail(BackendError::Unavailable(format!(
                    "{PROVIDER}: {call}: unreadable response: {e}"
                ))),
            };
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let e = provider_error(resp).await;
        if status == StatusCode::NOT_FOUND {
            // On create a 404 names what the request referred to (the template).
            return Created::Fail(BackendError::Invalid(format!(
                "{PROVIDER} {call} answered 404: {}",
                e.message
            )));
        }
        let err = control_plane_error(PROVIDER, call, e);
        if remote::retryable(status) {
            Created::Retry(err, retry_after.map(|s| Duration::from_secs(s.min(20))))
        } else {
            Created::Fail(err)
        }
    }

    /// Creates the sandbox, retrying without ever making two: before each retry the sandbox
    /// a failed attempt may have made anyway is looked up by its `airlock.sandbox` metadata
    /// and taken over with `POST /sandboxes/{id}/connect`.
    async fn create(
        &self,
        spec: &SandboxSpec,
        body: &NewSandbox<'_>,
    ) -> Result<Sandbox, BackendError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.ready_timeout_ms);
        let mut last = None;
        let mut wait = None;
        for attempt in 0..self.retry.attempts {
            if attempt > 0 {
                tokio::time::sleep(wait.unwrap_or_else(|| self.retry_delay(attempt - 1))).await;
                if let Some(found) = self.find(&spec.id).await? {
                    return self.connect(&found, body.timeout).await;
                }
            }
            match self.create_once(body, deadline).await {
                Created::Ok(sb) => return Ok(sb),
                Created::Fail(e) => return Err(e),
                Created::Retry(e, after) => {
                    tracing::debug!(sandbox = %spec.id, error = %e, "e2b create retried");
                    last = Some(e);
                    wait = after;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Unavailable(format!("{PROVIDER}: create failed"))))
    }

    fn retry_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(10);
        self.retry
            .base_delay
            .saturating_mul(factor)
            .min(self.retry.max_delay)
    }

    /// `POST /sandboxes/{id}/connect` (returns the access token of a running sandbox).
    async fn connect(&self, sandbox_id: &str, timeout: i32) -> Result<Sandbox, BackendError> {
        let call = "POST /sandboxes/{id}/connect";
        let path = format!("/sandboxes/{sandbox_id}/connect");
        let body = serde_json::json!({ "timeout": timeout });
        let resp = self
            .idempotent(call, || self.api(reqwest::Method::POST, &path).json(&body))
            .await?;
        match resp.status() {
            StatusCode::OK | StatusCode::CREATED => resp.json().await.map_err(|e| {
                BackendError::Unavailable(format!("{PROVIDER}: {call}: unreadable response: {e}"))
            }),
            _ => Err(control_plane_error(
                PROVIDER,
                call,
                provider_error(resp).await,
            )),
        }
    }

    /// An idempotent control-plane call with retries; non-2xx answers are returned as is.
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

    /// Every listed sandbox (running or paused), following `X-Next-Token`.
    async fn list_all(&self) -> Result<Vec<Listed>, BackendError> {
        self.list_paged(
            "GET /v2/sandboxes",
            "/v2/sandboxes",
            &[("state", "running,paused"), ("limit", "100")],
        )
        .await
    }

    /// Every item of a paged list (`X-Next-Token` → `nextToken`).
    async fn list_paged<T: serde::de::DeserializeOwned>(
        &self,
        call: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, BackendError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        // Bounded: a provider that keeps returning a token cannot loop the brain forever.
        for _ in 0..1000 {
            let resp = self
                .idempotent(call, || {
                    let mut q = query.to_vec();
                    if let Some(t) = &next {
                        q.push(("nextToken", t.as_str()));
                    }
                    self.api(reqwest::Method::GET, path).query(&q)
                })
                .await?;
            if resp.status() != StatusCode::OK {
                return Err(control_plane_error(
                    PROVIDER,
                    call,
                    provider_error(resp).await,
                ));
            }
            next = resp
                .headers()
                .get("X-Next-Token")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string);
            let page: Vec<T> = resp.json().await.map_err(|e| {
                BackendError::Unavailable(format!("{PROVIDER}: {call}: unreadable response: {e}"))
            })?;
            out.extend(page);
            if next.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// The provider id of the sandbox labelled `airlock.sandbox=<id>`, if any.
    async fn find(&self, airlock_id: &str) -> Result<Option<String>, BackendError> {
        let call = "GET /v2/sandboxes";
        let filter = format!("{SANDBOX_LABEL}={airlock_id}");
        let resp = self
            .idempotent(call, || {
                self.api(reqwest::Method::GET, "/v2/sandboxes")
                    .query(&[("metadata", filter.as_str()), ("state", "running,paused")])
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(control_plane_error(
                PROVIDER,
                call,
                provider_error(resp).await,
            ));
        }
        let page: Vec<Listed> = resp.json().await.map_err(|e| {
            BackendError::Unavailable(format!("{PROVIDER}: {call}: unreadable response: {e}"))
        })?;
        Ok(page
            .into_iter()
            .find(|s| {
                s.metadata
                    .as_ref()
                    .and_then(|m| m.get(SANDBOX_LABEL))
                    .is_some_and(|v| v == airlock_id)
            })
            .map(|s| s.sandbox_id))
    }

    async fn kill(&self, sandbox_id: &str) -> Result<(), BackendError> {
        let call = "DELETE /sandboxes/{id}";
        let path = format!("/sandboxes/{sandbox_id}");
        let resp = self
            .idempotent(call, || self.api(reqwest::Method::DELETE, &path))
            .await;
        let err = match resp {
            Ok(resp) if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND => {
                return Ok(());
            }
            Ok(resp) => control_plane_error(PROVIDER, call, provider_error(resp).await),
            Err(e) => e,
        };
        // Second way to stop paying: let E2B's own timer kill it within a second.
        let timeout_path = format!("/sandboxes/{sandbox_id}/timeout");
        let body = serde_json::json!({ "timeout": 1 });
        match self
            .idempotent("POST /sandboxes/{id}/timeout", || {
                self.api(reqwest::Method::POST, &timeout_path).json(&body)
            })
            .await
        {
            Ok(resp) if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND => {
                tracing::warn!(sandbox = sandbox_id, error = %err,
                    "e2b kill failed; the sandbox's timeout was cut to 1 s instead");
                Ok(())
            }
            _ => Err(err),
        }
    }

    /// Destroys whatever carries `airlock.sandbox=<id>` (a failed provision's leftovers).
    async fn kill_labelled(&self, airlock_id: &str) {
        match self.find(airlock_id).await {
            Ok(Some(found)) => {
                if let Err(e) = self.kill(&found).await {
                    tracing::warn!(sandbox = airlock_id, error = %e, "e2b cleanup failed");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(sandbox = airlock_id, error = %e, "e2b cleanup lookup failed"),
        }
    }

    fn envd_base(&self, sandbox_id: &str, domain: Option<&str>) -> (String, bool) {
        let domain = domain
            .filter(|d| !d.is_empty())
            .unwrap_or(&self.config.domain);
        let template = &self.config.envd_url;
        let header_routing = !template.contains("{sandbox_id}");
        let url = template
            .replace("{sandbox_id}", sandbox_id)
            .replace("{domain}", domain);
        (url.trim_end_matches('/').to_string(), header_routing)
    }

    fn envd(&self, handle: &SandboxHandle) -> Result<Envd, BackendError> {
        let base = handle.extra.get(EXTRA_ENVD_URL).ok_or_else(|| {
            BackendError::Invalid(format!("sandbox {} has no envd address", handle.id))
        })?;
        Ok(Envd {
            http: self.http.clone(),
            base: base.clone(),
            sandbox_id: handle.backend_ref.clone(),
            token: handle.extra.get(EXTRA_ACCESS_TOKEN).cloned(),
            file_timeout: Duration::from_millis(self.config.request_timeout_ms),
            header_routing: handle.extra.contains_key(EXTRA_HEADER_ROUTING),
            version: parse_version(
                handle
                    .extra
                    .get(EXTRA_ENVD_VERSION)
                    .map(String::as_str)
                    .unwrap_or(""),
            ),
            user: self.config.user.clone(),
        })
    }

    /// Polls envd's `/health` until it answers 204.
    async fn wait_ready(&self, envd: &Envd, deadline: Instant) -> Result<(), BackendError> {
        let mut last;
        loop {
            let probe = envd
                .req(reqwest::Method::GET, "/health")
                .timeout(Duration::from_secs(5));
            match probe.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => last = format!("answered {}", resp.status()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(BackendError::NotReady(format!(
                    "{PROVIDER}: envd of {} not ready within {} ms ({last})",
                    envd.sandbox_id, self.config.ready_timeout_ms
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /sandboxes/{id}` → its `state` (`running`, `paused`); `None` when E2B does not
    /// know it.
    async fn state(&self, sandbox_id: &str) -> Result<Option<String>, BackendError> {
        let call = "GET /sandboxes/{id}";
        let path = format!("/sandboxes/{sandbox_id}");
        let resp = self
            .idempotent(call, || self.api(reqwest::Method::GET, &path))
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let listed: Listed = resp.json().await.map_err(|e| {
                    BackendError::Unavailable(format!(
                        "{PROVIDER}: {call}: unreadable response: {e}"
                    ))
                })?;
                Ok(Some(listed.state.unwrap_or_else(|| "running".into())))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(control_plane_error(
                PROVIDER,
                call,
                provider_error(resp).await,
            )),
        }
    }

    /// Runs `command` (cwd: the home directory) and fails unless it exits 0.
    async fn run_tool(&self, handle: &SandboxHandle, command: &str) -> Result<(), BackendError> {
        let req = ExecRequest {
            command: Some(command.to_string()),
            timeout_ms: Some(SNAPSHOT_TOOL_TIMEOUT_MS),
            max_output_bytes: Some(64 * 1024),
            ..ExecRequest::default()
        };
        let r = self.exec(handle, req).await?;
        if r.exit_code == Some(0) {
            return Ok(());
        }
        Err(BackendError::Unavailable(format!(
            "{PROVIDER}: `{command}` failed (exit {:?}{}): {}",
            r.exit_code,
            if r.timed_out { ", timed out" } else { "" },
            r.stderr.trim()
        )))
    }

    /// A helper sandbox for a snapshot: the source's template, no env at all (no grant, no
    /// stub, no proxy), no egress, labelled like a sandbox (`airlock.sandbox=<helper id>`) so
    /// a brain that dies meanwhile sweeps it at its next start.
    async fn helper(
        &self,
        helper_id: &str,
        template: &str,
        owner: &str,
    ) -> Result<SandboxHandle, BackendError> {
        let spec = SandboxSpec {
            id: helper_id.to_string(),
            owner: owner.to_string(),
            image: Some(template.to_string()),
            resources: Default::default(),
            env: BTreeMap::new(),
            files: Vec::new(),
            agent_token: String::new(),
            ttl_s: SNAPSHOT_HELPER_TIMEOUT_S,
            workspace: None,
            cache_tenant: None,
        };
        let env = BTreeMap::new();
        let body = NewSandbox {
            template_id: template,
            timeout: SNAPSHOT_HELPER_TIMEOUT_S.min(self.config.max_timeout_seconds) as i32,
            secure: true,
            env_vars: &env,
            metadata: BTreeMap::from([(SANDBOX_LABEL, helper_id), (OWNER_LABEL, owner)]),
            network: Network {
                allow_out: Vec::new(),
                deny_out: vec!["0.0.0.0/0".into()],
            },
        };
        let deadline = Instant::now() + Duration::from_millis(self.config.ready_timeout_ms);
        let sb = match self.create(&spec, &body).await {
            Ok(sb) => sb,
            Err(e) => {
                self.kill_labelled(helper_id).await;
                return Err(e);
            }
        };
        match self.finish_provision(&spec, &sb, deadline).await {
            Ok(h) => Ok(h),
            Err(e) => {
                let _ = self.kill(&sb.sandbox_id).await;
                Err(e)
            }
        }
    }

    /// Unpacks `tar` into the helper's home and snapshots it under `name`: `POST
    /// /sandboxes/{id}/snapshots {name}` → `201 SnapshotInfo {snapshotID, names}`
    /// (spec/openapi.yml; infra handlers/snapshot_template_create.go: `<namespace>/<alias>:
    /// default` for a name, 400 for an invalid name or envd < 0.5.0, 409 while the sandbox
    /// changes state, 503 when its node is busy).
    async fn snapshot_helper(
        &self,
        helper: &SandboxHandle,
        tar: Bytes,
        name: &str,
    ) -> Result<String, BackendError> {
        self.envd(helper)?.write_file(SNAPSHOT_TAR, tar).await?;
        self.run_tool(
            helper,
            &format!(
                "tar --no-same-owner -xf {SNAPSHOT_TAR_FROM_HOME} && rm -f {SNAPSHOT_TAR_FROM_HOME}"
            ),
        )
        .await?;
        let call = "POST /sandboxes/{id}/snapshots";
        let path = format!("/sandboxes/{}/snapshots", helper.backend_ref);
        // Not retried: a lost answer leaves a template under `name`, which the brain's
        // snapshot record (pending until this returns) lets `discard_snapshot` remove.
        let resp = self
            .api(reqwest::Method::POST, &path)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .map_err(|e| transport_error(PROVIDER, call, e))?;
        if resp.status() != StatusCode::CREATED {
            return Err(control_plane_error(
                PROVIDER,
                call,
                provider_error(resp).await,
            ));
        }
        let info: SnapshotInfo = resp.json().await.map_err(|e| {
            BackendError::Unavailable(format!("{PROVIDER}: {call}: unreadable response: {e}"))
        })?;
        Ok(info.snapshot_id)
    }

    /// The `timeout` for a resume: what is left of the TTL plus the grace, within E2B's cap.
    fn resume_timeout(&self, handle: &SandboxHandle) -> i32 {
        let left = handle
            .extra
            .get(EXTRA_EXPIRES_AT)
            .and_then(|t| t.parse::<i64>().ok())
            .map_or(0, |end| (end - chrono::Utc::now().timestamp()).max(0));
        let wanted = u64::try_from(left)
            .unwrap_or(0)
            .saturating_add(self.config.ttl_grace_seconds);
        wanted
            .min(self.config.max_timeout_seconds)
            .min(i32::MAX as u64) as i32
    }

    async fn finish_provision(
        &self,
        spec: &SandboxSpec,
        sb: &Sandbox,
        deadline: Instant,
    ) -> Result<SandboxHandle, BackendError> {
        let (base, header_routing) = self.envd_base(&sb.sandbox_id, sb.domain.as_deref());
        let mut extra = BTreeMap::from([(EXTRA_ENVD_URL.to_string(), base)]);
        if let Some(token) = &sb.envd_access_token {
            extra.insert(EXTRA_ACCESS_TOKEN.into(), token.clone());
        }
        if header_routing {
            extra.insert(EXTRA_HEADER_ROUTING.into(), "1".into());
        }
        if let Some(v) = &sb.envd_version {
            extra.insert(EXTRA_ENVD_VERSION.into(), v.clone());
        }
        let expires_at = chrono::Utc::now()
            .timestamp()
            .saturating_add(i64::try_from(spec.ttl_s).unwrap_or(i64::MAX / 2));
        extra.insert(EXTRA_EXPIRES_AT.into(), expires_at.to_string());
        let template = spec.image.as_deref().unwrap_or(&self.config.template);
        extra.insert(EXTRA_TEMPLATE.into(), template.to_string());
        extra.insert(EXTRA_OWNER.into(), spec.owner.clone());
        let handle = SandboxHandle {
            id: spec.id.clone(),
            backend: BackendKind::E2b,
            backend_ref: sb.sandbox_id.clone(),
            agent_url: None,
            agent_token: String::new(),
            extra,
        };
        let envd = self.envd(&handle)?;
        self.wait_ready(&envd, deadline).await?;
        // The CA must be in place before any command can use the proxy.
        for (path, data) in &spec.files {
            envd.write_file(path, data.clone()).await?;
        }
        Ok(handle)
    }
}

#[async_trait]
impl SandboxBackend for E2bBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::E2b
    }

    async fn provision(&self, spec: &SandboxSpec) -> Result<SandboxHandle, BackendError> {
        let egress = remote::remote_egress(
            PROVIDER,
            "sandbox.e2b.proxy_url",
            self.config.proxy_url.as_deref(),
            usize::MAX,
            spec,
        )
        .await?;
        let template = spec.image.as_deref().unwrap_or(&self.config.template);
        let wanted = spec.ttl_s.saturating_add(self.config.ttl_grace_seconds);
        let timeout = wanted
            .min(self.config.max_timeout_seconds)
            .min(i32::MAX as u64) as i32;
        if wanted > timeout as u64 {
            // E2B refuses a timeout above the team's cap; the brain's reaper still destroys
            // at TTL, but E2B's own backstop timer is shorter than TTL + grace.
            tracing::info!(sandbox = %spec.id, wanted, clamped = timeout,
                "e2b: lifetime clamped to sandbox.e2b.max_timeout_seconds (the team's cap)");
        }
        let body = NewSandbox {
            template_id: template,
            timeout,
            secure: true,
            env_vars: &egress.env,
            metadata: BTreeMap::from([
                (SANDBOX_LABEL, spec.id.as_str()),
                (OWNER_LABEL, spec.owner.as_str()),
            ]),
            network: Network {
                allow_out: egress.allow_cidrs,
                deny_out: vec!["0.0.0.0/0".into()],
            },
        };
        let deadline = Instant::now() + Duration::from_millis(self.config.ready_timeout_ms);
        let sb = match self.create(spec, &body).await {
            Ok(sb) => sb,
            Err(e) => {
                self.kill_labelled(&spec.id).await;
                if matches!(e, BackendError::NotReady(_)) {
                    late_cleanup(self.clone(), spec.id.clone());
                }
                return Err(e);
            }
        };
        match self.finish_provision(spec, &sb, deadline).await {
            Ok(handle) => Ok(handle),
            Err(e) => {
                if let Err(kill) = self.kill(&sb.sandbox_id).await {
                    tracing::warn!(sandbox = %spec.id, error = %kill, "e2b: destroying a failed provision failed");
                }
                Err(e)
            }
        }
    }

    async fn destroy(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        self.kill(&handle.backend_ref).await
    }

    async fn destroy_labelled(&self, found: &LabelledSandbox) -> Result<(), BackendError> {
        self.kill(&found.backend_ref).await
    }

    async fn list_labelled(&self) -> Result<Vec<LabelledSandbox>, BackendError> {
        Ok(self
            .list_all()
            .await?
            .into_iter()
            .filter_map(|s| {
                let meta = s.metadata?;
                Some(LabelledSandbox {
                    id: meta.get(SANDBOX_LABEL)?.clone(),
                    owner: meta.get(OWNER_LABEL).cloned(),
                    backend_ref: s.sandbox_id,
                })
            })
            .collect())
    }

    async fn is_alive(&self, handle: &SandboxHandle) -> bool {
        let path = format!("/sandboxes/{}", handle.backend_ref);
        match self
            .idempotent("GET /sandboxes/{id}", || {
                self.api(reqwest::Method::GET, &path)
            })
            .await
        {
            Ok(resp) if resp.status() == StatusCode::OK => resp
                .json::<Listed>()
                .await
                // A paused sandbox is alive: a restarted brain adopts it (resume brings it
                // back); the reaper still destroys it at its TTL.
                .is_ok_and(|s| matches!(s.state.as_deref(), Some("running" | "paused"))),
            _ => false,
        }
    }

    /// `POST /sandboxes/{id}/pause` with a memory snapshot (`SandboxPauseRequest {memory:
    /// true}`): E2B keeps memory and processes, envd stops answering until a resume. A `409`
    /// for a sandbox that is already paused (a retried pause whose first answer was lost, or
    /// a second pause) counts as done (infra `handlers/sandbox_pause.go`: 409 "already
    /// paused", 409 while in another transition, 404 unknown).
    async fn pause(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        let call = "POST /sandboxes/{id}/pause";
        let path = format!("/sandboxes/{}/pause", handle.backend_ref);
        let body = serde_json::json!({ "memory": true });
        let resp = self
            .idempotent(call, || self.api(reqwest::Method::POST, &path).json(&body))
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let err = provider_error(resp).await;
        if status == StatusCode::CONFLICT {
            if self.state(&handle.backend_ref).await?.as_deref() == Some("paused") {
                return Ok(());
            }
            return Err(BackendError::Conflict(format!(
                "{PROVIDER} {call} answered 409: {}",
                err.message
            )));
        }
        Err(control_plane_error(PROVIDER, call, err))
    }

    /// `POST /sandboxes/{id}/connect` (resumes a paused sandbox: `201`; a running one: `200`)
    /// with `timeout` = what is left of the TTL plus the grace (the TTL kept counting while
    /// paused), then waits for envd. The envd access token is derived from the sandbox id
    /// (infra `handlers/sandbox_get.go` `GenerateEnvdAccessToken(sandboxID)`), so the handle
    /// stays valid.
    async fn resume(&self, handle: &SandboxHandle) -> Result<(), BackendError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.ready_timeout_ms);
        let sb = self
            .connect(&handle.backend_ref, self.resume_timeout(handle))
            .await?;
        if let (Some(new), Some(old)) = (
            sb.envd_access_token.as_deref(),
            handle.extra.get(EXTRA_ACCESS_TOKEN),
        ) && new != old
        {
            return Err(BackendError::Unavailable(format!(
                "{PROVIDER}: sandbox {} came back with another envd access token",
                handle.id
            )));
        }
        self.wait_ready(&self.envd(handle)?, deadline).await
    }

    /// An E2B snapshot template holding the sandbox's home directory (the workspace: the
    /// default cwd), with no grant. E2B snapshots capture memory too, and a sandbox's memory
    /// holds its env (envd keeps `envVars`; processes keep theirs): snapshotting the sandbox
    /// itself would capture its proxy token and stubs. So the home is packed by the sandbox's
    /// own `tar`, read through envd, refused if it holds any part of the grant
    /// (`ensure_no_grant`), unpacked in a helper sandbox of the same template created with
    /// no env and no egress, and the *helper* is snapshotted, then killed.
    async fn snapshot(
        &self,
        handle: &SandboxHandle,
        snapshot_id: &str,
    ) -> Result<super::StoredSnapshot, BackendError> {
        let (Some(template), Some(owner)) = (
            handle.extra.get(EXTRA_TEMPLATE).cloned(),
            handle.extra.get(EXTRA_OWNER).cloned(),
        ) else {
            return Err(BackendError::Invalid(format!(
                "sandbox {} was provisioned before E2B snapshots were supported",
                handle.id
            )));
        };
        let name = snapshot_name(&owner, snapshot_id)?;
        self.run_tool(
            handle,
            &format!("mkdir -p ../../tmp && tar -cf {SNAPSHOT_TAR_FROM_HOME} ."),
        )
        .await?;
        let envd = self.envd(handle)?;
        let tar = envd.read_file(SNAPSHOT_TAR).await;
        let _ = self
            .run_tool(handle, &format!("rm -f {SNAPSHOT_TAR_FROM_HOME}"))
            .await;
        let tar = tar?;
        super::ensure_no_grant(handle, &tar)?;
        let size_bytes = tar.len() as u64;
        let helper = self
            .helper(&format!("{snapshot_id}-helper"), &template, &owner)
            .await?;
        let taken = self.snapshot_helper(&helper, tar, &name).await;
        if let Err(e) = self.kill(&helper.backend_ref).await {
            tracing::warn!(snapshot = snapshot_id, error = %e, "e2b: killing the snapshot helper failed");
        }
        Ok(super::StoredSnapshot {
            backend_ref: taken?,
            size_bytes,
        })
    }

    /// Nothing to copy: the sandbox was started from the snapshot template (the request's
    /// image is the snapshot, see `snapshot_is_image`). Refuses a sandbox of another template.
    async fn restore_snapshot(
        &self,
        handle: &SandboxHandle,
        backend_ref: &str,
    ) -> Result<(), BackendError> {
        match handle.extra.get(EXTRA_TEMPLATE) {
            Some(t) if t == backend_ref => Ok(()),
            other => Err(BackendError::Invalid(format!(
                "sandbox {} was started from template {:?}, not snapshot {backend_ref}",
                handle.id, other
            ))),
        }
    }

    fn snapshot_is_image(&self) -> bool {
        true
    }

    /// `DELETE /templates/{templateID}` with the snapshot id, as the SDK's `deleteSnapshot`
    /// does (204; 404 = already gone; 400 while sandboxes still use it). The id of a named
    /// snapshot holds a `/` (`<team>/<alias>:default`): one path segment, percent-encoded as
    /// the SDK's client does (`encodeURIComponent`).
    async fn delete_snapshot(&self, backend_ref: &str) -> Result<(), BackendError> {
        let call = "DELETE /templates/{templateID}";
        let path = format!("/templates/{}", path_segment(backend_ref));
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

    /// `GET /snapshots` (spec/openapi.yml "List snapshots"; infra
    /// handlers/snapshot_template_list.go: the team's snapshot templates as `SnapshotInfo`,
    /// `limit` ≤ 100, `X-Next-Token` paging), keeping those named with `owner`'s marker.
    async fn list_snapshots(&self, owner: &str) -> Result<Vec<ListedSnapshot>, BackendError> {
        let all: Vec<SnapshotInfo> = self
            .list_paged("GET /snapshots", "/snapshots", &[("limit", "100")])
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|info| {
                let snapshot_id = std::iter::once(&info.snapshot_id)
                    .chain(&info.names)
                    .find_map(|n| snapshot_of(owner, n))?;
                Some(ListedSnapshot {
                    snapshot_id,
                    backend_ref: info.snapshot_id,
                })
            })
            .collect())
    }

    /// Kills the snapshot's helper sandbox if it is still there, and deletes the template
    /// by its name (a bare alias resolves in the team's namespace: infra handlers/auth.go
    /// `resolveTemplateAndTeam`; 404 = never made).
    async fn discard_snapshot(&self, owner: &str, snapshot_id: &str) -> Result<(), BackendError> {
        if let Some(helper) = self.find(&format!("{snapshot_id}-helper")).await? {
            self.kill(&helper).await?;
        }
        self.delete_snapshot(&snapshot_name(owner, snapshot_id)?)
            .await
    }

    async fn exec(
        &self,
        handle: &SandboxHandle,
        req: ExecRequest,
    ) -> Result<ExecResult, BackendError> {
        let mut events = self.exec_stream(handle, req).await?;
        let mut collector = ExecCollector::default();
        while let Some(event) = events.next().await {
            collector.push(event?);
        }
        collector.finish().ok_or_else(|| {
            BackendError::AgentUnreachable(format!("{PROVIDER}: exec stream ended without an exit"))
        })
    }

    async fn exec_stream(
        &self,
        handle: &SandboxHandle,
        req: ExecRequest,
    ) -> Result<ExecStream, BackendError> {
        self.envd(handle)?.start(req).await
    }

    async fn read_file(&self, handle: &SandboxHandle, path: &str) -> Result<Bytes, BackendError> {
        self.envd(handle)?.read_file(path).await
    }

    async fn write_file(
        &self,
        handle: &SandboxHandle,
        path: &str,
        data: Bytes,
    ) -> Result<(), BackendError> {
        self.envd(handle)?.write_file(path, data).await
    }

    async fn list_files(
        &self,
        handle: &SandboxHandle,
        path: &str,
    ) -> Result<Vec<FileEntry>, BackendError> {
        self.envd(handle)?.list_dir(path).await
    }
}

/// A create that timed out may still complete at E2B after the brain stopped waiting; look
/// for it a while longer and kill it, so a failed provision leaves nothing running.
fn late_cleanup(backend: E2bBackend, airlock_id: String) {
    tokio::spawn(async move {
        let window = Duration::from_millis(backend.config.ready_timeout_ms.saturating_mul(2))
            .max(Duration::from_secs(30));
        let until = Instant::now() + window;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(Some(found)) = backend.find(&airlock_id).await {
                match backend.kill(&found).await {
                    Ok(()) => {
                        tracing::info!(sandbox = %airlock_id, "e2b: killed a sandbox whose create had timed out")
                    }
                    Err(e) => {
                        tracing::warn!(sandbox = %airlock_id, error = %e, "e2b: late cleanup failed")
                    }
                }
                return;
            }
        }
    });
}

/// A client for one sandbox's envd.
struct Envd {
    http: reqwest::Client,
    base: String,
    sandbox_id: String,
    token: Option<String>,
    header_routing: bool,
    /// `(major, minor, patch)` of the sandbox's envd (`0.0.0` when unknown).
    version: (u64, u64, u64),
    /// The configured user, if any.
    user: Option<String>,
    /// Bound on one file or health call (exec has its own deadline).
    file_timeout: Duration,
}

impl Envd {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.header("X-Access-Token", t);
        }
        if self.header_routing {
            r = r
                .header("E2b-Sandbox-Id", &self.sandbox_id)
                .header("E2b-Sandbox-Port", ENVD_PORT.to_string());
        }
        match self.user() {
            Some(user) => {
                let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
                r.header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"))
            }
            None => r,
        }
    }

    /// The user to name: the configured one, else `user` for envd < 0.4.0 (which has no
    /// default), else none (the SDK omits it, envd picks the template's default user).
    fn user(&self) -> Option<&str> {
        match &self.user {
            Some(u) => Some(u),
            None if self.version < ENVD_DEFAULT_USER => Some("user"),
            None => None,
        }
    }

    /// `?path=` plus `username=` when a user is named.
    fn file_query<'a>(&'a self, path: &'a str) -> Vec<(&'static str, &'a str)> {
        let mut q = vec![("path", path)];
        if let Some(u) = self.user() {
            q.push(("username", u));
        }
        q
    }

    async fn read_file(&self, path: &str) -> Result<Bytes, BackendError> {
        let resp = self
            .req(reqwest::Method::GET, "/files")
            .query(&self.file_query(path))
            .timeout(self.file_timeout)
            .send()
            .await
            .map_err(|e| BackendError::AgentUnreachable(format!("{PROVIDER} envd: {e}")))?;
        if !resp.status().is_success() {
            return Err(envd_error(provider_error(resp).await));
        }
        resp.bytes()
            .await
            .map_err(|e| BackendError::AgentUnreachable(format!("{PROVIDER} envd: {e}")))
    }

    async fn write_file(&self, path: &str, data: Bytes) -> Result<(), BackendError> {
        // Raw bodies need envd >= 0.5.7; older templates take multipart only.
        let (content_type, body) = if self.version >= ENVD_OCTET_STREAM_UPLOAD {
            ("application/octet-stream".to_string(), data)
        } else {
            remote::multipart_file("file", path, &data)
        };
        let resp = self
            .req(reqwest::Method::POST, "/files")
            .query(&self.file_query(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .timeout(self.file_timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| BackendError::AgentUnreachable(format!("{PROVIDER} envd: {e}")))?;
        if !resp.status().is_success() {
            return Err(envd_error(provider_error(resp).await));
        }
        Ok(())
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<FileEntry>, BackendError> {
        #[derive(Deserialize)]
        struct ListDirResponse {
            #[serde(default)]
            entries: Vec<EntryInfo>,
        }
        #[derive(Deserialize)]
        struct EntryInfo {
            name: String,
            #[serde(default, rename = "type")]
            kind: Option<String>,
            /// int64 is a JSON string in proto3-JSON; accept a number too.
            #[serde(default)]
            size: Option<serde_json::Value>,
        }
        let resp = self
            .req(reqwest::Method::POST, "/filesystem.Filesystem/ListDir")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Connect-Protocol-Version", "1")
            .json(&serde_json::json!({ "path": path, "depth": 1 }))
            .timeout(self.file_timeout)
            .send()
            .await
            .map_err(|e| BackendError::AgentUnreachable(format!("{PROVIDER} envd: {e}")))?;
        if !resp.status().is_success() {
            return Err(envd_error(provider_error(resp).await));
        }
        let body: ListDirResponse = resp
            .json()
            .await
            .map_err(|e| BackendError::AgentUnreachable(format!("{PROVIDER} envd ListDir: {e}")))?;
        Ok(body
            .entries
            .into_iter()
            .map(|e| FileEntry {
                is_dir: e.kind.as_deref() == Some("FILE_TYPE_DIRECTORY"),
                size: match e.size {
                    Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
                    Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
                    _ => 0,
                },
                name: e.name,
            })
            .collect())
    }

    /// `process.Process/Start` as a stream of exec events.
    async fn start(&self, req: ExecRequest) -> Result<ExecStream, BackendError> {
        if req.stdin.is_some() {
            return Err(BackendError::Invalid(format!(
                "{PROVIDER}: exec stdin is not supported"
            )));
        }
        let (cmd, args) = match (req.command, req.argv) {
            (Some(command), None) => (
                "/bin/bash".to_string(),
                vec!["-l".into(), "-c".into(), command],
            ),
            (None, Some(mut argv)) if !argv.is_empty() => {
                let cmd = argv.remove(0);
                (cmd, argv)
            }
            _ => {
                return Err(BackendError::Invalid(
                    "exactly one of command or a non-empty argv is required".into(),
                ));
            }
        };
        let mut process = serde_json::json!({
            "cmd": cmd,
            "args": args,
            "envs": req.env.unwrap_or_default(),
        });
        if let Some(cwd) = req.cwd {
            process["cwd"] = cwd.into();
        }
        let message =
            serde_json::to_vec(&serde_json::json!({ "process": process, "stdin": false }))
                .map_err(|e| BackendError::Invalid(e.to_string()))?;
        let mut r = self
            .req(reqwest::Method::POST, "/process.Process/Start")
            .header(reqwest::header::CONTENT_TYPE, "application/connect+json")
            .header("Connect-Protocol-Version", "1")
            .header("Connect-Content-Encoding", "identity")
            .header("Connect-Accept-Encoding", "identity")
            .body(envelope(0, &message));
        let timeout = req.timeout_ms.filter(|t| *t > 0).map(Duration::from_millis);
        if let Some(t) = timeout {
            r = r.header("Connect-Timeout-Ms", t.as_millis().to_string());
        }
        let started = Instant::now();
        let deadline = timeout.map(|t| tokio::time::Instant::from_std(started + t + EXEC_GRACE));
        let send = r.send();
        let resp = match deadline {
            Some(d) => tokio::time::timeout_at(d, send).await.map_err(|_| {
                BackendError::AgentUnreachable(format!("{PROVIDER} envd: Start did not answer"))
            })?,
            None => send.await,
        }
        .map_err(|e| BackendError::AgentUnreachable(format!("{PROVIDER} envd: {e}")))?;
        if !resp.status().is_success() {
            return Err(envd_error(provider_error(resp).await));
        }
        let cap = OutputCap::new(req.max_output_bytes.unwrap_or(u64::MAX));
        let state = StreamState {
            body: Box::pin(resp.bytes_stream()),
            decoder: Decoder::new(cap, started),
            pending: VecDeque::new(),
            deadline,
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(state, next_event)))
    }
}

type BodyStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>;

struct StreamState {
    body: BodyStream,
    decoder: Decoder,
    pending: VecDeque<ExecEvent>,
    deadline: Option<tokio::time::Instant>,
    done: bool,
}

async fn next_event(mut s: StreamState) -> Option<(Result<ExecEvent, BackendError>, StreamState)> {
    loop {
        if let Some(event) = s.pending.pop_front() {
            return Some((Ok(event), s));
        }
        if s.done {
            return None;
        }
        let chunk = match s.deadline {
            Some(d) => match tokio::time::timeout_at(d, s.body.next()).await {
                Ok(c) => c,
                Err(_) => {
                    // envd did not end the stream at the deadline: report it as timed out.
                    s.done = true;
                    s.pending.extend(s.decoder.abandon());
                    continue;
                }
            },
            None => s.body.next().await,
        };
        match chunk {
            Some(Ok(bytes)) => match s.decoder.feed(&bytes, &mut s.pending) {
                Ok(finished) => s.done = finished,
                Err(e) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
            },
            Some(Err(e)) => {
                s.done = true;
                return Some((
                    Err(BackendError::AgentUnreachable(format!(
                        "{PROVIDER} envd: {e}"
                    ))),
                    s,
                ));
            }
            None => {
                s.done = true;
                return Some((
                    Err(BackendError::AgentUnreachable(format!(
                        "{PROVIDER} envd: stream ended before its end-of-stream message"
                    ))),
                    s,
                ));
            }
        }
    }
}

/// One Connect envelope: flags, u32 big-endian length, payload.
pub fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `ProcessEvent` in proto-JSON.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessEvent {
    #[serde(default)]
    start: Option<serde_json::Value>,
    #[serde(default)]
    data: Option<DataEvent>,
    #[serde(default)]
    end: Option<EndEvent>,
    #[serde(default)]
    keepalive: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct DataEvent {
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
    #[serde(default)]
    pty: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndEvent {
    /// proto3-JSON omits zero values: a clean exit has no `exitCode`.
    #[serde(default)]
    exit_code: i32,
    #[serde(default)]
    exited: bool,
    #[serde(default)]
    status: String,
    #[serde(default)]
    error: Option<String>,
}

/// Turns envd's response bytes into exec events.
struct Decoder {
    buf: Vec<u8>,
    cap: OutputCap,
    started: Instant,
    end: Option<EndEvent>,
}

impl Decoder {
    fn new(cap: OutputCap, started: Instant) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            started,
            end: None,
        }
    }

    /// Consumes a chunk; pushes events; `Ok(true)` once the end-of-stream message was read.
    fn feed(&mut self, chunk: &[u8], out: &mut VecDeque<ExecEvent>) -> Result<bool, BackendError> {
        // Taken out so the payload slices can be read while `self` is updated.
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(chunk);
        let mut at = 0;
        let result = loop {
            let rest = &buf[at..];
            if rest.len() < 5 {
                break Ok(false);
            }
            let flags = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if len > MAX_ENVELOPE {
                break Err(protocol(format!("envelope of {len} bytes")));
            }
            if rest.len() < 5 + len {
                break Ok(false);
            }
            let payload = &rest[5..5 + len];
            at += 5 + len;
            if flags & END_STREAM != 0 {
                break self.end_of_stream(payload, out).map(|()| true);
            }
            if let Err(e) = self.message(payload, out) {
                break Err(e);
            }
        };
        buf.drain(..at);
        self.buf = buf;
        result
    }

    fn message(
        &mut self,
        payload: &[u8],
        out: &mut VecDeque<ExecEvent>,
    ) -> Result<(), BackendError> {
        #[derive(Deserialize)]
        struct StartResponse {
            event: Option<ProcessEvent>,
        }
        let msg: StartResponse = serde_json::from_slice(payload)
            .map_err(|e| protocol(format!("bad StartResponse: {e}")))?;
        let Some(event) = msg.event else {
            return Ok(());
        };
        if let Some(data) = event.data {
            let b64 = base64::engine::general_purpose::STANDARD;
            let (channel, text) = match (data.stdout, data.stderr, data.pty) {
                (Some(s), _, _) => (Channel::Stdout, s),
                (None, Some(s), _) => (Channel::Stderr, s),
                (None, None, Some(s)) => (Channel::Stdout, s),
                _ => return Ok(()),
            };
            let bytes = b64
                .decode(text.as_bytes())
                .map_err(|e| protocol(format!("data is not base64: {e}")))?;
            out.extend(self.cap.push(channel, &bytes));
        } else if let Some(end) = event.end {
            self.end = Some(end);
        } else if event.start.is_none() && event.keepalive.is_none() {
            tracing::debug!("e2b envd: unknown process event ignored");
        }
        Ok(())
    }

    fn end_of_stream(
        &mut self,
        payload: &[u8],
        out: &mut VecDeque<ExecEvent>,
    ) -> Result<(), BackendError> {
        #[derive(Deserialize)]
        struct EndStream {
            #[serde(default)]
            error: Option<ConnectError>,
        }
        #[derive(Deserialize)]
        struct ConnectError {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let trailer: EndStream = if payload.is_empty() {
            EndStream { error: None }
        } else {
            serde_json::from_slice(payload)
                .map_err(|e| protocol(format!("bad end-of-stream: {e}")))?
        };
        out.extend(self.cap.flush());
        let truncated = self.cap.truncated();
        let end = self.end.take();
        match (trailer.error, end) {
            (Some(err), _) if err.code == "deadline_exceeded" => {
                out.push_back(remote::exit_event(
                    None,
                    Some(9),
                    true,
                    truncated,
                    self.started,
                ));
                Ok(())
            }
            (Some(err), _) => Err(stream_error(err.code, err.message)),
            (None, Some(end)) => {
                let signal = signal_of(&end.status);
                let exit_code = (end.exited && signal.is_none()).then_some(end.exit_code);
                if let Some(e) = &end.error {
                    tracing::debug!(error = %e, "e2b envd: process end carried an error");
                }
                out.push_back(remote::exit_event(
                    exit_code,
                    signal,
                    false,
                    truncated,
                    self.started,
                ));
                Ok(())
            }
            (None, None) => Err(protocol("stream ended without an end event".into())),
        }
    }

    /// The brain gave up waiting past the deadline.
    fn abandon(&mut self) -> Vec<ExecEvent> {
        let mut out = self.cap.flush();
        out.push(remote::exit_event(
            None,
            None,
            true,
            self.cap.truncated(),
            self.started,
        ));
        out
    }
}

/// An error in Connect's end-of-stream message. connect-go sends a streaming handler's error
/// there, inside an HTTP 200, even when the call failed before it started (a bad `cwd` is
/// `invalid_argument`): the code, not the status line, says whose fault it is.
fn stream_error(code: String, message: String) -> BackendError {
    let message = format!("{PROVIDER} envd: {message}");
    match code.as_str() {
        "invalid_argument" | "failed_precondition" | "out_of_range" | "already_exists" => {
            BackendError::Invalid(message)
        }
        "not_found" => BackendError::Agent {
            status: 404,
            code,
            message,
        },
        "permission_denied" => BackendError::Agent {
            status: 403,
            code,
            message,
        },
        "unauthenticated" => BackendError::Unavailable(message),
        _ => BackendError::Agent {
            status: 502,
            code,
            message,
        },
    }
}

/// An envd (or edge) error answer. The edge answers a sandbox it cannot route — killed,
/// expired — with `{"sandboxId", "message": "The sandbox was not found", "code": 502}` (404
/// in later infra; both seen): that is `sandbox_lost`. envd's own 404s (a missing path:
/// "path not found", "directory not found", "… does not exist") are not.
fn envd_error(e: ProviderError) -> BackendError {
    let gone = matches!(e.status, 404 | 502)
        && (e.code == remote::SANDBOX_NOT_FOUND
            || (e.message.starts_with("The sandbox") && e.message.contains("not found")));
    sandbox_api_error(PROVIDER, e, gone)
}

/// `"0.5.7"` → `(0, 5, 7)`; suffixes ignored; unknown → `(0, 0, 0)` (the oldest, whose
/// behaviour every envd accepts).
fn parse_version(v: &str) -> (u64, u64, u64) {
    let core = v.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

fn protocol(message: String) -> BackendError {
    BackendError::AgentUnreachable(format!("{PROVIDER} envd protocol: {message}"))
}

/// The signal number in a Go `ProcessState.String()` (`"signal: killed"`).
fn signal_of(status: &str) -> Option<i32> {
    let name = status.strip_prefix("signal: ")?;
    Some(match name.trim() {
        "hangup" => 1,
        "interrupt" => 2,
        "quit" => 3,
        "aborted" => 6,
        "killed" => 9,
        "segmentation fault" => 11,
        "broken pipe" => 13,
        "alarm clock" => 14,
        "terminated" => 15,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8], cap: u64) -> (Result<bool, BackendError>, Vec<ExecEvent>) {
        let mut d = Decoder::new(OutputCap::new(cap), Instant::now());
        let mut out = VecDeque::new();
        // Fed one byte at a time: envelopes split across chunks must still decode.
        let mut last = Ok(false);
        for b in bytes {
            last = d.feed(std::slice::from_ref(b), &mut out);
            if !matches!(last, Ok(false)) {
                break;
            }
        }
        (last, out.into())
    }

    fn msg(v: serde_json::Value) -> Vec<u8> {
        envelope(0, &serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn a_start_stream_decodes_to_output_and_exit() {
        let mut wire = msg(serde_json::json!({"event":{"start":{"pid":7}}}));
        wire.extend(msg(serde_json::json!({"event":{"data":{"stdout":"aGk="}}})));
        wire.extend(msg(serde_json::json!({"event":{"keepalive":{}}})));
        wire.extend(msg(
            serde_json::json!({"event":{"data":{"stderr":"b29wcw=="}}}),
        ));
        wire.extend(msg(serde_json::json!({"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3"}}})));
        wire.extend(envelope(END_STREAM, b"{}"));
        let (r, events) = decode(&wire, 100);
        assert!(matches!(r, Ok(true)));
        assert_eq!(events[0], ExecEvent::Stdout { data: "hi".into() });
        assert_eq!(
            events[1],
            ExecEvent::Stderr {
                data: "oops".into()
            }
        );
        let ExecEvent::Exit(exit) = &events[2] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (exit.exit_code, exit.signal, exit.timed_out),
            (Some(3), None, false)
        );
    }

    #[test]
    fn zero_exit_code_is_omitted_and_signals_and_deadlines_are_mapped() {
        let mut wire =
            msg(serde_json::json!({"event":{"end":{"exited":true,"status":"exit status 0"}}}));
        wire.extend(envelope(END_STREAM, b"{}"));
        let (_, events) = decode(&wire, 10);
        assert!(matches!(&events[0], ExecEvent::Exit(e) if e.exit_code == Some(0)));

        let mut wire =
            msg(serde_json::json!({"event":{"end":{"exitCode":-1,"status":"signal: killed"}}}));
        wire.extend(envelope(END_STREAM, b"{}"));
        let (_, events) = decode(&wire, 10);
        assert!(
            matches!(&events[0], ExecEvent::Exit(e) if e.exit_code.is_none() && e.signal == Some(9))
        );

        let wire = envelope(
            END_STREAM,
            br#"{"error":{"code":"deadline_exceeded","message":"context deadline exceeded"}}"#,
        );
        let (_, events) = decode(&wire, 10);
        assert!(matches!(&events[0], ExecEvent::Exit(e) if e.timed_out));

        let wire = envelope(
            END_STREAM,
            br#"{"error":{"code":"internal","message":"boom"}}"#,
        );
        let (r, _) = decode(&wire, 10);
        assert!(r.unwrap_err().to_string().contains("boom"));
    }

    /// The template name carries the owner as its marker: listed back (with or without the
    /// team namespace and tag) it yields the snapshot id for that owner only, never for an
    /// owner whose marker is a prefix of it.
    #[test]
    fn snapshot_names_carry_the_owner_and_parse_back() {
        let owner = "brain-0123abcd";
        let name = snapshot_name(owner, "snap-9f").unwrap();
        assert_eq!(name, "airlock-brain0123abcd-snap-9f");
        for listed in [
            name.clone(),
            format!("team-slug/{name}"),
            format!("team-slug/{name}:default"),
        ] {
            assert_eq!(snapshot_of(owner, &listed).as_deref(), Some("snap-9f"));
        }
        assert_eq!(snapshot_of("brain-0123", &name), None);
        assert_eq!(snapshot_of(owner, "abc123:default"), None);
        assert_eq!(snapshot_of(owner, "airlock-brain0123abcd-"), None);
        assert!(snapshot_name(owner, "snap/../x").is_err());
        assert_eq!(
            path_segment("team/a-b_c.d:default"),
            "team%2Fa-b_c.d:default"
        );
    }

    #[test]
    fn output_beyond_the_cap_is_dropped_and_flagged() {
        let mut wire = msg(serde_json::json!({"event":{"data":{"stdout":"aGVsbG8gd29ybGQ="}}}));
        wire.extend(msg(serde_json::json!({"event":{"end":{"exited":true}}})));
        wire.extend(envelope(END_STREAM, b"{}"));
        let (_, events) = decode(&wire, 5);
        assert_eq!(
            events[0],
            ExecEvent::Stdout {
                data: "hello".into()
            }
        );
        assert!(matches!(&events[1], ExecEvent::Exit(e) if e.truncated));
    }

    #[test]
    fn envd_urls_are_derived_per_sandbox_or_routed_by_header() {
        let b = E2bBackend::with_key(E2bConfig::default(), "e2b_x".into()).unwrap();
        assert_eq!(
            b.envd_base("abc", None),
            ("https://49983-abc.e2b.app".to_string(), false)
        );
        assert_eq!(
            b.envd_base("abc", Some("eu.e2b.dev")).0,
            "https://49983-abc.eu.e2b.dev"
        );
        let b = E2bBackend::with_key(
            E2bConfig {
                envd_url: "http://127.0.0.1:9/".into(),
                ..E2bConfig::default()
            },
            "e2b_x".into(),
        )
        .unwrap();
        assert_eq!(
            b.envd_base("abc", None),
            ("http://127.0.0.1:9".to_string(), true)
        );
        assert!(!format!("{b:?}").contains("e2b_x"));
    }
}
