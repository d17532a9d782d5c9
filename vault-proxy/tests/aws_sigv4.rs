//! `type: aws_sigv4` through the real proxy (in-process, loopback upstream): a request
//! signed with the sandbox's stub pair leaves re-signed with the real keys (header and
//! presigned forms, hashed and aws-chunked bodies); everything not signed by that pair is
//! refused with 403 and audited, and nothing reaches the upstream. The docker + AWS CLI +
//! independent fake S3 version is `tests/tests/vault_aws.rs` in airlock-tests.

mod common;

use common::*;
use vault_proxy::aws_sigv4::sign::{
    CredentialScope, RequestToSign, SigningKey, canonical_request, chunk_string_to_sign,
    sha256_hex, string_to_sign,
};
use vault_proxy::aws_sigv4::split_pair;

const REAL_ID: &str = "AKIAREALKEY7EXAMPLE2";
const REAL_SECRET: &str = "RealSecretKey/0123456789abcdefghijKLMNOP";
const SECRET_ENV: &str = "AIRLOCK_TEST_AWS_SECRET_SIGV4";

struct Signed {
    url: String,
    headers: Vec<(String, String)>,
}

/// Signs like an SDK: `x-amz-date`, `x-amz-content-sha256`, host, plus `extra`.
fn sign_header(
    id: &str,
    secret: &str,
    host: &str,
    method: &str,
    path: &str,
    payload_hash: &str,
    extra: &[(&str, &str)],
) -> Signed {
    let now = chrono::Utc::now();
    let amz = now.format("%Y%m%dT%H%M%SZ").to_string();
    let scope =
        CredentialScope::parse(&format!("{}/us-east-1/s3/aws4_request", &amz[..8])).unwrap();
    let mut h = http::HeaderMap::new();
    h.insert("host", host.parse().unwrap());
    h.insert("x-amz-date", amz.parse().unwrap());
    h.insert("x-amz-content-sha256", payload_hash.parse().unwrap());
    for (k, v) in extra {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let mut names: Vec<String> = h.keys().map(|k| k.to_string()).collect();
    names.sort();
    let creq = canonical_request(
        &RequestToSign {
            method,
            path,
            query: "",
            headers: &h,
            host_fallback: "",
            signed_headers: &names,
            payload_hash,
            skip_query: &[],
        },
        &scope,
    )
    .unwrap();
    let sig = SigningKey::derive(secret, &scope).sign(&string_to_sign(&amz, &scope, &creq));
    let mut headers: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| *k != "host")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={id}/{}, SignedHeaders={}, Signature={sig}",
            scope.as_string(),
            names.join(";")
        ),
    ));
    Signed {
        url: format!("https://{host}{path}"),
        headers,
    }
}

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    s: &Signed,
    body: Vec<u8>,
) -> (u16, String) {
    let mut r = c.request(method, &s.url).body(body);
    // reqwest frames the body itself (same length).
    for (k, v) in s.headers.iter().filter(|(k, _)| k != "content-length") {
        r = r.header(k, v);
    }
    match r.send().await {
        Ok(resp) => (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// Checks an upstream request's `Authorization` with the real key (header form).
fn verify_real(seen: &Seen, path: &str) {
    let auth = seen
        .header("authorization")
        .expect("authorization upstream");
    assert!(auth.contains(&format!("Credential={REAL_ID}/")), "{auth}");
    let signed = auth
        .split("SignedHeaders=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    let sig = auth.split("Signature=").nth(1).unwrap();
    let scope = CredentialScope::parse(
        auth.split(&format!("{REAL_ID}/"))
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap(),
    )
    .unwrap();
    let mut h = http::HeaderMap::new();
    for (k, v) in &seen.headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let names: Vec<String> = signed.split(';').map(String::from).collect();
    let payload = seen.header("x-amz-content-sha256").unwrap();
    // An HTTP/2 upstream sees `:authority`, not `Host`.
    let host = seen.host();
    let creq = canonical_request(
        &RequestToSign {
            method: &seen.method,
            path,
            query: "",
            headers: &h,
            host_fallback: &host,
            signed_headers: &names,
            payload_hash: &payload,
            skip_query: &[],
        },
        &scope,
    )
    .unwrap();
    let amz = seen.header("x-amz-date").unwrap();
    assert!(
        SigningKey::derive(REAL_SECRET, &scope).verify(&string_to_sign(&amz, &scope, &creq), sig),
        "upstream signature does not verify with the real key"
    );
}

#[tokio::test]
async fn aws_requests_are_verified_with_the_stub_and_resigned_with_the_real_key() {
    // SAFETY: set once before the proxy reads it; no other test reads this variable.
    unsafe { std::env::set_var(SECRET_ENV, REAL_SECRET) };
    let up = start_upstream().await;
    let host = format!("api.github.test:{}", up.port);
    let proxy = start_proxy(
        &up,
        ProxyOpts {
            extra_yaml: format!(
                "  AWS:\n    type: aws_sigv4\n    access_key_id: {REAL_ID}\n    \
                 secret_access_key_env: {SECRET_ENV}\n    region: us-east-1\n    \
                 allowed_hosts: [\"{host}\"]\n"
            ),
            ..Default::default()
        },
    )
    .await;
    let (tok_a, stubs_a) = proxy.grant("sb-a", &["AWS"]);
    let (tok_b, stubs_b) = proxy.grant("sb-b", &["AWS"]);
    let a = split_pair(&stubs_a["AWS"]).unwrap();
    let b = split_pair(&stubs_b["AWS"]).unwrap();
    assert_eq!(a.access_key_id.len(), 20);
    assert_eq!(a.secret_access_key.len(), 40);
    assert_ne!(a.access_key_id, b.access_key_id);
    let ca = proxy.client("sb-a", &tok_a);
    let cb = proxy.client("sb-b", &tok_b);
    use reqwest::Method;

    // 1. Header signature, hashed body: re-signed with the real key.
    let body = b"hello aws".to_vec();
    let s = sign_header(
        a.access_key_id,
        a.secret_access_key,
        &host,
        "PUT",
        "/bkt/k",
        &sha256_hex(&body),
        &[],
    );
    assert_eq!(send(&ca, Method::PUT, &s, body.clone()).await.0, 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.body, body);
    assert!(!seen.contains(a.access_key_id) && !seen.contains(a.secret_access_key));
    verify_real(&seen, "/bkt/k");

    // 2. aws-chunked: every chunk re-signed with the real chain.
    let data = vec![b'z'; 100_000];
    let pieces: Vec<&[u8]> = data.chunks(40_000).chain([&[][..]]).collect();
    let framed_len: usize = pieces
        .iter()
        .map(|p| format!("{:x};chunk-signature=", p.len()).len() + 64 + 2 + p.len() + 2)
        .sum();
    let len_s = framed_len.to_string();
    let s = sign_header(
        a.access_key_id,
        a.secret_access_key,
        &host,
        "PUT",
        "/bkt/chunked",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        &[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "100000"),
            ("content-length", &len_s),
        ],
    );
    let auth = &s
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap()
        .1;
    let seed = auth.split("Signature=").nth(1).unwrap().to_string();
    let amz = s
        .headers
        .iter()
        .find(|(k, _)| k == "x-amz-date")
        .unwrap()
        .1
        .clone();
    let scope =
        CredentialScope::parse(&format!("{}/us-east-1/s3/aws4_request", &amz[..8])).unwrap();
    let frame = |secret: &str, seed: &str, tamper: bool| {
        let key = SigningKey::derive(secret, &scope);
        let (mut prev, mut out) = (seed.to_string(), Vec::new());
        for p in &pieces {
            prev = key.sign(&chunk_string_to_sign(
                &amz,
                &scope.as_string(),
                &prev,
                &sha256_hex(p),
            ));
            out.extend_from_slice(format!("{:x};chunk-signature={prev}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        if tamper {
            out[50_000] ^= 1;
        }
        out
    };
    let body = frame(a.secret_access_key, &seed, false);
    assert_eq!(body.len(), framed_len);
    let (st, text) = send(&ca, Method::PUT, &s, body.clone()).await;
    assert_eq!(st, 200, "{text}");
    let seen = up.seen().pop().unwrap();
    verify_real(&seen, "/bkt/chunked");
    let real_seed = seen
        .header("authorization")
        .unwrap()
        .split("Signature=")
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        seen.body,
        frame(REAL_SECRET, &real_seed, false),
        "chunks not re-signed with the real chain"
    );

    // 3. Presigned GET: X-Amz-Credential and X-Amz-Signature replaced.
    let amz = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let pscope =
        CredentialScope::parse(&format!("{}/us-east-1/s3/aws4_request", &amz[..8])).unwrap();
    let q = format!(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}%2F{}&X-Amz-Date={amz}&X-Amz-Expires=300&X-Amz-SignedHeaders=host",
        a.access_key_id,
        pscope.as_string().replace('/', "%2F")
    );
    let mut hm = http::HeaderMap::new();
    hm.insert("host", host.parse().unwrap());
    let creq = canonical_request(
        &RequestToSign {
            method: "GET",
            path: "/bkt/k",
            query: &q,
            headers: &hm,
            host_fallback: "",
            signed_headers: &["host".to_string()],
            payload_hash: "UNSIGNED-PAYLOAD",
            skip_query: &[],
        },
        &pscope,
    )
    .unwrap();
    let psig = SigningKey::derive(a.secret_access_key, &pscope)
        .sign(&string_to_sign(&amz, &pscope, &creq));
    let url = format!("https://{host}/bkt/k?{q}&X-Amz-Signature={psig}");
    assert_eq!(ca.get(&url).send().await.unwrap().status(), 200);
    let seen = up.seen().pop().unwrap();
    assert!(
        seen.uri.contains(&format!("X-Amz-Credential={REAL_ID}%2F")),
        "{}",
        seen.uri
    );
    assert!(!seen.uri.contains(&psig) && !seen.contains(a.access_key_id));

    // --- refused, audited, nothing sent ---
    let before = up.seen().len();
    let refused = |st: u16, body: &str, why: &str| {
        assert_eq!(st, 403, "{why}: {body}");
    };
    // Another sandbox's stub pair.
    let s = sign_header(
        a.access_key_id,
        a.secret_access_key,
        &host,
        "GET",
        "/bkt/k",
        "UNSIGNED-PAYLOAD",
        &[],
    );
    let (st, text) = send(&cb, Method::GET, &s, vec![]).await;
    refused(st, &text, "foreign pair");
    // Own key id, signed with another secret (B's id, A's secret).
    let s = sign_header(
        b.access_key_id,
        a.secret_access_key,
        &host,
        "GET",
        "/bkt/k",
        "UNSIGNED-PAYLOAD",
        &[],
    );
    let (st, text) = send(&cb, Method::GET, &s, vec![]).await;
    refused(st, &text, "wrong secret");
    assert!(
        text.contains("aws_signature_mismatch") || text.contains("credential_not_allowed_for_host"),
        "{text}"
    );
    // Stub without a signature.
    let (st, text) = match cb
        .get(format!("https://{host}/bkt/k"))
        .header("x-amz-meta-k", b.access_key_id)
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    refused(st, &text, "unsigned");
    // Body changed after signing.
    let s = sign_header(
        b.access_key_id,
        b.secret_access_key,
        &host,
        "PUT",
        "/bkt/k",
        &sha256_hex(b"original"),
        &[],
    );
    let (st, text) = send(&cb, Method::PUT, &s, b"tampered".to_vec()).await;
    refused(st, &text, "tampered body");
    // A presigned URL of a revoked grant, replayed by another sandbox.
    assert!(proxy.running().revoke("sb-a"));
    let (st, text) = match cb.get(&url).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    refused(st, &text, "replayed presigned URL");
    assert_eq!(
        up.seen().len(),
        before,
        "a refused request reached the upstream"
    );

    // A tampered aws-chunked upload is cut off before its end.
    let s = sign_header(
        b.access_key_id,
        b.secret_access_key,
        &host,
        "PUT",
        "/bkt/chunked",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        &[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "100000"),
            ("content-length", &len_s),
        ],
    );
    let bseed = s
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap()
        .1
        .split("Signature=")
        .nth(1)
        .unwrap()
        .to_string();
    let bamz = s
        .headers
        .iter()
        .find(|(k, _)| k == "x-amz-date")
        .unwrap()
        .1
        .clone();
    assert_eq!(bamz[..8], amz[..8]);
    let (st, _) = send(
        &cb,
        Method::PUT,
        &s,
        frame(b.secret_access_key, &bseed, true),
    )
    .await;
    assert_ne!(st, 200);
    assert!(
        up.seen()
            .iter()
            .skip(before)
            .all(|s| s.body.len() < framed_len),
        "a tampered upload arrived whole"
    );

    let (audit, _) = proxy.audit().await;
    assert!(audit.contains(&format!(
        "credential_type: aws_sigv4, access_key_id: {REAL_ID}"
    )));
    for reason in [
        "foreign_stub",
        "aws_signature_mismatch",
        "aws_unsigned",
        "aws_payload_hash_mismatch",
        "aws_key_not_granted",
        "aws_body_not_as_signed",
    ] {
        assert!(
            audit.contains(reason),
            "no {reason} in the audit log:\n{audit}"
        );
    }
    for s in [REAL_SECRET, a.secret_access_key, b.secret_access_key] {
        assert!(!audit.contains(s));
    }
    proxy.shutdown().await;
}
