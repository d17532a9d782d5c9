use base64::Engine;
use http::Request;

use super::*;
use crate::testutil::grants;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Builds a request, scans it, returns (sandbox, credential, surface) hits.
fn check(
    index: &StubIndex,
    uri: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Vec<(String, String, SwapSurface)> {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let parts = b.body(()).unwrap().into_parts().0;
    let mut found = find_in_head(index, &parts);
    found.extend(find_in_body(index, body));
    let mut out: Vec<_> = found
        .into_iter()
        .map(|f| {
            (
                f.owner.sandbox.clone(),
                f.owner.credential.clone(),
                f.surface,
            )
        })
        .collect();
    out.sort_by_key(|x| format!("{x:?}"));
    out
}

#[test]
fn surfaces_table() {
    let g = grants();
    let a = g.issue("sb-a", None, &["GH".into(), "ANT".into()]).unwrap();
    let b = g.issue("sb-b", None, &["GH".into()]).unwrap();
    let idx = g.index();
    let (ga, aa, gb) = (
        a.stubs["GH"].clone(),
        a.stubs["ANT"].clone(),
        b.stubs["GH"].clone(),
    );
    let hit = |sb: &str, c: &str, s: SwapSurface| (sb.to_string(), c.to_string(), s);
    use SwapSurface::*;

    assert_eq!(check(&idx, "/", &[], b""), vec![]);
    assert_eq!(
        check(&idx, "/", &[("authorization", format!("Bearer {ga}"))], b""),
        vec![hit("sb-a", "GH", Header)]
    );
    assert_eq!(
        check(&idx, "/", &[("authorization", format!("token {ga}"))], b""),
        vec![hit("sb-a", "GH", Header)]
    );
    assert_eq!(
        check(
            &idx,
            "/",
            &[(
                "authorization",
                format!("Basic {}", b64(&format!("x-access-token:{ga}")))
            )],
            b""
        ),
        vec![hit("sb-a", "GH", Header)]
    );
    assert_eq!(
        check(&idx, "/", &[("x-api-key", aa.clone())], b""),
        vec![hit("sb-a", "ANT", Header)]
    );
    assert_eq!(
        check(&idx, &format!("/r?access_token={ga}"), &[], b""),
        vec![hit("sb-a", "GH", Query)]
    );
    assert_eq!(
        check(&idx, &format!("/{ga}/x"), &[], b""),
        vec![hit("sb-a", "GH", Query)]
    );
    // Percent-encoded in the query.
    let enc: String = ga.chars().map(|c| format!("%{:02X}", c as u32)).collect();
    assert_eq!(
        check(&idx, &format!("/r?t={enc}"), &[], b""),
        vec![hit("sb-a", "GH", Query)]
    );
    // Another sandbox's stub is found and attributed to it.
    assert_eq!(
        check(&idx, "/", &[("authorization", format!("Bearer {gb}"))], b""),
        vec![hit("sb-b", "GH", Header)]
    );
    // Body.
    assert_eq!(
        check(&idx, "/", &[], format!("{{\"t\":\"{ga}\"}}").as_bytes()),
        vec![hit("sb-a", "GH", Body)]
    );
    // Header name.
    assert_eq!(
        check(&idx, "/", &[(&*ga.to_lowercase().leak(), "1".into())], b"").len(),
        0,
        "lower-cased stub is not the stub"
    );
    // Prefix alone is not a stub.
    assert_eq!(
        check(&idx, "/", &[("authorization", "Bearer ghp_".into())], b""),
        vec![]
    );
    // Proxy-Authorization is not scanned.
    assert_eq!(
        check(
            &idx,
            "/",
            &[(
                "proxy-authorization",
                format!("Basic {}", b64(&format!("x:{ga}")))
            )],
            b""
        ),
        vec![]
    );
    // Several at once.
    assert_eq!(
        check(
            &idx,
            &format!("/?k={aa}"),
            &[("authorization", format!("Bearer {ga}"))],
            b""
        )
        .len(),
        2
    );
}
