//! Anthropic-format route: `/v1/messages`.

use super::{State, authenticate, body_bytes};
use crate::error::WireFormat;
use axum::extract::Request;
use axum::response::Response;

pub(crate) async fn messages(
    axum::extract::State(inner): axum::extract::State<State>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let caller = match authenticate(&inner, &parts.headers).await {
        Ok(c) => c,
        Err(e) => return e.into_response_for(WireFormat::Anthropic),
    };
    let body = match body_bytes(body, WireFormat::Anthropic).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(r) = super::code_execution::messages(&inner, &caller, &body).await {
        return r;
    }
    let beta = parts
        .headers
        .get("anthropic-beta")
        .and_then(|v| v.to_str().ok());
    crate::proxy::handle(&inner, WireFormat::Anthropic, caller, body, beta).await
}
