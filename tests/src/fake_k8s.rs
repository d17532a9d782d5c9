//! A fake Kubernetes API server (plus a fake kubelet) on loopback, for the kubernetes backend.
//!
//! It speaks the API server's wire format for the subset the backend uses, so the real `kube`
//! client drives it exactly as it would a cluster: core/v1 `pods` and `secrets` (create, get,
//! list with `labelSelector`/`limit`/`continue`, delete, JSON merge-patch), discovery (`/api`,
//! `/apis`, `/version`), `Status` error bodies with the real reasons and messages (`NotFound`,
//! `AlreadyExists`, `Unauthorized`, `Forbidden`, `Invalid`, `BadRequest`, `TooManyRequests`
//! with `Retry-After`, `InternalError`, `ServiceUnavailable`), bearer-token auth, a namespace
//! outside the token's RBAC answered 403, `resourceVersion` bumped on every write, and the
//! garbage collector's owner-reference cascade (any owner: pod, Sandbox, claim, warm pool).
//!
//! **Watches** (`watch.rs`) follow the API server: `?watch=true&resourceVersion=N` streams
//! newline-delimited `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}` for events
//! after N, filtered by `labelSelector`/`fieldSelector`, with bookmarks when asked and an end
//! at `timeoutSeconds`; a resourceVersion older than the retained event window is answered
//! with HTTP 200 and one `ERROR` event carrying a `410 Expired` Status ("too old resource
//! version"), as the watch cache does (kubernetes/kubernetes
//! `staging/src/k8s.io/apiserver/pkg/storage/cacher/cacher.go` `newErrWatcher`,
//! `watch_cache.go` `getAllEventsSinceLocked`; event framing
//! `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/watch.go`, `metav1.WatchEvent`).
//!
//! **agent-sandbox** (`agent_sandbox.rs`, when `FakeKubeOptions::agent_sandbox`): discovery
//! and the `Sandbox`, `SandboxTemplate`, `SandboxClaim` and `SandboxWarmPool` resources, with
//! controllers that behave like kubernetes-sigs/agent-sandbox@2fd412d55e's.
//!
//! **Port-forward** (`portforward.rs`): `pods/{name}/portforward?ports=P` over WebSocket
//! (`v4.channel.k8s.io`), relaying to the pod's agent like the kubelet.
//!
//! The kubelet side moves a pod like a real node: `Pending` → scheduled (or `PodScheduled=False,
//! reason Unschedulable` when its requests exceed the one fake node) → `ContainerCreating`
//! (`CreateContainerConfigError` while a referenced Secret or key is missing) → after
//! `ready_delay`, a real `sandbox-agent` process is started with the pod's env (secret
//! references resolved) on its own loopback address `127.X.Y.Z` (Linux routes all of 127/8 to
//! `lo`), reported as `status.podIP`, and the pod turns `Running` with `Ready=True`. An image
//! whose name contains `does-not-exist` goes `ErrImagePull` → `ImagePullBackOff`. A pod past
//! `activeDeadlineSeconds` is killed and marked `Failed`/`DeadlineExceeded`; an agent that
//! exits marks the container terminated. Deleting a pod kills its agent's process group.
//!
//! The agent runs on the host, not in a container: file mounts (`subPath` of a secret volume)
//! and `emptyDir`s are staged in a per-pod directory, and env values naming a mounted file are
//! pointed at the staged copy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Settings of one fake cluster.
#[derive(Debug, Clone)]
pub struct FakeKubeOptions {
    /// Bearer token the API server accepts.
    pub token: String,
    /// The only namespace the token's RBAC allows (others answer 403).
    pub namespace: String,
    /// Time from "scheduled" to the agent being started (a slow image pull/start).
    pub ready_delay: Duration,
    /// Allocatable resources of the single fake node.
    pub node_cpu_millis: u64,
    pub node_memory_mib: u64,
    /// `sandbox-agent` binary the kubelet runs for every pod.
    pub agent_path: PathBuf,
    /// Whether kubernetes-sigs/agent-sandbox's CRDs (and controllers) are installed.
    pub agent_sandbox: bool,
    /// Report pod IPs nothing listens on (`127.254.254.254`), as a brain outside the
    /// cluster sees them; port-forward still reaches the agent.
    pub unroutable_pod_ips: bool,
}

impl FakeKubeOptions {
    pub fn new(agent_path: PathBuf) -> Self {
        Self {
            token: format!("fake-sa-token-{}", random_hex(8)),
            namespace: "airlock-sandboxes".into(),
            ready_delay: Duration::from_millis(100),
            node_cpu_millis: 4000,
            node_memory_mib: 8192,
            agent_path,
            agent_sandbox: false,
            unroutable_pod_ips: false,
        }
    }
}

/// A fault to answer instead of handling requests that match.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Option<Method>,
    /// Substring of the request path (`/pods`, `/secrets/…`).
    pub path_contains: String,
    pub status: u16,
    /// Seconds for `Retry-After` (429/503).
    pub retry_after: Option<u64>,
    /// How many matching requests get the fault.
    pub times: usize,
}

/// One request the server saw (after auth), for assertions on retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    pub status: u16,
}

struct PodEntry {
    object: Value,
    agent: Option<tokio::process::Child>,
    dir: Option<tempfile::TempDir>,
    created: std::time::Instant,
    /// When the kubelet reported the pod Ready (for the benchmark's "fake's own time").
    ready_at: Option<std::time::Instant>,
    /// Where the agent really listens (port-forward dials it).
    ip: Option<String>,
}

/// One stored change, for watches.
struct Change {
    rv: u64,
    resource: String,
    ns: String,
    kind: &'static str,
    object: Value,
}

/// Events kept for watches to resume from; older resourceVersions get `410 Expired`.
const EVENT_WINDOW: usize = 4096;

struct Inner {
    rv: u64,
    pods: BTreeMap<(String, String), PodEntry>,
    secrets: BTreeMap<(String, String), Value>,
    /// Custom resources by (plural, namespace, name).
    objects: BTreeMap<(String, String, String), Value>,
    changes: VecDeque<Change>,
    /// Highest resourceVersion no longer in `changes`.
    compacted: u64,
    /// Watch requests still to be answered `410 Expired` whatever their resourceVersion.
    expire_watches: usize,
    notify: Arc<tokio::sync::Notify>,
    faults: VecDeque<Fault>,
    seen: Vec<Seen>,
    next_ip: u32,
}

struct Shared {
    opts: FakeKubeOptions,
    /// Second octet of this cluster's pod IPs, random so parallel fakes do not collide.
    ip_octet: u8,
    inner: Mutex<Inner>,
}

/// A running fake cluster. Dropping it stops the server and kills every agent it started.
pub struct FakeKube {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeKube {
    pub async fn start(opts: FakeKubeOptions) -> Self {
        let ip_octet = 100 + (random_bytes(1)[0] % 150);
        let shared = Arc::new(Shared {
            opts,
            ip_octet,
            inner: Mutex::new(Inner {
                rv: 1000,
                pods: BTreeMap::new(),
                secrets: BTreeMap::new(),
                faults: VecDeque::new(),
                seen: Vec::new(),
                objects: BTreeMap::new(),
                changes: VecDeque::new(),
                compacted: 1000,
                expire_watches: 0,
                notify: Arc::new(tokio::sync::Notify::new()),
                next_ip: u32::from(random_bytes(1)[0]) * 256 + 2,
            }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}/portforward",
                axum::routing::any(portforward::handle),
            )
            .fallback(handle)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            shared,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token(&self) -> &str {
        &self.shared.opts.token
    }

    pub fn namespace(&self) -> &str {
        &self.shared.opts.namespace
    }

    /// Writes a kubeconfig pointing at this server with `token` (use a wrong one to test 401).
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: airlock-brain\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  \
             context:\n    cluster: fake\n    user: airlock-brain\n    namespace: {}\n\
             current-context: fake\n",
            self.url(),
            self.shared.opts.namespace
        );
        std::fs::write(path, yaml).expect("writing kubeconfig");
    }

    /// Answers the next `times` requests matching `method`/`path_contains` with `status`.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Requests seen so far (method, path, status answered).
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// Names of the pods that exist, in any namespace.
    pub fn pod_names(&self) -> Vec<String> {
        self.shared
            .lock()
            .pods
            .keys()
            .map(|k| k.1.clone())
            .collect()
    }

    pub fn secret_names(&self) -> Vec<String> {
        self.shared
            .lock()
            .secrets
            .keys()
            .map(|k| k.1.clone())
            .collect()
    }

    /// The stored pod object, as the API server would return it.
    pub fn pod(&self, name: &str) -> Option<Value> {
        let inner = self.shared.lock();
        inner
            .pods
            .iter()
            .find(|(k, _)| k.1 == name)
            .map(|(_, e)| e.object.clone())
    }

    pub fn secret(&self, name: &str) -> Option<Value> {
        let inner = self.shared.lock();
        inner
            .secrets
            .iter()
            .find(|(k, _)| k.1 == name)
            .map(|(_, v)| v.clone())
    }

    /// Time from the pod's creation to the kubelet marking it Ready.
    pub fn ready_latency(&self, pod: &str) -> Option<Duration> {
        let inner = self.shared.lock();
        let (_, e) = inner.pods.iter().find(|(k, _)| k.1 == pod)?;
        Some(e.ready_at?.duration_since(e.created))
    }

    /// PIDs of the agents currently running for pods.
    pub fn agent_pids(&self) -> Vec<u32> {
        let inner = self.shared.lock();
        inner
            .pods
            .values()
            .filter_map(|e| e.agent.as_ref().and_then(|c| c.id()))
            .collect()
    }

    /// The next `n` watch requests are answered `410 Expired`, as after an etcd compaction
    /// between the client's list and its watch.
    pub fn expire_next_watches(&self, n: usize) {
        self.shared.lock().expire_watches += n;
    }

    /// A stored custom resource (`plural` e.g. `sandboxes`) by name, in any namespace.
    pub fn object(&self, plural: &str, name: &str) -> Option<Value> {
        let inner = self.shared.lock();
        inner
            .objects
            .iter()
            .find(|(k, _)| k.0 == plural && k.2 == name)
            .map(|(_, v)| v.clone())
    }

    /// Names of the stored custom resources of `plural`.
    pub fn object_names(&self, plural: &str) -> Vec<String> {
        let inner = self.shared.lock();
        inner
            .objects
            .keys()
            .filter(|k| k.0 == plural)
            .map(|k| k.2.clone())
            .collect()
    }

    /// Simulates a node dying: kills a pod's agent without telling the API server.
    pub fn kill_agent(&self, pod: &str) {
        let mut inner = self.shared.lock();
        if let Some((_, e)) = inner.pods.iter_mut().find(|(k, _)| k.1 == pod)
            && let Some(child) = e.agent.take()
        {
            kill_group(&child);
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.server.abort();
        let mut inner = self.shared.lock();
        for entry in inner.pods.values_mut() {
            if let Some(child) = entry.agent.take() {
                kill_group(&child);
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Records a change for watches (the object as stored, at its resourceVersion).
    fn record(&mut self, resource: &str, ns: &str, kind: &'static str, object: &Value) {
        let rv = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.rv);
        self.changes.push_back(Change {
            rv,
            resource: resource.to_string(),
            ns: ns.to_string(),
            kind,
            object: object.clone(),
        });
        while self.changes.len() > EVENT_WINDOW {
            if let Some(old) = self.changes.pop_front() {
                self.compacted = self.compacted.max(old.rv);
            }
        }
        self.notify.notify_waiters();
    }

    /// The garbage collector: every object whose owner references name `uid` is deleted
    /// (background propagation), and so on down.
    fn collect_garbage(&mut self, uid: &str) {
        let owned = |obj: &Value| {
            obj["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        };
        let mut gone: Vec<(String, String, Value)> = Vec::new();
        let pods: Vec<_> = self
            .pods
            .iter()
            .filter(|(_, e)| owned(&e.object))
            .map(|(k, _)| k.clone())
            .collect();
        for key in pods {
            if let Some(mut e) = self.pods.remove(&key) {
                if let Some(child) = e.agent.take() {
                    kill_group(&child);
                }
                gone.push(("pods".into(), key.0, e.object));
            }
        }
        let secrets: Vec<_> = self
            .secrets
            .iter()
            .filter(|(_, v)| owned(v))
            .map(|(k, _)| k.clone())
            .collect();
        for key in secrets {
            if let Some(v) = self.secrets.remove(&key) {
                gone.push(("secrets".into(), key.0, v));
            }
        }
        let objects: Vec<_> = self
            .objects
            .iter()
            .filter(|(_, v)| owned(v))
            .map(|(k, _)| k.clone())
            .collect();
        for key in objects {
            if let Some(v) = self.objects.remove(&key) {
                gone.push((key.0, key.1, v));
            }
        }
        for (resource, ns, mut obj) in gone {
            self.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.record(&resource, &ns, "DELETED", &obj);
            if let Some(uid) = obj["metadata"]["uid"].as_str() {
                let uid = uid.to_string();
                self.collect_garbage(&uid);
            }
        }
    }
}

fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall; the agent was started as the leader of its own process group.
        unsafe {
            libc::killpg(pid as i32, libc::SIGKILL);
        }
    }
}

// === HTTP ===

/// A `Status` error body as the API server writes it.
fn status_body(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        body["details"] = details;
    }
    body
}

fn reply(code: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn failure(code: u16, reason: &str, message: &str) -> Response {
    reply(code, status_body(code, reason, message, None))
}

fn not_found(resource: &str, name: &str) -> Response {
    reply(
        404,
        status_body(
            404,
            "NotFound",
            &format!("{resource} \"{name}\" not found"),
            Some(json!({"name": name, "kind": resource})),
        ),
    )
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    Some((pct_decode(k)?, pct_decode(v)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pct_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == shared.opts.token);
    if !authorized {
        return failure(401, "Unauthorized", "Unauthorized");
    }
    let fault = {
        let mut inner = shared.lock();
        let idx = inner.faults.iter().position(|f| {
            f.times > 0
                && f.method.as_ref().is_none_or(|m| *m == method)
                && path.contains(&f.path_contains)
        });
        idx.map(|i| {
            let f = &mut inner.faults[i];
            f.times -= 1;
            let f = f.clone();
            if f.times == 0 {
                inner.faults.remove(i);
            }
            f
        })
    };
    let response = match fault {
        Some(f) => {
            let message = match f.status {
                429 => "Too many requests, please try again later.".to_string(),
                503 => "the server is currently unable to handle the request".to_string(),
                _ => "Internal error occurred: injected fault".to_string(),
            };
            let mut resp = failure(f.status, reason_for(f.status), &message);
            if let Some(secs) = f.retry_after
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                resp.headers_mut().insert("retry-after", v);
            }
            resp
        }
        None => route(&shared, &method, &uri, &headers, body),
    };
    shared.lock().seen.push(Seen {
        method,
        path,
        query: uri.query().unwrap_or_default().to_string(),
        status: response.status().as_u16(),
    });
    response
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api"] => reply(
            200,
            json!({"kind": "APIVersions", "versions": ["v1"],
                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        ),
        ["apis"] => reply(200, agent_sandbox::group_list(shared.opts.agent_sandbox)),
        ["apis", ..] if shared.opts.agent_sandbox => {
            agent_sandbox::route(shared, method, uri, headers, body)
        }
        ["version"] => reply(
            200,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}),
        ),
        ["api", "v1", "namespaces", ns, resource, rest @ ..]
            if matches!(*resource, "pods" | "secrets") && rest.len() <= 1 =>
        {
            let verb = match (method.as_str(), rest.is_empty()) {
                ("GET", true) => "list",
                ("POST", true) => "create",
                ("GET", false) => "get",
                ("DELETE", false) => "delete",
                ("PATCH", false) => "patch",
                _ => {
                    return failure(
                        405,
                        "MethodNotAllowed",
                        "the server does not allow this method on the requested resource",
                    );
                }
            };
            if *ns != shared.opts.namespace {
                return failure(
                    403,
                    "Forbidden",
                    &format!(
                        "{resource} is forbidden: User \"system:serviceaccount:airlock-system:airlock-brain\" \
                         cannot {verb} resource \"{resource}\" in API group \"\" in the namespace \"{ns}\""
                    ),
                );
            }
            let query = query_map(uri);
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") && rest.is_empty() {
                return watch::serve(shared, ns, resource, &query);
            }
            let name = rest.first().copied();
            match (verb, *resource) {
                ("list", r) => list(shared, ns, r, &query),
                ("create", "pods") => create_pod(shared, ns, &body),
                ("create", _) => create_secret(shared, ns, &body),
                ("get", r) => get(shared, ns, r, name.unwrap_or_default()),
                ("delete", "pods") => delete_pod(shared, ns, name.unwrap_or_default()),
                ("delete", _) => delete_secret(shared, ns, name.unwrap_or_default()),
                ("patch", r) => patch(shared, ns, r, name.unwrap_or_default(), headers, &body),
                _ => failure(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            }
        }
        _ => failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Common create checks; returns the object with server-set metadata.
fn admit(
    inner: &mut Inner,
    ns: &str,
    kind: &str,
    body: &[u8],
) -> Result<(String, Value), Box<Response>> {
    let mut obj: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(failure(
            400,
            "BadRequest",
            &format!("the body of the request was in an unknown format: {e}"),
        ))
    })?;
    if !obj.is_object() {
        return Err(Box::new(failure(
            400,
            "BadRequest",
            "the body of the request must be a JSON object",
        )));
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !dns_label(&name) {
        return Err(Box::new(reply(
            422,
            status_body(
                422,
                "Invalid",
                &format!(
                    "{kind} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
                ),
                Some(json!({"name": name, "kind": kind.to_lowercase() + "s"})),
            ),
        )));
    }
    if let Some(body_ns) = obj["metadata"]["namespace"].as_str()
        && body_ns != ns
    {
        return Err(Box::new(failure(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        )));
    }
    inner.rv += 1;
    let meta = &mut obj["metadata"];
    meta["namespace"] = json!(ns);
    meta["uid"] = json!(uuid_like());
    meta["resourceVersion"] = json!(inner.rv.to_string());
    meta["creationTimestamp"] = json!(now_rfc3339());
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!("v1");
    Ok((name, obj))
}

fn create_secret(shared: &Arc<Shared>, ns: &str, body: &[u8]) -> Response {
    let mut inner = shared.lock();
    let (name, mut obj) = match admit(&mut inner, ns, "Secret", body) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    if let Err(e) = serde_json::from_value::<Secret>(obj.clone()) {
        return failure(
            400,
            "BadRequest",
            &format!("Secret in version \"v1\" cannot be handled as a Secret: {e}"),
        );
    }
    if inner.secrets.contains_key(&(ns.to_string(), name.clone())) {
        return already_exists("secrets", &name);
    }
    // The API server folds stringData into data.
    if let Some(Value::Object(sd)) = obj.get("stringData").cloned() {
        for (k, v) in sd {
            let encoded = b64(v.as_str().unwrap_or_default().as_bytes());
            obj["data"][k] = json!(encoded);
        }
        if let Some(o) = obj.as_object_mut() {
            o.remove("stringData");
        }
    }
    inner.secrets.insert((ns.to_string(), name), obj.clone());
    inner.record("secrets", ns, "ADDED", &obj);
    reply(201, obj)
}

fn already_exists(resource: &str, name: &str) -> Response {
    reply(
        409,
        status_body(
            409,
            "AlreadyExists",
            &format!("{resource} \"{name}\" already exists"),
            Some(json!({"name": name, "kind": resource})),
        ),
    )
}

fn create_pod(shared: &Arc<Shared>, ns: &str, body: &[u8]) -> Response {
    let mut inner = shared.lock();
    let (name, mut obj) = match admit(&mut inner, ns, "Pod", body) {
        Ok(v) => v,
        Err(resp) => return *resp,
    };
    let pod: Pod = match serde_json::from_value(obj.clone()) {
        Ok(p) => p,
        Err(e) => {
            return failure(
                400,
                "BadRequest",
                &format!("Pod in version \"v1\" cannot be handled as a Pod: {e}"),
            );
        }
    };
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    if containers.is_empty() {
        return invalid("Pod", &name, "spec.containers: Required value");
    }
    for (i, c) in containers.iter().enumerate() {
        if c.image.as_deref().is_none_or(str::is_empty) {
            return invalid(
                "Pod",
                &name,
                &format!("spec.containers[{i}].image: Required value"),
            );
        }
    }
    if inner.pods.contains_key(&(ns.to_string(), name.clone())) {
        return already_exists("pods", &name);
    }
    obj["status"] = json!({"phase": "Pending", "qosClass": "Guaranteed"});
    let uid = obj["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    inner.pods.insert(
        (ns.to_string(), name.clone()),
        PodEntry {
            object: obj.clone(),
            agent: None,
            dir: None,
            created: std::time::Instant::now(),
            ready_at: None,
            ip: None,
        },
    );
    inner.record("pods", ns, "ADDED", &obj);
    drop(inner);
    tokio::spawn(kubelet(shared.clone(), ns.to_string(), name, uid, pod));
    reply(201, obj)
}

fn invalid(kind: &str, name: &str, cause: &str) -> Response {
    reply(
        422,
        status_body(
            422,
            "Invalid",
            &format!("{kind} \"{name}\" is invalid: {cause}"),
            Some(json!({"name": name, "kind": kind})),
        ),
    )
}

fn get(shared: &Arc<Shared>, ns: &str, resource: &str, name: &str) -> Response {
    let inner = shared.lock();
    let key = (ns.to_string(), name.to_string());
    let found = match resource {
        "pods" => inner.pods.get(&key).map(|e| e.object.clone()),
        _ => inner.secrets.get(&key).cloned(),
    };
    match found {
        Some(obj) => reply(200, obj),
        None => not_found(resource, name),
    }
}

/// `fieldSelector` terms the API server supports for every resource (`metadata.name`,
/// `metadata.namespace`; `=`, `==`, `!=`, comma-ANDed). Another field is a 400, worded like
/// the server's ("field label not supported").
fn field_selector_matches(selector: &str, obj: &Value) -> Result<bool, String> {
    let mut all = true;
    for term in selector.split(',').filter(|t| !t.trim().is_empty()) {
        let (field, want, negate) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, false)
        } else {
            return Err(format!(
                "invalid selector: '{term}'; can't understand '{term}'"
            ));
        };
        let have = match field.trim() {
            "metadata.name" => obj["metadata"]["name"].as_str().unwrap_or_default(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str().unwrap_or_default(),
            other => return Err(format!("field label not supported: {other}")),
        };
        all &= (have == want.trim()) != negate;
    }
    Ok(all)
}

/// `labelSelector` terms: `k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-separated (ANDed).
fn selector_matches(selector: &str, labels: &serde_json::Map<String, Value>) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let term = term.trim();
        let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(term).is_some()
        }
    })
}

fn list(
    shared: &Arc<Shared>,
    ns: &str,
    resource: &str,
    query: &HashMap<String, String>,
) -> Response {
    let inner = shared.lock();
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    if let Err(e) = field_selector_matches(&fields, &json!({})) {
        return failure(400, "BadRequest", &e);
    }
    let all: Vec<Value> = match resource {
        "pods" => inner
            .pods
            .iter()
            .filter(|(k, _)| k.0 == ns)
            .map(|(_, e)| e.object.clone())
            .collect(),
        _ => inner
            .secrets
            .iter()
            .filter(|(k, _)| k.0 == ns)
            .map(|(_, v)| v.clone())
            .collect(),
    };
    let empty = serde_json::Map::new();
    let matching: Vec<Value> = all
        .into_iter()
        .filter(|o| {
            selector_matches(
                &selector,
                o["metadata"]["labels"].as_object().unwrap_or(&empty),
            ) && field_selector_matches(&fields, o).unwrap_or(false)
        })
        .collect();
    let start = match query.get("continue") {
        Some(c) if !c.is_empty() => match c
            .strip_prefix("fake-continue-")
            .and_then(|n| n.parse().ok())
        {
            Some(n) => n,
            None => return failure(400, "BadRequest", "continue key is not valid"),
        },
        _ => 0usize,
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let end = start.saturating_add(limit).min(matching.len());
    let items: Vec<Value> = matching[start.min(end)..end]
        .iter()
        .cloned()
        .map(|mut o| {
            // List items carry no kind/apiVersion on the wire.
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    let mut metadata = json!({"resourceVersion": inner.rv.to_string()});
    if end < matching.len() {
        metadata["continue"] = json!(format!("fake-continue-{end}"));
        metadata["remainingItemCount"] = json!(matching.len() - end);
    }
    let kind = if resource == "pods" {
        "PodList"
    } else {
        "SecretList"
    };
    reply(
        200,
        json!({"kind": kind, "apiVersion": "v1", "metadata": metadata, "items": items}),
    )
}

fn delete_pod(shared: &Arc<Shared>, ns: &str, name: &str) -> Response {
    let mut inner = shared.lock();
    let Some(mut entry) = inner.pods.remove(&(ns.to_string(), name.to_string())) else {
        return not_found("pods", name);
    };
    if let Some(child) = entry.agent.take() {
        kill_group(&child);
    }
    inner.rv += 1;
    let uid = entry.object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut obj = entry.object;
    obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
    inner.record("pods", ns, "DELETED", &obj);
    // Garbage collector: dependents whose owner reference names this pod go with it.
    inner.collect_garbage(&uid);
    reply(200, obj)
}

fn delete_secret(shared: &Arc<Shared>, ns: &str, name: &str) -> Response {
    let mut inner = shared.lock();
    let Some(mut obj) = inner.secrets.remove(&(ns.to_string(), name.to_string())) else {
        return not_found("secrets", name);
    };
    inner.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
    inner.record("secrets", ns, "DELETED", &obj);
    reply(
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
               "details": {"name": name, "kind": "secrets", "uid": obj["metadata"]["uid"]}}),
    )
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn patch(
    shared: &Arc<Shared>,
    ns: &str,
    resource: &str,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ctype.starts_with("application/merge-patch+json") {
        return failure(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json (fake), got {ctype:?}"
            ),
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return failure(400, "BadRequest", "error decoding patch: invalid JSON");
    };
    let mut inner = shared.lock();
    inner.rv += 1;
    let rv = inner.rv.to_string();
    let key = (ns.to_string(), name.to_string());
    let obj = match resource {
        "pods" => inner.pods.get_mut(&key).map(|e| &mut e.object),
        _ => inner.secrets.get_mut(&key),
    };
    let Some(obj) = obj else {
        return not_found(resource, name);
    };
    let mut updated = obj.clone();
    merge_patch(&mut updated, &patch);
    if resource == "secrets"
        && obj["immutable"] == json!(true)
        && (updated["data"] != obj["data"] || updated["immutable"] != obj["immutable"])
    {
        return invalid(
            "Secret",
            name,
            "data: Forbidden: field is immutable when `immutable` is set",
        );
    }
    updated["metadata"]["resourceVersion"] = json!(rv);
    *obj = updated.clone();
    inner.record(resource, ns, "MODIFIED", &updated);
    reply(200, updated)
}

// === kubelet ===

fn parse_cpu_millis(q: &str) -> Option<u64> {
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q.parse::<f64>().ok().map(|c| (c * 1000.0).round() as u64),
    }
}

fn parse_mib(q: &str) -> Option<u64> {
    let units = [
        ("Ki", 1.0 / 1024.0),
        ("Mi", 1.0),
        ("Gi", 1024.0),
        ("Ti", 1024.0 * 1024.0),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| (n * factor).ceil() as u64);
        }
    }
    q.parse::<f64>()
        .ok()
        .map(|b| (b / 1_048_576.0).ceil() as u64)
}

/// Applies `f` to the pod's object if it still exists with `uid`; false if it is gone.
fn update(shared: &Shared, ns: &str, name: &str, uid: &str, f: impl FnOnce(&mut PodEntry)) -> bool {
    let mut inner = shared.lock();
    inner.rv += 1;
    let rv = inner.rv.to_string();
    match inner.pods.get_mut(&(ns.to_string(), name.to_string())) {
        Some(e) if e.object["metadata"]["uid"] == uid => {
            f(e);
            e.object["metadata"]["resourceVersion"] = json!(rv);
            let obj = e.object.clone();
            inner.record("pods", ns, "MODIFIED", &obj);
            true
        }
        _ => false,
    }
}

fn container_status(name: &str, image: &str, state: Value, ready: bool) -> Value {
    json!({"name": name, "image": image, "imageID": "", "ready": ready, "restartCount": 0,
           "started": ready, "state": state})
}

fn conditions(scheduled: Value, ready: bool) -> Value {
    let now = now_rfc3339();
    let r = if ready { "True" } else { "False" };
    let mut list = vec![scheduled];
    list.push(json!({"type": "Initialized", "status": "True", "lastTransitionTime": now}));
    list.push(json!({"type": "ContainersReady", "status": r, "lastTransitionTime": now}));
    list.push(json!({"type": "Ready", "status": r, "lastTransitionTime": now}));
    json!(list)
}

async fn kubelet(shared: Arc<Shared>, ns: String, name: String, uid: String, pod: Pod) {
    let spec = pod.spec.clone().unwrap_or_default();
    let container = spec.containers[0].clone();
    let image = container.image.clone().unwrap_or_default();
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone().or_else(|| r.limits.clone()))
        .unwrap_or_default();
    let cpu = requests
        .get("cpu")
        .and_then(|q| parse_cpu_millis(&q.0))
        .unwrap_or(0);
    let mem = requests
        .get("memory")
        .and_then(|q| parse_mib(&q.0))
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(10)).await;

    // Scheduler.
    let mut insufficient = Vec::new();
    if cpu > shared.opts.node_cpu_millis {
        insufficient.push("1 Insufficient cpu");
    }
    if mem > shared.opts.node_memory_mib {
        insufficient.push("1 Insufficient memory");
    }
    if !insufficient.is_empty() {
        let message = format!(
            "0/1 nodes are available: {}. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
            insufficient.join(", ")
        );
        update(&shared, &ns, &name, &uid, |e| {
            e.object["status"]["conditions"] = json!([{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": now_rfc3339()}]);
        });
        return;
    }
    let scheduled =
        json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()});
    let waiting = |reason: &str, message: Option<&str>| {
        let mut w = json!({"reason": reason});
        if let Some(m) = message {
            w["message"] = json!(m);
        }
        json!({"waiting": w})
    };
    if !update(&shared, &ns, &name, &uid, |e| {
        let s = &mut e.object["status"];
        s["conditions"] = conditions(scheduled.clone(), false);
        s["hostIP"] = json!("127.0.0.1");
        s["startTime"] = json!(now_rfc3339());
        s["containerStatuses"] = json!([container_status(
            &container.name,
            &image,
            waiting("ContainerCreating", None),
            false
        )]);
        e.object["spec"]["nodeName"] = json!("fake-node-1");
    }) {
        return;
    }

    // Image pull.
    if image.contains("does-not-exist") {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let pull = format!(
            "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": not found"
        );
        update(&shared, &ns, &name, &uid, |e| {
            e.object["status"]["containerStatuses"] = json!([container_status(
                &container.name,
                &image,
                waiting("ErrImagePull", Some(&pull)),
                false
            )]);
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let backoff = format!("Back-off pulling image \"{image}\"");
        update(&shared, &ns, &name, &uid, |e| {
            e.object["status"]["containerStatuses"] = json!([container_status(
                &container.name,
                &image,
                waiting("ImagePullBackOff", Some(&backoff)),
                false
            )]);
        });
        return;
    }

    // Secrets referenced by env and volumes must exist before the container is created.
    let env = loop {
        match resolve(&shared, &ns, &pod) {
            Ok(env) => break env,
            Err(message) => {
                let alive = update(&shared, &ns, &name, &uid, |e| {
                    e.object["status"]["containerStatuses"] = json!([container_status(
                        &container.name,
                        &image,
                        waiting("CreateContainerConfigError", Some(&message)),
                        false
                    )]);
                });
                if !alive {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    tokio::time::sleep(shared.opts.ready_delay).await;

    // Container start: a real agent on its own loopback address.
    let ip = {
        let mut inner = shared.lock();
        // Skip .0 and .255 host parts so every pod gets a distinct, ordinary address.
        loop {
            inner.next_ip = inner.next_ip.wrapping_add(1);
            let low = inner.next_ip & 0xff;
            if low != 0 && low != 0xff {
                break;
            }
        }
        let n = inner.next_ip;
        Ipv4Addr::new(
            127,
            shared.ip_octet,
            ((n >> 8) & 0xff) as u8,
            (n & 0xff) as u8,
        )
    };
    let port = agent_port(&container);
    let started = match start_agent(&shared.opts.agent_path, &pod, env, ip, port).await {
        Ok(s) => s,
        Err(message) => {
            update(&shared, &ns, &name, &uid, |e| {
                e.object["status"]["phase"] = json!("Failed");
                e.object["status"]["containerStatuses"] = json!([container_status(
                    &container.name,
                    &image,
                    json!({"terminated": {"exitCode": 128, "reason": "StartError", "message": message}}),
                    false
                )]);
            });
            return;
        }
    };
    let (child, dir) = started;
    let mut child = Some(child);
    let reported = if shared.opts.unroutable_pod_ips {
        "127.254.254.254".to_string()
    } else {
        ip.to_string()
    };
    let alive = update(&shared, &ns, &name, &uid, |e| {
        e.ip = Some(ip.to_string());
        let s = &mut e.object["status"];
        s["phase"] = json!("Running");
        s["podIP"] = json!(reported);
        s["podIPs"] = json!([{"ip": reported}]);
        s["conditions"] = conditions(scheduled.clone(), true);
        s["containerStatuses"] = json!([container_status(
            &container.name,
            &image,
            json!({"running": {"startedAt": now_rfc3339()}}),
            true
        )]);
        e.agent = child.take();
        e.dir = Some(dir);
        e.ready_at = Some(std::time::Instant::now());
    });
    if !alive {
        if let Some(c) = child {
            kill_group(&c);
        }
        return;
    }

    // Running: watch the deadline and the agent.
    let deadline = spec
        .active_deadline_seconds
        .map(|s| std::time::Instant::now() + Duration::from_secs(s.max(0) as u64));
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let expired = deadline.is_some_and(|d| std::time::Instant::now() >= d);
        let mut gone = false;
        let still = update(&shared, &ns, &name, &uid, |e| {
            let exited = match e.agent.as_mut() {
                Some(c) => c.try_wait().ok().flatten().map(|s| s.code().unwrap_or(137)),
                None => Some(137),
            };
            if expired {
                if let Some(c) = e.agent.take() {
                    kill_group(&c);
                }
                let s = &mut e.object["status"];
                s["phase"] = json!("Failed");
                s["reason"] = json!("DeadlineExceeded");
                s["message"] =
                    json!("Pod was active on the node longer than the specified deadline");
                s["conditions"] = conditions(scheduled.clone(), false);
                gone = true;
            } else if let Some(code) = exited {
                let s = &mut e.object["status"];
                s["phase"] = json!("Failed");
                s["conditions"] = conditions(scheduled.clone(), false);
                s["containerStatuses"] = json!([container_status(
                    &container.name,
                    &image,
                    json!({"terminated": {"exitCode": code, "reason": "Error", "finishedAt": now_rfc3339()}}),
                    false
                )]);
                gone = true;
            }
        });
        if !still || gone {
            return;
        }
    }
}

fn agent_port(container: &k8s_openapi::api::core::v1::Container) -> u16 {
    let args = container.args.clone().unwrap_or_default();
    let from_args = args
        .windows(2)
        .filter(|w| w[0] == "--listen")
        .filter_map(|w| w[1].rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
        .next_back();
    from_args
        .or_else(|| {
            container
                .ports
                .as_ref()
                .and_then(|p| p.first())
                .and_then(|p| u16::try_from(p.container_port).ok())
        })
        .unwrap_or(7700)
}

/// A file or directory the kubelet puts at a mount path.
enum Mount {
    File(Vec<u8>),
    Dir,
}

/// The pod's env with secret references resolved, and what to mount where.
type Resolved = (Vec<(String, String)>, Vec<(String, Mount)>);

fn resolve(shared: &Shared, ns: &str, pod: &Pod) -> Result<Resolved, String> {
    let inner = shared.lock();
    let secret_data = |secret: &str, key: &str| -> Result<Vec<u8>, String> {
        let obj = inner
            .secrets
            .get(&(ns.to_string(), secret.to_string()))
            .ok_or_else(|| format!("secret \"{secret}\" not found"))?;
        let encoded = obj["data"][key]
            .as_str()
            .ok_or_else(|| format!("couldn't find key {key} in Secret {ns}/{secret}"))?;
        unb64(encoded).ok_or_else(|| format!("key {key} in Secret {ns}/{secret} is not base64"))
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let c = &spec.containers[0];
    let mut env = Vec::new();
    for e in c.env.clone().unwrap_or_default() {
        let value = match (
            &e.value,
            e.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref()),
        ) {
            (Some(v), _) => v.clone(),
            (None, Some(r)) => String::from_utf8(secret_data(&r.name, &r.key)?)
                .map_err(|_| format!("key {} is not UTF-8", r.key))?,
            (None, None) => String::new(),
        };
        env.push((e.name.clone(), value));
    }
    let volumes: HashMap<String, _> = spec
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let mut mounts = Vec::new();
    for m in c.volume_mounts.clone().unwrap_or_default() {
        let v = volumes
            .get(&m.name)
            .ok_or_else(|| format!("volume \"{}\" not found", m.name))?;
        if v.empty_dir.is_some() {
            mounts.push((m.mount_path.clone(), Mount::Dir));
        } else if let Some(s) = &v.secret {
            let secret = s.secret_name.clone().unwrap_or_default();
            let sub = m
                .sub_path
                .clone()
                .ok_or("secret volumes without subPath are not supported by this fake")?;
            let key = s
                .items
                .clone()
                .unwrap_or_default()
                .into_iter()
                .find(|i| i.path == sub)
                .map(|i| i.key)
                .unwrap_or(sub);
            mounts.push((
                m.mount_path.clone(),
                Mount::File(secret_data(&secret, &key)?),
            ));
        }
    }
    Ok((env, mounts))
}

async fn start_agent(
    agent: &Path,
    pod: &Pod,
    (env, mounts): Resolved,
    ip: Ipv4Addr,
    port: u16,
) -> Result<(tokio::process::Child, tempfile::TempDir), String> {
    let dir = tempfile::Builder::new()
        .prefix("fake-kubelet-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut staged: HashMap<String, PathBuf> = HashMap::new();
    for (i, (path, mount)) in mounts.into_iter().enumerate() {
        let host = dir.path().join(format!("mount-{i}"));
        match mount {
            Mount::Dir => std::fs::create_dir_all(&host),
            Mount::File(bytes) => std::fs::write(&host, bytes),
        }
        .map_err(|e| e.to_string())?;
        staged.insert(path, host);
    }
    let workspace = staged
        .get("/workspace")
        .cloned()
        .unwrap_or_else(|| dir.path().to_path_buf());
    let mut cmd = tokio::process::Command::new(agent);
    cmd.arg("--listen")
        .arg(format!("{ip}:{port}"))
        .arg("--workdir")
        .arg(&workspace)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("LANG", "C.UTF-8")
        .env("RUST_LOG", "warn");
    for (key, value) in env {
        let value = staged
            .get(&value)
            .map(|p| p.as_os_str().to_owned())
            .unwrap_or_else(|| value.into());
        cmd.env(key, value);
    }
    if let Some(home) = staged.get("/home/sandbox") {
        cmd.env("HOME", home);
    }
    if let Some(tmp) = staged.get("/tmp") {
        cmd.env("TMPDIR", tmp);
    }
    let _ = pod;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", agent.display()))?;
    let stdout = child.stdout.take().ok_or("no agent stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    match first {
        Ok(Ok(Some(line))) if line.starts_with("listening on ") => {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok((child, dir))
        }
        other => {
            kill_group(&child);
            Err(format!("agent did not start: {other:?}"))
        }
    }
}

mod agent_sandbox;
mod portforward;
mod watch;

// === small helpers (no extra dependencies) ===

fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf
}

fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid_like() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&x| x == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", "hello world!"] {
            assert_eq!(unb64(&b64(s.as_bytes())).unwrap(), s.as_bytes(), "{s}");
        }
        assert_eq!(b64(b"ab"), "YWI=");
    }

    #[test]
    fn selectors_match_like_the_api_server() {
        let labels = json!({"airlock.sandbox": "sb-1", "app": "x"});
        let labels = labels.as_object().unwrap();
        assert!(selector_matches("airlock.sandbox", labels));
        assert!(selector_matches("airlock.sandbox=sb-1,app==x", labels));
        assert!(!selector_matches("airlock.sandbox=sb-2", labels));
        assert!(selector_matches("app!=y", labels));
        assert!(!selector_matches("!app", labels));
        assert!(selector_matches("", labels));
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_cpu_millis("1500m"), Some(1500));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_mib("768Mi"), Some(768));
        assert_eq!(parse_mib("2Gi"), Some(2048));
        assert!(now_rfc3339().ends_with('Z'));
        assert_eq!(pct_decode("a%3Db%2Cc").as_deref(), Some("a=b,c"));
    }
}
