//! Rule 4 (decision) and rule 6: a stub of *this* grant is swapped for the
//! real value only when all hold: TLS, a bound `host:port`, the path and
//! method in the credential's scope, and every occurrence at one of its
//! `positions`. Any other stub blocks the request; a request with no stub
//! follows `egress`.

use bytes::Bytes;
use http::HeaderValue;
use http::request::Parts;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::find_stubs::{BodyKind, FoundStub, basic_decoded};
use super::{PinnedDest, Scheme};
use crate::config::{EgressConfig, Position};
use crate::credentials::MintedSwaps;
use crate::deny::Deny;
use crate::grants::Grant;

/// Characters percent-encoded when a real value goes into a URL or form
/// field: everything but RFC 3986 unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The request facts a decision needs besides the stubs.
pub struct RequestFacts<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The raw path (no query).
    pub path: &'a str,
}

fn position_kind(p: &Position) -> &'static str {
    // Only the kind goes into reasons: names are the client's text and may carry anything.
    match p {
        Position::Header(_) => "header",
        Position::Query(_) => "query",
        Position::Path => "path",
        Position::Form(_) => "form",
        Position::Json(_) => "json",
    }
}

/// Decides what to do with the stubs found in a request. Returns the names
/// of this grant's credentials to swap (sorted, deduplicated).
pub fn decide(
    grant: &Grant,
    dest: &PinnedDest,
    req: &RequestFacts<'_>,
    found: &[FoundStub],
) -> Result<Vec<String>, Deny> {
    let mut swaps: Vec<String> = Vec::new();
    // Host-level refusals first (whoever's stub), then scope, then positions.
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
        if !cred
            .allowed_hosts
            .iter()
            .any(|p| p.matches_dest(dest.host(), dest.port()))
        {
            return Err(block("unbound_host"));
        }
    }
    for f in found {
        let name = &f.owner.credential;
        let Some(cred) = grant.credential(name) else {
            continue;
        };
        let scope = &cred.scope;
        let deny = |reason: String| Deny::Scope {
            credential: name.clone(),
            reason,
        };
        // TRACE echoes the request (real value included) back: never with a stub.
        if req.method.eq_ignore_ascii_case("TRACE") || !scope.allows_method(req.method) {
            return Err(deny(format!(
                "method_not_allowed: {}",
                if req.method.len() <= 16 && req.method.bytes().all(|b| b.is_ascii_alphabetic()) {
                    req.method
                } else {
                    "other"
                }
            )));
        }
        if !scope.allows_path(req.path) {
            return Err(deny("path_not_allowed".into()));
        }
    }
    for f in found {
        let name = &f.owner.credential;
        let Some(cred) = grant.credential(name) else {
            continue;
        };
        let deny = |reason: String| Deny::Position {
            credential: name.clone(),
            reason,
        };
        if let Some(p) = f.sites.iter().find(|p| !cred.scope.allows(p)) {
            return Err(deny(format!("position_not_allowed: {}", position_kind(p))));
        }
        if f.count > f.sites.len() {
            return Err(deny(format!(
                "stub_outside_positions: {}",
                f.stray.unwrap_or("request")
            )));
        }
        if !swaps.contains(name) {
            swaps.push(name.clone());
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

/// The (stub, real value) pairs of `names` in `grant`. A minted credential's real
/// value is its current token from `minted`, never its long-lived secret.
fn pairs<'a>(
    grant: &'a Grant,
    names: &'a [String],
    minted: &'a MintedSwaps,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    names.iter().filter_map(move |n| {
        let stub = grant.stub_for(n)?;
        let cred = grant.credential(n)?;
        match &cred.minter {
            None => Some((stub, cred.value.expose())),
            Some(_) => Some((stub, minted.value_for(n)?)),
        }
    })
}

/// Swaps the decided stubs into real values in headers (and inside `Basic`
/// credentials) and in the URL (percent-encoded). `decide` has checked that
/// every occurrence stands at an allowed position.
pub fn apply_to_head(grant: &Grant, names: &[String], parts: &mut Parts) -> Result<(), Deny> {
    apply_to_head_minted(grant, names, &MintedSwaps::NONE, parts)
}

/// [`apply_to_head`] with the current tokens of minted credentials.
pub fn apply_to_head_minted(
    grant: &Grant,
    names: &[String],
    minted: &MintedSwaps,
    parts: &mut Parts,
) -> Result<(), Deny> {
    for (stub, real) in pairs(grant, names, minted) {
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
        let r_url = utf8_percent_encode(real, COMPONENT).to_string();
        if let Some(pq) = parts.uri.path_and_query()
            && let Some(new) = replace_bytes(pq.as_str().as_bytes(), s, r_url.as_bytes())
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

/// Swaps the decided stubs in a buffered body, encoded for its kind (a form
/// field is percent-encoded, a JSON string escaped).
pub fn apply_to_body(grant: &Grant, names: &[String], kind: BodyKind, body: Bytes) -> Bytes {
    apply_to_body_minted(grant, names, &MintedSwaps::NONE, kind, body)
}

/// [`apply_to_body`] with the current tokens of minted credentials.
pub fn apply_to_body_minted(
    grant: &Grant,
    names: &[String],
    minted: &MintedSwaps,
    kind: BodyKind,
    body: Bytes,
) -> Bytes {
    let mut cur = body;
    for (stub, real) in pairs(grant, names, minted) {
        let enc = match kind {
            BodyKind::Form => utf8_percent_encode(real, COMPONENT).to_string(),
            BodyKind::Json => {
                let q = serde_json::to_string(real).unwrap_or_default();
                q[1..q.len().saturating_sub(1).max(1)].to_string()
            }
            BodyKind::Other => real.to_string(),
        };
        if let Some(new) = replace_bytes(&cur, stub.as_bytes(), enc.as_bytes()) {
            cur = Bytes::from(new);
        }
    }
    cur
}

#[cfg(test)]
mod tests;
