//! LiteLLM-compatible key management: `/key/generate`, `/key/info`, `/key/delete`.

use super::{State, authenticate};
use crate::error::{GatewayError, WireFormat};
use crate::keys::{Caller, sha256_hex};
use axum::Json;
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

fn err(e: GatewayError) -> Response {
    e.into_response_for(WireFormat::OpenAi)
}

fn require_master(inner: &State, h: &HeaderMap) -> Result<(), GatewayError> {
    match authenticate(inner, h)? {
        Caller::Master | Caller::Anonymous => Ok(()),
        Caller::Key(_) => Err(GatewayError::Unauthorized(
            "only the master key can manage keys".into(),
        )),
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct GenerateRequest {
    #[serde(default)]
    max_budget: Option<f64>,
    #[serde(default)]
    models: Vec<String>,
    /// "30d", "1h", "15m", "45s", "2w", an RFC 3339 timestamp, or unix seconds.
    #[serde(default)]
    expires: Option<Value>,
    /// LiteLLM's name for a relative expiry.
    #[serde(default)]
    duration: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    key_alias: Option<String>,
    /// Use this exact key instead of a random one.
    #[serde(default)]
    key: Option<String>,
}

/// Parse an expiry into unix seconds.
pub fn parse_expiry(v: &Value) -> Result<Option<i64>, String> {
    let now = chrono::Utc::now().timestamp();
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("invalid timestamp {n}")),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Ok(Some(t.timestamp()));
            }
            if let Ok(n) = s.parse::<i64>() {
                return Ok(Some(n));
            }
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: i64 = num.parse().map_err(|_| format!("invalid duration `{s}`"))?;
            let mult = match unit {
                "s" => 1,
                "m" | "min" => 60,
                "h" => 3600,
                "d" => 86400,
                "w" => 7 * 86400,
                "mo" => 30 * 86400,
                "y" => 365 * 86400,
                _ => {
                    return Err(format!(
                        "invalid duration `{s}` (use 30s, 15m, 1h, 30d, 2w)"
                    ));
                }
            };
            Ok(Some(now + n * mult))
        }
        other => Err(format!("invalid expiry {other}")),
    }
}

pub(crate) async fn generate(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = require_master(&inner, &headers) {
        return err(e);
    }
    let req: GenerateRequest = if body.is_empty() {
        GenerateRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return err(GatewayError::BadRequest(format!("invalid body: {e}"))),
        }
    };
    let expiry = req
        .expires
        .as_ref()
        .or(req.duration.as_ref())
        .unwrap_or(&Value::Null);
    let expires_at = match parse_expiry(expiry) {
        Ok(e) => e,
        Err(m) => return err(GatewayError::BadRequest(m)),
    };
    if let Some(b) = req.max_budget
        && (b.is_nan() || b < 0.0)
    {
        return err(GatewayError::BadRequest("max_budget must be >= 0".into()));
    }
    match inner
        .keys
        .generate(
            req.max_budget,
            req.models,
            expires_at,
            req.metadata.unwrap_or_else(|| json!({})),
            req.key_alias,
            req.key,
        )
        .await
    {
        Ok((key, vk)) => {
            let mut info = vk.info_json();
            info["key"] = key.into();
            Json(info).into_response()
        }
        Err(e) => err(e),
    }
}

#[derive(Debug, Deserialize)]
pub struct InfoQuery {
    key: Option<String>,
}

pub(crate) async fn info(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: HeaderMap,
    Query(q): Query<InfoQuery>,
) -> Response {
    let caller = match authenticate(&inner, &headers) {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    let target = match (&q.key, &caller) {
        (Some(k), Caller::Key(own)) => {
            if sha256_hex(k) != *own.token_hash && *k != *own.token_hash {
                return err(GatewayError::Forbidden(
                    "a virtual key can only read its own info".into(),
                ));
            }
            own.clone()
        }
        (Some(k), _) => {
            let found = inner.keys.lookup(k).or_else(|| inner.keys.get_by_hash(k));
            match found {
                Some(v) => v,
                None => {
                    return err(GatewayError::NotFound(format!(
                        "key not found: {}",
                        redact(k)
                    )));
                }
            }
        }
        (None, Caller::Key(own)) => own.clone(),
        (None, _) => return err(GatewayError::BadRequest("pass ?key=".into())),
    };
    let model_spend = inner
        .keys
        .store()
        .model_spend(&target.token_hash)
        .await
        .unwrap_or_default();
    let mut info = target.info_json();
    info["model_spend"] = serde_json::to_value(model_spend).unwrap_or_default();
    Json(json!({"key": q.key.as_deref().map(redact).unwrap_or_else(|| target.key_name.clone()), "info": info})).into_response()
}

fn redact(k: &str) -> String {
    if k.len() > 8 {
        format!("{}...{}", &k[..3], &k[k.len() - 4..])
    } else {
        "***".into()
    }
}

#[derive(Debug, Deserialize)]
pub struct DeleteRequest {
    #[serde(default)]
    keys: Vec<String>,
}

pub(crate) async fn delete(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = require_master(&inner, &headers) {
        return err(e);
    }
    let req: DeleteRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(GatewayError::BadRequest(format!("invalid body: {e}"))),
    };
    match inner.keys.delete(&req.keys).await {
        Ok(d) if d.is_empty() && !req.keys.is_empty() => {
            err(GatewayError::NotFound("no such keys".into()))
        }
        Ok(d) => Json(json!({"deleted_keys": d})).into_response(),
        Err(e) => err(e),
    }
}
