//! One proxied request: runs the pipeline phases in order, forwards to the
//! checked destination, scrubs the response, and writes exactly the audit
//! records its decisions call for.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::OnceCell;

use crate::audit::{AuditEvent, Decision, EventKind};
use crate::body::{BoxError, ProxyBody, boxed, full};
use crate::deny::Deny;
use crate::grants::{Grant, StubIndex};
use crate::pipeline::check_address::check_address;
use crate::pipeline::find_stubs::{BodyKind, body_may_hold_stub, find_in_body, find_in_head};
use crate::pipeline::pin_destination::pin_inner;
use crate::pipeline::scrub_response::{
    ScrubBody, ScrubPlan, prepare_response, restrict_accept_encoding, scrub_reason,
    transfer_codings,
};
use crate::pipeline::swap_or_block::{
    RequestFacts, apply_to_body_minted, apply_to_head_minted, decide,
};
use crate::pipeline::{CheckedDest, PinnedDest, audit_path, redact_stubs};
use crate::proxy::Shared;

/// Request bodies up to this size are read whole and scanned before anything
/// is sent, so a stub anywhere in them is checked against its positions (and
/// refused with a clean 403). A longer body whose first `SMALL_BODY` bytes hold
/// a stub is read on, up to `limits.max_buffered_body` (beyond: 413, nothing
/// sent); one whose prefix holds none is streamed, guarded by [`StubGuard`]:
/// a stub first appearing past this point aborts the upload (the stub never
/// leaves, but the head and the bytes before it did).
const SMALL_BODY: usize = 64 * 1024;

/// How a request body was read.
enum BodyRead {
    /// Read to its end.
    Whole(Bytes),
    /// Too long to hold: its stub-free prefix followed by the rest, streamed.
    Stream(ProxyBody),
}

/// Reads a request body per [`SMALL_BODY`]: cheap when it has no stub
/// (chunks are only collected, one scan at the end).
async fn read_body(mut body: Incoming, index: &StubIndex, cap: usize) -> Result<BodyRead, Deny> {
    let mut buf = BytesMut::new();
    let mut limit = SMALL_BODY;
    loop {
        match body.frame().await {
            None => return Ok(BodyRead::Whole(buf.freeze())),
            Some(Err(_)) => return Err(Deny::BadRequest("request body broken")),
            Some(Ok(frame)) => {
                // Trailers of a request are not forwarded (framing is rebuilt).
                if let Ok(d) = frame.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
        }
        if buf.len() > limit {
            if limit == cap || cap <= SMALL_BODY {
                return Err(Deny::BodyTooLarge);
            }
            if body_may_hold_stub(index, &buf) {
                // A stub in the prefix: its positions need the whole body.
                limit = cap;
                continue;
            }
            // No stub so far: stream the rest behind the guard, holding back
            // a possible stub prefix at the end of what was read.
            let prefix = buf.freeze();
            let rest = boxed(body);
            let chained =
                http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<_, BoxError>(
                    Frame::data(prefix),
                )]))
                .boxed_unsync();
            return Ok(BodyRead::Stream(boxed(Chain {
                first: Some(chained),
                second: rest,
            })));
        }
    }
}

/// Two bodies, one after the other.
struct Chain {
    first: Option<ProxyBody>,
    second: ProxyBody,
}

impl Body for Chain {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(f) = this.first.as_mut() {
            match Pin::new(f).poll_frame(cx) {
                Poll::Ready(None) => this.first = None,
                other => return other,
            }
        }
        Pin::new(&mut this.second).poll_frame(cx)
    }
}

/// What one tunnel (or one plain request) is pinned to.
pub(crate) struct Target {
    pub shared: Arc<Shared>,
    pub grant: Arc<Grant>,
    pub pinned: PinnedDest,
    /// Resolved and checked once, on first use.
    pub checked: OnceCell<Result<CheckedDest, Deny>>,
    /// Egress `allow` is audited once per tunnel (connection level).
    pub allow_audited: AtomicBool,
    /// True inside a CONNECT tunnel (audit allow once); false for absolute-form.
    pub tunnel: bool,
    /// The host as audit records show it (stubs redacted), computed once per tunnel.
    audit_host: String,
    /// The `Host` header every request of this tunnel is sent upstream with.
    host_header: Option<HeaderValue>,
    /// Requests of this tunnel: an HTTP/2 tunnel is idle by requests, not frames.
    pub(crate) clock: Arc<crate::sandbox_limits::RequestClock>,
}

/// Request facts kept for the audit record (never values).
#[derive(Clone)]
pub(crate) struct Facts {
    pub(crate) method: String,
    pub(crate) path: String,
}

impl Target {
    pub(crate) fn new(
        shared: Arc<Shared>,
        grant: Arc<Grant>,
        pinned: PinnedDest,
        tunnel: bool,
    ) -> Target {
        let audit_host = redact_stubs(&shared.grants.index(), pinned.host());
        let host_header = HeaderValue::from_str(&pinned.host_header()).ok();
        Target {
            shared,
            grant,
            pinned,
            checked: OnceCell::new(),
            allow_audited: AtomicBool::new(false),
            tunnel,
            audit_host,
            host_header,
            clock: crate::sandbox_limits::RequestClock::new(),
        }
    }

    pub(crate) fn event(
        &self,
        f: &Facts,
        event: EventKind,
        decision: Decision,
        reason: String,
        credential: Option<String>,
        status: Option<u16>,
    ) -> AuditEvent {
        AuditEvent {
            sandbox: self.grant.sandbox.clone(),
            session: self.grant.session.clone(),
            event,
            host: self.audit_host.clone(),
            port: self.pinned.port(),
            method: f.method.clone(),
            path: f.path.clone(),
            credential,
            decision,
            reason,
            status,
            traceparent: self.grant.traceparent.clone(),
        }
    }

    async fn audit(&self, ev: AuditEvent) {
        if let Err(e) = self.shared.audit.append(ev).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    async fn deny(&self, f: &Facts, d: Deny) -> Response<ProxyBody> {
        let status = d.status().as_u16();
        let ev = self.event(
            f,
            EventKind::Block,
            Decision::Deny,
            d.reason(),
            d.credential(),
            Some(status),
        );
        self.audit(ev).await;
        let mut resp = d.to_response();
        if matches!(d, Deny::Revoked) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Entry point for one request (inside a tunnel, or absolute-form plain HTTP).
pub(crate) async fn handle(
    t: Arc<Target>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let facts = Facts {
        method: req.method().as_str().to_string(),
        path: redact_stubs(
            &t.shared.grants.index(),
            &audit_path(req.uri().path_and_query().map_or("/", |p| p.as_str())),
        ),
    };
    // Per-sandbox fairness: counted until the response body is done.
    let guard =
        match crate::sandbox_limits::RequestGuard::enter(&t.grant, &t.clock, &t.shared.limits) {
            Ok(g) => g,
            Err(d) => return Ok(t.deny(&facts, d).await),
        };
    match process(&t, &facts, req).await {
        Ok(resp) => Ok(resp.map(|b| guard.track(b))),
        Err(d) => Ok(t.deny(&facts, d).await),
    }
}

fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let conn = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && conn
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if keep_upgrade && n == header::UPGRADE {
            continue;
        }
        headers.remove(n);
    }
    for n in [
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(n);
    }
    headers.remove("proxy-connection");
    headers.remove("keep-alive");
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

async fn process(
    t: &Arc<Target>,
    f: &Facts,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Deny> {
    let grant = &t.grant;
    if grant.is_revoked() {
        return Err(Deny::Revoked);
    }
    if req.method() == Method::CONNECT {
        return Err(Deny::BadRequest("CONNECT inside a tunnel"));
    }
    let websocket =
        t.tunnel && req.version() <= http::Version::HTTP_11 && is_websocket(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // Rule 2: every request names the pinned destination.
    pin_inner(&t.pinned, &parts)?;

    // Rule 4: stubs of any sandbox, anywhere in the head and the body.
    let index = t.shared.grants.index();
    let mut found = find_in_head(&index, &parts);
    let len = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let empty_body = body.is_end_stream() || len == Some(0);
    let kind = BodyKind::of(&parts.headers);
    let (buffered, stream_body) = if empty_body {
        (Some(Bytes::new()), None)
    } else {
        let cap = t.shared.limits.max_buffered_body;
        // Buffered bytes count against the sandbox's budget (429 beyond it).
        let _slot = crate::sandbox_limits::BufferSlot::reserve(
            grant,
            len.map_or(SMALL_BODY, |l| usize::try_from(l).unwrap_or(usize::MAX))
                .min(cap),
            &t.shared.limits,
        )?;
        match read_body(body, &index, cap).await? {
            BodyRead::Whole(b) => {
                find_in_body(&index, kind, &b, &mut found);
                (Some(b), None)
            }
            BodyRead::Stream(s) => (None, Some(s)),
        }
    };

    // --- aws_sigv4: the stub signature is verified before any decision ---
    let aws = crate::aws_sigv4::verify(
        grant,
        &t.pinned,
        &parts,
        &mut found,
        buffered.as_ref(),
        chrono::Utc::now().timestamp(),
    )?;
    // --- end aws_sigv4 ---

    // Rules 4 and 6.
    let mut swaps = if found.is_empty() {
        if aws.is_none() {
            gate_egress(t, f).await?;
        }
        Vec::new()
    } else {
        let facts = RequestFacts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
        };
        decide(grant, &t.pinned, &facts, &found)?
    };
    // --- minted credentials (github_app, oauth2_refresh): current tokens ---
    let minted = crate::credentials::prepare(
        grant,
        &swaps,
        &t.pinned,
        parts.uri.path(),
        crate::credentials::MintContext {
            upstream: &t.shared.upstream,
            net: &t.shared.net,
        },
    )
    .await?;
    // --- end minted credentials ---
    apply_to_head_minted(grant, &swaps, &minted, &mut parts)?;
    let out_body: ProxyBody = match (buffered, stream_body) {
        (Some(b), _) => {
            let b = apply_to_body_minted(grant, &swaps, &minted, kind, b);
            if !empty_body {
                parts.headers.remove(header::TRANSFER_ENCODING);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
            }
            if b.is_empty() {
                crate::body::empty()
            } else {
                full(b)
            }
        }
        (None, Some(b)) => {
            let t2 = t.clone();
            let f2 = f.clone();
            boxed(StubGuard::new(
                b,
                index.clone(),
                Box::new(move || {
                    let ev = t2.event(
                        &f2,
                        EventKind::Block,
                        Decision::Deny,
                        "credential_position_not_allowed: stub_in_streamed_body".into(),
                        None,
                        None,
                    );
                    tokio::spawn(async move { t2.audit(ev).await });
                }),
            ))
        }
        (None, None) => crate::body::empty(),
    };
    if let Some(v) = &aws {
        swaps.push(v.credential().to_string());
    }

    // Rule 3: resolve once per tunnel and dial only the checked address.
    let dest = t
        .checked
        .get_or_init(|| check_address(&t.shared.net, t.pinned.clone()))
        .await
        .clone()?;

    strip_hop_by_hop(&mut parts.headers, websocket);
    if websocket {
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    restrict_accept_encoding(&mut parts.headers);
    parts.headers.insert(
        header::HOST,
        t.host_header.clone().ok_or(Deny::BadRequest("host"))?,
    );
    // Origin-form toward the upstream: only the path and query are kept (shared, not copied).
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    parts.uri = Uri::from_parts(uri).map_err(|_| Deny::BadRequest("invalid uri"))?;
    // --- aws_sigv4: re-sign the head as it will be sent, with the real keys ---
    let out_body = match aws {
        Some(v) => {
            let (t2, f2) = (t.clone(), f.clone());
            let on_fail: crate::aws_sigv4::chunked::OnFail = Box::new(move |reason| {
                let ev = t2.event(
                    &f2,
                    EventKind::Block,
                    Decision::Deny,
                    format!("credential_not_allowed_for_host: aws_body_not_as_signed: {reason}"),
                    None,
                    None,
                );
                tokio::spawn(async move { t2.audit(ev).await });
            });
            crate::aws_sigv4::resign(v, grant, &mut parts, out_body, on_fail)?
        }
        None => out_body,
    };
    // --- end aws_sigv4 ---
    let upstream_req = Request::from_parts(parts, out_body);

    // Audit fails closed: the swap records are in the log before the secret
    // leaves, and the grant is checked again after that write (revocation).
    crate::audit_gate::before_send(t, f, &swaps, &minted).await?;

    let result = if websocket {
        t.shared.upstream.send_upgrade(&dest, upstream_req).await
    } else {
        t.shared.upstream.send(&dest, upstream_req).await
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(d) => {
            // The decision stands (swap/allow); the record says it failed upstream.
            audit_decision(t, f, &swaps, Some(d.status().as_u16()), Some(d.reason())).await;
            return Ok(d.to_response());
        }
    };
    let status = resp.status();
    audit_decision(t, f, &swaps, Some(status.as_u16()), None).await;

    if websocket
        && status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        {
            let server_upgrade = hyper::upgrade::on(&mut resp);
            let (tb, fb) = (t.clone(), f.clone());
            let on_block = move |reason: &str| {
                let ev = tb.event(
                    &fb,
                    EventKind::Block,
                    Decision::Deny,
                    reason.to_string(),
                    None,
                    None,
                );
                tokio::spawn(async move { tb.audit(ev).await });
            };
            let (ts, fs) = (t.clone(), f.clone());
            let on_scrub = move || {
                let ev = ts.event(
                    &fs,
                    EventKind::Scrub,
                    Decision::Allow,
                    "secret_in_websocket_frame".into(),
                    None,
                    None,
                );
                tokio::spawn(async move { ts.audit(ev).await });
            };
            let t2 = t.clone();
            tokio::spawn(async move {
                crate::websocket::pump(
                    t2.clone(),
                    client_upgrade,
                    server_upgrade,
                    on_block,
                    on_scrub,
                )
                .await;
            });
        }
    }

    // Rule 5: scrub the response.
    let (mut rparts, rbody) = resp.into_parts();
    let codings = transfer_codings(&rparts.headers);
    strip_hop_by_hop(
        &mut rparts.headers,
        websocket && status == StatusCode::SWITCHING_PROTOCOLS,
    );
    let replacer = grant.scrubber();
    // A response with no body (to HEAD, or 204/304) keeps its Content-Length: it states
    // the size of the representation, not of anything we would scrub here, and clients
    // rely on it (a HEAD's size is what `aws s3 cp` downloads by).
    let bodiless = f.method == "HEAD"
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared_length = if bodiless {
        rparts.headers.get(header::CONTENT_LENGTH).cloned()
    } else {
        None
    };
    let (mut header_scrubs, plan) = match prepare_response(&replacer, &mut rparts.headers, &codings)
    {
        Ok(x) => x,
        Err(d) => return Err(d),
    };
    if let Some(cl) = declared_length
        && !rparts.headers.contains_key(header::CONTENT_ENCODING)
        && codings.is_empty()
        && !matches!(&plan, ScrubPlan::Scrub(chain) if !chain.is_empty())
    {
        rparts.headers.insert(header::CONTENT_LENGTH, cl);
    }
    if scrub_reason(&replacer, &mut rparts.extensions) {
        header_scrubs += 1;
    }
    let scrub_audited = Arc::new(AtomicBool::new(false));
    if header_scrubs > 0 {
        scrub_audited.store(true, Ordering::SeqCst);
        let ev = t.event(
            f,
            EventKind::Scrub,
            Decision::Allow,
            "secret_in_response_headers".into(),
            None,
            Some(status.as_u16()),
        );
        t.audit(ev).await;
    }
    let body = match plan {
        ScrubPlan::PassThrough => boxed(rbody),
        ScrubPlan::Scrub(decoders) => {
            let t2 = t.clone();
            let f2 = f.clone();
            let on_scrub: Box<dyn FnOnce() + Send> = Box::new(move || {
                if !scrub_audited.swap(true, Ordering::SeqCst) {
                    let ev = t2.event(
                        &f2,
                        EventKind::Scrub,
                        Decision::Allow,
                        "secret_in_response_body".into(),
                        None,
                        Some(status.as_u16()),
                    );
                    tokio::spawn(async move { t2.audit(ev).await });
                }
            });
            boxed(ScrubBody::new(
                boxed(rbody),
                replacer,
                decoders,
                Some(on_scrub),
            ))
        }
    };
    Ok(Response::from_parts(rparts, body))
}

/// Rule 6 for a request with no stub: the egress lists, and under `ask` a held request
/// answered through [`crate::approvals`] (audited as an `approval` record naming the
/// decision and who made it).
async fn gate_egress(t: &Arc<Target>, f: &Facts) -> Result<(), Deny> {
    use crate::approvals::{Answer, ApprovalDecision, PendingApproval, Verdict};
    let sh = &t.shared;
    match sh
        .approvals
        .verdict(&sh.egress, &t.grant.sandbox, t.pinned.host())
    {
        Verdict::Allow => return Ok(()),
        Verdict::Deny => return Err(Deny::Egress),
        Verdict::Ask => {}
    }
    let now = chrono::Utc::now();
    let info = PendingApproval {
        id: String::new(),
        sandbox: t.grant.sandbox.clone(),
        session: t.grant.session.clone(),
        host: t.pinned.host().to_string(),
        port: t.pinned.port(),
        method: f.method.clone(),
        path: f.path.clone(),
        created_at: now,
        expires_at: now,
    };
    let timeout = std::time::Duration::from_secs(sh.egress.ask_timeout_s);
    let answer = tokio::select! {
        a = sh.approvals.ask(info, timeout) => a,
        _ = t.grant.revoked() => Answer { decision: ApprovalDecision::Deny, by: "revoked".into() },
    };
    let allowed = answer.decision.allows();
    let ev = t.event(
        f,
        EventKind::Approval,
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        },
        format!("{} by {}", answer.decision.as_str(), answer.by),
        None,
        None,
    );
    t.audit(ev).await;
    if allowed { Ok(()) } else { Err(Deny::Egress) }
}

/// Writes the egress allow record (once per tunnel). Swap records are not
/// written here: `audit_gate::before_send` wrote them before the request left.
async fn audit_decision(
    t: &Arc<Target>,
    f: &Facts,
    swaps: &[String],
    status: Option<u16>,
    err: Option<String>,
) {
    if !swaps.is_empty() {
        return;
    }
    if t.tunnel && t.allow_audited.swap(true, Ordering::SeqCst) && err.is_none() {
        return;
    }
    let reason = err.unwrap_or_else(|| "egress_allowed".into());
    let ev = t.event(f, EventKind::Allow, Decision::Allow, reason, None, status);
    t.audit(ev).await;
}

/// A streamed request body that fails (aborting the upstream request) as
/// soon as any known stub appears in it. Holds back `max_len - 1` bytes so a
/// stub split across chunks is never partly forwarded.
pub(crate) struct StubGuard {
    inner: ProxyBody,
    index: Arc<StubIndex>,
    buf: BytesMut,
    done: bool,
    on_block: Option<Box<dyn FnOnce() + Send>>,
}

impl StubGuard {
    pub(crate) fn new(
        inner: ProxyBody,
        index: Arc<StubIndex>,
        on_block: Box<dyn FnOnce() + Send>,
    ) -> Self {
        StubGuard {
            inner,
            index,
            buf: BytesMut::new(),
            done: false,
            on_block: Some(on_block),
        }
    }
}

impl Body for StubGuard {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let hold = this.index.max_len().saturating_sub(1);
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.extend_from_slice(&data);
                        if this.index.contains_any(&this.buf) {
                            this.done = true;
                            if let Some(f) = this.on_block.take() {
                                f();
                            }
                            return Poll::Ready(Some(Err("stub in request body".into())));
                        }
                        if this.buf.len() > hold {
                            let out = this.buf.split_to(this.buf.len() - hold).freeze();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(_trailers) => {
                        // Trailers are not forwarded on guarded bodies.
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    if this.buf.is_empty() {
                        return Poll::Ready(None);
                    }
                    let out = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
        }
    }
}
