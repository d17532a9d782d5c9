//! Rule 1: `Proxy-Authorization: Basic base64(sandbox:token)` → a live grant.

use std::sync::Arc;

use base64::Engine;
use http::HeaderMap;
use http::header::PROXY_AUTHORIZATION;

use crate::deny::Deny;
use crate::grants::{Grant, Grants};

/// Parses `Proxy-Authorization` into (sandbox, token).
pub fn parse_proxy_auth(headers: &HeaderMap) -> Result<(String, String), Deny> {
    let mut values = headers.get_all(PROXY_AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(Deny::ProxyAuth("missing"));
    };
    if values.next().is_some() {
        return Err(Deny::ProxyAuth("repeated"));
    }
    let v = v.to_str().map_err(|_| Deny::ProxyAuth("malformed"))?.trim();
    let (scheme, rest) = v.split_once(' ').ok_or(Deny::ProxyAuth("malformed"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Deny::ProxyAuth("not basic"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| Deny::ProxyAuth("malformed"))?;
    let text = String::from_utf8(raw).map_err(|_| Deny::ProxyAuth("malformed"))?;
    let (user, pass) = text.split_once(':').ok_or(Deny::ProxyAuth("malformed"))?;
    if user.is_empty() || pass.is_empty() {
        return Err(Deny::ProxyAuth("malformed"));
    }
    Ok((user.to_string(), pass.to_string()))
}

/// Authenticates a CONNECT or plain request; the grant is then pinned to the tunnel.
pub fn authenticate(grants: &Grants, headers: &HeaderMap) -> Result<(String, Arc<Grant>), Deny> {
    let (sandbox, token) = parse_proxy_auth(headers)?;
    match grants.authenticate(&sandbox, &token) {
        Some(g) => Ok((sandbox, g)),
        None => Err(Deny::ProxyAuth("invalid credentials")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn parse_table() {
        let check = |values: &[&str], want: Result<(&str, &str), &str>| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(PROXY_AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            let got = parse_proxy_auth(&h);
            match want {
                Ok((u, p)) => assert_eq!(got, Ok((u.to_string(), p.to_string())), "{values:?}"),
                Err(reason) => assert_eq!(
                    got,
                    Err(Deny::ProxyAuth(match reason {
                        "missing" => "missing",
                        "repeated" => "repeated",
                        "not basic" => "not basic",
                        _ => "malformed",
                    })),
                    "{values:?}"
                ),
            }
        };
        let good = format!("Basic {}", b64("sb-1:tok"));
        check(&[], Err("missing"));
        check(&[&good], Ok(("sb-1", "tok")));
        check(
            &[&format!("basic  {}", b64("sb-1:tok"))],
            Ok(("sb-1", "tok")),
        );
        check(&[&good, &good], Err("repeated"));
        check(&["Bearer abc"], Err("not basic"));
        check(&["Basic !!!"], Err("malformed"));
        check(&[&format!("Basic {}", b64("nocolon"))], Err("malformed"));
        check(&[&format!("Basic {}", b64(":tok"))], Err("malformed"));
        check(&[&format!("Basic {}", b64("sb:"))], Err("malformed"));
        check(&["Basic"], Err("malformed"));
    }
}
