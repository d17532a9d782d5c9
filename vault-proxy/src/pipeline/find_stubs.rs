//! Rule 4 (detection): find every known stub — of *any* sandbox — everywhere
//! in a request, and say where each occurrence stands.
//!
//! Every surface is counted: the method, header names and values (and the
//! decoded user:pass of `Basic` credentials, as git sends
//! `x-access-token:<stub>`), the path and query (raw and percent-decoded),
//! an absolute-form authority, and the body (raw, percent-decoded, and the
//! decoded strings of a JSON body). Separately, occurrences standing exactly
//! at a recognisable position are recorded as [`Position`]s. An owner whose
//! `count` exceeds its `sites` has an occurrence somewhere no position
//! covers, and `swap_or_block` refuses it.
//!
//! Cost when no stub is present: one Aho-Corasick scan per surface, no
//! allocation (a percent-decoded copy only for a target or body holding `%`).

use std::sync::Arc;

use base64::Engine;
use http::request::Parts;

use crate::config::Position;
use crate::grants::{StubIndex, StubOwner};

/// One owner's stub occurrences in a request.
#[derive(Debug, Clone)]
pub struct FoundStub {
    /// Whose stub it is.
    pub owner: Arc<StubOwner>,
    /// Occurrences anywhere in the request.
    pub count: usize,
    /// The occurrences standing exactly at a position (one entry each).
    pub sites: Vec<Position>,
    /// The first surface holding an occurrence at no position (audit detail).
    pub stray: Option<&'static str>,
}

fn entry<'a>(out: &'a mut Vec<FoundStub>, owner: &Arc<StubOwner>) -> &'a mut FoundStub {
    let i = match out.iter().position(|f| Arc::ptr_eq(&f.owner, owner)) {
        Some(i) => i,
        None => {
            out.push(FoundStub {
                owner: owner.clone(),
                count: 0,
                sites: Vec::new(),
                stray: None,
            });
            out.len() - 1
        }
    };
    &mut out[i]
}

/// Adds one surface's occurrences: for each owner, the largest count over
/// the given views of the surface (raw, decoded, …: one occurrence shows in
/// several views, and a view may hide one another shows).
fn add_counts(index: &StubIndex, views: &[&[u8]], surface: &'static str, out: &mut Vec<FoundStub>) {
    add_counts_at(index, views, Some(surface), out)
}

/// Counts of the entries before a surface's sites are added (see [`settle`]).
fn snapshot(out: &[FoundStub]) -> Vec<(usize, usize)> {
    out.iter().map(|f| (f.count, f.sites.len())).collect()
}

/// Marks `surface` as stray for every owner that gained more occurrences
/// than sites since `before`.
fn settle(out: &mut [FoundStub], before: &[(usize, usize)], surface: &'static str) {
    for (i, f) in out.iter_mut().enumerate() {
        let (c0, s0) = before.get(i).copied().unwrap_or((0, 0));
        if f.count - c0 > f.sites.len() - s0 && f.stray.is_none() {
            f.stray = Some(surface);
        }
    }
}

/// `surface`: mark every owner found as stray there (a surface with no positions).
fn add_counts_at(
    index: &StubIndex,
    views: &[&[u8]],
    surface: Option<&'static str>,
    out: &mut Vec<FoundStub>,
) {
    let mut per: Vec<(Arc<StubOwner>, usize)> = Vec::new();
    for hay in views {
        if !index.contains_any(hay) {
            continue;
        }
        let mut this: Vec<(Arc<StubOwner>, usize)> = Vec::new();
        for (_, owner) in index.find_all(hay) {
            match this.iter_mut().find(|(o, _)| Arc::ptr_eq(o, owner)) {
                Some((_, n)) => *n += 1,
                None => this.push((owner.clone(), 1)),
            }
        }
        for (o, n) in this {
            match per.iter_mut().find(|(p, _)| Arc::ptr_eq(p, &o)) {
                Some((_, m)) => *m = (*m).max(n),
                None => per.push((o, n)),
            }
        }
    }
    for (o, n) in per {
        let e = entry(out, &o);
        e.count += n;
        if e.stray.is_none() {
            e.stray = surface;
        }
    }
}

fn add_site(out: &mut Vec<FoundStub>, owner: &Arc<StubOwner>, p: Position) {
    entry(out, owner).sites.push(p);
}

/// The owner whose stub is exactly `v`, if any.
fn exact(index: &StubIndex, v: &[u8]) -> Option<Arc<StubOwner>> {
    if v.is_empty() || v.len() > index.max_len() {
        return None;
    }
    let mut it = index.find_all(v);
    let (r, owner) = it.next()?;
    (r.start == 0 && r.end == v.len()).then(|| owner.clone())
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

/// The token after a `Bearer` or `token` scheme.
fn scheme_token(value: &[u8]) -> Option<&[u8]> {
    let sp = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = (&value[..sp], &value[sp + 1..]);
    (scheme.eq_ignore_ascii_case(b"bearer") || scheme.eq_ignore_ascii_case(b"token"))
        .then_some(rest)
}

fn decode_form_component(s: &[u8]) -> Vec<u8> {
    let plus: Vec<u8> = s
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_encoding::percent_decode(&plus).collect()
}

/// Stubs in the request head: method, headers, target, authority.
/// `proxy-authorization` is the proxy's own credential and is not scanned
/// (it is stripped before forwarding).
pub fn find_in_head(index: &StubIndex, parts: &Parts) -> Vec<FoundStub> {
    let mut out = Vec::new();
    if index.max_len() == 0 {
        return out;
    }
    add_counts(
        index,
        &[parts.method.as_str().as_bytes()],
        "method",
        &mut out,
    );
    for (name, value) in &parts.headers {
        if name == http::header::PROXY_AUTHORIZATION {
            continue;
        }
        let v = value.as_bytes();
        add_counts(index, &[name.as_str().as_bytes()], "header_name", &mut out);
        let basic = basic_decoded(v);
        let raw_hit = index.contains_any(v);
        let basic_hit = basic.as_deref().is_some_and(|d| index.contains_any(d));
        if !raw_hit && !basic_hit {
            continue;
        }
        // Raw and decoded Basic are different bytes on the wire: both count.
        let before = snapshot(&out);
        add_counts_at(index, &[v], None, &mut out);
        if let Some(d) = &basic {
            add_counts_at(index, &[d], None, &mut out);
        }
        let pos = || Position::Header(name.as_str().to_string());
        if let Some(o) = exact(index, v) {
            add_site(&mut out, &o, pos());
        } else if let Some(o) = scheme_token(v).and_then(|t| exact(index, t)) {
            add_site(&mut out, &o, pos());
        } else if let Some(d) = &basic {
            let (user, pass) = match d.iter().position(|b| *b == b':') {
                Some(i) => (&d[..i], &d[i + 1..]),
                None => (&d[..], &[][..]),
            };
            for part in [user, pass] {
                if let Some(o) = exact(index, part) {
                    add_site(&mut out, &o, pos());
                }
            }
        }
        settle(&mut out, &before, "header");
    }
    if let Some(a) = parts.uri.authority() {
        add_counts(index, &[a.as_str().as_bytes()], "authority", &mut out);
    }
    if let Some(pq) = parts.uri.path_and_query() {
        find_in_target(index, pq.path(), pq.query(), &mut out);
    }
    out
}

fn find_in_target(index: &StubIndex, path: &str, query: Option<&str>, out: &mut Vec<FoundStub>) {
    for (surface, s) in [("path", Some(path)), ("query", query)] {
        let Some(s) = s else { continue };
        let raw = s.as_bytes();
        // Without a `%` the decoded form is the raw one: skip the copy.
        let dec: Option<Vec<u8>> = raw
            .contains(&b'%')
            .then(|| percent_encoding::percent_decode(raw).collect());
        let hit = index.contains_any(raw) || dec.as_deref().is_some_and(|d| index.contains_any(d));
        if !hit {
            continue;
        }
        let before = snapshot(out);
        match &dec {
            Some(d) => add_counts_at(index, &[raw, d], None, out),
            None => add_counts_at(index, &[raw], None, out),
        }
        if surface == "path" {
            for seg in s.split('/') {
                let d: Vec<u8> = percent_encoding::percent_decode(seg.as_bytes()).collect();
                if let Some(o) = exact(index, &d) {
                    add_site(out, &o, Position::Path);
                }
            }
        } else {
            for pair in s.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = decode_form_component(v.as_bytes());
                if let Some(o) = exact(index, &v) {
                    let k =
                        String::from_utf8_lossy(&decode_form_component(k.as_bytes())).into_owned();
                    add_site(out, &o, Position::Query(k));
                }
            }
        }
        settle(out, &before, surface);
    }
}

/// Whether a body may hold a stub worth a closer look (raw, or percent-encoded).
pub fn body_may_hold_stub(index: &StubIndex, body: &[u8]) -> bool {
    if index.max_len() == 0 {
        return false;
    }
    if index.contains_any(body) {
        return true;
    }
    body.contains(&b'%') && {
        let dec: Vec<u8> = percent_encoding::percent_decode(body).collect();
        index.contains_any(&dec)
    }
}

/// What kind of body a `content-type` announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json` or `*/*+json`.
    Json,
    /// Anything else.
    Other,
}

impl BodyKind {
    /// From the request headers.
    pub fn of(headers: &http::HeaderMap) -> BodyKind {
        let Some(ct) = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return BodyKind::Other;
        };
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else if mime == "application/json" || mime.ends_with("+json") {
            BodyKind::Json
        } else {
            BodyKind::Other
        }
    }
}

/// Stubs in a buffered body, added to `out`.
pub fn find_in_body(index: &StubIndex, kind: BodyKind, body: &[u8], out: &mut Vec<FoundStub>) {
    if !body_may_hold_stub(index, body) {
        return;
    }
    let dec: Vec<u8> = if body.contains(&b'%') || body.contains(&b'+') {
        decode_form_component(body)
    } else {
        Vec::new()
    };
    let mut json_strings: Vec<u8> = Vec::new();
    let json = if kind == BodyKind::Json {
        serde_json::from_slice::<serde_json::Value>(body).ok()
    } else {
        None
    };
    if let Some(v) = &json {
        // Every decoded string (keys too), NUL-separated: `\u`-escaped stubs show here.
        collect_strings(v, &mut json_strings);
    }
    let mut views: Vec<&[u8]> = vec![body];
    if !dec.is_empty() {
        views.push(&dec);
    }
    if !json_strings.is_empty() {
        views.push(&json_strings);
    }
    let before = snapshot(out);
    add_counts_at(index, &views, None, out);
    match (kind, &json) {
        (BodyKind::Form, _) => {
            for pair in body.split(|b| *b == b'&') {
                let (k, v) = match pair.iter().position(|b| *b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &[][..]),
                };
                let v = decode_form_component(v);
                if let Some(o) = exact(index, &v) {
                    let k = String::from_utf8_lossy(&decode_form_component(k)).into_owned();
                    add_site(out, &o, Position::Form(k));
                }
            }
        }
        (BodyKind::Json, Some(v)) => {
            let mut ptr = String::new();
            json_sites(index, v, &mut ptr, out);
        }
        _ => {}
    }
    settle(out, &before, "body");
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::String(s) => {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                out.extend_from_slice(k.as_bytes());
                out.push(0);
                collect_strings(x, out);
            }
        }
        _ => {}
    }
}

fn json_sites(
    index: &StubIndex,
    v: &serde_json::Value,
    ptr: &mut String,
    out: &mut Vec<FoundStub>,
) {
    match v {
        serde_json::Value::String(s) => {
            if let Some(o) = exact(index, s.as_bytes()) {
                add_site(out, &o, Position::Json(ptr.clone()));
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&i.to_string());
                json_sites(index, x, ptr, out);
                ptr.truncate(len);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&k.replace('~', "~0").replace('/', "~1"));
                json_sites(index, x, ptr, out);
                ptr.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
