use base64::Engine;
use http::Request;

use super::*;
use crate::config::EgressDefault;
use crate::config::HostPattern;
use crate::grants::Grants;
use crate::pipeline::find_stubs::{BodyKind, find_in_body, find_in_head};
use crate::pipeline::pin_destination::parse_authority;
use crate::testutil::{BODY_REAL, GH_REAL, grants};

fn dest(a: &str, scheme: Scheme) -> PinnedDest {
    PinnedDest::new(parse_authority(a, None).unwrap(), scheme)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Runs find → decide → apply for sandbox `sb` and returns the forwarded
/// (authorization header, uri, body) or the denial reason.
fn check(
    g: &Grants,
    sb: &str,
    token: &str,
    to: &PinnedDest,
    uri: &str,
    auth: Option<String>,
    body: &str,
) -> Result<(String, String, String), String> {
    let grant = g.authenticate(sb, token).unwrap();
    let method = if body.is_empty() { "GET" } else { "POST" };
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    if body.starts_with('{') {
        b = b.header("content-type", "application/json");
    } else if !body.is_empty() {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    let mut parts = b.body(()).unwrap().into_parts().0;
    let idx = g.index();
    let kind = BodyKind::of(&parts.headers);
    let mut found = find_in_head(&idx, &parts);
    find_in_body(&idx, kind, body.as_bytes(), &mut found);
    let facts = RequestFacts {
        method,
        path: parts.uri.path(),
    };
    let swaps = decide(&grant, to, &facts, &found).map_err(|d| d.reason())?;
    apply_to_head(&grant, &swaps, &mut parts).map_err(|d| d.reason())?;
    let body = apply_to_body(&grant, &swaps, kind, Bytes::from(body.to_string()));
    let auth = parts
        .headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((
        auth,
        parts.uri.to_string(),
        String::from_utf8(body.to_vec()).unwrap(),
    ))
}

#[test]
fn decision_table() {
    let g = grants();
    let a = g
        .issue("sb-a", None, &["GH".into(), "ANT".into(), "BODY".into()])
        .unwrap();
    let b = g.issue("sb-b", None, &["GH".into()]).unwrap();
    let (gh, ant, body) = (&a.stubs["GH"], &a.stubs["ANT"], &a.stubs["BODY"]);
    let bound = dest("api.github.test:443", Scheme::Https);
    let sub = dest("uploads.github.test:443", Scheme::Https);
    let t = &a.token;

    // Swapped toward a bound host over TLS: header, Basic, query, wildcard host.
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &bound,
            "/user",
            Some(format!("Bearer {gh}")),
            ""
        ),
        Ok((format!("Bearer {GH_REAL}"), "/user".into(), "".into()))
    );
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &bound,
            "/x",
            Some(format!("Basic {}", b64(&format!("x-access-token:{gh}")))),
            ""
        ),
        Ok((
            format!("Basic {}", b64(&format!("x-access-token:{GH_REAL}"))),
            "/x".into(),
            "".into()
        ))
    );
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &bound,
            &format!("/x?access_token={gh}"),
            None,
            ""
        ),
        Ok(("".into(), format!("/x?access_token={GH_REAL}"), "".into()))
    );
    assert!(check(&g, "sb-a", t, &sub, "/", Some(format!("Bearer {gh}")), "").is_ok());
    // Body positions: form:token and json:/auth/token only.
    assert_eq!(
        check(&g, "sb-a", t, &bound, "/", None, &format!("token={body}")),
        Ok(("".into(), "/".into(), format!("token={BODY_REAL}")))
    );
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &bound,
            "/",
            None,
            &format!(r#"{{"auth":{{"token":"{body}"}}}}"#)
        ),
        Ok((
            "".into(),
            "/".into(),
            format!(r#"{{"auth":{{"token":"{BODY_REAL}"}}}}"#)
        ))
    );
    let pos = |r: &str| Err(format!("credential_position_not_allowed: {r}"));
    assert_eq!(
        check(&g, "sb-a", t, &bound, "/", None, &format!("k={body}")),
        pos("position_not_allowed: form")
    );
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &bound,
            "/",
            None,
            &format!("token={body}&note={body}")
        ),
        pos("position_not_allowed: form")
    );
    assert_eq!(
        check(&g, "sb-a", t, &bound, "/", None, &format!("k={gh}")),
        pos("position_not_allowed: form")
    );
    // Reflection: the right header plus the stub in a query parameter.
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &bound,
            &format!("/chat?text={gh}"),
            Some(format!("Bearer {gh}")),
            ""
        ),
        pos("position_not_allowed: query")
    );
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &bound,
            &format!("/a{gh}/x"),
            Some(format!("Bearer {gh}")),
            ""
        ),
        pos("stub_outside_positions: path")
    );
    // A bound host on another port than the binding's (443).
    let deny = |r: &str| Err(format!("credential_not_allowed_for_host: {r}"));
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &dest("api.github.test:8443", Scheme::Https),
            "/",
            Some(format!("Bearer {gh}")),
            ""
        ),
        deny("unbound_host")
    );
    // ANT does not opt into query.
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &dest("api.anthropic.test:443", Scheme::Https),
            &format!("/?k={ant}"),
            None,
            ""
        ),
        pos("position_not_allowed: query")
    );
    // Unbound host, look-alikes, apex of a wildcard only via exact entry.
    for h in [
        "evil.test:443",
        "api.github.test.evil.test:443",
        "github.test.evil:443",
        "api.anthropic.test:443",
    ] {
        assert_eq!(
            check(
                &g,
                "sb-a",
                t,
                &dest(h, Scheme::Https),
                "/",
                Some(format!("Bearer {gh}")),
                ""
            ),
            deny("unbound_host"),
            "{h}"
        );
    }
    // Plain HTTP to the bound host.
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &dest("api.github.test:80", Scheme::Http),
            "/",
            Some(format!("Bearer {gh}")),
            ""
        ),
        deny("plain_http")
    );
    // IP literal.
    assert_eq!(
        check(
            &g,
            "sb-a",
            t,
            &dest("140.82.112.3:443", Scheme::Https),
            "/",
            Some(format!("Bearer {gh}")),
            ""
        ),
        deny("ip_literal")
    );
    // Another sandbox's stub toward the right host.
    assert_eq!(
        check(
            &g,
            "sb-b",
            &b.token,
            &bound,
            "/",
            Some(format!("Bearer {gh}")),
            ""
        ),
        deny("foreign_stub")
    );
    // A stub of a replaced grant left the index (revoked stubs leave it, so
    // the scan does not grow with churn): it is a plain unknown string now,
    // forwarded as is — never swapped, and it carries no secret.
    let old_b = b.stubs["GH"].clone();
    let b2 = g.issue("sb-b", None, &["GH".into()]).unwrap();
    assert_eq!(
        check(
            &g,
            "sb-b",
            &b2.token,
            &bound,
            "/",
            Some(format!("Bearer {old_b}")),
            ""
        ),
        Ok((format!("Bearer {old_b}"), "/".to_string(), "".to_string()))
    );
}

#[test]
fn egress_table() {
    let cfg = EgressConfig {
        default: EgressDefault::Deny,
        allow_hosts: vec![
            HostPattern::parse("*.pypi.test").unwrap(),
            HostPattern::parse("pypi.test").unwrap(),
        ],
        ask_timeout_s: 120,
    };
    let check =
        |h: &str, ok: bool| assert_eq!(egress(&cfg, &dest(h, Scheme::Https)).is_ok(), ok, "{h}");
    check("pypi.test:443", true);
    check("files.pypi.test:443", true);
    check("evil.test:443", false);
    check("pypi.test.evil.test:443", false);
    check("127.0.0.1:443", false);
    let open = EgressConfig {
        default: EgressDefault::Allow,
        allow_hosts: vec![],
        ask_timeout_s: 120,
    };
    assert!(egress(&open, &dest("anything.test:443", Scheme::Https)).is_ok());
}
