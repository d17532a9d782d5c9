//! Rule 4 (detection): find every known stub — of *any* sandbox — in a
//! request. Surfaces: header names and values (and the decoded user:pass of
//! `Basic` credentials, as git sends `x-access-token:<stub>`), the URL path
//! and query (raw and percent-decoded), and the body when asked.

use std::sync::Arc;

use base64::Engine;
use http::request::Parts;

use crate::config::SwapSurface;
use crate::grants::{StubIndex, StubOwner};

/// One stub occurrence (deduplicated per owner and surface).
#[derive(Debug, Clone)]
pub struct FoundStub {
    /// Whose stub it is.
    pub owner: Arc<StubOwner>,
    /// Where it was.
    pub surface: SwapSurface,
}

fn push(out: &mut Vec<FoundStub>, owner: &Arc<StubOwner>, surface: SwapSurface) {
    if !out
        .iter()
        .any(|f| Arc::ptr_eq(&f.owner, owner) && f.surface == surface)
    {
        out.push(FoundStub {
            owner: owner.clone(),
            surface,
        });
    }
}

fn scan(index: &StubIndex, hay: &[u8], surface: SwapSurface, out: &mut Vec<FoundStub>) {
    for (_, owner) in index.find_all(hay) {
        push(out, owner, surface);
    }
}

/// Decodes the credentials of a `Basic` authorization value, if it is one.
pub fn basic_decoded(value: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
}

/// Stubs in the request head (headers and URL). `proxy-authorization` is
/// the proxy's own credential and is not scanned (it is stripped before
/// forwarding).
pub fn find_in_head(index: &StubIndex, parts: &Parts) -> Vec<FoundStub> {
    let mut out = Vec::new();
    if index.max_len() == 0 {
        return out;
    }
    for (name, value) in &parts.headers {
        if name == http::header::PROXY_AUTHORIZATION {
            continue;
        }
        scan(
            index,
            name.as_str().as_bytes(),
            SwapSurface::Header,
            &mut out,
        );
        scan(index, value.as_bytes(), SwapSurface::Header, &mut out);
        if let Some(dec) = basic_decoded(value.as_bytes()) {
            scan(index, &dec, SwapSurface::Header, &mut out);
        }
    }
    if let Some(pq) = parts.uri.path_and_query() {
        let raw = pq.as_str().as_bytes();
        scan(index, raw, SwapSurface::Query, &mut out);
        // Without a `%` the decoded form is the raw one: skip the copy.
        if raw.contains(&b'%') {
            let dec: Vec<u8> = percent_encoding::percent_decode(raw).collect();
            scan(index, &dec, SwapSurface::Query, &mut out);
        }
    }
    if let Some(a) = parts.uri.authority() {
        scan(index, a.as_str().as_bytes(), SwapSurface::Query, &mut out);
    }
    out
}

/// Stubs in a (buffered) body.
pub fn find_in_body(index: &StubIndex, body: &[u8]) -> Vec<FoundStub> {
    let mut out = Vec::new();
    scan(index, body, SwapSurface::Body, &mut out);
    // A form- or URL-encoded body may carry the stub percent-encoded.
    if body.contains(&b'%') {
        let dec: Vec<u8> = percent_encoding::percent_decode(body).collect();
        scan(index, &dec, SwapSurface::Body, &mut out);
    }
    out
}

#[cfg(test)]
mod tests;
