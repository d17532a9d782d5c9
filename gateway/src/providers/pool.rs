//! Keep-alive connections to plain-`http://` upstreams, one pool per thread, on hyper's
//! connection API.
//!
//! Why not hyper_util's pooling client for these: per request it hashed the pool key
//! (`(Scheme, Authority)`, SipHash) three times, took the pool's mutex, ran its `Checkout`
//! future, spawned a task to wait until the connection was ready again and put it back under
//! the mutex: ~10k instructions of the gateway's ~95k a `/v1/messages` request in those
//! functions, ~2.9k of them hashing (callgrind, bench/gateway/callgrind.sh). Here a request
//! pops the last idle connection of its origin from a thread-local list (one foldhash of the
//! authority) and puts it back when its response body has been read to the end: 94.8k → 86.8k
//! instructions a `/v1/messages` request, 95.6k → 88.9k a chat one.
//!
//! What stays the same as before: HTTP/1.1 keep-alive (over plain http hyper_util spoke
//! HTTP/1.1 too), TCP_NODELAY, a 10 s connect timeout, idle connections dropped after 90 s,
//! at most 1024 idle per origin and thread, and a request that a reused connection closed
//! before it was sent is sent once more on a new connection (hyper_util's
//! `retry_canceled_requests`). A request that may have reached the upstream is never sent
//! twice. `https://` upstreams keep hyper_util's client (`super::RawClient`): TLS with ALPN
//! may give HTTP/2, whose one connection is shared by many requests.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

type Sender = SendRequest<Full<Bytes>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_IDLE_PER_ORIGIN: usize = 1024;

struct Idle {
    tx: Sender,
    since: Instant,
}

thread_local! {
    /// Idle connections by origin (`host:port`, see [`send`]), most recently used last.
    static IDLE: RefCell<crate::FastMap<Box<str>, Vec<Idle>>> = RefCell::default();
}

/// A response body that hands its connection back to this thread's pool once it has been
/// read to the end. Dropped before that (a stream the client left), the connection is
/// dropped with it and hyper closes it: its remaining bytes are never read.
pub(crate) struct Body {
    inner: Incoming,
    lease: Option<Lease>,
}

struct Lease {
    origin: Box<str>,
    tx: Sender,
}

impl Body {
    /// A body whose connection is not this pool's (hyper_util's client).
    pub(crate) fn unpooled(inner: Incoming) -> Self {
        Self { inner, lease: None }
    }

    fn release(&mut self) {
        if let Some(l) = self.lease.take() {
            put_back(l);
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            // An error: the connection is not reusable; dropping the lease closes it.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn put_back(l: Lease) {
    if l.tx.is_closed() {
        return;
    }
    let now = Instant::now();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(l.origin).or_default();
        // One look at the oldest per release: under traffic the list is pruned as it is
        // used; without traffic nothing is kept long enough to matter (the upstream's own
        // keep-alive timeout closes the sockets, and a closed one is skipped).
        if list
            .first()
            .is_some_and(|o| now.duration_since(o.since) > IDLE_TIMEOUT || o.tx.is_closed())
        {
            list.remove(0);
        }
        if list.len() < MAX_IDLE_PER_ORIGIN {
            list.push(Idle {
                tx: l.tx,
                since: now,
            });
        }
    });
}

/// The most recently used idle connection to `origin` that can take a request now.
/// Connections whose previous exchange is still winding down stay in the list.
fn checkout(origin: &str) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(origin)?;
        let mut busy = 0;
        let mut found = None;
        let now = Instant::now();
        while let Some(i) = list.len().checked_sub(1 + busy) {
            let c = &list[i];
            if c.tx.is_closed() || now.duration_since(c.since) > IDLE_TIMEOUT {
                list.remove(i);
            } else if c.tx.is_ready() {
                found = Some(list.remove(i).tx);
                break;
            } else {
                busy += 1;
            }
        }
        found
    })
}

async fn connect(origin: &str) -> Result<Sender, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(origin))
        .await
        .map_err(|_| format!("connecting to {origin} timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connecting to {origin}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake with {origin}: {e}"))?;
    tokio::spawn(async move {
        // Its errors reach the request that is using it, as the response's error.
        let _ = conn.await;
    });
    Ok(tx)
}

/// Sends `req` (its URI absolute, `http://`) over a pooled HTTP/1.1 connection. The URI is
/// sent in origin form (the path), with the `Host` header the caller set or, failing that,
/// one made from the URI.
pub(crate) async fn send(
    mut req: http::Request<Full<Bytes>>,
) -> Result<http::Response<Body>, String> {
    let uri = std::mem::take(req.uri_mut());
    let Some(authority) = uri.authority() else {
        return Err(format!("`{uri}` names no host"));
    };
    // `host:port` to connect to and to pool by (never the URI's user-info, if it has one).
    let host = authority.host();
    let mut origin = String::with_capacity(host.len() + 6);
    origin.push_str(host);
    origin.push(':');
    origin.push_str(itoa::Buffer::new().format(authority.port_u16().unwrap_or(80)));
    let origin = origin.into_boxed_str();
    super::set_host_header(req.headers_mut(), &uri);
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = http::Uri::from(path);

    let (mut tx, mut reused) = match checkout(&origin) {
        Some(tx) => (tx, true),
        None => (connect(&origin).await?, false),
    };
    loop {
        match tx.try_send_request(req).await {
            Ok(resp) => {
                let lease = Some(Lease { origin, tx });
                return Ok(resp.map(|inner| Body { inner, lease }));
            }
            Err(mut e) => match e.take_message() {
                // Not sent: the reused connection was closing. Once more on a new one.
                Some(unsent) if reused => {
                    req = unsent;
                    tx = connect(&origin).await?;
                    reused = false;
                }
                _ => return Err(e.into_error().to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A raw HTTP/1.1 server: answers each request on a connection with `body` (keep-alive),
    /// closing the connection after `per_conn` answers; counts connections accepted.
    async fn server(
        per_conn: usize,
    ) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, h) = (conns.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for n in 1..=per_conn {
                        // Read one request head and its Content-Length body.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            let n = s.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 4096];
                            let n = s.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        buf.drain(..head_end + len);
                        h.lock().unwrap().push(head);
                        let close = if n == per_conn {
                            "connection: close\r\n"
                        } else {
                            ""
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{close}content-type: text/plain\r\n\r\nok"
                        );
                        let _ = s.write_all(answer.as_bytes()).await;
                    }
                    // Close after `per_conn` answers (an upstream's keep-alive limit).
                });
            }
        });
        (addr, conns, heads)
    }

    fn post(addr: &str) -> http::Request<Full<Bytes>> {
        let mut req = http::Request::new(Full::new(Bytes::from_static(b"{}")));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = format!("http://{addr}/v1/chat/completions?x=1")
            .parse()
            .unwrap();
        req
    }

    async fn body(resp: http::Response<Body>) -> Bytes {
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reuses_one_connection_and_sends_origin_form_with_host() {
        let (addr, conns, heads) = server(usize::MAX).await;
        for _ in 0..20 {
            let resp = send(post(&addr)).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(body(resp).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one keep-alive connection");
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 20);
        assert!(
            heads[0].starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0]
                .to_ascii_lowercase()
                .contains(&format!("\r\nhost: {addr}\r\n")),
            "{}",
            heads[0]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn user_info_in_the_uri_is_neither_dialled_nor_sent() {
        let (addr, conns, heads) = server(usize::MAX).await;
        let mut req = post(&addr);
        *req.uri_mut() = format!("http://user:pw@{addr}/v1/x").parse().unwrap();
        let resp = send(req).await.unwrap();
        assert_eq!(body(resp).await, "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        let head = heads.lock().unwrap()[0].to_ascii_lowercase();
        assert!(head.starts_with("post /v1/x http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
        assert!(!head.contains("user") && !head.contains("pw@"), "{head}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_body_left_unread_does_not_return_its_connection() {
        let (addr, conns, _) = server(usize::MAX).await;
        let resp = send(post(&addr)).await.unwrap();
        drop(resp); // body never read
        let resp = send(post(&addr)).await.unwrap();
        assert_eq!(body(resp).await, "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_requests_open_connections_and_reuse_them_after() {
        let (addr, conns, _) = server(usize::MAX).await;
        for _ in 0..3 {
            let all = futures_util::future::join_all(
                (0..5).map(|_| async { body(send(post(&addr)).await.unwrap()).await }),
            )
            .await;
            assert!(all.iter().all(|b| b == "ok"));
        }
        assert_eq!(conns.load(Ordering::SeqCst), 5, "five at once, then reused");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_upstream_closed_is_replaced() {
        // The upstream closes each connection after one answer (`connection: close`, as one
        // with a keep-alive limit does): every request still succeeds, on a new connection.
        let (addr, conns, _) = server(1).await;
        for _ in 0..5 {
            let resp = send(post(&addr)).await.unwrap();
            assert_eq!(body(resp).await, "ok");
            tokio::task::yield_now().await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_upstream_is_an_error_not_a_hang() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let Err(e) = send(post(&addr)).await else {
            panic!("a response from a closed port")
        };
        assert!(e.contains("connecting to"), "{e}");
    }
}
