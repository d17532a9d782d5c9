//! Rule 4 (decision) and rule 6: a stub of *this* grant going over TLS to a
//! host in its credential's `allowed_hosts`, in a surface the credential opts
//! into, is swapped for the real value. Any other stub blocks the request.
//! A request with no stub follows `egress`.

use bytes::Bytes;
use http::HeaderValue;
use http::request::Parts;

use super::find_stubs::{FoundStub, basic_decoded};
use super::{PinnedDest, Scheme};
use crate::config::{EgressConfig, SwapSurface};
use crate::deny::Deny;
use crate::grants::Grant;

/// Decides what to do with the stubs found in a request. Returns the names
/// of this grant's credentials to swap (sorted, deduplicated).
pub fn decide(grant: &Grant, dest: &PinnedDest, found: &[FoundStub]) -> Result<Vec<String>, Deny> {
    let mut swaps: Vec<String> = Vec::new();
    for f in found {
        let name = f.owner.credential.clone();
        let block = |reason| Deny::Credential {
            credential: Some(name.clone()),
            reason,
        };
        if f.owner.grant_id != grant.id {
            return Err(block(if f.owner.sandbox == grant.sandbox {
                "revoked_stub"
            } else {
                "foreign_stub"
            }));
        }
        if grant.is_revoked() {
            return Err(Deny::Revoked);
        }
        let Some(cred) = grant.credential(&name) else {
            return Err(block("unknown_credential"));
        };
        if dest.scheme() != Scheme::Https {
            return Err(block("plain_http"));
        }
        if dest.is_ip_literal() {
            return Err(block("ip_literal"));
        }
        if !cred.allowed_hosts.iter().any(|p| p.matches(dest.host())) {
            return Err(block("unbound_host"));
        }
        if !cred.swap_in.allows(f.surface) {
            return Err(block(match f.surface {
                SwapSurface::Header => "surface_not_allowed: header",
                SwapSurface::Query => "surface_not_allowed: query",
                SwapSurface::Body => "surface_not_allowed: body",
            }));
        }
        if !swaps.contains(&name) {
            swaps.push(name);
        }
    }
    swaps.sort();
    Ok(swaps)
}

/// Rule 6: a request with no stub goes only where `egress` allows.
pub fn egress(cfg: &EgressConfig, dest: &PinnedDest) -> Result<(), Deny> {
    if cfg.allows(dest.host()) {
        Ok(())
    } else {
        Err(Deny::Egress)
    }
}

/// Replaces every occurrence of `from` with `to` in `hay`.
pub fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    if from.is_empty() || hay.len() < from.len() {
        return None;
    }
    let finder = memchr::memmem::Finder::new(from);
    let first = finder.find(hay)?;
    let mut out = Vec::with_capacity(hay.len() + to.len());
    out.extend_from_slice(&hay[..first]);
    out.extend_from_slice(to);
    let mut pos = first + from.len();
    while let Some(i) = finder.find(&hay[pos..]) {
        out.extend_from_slice(&hay[pos..pos + i]);
        out.extend_from_slice(to);
        pos += i + from.len();
    }
    out.extend_from_slice(&hay[pos..]);
    Some(out)
}

/// The (stub, real value) pairs of `names` in `grant`.
fn pairs<'a>(
    grant: &'a Grant,
    names: &'a [String],
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    names.iter().filter_map(move |n| {
        let stub = grant.stub_for(n)?;
        let cred = grant.credential(n)?;
        Some((stub, cred.value.expose()))
    })
}

/// Swaps the decided stubs into real values in headers (and inside `Basic`
/// credentials) and in the URL, per each credential's `swap_in`.
pub fn apply_to_head(grant: &Grant, names: &[String], parts: &mut Parts) -> Result<(), Deny> {
    for (stub, real) in pairs(grant, names) {
        let (s, r) = (stub.as_bytes(), real.as_bytes());
        for value in parts.headers.values_mut() {
            let mut new = replace_bytes(value.as_bytes(), s, r);
            if new.is_none()
                && let Some(dec) = basic_decoded(value.as_bytes())
                && let Some(swapped) = replace_bytes(&dec, s, r)
            {
                let enc =
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &swapped);
                new = Some(format!("Basic {enc}").into_bytes());
            }
            if let Some(bytes) = new {
                let mut v = HeaderValue::from_bytes(&bytes)
                    .map_err(|_| Deny::BadRequest("secret not valid in a header"))?;
                v.set_sensitive(true);
                *value = v;
            }
        }
        if let Some(pq) = parts.uri.path_and_query()
            && let Some(new) = replace_bytes(pq.as_str().as_bytes(), s, r)
        {
            let new = String::from_utf8(new)
                .map_err(|_| Deny::BadRequest("secret not valid in a URL"))?;
            let mut up = std::mem::take(&mut parts.uri).into_parts();
            up.path_and_query = Some(
                new.parse()
                    .map_err(|_| Deny::BadRequest("secret not valid in a URL"))?,
            );
            parts.uri = http::Uri::from_parts(up)
                .map_err(|_| Deny::BadRequest("secret not valid in a URL"))?;
        }
    }
    Ok(())
}

/// Swaps the decided stubs of body-opted credentials in a buffered body.
pub fn apply_to_body(grant: &Grant, names: &[String], body: Bytes) -> Bytes {
    let mut cur = body;
    for (stub, real) in pairs(grant, names) {
        if let Some(new) = replace_bytes(&cur, stub.as_bytes(), real.as_bytes()) {
            cur = Bytes::from(new);
        }
    }
    cur
}

#[cfg(test)]
mod tests;
