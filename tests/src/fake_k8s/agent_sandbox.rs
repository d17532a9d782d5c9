//! kubernetes-sigs/agent-sandbox in the fake cluster: the CRDs' REST endpoints and discovery,
//! and controllers that move the objects the way the real ones do.
//!
//! Followed (kubernetes-sigs/agent-sandbox@2fd412d55e):
//! - `k8s/crds/*.yaml`: groups `agents.x-k8s.io` (`sandboxes`) and
//!   `extensions.agents.x-k8s.io` (`sandboxclaims`, `sandboxtemplates`, `sandboxwarmpools`),
//!   version `v1beta1`, namespaced; `spec.podTemplate` required on a Sandbox and a template,
//!   `spec.warmPoolRef.name` on a claim; invalid objects are `422 Invalid`.
//! - `controllers/sandbox_controller.go`: the pod is named after the Sandbox, labelled
//!   `agents.x-k8s.io/sandbox-name-hash`, controller-owned by it, and recreated if it goes
//!   missing; `status.podIPs` and `nodeName` mirror the pod; `Ready` is
//!   `DependenciesReady` only when the pod is Running, Ready and has an IP, else
//!   `DependenciesNotReady` with "Pod exists with phase: …" / "Pod is Running but not
//!   Ready", or `PodFailed` / `PodSucceeded`; `PodScheduled` is copied from the pod; `Finished`
//!   is set when the pod ended; past `shutdownTime` with `shutdownPolicy: Delete` the Sandbox
//!   is deleted.
//! - `extensions/controllers/sandboxwarmpool_controller.go`: keeps `spec.replicas` (by
//!   default one) Sandboxes named `<pool>-<suffix>` from the template, labelled
//!   `agents.x-k8s.io/warm-pool-sandbox=<hash of the pool name>`, owned by the pool;
//!   `status.replicas` / `readyReplicas`.
//! - `extensions/controllers/sandboxclaim_controller.go`: a claim adopts a Ready warm Sandbox
//!   (`completeAdoption`: pool label and owner references dropped, the claim becomes the
//!   controller owner, `agents.x-k8s.io/pod-name` annotation; the claim gets the
//!   `agents.x-k8s.io/sandbox-name` annotation), or cold-creates one from the pool's template
//!   when none is ready; `status.sandbox.{name,podIPs}` and the Sandbox's `Ready` condition
//!   are forwarded; a missing pool is `Ready=False, reason WarmPoolNotFound`; past the claim's
//!   `lifecycle.shutdownTime` with `shutdownPolicy: Delete` the claim is deleted.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    Shared, admit, already_exists, failure, field_selector_matches, merge_patch, now_rfc3339,
    query_map, random_hex, reply, selector_matches, status_body,
};

const SANDBOX_GROUP: &str = "agents.x-k8s.io";
const EXT_GROUP: &str = "extensions.agents.x-k8s.io";
const VERSION: &str = "v1beta1";
const NAME_HASH_LABEL: &str = "agents.x-k8s.io/sandbox-name-hash";
const WARM_POOL_LABEL: &str = "agents.x-k8s.io/warm-pool-sandbox";
const POD_NAME_ANNOTATION: &str = "agents.x-k8s.io/pod-name";
const ASSIGNED_ANNOTATION: &str = "agents.x-k8s.io/sandbox-name";

/// (group, kind) of a plural this fake serves.
fn kind_of(plural: &str) -> Option<(&'static str, &'static str)> {
    Some(match plural {
        "sandboxes" => (SANDBOX_GROUP, "Sandbox"),
        "sandboxclaims" => (EXT_GROUP, "SandboxClaim"),
        "sandboxtemplates" => (EXT_GROUP, "SandboxTemplate"),
        "sandboxwarmpools" => (EXT_GROUP, "SandboxWarmPool"),
        _ => return None,
    })
}

/// `GET /apis`.
pub(super) fn group_list(installed: bool) -> Value {
    let groups: Vec<Value> = if installed {
        [SANDBOX_GROUP, EXT_GROUP]
            .iter()
            .map(|g| {
                let gv = json!({"groupVersion": format!("{g}/{VERSION}"), "version": VERSION});
                json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
            })
            .collect()
    } else {
        Vec::new()
    };
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str) -> Value {
    let verbs = json!([
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "create",
        "update",
        "watch"
    ]);
    let resources: Vec<Value> = [
        "sandboxes",
        "sandboxclaims",
        "sandboxtemplates",
        "sandboxwarmpools",
    ]
    .iter()
    .filter_map(|p| {
        let (g, kind) = kind_of(p)?;
        (g == group).then(|| {
            json!({"name": p, "singularName": kind.to_lowercase(), "namespaced": true,
                       "kind": kind, "verbs": verbs})
        })
    })
    .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1",
           "groupVersion": format!("{group}/{VERSION}"), "resources": resources})
}

fn not_served() -> Response {
    failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

pub(super) fn route(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["apis", group, VERSION] if [SANDBOX_GROUP, EXT_GROUP].contains(group) => {
            reply(200, resource_list(group))
        }
        ["apis", group, VERSION, "namespaces", ns, plural, rest @ ..]
            if rest.len() <= 1 && kind_of(plural).is_some_and(|(g, _)| g == *group) =>
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
                        "{plural}.{group} is forbidden: User \"system:serviceaccount:airlock-system:airlock-brain\" \
                         cannot {verb} resource \"{plural}\" in API group \"{group}\" in the namespace \"{ns}\""
                    ),
                );
            }
            let query = query_map(uri);
            if verb == "list" && query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return super::watch::serve(shared, ns, plural, &query);
            }
            let name = rest.first().copied().unwrap_or_default();
            match verb {
                "list" => list(shared, ns, plural, &query),
                "create" => create(shared, ns, plural, &body),
                "get" => get(shared, ns, plural, name),
                "delete" => match delete(shared, ns, plural, name) {
                    Some(obj) => reply(200, obj),
                    None => not_found(group, plural, name),
                },
                _ => patch(shared, ns, plural, name, headers, &body),
            }
        }
        _ => not_served(),
    }
}

fn not_found(group: &str, plural: &str, name: &str) -> Response {
    reply(
        404,
        status_body(
            404,
            "NotFound",
            &format!("{plural}.{group} \"{name}\" not found"),
            Some(json!({"name": name, "group": group, "kind": plural})),
        ),
    )
}

fn key(plural: &str, ns: &str, name: &str) -> (String, String, String) {
    (plural.to_string(), ns.to_string(), name.to_string())
}

fn invalid(group: &str, kind: &str, name: &str, cause: &str) -> Response {
    reply(
        422,
        status_body(
            422,
            "Invalid",
            &format!("{kind}.{group} \"{name}\" is invalid: {cause}"),
            Some(json!({"name": name, "group": group, "kind": kind})),
        ),
    )
}

/// What the CRD's OpenAPI schema requires (the fields the backend sends).
fn schema_error(kind: &str, obj: &Value) -> Option<&'static str> {
    let spec = &obj["spec"];
    if !spec.is_object() {
        return Some("spec: Required value");
    }
    match kind {
        "Sandbox" | "SandboxTemplate" => {
            if !spec["podTemplate"]["spec"]["containers"].is_array() {
                return Some("spec.podTemplate.spec.containers: Required value");
            }
            if let Some(p) = spec["shutdownPolicy"].as_str()
                && !["Delete", "Retain"].contains(&p)
            {
                return Some(
                    "spec.shutdownPolicy: Unsupported value: supported values: \"Delete\", \"Retain\"",
                );
            }
        }
        "SandboxClaim"
            if spec["warmPoolRef"]["name"]
                .as_str()
                .is_none_or(str::is_empty) =>
        {
            return Some("spec.warmPoolRef.name: Required value");
        }
        _ => {}
    }
    None
}

/// Stores a new custom resource (as a client or a controller) and starts its controller.
#[allow(clippy::result_large_err)] // the error is the handler's answer, returned as is
fn insert(shared: &Arc<Shared>, ns: &str, plural: &str, body: &[u8]) -> Result<Value, Response> {
    let (group, kind) = kind_of(plural).ok_or_else(not_served)?;
    let mut inner = shared.lock();
    let (name, mut obj) = admit(&mut inner, ns, kind, body).map_err(|r| *r)?;
    obj["apiVersion"] = json!(format!("{group}/{VERSION}"));
    obj["metadata"]["generation"] = json!(1);
    if let Some(cause) = schema_error(kind, &obj) {
        return Err(invalid(group, kind, &name, cause));
    }
    if inner.objects.contains_key(&key(plural, ns, &name)) {
        return Err(already_exists(&format!("{plural}.{group}"), &name));
    }
    inner.objects.insert(key(plural, ns, &name), obj.clone());
    inner.record(plural, ns, "ADDED", &obj);
    drop(inner);
    let uid = obj["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (shared, ns, n) = (shared.clone(), ns.to_string(), name.clone());
    match kind {
        "Sandbox" => {
            tokio::spawn(sandbox_controller(shared, ns, n, uid));
        }
        "SandboxWarmPool" => {
            tokio::spawn(warm_pool_controller(shared, ns, n, uid));
        }
        "SandboxClaim" => {
            tokio::spawn(claim_controller(shared, ns, n, uid));
        }
        _ => {}
    }
    Ok(obj)
}

fn create(shared: &Arc<Shared>, ns: &str, plural: &str, body: &[u8]) -> Response {
    match insert(shared, ns, plural, body) {
        Ok(obj) => reply(201, obj),
        Err(resp) => resp,
    }
}

fn get(shared: &Arc<Shared>, ns: &str, plural: &str, name: &str) -> Response {
    let (group, _) = kind_of(plural).unwrap_or_default();
    match shared.lock().objects.get(&key(plural, ns, name)) {
        Some(obj) => reply(200, obj.clone()),
        None => not_found(group, plural, name),
    }
}

fn list(
    shared: &Arc<Shared>,
    ns: &str,
    plural: &str,
    query: &std::collections::HashMap<String, String>,
) -> Response {
    let (group, kind) = kind_of(plural).unwrap_or_default();
    let labels = query.get("labelSelector").cloned().unwrap_or_default();
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    if let Err(e) = field_selector_matches(&fields, &json!({})) {
        return failure(400, "BadRequest", &e);
    }
    let inner = shared.lock();
    let empty = serde_json::Map::new();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|(k, _)| k.0 == plural && k.1 == ns)
        .map(|(_, v)| v)
        .filter(|o| {
            selector_matches(
                &labels,
                o["metadata"]["labels"].as_object().unwrap_or(&empty),
            ) && field_selector_matches(&fields, o).unwrap_or(false)
        })
        .cloned()
        .collect();
    reply(
        200,
        json!({"kind": format!("{kind}List"), "apiVersion": format!("{group}/{VERSION}"),
               "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
    )
}

/// Deletes a custom resource (no finalizers: it goes at once) and what it owns.
fn delete(shared: &Shared, ns: &str, plural: &str, name: &str) -> Option<Value> {
    let mut inner = shared.lock();
    let mut obj = inner.objects.remove(&key(plural, ns, name))?;
    inner.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
    obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    inner.record(plural, ns, "DELETED", &obj);
    if let Some(uid) = obj["metadata"]["uid"].as_str() {
        let uid = uid.to_string();
        inner.collect_garbage(&uid);
    }
    Some(obj)
}

fn patch(
    shared: &Arc<Shared>,
    ns: &str,
    plural: &str,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let (group, kind) = kind_of(plural).unwrap_or_default();
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
    let Ok(p) = serde_json::from_slice::<Value>(body) else {
        return failure(400, "BadRequest", "error decoding patch: invalid JSON");
    };
    let mut inner = shared.lock();
    let Some(current) = inner.objects.get(&key(plural, ns, name)).cloned() else {
        return not_found(group, plural, name);
    };
    let mut updated = current.clone();
    merge_patch(&mut updated, &p);
    if let Some(cause) = schema_error(kind, &updated) {
        return invalid(group, kind, name, cause);
    }
    if updated["spec"] != current["spec"] {
        let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
        updated["metadata"]["generation"] = json!(g + 1);
    }
    inner.rv += 1;
    updated["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
    inner.objects.insert(key(plural, ns, name), updated.clone());
    inner.record(plural, ns, "MODIFIED", &updated);
    reply(200, updated)
}

// === controllers ===

/// The stored object if it is still the one with `uid`.
fn current(shared: &Shared, plural: &str, ns: &str, name: &str, uid: &str) -> Option<Value> {
    shared
        .lock()
        .objects
        .get(&key(plural, ns, name))
        .filter(|o| o["metadata"]["uid"] == uid)
        .cloned()
}

/// Writes `f`'s change to the object (a controller's update), if it is still there.
fn modify(shared: &Shared, plural: &str, ns: &str, name: &str, f: impl FnOnce(&mut Value)) {
    let mut inner = shared.lock();
    let Some(obj) = inner.objects.get(&key(plural, ns, name)) else {
        return;
    };
    let mut updated = obj.clone();
    f(&mut updated);
    if &updated == obj {
        return;
    }
    inner.rv += 1;
    updated["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
    inner.objects.insert(key(plural, ns, name), updated.clone());
    inner.record(plural, ns, "MODIFIED", &updated);
}

/// `NameHash` stand-in: a short stable hash of a name (FNV-1a), as label values.
fn name_hash(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

fn past(time: &Value) -> bool {
    time.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t <= chrono::Utc::now())
}

fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
           "controller": true, "blockOwnerDeletion": true})
}

/// `meta.SetStatusCondition`: keeps `lastTransitionTime` unless the status changed.
fn set_conditions(old: &Value, new: Vec<Value>) -> Value {
    let mut out = Vec::new();
    for mut c in new {
        let prior = old
            .as_array()
            .and_then(|a| a.iter().find(|o| o["type"] == c["type"]));
        c["lastTransitionTime"] = match prior {
            Some(p) if p["status"] == c["status"] => p["lastTransitionTime"].clone(),
            _ => json!(now_rfc3339()),
        };
        out.push(c);
    }
    json!(out)
}

fn condition(t: &str, status: &str, reason: &str, message: &str, generation: &Value) -> Value {
    json!({"type": t, "status": status, "reason": reason, "message": message,
           "observedGeneration": generation})
}

/// The Sandbox's status from its pod (`computeReadyCondition` and friends).
fn sandbox_status(sb: &Value, pod: Option<&Value>) -> Value {
    let generation = &sb["metadata"]["generation"];
    let mut conditions = Vec::new();
    let phase = pod
        .and_then(|p| p["status"]["phase"].as_str())
        .unwrap_or("Pending");
    let ips: Vec<Value> = pod
        .and_then(|p| p["status"]["podIPs"].as_array())
        .map(|a| a.iter().map(|i| i["ip"].clone()).collect())
        .unwrap_or_default();
    let ready = match pod {
        None => condition(
            "Ready",
            "False",
            "DependenciesNotReady",
            "Pod does not exist",
            generation,
        ),
        Some(_) if phase == "Succeeded" => condition(
            "Ready",
            "False",
            "PodSucceeded",
            "Pod completed successfully",
            generation,
        ),
        Some(_) if phase == "Failed" => {
            condition("Ready", "False", "PodFailed", "Pod failed", generation)
        }
        Some(p) if phase == "Running" => {
            let pod_ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            match (pod_ready, ips.is_empty()) {
                (true, false) => condition(
                    "Ready",
                    "True",
                    "DependenciesReady",
                    "Pod is Ready",
                    generation,
                ),
                (true, true) => condition(
                    "Ready",
                    "False",
                    "DependenciesNotReady",
                    "Pod is Ready but has no podIPs yet",
                    generation,
                ),
                _ => condition(
                    "Ready",
                    "False",
                    "DependenciesNotReady",
                    "Pod is Running but not Ready",
                    generation,
                ),
            }
        }
        Some(_) => condition(
            "Ready",
            "False",
            "DependenciesNotReady",
            &format!("Pod exists with phase: {phase}"),
            generation,
        ),
    };
    conditions.push(ready);
    if let Some(p) = pod {
        let scheduled = p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"));
        conditions.push(match scheduled {
            Some(c) => condition(
                "PodScheduled",
                c["status"].as_str().unwrap_or("Unknown"),
                c["reason"].as_str().unwrap_or("PodScheduled"),
                c["message"].as_str().unwrap_or_default(),
                generation,
            ),
            None => condition(
                "PodScheduled",
                "Unknown",
                "PodSchedulingUnknown",
                "",
                generation,
            ),
        });
        if phase == "Succeeded" || phase == "Failed" {
            let reason = if phase == "Failed" {
                "PodFailed"
            } else {
                "PodSucceeded"
            };
            conditions.push(condition("Finished", "True", reason, "", generation));
        }
    }
    let mut status = json!({
        "conditions": set_conditions(&sb["status"]["conditions"], conditions),
        "selector": format!("{NAME_HASH_LABEL}={}", name_hash(sb["metadata"]["name"].as_str().unwrap_or_default())),
    });
    if !ips.is_empty() {
        status["podIPs"] = json!(ips);
    }
    if let Some(node) = pod.and_then(|p| p["spec"]["nodeName"].as_str()) {
        status["nodeName"] = json!(node);
    }
    status
}

async fn sandbox_controller(shared: Arc<Shared>, ns: String, name: String, uid: String) {
    loop {
        let Some(sb) = current(&shared, "sandboxes", &ns, &name, &uid) else {
            return;
        };
        let spec = &sb["spec"];
        if past(&spec["shutdownTime"]) && spec["shutdownPolicy"] == "Delete" {
            delete(&shared, &ns, "sandboxes", &name);
            return;
        }
        let pod_name = sb["metadata"]["annotations"][POD_NAME_ANNOTATION]
            .as_str()
            .unwrap_or(&name)
            .to_string();
        let pod = shared
            .lock()
            .pods
            .get(&(ns.clone(), pod_name.clone()))
            .map(|e| e.object.clone());
        if pod.is_none() {
            // (Re)create the pod from the template, owned by the Sandbox.
            let template = &spec["podTemplate"];
            let mut labels = template["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            labels[NAME_HASH_LABEL] = json!(name_hash(&name));
            let body = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "labels": labels,
                             "annotations": template["metadata"]["annotations"].clone(),
                             "ownerReferences": [owner(&format!("{SANDBOX_GROUP}/{VERSION}"), "Sandbox", &name, &uid)]},
                "spec": template["spec"].clone(),
            });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let _ = super::create_pod(&shared, &ns, &body);
            // Deleted meanwhile: its garbage collection may have run before the pod existed.
            if current(&shared, "sandboxes", &ns, &name, &uid).is_none() {
                let _ = super::delete_pod(&shared, &ns, &pod_name);
                return;
            }
        }
        let status = sandbox_status(&sb, pod.as_ref());
        modify(&shared, "sandboxes", &ns, &name, |o| o["status"] = status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_ready(sb: &Value) -> bool {
    sb["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    }) && sb["status"]["podIPs"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
}

/// Sandboxes in `ns` still in pool `pool_uid`.
fn pool_members(shared: &Shared, ns: &str, pool_uid: &str) -> Vec<Value> {
    shared
        .lock()
        .objects
        .iter()
        .filter(|(k, _)| k.0 == "sandboxes" && k.1 == ns)
        .map(|(_, v)| v)
        .filter(|v| {
            v["metadata"]["labels"][WARM_POOL_LABEL].is_string()
                && v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|o| o["uid"] == pool_uid))
        })
        .cloned()
        .collect()
}

async fn warm_pool_controller(shared: Arc<Shared>, ns: String, name: String, uid: String) {
    loop {
        let Some(pool) = current(&shared, "sandboxwarmpools", &ns, &name, &uid) else {
            return;
        };
        let replicas = pool["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let template_name = pool["spec"]["sandboxTemplateRef"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let template = shared
            .lock()
            .objects
            .get(&key("sandboxtemplates", &ns, &template_name))
            .cloned();
        let members = pool_members(&shared, &ns, &uid);
        if let Some(template) = template {
            for _ in members.len()..replicas {
                let sb_name = format!("{name}-{}", &random_hex(3)[..5]);
                let mut pod_template = template["spec"]["podTemplate"].clone();
                // A template-provisioned pod gets no service-account token unless it asks.
                if pod_template["spec"]["automountServiceAccountToken"].is_null() {
                    pod_template["spec"]["automountServiceAccountToken"] = json!(false);
                }
                let body = json!({
                    "metadata": {"name": sb_name,
                                 "labels": {WARM_POOL_LABEL: name_hash(&name)},
                                 "ownerReferences": [owner(&format!("{EXT_GROUP}/{VERSION}"), "SandboxWarmPool", &name, &uid)]},
                    "spec": {"podTemplate": pod_template},
                });
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let _ = insert(&shared, &ns, "sandboxes", &body);
                if current(&shared, "sandboxwarmpools", &ns, &name, &uid).is_none() {
                    delete(&shared, &ns, "sandboxes", &sb_name);
                    return;
                }
            }
        }
        let ready = members.iter().filter(|m| is_ready(m)).count();
        modify(&shared, "sandboxwarmpools", &ns, &name, |o| {
            o["status"] = json!({"replicas": members.len(), "readyReplicas": ready,
                                 "selector": format!("{WARM_POOL_LABEL}={}", name_hash(&name)),
                                 "observedGeneration": o["metadata"]["generation"].clone()});
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn claim_controller(shared: Arc<Shared>, ns: String, name: String, uid: String) {
    let claim_owner = owner(
        &format!("{EXT_GROUP}/{VERSION}"),
        "SandboxClaim",
        &name,
        &uid,
    );
    loop {
        let Some(claim) = current(&shared, "sandboxclaims", &ns, &name, &uid) else {
            return;
        };
        let generation = claim["metadata"]["generation"].clone();
        let lifecycle = &claim["spec"]["lifecycle"];
        if past(&lifecycle["shutdownTime"]) && lifecycle["shutdownPolicy"] == "Delete" {
            delete(&shared, &ns, "sandboxclaims", &name);
            return;
        }
        let pool_name = claim["spec"]["warmPoolRef"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let assigned = claim["metadata"]["annotations"][ASSIGNED_ANNOTATION]
            .as_str()
            .map(str::to_string);
        let sandbox = match assigned {
            Some(sb) => shared
                .lock()
                .objects
                .get(&key("sandboxes", &ns, &sb))
                .cloned(),
            None => {
                let pool = shared
                    .lock()
                    .objects
                    .get(&key("sandboxwarmpools", &ns, &pool_name))
                    .cloned();
                let Some(pool) = pool else {
                    let message = format!("SandboxWarmPool \"{pool_name}\" not found");
                    modify(&shared, "sandboxclaims", &ns, &name, |o| {
                        o["status"]["conditions"] = set_conditions(
                            &o["status"]["conditions"],
                            vec![condition(
                                "Ready",
                                "False",
                                "WarmPoolNotFound",
                                &message,
                                &generation,
                            )],
                        );
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let pool_uid = pool["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let candidate = pool_members(&shared, &ns, &pool_uid)
                    .into_iter()
                    .find(is_ready);
                let adopted = match candidate {
                    Some(sb) => {
                        let sb_name = sb["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        // completeAdoption: out of the pool, owned by the claim.
                        modify(&shared, "sandboxes", &ns, &sb_name, |o| {
                            if let Some(l) = o["metadata"]["labels"].as_object_mut() {
                                l.remove(WARM_POOL_LABEL);
                                l.insert("agents.x-k8s.io/launch-type".into(), json!("warm"));
                            }
                            o["metadata"]["ownerReferences"] = json!([claim_owner.clone()]);
                            o["metadata"]["annotations"][POD_NAME_ANNOTATION] = json!(sb_name);
                        });
                        sb_name
                    }
                    None => {
                        // Cold start from the pool's template, named after the claim.
                        let template_name = pool["spec"]["sandboxTemplateRef"]["name"]
                            .as_str()
                            .unwrap_or_default();
                        let template = shared
                            .lock()
                            .objects
                            .get(&key("sandboxtemplates", &ns, template_name))
                            .cloned();
                        let Some(template) = template else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let body = json!({
                            "metadata": {"name": name, "labels": {"agents.x-k8s.io/launch-type": "cold"},
                                         "ownerReferences": [claim_owner.clone()]},
                            "spec": {"podTemplate": template["spec"]["podTemplate"].clone(),
                                     "shutdownTime": lifecycle["shutdownTime"].clone(),
                                     "shutdownPolicy": "Delete"},
                        });
                        let _ = insert(
                            &shared,
                            &ns,
                            "sandboxes",
                            &serde_json::to_vec(&body).unwrap_or_default(),
                        );
                        name.clone()
                    }
                };
                modify(&shared, "sandboxclaims", &ns, &name, |o| {
                    o["metadata"]["annotations"][ASSIGNED_ANNOTATION] = json!(adopted);
                });
                shared
                    .lock()
                    .objects
                    .get(&key("sandboxes", &ns, &adopted))
                    .cloned()
            }
        };
        modify(&shared, "sandboxclaims", &ns, &name, |o| {
            let (ready, sandbox_status) = match &sandbox {
                None => (
                    condition(
                        "Ready",
                        "False",
                        "SandboxMissing",
                        "Sandbox does not exist",
                        &generation,
                    ),
                    json!({}),
                ),
                Some(sb) => {
                    let forwarded = sb["status"]["conditions"]
                        .as_array()
                        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                        .cloned()
                        .map(|mut c| {
                            c["observedGeneration"] = generation.clone();
                            c
                        })
                        .unwrap_or_else(|| {
                            condition(
                                "Ready",
                                "False",
                                "SandboxNotReady",
                                "Sandbox is not ready",
                                &generation,
                            )
                        });
                    let mut s = json!({"name": sb["metadata"]["name"]});
                    if let Some(ips) = sb["status"]["podIPs"].as_array() {
                        s["podIPs"] = json!(ips);
                    }
                    (forwarded, s)
                }
            };
            o["status"]["conditions"] = set_conditions(&o["status"]["conditions"], vec![ready]);
            o["status"]["sandbox"] = sandbox_status;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
