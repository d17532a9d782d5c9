use base64::Engine;
use http::Request;

use super::*;
use crate::testutil::grants;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// (sandbox, credential, count, sites as text), sorted.
type Hit = (String, String, usize, Vec<String>);

fn check(
    index: &StubIndex,
    method: &str,
    uri: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Vec<Hit> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let parts = b.body(()).unwrap().into_parts().0;
    let mut found = find_in_head(index, &parts);
    find_in_body(index, BodyKind::of(&parts.headers), body, &mut found);
    let mut out: Vec<Hit> = found
        .into_iter()
        .map(|f| {
            let mut sites: Vec<String> = f.sites.iter().map(|p| p.to_string()).collect();
            sites.sort();
            (
                f.owner.sandbox.clone(),
                f.owner.credential.clone(),
                f.count,
                sites,
            )
        })
        .collect();
    out.sort();
    out
}

fn hit(sb: &str, c: &str, count: usize, sites: &[&str]) -> Hit {
    (
        sb.into(),
        c.into(),
        count,
        sites.iter().map(|s| s.to_string()).collect(),
    )
}

#[test]
fn occurrences_and_positions() {
    let g = grants();
    let a = g.issue("sb-a", None, &["GH".into(), "ANT".into()]).unwrap();
    let b = g.issue("sb-b", None, &["GH".into()]).unwrap();
    let idx = g.index();
    let (ga, aa, gb) = (
        a.stubs["GH"].clone(),
        a.stubs["ANT"].clone(),
        b.stubs["GH"].clone(),
    );
    let get = |uri: &str, h: &[(&str, String)]| check(&idx, "GET", uri, h, b"");

    assert_eq!(get("/", &[]), vec![]);
    let auth = "header:authorization";
    assert_eq!(
        get("/", &[("authorization", format!("Bearer {ga}"))]),
        vec![hit("sb-a", "GH", 1, &[auth])]
    );
    assert_eq!(
        get("/", &[("authorization", format!("token {ga}"))]),
        vec![hit("sb-a", "GH", 1, &[auth])]
    );
    // Basic with any user name, stub as password or as user.
    for user in ["x-access-token", "git", "oauth2", ""] {
        assert_eq!(
            get(
                "/",
                &[(
                    "authorization",
                    format!("Basic {}", b64(&format!("{user}:{ga}")))
                )]
            ),
            vec![hit("sb-a", "GH", 1, &[auth])],
            "{user}"
        );
    }
    assert_eq!(
        get(
            "/",
            &[(
                "authorization",
                format!("Basic {}", b64(&format!("{ga}:x")))
            )]
        ),
        vec![hit("sb-a", "GH", 1, &[auth])]
    );
    // Not a whole value: counted, no site.
    assert_eq!(
        get("/", &[("authorization", format!("Bearer x{ga}"))]),
        vec![hit("sb-a", "GH", 1, &[])]
    );
    assert_eq!(
        get("/", &[("x-note", ga.clone())]),
        vec![hit("sb-a", "GH", 1, &["header:x-note"])]
    );
    assert_eq!(
        get("/", &[("x-api-key", aa.clone())]),
        vec![hit("sb-a", "ANT", 1, &["header:x-api-key"])]
    );
    // Query and path, raw and percent-encoded.
    assert_eq!(
        get(&format!("/r?access_token={ga}&text={ga}"), &[]),
        vec![hit("sb-a", "GH", 2, &["query:access_token", "query:text"])]
    );
    let enc: String = ga.chars().map(|c| format!("%{:02X}", c as u32)).collect();
    assert_eq!(
        get(&format!("/r?t={enc}"), &[]),
        vec![hit("sb-a", "GH", 1, &["query:t"])]
    );
    assert_eq!(
        get(&format!("/bot{ga}/send"), &[]),
        vec![hit("sb-a", "GH", 1, &[])]
    );
    assert_eq!(
        get(&format!("/{ga}/send"), &[]),
        vec![hit("sb-a", "GH", 1, &["path"])]
    );
    // Method, header name, authority: never a position.
    assert_eq!(
        check(&idx, &ga, "/", &[], b""),
        vec![hit("sb-a", "GH", 1, &[])]
    );
    assert_eq!(
        get(
            "/",
            &[(
                Box::leak(format!("x-{}", ga.to_lowercase()).into_boxed_str()),
                "v".into()
            )]
        ),
        vec![],
        "a lower-cased stub is not the stub"
    );
    assert_eq!(
        get(&format!("https://{}.evil.test/", ga.to_lowercase()), &[]),
        vec![]
    );
    // Another sandbox's stub is reported as its owner's.
    assert_eq!(
        get("/", &[("authorization", format!("Bearer {gb}"))]),
        vec![hit("sb-b", "GH", 1, &[auth])]
    );
}

#[test]
fn body_positions() {
    let g = grants();
    let a = g.issue("sb-a", None, &["BODY".into()]).unwrap();
    let idx = g.index();
    let s = a.stubs["BODY"].clone();
    let form = [(
        "content-type",
        "application/x-www-form-urlencoded".to_string(),
    )];
    let json = [(
        "content-type",
        "application/json; charset=utf-8".to_string(),
    )];
    let post = |h: &[(&str, String)], body: String| check(&idx, "POST", "/", h, body.as_bytes());
    assert_eq!(
        post(&form, format!("a=1&token={s}")),
        vec![hit("sb-a", "BODY", 1, &["form:token"])]
    );
    assert_eq!(
        post(&form, format!("token={s}&note={s}")),
        vec![hit("sb-a", "BODY", 2, &["form:note", "form:token"])]
    );
    assert_eq!(
        post(&json, format!(r#"{{"auth":{{"token":"{s}"}},"n":1}}"#)),
        vec![hit("sb-a", "BODY", 1, &["json:/auth/token"])]
    );
    // A \u-escaped copy elsewhere counts, and is at no position.
    let esc: String = s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    assert_eq!(
        post(
            &json,
            format!(r#"{{"auth":{{"token":"{s}"}},"text":"{esc}"}}"#)
        ),
        vec![hit("sb-a", "BODY", 2, &["json:/auth/token", "json:/text"])]
    );
    assert_eq!(
        post(&json, format!(r#"{{"text":"hi {s}"}}"#)),
        vec![hit("sb-a", "BODY", 1, &[])]
    );
    // Plain text body: counted, no position.
    assert_eq!(
        post(&[], format!("token={s}")),
        vec![hit("sb-a", "BODY", 1, &[])]
    );
    assert_eq!(post(&json, "{}".into()), vec![]);
}
