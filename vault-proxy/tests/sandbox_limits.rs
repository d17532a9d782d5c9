//! Attack tests for the per-sandbox limits inside tunnels (DESIGN.md rule 1: "one sandbox at
//! its limits never delays another sandbox's requests"): requests in flight, buffered request
//! body bytes, and HTTP/2 PINGs that must not keep an idle tunnel open. Each drives the real
//! in-process proxy with raw sockets (so a request can be left hanging on purpose) and reqwest.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CONNECT tunnel to `allowed.test` as `sandbox`, with TLS (HTTP/1.1) inside it.
async fn tunnel(p: &Proxy, up: &Upstream, sandbox: &str, token: &str) -> TlsStream<TcpStream> {
    let target = format!("allowed.test:{}", up.port);
    let (s, head) = raw_connect(p.addr, &target, Some(&basic(sandbox, token))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tls_over(s, "allowed.test", &p.ca_pem, &[b"http/1.1"])
        .await
        .unwrap()
}

/// Starts a POST announcing `len` body bytes and sends only a few: the proxy waits for the
/// rest, so the request stays in flight (and its buffer reserved) until the stream is dropped.
async fn hanging_post(tls: &mut TlsStream<TcpStream>, port: u16, len: usize) {
    let head = format!(
        "POST /hang HTTP/1.1\r\nHost: allowed.test:{port}\r\nContent-Type: text/plain\r\n\
         Content-Length: {len}\r\n\r\nfirst bytes"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
}

/// Sends one more request on a tunnel and returns its response head.
async fn response_head(tls: &mut TlsStream<TcpStream>) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn status_and_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    (status, v["error"]["code"].as_str().unwrap_or("").into())
}

/// A sandbox with `max_requests_per_sandbox` requests hanging (each on its own tunnel) gets
/// 429 `too_many_requests` for one more, audited; another sandbox is served at once; a hanging
/// request that ends frees its slot. Nothing of the refused request reaches the upstream.
#[tokio::test]
async fn requests_in_flight_are_bounded_per_sandbox() {
    let up = start_upstream().await;
    let p = start_proxy(
        &up,
        ProxyOpts {
            limits: vault_proxy::Limits {
                max_requests_per_sandbox: 4,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let (ta, _) = p.grant("sb-a", &[]);
    let (tb, _) = p.grant("sb-b", &[]);
    let mut hanging = Vec::new();
    for _ in 0..4 {
        let mut t = tunnel(&p, &up, "sb-a", &ta).await;
        hanging_post(&mut t, up.port, 1000).await;
        hanging.push(t);
    }
    // Let the proxy take them in (each is counted when its head is parsed).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let a = p.client("sb-a", &ta);
    let url = format!("https://allowed.test:{}/one-more", up.port);
    let (status, code) = status_and_code(a.get(&url).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (429, "too_many_requests"));
    assert!(
        up.seen().iter().all(|s| !s.uri.contains("/one-more")),
        "the refused request reached the upstream"
    );

    // sb-b is not held up by sb-a's hanging requests.
    let b = p.client("sb-b", &tb);
    let start = Instant::now();
    for i in 0..5 {
        let r = b
            .get(format!("https://allowed.test:{}/b{i}", up.port))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // One hanging request goes away: sb-a has room again.
    drop(hanging.pop());
    let mut ok = false;
    for _ in 0..50 {
        if a.get(&url).send().await.unwrap().status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a finished request must free its slot");

    let (text, recs) = p.audit().await;
    assert!(
        recs.iter().any(|r| r.sandbox == "sb-a"
            && r.status == Some(429)
            && r.reason.contains("too_many_requests")),
        "the 429 is audited: {text}"
    );
    drop(hanging);
    p.shutdown().await;
}

/// Request body bytes a sandbox may hold in the proxy's buffers are bounded: once its hanging
/// uploads reserve `max_buffered_per_sandbox`, its next body gets 429 (before any byte of it is
/// read or sent), while a body-less request of the same sandbox and a large upload of another
/// sandbox go through.
#[tokio::test]
async fn buffered_request_bytes_are_bounded_per_sandbox() {
    const MIB: usize = 1024 * 1024;
    let up = start_upstream().await;
    let p = start_proxy(
        &up,
        ProxyOpts {
            limits: vault_proxy::Limits {
                max_buffered_per_sandbox: 3 * MIB,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let (ta, _) = p.grant("sb-a", &[]);
    let (tb, _) = p.grant("sb-b", &[]);
    // Two uploads announcing 1.5 MiB each, stalled: 3 MiB reserved.
    let mut hanging = Vec::new();
    for _ in 0..2 {
        let mut t = tunnel(&p, &up, "sb-a", &ta).await;
        hanging_post(&mut t, up.port, 3 * MIB / 2).await;
        hanging.push(t);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A third one is refused at once, on its own tunnel.
    let mut third = tunnel(&p, &up, "sb-a", &ta).await;
    hanging_post(&mut third, up.port, 3 * MIB / 2).await;
    let head = response_head(&mut third).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    // So is a small body: the budget is spent.
    let a = p.client("sb-a", &ta);
    let url = format!("https://allowed.test:{}/small", up.port);
    let (status, code) = status_and_code(a.post(&url).body("x").send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (429, "too_many_requests"));
    assert!(
        up.seen()
            .iter()
            .all(|s| !s.uri.contains("/small") && !s.uri.contains("/hang"))
    );
    // A request without a body buffers nothing.
    assert_eq!(a.get(&url).send().await.unwrap().status(), 200);

    // Another sandbox uploads 2 MiB meanwhile.
    let b = p.client("sb-b", &tb);
    let r = b
        .post(format!("https://allowed.test:{}/upload", up.port))
        .body(vec![b'z'; 2 * MIB])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The stalled uploads give their bytes back when they go away.
    drop(hanging);
    let mut ok = false;
    for _ in 0..50 {
        if a.post(&url).body("x").send().await.unwrap().status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "released buffers must be usable again");
    let (text, recs) = p.audit().await;
    assert!(
        recs.iter().any(|r| r.sandbox == "sb-a"
            && r.status == Some(429)
            && r.reason.contains("buffered request bytes")),
        "the 429 is audited: {text}"
    );
    p.shutdown().await;
}

/// HTTP/2 streams draw on the same per-sandbox budget as HTTP/1 requests: one tunnel
/// multiplexing `max_requests_per_sandbox` hanging uploads gets 429 `too_many_requests` for
/// one more stream (nothing of it sent), another sandbox is served at once, and a stream that
/// ends frees its slot.
#[tokio::test]
async fn http2_streams_are_bounded_per_sandbox() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    type Chunk = Result<Frame<Bytes>, std::convert::Infallible>;
    /// A request body that yields what is sent on the channel and ends when it is dropped.
    fn held_body() -> (
        tokio::sync::mpsc::Sender<Chunk>,
        http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(1);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        (tx, StreamBody::new(stream).boxed())
    }

    let up = start_upstream().await;
    let p = start_proxy(
        &up,
        ProxyOpts {
            limits: vault_proxy::Limits {
                max_requests_per_sandbox: 4,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let (ta, _) = p.grant("sb-a", &[]);
    let (tb, _) = p.grant("sb-b", &[]);
    let target = format!("allowed.test:{}", up.port);
    let (s, head) = raw_connect(p.addr, &target, Some(&basic("sb-a", &ta))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let tls = tls_over(s, "allowed.test", &p.ca_pem, &[b"h2"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let url = |path: &str| format!("https://{target}{path}");

    // Four streams on the one connection, each an upload that sends a few bytes and waits.
    let mut bodies = Vec::new();
    let mut streams = Vec::new();
    for i in 0..4 {
        let (tx, rx) = held_body();
        tx.try_send(Ok(Frame::data(Bytes::from_static(b"first bytes"))))
            .unwrap();
        bodies.push(tx);
        let req = hyper::Request::post(url(&format!("/hang{i}")))
            .body(rx)
            .unwrap();
        let mut s = send.clone();
        streams.push(tokio::spawn(async move {
            s.ready().await?;
            s.send_request(req).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A fifth stream on the same connection: over the sandbox's budget.
    let (tx5, rx5) = held_body();
    drop(tx5);
    let mut s5 = send.clone();
    s5.ready().await.unwrap();
    let resp = s5
        .send_request(hyper::Request::get(url("/one-more")).body(rx5).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("too_many_requests"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        up.seen().iter().all(|s| !s.uri.contains("/one-more")),
        "the refused stream reached the upstream"
    );

    // sb-b is not held up by sb-a's streams.
    let b = p.client("sb-b", &tb);
    let start = Instant::now();
    for i in 0..5 {
        let r = b
            .get(format!("https://allowed.test:{}/b{i}", up.port))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // One upload ends: its stream completes and sb-a has room again on the same connection.
    drop(bodies.pop());
    let done = tokio::time::timeout(Duration::from_secs(10), streams.pop().unwrap())
        .await
        .expect("the finished upload was answered")
        .unwrap()
        .unwrap();
    assert_eq!(done.status(), 200);
    let _ = done.into_body().collect().await;
    let mut ok = false;
    for _ in 0..50 {
        let (tx, rx) = held_body();
        drop(tx);
        let mut s = send.clone();
        s.ready().await.unwrap();
        let r = s
            .send_request(hyper::Request::get(url("/again")).body(rx).unwrap())
            .await
            .unwrap();
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a finished stream must free its slot");
    drop(bodies);
    p.shutdown().await;
}

/// An HTTP/2 tunnel whose client sends nothing but PINGs is idle: the proxy answers the PINGs
/// (their ACKs arrive) yet closes the tunnel after `idle_timeout`, as it would a silent one.
#[tokio::test]
async fn http2_pings_do_not_keep_an_idle_tunnel_open() {
    let up = start_upstream().await;
    let idle = Duration::from_millis(800);
    let p = start_proxy(
        &up,
        ProxyOpts {
            limits: vault_proxy::Limits {
                idle_timeout: idle,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let (ta, _) = p.grant("sb-a", &[]);
    let target = format!("allowed.test:{}", up.port);
    let (s, head) = raw_connect(p.addr, &target, Some(&basic("sb-a", &ta))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let tls = tls_over(s, "allowed.test", &p.ca_pem, &[b"h2"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut rd, mut wr) = tokio::io::split(tls);

    // RFC 9113 §3.4 preface, an empty SETTINGS, then a PING every 100 ms (§6.7: type 6,
    // stream 0, 8 opaque bytes).
    let frame = |ty: u8, flags: u8, payload: &[u8]| {
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&[ty, flags, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    };
    wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    wr.write_all(&frame(4, 0, &[])).await.unwrap();
    let pinger = tokio::spawn(async move {
        for i in 0u64.. {
            if wr.write_all(&frame(6, 0, &i.to_be_bytes())).await.is_err() {
                return i;
            }
            let _ = wr.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        unreachable!()
    });

    // Read frames until the proxy closes the connection (EOF, error or GOAWAY).
    let start = Instant::now();
    let mut acks = 0usize;
    let outcome = tokio::time::timeout(idle * 10, async {
        loop {
            let mut h = [0u8; 9];
            if rd.read_exact(&mut h).await.is_err() {
                return "closed";
            }
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                return "closed";
            }
            match (h[3], h[4] & 1) {
                (6, 1) => acks += 1,
                (7, _) => return "goaway",
                _ => {}
            }
        }
    })
    .await;
    let elapsed = start.elapsed();
    assert!(
        outcome.is_ok(),
        "a tunnel kept busy with PINGs only stayed open for {elapsed:?} (idle timeout {idle:?})"
    );
    assert!(
        acks >= 3,
        "the proxy answered only {acks} PINGs: the test did not exercise PINGs"
    );
    assert!(
        elapsed >= idle / 2,
        "closed too early ({elapsed:?}): not the idle timer"
    );
    pinger.abort();
    p.shutdown().await;
}
