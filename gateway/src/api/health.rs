//! `/health` (calls every model group, master key only, as LiteLLM's does),
//! `/health/liveliness` and `/health/readiness` (cheap: no upstream call, and the
//! database is asked with a short timeout), `/metrics` (Prometheus text).

use super::{State, authenticate};
use crate::canonical::{ChatRequest, Message};
use crate::error::{GatewayError, WireFormat};
use crate::keys::Caller;
use axum::Json;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long `/health` waits for one model.
const MODEL_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn liveliness() -> Json<&'static str> {
    // LiteLLM answers exactly this string.
    Json("I'm alive!")
}

pub(crate) async fn readiness(
    axum::extract::State(inner): axum::extract::State<State>,
) -> Response {
    let db = inner.keys.store().ping(Duration::from_millis(500)).await;
    let degraded = inner.keys.limits.degraded.load(Ordering::Relaxed);
    // A slow database does not make the gateway unready: keys are cached and spend waits.
    Json(json!({
        "status": "healthy",
        "db": if db { "connected" } else { "unavailable" },
        "rate_limits": if degraded { "per-replica" } else { "shared" },
        "litellm_version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// The gateway's Prometheus text.
pub(crate) fn metrics_text(inner: &crate::Inner) -> String {
    let err_at = inner.keys.db_error_at.load(Ordering::Relaxed);
    let age = (err_at > 0).then(|| (chrono::Utc::now().timestamp_millis() - err_at) / 1000);
    inner
        .metrics
        .render(inner.keys.limits.degraded.load(Ordering::Relaxed), age)
}

pub(crate) async fn metrics(axum::extract::State(inner): axum::extract::State<State>) -> Response {
    let body = metrics_text(&inner);
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub(crate) async fn models(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: HeaderMap,
) -> Response {
    match authenticate(&inner, &headers).await {
        Ok(Caller::Master | Caller::Anonymous) => {}
        Ok(Caller::Key(_)) => {
            return GatewayError::Unauthorized("/health needs the master key".into())
                .into_response_for(WireFormat::OpenAi);
        }
        Err(e) => return e.into_response_for(WireFormat::OpenAi),
    }
    let gw = crate::Gateway {
        inner: inner.clone(),
    };
    let names: Vec<String> = inner
        .router
        .model_names()
        .iter()
        .filter(|n| !n.contains('*'))
        .cloned()
        .collect();
    let checks = names.into_iter().map(|name| {
        let gw = gw.clone();
        async move {
            let req = ChatRequest {
                model: name.clone(),
                messages: vec![Message::user("ping")],
                max_tokens: Some(1),
                ..Default::default()
            };
            let r = tokio::time::timeout(MODEL_CHECK_TIMEOUT, gw.chat(req, None)).await;
            match r {
                Ok(Ok(_)) => (true, json!({"model": name})),
                Ok(Err(e)) => (false, json!({"model": name, "error": e.to_string()})),
                Err(_) => (
                    false,
                    json!({"model": name, "error": format!("no answer within {MODEL_CHECK_TIMEOUT:?}")}),
                ),
            }
        }
    });
    let results = futures_util::future::join_all(checks).await;
    let (healthy, unhealthy): (Vec<_>, Vec<_>) = results.into_iter().partition(|(ok, _)| *ok);
    let healthy: Vec<_> = healthy.into_iter().map(|(_, v)| v).collect();
    let unhealthy: Vec<_> = unhealthy.into_iter().map(|(_, v)| v).collect();
    Json(json!({
        "healthy_count": healthy.len(),
        "unhealthy_count": unhealthy.len(),
        "healthy_endpoints": healthy,
        "unhealthy_endpoints": unhealthy,
    }))
    .into_response()
}
