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
