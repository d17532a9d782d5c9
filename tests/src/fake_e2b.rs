//! A local stand-in for E2B (control-plane API + envd), following E2B's published specs field
//! for field (e2b-dev/E2B @ b8029973: `spec/openapi.yml`, `spec/envd/envd.yaml`,
//! `spec/envd/process/process.proto`, `spec/envd/filesystem/filesystem.proto`), so the brain's
//! E2B client is exercised exactly as against the real service, by URL + key.
//!
//! - API (`api_url`): `POST /sandboxes` (201 `Sandbox`), `GET /v2/sandboxes` (metadata/state
//!   filters, `limit`/`nextToken` paging, `X-Next-Token`), `GET|DELETE /sandboxes/{id}`,
//!   `POST /sandboxes/{id}/timeout` (204), `POST /sandboxes/{id}/connect` (200; 201 when it
//!   resumes a paused sandbox), `POST /sandboxes/{id}/pause` (204, 409 already paused),
//!   `POST /sandboxes/{id}/snapshots` (201 `SnapshotInfo`; a sandbox created from the
//!   snapshot template gets its files and the env its memory held; `name` makes an aliased
//!   template in the team's namespace, reused by a later snapshot of the same name),
//!   `GET /snapshots` (`sandboxID`/`name` filters, `limit`/`nextToken` paging),
//!   `DELETE /templates/{id}` (a template id or `[namespace/]alias`, `:tag` ignored);
//!   `X-API-Key`
//!   auth (401 `Error`); request bodies validated against the schema (unknown or missing
//!   fields → 400 `Error`); configurable slow create; injected 429 (`Retry-After`) and 5xx.
//! - envd (`envd_url`, one listener for all sandboxes, routed by `E2b-Sandbox-Id` as the real
//!   edge does for IP hosts): `GET /health` (204), `POST /process.Process/Start` (Connect
//!   server stream, JSON codec, real envelopes; runs the command for real; honours
//!   `Connect-Timeout-Ms` by killing the process group and ending with `deadline_exceeded`),
//!   `GET|POST /files`, `POST /filesystem.Filesystem/ListDir`; `X-Access-Token` auth.
//!
//! Not a VM: each sandbox is a temp directory (`root`); file paths map under it, commands run
//! with `bash` on the host with cwd under it (home = `root/home/user`) and `AIRLOCK_FAKE_ROOT`
//! naming it, so absolute paths *inside commands* still see the host. Expired sandboxes
//! (their `timeout` passed) are killed by a background sweep, as E2B does.

// Early returns carry the provider's error response itself; these are test-only paths.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::spec_schemas::{self, Body as Spec};

/// A control-plane route, for injecting failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Create,
    List,
    Get,
    Delete,
    Timeout,
    Connect,
    Pause,
    Snapshot,
    ListSnapshots,
    DeleteTemplate,
}

/// The team's slug: the namespace of named snapshot templates (`<slug>/<alias>`).
pub const TEAM_SLUG: &str = "fake-team";

/// A snapshot template (`POST /sandboxes/{id}/snapshots`): the sandbox's files and what its
/// memory held of the env (envd's `envVars`), as a new sandbox started from it sees them.
struct Template {
    root: PathBuf,
    env_vars: BTreeMap<String, String>,
    /// The alias a named snapshot gave it (its full name is `<TEAM_SLUG>/<alias>`).
    alias: Option<String>,
    /// The sandbox it was snapshotted from (`GET /snapshots?sandboxID=`).
    sandbox_id: String,
}

/// What a recorded sandbox was created with (tests assert egress was restricted).
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    pub id: String,
    pub template_id: String,
    pub timeout_s: i64,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub network: Value,
    pub secure: bool,
    pub root: PathBuf,
}

struct Sandbox {
    info: SandboxInfo,
    token: String,
    envd_version: String,
    started_at: chrono::DateTime<chrono::Utc>,
    end_at: chrono::DateTime<chrono::Utc>,
    /// Process groups of running commands (killed with the sandbox).
    groups: Vec<i32>,
    /// Paused (`POST /sandboxes/{id}/pause`): its processes are stopped (SIGSTOP, memory
    /// kept), envd is unreachable, and E2B's timer does not run until a resume.
    paused: bool,
}

struct Inner {
    sandboxes: BTreeMap<String, Sandbox>,
    /// The team's longest sandbox lifetime (`team.Limits.MaxLengthHours`): 1 h on the base
    /// tier, 24 h on Pro (infra `packages/api/internal/handlers/timeout_helper.go`
    /// `getTeamPlanLimit`); a longer `timeout` is refused with 400.
    max_timeout_s: i64,
    /// `envdVersion` of new sandboxes (gates the upload form and the user header).
    envd_version: String,
    /// Per envd request: whether it carried `Authorization: Basic` (tests assert the client
    /// follows the SDK and omits it for envd >= 0.4.0).
    basic_auth_seen: Vec<bool>,
    /// Requests received and responses sent that break the spec's schemas.
    spec_violations: Vec<String>,
    failures: HashMap<Route, VecDeque<(u16, Option<u64>)>>,
    create_delay: Duration,
    /// How long `POST /sandboxes/{id}/snapshots` waits to answer after the template exists
    /// (a client that dies meanwhile never learns of it).
    snapshot_delay: Duration,
    /// Creates that build the sandbox and then answer this status anyway (a lost response).
    lost_creates: VecDeque<u16>,
    creates: usize,
    killed: Vec<String>,
    expired: Vec<String>,
    /// Snapshot templates by template id (without the `:tag`).
    templates: BTreeMap<String, Template>,
    /// Counted per call: (route, status).
    calls: Vec<(Route, u16)>,
    /// The internet between the cloud and this host (see [`route_proxy_env`]).
    routes: Vec<(String, String)>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            sandboxes: BTreeMap::new(),
            max_timeout_s: 3600,
            envd_version: "0.6.4".into(),
            basic_auth_seen: Vec::new(),
            spec_violations: Vec::new(),
            failures: HashMap::new(),
            create_delay: Duration::ZERO,
            snapshot_delay: Duration::ZERO,
            lost_creates: VecDeque::new(),
            creates: 0,
            killed: Vec::new(),
            expired: Vec::new(),
            templates: BTreeMap::new(),
            calls: Vec::new(),
            routes: Vec::new(),
        }
    }
}

struct Shared {
    api_key: String,
    inner: Mutex<Inner>,
    dir: tempfile::TempDir,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake; its listeners stop and its processes die on drop.
pub struct FakeE2b {
    pub api_url: String,
    pub envd_url: String,
    pub api_key: String,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeE2b {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let mut inner = self.shared.lock();
        for sb in inner.sandboxes.values_mut() {
            kill_groups(&mut sb.groups);
        }
    }
}

impl FakeE2b {
    pub async fn start() -> Self {
        let api_key = format!("e2b_{}", hex(20));
        let shared = Arc::new(Shared {
            api_key: api_key.clone(),
            inner: Mutex::new(Inner::default()),
            dir: tempfile::Builder::new()
                .prefix("fake-e2b-")
                .tempdir()
                .expect("temp dir"),
        });
        let api = Router::new()
            .route("/sandboxes", post(create))
            .route("/v2/sandboxes", get(list))
            .route("/sandboxes/{id}", get(get_one).delete(delete))
            .route("/sandboxes/{id}/timeout", post(set_timeout))
            .route("/sandboxes/{id}/connect", post(connect))
            .route("/sandboxes/{id}/pause", post(pause))
            .route("/sandboxes/{id}/snapshots", post(snapshot))
            .route("/snapshots", get(list_snapshots))
            .route("/templates/{id}", axum::routing::delete(delete_template))
            .with_state(shared.clone());
        let envd = Router::new()
            .route("/health", get(|| async { StatusCode::NO_CONTENT }))
            .route("/process.Process/Start", post(start_process))
            .route("/files", get(read_file).post(write_file))
            .route("/filesystem.Filesystem/ListDir", post(list_dir))
            .with_state(shared.clone());
        let (api_addr, api_task) = serve(api).await;
        let (envd_addr, envd_task) = serve(envd).await;
        let sweeper = tokio::spawn(expire_loop(shared.clone()));
        Self {
            api_url: format!("http://{api_addr}"),
            envd_url: format!("http://{envd_addr}"),
            api_key,
            shared,
            tasks: vec![api_task, envd_task, sweeper],
        }
    }

    /// Routes the public `host:port` a sandbox's proxy URL names to `local` (see
    /// [`route_proxy_env`]).
    pub fn route_public(&self, public: &str, local: SocketAddr) {
        self.shared
            .lock()
            .routes
            .push((public.to_string(), local.to_string()));
    }

    /// The next `times` calls of `route` answer `status` (with `Retry-After` when given).
    pub fn fail_next(&self, route: Route, status: u16, times: usize, retry_after: Option<u64>) {
        let mut inner = self.shared.lock();
        let q = inner.failures.entry(route).or_default();
        for _ in 0..times {
            q.push_back((status, retry_after));
        }
    }

    /// The next `times` creates build the sandbox but answer `status` (the response is lost,
    /// as when a gateway times out after the VM was made).
    pub fn lose_next_creates(&self, status: u16, times: usize) {
        let mut inner = self.shared.lock();
        for _ in 0..times {
            inner.lost_creates.push_back(status);
        }
    }

    /// The team's lifetime cap in seconds (default 3600, the base tier).
    pub fn set_max_timeout(&self, secs: i64) {
        self.shared.lock().max_timeout_s = secs;
    }

    /// The `envdVersion` of sandboxes created from now on (default `0.6.4`).
    pub fn set_envd_version(&self, version: &str) {
        self.shared.lock().envd_version = version.into();
    }

    /// Every request or response so far that broke the spec's schemas (`spec_schemas`).
    pub fn spec_violations(&self) -> Vec<String> {
        self.shared.lock().spec_violations.clone()
    }

    /// Per envd request so far: whether it carried a Basic user header.
    pub fn basic_auth_seen(&self) -> Vec<bool> {
        self.shared.lock().basic_auth_seen.clone()
    }

    /// How long `POST /sandboxes` takes before the sandbox exists and the 201 is sent.
    pub fn set_create_delay(&self, delay: Duration) {
        self.shared.lock().create_delay = delay;
    }

    /// Ids of the snapshot templates that exist.
    pub fn templates(&self) -> Vec<String> {
        self.shared.lock().templates.keys().cloned().collect()
    }

    /// Full names (`<slug>/<alias>`) of the named snapshot templates that exist.
    pub fn template_names(&self) -> Vec<String> {
        self.shared
            .lock()
            .templates
            .values()
            .filter_map(|t| t.alias.as_ref().map(|a| format!("{TEAM_SLUG}/{a}")))
            .collect()
    }

    /// `POST /sandboxes/{id}/snapshots` answers `delay` after the template exists.
    pub fn set_snapshot_delay(&self, delay: Duration) {
        self.shared.lock().snapshot_delay = delay;
    }

    /// Whether sandbox `id` (the provider's id) is paused.
    pub fn is_paused(&self, id: &str) -> bool {
        self.shared
            .lock()
            .sandboxes
            .get(id)
            .is_some_and(|s| s.paused)
    }

    pub fn sandboxes(&self) -> Vec<SandboxInfo> {
        self.shared
            .lock()
            .sandboxes
            .values()
            .map(|s| s.info.clone())
            .collect()
    }

    /// Sandboxes created so far (including killed ones).
    pub fn creates(&self) -> usize {
        self.shared.lock().creates
    }

    /// Ids killed through `DELETE`.
    pub fn killed(&self) -> Vec<String> {
        self.shared.lock().killed.clone()
    }

    /// Ids whose timeout passed.
    pub fn expired(&self) -> Vec<String> {
        self.shared.lock().expired.clone()
    }

    /// Statuses answered per route so far.
    pub fn calls(&self, route: Route) -> Vec<u16> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|(r, _)| *r == route)
            .map(|(_, s)| *s)
            .collect()
    }

    /// A file inside a sandbox (`path` as the sandbox sees it).
    pub fn file(&self, sandbox_id: &str, path: &str) -> Option<Vec<u8>> {
        let root = self
            .shared
            .lock()
            .sandboxes
            .get(sandbox_id)?
            .info
            .root
            .clone();
        std::fs::read(map_path(&root, path)).ok()
    }
}

pub(crate) async fn serve(router: Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a fake");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, task)
}

pub(crate) fn hex(n: usize) -> String {
    (0..n).map(|_| format!("{:x}", rand_u8() & 0x0f)).collect()
}

fn rand_u8() -> u8 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    // xorshift seeded from time and address; good enough for ids in tests.
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1))
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 24) as u8
}

/// 20 lowercase alphanumerics, like E2B sandbox ids.
fn sandbox_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..20)
        .map(|_| ALPHABET[rand_u8() as usize % ALPHABET.len()] as char)
        .collect()
}

/// E2B's `Error` body.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"code": status.as_u16(), "message": message.into()})),
    )
        .into_response()
}

/// Checks `X-API-Key` and pops an injected failure for `route`.
fn gate(shared: &Shared, headers: &HeaderMap, route: Route) -> Result<(), Response> {
    let key = headers.get("X-API-Key").and_then(|v| v.to_str().ok());
    let mut inner = shared.lock();
    let result = match key {
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "authorization header is missing",
        )),
        Some(k) if k != shared.api_key => Err(error(StatusCode::UNAUTHORIZED, "Invalid API key")),
        Some(_) => match inner.failures.get_mut(&route).and_then(|q| q.pop_front()) {
            Some((status, retry_after)) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let message = match status {
                    StatusCode::TOO_MANY_REQUESTS => "Rate limit exceeded, please try again later.",
                    _ => "Internal server error: injected failure",
                };
                let mut resp = error(status, message);
                if let Some(s) = retry_after {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, s.to_string().parse().expect("header"));
                }
                Err(resp)
            }
            None => Ok(()),
        },
    };
    let status = match &result {
        Ok(()) => 0,
        Err(r) => r.status().as_u16(),
    };
    if status != 0 {
        inner.calls.push((route, status));
    }
    result
}

/// Checks `value` against the spec's schema for `body`, keeping any violation.
fn conform(shared: &Shared, body: Spec, value: &Value) -> bool {
    let errors = spec_schemas::check(body, value);
    let ok = errors.is_empty();
    shared.lock().spec_violations.extend(errors);
    ok
}

/// A JSON response whose body is checked against the spec first.
fn checked(shared: &Shared, status: StatusCode, body: Spec, value: Value) -> Response {
    conform(shared, body, &value);
    (status, axum::Json(value)).into_response()
}

fn record(shared: &Shared, route: Route, status: StatusCode) {
    shared.lock().calls.push((route, status.as_u16()));
}

/// Validates a JSON object against the field list of a schema: unknown → 400, missing
/// required → 400, each as kin-openapi (E2B's validator) words it.
fn check_fields(body: &Value, known: &[&str], required: &[&str]) -> Result<(), Response> {
    let Some(obj) = body.as_object() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "request body has an error: doesn't match schema: value must be an object",
        ));
    };
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "request body has an error: doesn't match schema: property \"{k}\" is unsupported"
                ),
            ));
        }
    }
    for r in required {
        if !obj.contains_key(*r) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "request body has an error: doesn't match schema: property \"{r}\" is missing"
                ),
            ));
        }
    }
    Ok(())
}

fn string_map(v: Option<&Value>, field: &str) -> Result<BTreeMap<String, String>, Response> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    let bad = || {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "request body has an error: doesn't match schema: property \"{field}\": value must be a map of strings"
            ),
        )
    };
    let obj = v.as_object().ok_or_else(bad)?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(bad)?.to_string())))
        .collect()
}

fn parse_json(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("request body has an error: failed to decode request body: {e}"),
        )
    })
}

/// E2B's egress rules (e2b-dev/E2B@b8029973:spec/openapi.yml `SandboxNetworkConfig`):
/// `allowOut` entries are an IPv4 CIDR, a bare IPv4 address or a domain (`example.com`,
/// `*.example.com`); `denyOut` entries are CIDRs or addresses only ("Domain names are not
/// supported for deny rules"). The firewall sets are IPv4-only (issue 11), so IPv6 is refused.
pub fn validate_egress_rules(allow_out: &[String], deny_out: &[String]) -> Result<(), String> {
    fn ipv4_or_cidr(s: &str) -> bool {
        match s.split_once('/') {
            Some((ip, bits)) => {
                ip.parse::<std::net::Ipv4Addr>().is_ok()
                    && bits.parse::<u8>().is_ok_and(|b| b <= 32)
            }
            None => s.parse::<std::net::Ipv4Addr>().is_ok(),
        }
    }
    fn domain(s: &str) -> bool {
        let s = s.strip_prefix("*.").unwrap_or(s);
        s.contains('.')
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
            && s.rsplit('.')
                .next()
                .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
    }
    for (i, e) in allow_out.iter().enumerate() {
        if !(ipv4_or_cidr(e) || domain(e)) {
            return Err(format!(
                "network.allowOut[{i}]: `{e}` is not an IPv4 address, IPv4 CIDR or domain name"
            ));
        }
    }
    for (i, e) in deny_out.iter().enumerate() {
        if domain(e) {
            return Err(format!(
                "network.denyOut[{i}]: domain names are not supported for deny rules"
            ));
        }
        if !ipv4_or_cidr(e) {
            return Err(format!(
                "network.denyOut[{i}]: `{e}` is not an IPv4 address or CIDR"
            ));
        }
    }
    Ok(())
}

/// The team cap check of a `timeout` (seconds): `Ok` when within `max_s`.
pub fn check_timeout(t: i64, max_s: i64) -> Result<i64, String> {
    if !(0..=i32::MAX as i64).contains(&t) {
        return Err("timeout: number must be an int32 >= 0".into());
    }
    if t > max_s {
        return Err(format!(
            "Timeout cannot be greater than {} hours",
            max_s / 3600
        ));
    }
    Ok(t)
}

fn timeout_field(body: &Value, max_s: i64) -> Result<i64, Response> {
    let t = match body.get("timeout") {
        None => 15,
        Some(v) => v.as_i64().filter(|t| *t >= 0 && *t <= i32::MAX as i64).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "request body has an error: doesn't match schema: property \"timeout\": number must be an int32 >= 0",
            )
        })?,
    };
    // The plan cap (`timeout_helper.go` getTeamPlanLimit = MaxLengthHours); the API answers
    // 400 "Timeout cannot be greater than N hours" (wording as E2B answers it, quoted in
    // issue 11 and by SDK users; not found in the stored infra snapshot).
    check_timeout(t, max_s).map_err(|m| error(StatusCode::BAD_REQUEST, m))
}

fn sandbox_json(sb: &Sandbox) -> Value {
    json!({
        "templateID": sb.info.template_id,
        "sandboxID": sb.info.id,
        "alias": sb.info.template_id,
        "clientID": "6532622b",
        "envdVersion": sb.envd_version,
        "envdAccessToken": sb.token,
        "trafficAccessToken": null,
        "domain": null,
    })
}

fn listed_json(sb: &Sandbox) -> Value {
    json!({
        "templateID": sb.info.template_id,
        "alias": sb.info.template_id,
        "sandboxID": sb.info.id,
        "clientID": "6532622b",
        "startedAt": sb.started_at.to_rfc3339(),
        "endAt": sb.end_at.to_rfc3339(),
        "cpuCount": 2,
        "memoryMB": 512,
        "diskSizeMB": 1024,
        "state": if sb.paused { "paused" } else { "running" },
        "envdVersion": sb.envd_version,
        "metadata": sb.info.metadata,
    })
}

async fn create(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::Create) {
        return r;
    }
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let known = [
        "templateID",
        "timeout",
        "autoPause",
        "autoPauseMemory",
        "autoResume",
        "secure",
        "allow_internet_access",
        "network",
        "metadata",
        "envVars",
        "mcp",
        "iam",
        "volumeMounts",
    ];
    if let Err(r) = check_fields(&body, &known, &["templateID"]) {
        return r;
    }
    conform(&shared, Spec::E2bNewSandbox, &body);
    let Some(template) = body["templateID"].as_str().filter(|t| !t.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "request body has an error: doesn't match schema: property \"templateID\": value must be a string",
        );
    };
    if template == "missing-template" {
        return error(
            StatusCode::NOT_FOUND,
            format!("template '{template}' not found"),
        );
    }
    // A snapshot template: the new sandbox starts with its files, and with the env its
    // memory snapshot holds under the request's `envVars` (envd keeps the env it was given in
    // memory; /init on resume sets the new values on top).
    let from_snapshot = {
        let inner = shared.lock();
        resolve_template(&inner, template)
            .and_then(|id| inner.templates.get(&id))
            .map(|t| (t.root.clone(), t.env_vars.clone()))
    };
    let max_s = shared.lock().max_timeout_s;
    let timeout = match timeout_field(&body, max_s) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let (metadata, env_vars) = match (
        string_map(body.get("metadata"), "metadata"),
        string_map(body.get("envVars"), "envVars"),
    ) {
        (Ok(m), Ok(e)) => (m, e),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let env_vars = match &from_snapshot {
        Some((_, kept)) => {
            let mut env = kept.clone();
            env.extend(env_vars);
            env
        }
        None => env_vars,
    };
    let network = body.get("network").cloned().unwrap_or(Value::Null);
    if !network.is_null() {
        let known = [
            "allowPublicTraffic",
            "allowOut",
            "denyOut",
            "egressProxy",
            "maskRequestHost",
            "rules",
        ];
        if let Err(r) = check_fields(&network, &known, &[]) {
            return r;
        }
        let mut lists: [Vec<String>; 2] = Default::default();
        for (i, k) in ["allowOut", "denyOut"].into_iter().enumerate() {
            if let Some(v) = network.get(k) {
                let Some(items) = v
                    .as_array()
                    .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
                else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "request body has an error: doesn't match schema: property \"{k}\": value must be an array of strings"
                        ),
                    );
                };
                lists[i] = items;
            }
        }
        if let Err(m) = validate_egress_rules(&lists[0], &lists[1]) {
            return error(StatusCode::BAD_REQUEST, m);
        }
    }
    let secure = body.get("secure").and_then(Value::as_bool).unwrap_or(false);
    let delay = shared.lock().create_delay;
    // E2B builds the VM whether or not the caller is still waiting: spawned, so a client that
    // gives up does not cancel it.
    let shared2 = shared.clone();
    let template = template.to_string();
    let made = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let id = sandbox_id();
        let root = shared2.dir.path().join(&id);
        if let Some((from, _)) = &from_snapshot {
            copy_tree(from, &root).expect("copy the snapshot's files");
        }
        std::fs::create_dir_all(root.join("home/user")).expect("sandbox home");
        let now = chrono::Utc::now();
        let sb = Sandbox {
            info: SandboxInfo {
                id: id.clone(),
                template_id: template,
                timeout_s: timeout,
                metadata,
                env_vars,
                network,
                secure,
                root,
            },
            token: hex(32),
            envd_version: shared2.lock().envd_version.clone(),
            started_at: now,
            end_at: now + chrono::Duration::seconds(timeout),
            groups: Vec::new(),
            paused: false,
        };
        let reply = sandbox_json(&sb);
        let mut inner = shared2.lock();
        inner.creates += 1;
        inner.sandboxes.insert(id, sb);
        let lost = inner.lost_creates.pop_front();
        inner.calls.push((Route::Create, lost.unwrap_or(201)));
        (reply, lost)
    });
    match made.await {
        Ok((reply, None)) => checked(&shared, StatusCode::CREATED, Spec::E2bSandbox, reply),
        Ok((_, Some(status))) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            "Backend timeout",
        ),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "create failed"),
    }
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::List) {
        return r;
    }
    // `metadata` is itself a URL-encoded query string: `k=v&k2=v2`.
    let mut wanted = Vec::new();
    if let Some(m) = q.get("metadata") {
        for pair in m.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid metadata filter `{pair}`"),
                );
            };
            wanted.push((pct_decode(k), pct_decode(v)));
        }
    }
    let mut want_running = true;
    let mut want_paused = true;
    if let Some(states) = q.get("state") {
        for s in states.split(',') {
            if s != "running" && s != "paused" {
                return error(StatusCode::BAD_REQUEST, format!("invalid state `{s}`"));
            }
        }
        want_running = states.split(',').any(|s| s == "running");
        want_paused = states.split(',').any(|s| s == "paused");
    }
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        _ => return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 100"),
    };
    let after = q.get("nextToken").cloned();
    let inner = shared.lock();
    let matching: Vec<&Sandbox> = inner
        .sandboxes
        .values()
        .filter(|s| if s.paused { want_paused } else { want_running })
        .filter(|s| {
            wanted
                .iter()
                .all(|(k, v)| s.info.metadata.get(k) == Some(v))
        })
        .filter(|s| {
            after
                .as_ref()
                .is_none_or(|a| s.info.id.as_str() > a.as_str())
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|s| listed_json(s))
        .collect();
    let errors: Vec<String> = page
        .iter()
        .flat_map(|v| spec_schemas::check(Spec::E2bListedSandbox, v))
        .collect();
    let running = inner.sandboxes.len();
    let next = (matching.len() > limit).then(|| matching[limit - 1].info.id.clone());
    drop(inner);
    shared.lock().spec_violations.extend(errors);
    record(&shared, Route::List, StatusCode::OK);
    let mut resp = axum::Json(page).into_response();
    resp.headers_mut().insert(
        "X-Total-Running",
        running.to_string().parse().expect("header"),
    );
    if let Some(n) = next {
        resp.headers_mut()
            .insert("X-Next-Token", n.parse().expect("header"));
    }
    resp
}

fn pct_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
    )
}

async fn get_one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::Get) {
        return r;
    }
    let inner = shared.lock();
    let Some(sb) = inner.sandboxes.get(&id) else {
        return not_found(&id);
    };
    let mut v = listed_json(sb);
    v["envdAccessToken"] = sb.token.clone().into();
    v["domain"] = Value::Null;
    drop(inner);
    checked(&shared, StatusCode::OK, Spec::E2bSandboxDetail, v)
}

async fn delete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::Delete) {
        return r;
    }
    let mut inner = shared.lock();
    match inner.sandboxes.remove(&id) {
        Some(mut sb) => {
            kill_groups(&mut sb.groups);
            inner.killed.push(id);
            inner.calls.push((Route::Delete, 204));
            StatusCode::NO_CONTENT.into_response()
        }
        None => not_found(&id),
    }
}

async fn set_timeout(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::Timeout) {
        return r;
    }
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = check_fields(&body, &["timeout"], &["timeout"]) {
        return r;
    }
    conform(&shared, Spec::E2bConnectSandbox, &body);
    let max_s = shared.lock().max_timeout_s;
    let timeout = match timeout_field(&body, max_s) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut inner = shared.lock();
    let Some(sb) = inner.sandboxes.get_mut(&id) else {
        return not_found(&id);
    };
    sb.end_at = chrono::Utc::now() + chrono::Duration::seconds(timeout);
    sb.info.timeout_s = timeout;
    StatusCode::NO_CONTENT.into_response()
}

async fn connect(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::Connect) {
        return r;
    }
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = check_fields(&body, &["timeout"], &["timeout"]) {
        return r;
    }
    conform(&shared, Spec::E2bConnectSandbox, &body);
    let max_s = shared.lock().max_timeout_s;
    let timeout = match timeout_field(&body, max_s) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut inner = shared.lock();
    let Some(sb) = inner.sandboxes.get_mut(&id) else {
        return not_found(&id);
    };
    let end = chrono::Utc::now() + chrono::Duration::seconds(timeout);
    if sb.paused {
        // A paused sandbox is resumed from its snapshot and started with `timeout` from now
        // (infra handlers/sandbox_connect.go: `startSandbox(… timeout …)` → 201 `Sandbox`);
        // its envd access token is derived from the sandbox id, so it does not change.
        sb.paused = false;
        sb.end_at = end;
        sb.info.timeout_s = timeout;
        signal_groups(&sb.groups, libc::SIGCONT);
        let reply = sandbox_json(sb);
        drop(inner);
        record(&shared, Route::Connect, StatusCode::CREATED);
        return checked(&shared, StatusCode::CREATED, Spec::E2bSandbox, reply);
    }
    // A running sandbox: "TTL is only extended" (`KeepAliveFor(…, false)`) → 200.
    if end > sb.end_at {
        sb.end_at = end;
    }
    let reply = sandbox_json(sb);
    drop(inner);
    checked(&shared, StatusCode::OK, Spec::E2bSandbox, reply)
}

/// `POST /sandboxes/{id}/pause` (optional `SandboxPauseRequest {memory}`), as
/// infra handlers/sandbox_pause.go answers: 204 when paused; 409 "Error pausing sandbox -
/// sandbox '<id>' is already paused" for a paused one (`pauseHandleNotRunningSandbox`); 404
/// for an unknown one; 400 for a body that does not parse.
async fn pause(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::Pause) {
        return r;
    }
    if !body.is_empty() {
        let body = match parse_json(&body) {
            Ok(b) => b,
            Err(r) => return r,
        };
        if let Err(r) = check_fields(&body, &["memory"], &[]) {
            return r;
        }
        if body.get("memory").is_some_and(|m| !m.is_boolean()) {
            return error(
                StatusCode::BAD_REQUEST,
                "Error when parsing request: json: cannot unmarshal into field memory of type bool",
            );
        }
    }
    let mut inner = shared.lock();
    let Some(sb) = inner.sandboxes.get_mut(&id) else {
        return not_found(&id);
    };
    if sb.paused {
        return error(
            StatusCode::CONFLICT,
            format!("Error pausing sandbox - sandbox '{id}' is already paused"),
        );
    }
    sb.paused = true;
    signal_groups(&sb.groups, libc::SIGSTOP);
    inner.calls.push((Route::Pause, 204));
    StatusCode::NO_CONTENT.into_response()
}

/// `[namespace/]alias[:tag]` as infra packages/shared/pkg/id `ParseName` reads it: trimmed,
/// lowercased, namespace and alias `^[a-z0-9-_]+$`, tag `^[a-z0-9-_.]+$` (`default` = none).
/// Returns (namespace, alias, tag) or the handler's message.
fn parse_name(input: &str) -> Result<(Option<String>, String, Option<String>), String> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    let input = input.trim().to_lowercase();
    let (identifier, tag) = match input.split_once(':') {
        Some((i, t)) => {
            let ok = !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !ok {
                return Err(format!("invalid tag: {t}"));
            }
            (i, (t != "default").then(|| t.to_string()))
        }
        None => (input.as_str(), None),
    };
    let (namespace, alias) = match identifier.split_once('/') {
        Some((n, a)) => {
            if !ident(n) {
                return Err(format!("invalid namespace: {n}"));
            }
            (Some(n.to_string()), a)
        }
        None => (None, identifier),
    };
    if !ident(alias) {
        return Err(format!("invalid template ID: {alias}"));
    }
    Ok((namespace, alias.to_string(), tag))
}

/// The template a reference names: a template id or an alias (bare, or in our team's
/// namespace), the tag ignored (infra `resolveTemplateAndTeam` via the alias cache).
fn resolve_template(inner: &Inner, reference: &str) -> Option<String> {
    let (namespace, alias, _) = parse_name(reference).ok()?;
    if namespace.as_deref().is_some_and(|n| n != TEAM_SLUG) {
        return None;
    }
    if namespace.is_none() && inner.templates.contains_key(&alias) {
        return Some(alias);
    }
    inner
        .templates
        .iter()
        .find(|(_, t)| t.alias.as_deref() == Some(alias.as_str()))
        .map(|(id, _)| id.clone())
}

/// `SnapshotInfo` of a template: named ones by `<slug>/<alias>:default`, others by
/// `<id>:default` (infra handlers/snapshot_template_create.go and snapshot_template_list.go).
fn snapshot_info(id: &str, t: &Template) -> Value {
    match &t.alias {
        Some(alias) => {
            let name = format!("{TEAM_SLUG}/{alias}");
            json!({"snapshotID": format!("{name}:default"), "names": [name]})
        }
        None => json!({"snapshotID": format!("{id}:default"), "names": []}),
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// `POST /sandboxes/{id}/snapshots` (`SandboxSnapshotRequest {name?}`) as infra
/// handlers/snapshot_template_create.go answers it: 404 for an unknown sandbox
/// (`SandboxNotFoundMsg`), 400 "sandbox envd version must be at least 0.5.0 to create
/// snapshots, …" (`utils.CheckEnvdVersionForSnapshot`, `MinEnvdVersionForSnapshot`), 409 for a
/// paused one ("cannot be snapshotted while in '<state>' state"), else 201 `SnapshotInfo`
/// with `snapshotID = <templateID>:default` and no `names` when no name was given. The
/// snapshot holds the sandbox's files and (memory) its env.
async fn snapshot(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::Snapshot) {
        return r;
    }
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = check_fields(&body, &["name"], &[]) {
        return r;
    }
    // A name: `[namespace/]alias[:tag]`, the namespace (if given) the team's own; an alias
    // the team already has gets a new build of that template, else a new aliased template.
    let alias = match body.get("name") {
        None => None,
        Some(Value::String(name)) => match parse_name(name) {
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("Invalid name: {e}")),
            Ok((Some(ns), _, _)) if ns != TEAM_SLUG => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("namespace '{ns}' must match your team '{TEAM_SLUG}'"),
                );
            }
            Ok((_, _, Some(_))) => {
                // Tags other than `default` are not modelled.
                return error(
                    StatusCode::BAD_REQUEST,
                    "Invalid name: tags are not modelled",
                );
            }
            Ok((_, alias, None)) => Some(alias),
        },
        Some(_) => return error(StatusCode::BAD_REQUEST, "Invalid name: not a string"),
    };
    let (root, env_vars) = {
        let inner = shared.lock();
        let Some(sb) = inner.sandboxes.get(&id) else {
            return error(
                StatusCode::NOT_FOUND,
                format!("Sandbox \"{id}\" doesn't exist or you don't have access to it"),
            );
        };
        if parse_version(&sb.envd_version) < (0, 5, 0) {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "sandbox envd version must be at least 0.5.0 to create snapshots, current version: {}",
                    sb.envd_version
                ),
            );
        }
        if sb.paused {
            return error(
                StatusCode::CONFLICT,
                format!("Sandbox '{id}' cannot be snapshotted while in 'paused' state"),
            );
        }
        (sb.info.root.clone(), sb.info.env_vars.clone())
    };
    let existing = alias.as_ref().and_then(|a| {
        let inner = shared.lock();
        inner
            .templates
            .iter()
            .find(|(_, t)| t.alias.as_ref() == Some(a))
            .map(|(id, _)| id.clone())
    });
    let template_id = existing.unwrap_or_else(sandbox_id);
    let copy = shared
        .dir
        .path()
        .join(format!("template-{template_id}-{}", hex(8)));
    if let Err(e) = copy_tree(&root, &copy) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Error creating snapshot template: {e}"),
        );
    }
    let template = Template {
        root: copy,
        env_vars,
        alias,
        sandbox_id: id,
    };
    let info = snapshot_info(&template_id, &template);
    let delay = {
        let mut inner = shared.lock();
        if let Some(old) = inner.templates.insert(template_id, template) {
            let _ = std::fs::remove_dir_all(old.root);
        }
        inner.calls.push((Route::Snapshot, 201));
        inner.snapshot_delay
    };
    // The template exists from here on, whether or not the caller hears of it.
    tokio::time::sleep(delay).await;
    checked(&shared, StatusCode::CREATED, Spec::E2bSnapshotInfo, info)
}

/// `GET /snapshots` as infra handlers/snapshot_template_list.go answers it: the team's
/// snapshot templates as `SnapshotInfo`, filtered by `sandboxID` (the source sandbox) and
/// `name` (an alias or id, `:tag` ignored here), `limit` 1..=100 (default 100) with an
/// `X-Next-Token` cursor (here: the last template id of the page).
async fn list_snapshots(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::ListSnapshots) {
        return r;
    }
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        _ => return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 100"),
    };
    let inner = shared.lock();
    let by_name = match q.get("name") {
        None => None,
        Some(name) => match parse_name(name) {
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("Invalid name: {e}")),
            // An unknown name matches nothing (200, empty).
            Ok(_) => Some(resolve_template(&inner, name)),
        },
    };
    let after = q.get("nextToken").cloned();
    let matching: Vec<(&String, &Template)> = inner
        .templates
        .iter()
        .filter(|(id, _)| {
            by_name
                .as_ref()
                .is_none_or(|want| want.as_ref() == Some(*id))
        })
        .filter(|(_, t)| q.get("sandboxID").is_none_or(|s| *s == t.sandbox_id))
        .filter(|(id, _)| after.as_ref().is_none_or(|a| id.as_str() > a.as_str()))
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .take(limit)
        .map(|(id, t)| snapshot_info(id, t))
        .collect();
    let next = (matching.len() > limit).then(|| matching[limit - 1].0.clone());
    drop(inner);
    for info in &page {
        conform(&shared, Spec::E2bSnapshotInfo, info);
    }
    record(&shared, Route::ListSnapshots, StatusCode::OK);
    let mut resp = axum::Json(page).into_response();
    if let Some(n) = next {
        resp.headers_mut()
            .insert("X-Next-Token", n.parse().expect("header"));
    }
    resp
}

/// `DELETE /templates/{templateID}` (what the SDK's `deleteSnapshot` calls with a snapshot
/// id) as infra handlers/template_delete.go answers it: the tag is ignored (`ParseName`), 400
/// "cannot delete template '<id>' because there are running sandboxes using it", 404 for an
/// unknown template, else 204.
async fn delete_template(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if let Err(r) = gate(&shared, &headers, Route::DeleteTemplate) {
        return r;
    }
    let mut inner = shared.lock();
    let Some(name) = resolve_template(&inner, &id) else {
        return error(StatusCode::NOT_FOUND, format!("template '{id}' not found"));
    };
    if inner
        .sandboxes
        .values()
        .any(|sb| resolve_template(&inner, &sb.info.template_id).as_ref() == Some(&name))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("cannot delete template '{name}' because there are running sandboxes using it"),
        );
    }
    if let Some(t) = inner.templates.remove(&name) {
        let _ = std::fs::remove_dir_all(t.root);
    }
    inner.calls.push((Route::DeleteTemplate, 204));
    StatusCode::NO_CONTENT.into_response()
}

fn signal_groups(groups: &[i32], signal: i32) {
    for g in groups {
        // SAFETY: killpg with a group id we created; a stale one is ESRCH.
        unsafe {
            libc::killpg(*g, signal);
        }
    }
}

async fn expire_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = chrono::Utc::now();
        let mut inner = shared.lock();
        let gone: Vec<String> = inner
            .sandboxes
            .iter()
            // A paused sandbox keeps no timer: E2B keeps it until it is resumed or killed.
            .filter(|(_, s)| !s.paused && s.end_at <= now)
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

pub(crate) fn kill_groups(groups: &mut Vec<i32>) {
    for g in groups.drain(..) {
        // SAFETY: killpg with a group id we created (process_group(0)); a stale one is ESRCH.
        unsafe {
            libc::killpg(g, libc::SIGKILL);
        }
    }
}

/// A sandbox path under `root` (relative paths are relative to the home directory).
pub(crate) fn map_path(root: &Path, path: &str) -> PathBuf {
    map_path_home(root, "home/user", path)
}

/// As [`map_path`], with the home directory `home` (relative to `root`).
pub(crate) fn map_path_home(root: &Path, home: &str, path: &str) -> PathBuf {
    let rel = match path.strip_prefix('/') {
        Some(abs) => PathBuf::from(abs),
        None => PathBuf::from(home).join(path),
    };
    // `..` would leave the sandbox's directory: drop such components.
    let clean: PathBuf = rel
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    root.join(clean)
}

// === envd ===

/// envd's JSON error (`{"code": <int>, "message"}`) for plain HTTP routes.
fn envd_error(status: StatusCode, message: impl Into<String>) -> Response {
    error(status, message)
}

/// Connect's unary error: `{"code": "<connect code>", "message"}`.
fn connect_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

/// What an envd handler needs of its sandbox.
struct EnvdTarget {
    id: String,
    root: PathBuf,
    env: BTreeMap<String, String>,
    /// `(major, minor, patch)` of the sandbox's envd.
    version: (u64, u64, u64),
}

/// `"0.5.7"` → `(0, 5, 7)`; pre-release/build suffixes ignored.
pub fn parse_version(v: &str) -> (u64, u64, u64) {
    let core = v.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// The sandbox a request is for: by `E2b-Sandbox-Id`, with its access token checked.
fn envd_sandbox(shared: &Shared, headers: &HeaderMap) -> Result<EnvdTarget, Response> {
    let id = headers
        .get("E2b-Sandbox-Id")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| envd_error(StatusCode::BAD_REQUEST, "missing E2b-Sandbox-Id header"))?;
    let port = headers
        .get("E2b-Sandbox-Port")
        .and_then(|v| v.to_str().ok());
    if port != Some("49983") {
        return Err(envd_error(
            StatusCode::BAD_GATEWAY,
            "The sandbox is running but port is not open",
        ));
    }
    let mut inner = shared.lock();
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|raw| String::from_utf8_lossy(&raw).into_owned());
    inner.basic_auth_seen.push(basic.is_some());
    // The edge's answer for an id it cannot route (killed, expired, never existed): JSON
    // `{sandboxId, message, code}` with status 502, as E2B's edge serves it (the template's
    // vars carry the status: infra@131b8014:packages/shared/pkg/proxy/template/template.go;
    // message from packages/shared/pkg/proxy/template/sandbox_not_found.go; the live edge
    // answers 502 — the JS SDK maps that body to NotFoundError).
    // A paused sandbox is not routable either: the edge answers the same 502 (no auto-resume
    // configured: infra packages/client-proxy/internal/proxy/proxy.go → ErrNodeNotFound →
    // NewErrSandboxNotFound).
    let Some(sb) = inner.sandboxes.get(id).filter(|sb| !sb.paused) else {
        return Err((
            StatusCode::BAD_GATEWAY,
            axum::Json(
                json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502}),
            ),
        )
            .into_response());
    };
    let token = headers.get("X-Access-Token").and_then(|v| v.to_str().ok());
    if sb.info.secure && token != Some(sb.token.as_str()) {
        return Err(envd_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized access, please provide a valid access token or method signing if supported",
        ));
    }
    let version = parse_version(&sb.envd_version);
    let user = basic.map(|u| u.trim_end_matches(':').to_string());
    // envd < 0.4.0 has no default user: every call must name one (js-sdk
    // e2b-dev/E2B@b8029973:packages/js-sdk/src/envd/versions.ts ENVD_DEFAULT_USER = 0.4.0;
    // wording of the refusal unverified).
    if version < (0, 4, 0) && user.is_none() {
        return Err(connect_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "no user specified",
        ));
    }
    Ok(EnvdTarget {
        id: id.to_string(),
        root: sb.info.root.clone(),
        env: sb.info.env_vars.clone(),
        version,
    })
}

/// The network between a cloud sandbox and the vault proxy. A real sandbox dials the public
/// address of its proxy URL (`https://sb:token@203.0.113.7:8443`) and the internet carries
/// the bytes to the brain's host; these fakes run commands on this host, where that address
/// goes nowhere. A route (`route_public`) stands for that path: the proxy URL's `host:port`
/// becomes the local address the bytes reach (a test's relay in front of the proxy), scheme
/// and credentials unchanged. Without routes the env is passed as is.
pub(crate) fn route_proxy_env(
    env: &BTreeMap<String, String>,
    routes: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut env = env.clone();
    for k in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
        if let Some(url) = env.get_mut(k) {
            for (public, local) in routes {
                if let Some(prefix) = url.strip_suffix(&format!("@{public}")) {
                    *url = format!("{prefix}@{local}");
                }
            }
        }
    }
    env
}

fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

fn event(v: Value) -> Bytes {
    envelope(0, &serde_json::to_vec(&json!({"event": v})).expect("json"))
}

async fn start_process(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (id, root, sandbox_env) = match envd_sandbox(&shared, &headers) {
        Ok(t) => (t.id, t.root, t.env),
        Err(r) => return r,
    };
    let sandbox_env = route_proxy_env(&sandbox_env, &shared.lock().routes);
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/connect+json" {
        return connect_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unimplemented",
            format!("unsupported content type {ct:?}"),
        );
    }
    if body.len() < 5 || body[0] != 0 {
        return connect_error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "request is not one uncompressed envelope",
        );
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return connect_error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "envelope length mismatch",
        );
    }
    let req: Value = match serde_json::from_slice(&body[5..]) {
        Ok(v) => v,
        Err(e) => {
            return connect_error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("unmarshal StartRequest: {e}"),
            );
        }
    };
    conform(&shared, Spec::EnvdStartRequest, &req);
    let process = &req["process"];
    let Some(cmd) = process["cmd"].as_str().filter(|c| !c.is_empty()) else {
        return connect_error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "process.cmd is required",
        );
    };
    let args: Vec<String> = process["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let home = root.join("home/user");
    let cwd = match process["cwd"].as_str() {
        Some(c) => map_path(&root, c),
        None => home.clone(),
    };
    if !cwd.is_dir() {
        // envd rejects the cwd before any event (handler.New: CodeInvalidArgument "cwd '%s'
        // does not exist", infra@0000635f:packages/envd/internal/services/process/handler/
        // handler.go), but the stream has already begun: connect-go answers HTTP 200 and
        // carries the error in the end-of-stream message (connectrpc/connect-go
        // protocol_connect.go, connectStreamingHandlerConn: errors of a streaming handler go
        // into the EndStreamMessage, never into the status line).
        let resolved = match process["cwd"].as_str() {
            Some(c) if c.starts_with('/') => c.to_string(),
            Some(c) => format!("/home/user/{c}"),
            None => "/home/user".into(),
        };
        return end_stream_error(
            "invalid_argument",
            &format!("cwd '{resolved}' does not exist"),
        );
    }
    let timeout = headers
        .get("Connect-Timeout-Ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_millis);
    let keepalive = headers
        .get("Keepalive-Ping-Interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(90));
    let mut command = tokio::process::Command::new(cmd);
    command
        .args(&args)
        .current_dir(&cwd)
        .env("HOME", &home)
        .env("AIRLOCK_FAKE_ROOT", &root)
        .envs(&sandbox_env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(envs) = process["envs"].as_object() {
        for (k, v) in envs {
            if let Some(v) = v.as_str() {
                command.env(k, v);
            }
        }
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            // start.go: `proc.Start()` failing → CodeInvalidArgument, in the end-of-stream.
            return end_stream_error(
                "invalid_argument",
                &format!("error starting process '{cmd}': {e}"),
            );
        }
    };
    let pid = child.id().unwrap_or(0) as i32;
    if let Some(sb) = shared.lock().sandboxes.get_mut(&id) {
        sb.groups.push(pid);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        // Sends are ignored when the client left: the process keeps running, as in envd.
        let _ = tx.send(event(json!({"start": {"pid": pid}}))).await;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let b64 = base64::engine::general_purpose::STANDARD;
        let (mut out_open, mut err_open) = (true, true);
        let mut buf_o = vec![0u8; 32 * 1024];
        let mut buf_e = vec![0u8; 32 * 1024];
        let mut timed_out = false;
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 86400);
        while out_open || err_open {
            tokio::select! {
                n = stdout.read(&mut buf_o), if out_open => match n {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => { let _ = tx.send(event(json!({"data": {"stdout": b64.encode(&buf_o[..n])}}))).await; }
                },
                n = stderr.read(&mut buf_e), if err_open => match n {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => { let _ = tx.send(event(json!({"data": {"stderr": b64.encode(&buf_e[..n])}}))).await; }
                },
                _ = tokio::time::sleep(keepalive) => { let _ = tx.send(event(json!({"keepalive": {}}))).await; }
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {
                    timed_out = true;
                    // SAFETY: the group this command leads.
                    unsafe { libc::killpg(pid, libc::SIGKILL); }
                    break;
                }
            }
        }
        let status = child.wait().await;
        let end = match status {
            Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(0), _) => json!({"exited": true, "status": "exit status 0"}),
                (Some(c), _) => {
                    json!({"exitCode": c, "exited": true, "status": format!("exit status {c}")})
                }
                (None, Some(sig)) => {
                    json!({"exitCode": -1, "status": format!("signal: {}", signal_name(sig))})
                }
                (None, None) => json!({"exitCode": -1, "status": "unknown"}),
            },
            Err(e) => json!({"exitCode": -1, "status": "unknown", "error": e.to_string()}),
        };
        let _ = tx.send(event(json!({"end": end}))).await;
        let trailer = if timed_out {
            json!({"error": {"code": "deadline_exceeded", "message": "context deadline exceeded"}})
        } else {
            json!({})
        };
        let _ = tx
            .send(envelope(0x02, &serde_json::to_vec(&trailer).expect("json")))
            .await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/connect+json")
        .body(Body::from_stream(stream))
        .expect("response")
}

/// A Connect server stream that failed before its first message: HTTP 200, one
/// end-of-stream envelope (flag 0x02) carrying `{"error": {code, message}}`.
fn end_stream_error(code: &str, message: &str) -> Response {
    let trailer = json!({"error": {"code": code, "message": message}});
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/connect+json")
        .body(Body::from(envelope(
            0x02,
            &serde_json::to_vec(&trailer).expect("json"),
        )))
        .expect("response")
}

pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "hangup",
        2 => "interrupt",
        9 => "killed",
        15 => "terminated",
        _ => "unknown signal",
    }
}

async fn read_file(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let root = match envd_sandbox(&shared, &headers) {
        Ok(t) => t.root,
        Err(r) => return r,
    };
    let Some(path) = q.get("path") else {
        return envd_error(StatusCode::BAD_REQUEST, "path is required");
    };
    let real = map_path(&root, path);
    if real.is_dir() {
        return envd_error(
            StatusCode::BAD_REQUEST,
            format!("path '{path}' is a directory"),
        );
    }
    match std::fs::read(&real) {
        Ok(data) => ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response(),
        Err(_) => envd_error(
            StatusCode::NOT_FOUND,
            format!("path '{path}' does not exist"),
        ),
    }
}

async fn write_file(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let target = match envd_sandbox(&shared, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let root = target.root;
    let Some(path) = q.get("path") else {
        return envd_error(
            StatusCode::BAD_REQUEST,
            "path is required for application/octet-stream",
        );
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // envd takes multipart/form-data (field `file`) always, and a raw octet-stream body only
    // from 0.5.7 on (js-sdk envd/versions.ts ENVD_OCTET_STREAM_UPLOAD = 0.5.7); older envd
    // parses every upload as multipart and fails on anything else.
    let body = if ct == "application/octet-stream" && target.version >= (0, 5, 7) {
        body
    } else if ct.starts_with("multipart/form-data") {
        match multipart_file(ct, &body) {
            Some(data) => data,
            None => {
                return envd_error(
                    StatusCode::BAD_REQUEST,
                    "error parsing multipart form: no part named \"file\"",
                );
            }
        }
    } else {
        return envd_error(
            StatusCode::BAD_REQUEST,
            "error parsing multipart form: request Content-Type isn't multipart/form-data",
        );
    };
    let real = map_path(&root, path);
    if real.is_dir() {
        return envd_error(
            StatusCode::BAD_REQUEST,
            format!("path '{path}' is a directory"),
        );
    }
    if let Some(parent) = real.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = std::fs::write(&real, &body) {
        return envd_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("error writing file '{path}': {e}"),
        );
    }
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    axum::Json(json!([{"path": path, "name": name, "type": "file"}])).into_response()
}

async fn list_dir(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let root = match envd_sandbox(&shared, &headers) {
        Ok(t) => t.root,
        Err(r) => return r,
    };
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return connect_error(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string()),
    };
    conform(&shared, Spec::EnvdListDirRequest, &req);
    let Some(path) = req["path"].as_str() else {
        return connect_error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "path is required",
        );
    };
    let real = map_path(&root, path);
    // ListDir: followSymlink → NotFound "path not found: <err>", checkIfDirectory → NotFound
    // "directory not found: <err>" / InvalidArgument "path is not a directory: <p>"
    // (infra@05634ddb:packages/envd/internal/services/filesystem/dir.go). A unary Connect
    // error: HTTP 404 / 400 with `{code, message}`.
    let shown = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/home/user/{path}")
    };
    if !real.exists() {
        return connect_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("path not found: lstat {shown}: no such file or directory"),
        );
    }
    if !real.is_dir() {
        return connect_error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("path is not a directory: {shown}"),
        );
    }
    let rd = match std::fs::read_dir(&real) {
        Ok(rd) => rd,
        Err(e) => {
            return connect_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("error reading directory {shown}: {e}"),
            );
        }
    };
    let mut entries = Vec::new();
    for e in rd.flatten() {
        let meta = match e.metadata() {
            Ok(m) => m,
            Err(_) => continue,
        };
        let name = e.file_name().to_string_lossy().into_owned();
        entries.push(json!({
            "name": name,
            "type": if meta.is_dir() { "FILE_TYPE_DIRECTORY" } else { "FILE_TYPE_FILE" },
            "path": format!("{}/{name}", path.trim_end_matches('/')),
            // int64 → JSON string in proto3-JSON.
            "size": meta.len().to_string(),
            "owner": "user",
            "group": "user",
        }));
    }
    checked(
        &shared,
        StatusCode::OK,
        Spec::EnvdListDirResponse,
        json!({"entries": entries}),
    )
}

/// The `file` part of a `multipart/form-data` body (enough of RFC 7578 for one file part).
pub(crate) fn multipart_file(content_type: &str, body: &[u8]) -> Option<Bytes> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&text[at..], delim.as_bytes()) {
        parts.push(at + pos);
        at += pos + delim.len();
    }
    for w in parts.windows(2) {
        let part = &text[w[0] + delim.len()..w[1]];
        let part = part.strip_prefix(b"\r\n")?;
        let split = find(part, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&part[..split]).to_ascii_lowercase();
        if head.contains("name=\"file\"") {
            let data = &part[split + 4..];
            let data = data.strip_suffix(b"\r\n").unwrap_or(data);
            return Some(Bytes::copy_from_slice(data));
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
