//! The request pipeline: one module per rule of the vault proxy contract.
//!
//! Phases are plain functions returning `Result<_, Deny>`; `handler.rs` calls
//! them in order and audits the outcome. The order is enforced by types:
//! [`pin_destination`] yields a [`PinnedDest`], [`check_address`] turns it into
//! a [`CheckedDest`] (constructible only there), and `connect.rs` dials only a
//! `CheckedDest`.
//!
//! 1. [`authenticate`]: `Proxy-Authorization` → live grant, else 407.
//! 2. [`pin_destination`]: CONNECT authority = SNI = `Host`/`:authority`.
//! 3. [`check_address`]: resolve once, refuse private/loopback/metadata/own.
//! 4. [`find_stubs`]: every stub of every sandbox, in headers, Basic, URL, body.
//! 5. [`swap_or_block`]: swap toward a bound host over TLS, else 403; egress.
//! 6. [`scrub_response`]: real values in responses → stubs (streaming).

pub mod authenticate;
pub mod check_address;
pub mod find_stubs;
pub mod pin_destination;
pub mod scrub_response;
pub mod swap_or_block;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Scheme between the sandbox and the proxy (and so toward the upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (absolute-form, or HTTP bytes inside a CONNECT tunnel).
    Http,
    /// TLS terminated by the proxy inside a CONNECT tunnel.
    Https,
}

impl Scheme {
    /// The default port.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
    /// `http` / `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A parsed, normalised `host:port`: host lower-case without trailing dot,
/// IPv6 without brackets, no userinfo.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    /// Host name or IP literal text.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Authority {
    /// The host as an IP address if it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The destination every request of a tunnel (or one plain request) is
/// pinned to. Produced only by `pin_destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedDest {
    authority: Authority,
    scheme: Scheme,
}

impl PinnedDest {
    pub(crate) fn new(authority: Authority, scheme: Scheme) -> PinnedDest {
        PinnedDest { authority, scheme }
    }
    /// Host and port.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
    /// Host.
    pub fn host(&self) -> &str {
        &self.authority.host
    }
    /// Port.
    pub fn port(&self) -> u16 {
        self.authority.port
    }
    /// Scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
    /// True when the host is an IP literal.
    pub fn is_ip_literal(&self) -> bool {
        self.authority.ip().is_some()
    }
    /// The `Host` header value for this destination.
    pub fn host_header(&self) -> String {
        let h = if self.authority.host.contains(':') {
            format!("[{}]", self.authority.host)
        } else {
            self.authority.host.clone()
        };
        if self.authority.port == self.scheme.default_port() {
            h
        } else {
            format!("{h}:{}", self.authority.port)
        }
    }
}

/// A pinned destination whose address was resolved once and checked. The only
/// thing `connect.rs` will dial. Constructible only in `check_address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedDest {
    pinned: PinnedDest,
    addr: SocketAddr,
}

impl CheckedDest {
    /// The pinned destination (TLS server name, Host header).
    pub fn pinned(&self) -> &PinnedDest {
        &self.pinned
    }
    /// The checked address that will be dialled.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The audit `path`: the path plus query *keys* only (`/a?x=&y=`).
pub fn audit_path(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        None => path_and_query.to_string(),
        Some((path, q)) => {
            let keys: Vec<&str> = q
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
                .collect();
            let mut out = String::from(path);
            out.push('?');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push('&');
                }
                out.push_str(k);
                out.push('=');
            }
            out
        }
    }
}

/// Replaces every known stub (of any sandbox) in `s` — raw or
/// percent-encoded — with `[stub]`, so audit fields never carry one.
pub fn redact_stubs(index: &crate::grants::StubIndex, s: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(s).decode_utf8_lossy();
    let text: &str = if index.contains_any(decoded.as_bytes()) {
        &decoded
    } else {
        s
    };
    if !index.contains_any(text.as_bytes()) {
        return s.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (r, _) in index.find_all(bytes) {
        out.push_str(&String::from_utf8_lossy(&bytes[pos..r.start]));
        out.push_str("[stub]");
        pos = r.end;
    }
    out.push_str(&String::from_utf8_lossy(&bytes[pos..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_stubs_in_audit_fields() {
        let g = crate::testutil::grants();
        let s = g.issue("sb", None, &["GH".into()]).unwrap().stubs["GH"].clone();
        let idx = g.index();
        let enc: String = s.chars().map(|c| format!("%{:02X}", c as u32)).collect();
        assert_eq!(redact_stubs(&idx, &format!("/a/{s}/b")), "/a/[stub]/b");
        assert_eq!(redact_stubs(&idx, &format!("/a/{enc}")), "/a/[stub]");
        assert_eq!(
            redact_stubs(&idx, &format!("{s}.evil.test")),
            "[stub].evil.test"
        );
        assert_eq!(redact_stubs(&idx, "/plain%20path"), "/plain%20path");
    }

    #[test]
    fn audit_path_drops_query_values() {
        let check = |input: &str, want: &str| assert_eq!(audit_path(input), want, "{input}");
        check("/", "/");
        check("/repos/x", "/repos/x");
        check("/a?token=SECRET&b=2", "/a?token=&b=");
        check("/a?flag&x=1", "/a?flag=&x=");
        check("/a?", "/a?");
    }
}
