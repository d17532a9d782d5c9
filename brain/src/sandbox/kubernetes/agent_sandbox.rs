//! kubernetes-sigs/agent-sandbox: the objects the kubernetes backend creates when the CRDs
//! are installed, and how it reads their status.
//!
//! - **`Sandbox`** (`agents.x-k8s.io/v1beta1`): one per sandbox, named like the pod would be,
//!   its `podTemplate` the pod the plain backend renders (same lock-down, same Secret
//!   references). The agent-sandbox controller creates the pod (same name, controller owner
//!   reference to the Sandbox) and reports `status.conditions[Ready]` and `status.podIPs`.
//!   `shutdownTime` = now + TTL + grace with `shutdownPolicy: Delete` is the cluster-side
//!   backstop (the controller deletes the Sandbox, its pod goes with it).
//! - **`SandboxTemplate` / `SandboxWarmPool`** (`extensions.agents.x-k8s.io/v1beta1`): with
//!   `warm_pool` set, the brain keeps one template (the same pod, without per-sandbox env or
//!   files, its agent token from the pool's Secret) and a warm pool of `replicas` pods of it.
//! - **`SandboxClaim`**: one per pooled sandbox; the claim controller hands over a Ready warm
//!   sandbox (`status.sandbox.name`, `status.sandbox.podIPs`, `Ready` forwarded from the
//!   Sandbox). The claim carries no env: a claim with `env` bypasses the warm pool and
//!   cold-starts (`sandboxclaim_controller.go`), and env there would be readable by anyone who
//!   can read claims. The grant goes to the agent's `/configure` instead, as in the brain's own
//!   pools.
//!
//! Followed: kubernetes-sigs/agent-sandbox@2fd412d55e `api/v1beta1/sandbox_types.go`
//! (condition types and reasons, `podIPs`, `shutdownTime`/`shutdownPolicy`),
//! `extensions/api/v1beta1/{sandboxclaim,sandboxtemplate,sandboxwarmpool}_types.go`,
//! `controllers/sandbox_controller.go` (`computeReadyCondition`, pod named after the Sandbox),
//! `extensions/controllers/sandboxclaim_controller.go` (`computeReadyCondition`,
//! `computeAndSetStatus`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::{ApiResource, DynamicObject, ObjectMeta};
use serde::Deserialize;
use serde_json::json;

pub const SANDBOX_GROUP: &str = "agents.x-k8s.io";
pub const EXTENSIONS_GROUP: &str = "extensions.agents.x-k8s.io";
pub const VERSION: &str = "v1beta1";
/// Annotation naming the pod of a Sandbox that adopted an existing one (else: its own name).
pub const POD_NAME_ANNOTATION: &str = "agents.x-k8s.io/pod-name";
/// Label on the pool's template, warm pool and Secret (never the sandbox label: the reaper
/// must not take the pool for a leftover sandbox).
pub const POOL_LABEL: &str = "airlock.pool";

fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: VERSION.into(),
        api_version: format!("{group}/{VERSION}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn sandboxes() -> ApiResource {
    resource(SANDBOX_GROUP, "Sandbox", "sandboxes")
}

pub fn claims() -> ApiResource {
    resource(EXTENSIONS_GROUP, "SandboxClaim", "sandboxclaims")
}

pub fn templates() -> ApiResource {
    resource(EXTENSIONS_GROUP, "SandboxTemplate", "sandboxtemplates")
}

pub fn warm_pools() -> ApiResource {
    resource(EXTENSIONS_GROUP, "SandboxWarmPool", "sandboxwarmpools")
}

/// `metav1.Condition`, the fields read here.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
struct SandboxStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ClaimStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    sandbox: ClaimedSandbox,
}

#[derive(Debug, Default, Deserialize)]
struct ClaimedSandbox {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<String>,
}

/// What a Sandbox's or claim's status says.
#[derive(Debug, PartialEq)]
pub enum CrState {
    /// Ready: the pod (by name) and its first IP.
    Ready { pod: String, ip: String },
    /// Not yet; the reason and message, for the timeout error.
    Starting(String),
    /// Will not become ready.
    Failed(String),
}

fn status<T: Default + serde::de::DeserializeOwned>(obj: &DynamicObject) -> T {
    obj.data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default()
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The pod a Sandbox runs in.
pub fn sandbox_pod_name(sandbox: &DynamicObject) -> String {
    sandbox
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_NAME_ANNOTATION))
        .or(sandbox.metadata.name.as_ref())
        .cloned()
        .unwrap_or_default()
}

/// Ready reasons that will not change by waiting (`sandbox_types.go`: PodSucceeded,
/// PodFailed, SandboxExpired, MultiplePods; `sandboxclaim_controller.go`: TemplateNotFound,
/// WarmPoolNotFound, InvalidMetadata, EnvVarsInjectionRejected, VolumeClaimTemplatesError,
/// ClaimExpired).
const FATAL_REASONS: [&str; 10] = [
    "PodSucceeded",
    "PodFailed",
    "SandboxExpired",
    "MultiplePods",
    "TemplateNotFound",
    "WarmPoolNotFound",
    "InvalidMetadata",
    "EnvVarsInjectionRejected",
    "VolumeClaimTemplatesError",
    "ClaimExpired",
];

fn classify(conditions: &[Condition], pod: String, ip: Option<&String>, what: &str) -> CrState {
    if let Some(c) = find(conditions, "Finished")
        && c.status == "True"
    {
        return CrState::Failed(format!("{what} finished: {}: {}", c.reason, c.message));
    }
    if let Some(c) = find(conditions, "PodScheduled")
        && c.status == "False"
        && c.reason == "Unschedulable"
    {
        return CrState::Failed(format!("pod is unschedulable: {}", c.message));
    }
    match find(conditions, "Ready") {
        Some(c) if c.status == "True" => match ip {
            Some(ip) if !pod.is_empty() => CrState::Ready {
                pod,
                ip: ip.clone(),
            },
            _ => CrState::Starting(format!("{what} Ready but no pod IP reported yet")),
        },
        Some(c) if FATAL_REASONS.contains(&c.reason.as_str()) => {
            CrState::Failed(format!("{what} {}: {}", c.reason, c.message))
        }
        Some(c) => CrState::Starting(format!("{what} {}: {}", c.reason, c.message)),
        None => CrState::Starting(format!("{what} has no Ready condition yet")),
    }
}

pub fn sandbox_state(sandbox: &DynamicObject) -> CrState {
    let s: SandboxStatus = status(sandbox);
    classify(
        &s.conditions,
        sandbox_pod_name(sandbox),
        s.pod_ips.first(),
        "Sandbox",
    )
}

pub fn claim_state(claim: &DynamicObject) -> CrState {
    let s: ClaimStatus = status(claim);
    classify(
        &s.conditions,
        s.sandbox.name,
        s.sandbox.pod_ips.first(),
        "SandboxClaim",
    )
}

fn object(ar: &ApiResource, meta: ObjectMeta, spec: serde_json::Value) -> DynamicObject {
    let mut obj = DynamicObject::new(meta.name.as_deref().unwrap_or_default(), ar);
    obj.metadata = meta;
    obj.data = json!({ "spec": spec });
    obj
}

/// RFC 3339 time `seconds` from now (`metav1.Time`).
pub fn time_in(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A `Sandbox` running `pod` (its labels, annotations and spec), deleted by the controller at
/// `shutdown_in` seconds from now.
pub fn render_sandbox(pod: &Pod, shutdown_in: i64) -> DynamicObject {
    let meta = ObjectMeta {
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        labels: pod.metadata.labels.clone(),
        ..Default::default()
    };
    let spec = json!({
        "podTemplate": {
            "metadata": {
                "labels": pod.metadata.labels.clone().unwrap_or_default(),
                "annotations": pod.metadata.annotations.clone().unwrap_or_default(),
            },
            "spec": pod.spec,
        },
        "shutdownTime": time_in(shutdown_in),
        "shutdownPolicy": "Delete",
        "operatingMode": "Running",
    });
    object(&sandboxes(), meta, spec)
}

/// A `SandboxClaim` on warm pool `pool`, labelled like a sandbox pod (the reaper lists
/// claims), shut down by the controller at `shutdown_in` seconds from now.
pub fn render_claim(
    name: &str,
    namespace: &str,
    labels: BTreeMap<String, String>,
    pool: &str,
    shutdown_in: i64,
) -> DynamicObject {
    let meta = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        ..Default::default()
    };
    let spec = json!({
        "warmPoolRef": {"name": pool},
        "lifecycle": {"shutdownTime": time_in(shutdown_in), "shutdownPolicy": "Delete"},
    });
    object(&claims(), meta, spec)
}

/// The pool's `SandboxTemplate` (named `template`) running `pod`'s spec, and the
/// `SandboxWarmPool` `pool` of `replicas` of it.
pub fn render_pool(
    pod: &Pod,
    template: &str,
    pool: &str,
    replicas: u32,
) -> (DynamicObject, DynamicObject) {
    let labels = BTreeMap::from([(POOL_LABEL.to_string(), pool.to_string())]);
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: pod.metadata.namespace.clone(),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let template_obj = object(
        &templates(),
        meta(template),
        json!({
            "podTemplate": {
                "metadata": {"labels": pod.metadata.labels.clone().unwrap_or_default(),
                             "annotations": pod.metadata.annotations.clone().unwrap_or_default()},
                "spec": pod.spec,
            },
            // The brain's own NetworkPolicy (k8s/) confines sandbox pods; a second,
            // controller-managed default-deny would also cut the brain off.
            "networkPolicyManagement": "Unmanaged",
            "envVarsInjectionPolicy": "Disallowed",
        }),
    );
    let pool_obj = object(
        &warm_pools(),
        meta(pool),
        json!({
            "replicas": replicas,
            "sandboxTemplateRef": {"name": template},
            "updateStrategy": {"type": "Recreate"},
        }),
    );
    (template_obj, pool_obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_status(ar: &ApiResource, status: serde_json::Value) -> DynamicObject {
        let mut o = DynamicObject::new("airlock-sb-1", ar);
        o.data = json!({"status": status});
        o
    }

    #[test]
    fn sandbox_conditions_are_classified_like_the_controller_sets_them() {
        let ar = sandboxes();
        let ready = with_status(
            &ar,
            json!({"conditions": [{"type": "Ready", "status": "True", "reason": "DependenciesReady", "message": "Pod is Ready"}],
                   "podIPs": ["10.0.0.7"]}),
        );
        assert_eq!(
            sandbox_state(&ready),
            CrState::Ready {
                pod: "airlock-sb-1".into(),
                ip: "10.0.0.7".into()
            }
        );
        let starting = with_status(
            &ar,
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "DependenciesNotReady", "message": "Pod exists with phase: Pending"}]}),
        );
        assert!(matches!(sandbox_state(&starting), CrState::Starting(m) if m.contains("Pending")));
        let failed = with_status(
            &ar,
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "PodFailed", "message": "Pod failed"},
                                  {"type": "Finished", "status": "True", "reason": "PodFailed"}]}),
        );
        assert!(matches!(sandbox_state(&failed), CrState::Failed(m) if m.contains("PodFailed")));
        let unschedulable = with_status(
            &ar,
            json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available"}]}),
        );
        assert!(
            matches!(sandbox_state(&unschedulable), CrState::Failed(m) if m.contains("unschedulable"))
        );
        // Ready without an IP yet is not ready for the brain.
        let no_ip = with_status(
            &ar,
            json!({"conditions": [{"type": "Ready", "status": "True", "reason": "DependenciesReady"}]}),
        );
        assert!(matches!(sandbox_state(&no_ip), CrState::Starting(_)));
        assert!(matches!(
            sandbox_state(&DynamicObject::new("x", &ar)),
            CrState::Starting(_)
        ));
    }

    #[test]
    fn claim_status_names_the_adopted_sandbox() {
        let ar = claims();
        let ready = with_status(
            &ar,
            json!({"conditions": [{"type": "Ready", "status": "True", "reason": "DependenciesReady"}],
                   "sandbox": {"name": "pool-abc12", "podIPs": ["10.0.0.9"]}}),
        );
        assert_eq!(
            claim_state(&ready),
            CrState::Ready {
                pod: "pool-abc12".into(),
                ip: "10.0.0.9".into()
            }
        );
        let missing_pool = with_status(
            &ar,
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "WarmPoolNotFound", "message": "SandboxWarmPool \"p\" not found"}]}),
        );
        assert!(
            matches!(claim_state(&missing_pool), CrState::Failed(m) if m.contains("WarmPoolNotFound"))
        );
        let pending = with_status(
            &ar,
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "SandboxNotReady"}]}),
        );
        assert!(matches!(claim_state(&pending), CrState::Starting(_)));
    }

    #[test]
    fn rendered_objects_have_the_api_shape() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("airlock-sb-1".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(BTreeMap::from([("a".to_string(), "b".to_string())]));
        let sb = render_sandbox(&pod, 900);
        let v = serde_json::to_value(&sb).unwrap();
        assert_eq!(v["apiVersion"], "agents.x-k8s.io/v1beta1");
        assert_eq!(v["kind"], "Sandbox");
        assert_eq!(v["metadata"]["name"], "airlock-sb-1");
        assert_eq!(v["spec"]["shutdownPolicy"], "Delete");
        assert_eq!(v["spec"]["podTemplate"]["metadata"]["labels"]["a"], "b");
        assert!(v["spec"]["shutdownTime"].as_str().unwrap().ends_with('Z'));
        let claim = render_claim("airlock-sb-2", "ns", BTreeMap::new(), "warm", 60);
        let v = serde_json::to_value(&claim).unwrap();
        assert_eq!(v["apiVersion"], "extensions.agents.x-k8s.io/v1beta1");
        assert_eq!(v["spec"]["warmPoolRef"]["name"], "warm");
        assert!(v["spec"].get("env").is_none());
        let (t, p) = render_pool(&pod, "airlock-warm", "warm", 3);
        let t = serde_json::to_value(&t).unwrap();
        let p = serde_json::to_value(&p).unwrap();
        assert_eq!(t["kind"], "SandboxTemplate");
        assert_eq!(p["kind"], "SandboxWarmPool");
        assert_eq!(p["spec"]["replicas"], 3);
        assert_eq!(p["spec"]["sandboxTemplateRef"]["name"], "airlock-warm");
    }
}
