//! SigV4 primitives on `ring`: canonical request, string to sign, signing key,
//! chunk signatures. Written from AWS's "Create a signed AWS API request"
//! (IAM user guide, `reference_sigv-create-signed-request`) and the S3 API
//! reference ("Signature Calculations for the Authorization Header",
//! "Authenticating Requests: Using Query Parameters", "Signature Calculation:
//! Transfer Payload in Multiple Chunks"), and checked against the published
//! aws-sig-v4-test-suite vectors (see `tests.rs`).
//!
//! Nothing here knows about stubs or grants: the same code signs with a stub
//! secret (to verify the sandbox's signature) and with the real one.

use http::HeaderMap;
use ring::{digest, hmac};
use zeroize::Zeroizing;

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Hex SHA-256 of the empty string.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Lower-hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// `date/region/service/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialScope {
    /// `YYYYMMDD`.
    pub date: String,
    /// e.g. `us-east-1`.
    pub region: String,
    /// e.g. `s3`.
    pub service: String,
}

impl CredentialScope {
    /// Parses `date/region/service/aws4_request` (the part after the key id).
    pub fn parse(s: &str) -> Option<CredentialScope> {
        let mut it = s.split('/');
        let (date, region, service, term) = (it.next()?, it.next()?, it.next()?, it.next()?);
        let ok = it.next().is_none()
            && term == "aws4_request"
            && date.len() == 8
            && date.bytes().all(|b| b.is_ascii_digit())
            && !region.is_empty()
            && !service.is_empty()
            && region
                .bytes()
                .chain(service.bytes())
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        ok.then(|| CredentialScope {
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        })
    }

    /// The scope string.
    pub fn as_string(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }

    /// S3 signs the path as sent (no second encoding, no normalisation).
    pub fn is_s3(&self) -> bool {
        matches!(
            self.service.as_str(),
            "s3" | "s3express" | "s3-object-lambda" | "s3-outposts"
        )
    }
}

/// The derived key `kSigning` for one secret and scope.
pub struct SigningKey(hmac::Key);

fn hmac_raw(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(tag.as_ref());
    out
}

impl SigningKey {
    /// `HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request")`.
    pub fn derive(secret: &str, scope: &CredentialScope) -> SigningKey {
        let mut k0 = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
        k0.extend_from_slice(b"AWS4");
        k0.extend_from_slice(secret.as_bytes());
        let k_date = hmac_raw(&k0, scope.date.as_bytes());
        let k_region = hmac_raw(&*k_date, scope.region.as_bytes());
        let k_service = hmac_raw(&*k_region, scope.service.as_bytes());
        let k_signing = hmac_raw(&*k_service, b"aws4_request");
        SigningKey(hmac::Key::new(hmac::HMAC_SHA256, &*k_signing))
    }

    /// Lower-hex signature of `string_to_sign`.
    pub fn sign(&self, string_to_sign: &str) -> String {
        hex::encode(hmac::sign(&self.0, string_to_sign.as_bytes()))
    }

    /// Constant-time check of a lower- or upper-hex signature.
    pub fn verify(&self, string_to_sign: &str, signature_hex: &str) -> bool {
        match hex::decode(signature_hex) {
            Ok(sig) if sig.len() == 32 => {
                hmac::verify(&self.0, string_to_sign.as_bytes(), &sig).is_ok()
            }
            _ => false,
        }
    }
}

/// `AWS4-HMAC-SHA256\n<amz_date>\n<scope>\n<hex(sha256(canonical))>`.
pub fn string_to_sign(amz_date: &str, scope: &CredentialScope, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        scope.as_string(),
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The string to sign of one aws-chunked chunk (S3 "Transfer Payload in
/// Multiple Chunks"): the previous signature chains the chunks.
pub fn chunk_string_to_sign(
    amz_date: &str,
    scope: &str,
    previous_signature: &str,
    chunk_sha256_hex: &str,
) -> String {
    format!(
        "AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous_signature}\n{EMPTY_SHA256}\n{chunk_sha256_hex}"
    )
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 15) as usize] as char);
}

/// RFC 3986 encoding as SigV4 wants it: unreserved bytes kept, everything
/// else `%XX` (upper-case); `/` kept when `keep_slash`.
pub fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            push_pct(&mut out, b);
        }
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes (`+` stays `+`: SigV4 clients encode spaces as `%20`).
pub fn uri_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Removes `.`/`..` and empty segments (what SDKs do for every service but S3).
fn normalize_path(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (path.ends_with('/') && !segs.is_empty()) {
        out.push('/');
    }
    out
}

/// The canonical URI of the path as it goes on the wire. S3 signs it
/// encoded once (existing `%XX` escapes kept, anything else encoded); every
/// other service normalises it and encodes it again (`%` → `%25`).
pub fn canonical_uri(wire_path: &str, scope: &CredentialScope) -> String {
    let path = if wire_path.is_empty() { "/" } else { wire_path };
    if scope.is_s3() {
        let b = path.as_bytes();
        let mut out = String::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && i + 2 < b.len()
                && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
            {
                push_pct(&mut out, h << 4 | l);
                i += 3;
                continue;
            }
            if is_unreserved(b[i]) || b[i] == b'/' {
                out.push(b[i] as char);
            } else {
                push_pct(&mut out, b[i]);
            }
            i += 1;
        }
        out
    } else {
        uri_encode(normalize_path(path).as_bytes(), true)
    }
}

/// The canonical query string: pairs decoded, re-encoded, sorted by name then
/// value; `skip` names (case-sensitive) are left out (`X-Amz-Signature`).
pub fn canonical_query(raw_query: &str, skip: &[&str]) -> String {
    let mut pairs: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let k = uri_encode(&uri_decode(k), false);
            if skip.contains(&k.as_str()) {
                return None;
            }
            Some((k, uri_encode(&uri_decode(v), false)))
        })
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(raw_query.len() + 8);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Trims and collapses runs of spaces (the canonical form of a header value).
fn push_trimmed(out: &mut String, v: &str) {
    let mut space = false;
    let mut started = false;
    for c in v.trim().chars() {
        if c == ' ' || c == '\t' {
            space = true;
            continue;
        }
        if space && started {
            out.push(' ');
        }
        space = false;
        started = true;
        out.push(c);
    }
}

/// Why a canonical request could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanonicalError {
    /// A signed header is not in the request.
    MissingSignedHeader,
    /// A signed header's value is not visible ASCII/UTF-8.
    BadHeaderValue,
}

/// Everything a canonical request is made of.
pub struct RequestToSign<'a> {
    /// `GET`, `PUT`, …
    pub method: &'a str,
    /// The path as on the wire.
    pub path: &'a str,
    /// The raw query (without `?`), or "".
    pub query: &'a str,
    /// Headers; `host` falls back to `host_fallback` when absent (HTTP/2).
    pub headers: &'a HeaderMap,
    /// Value used for a signed `host` the headers lack.
    pub host_fallback: &'a str,
    /// Lower-case signed header names, sorted.
    pub signed_headers: &'a [String],
    /// The payload hash line (hex, `UNSIGNED-PAYLOAD`, `STREAMING-…`).
    pub payload_hash: &'a str,
    /// Query names left out of the canonical query.
    pub skip_query: &'a [&'a str],
}

/// Builds the canonical request.
pub fn canonical_request(
    r: &RequestToSign<'_>,
    scope: &CredentialScope,
) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256);
    out.push_str(r.method);
    out.push('\n');
    out.push_str(&canonical_uri(r.path, scope));
    out.push('\n');
    out.push_str(&canonical_query(r.query, r.skip_query));
    out.push('\n');
    for name in r.signed_headers {
        out.push_str(name);
        out.push(':');
        let mut any = false;
        for (i, v) in r.headers.get_all(name.as_str()).iter().enumerate() {
            let v = v.to_str().map_err(|_| CanonicalError::BadHeaderValue)?;
            if i > 0 {
                out.push(',');
            }
            push_trimmed(&mut out, v);
            any = true;
        }
        if !any {
            if name == "host" && !r.host_fallback.is_empty() {
                out.push_str(r.host_fallback);
            } else {
                return Err(CanonicalError::MissingSignedHeader);
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&r.signed_headers.join(";"));
    out.push('\n');
    out.push_str(r.payload_hash);
    Ok(out)
}
