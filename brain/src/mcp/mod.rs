//! `/mcp`: the sandbox tools as an MCP server over the Streamable HTTP transport, for external
//! harnesses (Claude Code, OpenCode, any MCP client).
//!
//! Protocol revisions: 2025-11-25 (preferred), 2025-06-18 and 2025-03-26 (the only one with
//! JSON-RPC batches). Every reply is one JSON body (`application/json`); the server offers no
//! SSE stream, so `GET /mcp` is 405.
//!
//! Order of checks on every request, each failing closed: `Origin` (403, DNS rebinding) →
//! bearer key (401) → media types (415/406) → JSON (400, -32700) → session (400 without
//! `Mcp-Session-Id`, 404 for an unknown, closed, idle-expired or other key's session) →
//! `MCP-Protocol-Version` (400 when unsupported or not the negotiated one).
//!
//! Sessions live in the store (`session.rs`) and belong to the principal that initialized
//! them (`auth.rs`). Tools (`tools.rs`) take the session from here, never from arguments.

pub mod auth;
pub mod config;
pub mod jsonrpc;
pub mod session;
#[cfg(test)]
mod tests;
pub mod tools;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use self::auth::{AuthError, Principal, authenticate};
pub use self::config::McpConfig;
use self::config::normalize_origin;
use self::jsonrpc::{Incoming, RpcError};
use self::session::McpSession;
use crate::lifecycle;
use crate::state::AppState;

/// Newest first; the first one is offered when a client asks for one we do not speak.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// The only revision whose transport takes JSON-RPC batches.
const BATCH_VERSION: &str = "2025-03-26";

pub const SESSION_HEADER: HeaderName = HeaderName::from_static("mcp-session-id");
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");

const INSTRUCTIONS: &str = "Airlock runs commands in isolated sandboxes. Call \
    sandbox_provision once, then sandbox_execute and the file tools (sandbox_id may be omitted: \
    it defaults to this session's most recent sandbox). Sandboxes belong to this MCP session, \
    expire after their TTL, and reach the network only through Airlock's egress proxy.";

/// The `/mcp` routes (`POST`, `DELETE`; `GET` and others are 405).
pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/mcp",
        post(handle_post).delete(handle_delete).get(handle_get),
    )
}

/// A refusal on its way out: boxed, since a `Response` is large and the happy path should
/// not carry its size in every `Result`.
type Refused = Box<Response>;

/// A transport-level refusal: an HTTP status with a JSON-RPC error body that has no `id`.
fn refuse(status: StatusCode, code: i64, message: impl Into<String>) -> Response {
    let body = jsonrpc::error(Value::Null, &RpcError::new(code, message));
    (status, axum::Json(body)).into_response()
}

fn unauthorized(e: AuthError) -> Response {
    let mut response = refuse(StatusCode::UNAUTHORIZED, -32001, e.to_string());
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Refused> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let allowed = origin
        .to_str()
        .ok()
        .and_then(normalize_origin)
        .is_some_and(|o| {
            state
                .config
                .mcp
                .allowed_origins
                .iter()
                .any(|a| normalize_origin(a).as_deref() == Some(o.as_str()))
        });
    if allowed {
        Ok(())
    } else {
        Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            jsonrpc::INVALID_REQUEST,
            "origin not allowed (mcp.allowed_origins)",
        )))
    }
}

/// Origin, then key: shared by every method.
async fn admit(state: &AppState, headers: &HeaderMap) -> Result<Principal, Refused> {
    check_origin(state, headers)?;
    authenticate(state, headers)
        .await
        .map_err(|e| Box::new(unauthorized(e)))
}

fn header_str<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, Refused> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            Box::new(refuse(
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                format!("{name} must be visible ASCII"),
            ))
        }),
    }
}

/// Whether an `Accept` header admits `application/json` (no header admits anything).
fn accepts_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return true;
    }
    values.filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|item| {
            let range = item.split(';').next().unwrap_or("").trim();
            range.eq_ignore_ascii_case("application/json")
                || range.eq_ignore_ascii_case("application/*")
                || range == "*/*"
        })
    })
}

fn is_json_content(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The caller's session: present, known, open, not idle too long, theirs, and spoken in the
/// protocol revision it negotiated.
async fn resume_session(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
) -> Result<McpSession, Refused> {
    let Some(id) = header_str(headers, &SESSION_HEADER)? else {
        return Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            jsonrpc::INVALID_REQUEST,
            "missing Mcp-Session-Id header: send `initialize` first",
        )));
    };
    let gone = || {
        Box::new(refuse(
            StatusCode::NOT_FOUND,
            jsonrpc::INVALID_REQUEST,
            "unknown or expired MCP session: send `initialize` again",
        ))
    };
    let session = session::get(&state.store, id)
        .await
        .map_err(|e| Box::new(store_failure(&e)))?
        .ok_or_else(gone)?;
    // Another key's session is reported exactly like a missing one.
    if session.principal != principal.id {
        return Err(gone());
    }
    let now = session::now_ms(&state.store)
        .await
        .map_err(|e| Box::new(store_failure(&e)))?;
    let idle_ms = state.config.mcp.idle_ms();
    if !session.is_usable(now, idle_ms) {
        if session.closed_at.is_none() {
            // Idle too long: close it for good, so it stops counting against the key's limit.
            session::close(&state.store, &session.id, now)
                .await
                .map_err(|e| Box::new(store_failure(&e)))?;
        }
        return Err(gone());
    }
    if let Some(version) = header_str(headers, &VERSION_HEADER)? {
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(Box::new(refuse(
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                format!(
                    "unsupported MCP-Protocol-Version {version:?} (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )));
        }
        if version != session.protocol_version {
            return Err(Box::new(refuse(
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                format!(
                    "MCP-Protocol-Version {version} differs from the negotiated {}",
                    session.protocol_version
                ),
            )));
        }
    }
    // One write per tenth of the idle window at most, not one per request.
    if now - session.last_seen > (idle_ms / 10).min(60_000) {
        session::touch(&state.store, &session.id, now)
            .await
            .map_err(|e| Box::new(store_failure(&e)))?;
    }
    Ok(session)
}

fn store_failure(e: &crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "mcp: session store");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        jsonrpc::INTERNAL_ERROR,
        "internal error",
    )
}

async fn handle_post(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let principal = match admit(&state, &headers).await {
        Ok(p) => p,
        Err(response) => return *response,
    };
    if !is_json_content(&headers) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            jsonrpc::INVALID_REQUEST,
            "expected `Content-Type: application/json`",
        );
    }
    if !accepts_json(&headers) {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            jsonrpc::INVALID_REQUEST,
            "this server answers with application/json: list it in `Accept`",
        );
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                jsonrpc::PARSE_ERROR,
                format!("parse error: {e}"),
            );
        }
    };
    match message {
        Value::Array(items) => handle_batch(&state, &principal, &headers, items).await,
        single => handle_single(&state, &principal, &headers, single).await,
    }
}

async fn handle_single(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    message: Value,
) -> Response {
    let incoming = match jsonrpc::classify(message) {
        Ok(m) => m,
        Err((id, e)) => {
            let body = jsonrpc::error(id, &e);
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    if let Incoming::Request {
        id, method, params, ..
    } = &incoming
        && method == "initialize"
    {
        return initialize(state, principal, headers, id.clone(), params).await;
    }
    let session = match resume_session(state, principal, headers).await {
        Ok(s) => s,
        Err(response) => return *response,
    };
    match dispatch(state, &session, incoming).await {
        Some(reply) => (StatusCode::OK, axum::Json(reply)).into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// JSON-RPC batches exist only in 2025-03-26; later revisions refuse them.
async fn handle_batch(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    items: Vec<Value>,
) -> Response {
    let session = match resume_session(state, principal, headers).await {
        Ok(s) => s,
        Err(response) => return *response,
    };
    if session.protocol_version != BATCH_VERSION {
        return refuse(
            StatusCode::BAD_REQUEST,
            jsonrpc::INVALID_REQUEST,
            format!(
                "JSON-RPC batches are not part of protocol revision {}",
                session.protocol_version
            ),
        );
    }
    if items.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            jsonrpc::INVALID_REQUEST,
            "empty batch",
        );
    }
    let mut replies = Vec::new();
    for item in items {
        let incoming = match jsonrpc::classify(item) {
            Ok(m) => m,
            Err((id, e)) => {
                replies.push(jsonrpc::error(id, &e));
                continue;
            }
        };
        if let Some(reply) = dispatch(state, &session, incoming).await {
            replies.push(reply);
        }
    }
    if replies.is_empty() {
        StatusCode::ACCEPTED.into_response()
    } else {
        (StatusCode::OK, axum::Json(Value::Array(replies))).into_response()
    }
}

/// One message within an established session; `None` for notifications and responses.
async fn dispatch(state: &AppState, session: &McpSession, incoming: Incoming) -> Option<Value> {
    let (id, method, params) = match incoming {
        Incoming::Request { id, method, params } => (id, method, params),
        Incoming::Notification { method } => {
            tracing::debug!(session = %session.id, %method, "mcp notification");
            return None;
        }
        Incoming::Response => return None,
    };
    let outcome = match method.as_str() {
        "initialize" => Err(RpcError::invalid_request(
            "already initialized (`initialize` comes without Mcp-Session-Id, and not in a batch)",
        )),
        "ping" => Ok(json!({})),
        "tools/list" => match params.get("cursor") {
            None | Some(Value::Null) => Ok(tools::list(&session.protocol_version)),
            Some(_) => Err(RpcError::invalid_params(
                "invalid cursor: tools/list has a single page",
            )),
        },
        "tools/call" => tools::call(state, session, &params).await,
        other => Err(RpcError::method_not_found(other)),
    };
    Some(match outcome {
        Ok(result) => jsonrpc::success(id, result),
        Err(e) => jsonrpc::error(id, &e),
    })
}

async fn initialize(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    id: Value,
    params: &Map<String, Value>,
) -> Response {
    let reply_error = |e: RpcError| {
        let body = jsonrpc::error(id.clone(), &e);
        (StatusCode::OK, axum::Json(body)).into_response()
    };
    match header_str(headers, &SESSION_HEADER) {
        Ok(None) => {}
        Ok(Some(_)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                "`initialize` starts a session: send it without Mcp-Session-Id",
            );
        }
        Err(response) => return *response,
    }
    let requested = match params.get("protocolVersion") {
        Some(Value::String(v)) => v.as_str(),
        _ => {
            return reply_error(RpcError::invalid_params(
                "initialize: `protocolVersion` (string) is required",
            ));
        }
    };
    for (field, valid) in [
        (
            "capabilities",
            params.get("capabilities").is_none_or(Value::is_object),
        ),
        (
            "clientInfo",
            params.get("clientInfo").is_none_or(Value::is_object),
        ),
    ] {
        if !valid {
            return reply_error(RpcError::invalid_params(format!(
                "initialize: `{field}` must be an object"
            )));
        }
    }
    let version = if SUPPORTED_VERSIONS.contains(&requested) {
        requested
    } else {
        SUPPORTED_VERSIONS[0]
    };
    let now = match session::now_ms(&state.store).await {
        Ok(now) => now,
        Err(e) => return store_failure(&e),
    };
    let session = McpSession {
        id: session::new_id(),
        principal: principal.id.clone(),
        protocol_version: version.to_string(),
        created_at: now,
        last_seen: now,
        closed_at: None,
    };
    let config = &state.config.mcp;
    let active_since = now.saturating_sub(config.idle_ms());
    match session::insert_within_limit(
        &state.store,
        &session,
        active_since,
        i64::from(config.max_sessions_per_key),
    )
    .await
    {
        Ok(true) => {}
        Ok(false) => {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                jsonrpc::INVALID_REQUEST,
                format!(
                    "this key already has {} open MCP sessions (mcp.max_sessions_per_key): \
                     end one with DELETE /mcp or wait until one idles out",
                    config.max_sessions_per_key
                ),
            );
        }
        Err(e) => return store_failure(&e),
    }
    let client = params
        .get("clientInfo")
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    tracing::info!(session = %session.id, principal = %principal.id, client, version, "mcp session started");
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "airlock-brain", "version": env!("CARGO_PKG_VERSION")},
        "instructions": INSTRUCTIONS,
    });
    let mut response = (StatusCode::OK, axum::Json(jsonrpc::success(id, result))).into_response();
    if let Ok(value) = HeaderValue::from_str(&session.id) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

/// `DELETE /mcp`: ends the caller's session and, if configured, destroys its sandboxes.
async fn handle_delete(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let principal = match admit(&state, &headers).await {
        Ok(p) => p,
        Err(response) => return *response,
    };
    let session = match resume_session(&state, &principal, &headers).await {
        Ok(s) => s,
        Err(response) => return *response,
    };
    let closed = match session::now_ms(&state.store).await {
        Ok(now) => session::close(&state.store, &session.id, now).await,
        Err(e) => Err(e),
    };
    if let Err(e) = closed {
        return store_failure(&e);
    }
    tracing::info!(session = %session.id, "mcp session closed by the client");
    if state.config.mcp.destroy_sandboxes_on_close {
        // Spawned so the destroys finish even if the client hangs up.
        let task = tokio::spawn(destroy_session_sandboxes(state.clone(), session.id.clone()));
        if task.await.is_err() {
            tracing::error!(session = %session.id, "destroying the session's sandboxes panicked");
        }
    }
    StatusCode::OK.into_response()
}

/// Destroys every live sandbox of a session. Failures are logged: the rows stay
/// `destroying` and the reaper retries them.
async fn destroy_session_sandboxes(state: AppState, session_id: String) {
    let ids = match session::live_sandboxes(&state.store, &session_id).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(session = %session_id, error = %e, "listing the session's sandboxes");
            return;
        }
    };
    for id in ids {
        if let Err(e) = lifecycle::destroy(&state, &id).await {
            tracing::warn!(session = %session_id, sandbox = %id, error = %e, "destroy on session close failed");
        }
    }
}

/// `GET /mcp` would open a server-to-client SSE stream, which this server does not offer.
async fn handle_get(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(response) = admit(&state, &headers).await {
        return *response;
    }
    let mut response = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        jsonrpc::INVALID_REQUEST,
        "this server offers no SSE stream: use POST",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST, DELETE"));
    response
}
