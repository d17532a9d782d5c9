//! bench/vault-proxy/sigv4.sh: what `aws_sigv4` re-signing costs per request
//! against a plain stub swap, measured in the same run on the proxy's own
//! request-path code (no network, so only the credential work is compared).
//!
//! - baseline, `swap`: a `Bearer` stub found in the head, the decision, and
//!   the swap (`find_in_head` → `decide` → `apply_to_head`);
//! - `sigv4`: the same stub search, then verifying the sandbox's SigV4 header
//!   signature with its stub key and re-signing with the real key
//!   (`aws_sigv4::verify` → `aws_sigv4::resign`), for an S3 GET;
//! - `chunk`: one 64 KiB aws-chunked chunk verified and re-signed, against
//!   hashing it once (the floor any payload check pays).
//!
//! `cargo run --release -p vault-proxy --example sigv4_bench -- [iterations]`

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body_util::BodyExt;
use vault_proxy::aws_sigv4::chunked::{Chain, ChunkResigner};
use vault_proxy::aws_sigv4::sign::{
    CredentialScope, RequestToSign, SigningKey, canonical_request, chunk_string_to_sign,
    sha256_hex, string_to_sign,
};
use vault_proxy::aws_sigv4::{AwsKeys, split_pair};
use vault_proxy::config::{CredentialType, HostPattern, Scope};
use vault_proxy::grants::Grants;
use vault_proxy::pipeline::find_stubs::find_in_head;
use vault_proxy::pipeline::pin_destination::pin_connect;
use vault_proxy::pipeline::swap_or_block::{RequestFacts, apply_to_head, decide};
use vault_proxy::secrets::{Credential, Credentials, SecretValue};

fn cred(name: &str, value: &str, host: &str, kind: CredentialType) -> Credential {
    Credential {
        name: name.into(),
        value: SecretValue::new(value.into()),
        allowed_hosts: vec![HostPattern::parse(host).unwrap()],
        scope: Scope::default(),
        aws: (kind == CredentialType::AwsSigv4).then(|| {
            Arc::new(AwsKeys {
                access_key_id: "AKIAREALKEY7EXAMPLE2".into(),
                region: Some("us-east-1".into()),
            })
        }),
        kind,
        minter: None,
    }
}

fn per_op(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mut c = Credentials::default();
    c.insert(cred(
        "GH",
        "ghp_REALREALREALREALREALREALREALREAL1234",
        "api.github.test",
        CredentialType::Static,
    ));
    c.insert(cred(
        "AWS",
        "RealSecretKey/0123456789abcdefghijKLMNOP",
        "s3.amazonaws.test",
        CredentialType::AwsSigv4,
    ));
    let grants = Grants::new(Arc::new(c));
    let issued = grants
        .issue("sb", None, &["GH".into(), "AWS".into()])
        .unwrap();
    let grant = grants.authenticate("sb", &issued.token).unwrap();
    let index = grants.index();

    // The static request.
    let gh_dest = pin_connect(&"api.github.test:443".parse().unwrap()).unwrap();
    let gh = Request::get("/user")
        .header("host", "api.github.test")
        .header("authorization", format!("Bearer {}", issued.stubs["GH"]))
        .header("user-agent", "bench")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    // The S3 GET, signed with the stub pair as an SDK would.
    let pair = split_pair(&issued.stubs["AWS"]).unwrap();
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let scope =
        CredentialScope::parse(&format!("{}/us-east-1/s3/aws4_request", &amz_date[..8])).unwrap();
    let mut s3 = Request::get("/bucket/some/key.txt")
        .header("host", "s3.amazonaws.test")
        .header("x-amz-date", &amz_date)
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .header("user-agent", "bench")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let signed: Vec<String> = ["host", "x-amz-content-sha256", "x-amz-date"]
        .map(String::from)
        .into();
    let creq = canonical_request(
        &RequestToSign {
            method: "GET",
            path: "/bucket/some/key.txt",
            query: "",
            headers: &s3.headers,
            host_fallback: "",
            signed_headers: &signed,
            payload_hash: "UNSIGNED-PAYLOAD",
            skip_query: &[],
        },
        &scope,
    )
    .unwrap();
    let sig = SigningKey::derive(pair.secret_access_key, &scope)
        .sign(&string_to_sign(&amz_date, &scope, &creq));
    s3.headers.insert(
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={sig}",
            pair.access_key_id,
            scope.as_string(),
            signed.join(";")
        )
        .parse()
        .unwrap(),
    );
    let s3_dest = pin_connect(&"s3.amazonaws.test:443".parse().unwrap()).unwrap();
    let ts = now.timestamp();

    let swap = || {
        let mut p = gh.clone();
        let found = find_in_head(&index, &p);
        let names = decide(
            &grant,
            &gh_dest,
            &RequestFacts {
                method: "GET",
                path: "/user",
            },
            &found,
        )
        .unwrap();
        apply_to_head(&grant, &names, &mut p).unwrap();
        std::hint::black_box(p);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let sigv4 = || {
        let mut p = s3.clone();
        let mut found = find_in_head(&index, &p);
        let v = vault_proxy::aws_sigv4::verify(&grant, &s3_dest, &p, &mut found, None, ts)
            .unwrap()
            .expect("verified");
        let body = vault_proxy::aws_sigv4::resign(
            v,
            &grant,
            &mut p,
            vault_proxy::body::empty(),
            Box::new(|r| panic!("{r}")),
        )
        .unwrap();
        std::hint::black_box((p, body));
    };

    // One 64 KiB chunk (stub chain in, real chain out) vs hashing it once.
    let data = vec![b'a'; 65536];
    let chunk_sig = SigningKey::derive(pair.secret_access_key, &scope).sign(&chunk_string_to_sign(
        &amz_date,
        &scope.as_string(),
        &sig,
        &sha256_hex(&data),
    ));
    let mut framed = BytesMut::new();
    framed.extend_from_slice(format!("10000;chunk-signature={chunk_sig}\r\n").as_bytes());
    framed.extend_from_slice(&data);
    framed.extend_from_slice(b"\r\n");
    let framed = framed.freeze();
    let chain = |secret: &str| Chain {
        key: SigningKey::derive(secret, &scope),
        scope: scope.as_string(),
        amz_date: amz_date.clone(),
        previous: sig.clone(),
    };
    let chunk = || {
        let r = ChunkResigner::new(
            vault_proxy::body::full(Bytes::clone(&framed)),
            chain(pair.secret_access_key),
            chain("RealSecretKey/0123456789abcdefghijKLMNOP"),
            None,
            Box::new(|_| {}),
        );
        // Not ended by a final chunk: read the one re-signed chunk only.
        let mut r = vault_proxy::body::boxed(r);
        let f = rt.block_on(r.frame()).unwrap().unwrap();
        std::hint::black_box(f);
    };
    let hash_only = || {
        std::hint::black_box(sha256_hex(&framed));
    };

    // Warm up, then interleave rounds so drift hits both sides alike.
    per_op(n / 10, swap);
    per_op(n / 10, sigv4);
    let (mut a, mut b, mut ch, mut h) = (0.0, 0.0, 0.0, 0.0);
    let rounds = 5;
    for _ in 0..rounds {
        a += per_op(n, swap);
        b += per_op(n, sigv4);
        ch += per_op(n / 20, chunk);
        h += per_op(n / 20, hash_only);
    }
    let r = rounds as f64;
    let (a, b, ch, h) = (a / r, b / r, ch / r, h / r);
    println!("per request, {n} x {rounds} rounds (ns/op):");
    println!("  plain stub swap (baseline)     {a:>10.0}");
    println!(
        "  aws_sigv4 verify + re-sign     {b:>10.0}   ratio {:.2}x",
        b / a
    );
    println!("per 64 KiB aws-chunked chunk (ns/op):");
    println!("  sha256 of the chunk (baseline) {h:>10.0}");
    println!(
        "  verify + re-sign the chunk     {ch:>10.0}   ratio {:.2}x",
        ch / h
    );
}
