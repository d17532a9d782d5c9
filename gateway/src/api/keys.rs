//! LiteLLM-compatible key management and spend: `/key/generate`, `/key/info`,
//! `/key/update`, `/key/delete`, `/spend/logs`.

use super::{State, authenticate};
use crate::error::{GatewayError, WireFormat};
use crate::keys::{Caller, KeySpec, duration_secs, hash_of, redact};
use axum::Json;
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};

fn err(e: GatewayError) -> Response {
    e.into_response_for(WireFormat::OpenAi)
}

async fn require_master(inner: &State, h: &HeaderMap) -> Result<(), GatewayError> {
    match authenticate(inner, h).await? {
        Caller::Master | Caller::Anonymous => Ok(()),
        Caller::Key(_) => Err(GatewayError::Unauthorized(
            "only the master key can manage keys".into(),
        )),
    }
}

/// Parse an expiry into unix seconds: "30d", "1h", "15m", "45s", "2w", an RFC 3339
/// timestamp, or unix seconds.
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
            duration_secs(s)
                .map(|d| Some(now + d))
                .ok_or_else(|| format!("invalid duration `{s}` (use 30s, 15m, 1h, 30d, 2w)"))
        }
        other => Err(format!("invalid expiry {other}")),
    }
}

/// Fields `/key/generate` and `/key/update` accept (LiteLLM's names).
const KEY_FIELDS: &[&str] = &[
    "key",
    "max_budget",
    "models",
    "expires",
    "duration",
    "metadata",
    "key_alias",
    "budget_duration",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "team_id",
    "user_id",
    "blocked",
];

/// Body → spec. Absent fields stay unchanged; `null` clears.
fn parse_spec(body: &Map<String, Value>) -> Result<KeySpec, String> {
    if let Some(k) = body.keys().find(|k| !KEY_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unsupported field `{k}` (supported: {})",
            KEY_FIELDS.join(", ")
        ));
    }
    let mut s = KeySpec::default();
    let num = |k: &str| -> Result<Option<Option<f64>>, String> {
        match body.get(k) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => match v.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(Some(f))),
                _ => Err(format!("`{k}` must be a number >= 0")),
            },
        }
    };
    let int = |k: &str| -> Result<Option<Option<i64>>, String> {
        match body.get(k) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => match v.as_i64() {
                Some(n) if n >= 0 => Ok(Some(Some(n))),
                _ => Err(format!("`{k}` must be an integer >= 0")),
            },
        }
    };
    let text = |k: &str| -> Result<Option<Option<String>>, String> {
        match body.get(k) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(v)) => Ok(Some(Some(v.clone()))),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    };
    s.max_budget = num("max_budget")?;
    s.rpm_limit = int("rpm_limit")?;
    s.tpm_limit = int("tpm_limit")?;
    s.max_parallel_requests = int("max_parallel_requests")?;
    s.key_alias = text("key_alias")?;
    s.team_id = text("team_id")?;
    s.user_id = text("user_id")?;
    s.budget_duration = text("budget_duration")?;
    if let Some(Some(d)) = &s.budget_duration
        && duration_secs(d).is_none()
    {
        return Err(format!(
            "invalid budget_duration `{d}` (use 30s, 15m, 1h, 1d, 30d)"
        ));
    }
    match body.get("models") {
        None => {}
        Some(Value::Null) => s.models = Some(Vec::new()),
        Some(Value::Array(a)) => {
            let mut v = Vec::with_capacity(a.len());
            for m in a {
                v.push(
                    m.as_str()
                        .ok_or("`models` must be a list of strings")?
                        .to_owned(),
                );
            }
            s.models = Some(v);
        }
        Some(_) => return Err("`models` must be a list of strings".into()),
    }
    match body.get("metadata") {
        None => {}
        Some(Value::Null) => s.metadata = Some(json!({})),
        Some(m @ Value::Object(_)) => s.metadata = Some(m.clone()),
        Some(_) => return Err("`metadata` must be an object".into()),
    }
    if let Some(e) = body.get("expires").or_else(|| body.get("duration")) {
        s.expires_at = Some(parse_expiry(e)?);
    }
    match body.get("blocked") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => s.blocked = Some(*b),
        Some(_) => return Err("`blocked` must be a boolean".into()),
    }
    Ok(s)
}

fn body_map(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(GatewayError::BadRequest(
            "body must be a JSON object".into(),
        )),
        Err(e) => Err(GatewayError::BadRequest(format!("invalid body: {e}"))),
    }
}

pub(crate) async fn generate(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = require_master(&inner, &headers).await {
        return err(e);
    }
    let map = match body_map(&body) {
        Ok(m) => m,
        Err(e) => return err(e),
    };
    let spec = match parse_spec(&map) {
        Ok(s) => s,
        Err(m) => return err(GatewayError::BadRequest(m)),
    };
    let explicit = match map.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return err(GatewayError::BadRequest("`key` must be a string".into())),
    };
    match inner.keys.generate(spec, explicit).await {
        Ok((key, vk)) => {
            let mut info = vk.info_json();
            info["key"] = key.into();
            Json(info).into_response()
        }
        Err(e) => err(e),
    }
}

pub(crate) async fn update(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = require_master(&inner, &headers).await {
        return err(e);
    }
    let mut map = match body_map(&body) {
        Ok(m) => m,
        Err(e) => return err(e),
    };
    let key = match map.remove("key") {
        Some(Value::String(k)) => k,
        _ => {
            return err(GatewayError::BadRequest(
                "`key` (the key or its hash) is required".into(),
            ));
        }
    };
    let spec = match parse_spec(&map) {
        Ok(s) => s,
        Err(m) => return err(GatewayError::BadRequest(m)),
    };
    match inner.keys.update(&key, spec).await {
        Ok(vk) => Json(json!({"key": redact(&key), "data": vk.info_json()})).into_response(),
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
    let caller = match authenticate(&inner, &headers).await {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    let target = match (&q.key, &caller) {
        (Some(k), Caller::Key(own)) => {
            if hash_of(k) != *own.token_hash {
                return err(GatewayError::Forbidden(
                    "a virtual key can only read its own info".into(),
                ));
            }
            own.clone()
        }
        (Some(k), _) => match inner.keys.get_by_hash(&hash_of(k)).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                return err(GatewayError::NotFound(format!(
                    "key not found: {}",
                    redact(k)
                )));
            }
            Err(e) => return err(e),
        },
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
    Json(json!({"key": q.key.as_deref().map(redact).unwrap_or_else(|| target.key_name().to_owned()), "info": info})).into_response()
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
    if let Err(e) = require_master(&inner, &headers).await {
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

/// LiteLLM's `/spend/logs` query: `api_key` (key or hash), `start_date`/`end_date`
/// (`YYYY-MM-DD` or RFC 3339), `limit`.
#[derive(Debug, Deserialize)]
pub struct SpendLogsQuery {
    api_key: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    limit: Option<i64>,
}

fn date_ms(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .unwrap_or_default()
                .and_utc()
                .timestamp_millis()
        })
        .map_err(|_| format!("invalid date `{s}` (YYYY-MM-DD or RFC 3339)"))
}

pub(crate) async fn spend_logs(
    axum::extract::State(inner): axum::extract::State<State>,
    headers: HeaderMap,
    Query(q): Query<SpendLogsQuery>,
) -> Response {
    let caller = match authenticate(&inner, &headers).await {
        Ok(c) => c,
        Err(e) => return err(e),
    };
    // A virtual key sees only its own logs.
    let key = match (&caller, &q.api_key) {
        (Caller::Key(own), Some(k)) if hash_of(k) != *own.token_hash => {
            return err(GatewayError::Forbidden(
                "a virtual key can only read its own spend".into(),
            ));
        }
        (Caller::Key(own), _) => Some(own.token_hash.to_string()),
        (_, Some(k)) => Some(hash_of(k)),
        (_, None) => None,
    };
    let parse = |d: &Option<String>| d.as_deref().map(date_ms).transpose();
    let (start, end) = match (parse(&q.start_date), parse(&q.end_date)) {
        (Ok(s), Ok(e)) => (
            s,
            e.map(|e| {
                if q.end_date.as_deref().is_some_and(|d| d.len() == 10) {
                    e + 86_400_000
                } else {
                    e
                }
            }),
        ),
        (Err(m), _) | (_, Err(m)) => return err(GatewayError::BadRequest(m)),
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    match inner
        .keys
        .store()
        .spend_logs(inner.keys.schema(), key.as_deref(), start, end, limit)
        .await
    {
        Ok(rows) => {
            let out: Vec<Value> = rows
                .into_iter()
                .map(|l| {
                    let ts = |ms: i64| {
                        chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339())
                    };
                    json!({
                        "request_id": l.request_id,
                        "call_type": "acompletion",
                        "api_key": l.api_key,
                        "spend": l.spend,
                        "total_tokens": l.prompt_tokens + l.completion_tokens,
                        "prompt_tokens": l.prompt_tokens,
                        "completion_tokens": l.completion_tokens,
                        "startTime": ts(l.start_ms),
                        "endTime": ts(l.end_ms),
                        "model": l.model,
                        "model_group": l.model_group,
                        "user": l.user_id,
                        "team_id": l.team_id,
                        "metadata": {
                            "cache_read_input_tokens": l.cache_read_tokens,
                            "cache_creation_input_tokens": l.cache_creation_tokens,
                        },
                    })
                })
                .collect();
            Json(Value::Array(out)).into_response()
        }
        Err(e) => err(GatewayError::Internal(e.to_string())),
    }
}
