//! OpenAI-format routes: `/v1/chat/completions`, `/v1/models`.

use super::{State, authenticate, body_bytes};
use crate::error::WireFormat;
use crate::keys::Caller;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};

pub(crate) async fn chat_completions(
    axum::extract::State(inner): axum::extract::State<State>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let caller = match authenticate(&inner, &parts.headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response_for(WireFormat::OpenAi),
    };
    let body = match body_bytes(body, WireFormat::OpenAi).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(r) = super::code_interpreter::chat(&inner, &caller, &body).await {
        return r;
    }
    crate::proxy::handle(&inner, WireFormat::OpenAi, caller, body, None).await
}

pub(crate) async fn models(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: http::HeaderMap,
) -> Response {
    let caller = match authenticate(&inner, &headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response_for(WireFormat::OpenAi),
    };
    let data: Vec<serde_json::Value> = inner
        .router
        .model_names()
        .iter()
        .filter(|m| match &caller {
            Caller::Key(k) => k.allows(m),
            _ => true,
        })
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 1677610602, "owned_by": "openai"}))
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

/// `GET /model/info`: each deployment with its `model_info` (LiteLLM's shape:
/// `{"data": [{"model_name", "litellm_params": {"model"}, "model_info"}]}`; no secrets).
pub(crate) async fn model_info(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: http::HeaderMap,
) -> Response {
    let caller = match authenticate(&inner, &headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response_for(WireFormat::OpenAi),
    };
    let mut data = Vec::new();
    for m in inner.router.model_names() {
        if let Caller::Key(k) = &caller
            && !k.allows(m)
        {
            continue;
        }
        for d in inner.router.deployments(m) {
            let mut info = d
                .model_info
                .clone()
                .unwrap_or_else(|| serde_json::json!({}));
            if let Some(o) = info.as_object_mut() {
                o.entry("litellm_provider")
                    .or_insert_with(|| d.provider_name.as_ref().into());
                if let Some(p) = d.price {
                    o.entry("input_cost_per_token").or_insert(p.input.into());
                    o.entry("output_cost_per_token").or_insert(p.output.into());
                }
            }
            data.push(serde_json::json!({
                "model_name": m,
                "litellm_params": {"model": format!("{}/{}", d.provider_name, d.upstream)},
                "model_info": info,
            }));
        }
    }
    axum::Json(serde_json::json!({"data": data})).into_response()
}
