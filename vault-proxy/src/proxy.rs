//! The proxy listener: HTTP/1.1 server for proxy requests (CONNECT and
//! absolute-form), tunnel sniffing, TLS termination and the inner HTTP/1.1
//! or HTTP/2 server whose every request goes through `handler`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use airlock_telemetry::TraceParent;
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, AuditLog, Decision, EventKind};
use crate::body::{ProxyBody, empty};
use crate::ca::LeafCache;
use crate::config::EgressConfig;
use crate::connect::Upstream;
use crate::deny::Deny;
use crate::grants::{Grant, Grants};
use crate::handler::{Target, handle};
use crate::pipeline::authenticate::authenticate;
use crate::pipeline::check_address::{NetPolicy, check_ip};
use crate::pipeline::pin_destination::{pin_absolute, pin_connect, pin_sni};
use crate::pipeline::{PinnedDest, Scheme, audit_path, redact_stubs};

/// Resource limits of the proxy listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent client connections (TCP) per listener; more are closed at once.
    pub max_connections: usize,
    /// Concurrent open tunnels per sandbox.
    pub max_tunnels_per_sandbox: usize,
    /// Time allowed to send a complete request head (slowloris).
    pub header_read_timeout: Duration,
    /// Time allowed for the first tunnel bytes and the TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head accepted (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Largest request body buffered to check the positions of a stub in it.
    pub max_buffered_body: usize,
    /// Upstream connect + TLS handshake timeout.
    pub connect_timeout: Duration,
    /// A client connection that has not authenticated by then is closed
    /// (`limits.unauthenticated_timeout_ms`; the smaller of this and the config wins).
    pub unauthenticated_timeout: Duration,
    /// Requests one sandbox may have in flight at once (all its tunnels and
    /// HTTP/2 streams together); more get `429 too_many_requests`.
    pub max_requests_per_sandbox: usize,
    /// Request body bytes one sandbox may have buffered at once; more → 429.
    pub max_buffered_per_sandbox: usize,
    /// Test hook: a pause between a swap's audit write and the last grant
    /// check before sending (zero outside tests), so a test can revoke there.
    pub pause_after_audit: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_tunnels_per_sandbox: 2048,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_header_bytes: 64 * 1024,
            max_buffered_body: 8 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            unauthenticated_timeout: Duration::from_millis(5000),
            max_requests_per_sandbox: 512,
            max_buffered_per_sandbox: 32 * 1024 * 1024,
            pause_after_audit: Duration::ZERO,
        }
    }
}

/// Everything request handling shares.
pub(crate) struct Shared {
    pub grants: Arc<Grants>,
    pub egress: EgressConfig,
    /// Held `ask` requests and run-time per-sandbox egress.
    pub approvals: Arc<crate::approvals::Approvals>,
    pub net: NetPolicy,
    pub upstream: Upstream,
    pub audit: AuditLog,
    pub leaves: LeafCache,
    pub limits: Limits,
    /// Permits of authenticated client connections (taken at authentication).
    pub conn_limit: Arc<Semaphore>,
    /// Permits of connections that have not authenticated yet: a flood of
    /// them exhausts only this pool, never `conn_limit`.
    pub unauth_limit: Arc<Semaphore>,
}

/// Accepts connections until `shutdown`. With `tls`, each connection first
/// completes a TLS handshake (the `listen_tls` listener of remote mode:
/// `Proxy-Authorization` never crosses the network in clear), then speaks
/// the same proxy protocol inside.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Unauthenticated connections draw from their own pool: a flood of
        // them never holds a permit an authenticated sandbox needs.
        let Ok(unauth) = shared.unauth_limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "unauthenticated connection limit reached; closing");
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let gate = Arc::new(ConnGate::new(unauth));
            match tls {
                None => serve_client(shared, stream, shutdown, gate).await,
                Some(acceptor) => {
                    let deadline = shared.limits.handshake_timeout;
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_client(shared, s, shutdown, gate).await,
                        _ => {
                            shared.audit.metrics().listener_tls_failure();
                            tracing::debug!(%peer, "tls proxy handshake failed")
                        }
                    }
                }
            }
        });
    }
}

/// A client connection's admission: unauthenticated until its first
/// request with valid proxy credentials, which takes a permit of the global
/// connection limit (kept by every tunnel the connection opens) and frees
/// the unauthenticated one.
pub(crate) struct ConnGate {
    state: std::sync::Mutex<GateState>,
}

struct GateState {
    unauth: Option<OwnedSemaphorePermit>,
    permit: Option<Arc<OwnedSemaphorePermit>>,
}

impl ConnGate {
    fn new(unauth: OwnedSemaphorePermit) -> ConnGate {
        ConnGate {
            state: std::sync::Mutex::new(GateState {
                unauth: Some(unauth),
                permit: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's permit, taken on first authentication.
    fn admit(&self, shared: &Shared) -> Result<Arc<OwnedSemaphorePermit>, Deny> {
        let mut st = self.lock();
        if let Some(p) = &st.permit {
            return Ok(p.clone());
        }
        let p = Arc::new(
            shared
                .conn_limit
                .clone()
                .try_acquire_owned()
                .map_err(|_| Deny::Overloaded("connection limit reached"))?,
        );
        st.permit = Some(p.clone());
        st.unauth = None;
        Ok(p)
    }

    fn is_authenticated(&self) -> bool {
        self.lock().permit.is_some()
    }
}

/// Resolves when the connection has not authenticated within `timeout`.
async fn unauthenticated_deadline(gate: Arc<ConnGate>, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if gate.is_authenticated() {
        std::future::pending::<()>().await;
    }
}

async fn serve_client<S>(
    shared: Arc<Shared>,
    stream: S,
    shutdown: CancellationToken,
    gate: Arc<ConnGate>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, activity) = IdleIo::new(stream);
    let s2 = shared.clone();
    let sd = shutdown.clone();
    let g2 = gate.clone();
    let svc = service_fn(move |req| outer(s2.clone(), req, sd.clone(), g2.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_read_timeout)
        .max_buf_size(shared.limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = idle(activity, shared.limits.idle_timeout) => {}
        _ = unauthenticated_deadline(gate, shared.limits.unauthenticated_timeout) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[allow(clippy::too_many_arguments)] // one flat audit record; a builder would only hide the fields
fn connect_event(
    shared: &Shared,
    grant_sandbox: &str,
    grant: Option<&Grant>,
    pinned: Option<&PinnedDest>,
    event: EventKind,
    decision: Decision,
    reason: String,
    status: u16,
) -> AuditEvent {
    AuditEvent {
        sandbox: grant_sandbox.to_string(),
        session: grant.and_then(|g| g.session.clone()),
        event,
        host: pinned
            .map(|p| redact_stubs(&shared.grants.index(), p.host()))
            .unwrap_or_default(),
        port: pinned.map_or(0, |p| p.port()),
        method: "CONNECT".into(),
        path: String::new(),
        credential: None,
        decision,
        reason,
        status: Some(status),
        traceparent: grant.and_then(|g| g.traceparent.clone()),
    }
}

async fn audit(shared: &Shared, ev: AuditEvent) {
    if let Err(e) = shared.audit.append(ev).await {
        tracing::error!(error = %e, "audit append failed");
    }
}

/// Requests on the proxy port itself.
async fn outer(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    shutdown: CancellationToken,
    gate: Arc<ConnGate>,
) -> Result<Response<ProxyBody>, Infallible> {
    if req.method() == Method::CONNECT {
        return Ok(connect(shared, req, shutdown, gate).await);
    }
    // Absolute-form plain HTTP.
    let (sandbox_hint, auth) = match authenticate(&shared.grants, req.headers()) {
        Ok((s, g)) => (s, Ok(g)),
        Err(d) => (String::new(), Err(d)),
    };
    let index = shared.grants.index();
    let path = redact_stubs(
        &index,
        &audit_path(req.uri().path_and_query().map_or("/", |p| p.as_str())),
    );
    let fail = |shared: Arc<Shared>,
                sandbox: String,
                (session, traceparent): (Option<String>, Option<Arc<TraceParent>>),
                method: String,
                host: String,
                port: u16,
                d: Deny| async move {
        let ev = AuditEvent {
            sandbox,
            session,
            event: EventKind::Block,
            host,
            port,
            method,
            path,
            credential: d.credential(),
            decision: Decision::Deny,
            reason: d.reason(),
            status: Some(d.status().as_u16()),
            traceparent,
        };
        audit(&shared, ev).await;
        Ok(d.to_response())
    };
    let host = redact_stubs(&index, req.uri().host().unwrap_or_default());
    let port = req.uri().port_u16().unwrap_or(80);
    let method = req.method().to_string();
    let grant = match auth.and_then(|g| gate.admit(&shared).map(|_| g)) {
        Ok(g) => g,
        Err(d) => return fail(shared, sandbox_hint, (None, None), method, host, port, d).await,
    };
    let (parts, body) = req.into_parts();
    let pinned = match pin_absolute(&parts) {
        Ok(p) => p,
        Err(d) => {
            return fail(
                shared,
                grant.sandbox.clone(),
                (grant.session.clone(), grant.traceparent.clone()),
                method,
                host,
                port,
                d,
            )
            .await;
        }
    };
    let target = Arc::new(Target::new(shared, grant, pinned, false));
    handle(target, Request::from_parts(parts, body)).await
}

/// Decrements a sandbox's open-tunnel count on drop.
struct TunnelSlot(Arc<Grant>);

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.0.open_tunnels.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connect(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    shutdown: CancellationToken,
    gate: Arc<ConnGate>,
) -> Response<ProxyBody> {
    let raw_target = req.uri().to_string();
    let pinned = pin_connect(req.uri());
    let (sandbox, grant) = match authenticate(&shared.grants, req.headers()) {
        Ok(x) => x,
        Err(d) => {
            let ev = connect_event(
                &shared,
                "",
                None,
                pinned.as_ref().ok(),
                EventKind::Connect,
                Decision::Deny,
                d.reason(),
                407,
            );
            audit(&shared, ev).await;
            return d.to_response();
        }
    };
    let deny = |d: Deny, pinned: Option<&PinnedDest>| {
        connect_event(
            &shared,
            &sandbox,
            Some(&*grant),
            pinned,
            EventKind::Connect,
            Decision::Deny,
            d.reason(),
            d.status().as_u16(),
        )
    };
    // Authenticated: only now does the connection take a global permit.
    let permit = match gate.admit(&shared) {
        Ok(p) => p,
        Err(d) => {
            audit(&shared, deny(d.clone(), pinned.as_ref().ok())).await;
            return d.to_response();
        }
    };
    let pinned = match pinned {
        Ok(p) => p,
        Err(d) => {
            audit(&shared, deny(d.clone(), None)).await;
            return d.to_response();
        }
    };
    // A stub in the CONNECT target itself (`<stub>.evil.test`: DNS or SNI
    // exfiltration) is never resolved nor dialled.
    if shared.grants.index().contains_any(raw_target.as_bytes()) {
        let d = Deny::Credential {
            credential: None,
            reason: "stub_in_connect_target",
        };
        audit(&shared, deny(d.clone(), Some(&pinned))).await;
        return d.to_response();
    }
    // IP literals never carry a swap, so they are decided right here:
    // only if egress allows them and the address class is allowed.
    if let Some(ip) = pinned.authority().ip() {
        // `ask` is decided per request, in the tunnel (`approvals`).
        let policy = shared
            .approvals
            .verdict(&shared.egress, &sandbox, pinned.host());
        let verdict = if policy == crate::approvals::Verdict::Deny {
            Err(Deny::Egress)
        } else {
            check_ip(&shared.net, SocketAddr::new(ip, pinned.port())).map_err(Deny::Address)
        };
        if let Err(d) = verdict {
            audit(&shared, deny(d.clone(), Some(&pinned))).await;
            return d.to_response();
        }
    }
    let open = grant.open_tunnels.fetch_add(1, Ordering::SeqCst);
    let slot = TunnelSlot(grant.clone());
    if open >= shared.limits.max_tunnels_per_sandbox {
        let d = Deny::TooManyTunnels;
        audit(&shared, deny(d.clone(), Some(&pinned))).await;
        return d.to_response();
    }
    audit(
        &shared,
        connect_event(
            &shared,
            &sandbox,
            Some(&*grant),
            Some(&pinned),
            EventKind::Connect,
            Decision::Allow,
            "tunnel_opened".into(),
            200,
        ),
    )
    .await;
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let _slot = slot;
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(_) => return,
        };
        let target = Arc::new(Target::new(shared.clone(), grant.clone(), pinned, true));
        tokio::select! {
            _ = tunnel(target, TokioIo::new(upgraded)) => {}
            _ = grant.revoked() => {}
            _ = shutdown.cancelled() => {}
        }
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// HTTP methods recognised as plain HTTP inside a tunnel.
const METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE",
];

#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    Tls,
    Http,
    Unknown,
    NeedMore,
}

fn sniff(b: &[u8]) -> Sniff {
    match b.first() {
        None => Sniff::NeedMore,
        Some(0x16) => Sniff::Tls,
        Some(c) if c.is_ascii_uppercase() => match b.iter().position(|&c| c == b' ') {
            Some(i) if METHODS.contains(&&b[..i]) => Sniff::Http,
            Some(_) => Sniff::Unknown,
            None if b.len() >= 8 => Sniff::Unknown,
            None if b.iter().all(|c| c.is_ascii_uppercase()) => Sniff::NeedMore,
            None => Sniff::Unknown,
        },
        Some(_) => Sniff::Unknown,
    }
}

/// Runs one CONNECT tunnel: TLS → terminate and serve; HTTP → serve as
/// plain HTTP to the pinned host; anything else → close (never passed raw).
async fn tunnel<T>(t: Arc<Target>, mut io: T)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = t.shared.clone();
    let limits = shared.limits.clone();
    let mut buf = BytesMut::with_capacity(16);
    let kind = tokio::time::timeout(limits.handshake_timeout, async {
        loop {
            match sniff(&buf) {
                Sniff::NeedMore => {}
                k => return k,
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Sniff::NeedMore,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(Sniff::NeedMore);
    let block = |reason: &str, status: u16| {
        connect_event(
            &shared,
            &t.grant.sandbox,
            Some(&*t.grant),
            Some(&t.pinned),
            EventKind::Block,
            Decision::Deny,
            reason.to_string(),
            status,
        )
    };
    let (io, activity) = IdleIo::new(Prefixed {
        prefix: buf.freeze(),
        inner: io,
    });
    match kind {
        Sniff::NeedMore => {}
        Sniff::Unknown => {
            audit(
                &shared,
                block("unknown_protocol: tunnel is neither TLS nor HTTP", 403),
            )
            .await;
        }
        Sniff::Http => {
            let plain = Arc::new(Target::new(
                shared.clone(),
                t.grant.clone(),
                PinnedDest::new(t.pinned.authority().clone(), Scheme::Http),
                true,
            ));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .serve_connection(
                    TokioIo::new(io),
                    service_fn(move |req| handle(plain.clone(), req)),
                );
            tokio::select! {
                _ = conn => {}
                _ = idle(activity, limits.idle_timeout) => {}
            }
        }
        Sniff::Tls => {
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
            let hs = async {
                let start = acceptor.await.map_err(|_| "tls_error: bad client hello")?;
                let sni = start.client_hello().server_name().map(str::to_string);
                pin_sni(&t.pinned, sni.as_deref())
                    .map_err(|_| "destination_mismatch: sni differs from CONNECT host")?;
                let cfg = shared
                    .leaves
                    .server_config(t.pinned.host())
                    .await
                    .map_err(|_| "tls_error: no leaf certificate")?;
                start
                    .into_stream(cfg)
                    .await
                    .map_err(|_| "tls_error: handshake failed")
            };
            let tls = match tokio::time::timeout(limits.handshake_timeout, hs).await {
                Ok(Ok(s)) => s,
                Ok(Err(reason)) => {
                    audit(&shared, block(reason, 403)).await;
                    return;
                }
                Err(_) => return,
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let t2 = t.clone();
            let svc = service_fn(move |req| handle(t2.clone(), req));
            if h2 {
                let conn = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(128)
                    .max_header_list_size(limits.max_header_bytes as u32)
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .serve_connection(TokioIo::new(tls), svc);
                // Idle by requests, not frames: PINGs (either side's) and
                // WINDOW_UPDATEs move bytes but do not keep the tunnel open.
                drop(activity);
                tokio::select! {
                    _ = conn => {}
                    _ = t.clock.idle(limits.idle_timeout) => {}
                }
            } else {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_buf_size(limits.max_header_bytes.max(8192))
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades();
                tokio::select! {
                    _ = conn => {}
                    _ = idle(activity, limits.idle_timeout) => {}
                }
            }
        }
    }
}

/// Replays bytes already read (the sniffed prefix) before the stream.
struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Milliseconds since a process-wide start instant.
pub(crate) fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// An IO wrapper recording the time of the last successful read or write.
struct IdleIo<T> {
    inner: T,
    last: Arc<AtomicU64>,
}

impl<T> IdleIo<T> {
    fn new(inner: T) -> (IdleIo<T>, Arc<AtomicU64>) {
        let last = Arc::new(AtomicU64::new(now_ms()));
        (
            IdleIo {
                inner,
                last: last.clone(),
            },
            last,
        )
    }
    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Resolves once no IO happened for `timeout`.
async fn idle(last: Arc<AtomicU64>, timeout: Duration) {
    let limit = timeout.as_millis() as u64;
    loop {
        let since = now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if since >= limit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(limit - since)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_table() {
        let check = |b: &[u8], want: Sniff| assert_eq!(sniff(b), want, "{b:?}");
        check(b"", Sniff::NeedMore);
        check(&[0x16], Sniff::Tls);
        check(&[0x16, 0x03, 0x01], Sniff::Tls);
        check(b"G", Sniff::NeedMore);
        check(b"GET", Sniff::NeedMore);
        check(b"GET /", Sniff::Http);
        check(b"POST /x", Sniff::Http);
        check(b"PATCH /", Sniff::Http);
        check(b"SSH-2.0-OpenSSH", Sniff::Unknown);
        check(b"CONNECT x:1", Sniff::Unknown);
        check(b"HELO x", Sniff::Unknown);
        check(b"ABCDEFGHIJ", Sniff::Unknown);
        check(b"\x00\x01", Sniff::Unknown);
        check(b"get /", Sniff::Unknown);
        check(b"PRI * HTTP/2.0", Sniff::Unknown);
    }
}
