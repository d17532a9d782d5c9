//! Attack tests for rule 4's positions, paths and methods and rule 5's
//! encodings, through a real proxy and a local HTTPS echo upstream.

mod common;

use base64::Engine;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// Extra credentials on the same upstream: TG (path only, two path scopes),
/// SCOPED (Authorization, /repos/acme/** and GET only), NOPORT (bound without
/// a port, so 443 only).
fn extra(port: u16) -> String {
    format!(
        "  TG:\n    value_file: other.secret\n    allowed_hosts: [\"allowed.test:{port}\"]\n    positions: [path]\n    paths: [\"/*/sendMessage\", \"/*/getMe\"]\n\
         \x20 SCOPED:\n    value_file: other.secret\n    allowed_hosts: [\"allowed.test:{port}\"]\n    paths: [\"/repos/acme/**\"]\n    methods: [GET]\n\
         \x20 NOPORT:\n    value_file: other.secret\n    allowed_hosts: [allowed.test]\n"
    )
}

async fn setup() -> (Upstream, Proxy) {
    let up = start_upstream().await;
    let p = start_proxy(
        &up,
        ProxyOpts {
            extra_yaml: extra(up.port),
            ..Default::default()
        },
    )
    .await;
    (up, p)
}

/// One raw HTTP/1.1 request over TLS through the proxy; the whole response text.
async fn raw(p: &Proxy, sandbox: &str, token: &str, host: &str, port: u16, req: &str) -> String {
    let (s, head) = raw_connect(
        p.addr,
        &format!("{host}:{port}"),
        Some(&basic(sandbox, token)),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut tls = tls_over(s, host, &p.ca_pem, &[b"http/1.1"]).await.unwrap();
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// The reflection attacks of issue 10: the right Authorization header plus the
/// stub somewhere the API would store or echo it. Refused, nothing sent.
#[tokio::test]
async fn reflection_through_a_bound_api_is_refused() {
    let (up, p) = setup().await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = &stubs["GITHUB_TOKEN"];
    let c = p.client("sb-a", &token);
    let base = format!("https://api.github.test:{}", up.port);
    let bearer = format!("Bearer {stub}");

    // Slack: chat.postMessage?channel=C1&text=<STUB> with Bearer <STUB>.
    let r = c
        .post(format!(
            "{base}/api/chat.postMessage?channel=C1&text={stub}"
        ))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (403, "credential_position_not_allowed".into())
    );
    // X-Note: <STUB> beside the Authorization header.
    let r = c
        .get(format!("{base}/user"))
        .header("authorization", &bearer)
        .header("x-note", stub.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (403, "credential_position_not_allowed".into())
    );
    // The stub inside a larger Authorization value.
    let r = c
        .get(format!("{base}/user"))
        .header("authorization", format!("Bearer x{stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (403, "credential_position_not_allowed".into())
    );
    // In the body of a JSON request (no body position).
    let r = c
        .post(format!("{base}/gists"))
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(format!(r#"{{"files":{{"a.txt":{{"content":"{stub}"}}}}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (403, "credential_position_not_allowed".into())
    );
    // TRACE echoes the request back.
    let r = c
        .request(reqwest::Method::TRACE, format!("{base}/"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (403, "credential_path_not_allowed".into()));
    // The stub as the HTTP method.
    let resp = raw(
        &p,
        "sb-a",
        &token,
        "api.github.test",
        up.port,
        &format!(
            "{stub} / HTTP/1.1\r\nHost: api.github.test:{}\r\nConnection: close\r\n\r\n",
            up.port
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("credential_position_not_allowed"), "{resp}");

    assert!(
        up.seen().is_empty(),
        "nothing reached the upstream: {:?}",
        up.seen()
    );
    let (text, recs) = p.audit().await;
    assert!(!text.contains(stub.as_str()) && !text.contains(GH_REAL));
    let blocks = recs
        .iter()
        .filter(|r| r.event == vault_proxy::audit::EventKind::Block)
        .count();
    assert_eq!(blocks, 6, "each refusal audited");

    // The legitimate request still works.
    let r = c
        .get(format!("{base}/user"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.seen()[0].header("authorization").unwrap(),
        format!("Bearer {GH_REAL}")
    );
    p.shutdown().await;
}

/// Telegram's shape: the token is a path segment (allowed), the message text a
/// query parameter (not allowed).
#[tokio::test]
async fn path_position_allowed_query_refused() {
    let (up, p) = setup().await;
    let (token, stubs) = p.grant("sb-t", &["TG"]);
    let stub = &stubs["TG"];
    let c = p.client("sb-t", &token);
    let base = format!("https://allowed.test:{}", up.port);
    let r = c
        .get(format!("{base}/{stub}/sendMessage?chat_id=1&text={stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (403, "credential_position_not_allowed".into())
    );
    let r = c
        .get(format!("{base}/bot{stub}/getMe"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (403, "credential_position_not_allowed".into())
    );
    let r = c
        .get(format!("{base}/{stub}/deleteWebhook"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (403, "credential_path_not_allowed".into()));
    assert!(up.seen().is_empty());
    let r = c
        .get(format!("{base}/{stub}/sendMessage?chat_id=1&text=hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].uri.contains(&format!("/{OTHER_REAL}/sendMessage?")),
        "{}",
        seen[0].uri
    );
    p.shutdown().await;
}

/// Path scopes hold against dot-segments and encoded separators; methods too.
#[tokio::test]
async fn path_scope_cannot_be_escaped() {
    let (up, p) = setup().await;
    let (token, stubs) = p.grant("sb-s", &["SCOPED"]);
    let stub = &stubs["SCOPED"];
    let host = "allowed.test";
    for path in [
        "/repos/acme/../other/issues",
        "/repos/acme/%2e%2e/other/issues",
        "/repos/acme/%2E%2e/other",
        "/repos/acme%2f..%2fother",
        "/repos/acme/..%2fother",
        "/repos/acme/..;/other",
        "/repos/other",
    ] {
        let resp = raw(
            &p,
            "sb-s",
            &token,
            host,
            up.port,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{}\r\nAuthorization: Bearer {stub}\r\nConnection: close\r\n\r\n",
                up.port
            ),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 403"), "{path}: {resp}");
        assert!(
            resp.contains("credential_path_not_allowed"),
            "{path}: {resp}"
        );
    }
    let c = p.client("sb-s", &token);
    let r = c
        .delete(format!("https://{host}:{}/repos/acme/x", up.port))
        .header("authorization", format!("Bearer {stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (403, "credential_path_not_allowed".into()));
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let r = c
        .get(format!("https://{host}:{}/repos/acme/x/issues", up.port))
        .header("authorization", format!("Bearer {stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().len(), 1);
    p.shutdown().await;
}

/// Body positions: the right form field / JSON pointer is swapped (also when
/// the stub is split across chunks); any other field is refused.
#[tokio::test]
async fn form_and_json_positions() {
    let (up, p) = setup().await;
    let (token, stubs) = p.grant("sb-b", &["OTHER"]);
    let stub = stubs["OTHER"].clone();
    let c = p.client("sb-b", &token);
    let url = format!("https://other.github.test:{}/echo", up.port);
    let form = "application/x-www-form-urlencoded";
    let r = c
        .post(&url)
        .header("content-type", form)
        .body(format!("a=1&token={stub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.text().await.unwrap().contains(OTHER_REAL));
    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body(format!(r#"{{"auth":{{"token":"{stub}"}}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Split across body chunks (streamed, unknown length).
    let body = format!("token={stub}&z=1");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.as_bytes().chunks(3).map(|c| Ok(c.to_vec())).collect();
    let r = c
        .post(&url)
        .header("content-type", form)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        String::from_utf8_lossy(&seen[0].body),
        format!("a=1&token={OTHER_REAL}")
    );
    assert_eq!(
        String::from_utf8_lossy(&seen[1].body),
        format!(r#"{{"auth":{{"token":"{OTHER_REAL}"}}}}"#)
    );
    assert_eq!(
        String::from_utf8_lossy(&seen[2].body),
        format!("token={OTHER_REAL}&z=1")
    );
    up.clear();
    for (ct, body) in [
        (form, format!("token={stub}&text={stub}")),
        (form, format!("text={stub}")),
        (
            "application/json",
            format!(r#"{{"auth":{{"token":"{stub}"}},"text":"{stub}"}}"#),
        ),
        ("application/json", format!(r#"{{"token":"{stub}"}}"#)),
        ("text/plain", format!("token={stub}")),
    ] {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.as_bytes().chunks(5).map(|c| Ok(c.to_vec())).collect();
        let r = c
            .post(&url)
            .header("content-type", ct)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(
            code(r).await,
            (403, "credential_position_not_allowed".into()),
            "{body}"
        );
    }
    assert!(up.seen().is_empty());
    p.shutdown().await;
}

/// A binding without a port means 443: the same host on another port is unbound.
#[tokio::test]
async fn port_is_part_of_the_binding() {
    let (up, p) = setup().await;
    let (token, stubs) = p.grant("sb-p", &["NOPORT"]);
    let c = p.client("sb-p", &token);
    let r = c
        .get(format!("https://allowed.test:{}/x", up.port))
        .header("authorization", format!("Bearer {}", stubs["NOPORT"]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (403, "credential_not_allowed_for_host".into())
    );
    assert!(up.seen().is_empty());
    p.shutdown().await;
}

/// The real value echoed inside Basic credentials with users of each length
/// modulo 3 (three base64 alignments) never reaches the sandbox.
#[tokio::test]
async fn echoed_basic_credentials_are_scrubbed_at_every_alignment() {
    let (up, p) = setup().await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = &stubs["GITHUB_TOKEN"];
    let c = p.client("sb-a", &token);
    for user in ["git", "oauth2", "x-access-token", "ab", "a"] {
        for path in ["/echo", "/gzip", "/chunked", "/echo-header"] {
            let r = c
                .get(format!("https://api.github.test:{}{path}", up.port))
                .header("authorization", basic(user, stub))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let headers = format!("{:?}", r.headers());
            let body = r.text().await.unwrap();
            let leaked = b64(&format!("{user}:{GH_REAL}"));
            for hay in [&headers, &body] {
                assert!(!hay.contains(GH_REAL), "{user} {path}");
                // The stable middle of the encoding (the value's own bits).
                let mid = &leaked[leaked.len() / 2 - 8..leaked.len() / 2 + 8];
                assert!(!hay.contains(mid), "{user} {path}: {hay}");
            }
        }
    }
    assert!(
        up.seen()
            .iter()
            .all(|s| s.header("authorization").unwrap().starts_with("Basic "))
    );
    assert!(up.seen().iter().all(|s| {
        let a = s.header("authorization").unwrap();
        let d = base64::engine::general_purpose::STANDARD
            .decode(a.trim_start_matches("Basic "))
            .unwrap();
        String::from_utf8(d).unwrap().ends_with(GH_REAL)
    }));
    p.shutdown().await;
}

/// A raw HTTP/1.1 upstream (plain TCP) answering every request with `resp`.
async fn raw_upstream(resp: Vec<u8>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let resp = resp.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(&resp).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Rule 5 on the wire: the real value in the reason phrase, in a body sent
/// with `Transfer-Encoding: gzip, chunked` (split across chunks) and in a
/// chunked trailer reaches the sandbox as the stub; an unknown transfer
/// coding is refused.
#[tokio::test]
async fn status_line_transfer_codings_and_trailers_are_scrubbed() {
    use std::io::Write;
    let up = start_upstream().await;
    let p = start_proxy(&up, ProxyOpts::default()).await;
    let (token, stubs) = p.grant("sb-a", &["GITHUB_TOKEN"]);
    let stub = &stubs["GITHUB_TOKEN"];
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(format!("echo {GH_REAL} and {}", b64(&format!("git:{GH_REAL}"))).as_bytes())
        .unwrap();
    let gz = gz.finish().unwrap();
    let mut resp = format!(
        "HTTP/1.1 200 Hello {GH_REAL}\r\nTransfer-Encoding: gzip, chunked\r\nTrailer: x-t\r\n\r\n"
    )
    .into_bytes();
    for c in gz.chunks(7) {
        resp.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        resp.extend_from_slice(c);
        resp.extend_from_slice(b"\r\n");
    }
    resp.extend_from_slice(format!("0\r\nx-t: {GH_REAL}\r\n\r\n").as_bytes());
    let port = raw_upstream(resp).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        format!(
            "GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nProxy-Authorization: {}\r\nTE: trailers\r\nConnection: close\r\n\r\n",
            basic("sb-a", &token)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with(&format!("HTTP/1.1 200 Hello {stub}\r\n")),
        "{text}"
    );
    assert!(!text.contains(GH_REAL), "{text}");
    let body = dechunk(&text);
    assert!(
        body.starts_with(&format!("echo {stub} and")),
        "decoded and scrubbed: {body}"
    );
    assert!(!text.contains(&b64(&format!("git:{GH_REAL}"))), "{text}");
    assert!(
        !text
            .to_ascii_lowercase()
            .contains("transfer-encoding: gzip"),
        "{text}"
    );

    // An unknown transfer coding: refused, never passed through.
    let port = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: compress, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            .to_vec(),
    )
    .await;
    let c = p.client("sb-a", &token);
    let r = c
        .get(format!("http://allowed.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (502, "response_not_scrubbable".into()));
    p.shutdown().await;
}

/// The body of a chunked HTTP/1.1 response text (trailers dropped).
fn dechunk(text: &str) -> String {
    let (_, mut rest) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or("");
    }
    out
}
