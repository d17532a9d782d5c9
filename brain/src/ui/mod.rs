//! The web console at `/ui/` (DESIGN.md, "Contract: console and approvals").
//!
//! Server-rendered HTML ([`pages`], maud), a small script and stylesheet served from
//! `/ui/static/` (no external assets, no inline script: the CSP is `default-src 'self'`), and
//! readable without JavaScript. Sign-in with the master key sets an opaque, server-side
//! session cookie ([`auth`]); every state-changing form carries that sign-in's CSRF token,
//! and a POST without it is refused (403). Live views: a session's transcript follows the
//! brain's SSE event stream; the approvals inbox re-fetches its table.

// Handlers return the error page itself as `Err(Response)`, the axum idiom; boxing it would
// only add an allocation per error.
#![allow(clippy::result_large_err)]

mod audit_status;
mod auth;
mod pages;
pub mod slack;

use axum::Extension;
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;
use std::collections::HashMap;

use crate::api::Caller;
use crate::credentials::{ApprovalDecision, AuditFilter};
use crate::sessions::{self, ListFilter};
use crate::state::AppState;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const PAGE: i64 = 50;
const AUDIT_PAGE: usize = 200;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/sessions") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/sessions") }))
        .route("/ui/static/app.js", get(js))
        .route("/ui/static/app.css", get(css))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/sessions", get(sessions_page))
        .route("/ui/sessions/{id}", get(session_page))
        .route("/ui/sessions/{id}/events", get(session_events))
        .route("/ui/sessions/{id}/cancel", post(session_cancel))
        .route("/ui/sessions/{id}/messages", post(session_message))
        .route("/ui/sandboxes", get(sandboxes_page))
        .route("/ui/sandboxes/{id}/destroy", post(sandbox_destroy))
        .route("/ui/audit", get(audit_page))
        .route("/ui/audit.jsonl", get(audit_export))
        .route("/ui/audit/verify", post(audit_verify))
        .route("/ui/credentials", get(credentials_page))
        .route("/ui/approvals", get(approvals_page))
        .route("/ui/approvals/inbox", get(approvals_inbox))
        .route("/ui/approvals/stream", get(approvals_stream))
        .route("/ui/approvals/{id}", post(approval_decide))
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("static/app.js"),
    )
}

async fn css() -> Response {
    static_file("text/css; charset=utf-8", include_str!("static/app.css"))
}

fn static_file(ct: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A page for the signed-in user, or a redirect to the sign-in form.
type Page = Result<Response, Response>;

fn signed_in(headers: &HeaderMap) -> Result<(String, auth::Signin), Response> {
    auth::current(headers).ok_or_else(|| Redirect::to("/ui/login").into_response())
}

/// Pages that show every sandbox, credential or audit record: the master key only.
fn master_only(s: &auth::Signin) -> Result<(), Response> {
    if s.is_master() {
        Ok(())
    } else {
        Err(error_page(
            s,
            StatusCode::FORBIDDEN,
            "Signed in with a virtual key: this page needs the master key.",
        ))
    }
}

/// 404 unless the session exists and this sign-in may see it.
async fn visible_session(state: &AppState, s: &auth::Signin, id: &str) -> Result<(), Response> {
    crate::api::sessions::visible(state, &s.caller, id)
        .await
        .map_err(|e| error_page(s, StatusCode::NOT_FOUND, &e.message))
}

/// For POSTs: signed in and the form's CSRF token matches (else 403, nothing done).
fn checked(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<auth::Signin, Response> {
    let (_, s) = signed_in(headers)?;
    if !auth::csrf_ok(&s, form.get("csrf").map(String::as_str)) {
        return Err(forbidden("missing or wrong CSRF token"));
    }
    Ok(s)
}

fn forbidden(msg: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(format!(
            "<p>403: {}</p>",
            maud::html! { (msg) }.into_string()
        )),
    )
        .into_response()
}

fn page(title: &str, active: &str, s: &auth::Signin, body: Markup) -> Response {
    let user = pages::User {
        who: &s.who,
        master: s.is_master(),
        csrf: &s.csrf,
    };
    Html(pages::layout(title, active, Some(&user), body).into_string()).into_response()
}

fn error_page(s: &auth::Signin, status: StatusCode, msg: &str) -> Response {
    let body = maud::html! { h1 { (status.as_u16()) } div.flash { (msg) } };
    (status, page("Error", "", s, body)).into_response()
}

async fn login_form(headers: HeaderMap) -> Response {
    login_page(&headers, None, StatusCode::OK)
}

fn login_page(headers: &HeaderMap, error: Option<&str>, status: StatusCode) -> Response {
    // Double-submit token for the sign-in form (there is no sign-in to hold one yet).
    let token = auth::cookie(headers, auth::LOGIN_COOKIE)
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .unwrap_or_else(|| auth::random_hex(16));
    let html = pages::layout("Sign in", "", None, pages::login(&token, error));
    (
        status,
        [(
            header::SET_COOKIE,
            auth::set_cookie(auth::LOGIN_COOKIE, &token, 3600),
        )],
        Html(html.into_string()),
    )
        .into_response()
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let want = auth::cookie(&headers, auth::LOGIN_COOKIE);
    let got = form.get("csrf").map(String::as_str);
    if want.is_none() || want != got {
        return forbidden("missing or wrong CSRF token");
    }
    let key = form.get("key").map(|k| k.trim()).unwrap_or("");
    let principal = match key {
        "" => None,
        key => crate::mcp::auth::principal_of(&state, key).await,
    };
    let Some(principal) = principal else {
        tracing::warn!("console sign-in refused");
        return login_page(
            &headers,
            Some("That key was not accepted."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let caller = match principal.kind {
        crate::mcp::auth::PrincipalKind::Master => Caller::Master,
        crate::mcp::auth::PrincipalKind::VirtualKey => Caller::Key(principal.id),
    };
    // A fresh random id per sign-in (never one the browser brought: no fixation); the
    // double-submit cookie of the form is spent.
    let id = auth::sign_in(caller);
    let mut resp = Redirect::to("/ui/sessions").into_response();
    // Appended, not inserted: both cookies must reach the browser.
    for cookie in [
        auth::signin_cookie(&id),
        auth::set_cookie(auth::LOGIN_COOKIE, "", 0),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

async fn logout(headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Page {
    checked(&headers, &form)?;
    if let Some(id) = auth::cookie(&headers, auth::COOKIE) {
        auth::sign_out(id);
    }
    Ok((
        [(header::SET_COOKIE, auth::set_cookie(auth::COOKIE, "", 0))],
        Redirect::to("/ui/login"),
    )
        .into_response())
}

#[derive(Deserialize)]
struct SessionsQ {
    #[serde(default)]
    status: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    q: String,
    /// Paging: unix ms (or an RFC 3339 time) of the last row of the previous page.
    #[serde(default)]
    before: String,
    /// Paging: the id of that row (the keyset's tie-breaker).
    #[serde(default)]
    before_id: String,
}

async fn sessions_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SessionsQ>,
) -> Page {
    let (_, s) = signed_in(&headers)?;
    let status = match q.status.as_str() {
        "" => None,
        v => Some(
            v.parse()
                .map_err(|e: String| error_page(&s, StatusCode::BAD_REQUEST, &e))?,
        ),
    };
    let before_ms = match q.before.as_str() {
        "" => None,
        v => Some(match v.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => chrono::DateTime::parse_from_rfc3339(v)
                .map_err(|e| error_page(&s, StatusCode::BAD_REQUEST, &e.to_string()))?
                .timestamp_millis(),
        }),
    };
    // One page from the database (newest first, keyset on (created_at, id)); the filters
    // and the search are part of the query, which looks at a bounded window of rows.
    let filter = ListFilter {
        status,
        origin_kind: (!q.origin.is_empty()).then(|| q.origin.clone()),
        before_ms,
        before_id: (before_ms.is_some() && !q.before_id.is_empty()).then(|| q.before_id.clone()),
        owner: s.caller.owner().map(str::to_string),
        search: Some(q.q.trim().to_string()).filter(|n| !n.is_empty()),
        limit: PAGE,
    };
    let (list, next, scanned) = sessions::list_page(&state, &filter)
        .await
        .map_err(|e| error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let f = pages::SessionsQuery {
        status: &q.status,
        origin: &q.origin,
        q: &q.q,
    };
    let next = next.map(|(ms, id)| {
        let mut href = format!("/ui/sessions?before={ms}&before_id={}", percent(&id));
        for (k, v) in [("status", &q.status), ("origin", &q.origin), ("q", &q.q)] {
            if !v.is_empty() {
                href.push_str(&format!("&{k}={}", percent(v)));
            }
        }
        // A short page with more to look at: the window ran out before the page filled.
        let short = (list.len() as i64) < PAGE;
        let oldest = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default();
        pages::Next {
            href,
            searched: short.then_some((scanned, oldest)),
        }
    });
    Ok(page(
        "Sessions",
        "sessions",
        &s,
        pages::sessions(&list, &f, next.as_ref()),
    ))
}

async fn session_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Page {
    let (_, s) = signed_in(&headers)?;
    let view = sessions::get(&state, &id)
        .await
        .ok()
        .filter(|v| s.caller.may_see(&v.origin))
        .ok_or_else(|| error_page(&s, StatusCode::NOT_FOUND, &format!("no session {id}")))?;
    let events = state
        .store
        .session_events(&id, 0, 500)
        .await
        .map_err(|e| error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    Ok(page(
        "Session",
        "sessions",
        &s,
        pages::session(&view, &events, &s.csrf),
    ))
}

/// The session's live event stream (the API's SSE endpoint, cookie-authenticated).
async fn session_events(
    state: State<AppState>,
    mut headers: HeaderMap,
    id: Path<String>,
    query: Result<
        Query<crate::api::sessions::EventsQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Page {
    let (_, s) = signed_in(&headers)?;
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    crate::api::sessions::events_with(state, Extension(s.caller), id, headers, query, true)
        .await
        .map_err(IntoResponse::into_response)
}

async fn session_cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    let s = checked(&headers, &form)?;
    visible_session(&state, &s, &id).await?;
    let st = state.clone();
    let id2 = id.clone();
    tokio::spawn(async move { sessions::cancel(&st, &id2).await })
        .await
        .map_err(|e| error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?
        .map_err(|e| error_page(&s, StatusCode::CONFLICT, &e.to_string()))?;
    Ok(Redirect::to(&format!("/ui/sessions/{id}")).into_response())
}

async fn session_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    let s = checked(&headers, &form)?;
    visible_session(&state, &s, &id).await?;
    let text = form.get("text").map(|t| t.trim()).unwrap_or("");
    if text.is_empty() {
        return Err(error_page(
            &s,
            StatusCode::BAD_REQUEST,
            "the message is empty",
        ));
    }
    sessions::post_message(&state, &id, text.to_string())
        .await
        .map_err(|e| error_page(&s, StatusCode::CONFLICT, &e.to_string()))?;
    Ok(Redirect::to(&format!("/ui/sessions/{id}")).into_response())
}

async fn sandboxes_page(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let (_, s) = signed_in(&headers)?;
    master_only(&s)?;
    let list = state
        .store
        .list_sandboxes(false, 200)
        .await
        .map_err(|e| error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    Ok(page(
        "Sandboxes",
        "sandboxes",
        &s,
        pages::sandboxes(&list, &s.csrf),
    ))
}

async fn sandbox_destroy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    let s = checked(&headers, &form)?;
    master_only(&s)?;
    let st = state.clone();
    tokio::spawn(async move { crate::lifecycle::destroy(&st, &id).await })
        .await
        .map_err(|e| error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?
        .map_err(|e| error_page(&s, StatusCode::CONFLICT, &e.to_string()))?;
    Ok(Redirect::to("/ui/sandboxes").into_response())
}

#[derive(Deserialize, Default)]
struct AuditQ {
    #[serde(default)]
    session: String,
    #[serde(default)]
    sandbox: String,
    #[serde(default)]
    credential: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    since: String,
    /// Paging: only records with a lower seq.
    #[serde(default)]
    before: Option<u64>,
}

impl AuditQ {
    fn filter(&self, limit: usize) -> Result<AuditFilter, String> {
        let opt = |v: &str| (!v.is_empty()).then(|| v.to_string());
        Ok(AuditFilter {
            sandbox: opt(&self.sandbox),
            session: opt(&self.session),
            credential: opt(&self.credential),
            decision: match self.decision.as_str() {
                "" => None,
                d => Some(
                    d.parse()
                        .map_err(|_| "decision must be allow or deny".to_string())?,
                ),
            },
            since: match self.since.as_str() {
                "" => None,
                v => Some(
                    chrono::DateTime::parse_from_rfc3339(v)
                        .map_err(|e| format!("since: {e}"))?
                        .with_timezone(&chrono::Utc),
                ),
            },
            host: opt(self.host.trim()),
            before_seq: self.before,
            limit: Some(limit),
        })
    }

    fn query_string(&self) -> String {
        let mut out = Vec::new();
        for (k, v) in [
            ("session", &self.session),
            ("sandbox", &self.sandbox),
            ("credential", &self.credential),
            ("decision", &self.decision),
            ("host", &self.host),
            ("since", &self.since),
        ] {
            if !v.is_empty() {
                out.push(format!("{k}={}", percent(v)));
            }
        }
        out.join("&")
    }
}

async fn audit_records(
    state: &AppState,
    q: &AuditQ,
    limit: usize,
) -> Result<Vec<crate::credentials::AuditRecord>, (StatusCode, String)> {
    let broker = state.broker.as_ref().ok_or((
        StatusCode::NOT_IMPLEMENTED,
        "no vault proxy is configured: there is no egress audit log".to_string(),
    ))?;
    let filter = q.filter(limit).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    // One page read backwards from the log's end (or `before`): never the whole log.
    broker
        .audit(filter)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
}

async fn audit_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AuditQ>,
) -> Page {
    let (_, s) = signed_in(&headers)?;
    master_only(&s)?;
    let mut recs = audit_records(&state, &q, AUDIT_PAGE)
        .await
        .map_err(|(st, e)| error_page(&s, st, &e))?;
    recs.reverse();
    let f = pages::AuditQuery {
        session: &q.session,
        sandbox: &q.sandbox,
        credential: &q.credential,
        decision: &q.decision,
        host: &q.host,
        since: &q.since,
    };
    let export = format!("/ui/audit.jsonl?{}", q.query_string());
    // The page is newest first; the next one starts below its oldest record.
    let older = (recs.len() == AUDIT_PAGE)
        .then(|| {
            recs.last()
                .map(|r| format!("/ui/audit?{}&before={}", q.query_string(), r.seq))
        })
        .flatten();
    audit_status::refresh_if_stale(&state);
    let (checked, running) = audit_status::snapshot();
    // The live head is the writer's in-memory state (no read of the log).
    let head = match state.broker.as_ref() {
        Some(b) => b.audit_head().await.map_err(|e| e.to_string()),
        None => Err("no vault proxy".to_string()),
    };
    let chain = pages::Chain {
        checked: checked.as_ref(),
        running,
        head: head.as_ref().ok(),
        head_error: head.as_ref().err().map(String::as_str),
        csrf: &s.csrf,
    };
    Ok(page(
        "Egress audit",
        "audit",
        &s,
        pages::audit(&recs, &f, &export, older.as_deref(), &chain),
    ))
}

/// "Verify now": starts a verification of the chain (in the background) and goes back.
async fn audit_verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    let s = checked(&headers, &form)?;
    master_only(&s)?;
    audit_status::start(&state);
    Ok(Redirect::to("/ui/audit").into_response())
}

async fn credentials_page(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let (_, s) = signed_in(&headers)?;
    master_only(&s)?;
    let list = match state.broker.as_ref() {
        Some(b) => b.credentials().await.map_err(|e| e.to_string()),
        None => {
            Err("No vault proxy is configured (vault.mode off): there are no credentials.".into())
        }
    };
    Ok(page(
        "Credentials",
        "credentials",
        &s,
        pages::credentials(&list),
    ))
}

async fn audit_export(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AuditQ>,
) -> Page {
    let (_, s) = signed_in(&headers)?;
    master_only(&s)?;
    let recs = audit_records(&state, &q, crate::api::audit::MAX_RECORDS)
        .await
        .map_err(|(st, e)| error_page(&s, st, &e))?;
    let mut out = String::new();
    for r in &recs {
        out.push_str(&serde_json::to_string(r).unwrap_or_default());
        out.push('\n');
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"egress-audit.jsonl\"",
            ),
        ],
        out,
    )
        .into_response())
}

async fn approvals_page(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let (_, s) = signed_in(&headers)?;
    let list = pending(&state, &s).await?;
    Ok(page(
        "Approvals",
        "approvals",
        &s,
        pages::approvals(&list, &s.csrf),
    ))
}

/// The inbox table alone (what app.js fetches when the stream is unavailable).
async fn approvals_inbox(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let (_, s) = signed_in(&headers)?;
    let list = pending(&state, &s).await?;
    Ok(Html(pages::inbox(&list, &s.csrf).into_string()).into_response())
}

/// How often the inbox stream re-reads the pending approvals (an in-memory read of the
/// embedded proxy, one admin call to a remote one).
const INBOX_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /ui/approvals/stream`: the live inbox over SSE. Each `inbox` event carries the
/// rendered table (escaped by maud, so app.js may set it as HTML); one is sent at once and
/// then only when the pending set changed. Ends when the sign-in does.
async fn approvals_stream(State(state): State<AppState>, headers: HeaderMap) -> Page {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let (id, s) = signed_in(&headers)?;
    struct Inbox {
        state: AppState,
        signin_id: String,
        s: auth::Signin,
        last: Option<String>,
        first: bool,
    }
    let init = Inbox {
        state,
        signin_id: id,
        s,
        last: None,
        first: true,
    };
    let stream = futures_util::stream::unfold(init, |mut f| async move {
        loop {
            if !f.first {
                tokio::time::sleep(INBOX_POLL).await;
            }
            f.first = false;
            if !auth::is_live(&f.signin_id) {
                return None;
            }
            let Ok(list) = pending(&f.state, &f.s).await else {
                continue;
            };
            let html = pages::inbox(&list, &f.s.csrf).into_string();
            if f.last.as_deref() == Some(html.as_str()) {
                continue;
            }
            let event = Event::default().event("inbox").data(&html);
            f.last = Some(html);
            return Some((Ok::<_, std::convert::Infallible>(event), f));
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The pending approvals this sign-in may answer: all (master), or those of its own
/// sessions (a virtual key).
async fn pending(
    state: &AppState,
    s: &auth::Signin,
) -> Result<Vec<crate::credentials::PendingApproval>, Response> {
    let broker = crate::approvals::broker(state).map_err(IntoResponse::into_response)?;
    let mut list = broker
        .approvals()
        .await
        .map_err(|e| error_page(s, StatusCode::BAD_GATEWAY, &e.to_string()))?;
    if !s.is_master() {
        let mut seen: HashMap<String, bool> = HashMap::new();
        let mut keep = Vec::with_capacity(list.len());
        for a in list {
            let Some(session) = a.session.clone() else {
                continue;
            };
            let ok = match seen.get(&session) {
                Some(ok) => *ok,
                None => {
                    let ok = crate::api::sessions::visible(state, &s.caller, &session)
                        .await
                        .is_ok();
                    seen.insert(session, ok);
                    ok
                }
            };
            if ok {
                keep.push(a);
            }
        }
        list = keep;
    }
    Ok(list)
}

async fn approval_decide(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Page {
    let s = checked(&headers, &form)?;
    let decision: ApprovalDecision = match form.get("decision").map(String::as_str) {
        Some("allow_once") => ApprovalDecision::AllowOnce,
        Some("allow_session") => ApprovalDecision::AllowSession,
        Some("allow_always") => ApprovalDecision::AllowAlways,
        Some("deny") => ApprovalDecision::Deny,
        _ => return Err(error_page(&s, StatusCode::BAD_REQUEST, "unknown decision")),
    };
    if !s.is_master() {
        // A virtual key answers only for its own sessions, and never for every sandbox.
        if decision == ApprovalDecision::AllowAlways {
            return Err(error_page(
                &s,
                StatusCode::FORBIDDEN,
                "\"Allow always\" changes every sandbox's egress: it needs the master key.",
            ));
        }
        if !pending(&state, &s).await?.iter().any(|a| a.id == id) {
            return Err(error_page(
                &s,
                StatusCode::NOT_FOUND,
                "no pending approval with this id for your sessions",
            ));
        }
    }
    let by = format!("console:{}", s.who);
    crate::approvals::decide_as(&state, &id, decision, &by)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Redirect::to("/ui/approvals").into_response())
}

/// Percent-encodes a query value (everything but unreserved characters).
fn percent(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
