//! `?watch=true` on a collection: the API server's watch stream.
//!
//! Followed (kubernetes/kubernetes, staging/src/k8s.io/apiserver):
//! - `pkg/endpoints/handlers/watch.go`: HTTP 200, `Content-Type: application/json`, chunked,
//!   one `metav1.WatchEvent` JSON object per line, `{"type": …, "object": …}`; the stream ends
//!   at `timeoutSeconds`.
//! - `pkg/storage/cacher/cacher.go` (`Watch`, `newErrWatcher`) and `watch_cache.go`
//!   (`getAllEventsSinceLocked`): a resourceVersion older than the cache window still gets a
//!   200 and then one `ERROR` event whose object is a `Status` with `code: 410`,
//!   `reason: "Expired"`, message `too old resource version: <rv> (<oldest>)`; no
//!   resourceVersion (or "0") starts with synthetic `ADDED` events for what exists.
//! - `BOOKMARK` events (when `allowWatchBookmarks=true`) carry only the object's kind,
//!   apiVersion and `metadata.resourceVersion`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Shared, field_selector_matches, selector_matches, status_body};

/// (kind, apiVersion) of a resource's objects, for bookmarks.
fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "pods" => ("Pod", "v1"),
        "secrets" => ("Secret", "v1"),
        "sandboxes" => ("Sandbox", "agents.x-k8s.io/v1beta1"),
        "sandboxclaims" => ("SandboxClaim", "extensions.agents.x-k8s.io/v1beta1"),
        "sandboxtemplates" => ("SandboxTemplate", "extensions.agents.x-k8s.io/v1beta1"),
        _ => ("SandboxWarmPool", "extensions.agents.x-k8s.io/v1beta1"),
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Objects of `resource` in `ns` as stored now.
fn current(shared: &Shared, ns: &str, resource: &str) -> Vec<Value> {
    let inner = shared.lock();
    match resource {
        "pods" => inner
            .pods
            .iter()
            .filter(|(k, _)| k.0 == ns)
            .map(|(_, e)| e.object.clone())
            .collect(),
        "secrets" => inner
            .secrets
            .iter()
            .filter(|(k, _)| k.0 == ns)
            .map(|(_, v)| v.clone())
            .collect(),
        r => inner
            .objects
            .iter()
            .filter(|(k, _)| k.0 == r && k.1 == ns)
            .map(|(_, v)| v.clone())
            .collect(),
    }
}

pub(super) fn serve(
    shared: &Arc<Shared>,
    ns: &str,
    resource: &str,
    query: &HashMap<String, String>,
) -> Response {
    let labels = query.get("labelSelector").cloned().unwrap_or_default();
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    if let Err(e) = field_selector_matches(&fields, &json!({})) {
        return super::failure(400, "BadRequest", &e);
    }
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from = query
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse::<u64>());
    let from = match from {
        Some(Ok(rv)) => Some(rv),
        Some(Err(_)) => {
            return super::failure(
                400,
                "BadRequest",
                &format!("invalid resource version: {}", query["resourceVersion"]),
            );
        }
        None => None,
    };
    let matches = move |o: &Value| {
        let empty = serde_json::Map::new();
        selector_matches(
            &labels,
            o["metadata"]["labels"].as_object().unwrap_or(&empty),
        ) && field_selector_matches(&fields, o).unwrap_or(false)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let shared = shared.clone();
    let ns = ns.to_string();
    let resource = resource.to_string();
    tokio::spawn(async move {
        let (kind, api_version) = kind_of(&resource);
        let (expired, compacted, notify, now_rv) = {
            let mut inner = shared.lock();
            let forced = inner.expire_watches > 0;
            if forced {
                inner.expire_watches -= 1;
            }
            let stale = from.is_some_and(|rv| rv < inner.compacted);
            (
                forced || stale,
                inner.compacted,
                inner.notify.clone(),
                inner.rv,
            )
        };
        if expired {
            let asked = from.unwrap_or(0);
            let status = status_body(
                410,
                "Expired",
                &format!(
                    "too old resource version: {asked} ({})",
                    compacted.max(asked + 1)
                ),
                None,
            );
            let _ = tx.send(line("ERROR", &status)).await;
            return;
        }
        let mut cursor = match from {
            Some(rv) => rv,
            None => {
                // No resourceVersion: what exists now, as ADDED, then changes after it.
                for obj in current(&shared, &ns, &resource) {
                    if matches(&obj) && tx.send(line("ADDED", &obj)).await.is_err() {
                        return;
                    }
                }
                now_rv
            }
        };
        let ends = Instant::now() + timeout;
        let mut next_bookmark = Instant::now() + Duration::from_secs(1);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            // Registered before reading, so a change recorded meanwhile still wakes us.
            notified.as_mut().enable();
            let batch: Vec<(&'static str, Value, u64)> = {
                let inner = shared.lock();
                inner
                    .changes
                    .iter()
                    .filter(|c| c.rv > cursor && c.resource == resource && c.ns == ns)
                    .map(|c| (c.kind, c.object.clone(), c.rv))
                    .collect()
            };
            for (event, object, rv) in batch {
                cursor = cursor.max(rv);
                if matches(&object) && tx.send(line(event, &object)).await.is_err() {
                    return;
                }
            }
            if bookmarks && Instant::now() >= next_bookmark {
                let rv = shared.lock().rv;
                cursor = cursor.max(rv);
                let bm = json!({"kind": kind, "apiVersion": api_version,
                                "metadata": {"resourceVersion": cursor.to_string()}});
                if tx.send(line("BOOKMARK", &bm)).await.is_err() {
                    return;
                }
                next_bookmark = Instant::now() + Duration::from_secs(1);
            }
            if Instant::now() >= ends {
                return;
            }
            // Woken by the next change, or to send a bookmark / end the stream.
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}
