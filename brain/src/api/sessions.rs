//! `/v1/sessions`: start a task, follow its events (JSON or live SSE), queue follow-ups,
//! cancel. The loop itself is `crate::sessions`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::Caller;
use super::extract::ApiJson;
use crate::credentials::EgressPolicy;
use crate::error::ApiError;
use crate::sandbox::BackendKind;
use crate::sessions::{self, EventRow, ListFilter, NewSession, SessionError, SessionView};
use crate::state::AppState;

/// Events per page (JSON) and per store read (SSE).
const EVENTS_PAGE: i64 = 500;
const LIST_DEFAULT: i64 = 50;
const LIST_MAX: i64 = 500;
/// Followers re-read the store this often even without a local wake-up (another replica may
/// be the one writing).
const FOLLOW_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub task: String,
    pub model: Option<String>,
    pub agent: Option<String>,
    pub backend: Option<BackendKind>,
    pub credentials: Option<Vec<String>>,
    pub max_steps: Option<u32>,
    pub max_cost_usd: Option<f64>,
    /// `"ask"`, `"deny"`, or `{"allow_hosts":[…], "default"?}`: the egress of the session's
    /// sandboxes (see [`session_egress`]).
    pub egress: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    /// `origin.kind`: api, slack, github, mcp.
    origin: Option<String>,
    limit: Option<i64>,
    /// RFC 3339: only sessions created before (paging).
    before: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Serialize)]
pub struct EventList {
    pub session_id: String,
    pub status: sessions::SessionStatus,
    pub events: Vec<EventRow>,
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let message = e.to_string();
        match e {
            SessionError::NotFound(_) => ApiError::not_found(message),
            SessionError::Invalid(_) => ApiError::bad_request("invalid_request", message),
            SessionError::NoModel => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_model_configured",
                message,
            ),
            SessionError::Closed { .. } => ApiError::conflict("session_closed", message),
            SessionError::Store(e) => e.into(),
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<(StatusCode, Json<SessionView>), ApiError> {
    let new = NewSession {
        id: None,
        task: body.task,
        model: body.model,
        agent: body.agent,
        backend: body.backend,
        credentials: body.credentials.unwrap_or_default(),
        max_steps: body.max_steps,
        max_cost_usd: body.max_cost_usd,
        origin: serde_json::json!({ "kind": "api" }),
    };
    let mut new = new;
    if let Some(owner) = caller.owner() {
        new.origin["owner"] = serde_json::Value::from(owner);
    }
    if let Some(egress) = body.egress {
        if state.broker.is_none() {
            return Err(ApiError::bad_request(
                "invalid_request",
                "egress needs a vault proxy (vault.mode is off)",
            ));
        }
        // Kept with the origin (no schema change): `lifecycle` applies it to each sandbox.
        new.origin["egress"] = serde_json::to_value(session_egress(egress)?)
            .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    }
    let view = sessions::start(&state, new).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Validates a session's `egress` into the proxy's per-sandbox policy.
pub fn session_egress(v: serde_json::Value) -> Result<EgressPolicy, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_request", format!("egress: {m}"));
    let policy = match v {
        serde_json::Value::String(s) if s == "ask" || s == "deny" => EgressPolicy {
            default: Some(s),
            allow_hosts: Vec::new(),
        },
        v @ serde_json::Value::Object(_) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Obj {
                #[serde(default)]
                allow_hosts: Vec<String>,
                default: Option<String>,
            }
            let o: Obj = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
            EgressPolicy {
                default: o.default,
                allow_hosts: o.allow_hosts,
            }
        }
        _ => {
            return Err(bad(
                "must be \"ask\", \"deny\" or {\"allow_hosts\":[…]}".into()
            ));
        }
    };
    if let Some(d) = &policy.default
        && d != "ask"
        && d != "deny"
    {
        return Err(bad(format!("default must be ask or deny, not `{d}`")));
    }
    if policy.allow_hosts.len() > 256 {
        return Err(bad("at most 256 hosts".into()));
    }
    for h in &policy.allow_hosts {
        vault_proxy::config::HostPattern::parse(h).map_err(|e| bad(e.to_string()))?;
    }
    Ok(policy)
}

pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let status = match q.status.filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse()
                .map_err(|e: String| ApiError::bad_request("invalid_request", e))?,
        ),
        None => None,
    };
    let before_ms = match q.before.filter(|s| !s.is_empty()) {
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(&s)
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("before must be an RFC 3339 time: {e}"),
                    )
                })?
                .timestamp_millis(),
        ),
        None => None,
    };
    let filter = ListFilter {
        status,
        origin_kind: q.origin.filter(|s| !s.is_empty()),
        before_ms,
        owner: caller.owner().map(str::to_string),
        limit: q.limit.unwrap_or(LIST_DEFAULT).clamp(1, LIST_MAX),
        ..ListFilter::default()
    };
    Ok(Json(SessionList {
        sessions: sessions::list(&state, &filter).await?,
    }))
}

/// 404 unless the session exists and `caller` may see it (another key's session is not
/// told apart from a missing one).
pub(crate) async fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    match state.store.get_session(id).await? {
        Some(row) if caller.may_see(&row.origin) => Ok(()),
        _ => Err(ApiError::not_found(format!("no session {id}"))),
    }
}

pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let view = sessions::get(&state, &id).await?;
    if !caller.may_see(&view.origin) {
        return Err(ApiError::not_found(format!("no session {id}")));
    }
    Ok(Json(view))
}

pub async fn message(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MessageBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    visible(&state, &caller, &id).await?;
    sessions::post_message(&state, &id, body.text).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "session_id": id, "queued": true })),
    ))
}

pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    visible(&state, &caller, &id).await?;
    // Spawned: a client hanging up must not stop the cancel half-way.
    let task = tokio::spawn(async move { sessions::cancel(&state, &id).await });
    let view = task
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(view))
}

pub async fn events(
    state: State<AppState>,
    caller: Extension<Caller>,
    id: Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    events_with(state, caller, id, headers, query, false).await
}

/// [`events`]; with `live_output`, the SSE stream also carries the live output of running
/// commands (`event: exec_output`, no id: not part of the durable log), as the console's
/// transcript shows it.
pub(crate) async fn events_with(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
    live_output: bool,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let row = state
        .store
        .get_session(&id)
        .await?
        .filter(|row| caller.may_see(&row.origin))
        .ok_or_else(|| ApiError::not_found(format!("no session {id}")))?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request("invalid_request", "Last-Event-ID must be an event seq")
            })
        })
        .transpose()?;
    let after = last_event_id.or(q.after).unwrap_or(0).max(0);
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        return Ok(follow(state, id, after, live_output).into_response());
    }
    let limit = q.limit.unwrap_or(EVENTS_PAGE).clamp(1, 10 * EVENTS_PAGE);
    let events = state.store.session_events(&id, after, limit).await?;
    Ok(Json(EventList {
        session_id: id,
        status: row.status,
        events,
    })
    .into_response())
}

struct Follow {
    state: AppState,
    id: String,
    after: i64,
    buffer: VecDeque<EventRow>,
    rx: tokio::sync::watch::Receiver<i64>,
    /// Live exec output (the console only).
    output: Option<tokio::sync::broadcast::Receiver<sessions::ExecOutput>>,
    /// The last item sent was a live output chunk.
    quiet: bool,
    done: bool,
}

/// Replays events after `after`, then streams new ones as they are committed; ends once the
/// session has settled (terminal, nothing pending) and every event up to it was sent. Each
/// SSE event: `id: <seq>`, `event: <kind>`, `data: {"seq","ts","kind","data"}`.
fn follow(
    state: AppState,
    id: String,
    after: i64,
    live_output: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let rx = state.sessions.subscribe(&id);
    let output = live_output.then(|| state.sessions.subscribe_output(&id));
    let init = Follow {
        state,
        id,
        after,
        buffer: VecDeque::new(),
        rx,
        output,
        quiet: false,
        done: false,
    };
    let stream = futures_util::stream::unfold(init, |mut f| async move {
        loop {
            if let Some(event) = f.buffer.pop_front() {
                f.after = event.seq;
                let data = serde_json::to_string(&event).unwrap_or_else(|e| {
                    format!(r#"{{"error":{{"code":"internal","message":"encoding event: {e}"}}}}"#)
                });
                let sse = Event::default()
                    .id(event.seq.to_string())
                    .event(event.kind)
                    .data(data);
                return Some((Ok(sse), f));
            }
            if f.done {
                return None;
            }
            // After a live output chunk, wait again without reading the store (a chatty
            // command must not cost a query per chunk; commits still wake `rx`).
            if !std::mem::take(&mut f.quiet) {
                // Status first, then events: the terminal event commits with the status, so a
                // settled row guarantees this read includes it.
                let settled = match f.state.store.get_session(&f.id).await {
                    Ok(Some(row)) => row.is_settled(),
                    Ok(None) => true,
                    Err(e) => {
                        return Some((Ok(error_event(&e.to_string())), Follow { done: true, ..f }));
                    }
                };
                match f
                    .state
                    .store
                    .session_events(&f.id, f.after, EVENTS_PAGE)
                    .await
                {
                    Ok(events) => {
                        let full = i64::try_from(events.len()).unwrap_or(0) >= EVENTS_PAGE;
                        f.buffer.extend(events);
                        if settled && !full {
                            f.done = true;
                        }
                    }
                    Err(e) => {
                        return Some((Ok(error_event(&e.to_string())), Follow { done: true, ..f }));
                    }
                }
            }
            if f.buffer.is_empty() && !f.done {
                let shutdown = f.state.sessions.shutdown.clone();
                let out = f.output.as_mut();
                let live = async move {
                    match out {
                        Some(rx) => Some(rx.recv().await),
                        None => std::future::pending().await,
                    }
                };
                let chunk = tokio::select! {
                    _ = f.rx.changed() => None,
                    _ = tokio::time::sleep(FOLLOW_POLL) => None,
                    _ = shutdown.cancelled() => return None,
                    chunk = live => chunk,
                };
                use tokio::sync::broadcast::error::RecvError;
                match chunk {
                    Some(Ok(chunk)) => {
                        let data = serde_json::to_string(&chunk).unwrap_or_default();
                        let sse = Event::default().event("exec_output").data(data);
                        f.quiet = true;
                        return Some((Ok(sse), f));
                    }
                    // A slow follower skipped some chunks: the tool_result has them all.
                    Some(Err(RecvError::Lagged(_))) | None => {}
                    Some(Err(RecvError::Closed)) => f.output = None,
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn error_event(message: &str) -> Event {
    let body = airlock_wire::ErrorBody::new("internal", message.to_owned());
    Event::default()
        .event("error")
        .data(serde_json::to_string(&body).unwrap_or_default())
}
