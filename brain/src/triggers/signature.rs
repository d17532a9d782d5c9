//! Webhook signature checks, over the raw body bytes, before any JSON parsing.
//!
//! - Slack (`X-Slack-Signature: v0=<hex>`, `X-Slack-Request-Timestamp`): HMAC-SHA256 with the
//!   signing secret over `v0:{timestamp}:{body}`; the timestamp must be within five minutes of
//!   now in either direction, so a captured request cannot be replayed later.
//! - GitHub (`X-Hub-Signature-256: sha256=<hex>`): HMAC-SHA256 with the webhook secret over
//!   the body. GitHub signs no timestamp; replays are caught by the delivery-id dedupe.
//!
//! Comparison is `ring::hmac::verify` (constant time).

use ring::hmac;

/// Slack's replay window, both directions.
pub const SLACK_MAX_SKEW_SECS: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("malformed header {0}")]
    Malformed(&'static str),
    #[error("timestamp {ts} is {skew}s away from now (limit {SLACK_MAX_SKEW_SECS}s)")]
    Stale { ts: i64, skew: i64 },
    #[error("signature does not match")]
    Mismatch,
}

/// Checks a Slack request. `now` is unix seconds (injected for tests).
pub fn verify_slack(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts_text = timestamp.ok_or(SignatureError::Missing("X-Slack-Request-Timestamp"))?;
    let signature = signature.ok_or(SignatureError::Missing("X-Slack-Signature"))?;
    let ts: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed("X-Slack-Request-Timestamp"))?;
    let skew = now.saturating_sub(ts).saturating_abs();
    if skew > SLACK_MAX_SKEW_SECS {
        return Err(SignatureError::Stale { ts, skew });
    }
    let presented = signature
        .strip_prefix("v0=")
        .and_then(decode_hex)
        .ok_or(SignatureError::Malformed("X-Slack-Signature"))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut base = Vec::with_capacity(ts_text.len() + body.len() + 4);
    base.extend_from_slice(b"v0:");
    base.extend_from_slice(ts_text.trim().as_bytes());
    base.push(b':');
    base.extend_from_slice(body);
    hmac::verify(&key, &base, &presented).map_err(|_| SignatureError::Mismatch)
}

/// Checks a GitHub request.
pub fn verify_github(
    secret: &[u8],
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let signature = signature.ok_or(SignatureError::Missing("X-Hub-Signature-256"))?;
    let presented = signature
        .strip_prefix("sha256=")
        .and_then(decode_hex)
        .ok_or(SignatureError::Malformed("X-Hub-Signature-256"))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &presented).map_err(|_| SignatureError::Mismatch)
}

/// `v0=<hex>` for `body` at `timestamp` (what Slack sends; used by tests and fakes).
pub fn sign_slack(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"v0:");
    ctx.update(timestamp.as_bytes());
    ctx.update(b":");
    ctx.update(body);
    format!("v0={}", encode_hex(ctx.sign().as_ref()))
}

/// `sha256=<hex>` for `body` (what GitHub sends).
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("sha256={}", encode_hex(hmac::sign(&key, body).as_ref()))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().as_bytes();
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    // Slack's documented example request (api.slack.com "Verifying requests from Slack").
    const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_TS: &str = "1531420618";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slack_documented_example_verifies() {
        assert_eq!(
            sign_slack(SECRET, SLACK_TS, SLACK_BODY.as_bytes()),
            SLACK_SIG
        );
        let now = 1531420618 + 10;
        verify_slack(
            SECRET,
            Some(SLACK_TS),
            Some(SLACK_SIG),
            SLACK_BODY.as_bytes(),
            now,
        )
        .unwrap();
    }

    #[test]
    fn slack_refuses_wrong_secret_tampered_body_and_missing_headers() {
        let now = 1531420618;
        let body = SLACK_BODY.as_bytes();
        let err = |r: Result<(), SignatureError>| r.unwrap_err();
        assert_eq!(
            err(verify_slack(
                b"other",
                Some(SLACK_TS),
                Some(SLACK_SIG),
                body,
                now
            )),
            SignatureError::Mismatch
        );
        let mut tampered = body.to_vec();
        tampered[0] = b'T';
        assert_eq!(
            err(verify_slack(
                SECRET,
                Some(SLACK_TS),
                Some(SLACK_SIG),
                &tampered,
                now
            )),
            SignatureError::Mismatch
        );
        // The timestamp is part of what is signed: moving it breaks the signature.
        assert_eq!(
            err(verify_slack(
                SECRET,
                Some("1531420619"),
                Some(SLACK_SIG),
                body,
                now
            )),
            SignatureError::Mismatch
        );
        assert!(matches!(
            err(verify_slack(SECRET, None, Some(SLACK_SIG), body, now)),
            SignatureError::Missing(_)
        ));
        assert!(matches!(
            err(verify_slack(SECRET, Some(SLACK_TS), None, body, now)),
            SignatureError::Missing(_)
        ));
        for bad in ["a2114d57", "v1=a2114d57", "v0=zz", "v0=", "v0=abc"] {
            assert!(
                matches!(
                    err(verify_slack(SECRET, Some(SLACK_TS), Some(bad), body, now)),
                    SignatureError::Malformed(_) | SignatureError::Mismatch
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            err(verify_slack(
                SECRET,
                Some("yesterday"),
                Some(SLACK_SIG),
                body,
                now
            )),
            SignatureError::Malformed(_)
        ));
    }

    #[test]
    fn slack_refuses_stale_and_future_timestamps_even_when_correctly_signed() {
        let ts: i64 = 1_700_000_000;
        let body = br#"{"type":"event_callback"}"#;
        let sig = sign_slack(SECRET, &ts.to_string(), body);
        let check = |now: i64| verify_slack(SECRET, Some(&ts.to_string()), Some(&sig), body, now);
        check(ts + SLACK_MAX_SKEW_SECS).unwrap();
        check(ts - SLACK_MAX_SKEW_SECS).unwrap();
        assert!(matches!(
            check(ts + SLACK_MAX_SKEW_SECS + 1),
            Err(SignatureError::Stale { .. })
        ));
        assert!(matches!(
            check(ts - SLACK_MAX_SKEW_SECS - 1),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn github_signature_checks() {
        // GitHub's documented example ("Validating webhook deliveries").
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign_github(secret, body), sig);
        verify_github(secret, Some(sig), body).unwrap();
        verify_github(
            secret,
            Some(&sig.to_uppercase().replace("SHA256=", "sha256=")),
            body,
        )
        .unwrap();
        assert_eq!(
            verify_github(b"wrong", Some(sig), body),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_github(secret, Some(sig), b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_github(secret, None, body),
            Err(SignatureError::Missing(_))
        ));
        assert!(matches!(
            verify_github(secret, Some(&sig.replace("sha256=", "sha1=")), body),
            Err(SignatureError::Malformed(_))
        ));
    }
}
