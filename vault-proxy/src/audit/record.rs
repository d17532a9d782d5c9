//! The audit record and its canonical form.
//!
//! # Canonical form and hash (relied on by `audit verify` and external tools)
//!
//! A line of the log is the compact JSON (no whitespace, as `serde_json`
//! writes it) of an object with exactly these keys, in this order:
//!
//! `seq, ts, sandbox, session, event, host, port, method, path, credential,
//! decision, reason, status, prev, hash`
//!
//! - optional values (`session`, `credential`, `status`) are written as `null`,
//!   never omitted;
//! - strings are escaped as serde_json does: `"` and `\` backslash-escaped,
//!   `\n \r \t \b \f` short forms, other control characters `\u00XX`
//!   (lower-case hex), everything else literal UTF-8 (Python's
//!   `json.dumps(obj, separators=(",", ":"), ensure_ascii=False)` agrees);
//! - `seq`, `port` and `status` are plain integers;
//! - `trace_id` (32 hex digits, the session's trace) stands between `status` and `prev`
//!   only in records of a sandbox whose grant carried a trace; otherwise the key is absent,
//!   so logs written without tracing keep exactly the keys above.
//!
//! The **body** of a record is that same JSON without the `hash` key (so it
//! ends `…,"prev":"<64 hex>"}`). Then
//!
//! `hash = lower-hex( SHA-256( prev ‖ body ) )`
//!
//! where `prev` is the 64 ASCII hex characters of the previous record's hash
//! (64 `0`s for seq 1) and `‖` is concatenation of bytes. Equivalently: take
//! the line, cut the trailing `,"hash":"…"}` and put back `}` to get the body.
//! With `audit_key_env` set, `SHA-256(…)` becomes `HMAC-SHA256(key, prev ‖ body)`
//! (key = the env var's bytes), so only a key holder can produce a valid chain.
//! `seq` starts at 1 and increases by exactly 1 per line. `ts` is RFC 3339 in
//! UTC with milliseconds (`2026-11-23T14:05:09.123Z`).
//!
//! An independent checker (checked against this writer, including escapes
//! and non-ASCII text):
//!
//! ```python
//! import json, hashlib, sys
//! prev = "0" * 64
//! for n, line in enumerate(open(sys.argv[1], encoding="utf-8"), 1):
//!     line = line.rstrip("\n"); rec = json.loads(line); h = rec.pop("hash")
//!     body = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
//!     assert rec["seq"] == n and rec["prev"] == prev, n
//!     assert hashlib.sha256((prev + body).encode()).hexdigest() == h, n
//!     prev = h
//! ```

use std::fmt;
use std::str::FromStr;

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// `prev` of the first record.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Connection / tunnel level decision (CONNECT, proxy auth, destination checks).
    Connect,
    /// A stub was swapped for the real value.
    Swap,
    /// A request was blocked.
    Block,
    /// A real value was scrubbed from a response.
    Scrub,
    /// A request without stubs was let through by the egress policy.
    Allow,
    /// A person (or the timeout) answered an egress `ask`.
    Approval,
}

/// The outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
}

macro_rules! lowercase_enum_text {
    ($ty:ty, $($variant:ident => $text:literal),+) => {
        impl $ty {
            /// The wire spelling.
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!("unknown value `{other}`")),
                }
            }
        }
    };
}

lowercase_enum_text!(EventKind, Connect => "connect", Swap => "swap", Block => "block", Scrub => "scrub", Allow => "allow", Approval => "approval");
lowercase_enum_text!(Decision, Allow => "allow", Deny => "deny");

/// What the proxy reports. The writer adds `seq`, `ts`, `prev`, `hash`, and
/// strips query values from `path`. There is deliberately no field that
/// could hold a secret value or a stub: credentials are named, never shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Sandbox id (empty when the client could not be identified, e.g. a 407).
    pub sandbox: String,
    /// Session id, when the grant carries one.
    pub session: Option<String>,
    /// What the record is about.
    pub event: EventKind,
    /// Destination host (CONNECT authority host).
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// HTTP method (`CONNECT` for tunnel-level records).
    pub method: String,
    /// Request path; the writer keeps query *keys* and drops their values
    /// (`/x?a=1&b=2` → `/x?a=&b=`) and drops any `#fragment`. Callers must not
    /// put stubs into paths or query keys (the pipeline redacts them first).
    pub path: String,
    /// Credential NAME involved (never its value or stub).
    pub credential: Option<String>,
    /// The outcome.
    pub decision: Decision,
    /// Short machine-readable reason, e.g. `credential_not_allowed_for_host`.
    pub reason: String,
    /// HTTP status returned to the sandbox, if any.
    pub status: Option<u16>,
    /// W3C `traceparent` of the session's trace (parsed), when the grant carries one: the
    /// record gets its trace id and the decision becomes a span of that trace
    /// ([`crate::telemetry`]).
    pub traceparent: Option<std::sync::Arc<airlock_telemetry::TraceParent>>,
}

/// One line of the audit log (see the module docs for the canonical form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// 1-based, contiguous.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// Sandbox id.
    pub sandbox: String,
    /// Session id.
    pub session: Option<String>,
    /// Event kind.
    pub event: EventKind,
    /// Destination host.
    pub host: String,
    /// Destination port.
    pub port: u16,
    /// HTTP method.
    pub method: String,
    /// Path with query keys only.
    pub path: String,
    /// Credential name.
    pub credential: Option<String>,
    /// Outcome.
    pub decision: Decision,
    /// Reason code.
    pub reason: String,
    /// HTTP status.
    pub status: Option<u16>,
    /// Trace id of the session's trace (only present when the grant carried one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Hash of the previous record ([`GENESIS_PREV`] for seq 1).
    pub prev: String,
    /// `hex(SHA-256(prev ‖ body))`.
    pub hash: String,
}

/// The record without `hash`, borrowed, in canonical key order.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    prev: &'a str,
}

/// The body's keys before `trace_id`, as [`AuditRecord::write_new_line`] serialises them.
#[derive(Serialize)]
struct Head<'a> {
    seq: u64,
    ts: &'a str,
    sandbox: &'a str,
    session: Option<&'a str>,
    event: EventKind,
    host: &'a str,
    port: u16,
    method: &'a str,
    path: &'a str,
    credential: Option<&'a str>,
    decision: Decision,
    reason: &'a str,
    status: Option<u16>,
}

impl AuditRecord {
    /// The canonical body (JSON without `hash`).
    pub fn canonical_body(&self) -> String {
        // Serialising a struct of strings, integers and unit enums cannot fail.
        serde_json::to_string(&self.body()).unwrap_or_default()
    }

    /// Recomputes the hash from `prev` and the body.
    pub fn compute_hash(&self) -> String {
        chain_hash(&self.prev, &self.canonical_body())
    }

    /// [`AuditRecord::compute_hash`] under `hasher` (plain SHA-256 or the
    /// `audit_key_env` HMAC).
    pub fn compute_hash_with(&self, hasher: &ChainHasher) -> String {
        let digest = hasher.digest(self.prev.as_bytes(), self.canonical_body().as_bytes());
        // Invariant: digest yields ASCII hex digits only.
        String::from_utf8_lossy(&digest).into_owned()
    }

    /// The full canonical line (without the trailing newline).
    pub fn to_line(&self) -> String {
        // Same invariant as canonical_body.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Appends the canonical line (with `hash`, without the newline) of the record `ev`
    /// becomes to `out` and returns the hash: the bytes of [`AuditRecord::to_line`] for that
    /// record, serialised once. The line is the body with `,"hash":"…"` put before its
    /// closing brace (module docs), which is what the writer does for every record.
    ///
    /// The trace id is written from the event's parsed `traceparent`, by hand as
    /// `serde_json` writes it (32 lower-case hex digits need no escaping): no `String` and no
    /// second parse for it, no escape scan of it. Those cost ~1.2k instructions a traced
    /// record beyond the SHA-256 of its bytes (callgrind).
    pub(crate) fn write_new_line(
        seq: u64,
        ts: String,
        prev: String,
        mut ev: AuditEvent,
        out: &mut Vec<u8>,
        hasher: &ChainHasher,
    ) -> [u8; 64] {
        let trace = ev.traceparent.take();
        let rec = AuditRecord::untraced(seq, ts, prev, ev);
        let start = out.len();
        // Serialising a struct of strings, integers and unit enums into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &rec.head());
        out.pop(); // the head's closing `}`
        if let Some(tp) = &trace {
            out.extend_from_slice(b",\"trace_id\":\"");
            out.extend_from_slice(tp.trace_id_hex());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"prev\":");
        let _ = serde_json::to_writer(&mut *out, &rec.prev);
        out.push(b'}');
        let hash = hasher.digest(rec.prev.as_bytes(), &out[start..]);
        out.pop(); // the body's closing `}`
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(&hash);
        out.extend_from_slice(b"\"}");
        hash
    }

    fn body(&self) -> Body<'_> {
        Body {
            head: self.head(),
            trace_id: self.trace_id.as_deref(),
            prev: &self.prev,
        }
    }

    fn head(&self) -> Head<'_> {
        Head {
            seq: self.seq,
            ts: &self.ts,
            sandbox: &self.sandbox,
            session: self.session.as_deref(),
            event: self.event,
            host: &self.host,
            port: self.port,
            method: &self.method,
            path: &self.path,
            credential: self.credential.as_deref(),
            decision: self.decision,
            reason: &self.reason,
            status: self.status,
        }
    }

    /// Builds a record from an event; `hash` is left empty.
    #[cfg(test)]
    pub(crate) fn unsealed(seq: u64, ts: String, prev: String, ev: AuditEvent) -> AuditRecord {
        let trace_id = ev
            .traceparent
            .as_ref()
            .map(|tp| tp.trace_id_str().to_owned());
        AuditRecord {
            trace_id,
            ..AuditRecord::untraced(seq, ts, prev, ev)
        }
    }

    /// [`AuditRecord::unsealed`] without the trace id (`write_new_line` writes it).
    fn untraced(seq: u64, ts: String, prev: String, ev: AuditEvent) -> AuditRecord {
        AuditRecord {
            seq,
            ts,
            sandbox: clip(ev.sandbox, 256),
            session: ev.session.map(|s| clip(s, 256)),
            event: ev.event,
            host: clip(ev.host, 255),
            port: ev.port,
            method: clip(ev.method, 32),
            path: clip(sanitize_path(&ev.path), 2048),
            credential: ev.credential.map(|c| clip(c, 128)),
            decision: ev.decision,
            reason: clip(ev.reason, 512),
            status: ev.status,
            trace_id: None,
            prev,
            hash: String::new(),
        }
    }

    /// Builds a record from an event; `hash` is computed.
    #[cfg(test)]
    pub(crate) fn seal(seq: u64, ts: String, prev: String, ev: AuditEvent) -> AuditRecord {
        let mut r = AuditRecord::unsealed(seq, ts, prev, ev);
        r.hash = r.compute_hash();
        r
    }
}

/// `hex(SHA-256(prev ‖ body))`.
pub fn chain_hash(prev: &str, body: &str) -> String {
    let digest = chain_digest(prev.as_bytes(), body.as_bytes());
    // Invariant: chain_digest yields ASCII hex digits only.
    String::from_utf8_lossy(&digest).into_owned()
}

/// [`chain_hash`] as 64 ASCII hex bytes, without allocating (the writer's per-record path).
/// How the chain's `hash` is computed: plain SHA-256, or HMAC-SHA256 under
/// the `audit_key_env` key. With a key, a log rewritten and re-hashed by
/// someone without the key no longer verifies.
#[derive(Clone, Default)]
pub enum ChainHasher {
    /// `hash = hex(SHA-256(prev ‖ body))`.
    #[default]
    Sha256,
    /// `hash = hex(HMAC-SHA256(key, prev ‖ body))`.
    Hmac(ring::hmac::Key),
}

impl std::fmt::Debug for ChainHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str(match self {
            ChainHasher::Sha256 => "ChainHasher::Sha256",
            ChainHasher::Hmac(_) => "ChainHasher::Hmac(..)",
        })
    }
}

impl ChainHasher {
    /// An HMAC-SHA256 chain under `key` (the raw bytes of the env var's value).
    pub fn hmac(key: &[u8]) -> ChainHasher {
        ChainHasher::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key))
    }

    /// The chain hash of `body` after `prev`, as 64 lower-case hex digits.
    pub fn digest(&self, prev: &[u8], body: &[u8]) -> [u8; 64] {
        match self {
            ChainHasher::Sha256 => chain_digest(prev, body),
            ChainHasher::Hmac(key) => {
                let mut ctx = ring::hmac::Context::with_key(key);
                ctx.update(prev);
                ctx.update(body);
                let mut hex = [0u8; 64];
                // An HMAC-SHA256 tag is 32 bytes: exactly 64 hex digits.
                let _ = hex::encode_to_slice(ctx.sign().as_ref(), &mut hex);
                hex
            }
        }
    }
}

fn chain_digest(prev: &[u8], body: &[u8]) -> [u8; 64] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(prev);
    ctx.update(body);
    let mut hex = [0u8; 64];
    // A SHA-256 digest is 32 bytes: exactly 64 hex digits, so this cannot fail.
    let _ = hex::encode_to_slice(ctx.finish().as_ref(), &mut hex);
    hex
}

/// Keeps the path and the query *keys*, drops query values and fragments:
/// `/x?a=1&b=2#f` → `/x?a=&b=`, `/x?flag&k=v` → `/x?flag&k=`.
pub fn sanitize_path(path: &str) -> String {
    let path = path.split_once('#').map_or(path, |(p, _)| p);
    match path.split_once('?') {
        None => path.to_string(),
        Some((p, query)) => {
            let keys: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) => format!("{k}="),
                    None => pair.to_string(),
                })
                .collect();
            format!("{p}?{}", keys.join("&"))
        }
    }
}

/// Truncates to at most `max` bytes on a char boundary.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
