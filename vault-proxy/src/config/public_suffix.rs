//! Wildcard bindings over shared domains. `*.X` is refused when `X` is a
//! public suffix (ICANN or private section: `com`, `co.uk`, `github.io`,
//! `herokuapp.com`) — asked of the `psl` crate, which also applies the list's
//! wildcard rules (`*.ck`) — or when a listed suffix lies *below* `X`
//! (`amazonaws.com` holds `s3.amazonaws.com`, …), which `psl` cannot
//! enumerate, so the rules file it ships is kept here and searched once per
//! check (config load only).

use std::collections::HashSet;
use std::sync::LazyLock;

static RULES: &str = include_str!("public_suffix_rules.txt");

/// Every listed suffix and every ancestor of one (`s3.amazonaws.com` adds
/// `amazonaws.com` and `com`).
static COVERED: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    let mut set = HashSet::new();
    for line in RULES.lines() {
        let rule = line.trim();
        if rule.is_empty() || rule.starts_with("//") {
            continue;
        }
        let rule = rule.trim_start_matches('!').trim_start_matches("*.");
        let mut r = rule;
        loop {
            set.insert(r);
            match r.split_once('.') {
                Some((_, parent)) => r = parent,
                None => break,
            }
        }
    }
    set
});

/// Whether the wildcard `*.{domain}` (lower-case ASCII) covers a public suffix.
pub(crate) fn covers_public_suffix(domain: &str) -> bool {
    if COVERED.contains(domain) {
        return true;
    }
    // `psl` answers the implicit `*` rule for unknown TLDs too: count only listed rules.
    match psl::suffix(domain.as_bytes()) {
        Some(s) => s.typ().is_some() && s.as_bytes() == domain.as_bytes(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_domains_are_covered() {
        for d in [
            "com",
            "co.uk",
            "amazonaws.com",
            "s3.amazonaws.com",
            "compute.amazonaws.com",
            "github.io",
            "herokuapp.com",
            "appspot.com",
            "vercel.app",
            "foo.ck",
        ] {
            assert!(covers_public_suffix(d), "{d}");
        }
        for d in [
            "example.com",
            "api.example.com",
            "github.com",
            "anthropic.com",
            "slack.com",
            "acme.github.io",
            "example.test",
        ] {
            assert!(!covers_public_suffix(d), "{d}");
        }
    }
}
