use std::collections::{BTreeMap, HashSet};

use super::*;
use crate::testutil::{ANT_REAL, GH_REAL, grants};

#[test]
fn prefix_table() {
    let check = |real: &str, want: &str| assert_eq!(stub_prefix(real), want, "{real}");
    check("ghp_0123456789abcdefghijABCDEFGHIJ0123456", "ghp_");
    check(
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "github_pat_",
    );
    check(
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789",
        "sk-ant-api03-",
    );
    check("sk-proj-abcdefghijklmnopqrstuvwxyz", "sk-proj-");
    check("sk-abcdefghijklmnopqrstuvwxyz012345", "sk-");
    check("xoxb-123456789012-1234567890123-abcdefghijkl", "xoxb-");
    check("mytoken_abcdefghijklmnopqrstuvwxyz", "mytoken_");
    check("abcdefghijklmnopqrstuvwxyz0123456789", "");
    check("ghp_short", "");
    check("0123456789abcdef0123456789abcdef", "");
}

#[test]
fn minted_stubs_keep_prefix_length_and_alphabet() {
    let mut rng = rand::rng();
    let check = |real: &str, alphabet: &dyn Fn(u8) -> bool, rng: &mut rand::rngs::ThreadRng| {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let s = mint_stub(real, rng);
            assert_eq!(s.len(), real.len(), "{real}");
            let p = stub_prefix(real);
            assert!(s.starts_with(p));
            assert_ne!(s, real);
            assert!(s[p.len()..].bytes().all(alphabet), "{s}");
            assert!(seen.insert(s), "duplicate stub");
        }
    };
    check(GH_REAL, &|b| b.is_ascii_alphanumeric(), &mut rng);
    check(
        ANT_REAL,
        &|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
        &mut rng,
    );
    check(
        "0123456789abcdef0123456789abcdef",
        &|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        &mut rng,
    );
}

#[test]
fn issue_authenticate_revoke() {
    let g = grants();
    let issued = g
        .issue("sb-1", Some("sess".into()), &["GH".into(), "ANT".into()])
        .unwrap();
    assert_eq!(issued.stubs.len(), 2);
    assert!(issued.stubs["GH"].starts_with("ghp_"));
    assert_eq!(issued.stubs["GH"].len(), GH_REAL.len());
    assert!(issued.stubs["ANT"].starts_with("sk-ant-api03-"));
    let grant = g.authenticate("sb-1", &issued.token).unwrap();
    assert_eq!(grant.session.as_deref(), Some("sess"));
    assert!(g.authenticate("sb-1", "wrong").is_none());
    assert!(g.authenticate("sb-2", &issued.token).is_none());
    // Debug never shows token or stubs.
    let dbg = format!("{issued:?} {grant:?}");
    assert!(!dbg.contains(&issued.token) && !dbg.contains(&issued.stubs["GH"]));

    assert!(g.revoke("sb-1"));
    assert!(grant.is_revoked(), "open tunnels see the revocation");
    assert!(g.authenticate("sb-1", &issued.token).is_none());
    assert!(!g.revoke("sb-1"));
    // The revoked stub left the index (the scan does not grow with churn)...
    let idx = g.index();
    assert_eq!(idx.find_all(issued.stubs["GH"].as_bytes()).count(), 0);
    assert_eq!(idx.max_len(), 0);
    // ...but is never minted or accepted again.
    let stat = crate::config::GrantConfig {
        sandbox: "sb-9".into(),
        token: "static-token-123".into(),
        credentials: [("GH".to_string(), issued.stubs["GH"].clone())].into(),
        session: None,
    };
    assert!(matches!(g.add_static(&stat), Err(GrantError::StubInUse(_))));
}

#[test]
fn regrant_replaces_and_never_reuses_stubs() {
    let g = grants();
    let a = g.issue("sb-1", None, &["GH".into()]).unwrap();
    let first = g.authenticate("sb-1", &a.token).unwrap();
    let b = g.issue("sb-1", None, &["GH".into()]).unwrap();
    assert!(first.is_revoked());
    assert_ne!(a.stubs["GH"], b.stubs["GH"]);
    assert_ne!(a.token, b.token);
    assert!(g.authenticate("sb-1", &a.token).is_none());
    assert!(g.authenticate("sb-1", &b.token).is_some());
    let mut all = HashSet::new();
    for i in 0..300 {
        let s = g.issue(&format!("sb-{i}"), None, &["GH".into()]).unwrap();
        assert!(all.insert(s.stubs["GH"].clone()));
    }
}

#[test]
fn issue_errors() {
    let g = grants();
    let check = |sandbox: &str, creds: &[&str], want: Result<(), GrantError>| {
        let creds: Vec<String> = creds.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            g.issue(sandbox, None, &creds).map(|_| ()),
            want,
            "{sandbox} {creds:?}"
        );
    };
    check(
        "sb-1",
        &["NOPE"],
        Err(GrantError::UnknownCredential("NOPE".into())),
    );
    check("", &["GH"], Err(GrantError::InvalidSandbox));
    check("a:b", &["GH"], Err(GrantError::InvalidSandbox));
    check("sb-1", &[], Ok(()));
}

#[test]
fn static_grants() {
    let g = grants();
    let cfg = GrantConfig {
        sandbox: "sb-demo".into(),
        token: "demo-token".into(),
        credentials: BTreeMap::from([(
            "GH".into(),
            "ghp_stubAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        )]),
        session: Some("s-demo".into()),
    };
    g.add_static(&cfg).unwrap();
    let grant = g.authenticate("sb-demo", "demo-token").unwrap();
    assert_eq!(grant.session.as_deref(), Some("s-demo"));
    assert_eq!(
        grant.stub_for("GH"),
        Some("ghp_stubAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    );
    let again = GrantConfig {
        sandbox: "sb-other".into(),
        ..cfg.clone()
    };
    assert_eq!(
        g.add_static(&again),
        Err(GrantError::StubInUse("GH".into()))
    );
    let unknown = GrantConfig {
        sandbox: "sb-x".into(),
        token: "tok-tok-tok".into(),
        credentials: BTreeMap::from([("NOPE".into(), "stubstubstub".into())]),
        session: None,
    };
    assert_eq!(
        g.add_static(&unknown),
        Err(GrantError::UnknownCredential("NOPE".into()))
    );
}
