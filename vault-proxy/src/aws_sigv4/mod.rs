//! `type: aws_sigv4` credentials (DESIGN.md, "Contract: vault proxy", rule 4).
//!
//! The sandbox holds a stub key pair (`AKIA…` + a 40-character secret, random
//! per grant) and signs with it as any SDK does. For a request carrying this
//! grant's stub access key id the proxy:
//!
//! 1. [`verify`]s that the request is signed by *this sandbox's* stub pair:
//!    the canonical request rebuilt from what it received, the signed
//!    headers, the payload hash against the body it forwards, and the date
//!    (15 minutes either way; a presigned URL until it expires). Anything
//!    else is refused (403, audited), so the proxy never signs a request it
//!    did not see signed: it is no signing oracle.
//! 2. [`resign`]s the request with the real key pair just before it leaves
//!    (after the pipeline's last header change): header signatures,
//!    presigned URLs (`X-Amz-Signature`), `UNSIGNED-PAYLOAD`, and
//!    `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (each aws-chunked chunk verified
//!    with the stub key chain and re-signed with the real one).
//!    `STREAMING-UNSIGNED-PAYLOAD-TRAILER` bodies carry no signature (their
//!    integrity is the trailing checksum S3 checks) and pass unchanged;
//!    the signed-trailer and ECDSA (SigV4a) modes are refused.
//!
//! Host binding, `paths` and `methods` apply as for any credential. The
//! hook into the request path is two calls in `handler.rs`, marked
//! `aws_sigv4`.

pub mod auth;
pub mod chunked;
pub mod sign;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Uri};

use self::auth::{Form, ParseError, Signature};
use self::chunked::{Chain, ChunkResigner, HashCheck, OnFail};
use self::sign::{CredentialScope, RequestToSign, SigningKey, canonical_request, string_to_sign};
use crate::body::{ProxyBody, boxed};
use crate::config::CredentialType;
use crate::deny::Deny;
use crate::grants::Grant;
use crate::pipeline::find_stubs::FoundStub;
use crate::pipeline::{PinnedDest, Scheme};
use crate::secrets::Credential;

/// The non-secret half of a real AWS key pair (the secret is the
/// credential's value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsKeys {
    /// The real access key id (named in audit records; not a secret).
    pub access_key_id: String,
    /// `region:` from the config, handed to the sandbox as `AWS_REGION`.
    pub region: Option<String>,
}

/// How the payload is bound by the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Payload {
    /// Hex SHA-256 of the body (checked against what is forwarded).
    Hash { hex: String, checked: bool },
    /// `UNSIGNED-PAYLOAD`.
    Unsigned,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (aws-chunked, signed chunks).
    SignedChunks { decoded_len: Option<u64> },
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER` (aws-chunked, checksum trailer).
    UnsignedTrailer,
}

/// A request verified against this grant's stub pair, ready to be re-signed.
pub struct Verified {
    credential: String,
    sig: Signature,
    /// The payload line of the canonical request, as signed.
    payload_hash: String,
    payload: Payload,
    stub_key: SigningKey,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("credential", &self.credential)
            .field("form", &self.sig.form)
            .finish()
    }
}

impl Verified {
    /// The credential this request uses.
    pub fn credential(&self) -> &str {
        &self.credential
    }
}

fn is_aws(c: &Credential) -> bool {
    c.kind == CredentialType::AwsSigv4
}

fn refuse(credential: &str, reason: &'static str) -> Deny {
    Deny::Credential {
        credential: Some(credential.to_string()),
        reason,
    }
}

/// The audit `reason` of a swap record for `cred`, when it is typed: the
/// type and the real access key id (never a secret).
pub fn swap_reason(cred: &Credential) -> Option<String> {
    let keys = cred.aws.as_ref().filter(|_| is_aws(cred))?;
    Some(format!(
        "credential_type: aws_sigv4, access_key_id: {}, resigned",
        keys.access_key_id
    ))
}

/// Step 1 (see the module docs). Takes this grant's `aws_sigv4` stubs out of
/// `found` and verifies the request's signature with the stub pair; `None`
/// when the request uses no `aws_sigv4` credential of this grant.
/// `body` is the whole body when it was read whole.
pub fn verify(
    grant: &Grant,
    dest: &PinnedDest,
    parts: &Parts,
    found: &mut Vec<FoundStub>,
    body: Option<&Bytes>,
    now: i64,
) -> Result<Option<Verified>, Deny> {
    let mine = |f: &FoundStub| {
        f.owner.grant_id == grant.id
            && grant
                .credential(&f.owner.credential)
                .is_some_and(|c| is_aws(c))
    };
    let query = parts.uri.query().unwrap_or("");
    let Some(i) = found.iter().position(mine) else {
        // An AWS signature with a key this grant does not hold, toward a host
        // one of its aws_sigv4 credentials is bound to (e.g. a presigned URL
        // of a revoked grant): refuse rather than pass it on as egress.
        if found.is_empty()
            && auth::looks_signed(&parts.headers, query)
            && let Some(name) = grant.credential_names().find(|n| {
                grant.credential(n).is_some_and(|c| {
                    is_aws(c)
                        && c.allowed_hosts
                            .iter()
                            .any(|p| p.matches_dest(dest.host(), dest.port()))
                })
            })
        {
            return Err(refuse(name, "aws_key_not_granted"));
        }
        return Ok(None);
    };
    let entry = found.remove(i);
    let name = entry.owner.credential.clone();
    if let Some(other) = found.first() {
        return Err(if other.owner.grant_id != grant.id {
            Deny::Credential {
                credential: Some(other.owner.credential.clone()),
                reason: "foreign_stub",
            }
        } else {
            Deny::Position {
                credential: other.owner.credential.clone(),
                reason: "stub_in_aws_signed_request".into(),
            }
        });
    }
    let cred = grant
        .credential(&name)
        .ok_or_else(|| refuse(&name, "unknown_credential"))?;
    // Binding, as for any credential (swap_or_block::decide).
    if dest.scheme() != Scheme::Https {
        return Err(refuse(&name, "plain_http"));
    }
    if dest.is_ip_literal() {
        return Err(refuse(&name, "ip_literal"));
    }
    if !cred
        .allowed_hosts
        .iter()
        .any(|p| p.matches_dest(dest.host(), dest.port()))
    {
        return Err(refuse(&name, "unbound_host"));
    }
    let method = parts.method.as_str();
    if method == "TRACE" || !cred.scope.allows_method(method) {
        return Err(Deny::Scope {
            credential: name,
            reason: "method_not_allowed".into(),
        });
    }
    if !cred.scope.allows_path(parts.uri.path()) {
        return Err(Deny::Scope {
            credential: name,
            reason: "path_not_allowed".into(),
        });
    }

    let sig = match auth::parse(&parts.headers, query) {
        Ok(s) => s,
        Err(ParseError::Missing) => return Err(refuse(&name, "aws_unsigned")),
        Err(ParseError::Malformed(_)) => return Err(refuse(&name, "aws_signature_malformed")),
    };
    let stub_id = grant.stub_for(&name).unwrap_or_default();
    if sig.access_key_id != stub_id {
        return Err(refuse(&name, "aws_key_mismatch"));
    }
    // The stub stands once: in the signature's credential, nowhere else.
    if entry.count > 1 {
        return Err(Deny::Position {
            credential: name,
            reason: "stub_outside_aws_signature".into(),
        });
    }
    if !auth::in_time(&sig, now) {
        return Err(refuse(&name, "aws_signature_expired"));
    }

    let declared = parts
        .headers
        .get("x-amz-content-sha256")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| refuse(&name, "aws_signature_malformed"))?;
    if declared.is_some()
        && sig.form == Form::Header
        && !sig
            .signed_headers
            .iter()
            .any(|h| h == "x-amz-content-sha256")
    {
        return Err(refuse(&name, "aws_payload_hash_not_signed"));
    }
    let payload_hash = match (sig.form, declared) {
        (_, Some(d)) => d,
        (Form::Presigned, None) => "UNSIGNED-PAYLOAD".to_string(),
        (Form::Header, None) => match body {
            Some(b) => sign::sha256_hex(b),
            // The hash is part of the signature and needs the whole body first.
            None => return Err(Deny::BodyTooLarge),
        },
    };
    let payload = match payload_hash.as_str() {
        "UNSIGNED-PAYLOAD" => Payload::Unsigned,
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" if sig.form == Form::Header => Payload::SignedChunks {
            decoded_len: parts
                .headers
                .get("x-amz-decoded-content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        },
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => Payload::UnsignedTrailer,
        h if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let hex = h.to_ascii_lowercase();
            let checked = match body {
                Some(b) => {
                    if sign::sha256_hex(b) != hex {
                        return Err(refuse(&name, "aws_payload_hash_mismatch"));
                    }
                    true
                }
                None => false,
            };
            Payload::Hash { hex, checked }
        }
        _ => return Err(refuse(&name, "aws_payload_mode_unsupported")),
    };

    let stub_secret = grant
        .aws_stub_secret(&name)
        .ok_or_else(|| refuse(&name, "unknown_credential"))?;
    let stub_key = SigningKey::derive(stub_secret.expose(), &sig.scope);
    let host_fallback = parts.uri.authority().map_or("", |a| a.as_str());
    let canonical = canonical_request(
        &RequestToSign {
            method,
            path: parts.uri.path(),
            query,
            headers: &parts.headers,
            host_fallback,
            signed_headers: &sig.signed_headers,
            payload_hash: &payload_hash,
            skip_query: skip_query(sig.form),
        },
        &sig.scope,
    )
    .map_err(|_| refuse(&name, "aws_signature_mismatch"))?;
    if !stub_key.verify(
        &string_to_sign(&sig.amz_date, &sig.scope, &canonical),
        &sig.signature,
    ) {
        return Err(refuse(&name, "aws_signature_mismatch"));
    }
    Ok(Some(Verified {
        credential: name,
        sig,
        payload_hash,
        payload,
        stub_key,
    }))
}

fn skip_query(form: Form) -> &'static [&'static str] {
    match form {
        Form::Header => &[],
        Form::Presigned => &["X-Amz-Signature"],
    }
}

/// Step 2: re-signs the request (head as it will be sent) with the real key
/// pair and wraps the body as its payload mode needs. `on_fail` is called
/// once if the body turns out not to match what was signed.
pub fn resign(
    v: Verified,
    grant: &Grant,
    parts: &mut Parts,
    body: ProxyBody,
    on_fail: OnFail,
) -> Result<ProxyBody, Deny> {
    let name = &v.credential;
    let cred = grant
        .credential(name)
        .ok_or_else(|| refuse(name, "unknown_credential"))?;
    let keys = cred
        .aws
        .as_ref()
        .ok_or_else(|| refuse(name, "unknown_credential"))?;
    let real_key = SigningKey::derive(cred.value.expose(), &v.sig.scope);
    let scope = v.sig.scope.as_string();
    let cannot = |_| Deny::BadRequest("a signed header cannot be forwarded as signed");

    let new_sig = match v.sig.form {
        Form::Header => {
            let canonical = canonical_request(
                &RequestToSign {
                    method: parts.method.as_str(),
                    path: parts.uri.path(),
                    query: parts.uri.query().unwrap_or(""),
                    headers: &parts.headers,
                    host_fallback: "",
                    signed_headers: &v.sig.signed_headers,
                    payload_hash: &v.payload_hash,
                    skip_query: &[],
                },
                &v.sig.scope,
            )
            .map_err(cannot)?;
            let sig = real_key.sign(&string_to_sign(&v.sig.amz_date, &v.sig.scope, &canonical));
            let value = format!(
                "{} Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
                sign::ALGORITHM,
                keys.access_key_id,
                v.sig.signed_headers.join(";"),
            );
            parts.headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&value).map_err(|_| Deny::BadRequest("authorization"))?,
            );
            sig
        }
        Form::Presigned => {
            let query = parts.uri.query().unwrap_or("");
            let credential =
                sign::uri_encode(format!("{}/{scope}", keys.access_key_id).as_bytes(), false);
            let mut q = String::with_capacity(query.len());
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                let k = kv.split_once('=').map_or(kv, |(k, _)| k);
                let k_dec = sign::uri_decode(k);
                if k_dec == b"X-Amz-Signature" {
                    continue;
                }
                if !q.is_empty() {
                    q.push('&');
                }
                if k_dec == b"X-Amz-Credential" {
                    q.push_str("X-Amz-Credential=");
                    q.push_str(&credential);
                } else {
                    q.push_str(kv);
                }
            }
            let canonical = canonical_request(
                &RequestToSign {
                    method: parts.method.as_str(),
                    path: parts.uri.path(),
                    query: &q,
                    headers: &parts.headers,
                    host_fallback: "",
                    signed_headers: &v.sig.signed_headers,
                    payload_hash: &v.payload_hash,
                    skip_query: &[],
                },
                &v.sig.scope,
            )
            .map_err(cannot)?;
            let sig = real_key.sign(&string_to_sign(&v.sig.amz_date, &v.sig.scope, &canonical));
            q.push_str("&X-Amz-Signature=");
            q.push_str(&sig);
            let pq = format!("{}?{q}", parts.uri.path());
            let mut up = http::uri::Parts::default();
            up.path_and_query = Some(pq.parse().map_err(|_| Deny::BadRequest("invalid uri"))?);
            parts.uri = Uri::from_parts(up).map_err(|_| Deny::BadRequest("invalid uri"))?;
            sig
        }
    };

    Ok(match v.payload {
        Payload::Unsigned | Payload::UnsignedTrailer | Payload::Hash { checked: true, .. } => body,
        Payload::Hash {
            hex,
            checked: false,
        } => boxed(HashCheck::new(body, hex, on_fail)),
        Payload::SignedChunks { decoded_len } => boxed(ChunkResigner::new(
            body,
            Chain {
                key: v.stub_key,
                scope: scope.clone(),
                amz_date: v.sig.amz_date.clone(),
                previous: v.sig.signature.clone(),
            },
            Chain {
                key: real_key,
                scope,
                amz_date: v.sig.amz_date.clone(),
                previous: new_sig,
            },
            decoded_len,
            on_fail,
        )),
    })
}

/// A scope helper for callers that only have the text (bench, tests).
pub fn parse_scope(s: &str) -> Option<CredentialScope> {
    CredentialScope::parse(s)
}

// === stub key pairs ===

/// A stub key pair as grants keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StubPair<'a> {
    /// `AKIA…`
    pub access_key_id: &'a str,
    /// 40 characters.
    pub secret_access_key: &'a str,
    /// The credential's configured region, if any (for `AWS_REGION`).
    pub region: Option<&'a str>,
}

/// Internal one-string form of a stub pair, `ACCESS_KEY_ID:SECRET[:REGION]`
/// (how grants, static grants in `vault.yaml` and the brain's handle records
/// keep it; the admin API shows it as
/// `{"access_key_id","secret_access_key","region"?}`).
pub fn join_pair(p: StubPair<'_>) -> String {
    match p.region {
        Some(r) => format!("{}:{}:{r}", p.access_key_id, p.secret_access_key),
        None => format!("{}:{}", p.access_key_id, p.secret_access_key),
    }
}

/// Splits [`join_pair`]'s form; `None` unless the parts have the right shape.
pub fn split_pair(stub: &str) -> Option<StubPair<'_>> {
    let mut it = stub.splitn(3, ':');
    let (id, secret, region) = (it.next()?, it.next()?, it.next());
    (crate::config::typed_is_access_key_id(id)
        && secret.len() >= 16
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && region.is_none_or(|r| {
            !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }))
    .then_some(StubPair {
        access_key_id: id,
        secret_access_key: secret,
        region,
    })
}

/// The admin API's JSON of a stub: the pair as an object, others as a string.
pub fn stub_json(stub: &str, is_aws: bool) -> serde_json::Value {
    match split_pair(stub).filter(|_| is_aws) {
        Some(p) => {
            let mut o = serde_json::json!({
                "access_key_id": p.access_key_id,
                "secret_access_key": p.secret_access_key,
            });
            if let Some(r) = p.region {
                o["region"] = r.into();
            }
            o
        }
        None => serde_json::Value::String(stub.to_string()),
    }
}

/// The one-string form of the admin API's pair object (the brain's side of
/// [`stub_json`]); `None` for anything else.
pub fn pair_from_json(v: &serde_json::Value) -> Option<String> {
    let id = v.get("access_key_id")?.as_str()?;
    let secret = v.get("secret_access_key")?.as_str()?;
    let region = v.get("region").and_then(|r| r.as_str());
    let s = join_pair(StubPair {
        access_key_id: id,
        secret_access_key: secret,
        region,
    });
    split_pair(&s).is_some().then_some(s)
}

/// Mints a stub pair shaped like the real one: the key id keeps its 4-letter
/// prefix (`AKIA`, `ASIA`) and length with a random base32 remainder (the
/// alphabet AWS ids use); the secret is 40 random base64 characters.
pub fn mint_pair(keys: &AwsKeys, rng: &mut impl rand::Rng) -> String {
    const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let real = keys.access_key_id.as_str();
    let prefix = if real.len() >= 20 && real.is_ascii() {
        &real[..4]
    } else {
        "AKIA"
    };
    let n = real.len().max(20);
    let mut id = String::with_capacity(n);
    id.push_str(prefix);
    for _ in prefix.len()..n {
        id.push(ID[rng.random_range(0..ID.len())] as char);
    }
    let secret: String = (0..40)
        .map(|_| SECRET[rng.random_range(0..SECRET.len())] as char)
        .collect();
    join_pair(StubPair {
        access_key_id: &id,
        secret_access_key: &secret,
        region: keys.region.as_deref(),
    })
}

/// Scrub pairs (real → stub) of an `aws_sigv4` credential: the secret key
/// and the access key id; masks when the grant holds no stub for it.
pub fn scrub_pairs(cred: &Credential, stub: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some(keys) = cred.aws.as_ref() else {
        return Vec::new();
    };
    let secret = cred.value.expose().as_bytes();
    let id = keys.access_key_id.as_bytes();
    match stub.and_then(split_pair) {
        Some(p) => vec![
            (secret.to_vec(), p.secret_access_key.as_bytes().to_vec()),
            (id.to_vec(), p.access_key_id.as_bytes().to_vec()),
        ],
        None => vec![
            (secret.to_vec(), vec![b'*'; secret.len()]),
            (id.to_vec(), vec![b'*'; id.len()]),
        ],
    }
}
