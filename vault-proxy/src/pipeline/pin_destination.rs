//! Rule 2: one destination per tunnel. The CONNECT authority is taken once;
//! the TLS SNI, every inner `Host` header, HTTP/2 `:authority` and any
//! absolute-form URI must name the same host and port.

use std::net::{IpAddr, Ipv6Addr};

use http::Uri;
use http::header::HOST;
use http::request::Parts;

use super::{Authority, PinnedDest, Scheme};
use crate::deny::Deny;

/// Parses `host[:port]` strictly: no userinfo, no path, no empty labels,
/// IPv6 only in brackets, numeric-looking names only as dotted-quad IPv4.
pub fn parse_authority(s: &str, default_port: Option<u16>) -> Result<Authority, Deny> {
    let bad = Deny::BadRequest("invalid authority");
    if s.is_empty() || s.len() > 260 || s.contains(['@', '/', '?', '#', '\\', ' ', '%']) {
        return Err(bad);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or(bad.clone())?;
        let ip: Ipv6Addr = h.parse().map_err(|_| bad.clone())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(bad.clone())?),
        };
        (ip.to_string(), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => {
                if h.contains(':') {
                    return Err(bad); // bare IPv6 without brackets
                }
                (h.to_string(), Some(p))
            }
            None => (s.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad);
            }
            let n: u16 = p.parse().map_err(|_| bad.clone())?;
            if n == 0 {
                return Err(bad);
            }
            n
        }
        None => default_port.ok_or(Deny::BadRequest("port required"))?,
    };
    let host = normalize_host(&host)?;
    Ok(Authority { host, port })
}

fn normalize_host(h: &str) -> Result<String, Deny> {
    let bad = Deny::BadRequest("invalid host");
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let lower = h.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    if lower.is_empty() || lower.len() > 253 {
        return Err(bad);
    }
    for label in lower.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(bad);
        }
    }
    // Names that a libc resolver would read as an IPv4 address in another
    // notation (`2130706433`, `0x7f.1`, `127.1`) are refused outright.
    let last = lower.rsplit('.').next().unwrap_or(lower);
    let numeric = |l: &str| {
        l.bytes().all(|b| b.is_ascii_digit())
            || (l.starts_with("0x") && l[2..].bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if numeric(last) {
        return Err(Deny::BadRequest(
            "numeric host that is not a dotted-quad address",
        ));
    }
    Ok(lower.to_string())
}

/// Pins a CONNECT request: its request-target must be `host:port`.
pub fn pin_connect(uri: &Uri) -> Result<PinnedDest, Deny> {
    if uri.scheme().is_some()
        || uri
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(Deny::BadRequest("CONNECT target must be host:port"));
    }
    let a = uri
        .authority()
        .ok_or(Deny::BadRequest("CONNECT target must be host:port"))?;
    let authority = parse_authority(a.as_str(), None)?;
    Ok(PinnedDest::new(authority, Scheme::Https))
}

/// Checks the TLS ClientHello's SNI against the CONNECT host. A missing SNI
/// is accepted (IP-literal targets have none); the leaf is then minted for
/// the CONNECT host and everything stays pinned to it.
pub fn pin_sni(pinned: &PinnedDest, sni: Option<&str>) -> Result<(), Deny> {
    match sni {
        None => Ok(()),
        Some(name) => {
            let n = normalize_host(name).map_err(|_| Deny::Mismatch("sni invalid"))?;
            if n == pinned.host() {
                Ok(())
            } else {
                Err(Deny::Mismatch("sni differs from CONNECT host"))
            }
        }
    }
}

/// Checks one request inside a pinned tunnel: `Host` (HTTP/1), `:authority`
/// (HTTP/2, in the URI) and an absolute-form URI must equal the pinned
/// host and port.
pub fn pin_inner(pinned: &PinnedDest, parts: &Parts) -> Result<(), Deny> {
    let default = pinned.scheme().default_port();
    let mut seen = false;
    if let Some(s) = parts.uri.scheme_str()
        && s != pinned.scheme().as_str()
    {
        return Err(Deny::Mismatch("uri scheme differs from tunnel"));
    }
    if let Some(a) = parts.uri.authority() {
        seen = true;
        let a = parse_authority(a.as_str(), Some(default))
            .map_err(|_| Deny::Mismatch("invalid :authority / uri authority"))?;
        if &a != pinned.authority() {
            return Err(Deny::Mismatch(
                ":authority / uri differs from CONNECT target",
            ));
        }
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    if let Some(h) = hosts.next() {
        seen = true;
        if hosts.next().is_some() {
            return Err(Deny::Mismatch("repeated Host header"));
        }
        let h = h
            .to_str()
            .map_err(|_| Deny::Mismatch("invalid Host header"))?;
        let a =
            parse_authority(h, Some(default)).map_err(|_| Deny::Mismatch("invalid Host header"))?;
        if &a != pinned.authority() {
            return Err(Deny::Mismatch("Host differs from CONNECT target"));
        }
    }
    if !seen {
        return Err(Deny::Mismatch("no Host or :authority"));
    }
    Ok(())
}

/// Pins a plain absolute-form request (`GET http://host/…`) sent to the proxy.
pub fn pin_absolute(parts: &Parts) -> Result<PinnedDest, Deny> {
    match parts.uri.scheme_str() {
        Some("http") => {}
        Some(_) => {
            return Err(Deny::BadRequest(
                "only http:// in absolute-form; use CONNECT for https",
            ));
        }
        None => {
            return Err(Deny::BadRequest(
                "proxy requests must be absolute-form or CONNECT",
            ));
        }
    }
    let a = parts
        .uri
        .authority()
        .ok_or(Deny::BadRequest("missing authority"))?;
    let authority = parse_authority(a.as_str(), Some(80))?;
    let pinned = PinnedDest::new(authority, Scheme::Http);
    pin_inner(&pinned, parts)?;
    Ok(pinned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn authority_table() {
        let check = |s: &str, want: Option<(&str, u16)>| {
            let got = parse_authority(s, Some(443)).ok().map(|a| (a.host, a.port));
            assert_eq!(got, want.map(|(h, p)| (h.to_string(), p)), "{s}");
        };
        check("api.github.com", Some(("api.github.com", 443)));
        check("API.GitHub.com.:8443", Some(("api.github.com", 8443)));
        check("10.0.0.1:80", Some(("10.0.0.1", 80)));
        check("[::1]:443", Some(("::1", 443)));
        check("[::ffff:127.0.0.1]:443", Some(("::ffff:127.0.0.1", 443)));
        check("::1", None);
        check("user@evil.test", None);
        check("api.github.com@evil.test:443", None);
        check("api.github.com:443@evil.test", None);
        check("a..b", None);
        check(".a", None);
        check("", None);
        check("host:0", None);
        check("host:65536", None);
        check("host:+1", None);
        check("host:", None);
        check("2130706433:443", None);
        check("0x7f.1:443", None);
        check("127.1:443", None);
        check("evil.test/x", None);
        check("ev il.test", None);
        check(
            "xn--bcher-kva.example",
            Some(("xn--bcher-kva.example", 443)),
        );
        check("bücher.example", None);
    }

    fn parts(uri: &str, host: &[&str]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for h in host {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn inner_table() {
        let pinned = PinnedDest::new(
            parse_authority("api.github.test:443", None).unwrap(),
            Scheme::Https,
        );
        let check = |uri: &str, host: &[&str], ok: bool| {
            assert_eq!(
                pin_inner(&pinned, &parts(uri, host)).is_ok(),
                ok,
                "{uri} {host:?}"
            );
        };
        check("/x", &["api.github.test"], true);
        check("/x", &["api.github.test:443"], true);
        check("/x", &["API.GITHUB.TEST."], true);
        check("/x", &["evil.test"], false);
        check("/x", &["api.github.test:8443"], false);
        check("/x", &["api.github.test", "api.github.test"], false);
        check("/x", &[], false);
        check("https://api.github.test/x", &[], true); // h2 :authority
        check("https://evil.test/x", &["api.github.test"], false);
        check("https://api.github.test/x", &["evil.test"], false);
        check("http://api.github.test/x", &["api.github.test"], false);
        check("/x", &["api.github.test@evil.test"], false);
    }

    #[test]
    fn sni_table() {
        let pinned = PinnedDest::new(
            parse_authority("api.github.test:443", None).unwrap(),
            Scheme::Https,
        );
        assert!(pin_sni(&pinned, Some("api.github.test")).is_ok());
        assert!(pin_sni(&pinned, Some("API.github.test.")).is_ok());
        assert!(pin_sni(&pinned, None).is_ok());
        assert!(pin_sni(&pinned, Some("evil.test")).is_err());
        assert!(pin_sni(&pinned, Some("github.test")).is_err());
    }

    #[test]
    fn connect_and_absolute() {
        let uri: Uri = "api.github.test:443".parse().unwrap();
        assert_eq!(pin_connect(&uri).unwrap().host(), "api.github.test");
        let uri: Uri = "api.github.test".parse().unwrap();
        assert!(pin_connect(&uri).is_err(), "CONNECT needs a port");
        let p = pin_absolute(&parts("http://plain.test/x?y=1", &["plain.test"])).unwrap();
        assert_eq!(
            (p.host(), p.port(), p.scheme()),
            ("plain.test", 80, Scheme::Http)
        );
        assert!(pin_absolute(&parts("http://plain.test/x", &["evil.test"])).is_err());
        assert!(pin_absolute(&parts("https://plain.test/x", &[])).is_err());
        assert!(pin_absolute(&parts("/x", &["plain.test"])).is_err());
    }
}
