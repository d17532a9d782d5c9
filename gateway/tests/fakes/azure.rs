//! Azure OpenAI fake. Follows the Azure OpenAI data-plane REST reference
//! (learn.microsoft.com/azure/ai-services/openai/reference, "Chat completions",
//! api-version 2024-10-21): `POST {endpoint}/openai/deployments/{deployment-id}/chat/completions?api-version=…`,
//! `api-key` header; a missing/invalid key answers 401 with
//! `{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. …"}}`,
//! a missing api-version 404 `{"error":{"code":"404","message":"Resource not found"}}`,
//! an unknown deployment 404 `DeploymentNotFound`. Body and response are OpenAI's.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct AzureState {
    pub key: String,
    pub deployments: Vec<String>,
    /// (deployment, api-version, body) of each accepted request.
    pub seen: Mutex<Vec<(String, String, Value)>>,
}

pub async fn start(key: &str, deployments: &[&str]) -> (String, Arc<AzureState>) {
    let st = Arc::new(AzureState {
        key: key.into(),
        deployments: deployments.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    let app = axum::Router::new()
        .route(
            "/openai/deployments/{dep}/chat/completions",
            axum::routing::post(chat),
        )
        .with_state(st.clone());
    (format!("http://{}", super::serve(app).await), st)
}

fn err(status: StatusCode, code: &str, msg: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": msg}})),
    )
        .into_response()
}

async fn chat(
    State(st): State<Arc<AzureState>>,
    Path(dep): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if headers.get("api-key").and_then(|v| v.to_str().ok()) != Some(st.key.as_str()) {
        return err(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        );
    }
    let Some(version) = q.get("api-version") else {
        return err(StatusCode::NOT_FOUND, "404", "Resource not found");
    };
    if !st.deployments.contains(&dep) {
        return err(
            StatusCode::NOT_FOUND,
            "DeploymentNotFound",
            "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
        );
    }
    st.seen
        .lock()
        .unwrap()
        .push((dep.clone(), version.clone(), body.clone()));
    let stream = body["stream"].as_bool().unwrap_or(false);
    if stream {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-az1", "object": "chat.completion.chunk", "created": 1700000000,
                       "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
        out += &chunk(json!({"content": "Hello from azure"}), Value::Null);
        out += &chunk(json!({}), json!("stop"));
        if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
            out += &format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-az1", "object": "chat.completion.chunk", "created": 1700000000,
                       "model": "gpt-4o-2024-08-06", "choices": [],
                       "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
            );
        }
        out += "data: [DONE]\n\n";
        return ([("content-type", "text/event-stream")], out).into_response();
    }
    Json(json!({
        "id": "chatcmpl-az1", "object": "chat.completion", "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Hello from azure"},
                     "content_filter_results": {}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        "prompt_filter_results": []
    }))
    .into_response()
}
