//! A local stand-in for Daytona (control-plane API + toolbox), following Daytona's published
//! OpenAPI specs field for field (daytona/clients @ d94a1281: `api-client-go/api/openapi.yaml`,
//! `toolbox-api-client-go/api/openapi.yaml`), so the brain's Daytona client is exercised
//! exactly as against the real service, by URL + key.
//!
//! - API (`api_url`, with the `/api` prefix): `POST /sandbox` (200 `Sandbox`, `state:
//!   creating` until the configured start delay passed, then `started`; or `error` with
//!   `errorReason`), `GET /sandbox` (`labels` JSON filter, `cursor`/`limit` → `{items,
//!   nextCursor}`), `GET|DELETE /sandbox/{id}`; Bearer auth (401 NestJS body); unknown
//!   properties → 400 with class-validator messages; injected 429 (`Retry-After`) / 5xx.
//! - toolbox (`toolboxProxyUrl` = `<toolbox listener>/toolbox`, per sandbox
//!   `…/toolbox/{id}`): `POST /process/execute` (runs the command for real with `bash -c`,
//!   stdout and stderr into one pipe as the daemon does; `timeout` kills the process group and
//!   answers 408), `GET /files/download`, `POST /files/upload-v2` (raw body), `GET /files`.
//!
//! Not a VM: each sandbox is a temp directory (paths map under it; home = `root/home/daytona`,
//! `AIRLOCK_FAKE_ROOT` names it). Sandboxes are destroyed when `ttlMinutes` passes; a "minute"
//! is configurable so tests need not wait for real ones.

// Early returns carry the provider's error response itself; these are test-only paths.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::fake_e2b::{hex, kill_groups, map_path_home, route_proxy_env, serve};
use crate::spec_schemas::{self, Body as Spec};

/// Checks `value` against the spec's schema for `body`, keeping any violation.
fn conform(shared: &Shared, body: Spec, value: &Value) {
    let errors = spec_schemas::check(body, value);
    shared.lock().spec_violations.extend(errors);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Create,
    List,
    Get,
    Delete,
}

/// What a recorded sandbox was created with.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    pub id: String,
    pub name: String,
    pub request: Value,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub network_block_all: bool,
    pub network_allow_list: Option<String>,
    pub root: PathBuf,
}

struct Sandbox {
    info: SandboxInfo,
    created: Instant,
    created_at: chrono::DateTime<chrono::Utc>,
    ready_at: Instant,
    fail_reason: Option<String>,
    ttl: Option<Duration>,
    groups: Vec<i32>,
}

#[derive(Default)]
struct Inner {
    sandboxes: BTreeMap<String, Sandbox>,
    failures: HashMap<Route, VecDeque<(u16, Option<u64>)>>,
    start_delay: Duration,
    fail_start: Option<String>,
    /// Creates that make the sandbox and then answer this status anyway (a lost response).
    lost_creates: VecDeque<u16>,
    creates: usize,
    deleted: Vec<String>,
    expired: Vec<String>,
    gets: usize,
    /// Act as the v0.190.0 daemon (the last public release): no `/files/upload-v2`, only the
    /// multipart `/files/upload`, and gin's bare `AbortWithError` answers (empty-body 404 for
    /// a missing file or directory).
    legacy_daemon: bool,
    /// How long a new sandbox stays invisible to `GET /sandbox` (the list is eventually
    /// consistent; `GET /sandbox/{idOrName}` is not).
    list_lag: Duration,
    /// Requests received and responses sent that break the spec's schemas.
    spec_violations: Vec<String>,
    /// The internet between the cloud and this host (`fake_e2b::route_proxy_env`).
    routes: Vec<(String, String)>,
}

struct Shared {
    api_key: String,
    toolbox_url: Mutex<String>,
    minute: Duration,
    inner: Mutex<Inner>,
    dir: tempfile::TempDir,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FakeDaytona {
    /// Base URL including `/api`.
    pub api_url: String,
    pub api_key: String,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeDaytona {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for sb in self.shared.lock().sandboxes.values_mut() {
            kill_groups(&mut sb.groups);
        }
    }
}

impl FakeDaytona {
    /// `minute` is how long one of Daytona's minutes lasts here (TTL tests shorten it).
    pub async fn start(minute: Duration) -> Self {
        let api_key = format!("dtn_{}", hex(40));
        let shared = Arc::new(Shared {
            api_key: api_key.clone(),
            toolbox_url: Mutex::new(String::new()),
            minute,
            inner: Mutex::new(Inner::default()),
            dir: tempfile::Builder::new()
                .prefix("fake-daytona-")
                .tempdir()
                .expect("temp dir"),
        });
        let api = Router::new()
            .route("/api/sandbox", post(create).get(list))
            .route("/api/sandbox/{id}", get(get_one).delete(delete))
            .with_state(shared.clone());
        let toolbox = Router::new()
            .route("/toolbox/{id}/process/execute", post(execute))
            .route("/toolbox/{id}/files", get(list_files))
            .route("/toolbox/{id}/files/download", get(download))
            .route("/toolbox/{id}/files/upload-v2", post(upload))
            .route("/toolbox/{id}/files/upload", post(upload))
            .with_state(shared.clone());
        let (api_addr, api_task) = serve(api).await;
        let (tb_addr, tb_task) = serve(toolbox).await;
        *shared.toolbox_url.lock().unwrap_or_else(|e| e.into_inner()) =
            format!("http://{tb_addr}/toolbox");
        let sweeper = tokio::spawn(expire_loop(shared.clone()));
        Self {
            api_url: format!("http://{api_addr}/api"),
            api_key,
            shared,
            tasks: vec![api_task, tb_task, sweeper],
        }
    }

    /// Every request or response so far that broke the spec's schemas (`spec_schemas`).
    pub fn spec_violations(&self) -> Vec<String> {
        self.shared.lock().spec_violations.clone()
    }

    /// Routes the public `host:port` a sandbox's proxy URL names to `local`
    /// (`fake_e2b::route_proxy_env`).
    pub fn route_public(&self, public: &str, local: std::net::SocketAddr) {
        self.shared
            .lock()
            .routes
            .push((public.to_string(), local.to_string()));
    }

    /// Serve files as the v0.190.0 daemon does (see `Inner::legacy_daemon`).
    pub fn set_legacy_daemon(&self, on: bool) {
        self.shared.lock().legacy_daemon = on;
    }

    /// New sandboxes show in `GET /sandbox` only after `lag`.
    pub fn set_list_lag(&self, lag: Duration) {
        self.shared.lock().list_lag = lag;
    }

    pub fn fail_next(&self, route: Route, status: u16, times: usize, retry_after: Option<u64>) {
        let mut inner = self.shared.lock();
        let q = inner.failures.entry(route).or_default();
        for _ in 0..times {
            q.push_back((status, retry_after));
        }
    }

    /// The next `times` creates make the sandbox but answer `status`.
    pub fn lose_next_creates(&self, status: u16, times: usize) {
        let mut inner = self.shared.lock();
        for _ in 0..times {
            inner.lost_creates.push_back(status);
        }
    }

    /// New sandboxes stay `creating` this long.
    pub fn set_start_delay(&self, d: Duration) {
        self.shared.lock().start_delay = d;
    }

    /// New sandboxes end in `error` with this reason instead of starting.
    pub fn set_fail_start(&self, reason: Option<&str>) {
        self.shared.lock().fail_start = reason.map(str::to_string);
    }

    pub fn sandboxes(&self) -> Vec<SandboxInfo> {
        self.shared
            .lock()
            .sandboxes
            .values()
            .map(|s| s.info.clone())
            .collect()
    }

    pub fn creates(&self) -> usize {
        self.shared.lock().creates
    }

    pub fn deleted(&self) -> Vec<String> {
        self.shared.lock().deleted.clone()
    }

    pub fn expired(&self) -> Vec<String> {
        self.shared.lock().expired.clone()
    }

    /// `GET /sandbox/{id}` calls answered (the readiness poll).
    pub fn gets(&self) -> usize {
        self.shared.lock().gets
    }

    pub fn file(&self, sandbox_id: &str, path: &str) -> Option<Vec<u8>> {
        let root = self
            .shared
            .lock()
            .sandboxes
            .get(sandbox_id)?
            .info
            .root
            .clone();
        std::fs::read(map_path_home(&root, "home/daytona", path)).ok()
    }
}

/// The API's NestJS error body.
fn api_error(status: StatusCode, path: &str, message: Value) -> Response {
    (
        status,
        axum::Json(json!({
            "path": path,
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "statusCode": status.as_u16(),
            "error": status.canonical_reason().unwrap_or(""),
            "message": message,
        })),
    )
        .into_response()
}

/// The toolbox daemon's `ErrorResponse`.
fn toolbox_error(
    status: StatusCode,
    method: &Method,
    path: &str,
    code: &str,
    message: &str,
) -> Response {
    (
        status,
        axum::Json(json!({
            "statusCode": status.as_u16(),
            "message": message,
            "code": code,
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "path": path,
            "method": method.as_str(),
            "source": "DAYTONA_DAEMON",
        })),
    )
        .into_response()
}

fn bearer_ok(shared: &Shared, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| k == shared.api_key)
}

fn gate(shared: &Shared, headers: &HeaderMap, uri: &Uri, route: Route) -> Result<(), Response> {
    if !bearer_ok(shared, headers) {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            uri.path(),
            json!("Unauthorized"),
        ));
    }
    let injected = shared
        .lock()
        .failures
        .get_mut(&route)
        .and_then(|q| q.pop_front());
    if let Some((status, retry_after)) = injected {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match status {
            StatusCode::TOO_MANY_REQUESTS => "ThrottlerException: Too Many Requests",
            _ => "Internal server error",
        };
        let mut resp = api_error(status, uri.path(), json!(message));
        if let Some(s) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, s.to_string().parse().expect("header"));
        }
        return Err(resp);
    }
    Ok(())
}

fn state_of(sb: &Sandbox) -> (&'static str, Option<&str>) {
    if Instant::now() < sb.ready_at {
        ("creating", None)
    } else if let Some(r) = &sb.fail_reason {
        ("error", Some(r.as_str()))
    } else {
        ("started", None)
    }
}

fn sandbox_json(sb: &Sandbox, toolbox_url: &str) -> Value {
    let (state, reason) = state_of(sb);
    let r = &sb.info.request;
    let mut v = json!({
        "id": sb.info.id,
        "organizationId": "org-fake",
        "name": sb.info.name,
        "snapshot": r.get("snapshot").cloned().unwrap_or_else(|| json!("daytonaio/sandbox:latest")),
        "user": "daytona",
        "env": sb.info.env,
        "labels": sb.info.labels,
        "public": false,
        "networkBlockAll": sb.info.network_block_all,
        "target": r.get("target").cloned().unwrap_or_else(|| json!("us")),
        "cpu": 1, "gpu": 0, "memory": 1, "disk": 3,
        "state": state,
        "desiredState": "started",
        "recoverable": false,
        "autoStopInterval": r.get("autoStopInterval").cloned().unwrap_or(json!(15)),
        "autoArchiveInterval": 10080,
        "autoDeleteInterval": r.get("autoDeleteInterval").cloned().unwrap_or(json!(-1)),
        "createdAt": sb.created_at.to_rfc3339(),
        "updatedAt": sb.created_at.to_rfc3339(),
        "sandboxClass": "container",
        "daemonVersion": "0.190.0",
        "toolboxProxyUrl": toolbox_url,
    });
    if let Some(list) = &sb.info.network_allow_list {
        v["networkAllowList"] = list.clone().into();
    }
    if let Some(reason) = reason {
        v["errorReason"] = reason.into();
    }
    if let Some(ttl) = r
        .get("ttlMinutes")
        .and_then(Value::as_i64)
        .filter(|t| *t > 0)
    {
        v["autoDestroyAt"] = (sb.created_at + chrono::Duration::minutes(ttl))
            .to_rfc3339()
            .into();
    }
    v
}

const CREATE_FIELDS: [&str; 26] = [
    "name",
    "snapshot",
    "user",
    "env",
    "labels",
    "public",
    "networkBlockAll",
    "networkAllowList",
    "domainAllowList",
    "outboundProxyUrl",
    "otelEndpointOverride",
    "target",
    "cpu",
    "gpu",
    "gpuType",
    "spot",
    "memory",
    "disk",
    "autoStopInterval",
    "autoPauseInterval",
    "autoArchiveInterval",
    "autoDeleteInterval",
    "ttlMinutes",
    "volumes",
    "buildInfo",
    "linkedSandbox",
];

/// class-validator messages for a `CreateSandbox` body (`forbidNonWhitelisted`).
fn validate_create(body: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(obj) = body.as_object() else {
        return vec!["body must be an object".into()];
    };
    for k in obj.keys() {
        if !CREATE_FIELDS.contains(&k.as_str()) && k != "secrets" {
            errors.push(format!("property {k} should not exist"));
        }
    }
    for k in ["env", "labels"] {
        if let Some(v) = obj.get(k)
            && !v
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string))
        {
            errors.push(format!("{k} must be an object of strings"));
        }
    }
    for k in [
        "autoStopInterval",
        "autoDeleteInterval",
        "autoArchiveInterval",
        "ttlMinutes",
        "cpu",
        "memory",
        "disk",
    ] {
        if let Some(v) = obj.get(k)
            && !v.is_i64()
        {
            errors.push(format!("{k} must be an integer number"));
        }
    }
    for k in ["networkBlockAll", "public"] {
        if let Some(v) = obj.get(k)
            && !v.is_boolean()
        {
            errors.push(format!("{k} must be a boolean value"));
        }
    }
    for k in ["snapshot", "networkAllowList", "target", "name"] {
        if let Some(v) = obj.get(k)
            && !v.is_string()
        {
            errors.push(format!("{k} must be a string"));
        }
    }
    if let Some(list) = obj.get("networkAllowList").and_then(Value::as_str)
        && let Err(e) = validate_network_allow_list(list)
    {
        errors.push(e);
    }
    if obj.contains_key("snapshot")
        && ["cpu", "gpu", "memory", "disk"]
            .iter()
            .any(|k| obj.contains_key(*k))
    {
        errors.push("Cannot specify Sandbox resources when using a snapshot".into());
    }
    errors
}

/// Daytona's `validateNetworkAllowList` (daytonaio/daytona@v0.190.0:
/// apps/api/src/sandbox/utils/network-validation.util.ts): comma-separated IPv4 CIDRs with a
/// prefix, empty entries skipped, at most 10; the first failure is reported, in its words.
pub fn validate_network_allow_list(list: &str) -> Result<(), String> {
    let networks: Vec<&str> = list.split(',').map(str::trim).collect();
    for network in networks.iter().filter(|n| !n.is_empty()) {
        let mut parts = network.split('/');
        let ip = parts.next().unwrap_or("");
        let prefix = parts.next();
        if parts.next().is_some() {
            return Err(format!(
                "Invalid network format: \"{network}\". Must be CIDR notation (e.g., 192.168.1.0/24)"
            ));
        }
        if ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(format!(
                "Invalid IP address: \"{ip}\" in network \"{network}\". Must be a valid IPv4 address"
            ));
        }
        let Some(prefix) = prefix.filter(|p| !p.is_empty()) else {
            return Err(format!(
                "Invalid network format: \"{network}\". Missing CIDR prefix length (e.g., /24)"
            ));
        };
        if !prefix.parse::<u8>().is_ok_and(|p| p <= 32) {
            return Err(format!(
                "Invalid CIDR prefix length: {network}. Prefix must be between 0 and 32"
            ));
        }
    }
    if networks.iter().filter(|n| !n.is_empty()).count() > 10 {
        return Err("Network allow list cannot contain more than 10 networks".into());
    }
    Ok(())
}

fn toolbox_url(shared: &Shared) -> String {
    shared
        .toolbox_url
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&shared, &headers, &uri, Route::Create) {
        return r;
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                uri.path(),
                json!(format!("Unexpected token in JSON: {e}")),
            );
        }
    };
    conform(&shared, Spec::DaytonaCreateSandbox, &body);
    let errors = validate_create(&body);
    if !errors.is_empty() {
        return api_error(StatusCode::BAD_REQUEST, uri.path(), json!(errors));
    }
    let strings = |k: &str| -> BTreeMap<String, String> {
        body.get(k)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let id = uuid_like();
    let root = shared.dir.path().join(&id);
    std::fs::create_dir_all(root.join("home/daytona")).expect("sandbox home");
    let mut inner = shared.lock();
    let ttl = body
        .get("ttlMinutes")
        .and_then(Value::as_u64)
        .filter(|t| *t > 0)
        .map(|t| shared.minute * t as u32);
    let sb = Sandbox {
        info: SandboxInfo {
            id: id.clone(),
            name: body
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| id.clone()),
            labels: strings("labels"),
            env: strings("env"),
            network_block_all: body
                .get("networkBlockAll")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            network_allow_list: body
                .get("networkAllowList")
                .and_then(Value::as_str)
                .map(str::to_string),
            request: body.clone(),
            root,
        },
        created: Instant::now(),
        created_at: chrono::Utc::now(),
        ready_at: Instant::now() + inner.start_delay,
        fail_reason: inner.fail_start.clone(),
        ttl,
        groups: Vec::new(),
    };
    let reply = sandbox_json(&sb, &toolbox_url(&shared));
    inner.creates += 1;
    inner.sandboxes.insert(id, sb);
    if let Some(status) = inner.lost_creates.pop_front() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        return api_error(status, uri.path(), json!("Internal server error"));
    }
    drop(inner);
    conform(&shared, Spec::DaytonaSandbox, &reply);
    (StatusCode::OK, axum::Json(reply)).into_response()
}

fn uuid_like() -> String {
    let h = hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&shared, &headers, &uri, Route::List) {
        return r;
    }
    let wanted: BTreeMap<String, String> = match q.get("labels") {
        None => BTreeMap::new(),
        Some(l) => match serde_json::from_str(l) {
            Ok(m) => m,
            Err(_) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    uri.path(),
                    json!(["labels must be a JSON object of strings"]),
                );
            }
        },
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=200).contains(&l) => l,
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                uri.path(),
                json!(["limit must not be greater than 200"]),
            );
        }
    };
    let cursor = q.get("cursor").cloned();
    // Errored (and deleted) sandboxes are listed only with `includeErroredDeleted=true`
    // (daytona/clients@d94a1281:api-client-go/api/openapi.yaml, `GET /sandbox`).
    let errored_too = q.get("includeErroredDeleted").map(String::as_str) == Some("true");
    let tb = toolbox_url(&shared);
    let inner = shared.lock();
    let lag = inner.list_lag;
    let matching: Vec<&Sandbox> = inner
        .sandboxes
        .values()
        // The list is served from an eventually consistent read: a sandbox just created may
        // be missing for a while (issue 11 item 8).
        .filter(|s| s.created.elapsed() >= lag)
        .filter(|s| errored_too || state_of(s).0 != "error")
        .filter(|s| wanted.iter().all(|(k, v)| s.info.labels.get(k) == Some(v)))
        .filter(|s| {
            cursor
                .as_ref()
                .is_none_or(|c| s.info.id.as_str() > c.as_str())
        })
        .collect();
    let items: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|s| sandbox_json(s, &tb))
        .collect();
    let next = (matching.len() > limit).then(|| matching[limit - 1].info.id.clone());
    drop(inner);
    let reply = json!({"items": items, "nextCursor": next});
    conform(&shared, Spec::DaytonaListSandboxesResponse, &reply);
    axum::Json(reply).into_response()
}

async fn get_one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(r) = gate(&shared, &headers, &uri, Route::Get) {
        return r;
    }
    let tb = toolbox_url(&shared);
    let mut inner = shared.lock();
    inner.gets += 1;
    // `{sandboxIdOrName}`: a read of one row, consistent right after the create.
    let found = inner
        .sandboxes
        .get(&id)
        .or_else(|| inner.sandboxes.values().find(|s| s.info.name == id));
    match found {
        Some(sb) => {
            let reply = sandbox_json(sb, &tb);
            drop(inner);
            conform(&shared, Spec::DaytonaSandbox, &reply);
            axum::Json(reply).into_response()
        }
        None => api_error(
            StatusCode::NOT_FOUND,
            uri.path(),
            json!(format!("Sandbox with ID or name {id} not found")),
        ),
    }
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(r) = gate(&shared, &headers, &uri, Route::Delete) {
        return r;
    }
    let tb = toolbox_url(&shared);
    let mut inner = shared.lock();
    match inner.sandboxes.remove(&id) {
        Some(mut sb) => {
            kill_groups(&mut sb.groups);
            inner.deleted.push(id);
            let mut v = sandbox_json(&sb, &tb);
            v["state"] = "destroying".into();
            v["desiredState"] = "destroyed".into();
            axum::Json(v).into_response()
        }
        None => api_error(
            StatusCode::NOT_FOUND,
            uri.path(),
            json!(format!("Sandbox with ID or name {id} not found")),
        ),
    }
}

async fn expire_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut inner = shared.lock();
        let gone: Vec<String> = inner
            .sandboxes
            .iter()
            .filter(|(_, s)| s.ttl.is_some_and(|t| s.created.elapsed() >= t))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(mut sb) = inner.sandboxes.remove(&id) {
                kill_groups(&mut sb.groups);
            }
            inner.expired.push(id);
        }
    }
}

// === toolbox ===

/// The started sandbox a toolbox request is for (the proxy checks the Bearer key).
fn toolbox_sandbox(
    shared: &Shared,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    id: &str,
) -> Result<(PathBuf, BTreeMap<String, String>), Response> {
    if !bearer_ok(shared, headers) {
        return Err(toolbox_error(
            StatusCode::UNAUTHORIZED,
            method,
            uri.path(),
            "UNAUTHORIZED",
            "unauthorized",
        ));
    }
    let inner = shared.lock();
    match inner.sandboxes.get(id) {
        Some(sb) if state_of(sb).0 == "started" => Ok((sb.info.root.clone(), sb.info.env.clone())),
        Some(_) => Err(toolbox_error(
            StatusCode::BAD_GATEWAY,
            method,
            uri.path(),
            "INTERNAL_SERVER_ERROR",
            "sandbox is not started",
        )),
        None => Err(toolbox_error(
            StatusCode::NOT_FOUND,
            method,
            uri.path(),
            "NOT_FOUND",
            "sandbox not found",
        )),
    }
}

async fn execute(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let (root, env) = match toolbox_sandbox(&shared, &headers, &method, &uri, &id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let env = route_proxy_env(&env, &shared.lock().routes);
    let path = uri.path().to_string();
    let bad = |m: &str| toolbox_error(StatusCode::BAD_REQUEST, &method, &path, "BAD_REQUEST", m);
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return toolbox_error(
                StatusCode::BAD_REQUEST,
                &method,
                &path,
                "INVALID_REQUEST_BODY",
                "invalid request body",
            );
        }
    };
    conform(&shared, Spec::DaytonaExecuteRequest, &req);
    if let Some(obj) = req.as_object()
        && let Some(k) = obj
            .keys()
            .find(|k| !["command", "cwd", "envs", "timeout"].contains(&k.as_str()))
    {
        return bad(&format!("unknown field {k:?}"));
    }
    let Some(command) = req["command"].as_str().filter(|c| !c.trim().is_empty()) else {
        return bad("command is required");
    };
    let home = root.join("home/daytona");
    let cwd = match req["cwd"].as_str() {
        Some(c) => map_path_home(&root, "home/daytona", c),
        None => home.clone(),
    };
    if !cwd.is_dir() {
        // `cmd.Start()` fails on the chdir; the daemon answers 200 with exit code -1 and Go's
        // error text as the result (daytonaio/daytona@36a5c188:apps/daemon/pkg/toolbox/
        // process/execute/execute.go).
        let shown = req["cwd"].as_str().unwrap_or("");
        let reply =
            json!({"exitCode": -1, "result": format!("chdir {shown}: no such file or directory")});
        conform(&shared, Spec::DaytonaExecuteResponse, &reply);
        return axum::Json(reply).into_response();
    }
    let timeout = match req.get("timeout") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(0) => None,
            Some(t) => Some(Duration::from_secs(t)),
            None => return bad("timeout must be an integer"),
        },
    };
    let envs: BTreeMap<String, String> = req["envs"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let command = command.to_string();
    let shared2 = shared.clone();
    let id2 = id.clone();
    let run = tokio::task::spawn_blocking(move || {
        run_combined(&command, &cwd, &home, &root, &env, &envs, timeout, |pgid| {
            if let Some(sb) = shared2.lock().sandboxes.get_mut(&id2) {
                sb.groups.push(pgid);
            }
        })
    });
    match run.await {
        Ok(Ok(Outcome::Exited(code, output))) => {
            let reply = json!({"exitCode": code, "result": String::from_utf8_lossy(&output)});
            conform(&shared, Spec::DaytonaExecuteResponse, &reply);
            axum::Json(reply).into_response()
        }
        Ok(Ok(Outcome::TimedOut)) => toolbox_error(
            StatusCode::REQUEST_TIMEOUT,
            &method,
            &path,
            "PROCESS_EXECUTION_TIMEOUT",
            "command execution timeout",
        ),
        // The daemon reports a spawn failure as a result, not an HTTP error.
        Ok(Err(e)) => axum::Json(json!({"exitCode": -1, "result": e.to_string()})).into_response(),
        Err(e) => toolbox_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &method,
            &path,
            "INTERNAL_SERVER_ERROR",
            &e.to_string(),
        ),
    }
}

enum Outcome {
    Exited(i32, Vec<u8>),
    TimedOut,
}

#[allow(clippy::too_many_arguments)]
fn run_combined(
    command: &str,
    cwd: &Path,
    home: &Path,
    root: &Path,
    env: &BTreeMap<String, String>,
    envs: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    register: impl FnOnce(i32),
) -> std::io::Result<Outcome> {
    use std::os::unix::process::CommandExt;
    let (mut reader, writer) = std::io::pipe()?;
    // The daemon runs the first of zsh or bash listed in /etc/shells (else $SHELL, else sh)
    // and pipes the command into its stdin (to stay clear of ARG_MAX): a command that reads
    // stdin eats the rest of the script, and zsh's globbing/word splitting apply
    // (daytonaio/daytona@074ef700:apps/daemon/pkg/common/get_shell.go; execute.go at
    // v0.190.0 as described in /work/shared/reference/sandboxes.md §2.2 and issue 11).
    let mut cmd = std::process::Command::new(daemon_shell());
    cmd.current_dir(cwd)
        .env("HOME", home)
        .env("AIRLOCK_FAKE_ROOT", root)
        .envs(env)
        .envs(envs)
        .stdin(std::process::Stdio::piped())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let script = format!("{command}\n");
        // A thread: a script longer than the pipe buffer must not block the wait below.
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(script.as_bytes());
        });
    }
    // The parent's copies of the write end must close, or the read never ends.
    drop(cmd);
    let pgid = child.id() as i32;
    register(pgid);
    let reader_thread = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        out
    });
    let deadline = timeout.map(|t| Instant::now() + t);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // The whole group goes: a timed-out command, and anything a finished one left holding
    // the pipe.
    // SAFETY: the group this command leads.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
    let output = reader_thread.join().unwrap_or_default();
    match status {
        None => {
            let _ = child.wait();
            Ok(Outcome::TimedOut)
        }
        Some(s) => Ok(Outcome::Exited(
            s.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
            }),
            output,
        )),
    }
}

/// `GetShell()`: zsh, then bash, from /etc/shells; else `$SHELL`; else `sh`.
fn daemon_shell() -> String {
    let shells = std::fs::read_to_string("/etc/shells").unwrap_or_default();
    let listed: Vec<&str> = shells
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::trim)
        .collect();
    for s in ["/usr/bin/zsh", "/bin/zsh", "/usr/bin/bash", "/bin/bash"] {
        if listed.contains(&s) {
            return s.to_string();
        }
    }
    std::env::var("SHELL").unwrap_or_else(|_| "sh".into())
}

async fn download(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (root, _) = match toolbox_sandbox(&shared, &headers, &method, &uri, &id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(path) = q.get("path") else {
        return toolbox_error(
            StatusCode::BAD_REQUEST,
            &method,
            uri.path(),
            "BAD_REQUEST",
            "path is required",
        );
    };
    let real = map_path_home(&root, "home/daytona", path);
    let legacy = shared.lock().legacy_daemon;
    match std::fs::read(&real) {
        Ok(data) if real.is_file() => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response()
        }
        // v0.190.0: `c.AbortWithError(http.StatusNotFound, err)` with no error renderer:
        // status only, empty body (daytonaio/daytona@0bcb2561:apps/daemon/pkg/toolbox/fs/
        // download_file.go).
        _ if legacy => StatusCode::NOT_FOUND.into_response(),
        _ => toolbox_error(
            StatusCode::NOT_FOUND,
            &method,
            uri.path(),
            "FILE_NOT_FOUND",
            &format!("file not found: {path}"),
        ),
    }
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let (root, _) = match toolbox_sandbox(&shared, &headers, &method, &uri, &id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(path) = q.get("path") else {
        return toolbox_error(
            StatusCode::BAD_REQUEST,
            &method,
            uri.path(),
            "BAD_REQUEST",
            "path is required",
        );
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let legacy = shared.lock().legacy_daemon;
    let v2 = uri.path().ends_with("/upload-v2");
    if legacy && v2 {
        // v0.190.0 has no such route: gin's NoRoute answer.
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "404 page not found",
        )
            .into_response();
    }
    // Newer daemons take multipart (field `file`) or a raw body on both routes
    // (daytonaio/daytona@064fc96b:apps/daemon/pkg/toolbox/fs/upload_file.go); v0.190.0's
    // `/files/upload` is multipart only (`c.FormFile("file")` → 400 otherwise).
    let body = if ct.starts_with("multipart/form-data") {
        match crate::fake_e2b::multipart_file(ct, &body) {
            Some(b) => b,
            None => {
                return toolbox_error(
                    StatusCode::BAD_REQUEST,
                    &method,
                    uri.path(),
                    "BAD_REQUEST",
                    "http: no such file",
                );
            }
        }
    } else if legacy {
        return toolbox_error(
            StatusCode::BAD_REQUEST,
            &method,
            uri.path(),
            "BAD_REQUEST",
            "request Content-Type isn't multipart/form-data",
        );
    } else {
        body
    };
    let real = map_path_home(&root, "home/daytona", path);
    if let Some(parent) = real.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = std::fs::write(&real, &body) {
        return toolbox_error(
            StatusCode::BAD_REQUEST,
            &method,
            uri.path(),
            "BAD_REQUEST",
            &e.to_string(),
        );
    }
    if !v2 {
        // The legacy handler answers a bare 200.
        return StatusCode::OK.into_response();
    }
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    axum::Json(json!({"name": name, "path": path, "type": "file"})).into_response()
}

async fn list_files(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (root, _) = match toolbox_sandbox(&shared, &headers, &method, &uri, &id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let path = q.get("path").cloned().unwrap_or_default();
    let real = map_path_home(&root, "home/daytona", &path);
    let Ok(rd) = std::fs::read_dir(&real) else {
        if shared.lock().legacy_daemon {
            // list_files.go at the same commit: AbortWithError(404), empty body.
            return StatusCode::NOT_FOUND.into_response();
        }
        return toolbox_error(
            StatusCode::NOT_FOUND,
            &method,
            uri.path(),
            "FILE_NOT_FOUND",
            &format!("directory not found: {path}"),
        );
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        let modified: chrono::DateTime<chrono::Utc> = meta
            .modified()
            .map(Into::into)
            .unwrap_or_else(|_| chrono::Utc::now());
        out.push(json!({
            "name": e.file_name().to_string_lossy(),
            "isDir": meta.is_dir(),
            "size": meta.len(),
            "modTime": modified.to_string(),
            "modifiedAt": modified.to_rfc3339(),
            "mode": if meta.is_dir() { "drwxr-xr-x" } else { "-rw-r--r--" },
            "permissions": if meta.is_dir() { "0755" } else { "0644" },
            "owner": "daytona",
            "group": "daytona",
        }));
    }
    let reply = Value::Array(out);
    conform(&shared, Spec::DaytonaFileInfoList, &reply);
    axum::Json(reply).into_response()
}
