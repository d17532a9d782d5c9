//! Reading a SigV4 signature off a request: the `Authorization` header
//! (`AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`) or a
//! presigned URL's `X-Amz-*` query parameters, plus the request time and the
//! time window it is valid in.

use http::HeaderMap;

use super::sign::{ALGORITHM, CredentialScope, uri_decode};

/// Where the signature stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `Authorization` header.
    Header,
    /// Presigned URL (`X-Amz-Signature` in the query).
    Presigned,
}

/// A parsed signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Header or query.
    pub form: Form,
    /// The access key id it claims.
    pub access_key_id: String,
    /// Its credential scope.
    pub scope: CredentialScope,
    /// Lower-case names, as given (checked sorted and unique).
    pub signed_headers: Vec<String>,
    /// 64 hex characters.
    pub signature: String,
    /// `YYYYMMDDTHHMMSSZ` (for a header signature sent with `Date` only,
    /// that date converted).
    pub amz_date: String,
    /// Presigned: `X-Amz-Expires` seconds.
    pub expires: Option<u64>,
}

/// Why a signature could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// No SigV4 signature at all.
    Missing,
    /// Something SigV4-shaped but malformed or another algorithm.
    Malformed(&'static str),
}

/// Whether the request carries anything SigV4-shaped (header or query).
pub fn looks_signed(headers: &HeaderMap, query: &str) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("AWS4-"))
        || query_param(query, "X-Amz-Signature").is_some()
        || query_param(query, "X-Amz-Credential").is_some()
}

/// The decoded value of the first query parameter named `name`.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (uri_decode(k) == name.as_bytes())
            .then(|| String::from_utf8(uri_decode(v)).ok())
            .flatten()
    })
}

fn count_param(query: &str, name: &str) -> usize {
    query
        .split('&')
        .filter(|kv| uri_decode(kv.split_once('=').map_or(kv, |(k, _)| k)) == name.as_bytes())
        .count()
}

fn split_credential(cred: &str) -> Result<(String, CredentialScope), ParseError> {
    let (key, scope) = cred
        .split_once('/')
        .ok_or(ParseError::Malformed("credential"))?;
    let scope = CredentialScope::parse(scope).ok_or(ParseError::Malformed("credential scope"))?;
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ParseError::Malformed("access key id"));
    }
    Ok((key.to_string(), scope))
}

fn parse_signed_headers(s: &str) -> Result<Vec<String>, ParseError> {
    let list: Vec<String> = s.split(';').map(str::to_string).collect();
    let valid = !list.is_empty()
        && list.iter().all(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
        && list.windows(2).all(|w| w[0] < w[1]);
    if !valid {
        return Err(ParseError::Malformed("signed headers"));
    }
    if !list.iter().any(|h| h == "host") {
        return Err(ParseError::Malformed("host is not signed"));
    }
    Ok(list)
}

fn check_hex_sig(s: &str) -> Result<String, ParseError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(ParseError::Malformed("signature"))
    }
}

fn check_amz_date(s: &str) -> Result<String, ParseError> {
    let b = s.as_bytes();
    let ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    ok.then(|| s.to_string())
        .ok_or(ParseError::Malformed("x-amz-date"))
}

/// Reads the signature of a request (header form first, then query form;
/// both at once is refused, as AWS does).
pub fn parse(headers: &HeaderMap, query: &str) -> Result<Signature, ParseError> {
    let header = headers.get(http::header::AUTHORIZATION).map(|v| {
        v.to_str()
            .map_err(|_| ParseError::Malformed("authorization"))
    });
    let presigned = count_param(query, "X-Amz-Signature") > 0
        || count_param(query, "X-Amz-Algorithm") > 0
        || count_param(query, "X-Amz-Credential") > 0;
    match (header, presigned) {
        (Some(_), true) => Err(ParseError::Malformed("both header and query signatures")),
        (Some(h), false) => parse_header(h?, headers),
        (None, true) => parse_query(query),
        (None, false) => Err(ParseError::Missing),
    }
}

fn parse_header(value: &str, headers: &HeaderMap) -> Result<Signature, ParseError> {
    if headers.get_all(http::header::AUTHORIZATION).iter().count() != 1 {
        return Err(ParseError::Malformed("several authorization headers"));
    }
    let value = value.trim();
    let (alg, rest) = value
        .split_once(' ')
        .ok_or(ParseError::Malformed("authorization"))?;
    if alg != ALGORITHM {
        return Err(if alg.starts_with("AWS4") || alg == "AWS" {
            ParseError::Malformed("algorithm")
        } else {
            ParseError::Missing
        });
    }
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(ParseError::Malformed("authorization"))?;
        let slot = match k {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => return Err(ParseError::Malformed("authorization field")),
        };
        if slot.replace(v).is_some() {
            return Err(ParseError::Malformed("repeated authorization field"));
        }
    }
    let (access_key_id, scope) =
        split_credential(cred.ok_or(ParseError::Malformed("credential"))?)?;
    let signed_headers =
        parse_signed_headers(signed.ok_or(ParseError::Malformed("signed headers"))?)?;
    let signature = check_hex_sig(sig.ok_or(ParseError::Malformed("signature"))?)?;
    let amz_date = match headers.get("x-amz-date") {
        Some(v) => check_amz_date(
            v.to_str()
                .map_err(|_| ParseError::Malformed("x-amz-date"))?,
        )?,
        None => {
            // Without x-amz-date, SigV4 takes the `Date` header (RFC 7231).
            let d = headers
                .get(http::header::DATE)
                .and_then(|v| v.to_str().ok())
                .ok_or(ParseError::Malformed("no x-amz-date or date header"))?;
            let t = chrono::DateTime::parse_from_rfc2822(d)
                .map_err(|_| ParseError::Malformed("date"))?;
            if !signed_headers.iter().any(|h| h == "date") {
                return Err(ParseError::Malformed("date is not signed"));
            }
            t.with_timezone(&chrono::Utc)
                .format("%Y%m%dT%H%M%SZ")
                .to_string()
        }
    };
    if headers.get("x-amz-date").is_some() && !signed_headers.iter().any(|h| h == "x-amz-date") {
        return Err(ParseError::Malformed("x-amz-date is not signed"));
    }
    if amz_date[..8] != scope.date {
        return Err(ParseError::Malformed(
            "scope date differs from request date",
        ));
    }
    Ok(Signature {
        form: Form::Header,
        access_key_id,
        scope,
        signed_headers,
        signature,
        amz_date,
        expires: None,
    })
}

fn parse_query(query: &str) -> Result<Signature, ParseError> {
    for name in [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ] {
        if count_param(query, name) != 1 {
            return Err(ParseError::Malformed(
                "presigned parameters missing or repeated",
            ));
        }
    }
    let get = |n: &str| query_param(query, n).ok_or(ParseError::Malformed("presigned parameter"));
    if get("X-Amz-Algorithm")? != ALGORITHM {
        return Err(ParseError::Malformed("algorithm"));
    }
    let (access_key_id, scope) = split_credential(&get("X-Amz-Credential")?)?;
    let amz_date = check_amz_date(&get("X-Amz-Date")?)?;
    if amz_date[..8] != scope.date {
        return Err(ParseError::Malformed(
            "scope date differs from request date",
        ));
    }
    let expires: u64 = get("X-Amz-Expires")?
        .parse()
        .map_err(|_| ParseError::Malformed("x-amz-expires"))?;
    // AWS: 1 second to 7 days.
    if !(1..=604_800).contains(&expires) {
        return Err(ParseError::Malformed("x-amz-expires out of range"));
    }
    Ok(Signature {
        form: Form::Presigned,
        access_key_id,
        scope,
        signed_headers: parse_signed_headers(&get("X-Amz-SignedHeaders")?)?,
        signature: check_hex_sig(&get("X-Amz-Signature")?)?,
        amz_date,
        expires: Some(expires),
    })
}

/// Seconds since the epoch of an `YYYYMMDDTHHMMSSZ` date.
pub fn amz_date_secs(amz_date: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// Largest clock difference accepted for a header signature (AWS: 15 minutes).
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// Whether the signature is valid at `now` (seconds since the epoch): a
/// header signature within 15 minutes either way; a presigned URL from its
/// date (15 minutes of skew allowed) until date + expires.
pub fn in_time(sig: &Signature, now: i64) -> bool {
    let Some(t) = amz_date_secs(&sig.amz_date) else {
        return false;
    };
    match sig.expires {
        None => (now - t).abs() <= MAX_SKEW_SECS,
        Some(exp) => t - now <= MAX_SKEW_SECS && now <= t + exp as i64,
    }
}
