use std::collections::BTreeMap;
use std::sync::Arc;

use http_body_util::BodyExt;

use super::*;
use crate::body::full;
use crate::testutil::{ANT_REAL, GH_REAL, creds};

const GH_STUB: &str = "ghp_STUBSTUBSTUBSTUBSTUBSTUBSTUBSTUB5678";

fn replacer() -> Arc<Replacer> {
    let stubs = BTreeMap::from([("GH".to_string(), GH_STUB.to_string())]);
    Arc::new(Replacer::for_grant(&creds(), &stubs))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Streams `input` split at every position in `cuts`, returns the output.
fn stream(r: &Replacer, input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut s = StreamReplacer::new(r);
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        out.extend_from_slice(&s.feed(&input[prev..c]));
        prev = c;
    }
    out.extend_from_slice(&s.finish());
    out
}

#[test]
fn replace_table() {
    let r = replacer();
    let check = |input: String, want: String| {
        assert_eq!(
            String::from_utf8(
                r.replace_all(input.as_bytes())
                    .unwrap_or_else(|| input.clone().into_bytes())
            )
            .unwrap(),
            want
        );
    };
    check(format!("token {GH_REAL}!"), format!("token {GH_STUB}!"));
    check(format!("{GH_REAL}{GH_REAL}"), format!("{GH_STUB}{GH_STUB}"));
    check(
        format!("b64 {}", b64(GH_REAL)),
        format!("b64 {}", b64(GH_STUB)),
    );
    // A credential this grant does not hold is masked, same length.
    check(
        format!("k={ANT_REAL}"),
        format!("k={}", "*".repeat(ANT_REAL.len())),
    );
    check("nothing here".into(), "nothing here".into());
    assert!(r.same_length());
}

#[test]
fn split_at_every_offset() {
    let r = replacer();
    let input = format!("{{\"echo\":\"Bearer {GH_REAL}\",\"x\":1}}");
    let want = format!("{{\"echo\":\"Bearer {GH_STUB}\",\"x\":1}}");
    for i in 0..=input.len() {
        assert_eq!(
            String::from_utf8(stream(&r, input.as_bytes(), &[i])).unwrap(),
            want,
            "cut at {i}"
        );
    }
    // Byte-by-byte.
    let cuts: Vec<usize> = (1..input.len()).collect();
    assert_eq!(
        String::from_utf8(stream(&r, input.as_bytes(), &cuts)).unwrap(),
        want
    );
}

#[test]
fn holds_back_only_possible_prefixes() {
    let r = replacer();
    let mut s = StreamReplacer::new(&r);
    // No prefix of any secret at the end: everything is emitted at once (SSE stays live).
    assert_eq!(&s.feed(b"data: hello\n\n")[..], b"data: hello\n\n");
    // A tail that may start a secret is held.
    assert_eq!(&s.feed(b"data: ghp_RE")[..], b"data: ");
    assert_eq!(&s.feed(b"X")[..], b"ghp_REX");
}

#[tokio::test]
async fn body_plain_chunked_and_gzip() {
    let r = replacer();
    let text = format!("hello {GH_REAL} bye").repeat(100);
    let want = format!("hello {GH_STUB} bye").repeat(100);

    // Plain.
    let body = ScrubBody::new(full(text.clone()), r.clone(), vec![], None);
    let got = body.collect().await.unwrap().to_bytes();
    assert_eq!(got, want.as_bytes());

    // gzip, delivered in small compressed chunks.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let chunks: Vec<Result<Frame<Bytes>, BoxError>> = gz
        .chunks(7)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let inner = crate::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks,
    )));
    let fired = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f2 = fired.clone();
    let body = ScrubBody::new(
        inner,
        r.clone(),
        vec![DecoderKind::Gzip],
        Some(Box::new(move || {
            f2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })),
    );
    let got = body.collect().await.unwrap().to_bytes();
    assert_eq!(got, want.as_bytes());
    assert_eq!(
        fired.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one scrub event per response"
    );
}

#[test]
fn prepare_headers_and_encodings() {
    let r = replacer();
    let check = |enc: Option<&str>, ok: bool, keeps_len: bool| {
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            HeaderValue::from_str(&format!("https://evil.test/?t={GH_REAL}")).unwrap(),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
        if let Some(e) = enc {
            h.insert(CONTENT_ENCODING, HeaderValue::from_str(e).unwrap());
        }
        let res = prepare_response(&r, &mut h, &[]);
        assert_eq!(res.is_ok(), ok, "{enc:?}");
        if ok {
            assert_eq!(res.unwrap().0, 1);
            assert_eq!(
                h["location"].to_str().unwrap(),
                format!("https://evil.test/?t={GH_STUB}")
            );
            assert_eq!(h.contains_key(CONTENT_LENGTH), keeps_len, "{enc:?}");
        }
    };
    check(None, true, true);
    check(Some("identity"), true, true);
    check(Some("gzip"), true, false);
    check(Some("deflate"), true, false);
    check(Some("br"), true, false);
    check(Some("gzip, br"), true, false);
    check(Some("zstd"), false, false);

    let mut h = HeaderMap::new();
    h.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip, deflate, br, zstd;q=0.5"),
    );
    restrict_accept_encoding(&mut h);
    assert_eq!(h[http::header::ACCEPT_ENCODING], "gzip, deflate, br");
    let mut h = HeaderMap::new();
    h.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("zstd"),
    );
    restrict_accept_encoding(&mut h);
    assert!(!h.contains_key(http::header::ACCEPT_ENCODING));
    // Transfer codings: decoded too; an unknown one fails closed.
    let mut h = HeaderMap::new();
    assert!(matches!(
        prepare_response(&r, &mut h, &["gzip".into()]),
        Ok((_, ScrubPlan::Scrub(ref c))) if c == &vec![DecoderKind::Gzip]
    ));
    assert!(prepare_response(&r, &mut h, &["compress".into()]).is_err());
}

#[test]
fn encodings_of_the_value_are_scrubbed() {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let r = replacer();
    let scrubbed = |s: String| {
        let out = r
            .replace_all(s.as_bytes())
            .map(|v| String::from_utf8(v).unwrap());
        out.unwrap_or(s)
    };
    // Basic credentials with users of every length modulo 3, both alphabets.
    for user in ["", "g", "gi", "git", "oauth2", "x-access-token", "ab"] {
        for engine in [&STANDARD, &URL_SAFE] {
            let enc = engine.encode(format!("{user}:{GH_REAL}"));
            let out = scrubbed(format!("Basic {enc}"));
            let dec = engine
                .decode(out.trim_start_matches("Basic "))
                .map(|d| String::from_utf8_lossy(&d).to_string())
                .unwrap_or_default();
            assert!(!dec.contains(GH_REAL), "{user}: {out}");
            assert!(!out.contains(&enc), "{user}");
        }
    }
    // Percent-encoded, partly or fully, either hex case.
    let all_upper: String = GH_REAL.bytes().map(|b| format!("%{b:02X}")).collect();
    let all_lower: String = GH_REAL.bytes().map(|b| format!("%{b:02x}")).collect();
    for s in [all_upper, all_lower] {
        assert!(!scrubbed(format!("q={s}&")).contains(&s));
    }
}

#[test]
fn percent_encoded_special_characters() {
    let real = "sk/live+key=value&more==1234";
    let mut c = Credentials::default();
    c.insert(crate::testutil::cred(
        "X",
        real,
        &["a.test"],
        &["header:authorization"],
    ));
    let stubs = BTreeMap::from([("X".to_string(), "sk/stub+stb=stubst&stub==5678".to_string())]);
    let r = Replacer::for_grant(&c, &stubs);
    for enc in [
        "sk%2Flive%2Bkey%3Dvalue%26more%3D%3D1234",
        "sk%2flive%2bkey%3dvalue%26more%3d%3d1234",
    ] {
        let out = String::from_utf8(r.replace_all(enc.as_bytes()).unwrap()).unwrap();
        assert!(!out.contains(enc), "{out}");
    }
}

#[tokio::test]
async fn empty_gzip_body_is_fine() {
    // HEAD / 304 responses carry content-encoding but no body.
    let body = ScrubBody::new(
        crate::body::empty(),
        replacer(),
        vec![DecoderKind::Gzip],
        None,
    );
    assert!(body.collect().await.unwrap().to_bytes().is_empty());
    // A corrupt gzip body fails the stream (never passes unscrubbed bytes).
    let body = ScrubBody::new(
        full("not gzip at all, but with a secret"),
        replacer(),
        vec![DecoderKind::Gzip],
        None,
    );
    assert!(body.collect().await.is_err());
}
