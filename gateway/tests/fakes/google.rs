//! Gemini API and Vertex AI fakes.
//! - Gemini (ai.google.dev/api/generate-content): `POST /v1beta/models/{model}:generateContent`
//!   and `:streamGenerateContent?alt=sse` (each SSE `data:` a whole GenerateContentResponse),
//!   `x-goog-api-key`; a bad key answers 400 INVALID_ARGUMENT "API key not valid. Please pass
//!   a valid API key." (reason API_KEY_INVALID), as the real service does.
//! - Vertex AI (cloud.google.com/vertex-ai/docs/reference/rest): the same body at
//!   `/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent`, bearer
//!   token; Anthropic models at `…/publishers/anthropic/models/{m}:rawPredict` / `:streamRawPredict`
//!   (docs.anthropic.com "Claude on Vertex AI": no `model` in the body, `anthropic_version:
//!   vertex-2023-10-16`). A bad token answers 401 UNAUTHENTICATED.
//! - OAuth token endpoint (RFC 7523; developers.google.com/identity/protocols/oauth2/service-account):
//!   verifies the JWT's RS256 signature with the service account's public key and its
//!   iss/aud/scope/exp claims; a bad assertion answers 400 `invalid_grant`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct GoogleState {
    /// Gemini API key accepted.
    pub api_key: String,
    /// Vertex: the service account's RSAPublicKey (PKCS#1 DER), its email.
    pub public_key: Vec<u8>,
    pub email: String,
    pub token_uri: Mutex<String>,
    pub exchanges: AtomicUsize,
    pub issued: Mutex<Vec<String>>,
    /// (path, body) of accepted model calls.
    pub seen: Mutex<Vec<(String, Value)>>,
}

pub async fn start(state: GoogleState) -> (String, Arc<GoogleState>) {
    let st = Arc::new(state);
    let app = axum::Router::new()
        .route("/v1beta/models/{action}", axum::routing::post(gemini))
        .route(
            "/v1/projects/{p}/locations/{l}/publishers/{publisher}/models/{action}",
            axum::routing::post(vertex),
        )
        .route("/token", axum::routing::post(token))
        .with_state(st.clone());
    let base = format!("http://{}", super::serve(app).await);
    *st.token_uri.lock().unwrap() = format!("{base}/token");
    (base, st)
}

/// A fresh RSA service account (openssl CLI): (SA JSON, RSAPublicKey DER).
pub fn service_account(token_uri: &str, email: &str) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let pubk = dir.path().join("pub.der");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(ok.status.success(), "openssl genpkey failed");
    let ok = std::process::Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&pubk)
        .output()
        .unwrap();
    assert!(ok.status.success(), "openssl rsa failed");
    let pem = std::fs::read_to_string(&key).unwrap();
    let sa = json!({
        "type": "service_account", "project_id": "sa-project", "private_key_id": "kid-1",
        "private_key": pem, "client_email": email, "client_id": "1",
        "token_uri": token_uri,
    });
    (sa.to_string(), std::fs::read(&pubk).unwrap())
}

fn google_err(status: StatusCode, code_status: &str, msg: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": msg, "status": code_status}})),
    )
        .into_response()
}

/// The model's answer to a generateContent body: a function call when tools
/// are offered and the last turn is not a functionResponse, else text.
fn gemini_answer(body: &Value) -> Vec<Value> {
    let tool = body
        .pointer("/tools/0/functionDeclarations/0/name")
        .and_then(Value::as_str);
    let last_is_result = body["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array())
        .is_some_and(|p| p.iter().any(|x| x.get("functionResponse").is_some()));
    match tool {
        Some(name) if !last_is_result => {
            vec![json!({"functionCall": {"name": name, "args": {"command": "ls -la"}}})]
        }
        _ => vec![json!({"text": "Hello from gemini"})],
    }
}

fn generate(model: &str, body: &Value, stream: bool) -> Response {
    if body.get("contents").and_then(Value::as_array).is_none() {
        return google_err(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "* GenerateContentRequest.contents: contents is not specified",
        );
    }
    let parts = gemini_answer(body);
    let usage = json!({"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17});
    if !stream {
        return Json(json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": usage, "modelVersion": model, "responseId": "resp-g1"
        }))
        .into_response();
    }
    let mut out = String::new();
    let text_pieces: Vec<Value> = match parts[0].get("text") {
        Some(_) => vec![json!({"text": "Hello"}), json!({"text": " from gemini"})],
        None => parts.clone(),
    };
    let n = text_pieces.len();
    for (i, p) in text_pieces.into_iter().enumerate() {
        let mut c = json!({"candidates": [{"content": {"role": "model", "parts": [p]}, "index": 0}],
                           "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
                           "modelVersion": model, "responseId": "resp-g1"});
        if i + 1 == n {
            c["candidates"][0]["finishReason"] = "STOP".into();
            c["usageMetadata"] = usage.clone();
        }
        out += &format!("data: {c}\r\n\r\n");
    }
    ([("content-type", "text/event-stream")], out).into_response()
}

async fn gemini(
    State(st): State<Arc<GoogleState>>,
    Path(action): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) != Some(st.api_key.as_str()) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": 400,
            "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                         "domain": "googleapis.com"}]}}))).into_response();
    }
    let Some((model, method)) = action.split_once(':') else {
        return google_err(StatusCode::NOT_FOUND, "NOT_FOUND", "not found");
    };
    st.seen
        .lock()
        .unwrap()
        .push((uri.to_string(), body.clone()));
    match method {
        "generateContent" => generate(model, &body, false),
        "streamGenerateContent" if uri.query() == Some("alt=sse") => generate(model, &body, true),
        _ => google_err(StatusCode::NOT_FOUND, "NOT_FOUND", "method not found"),
    }
}

async fn vertex(
    State(st): State<Arc<GoogleState>>,
    Path((_p, _l, publisher, action)): Path<(String, String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    if !st.issued.lock().unwrap().contains(&bearer) {
        return google_err(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    }
    let Some((model, method)) = action.split_once(':') else {
        return google_err(StatusCode::NOT_FOUND, "NOT_FOUND", "not found");
    };
    st.seen
        .lock()
        .unwrap()
        .push((uri.to_string(), body.clone()));
    match (publisher.as_str(), method) {
        ("google", "generateContent") => generate(model, &body, false),
        ("google", "streamGenerateContent") if uri.query() == Some("alt=sse") => {
            generate(model, &body, true)
        }
        ("anthropic", "rawPredict" | "streamRawPredict") => {
            if body.get("model").is_some() || body["anthropic_version"] != "vertex-2023-10-16" {
                return (StatusCode::BAD_REQUEST, Json(json!({"type": "error", "error": {"type": "invalid_request_error",
                    "message": "anthropic_version: vertex-2023-10-16 is required and model must not be set"}}))).into_response();
            }
            if method == "rawPredict" {
                return Json(
                    json!({"id": "msg_vtx1", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": "Hello from claude on vertex"}],
                    "stop_reason": "end_turn", "stop_sequence": null,
                    "usage": {"input_tokens": 10, "output_tokens": 6}}),
                )
                .into_response();
            }
            let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
            let mut out = ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_vtx1", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
            );
            out += &ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            );
            out += &ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello from claude on vertex"}}),
            );
            out += &ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            );
            out += &ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 6}}),
            );
            out += &ev("message_stop", json!({"type": "message_stop"}));
            ([("content-type", "text/event-stream")], out).into_response()
        }
        _ => google_err(StatusCode::NOT_FOUND, "NOT_FOUND", "method not found"),
    }
}

fn invalid_grant(desc: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": desc})),
    )
        .into_response()
}

async fn token(State(st): State<Arc<GoogleState>>, body: String) -> Response {
    let form: std::collections::HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":")))
        .collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}))).into_response();
    }
    let Some(jwt) = form.get("assertion") else {
        return invalid_grant("Missing assertion");
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return invalid_grant("Invalid JWT");
    }
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap_or_default())
            .unwrap_or_default();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap_or_default())
            .unwrap_or_default();
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap_or_default();
    if header["alg"] != "RS256" {
        return invalid_grant("Invalid JWT: unsupported alg");
    }
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &st.public_key,
    );
    if key
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .is_err()
    {
        return invalid_grant("Invalid JWT Signature.");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token_uri = st.token_uri.lock().unwrap().clone();
    if claims["iss"] != st.email.as_str()
        || claims["aud"] != token_uri.as_str()
        || claims["scope"] != "https://www.googleapis.com/auth/cloud-platform"
        || claims["exp"]
            .as_u64()
            .is_none_or(|e| e < now || e > now + 3700)
    {
        return invalid_grant(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
        );
    }
    let n = st.exchanges.fetch_add(1, Ordering::SeqCst);
    let tok = format!("ya29.fake-{n}");
    st.issued.lock().unwrap().push(tok.clone());
    Json(json!({"access_token": tok, "expires_in": 3599, "token_type": "Bearer"})).into_response()
}
