//! `type: github_app`: installation access tokens minted with the App's private key.
//!
//! GitHub's documented flow ("Generating a JSON Web Token (JWT) for a GitHub App",
//! "Generating an installation access token for a GitHub App"):
//! 1. a JWT signed RS256 with the App's private key, claims `iat` (60 s in the past, for
//!    clock drift), `exp` (no more than 10 minutes after issue) and `iss` (the App id);
//! 2. `POST {api}/app/installations/{installation_id}/access_tokens` with
//!    `Authorization: Bearer <JWT>` → `201 {"token":"ghs_…","expires_at":"…Z",
//!    "permissions":{…},"repository_selection":…}`; tokens live one hour.
//!
//! The key is accepted as PKCS#1 (`BEGIN RSA PRIVATE KEY`, what GitHub hands out) or
//! PKCS#8 (`BEGIN PRIVATE KEY`), and signed with `ring`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use http::{HeaderValue, header};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use zeroize::Zeroizing;

use super::{Fetched, MintContext, MintError};
use crate::config::typed::GithubAppConfig;
use crate::secrets::SecretValue;

/// Seconds `iat` is set in the past (GitHub: "60 seconds in the past").
const IAT_SKEW: i64 = 60;
/// Seconds `exp` is set after `iat` (GitHub: at most 10 minutes; stay under it).
const JWT_LIFETIME: i64 = 540;

/// One App installation's token source.
pub struct GithubApp {
    cfg: GithubAppConfig,
    key: RsaKeyPair,
    rng: ring::rand::SystemRandom,
}

/// DER bytes of the first PEM block, with its label.
pub(crate) fn pem_der(pem: &str) -> Result<(String, Zeroizing<Vec<u8>>), String> {
    let begin = pem.find("-----BEGIN ").ok_or("not a PEM file")?;
    let rest = &pem[begin + 11..];
    let label_end = rest.find("-----").ok_or("malformed PEM header")?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body_end = rest.find(&end_marker).ok_or("PEM end marker missing")?;
    let b64: Zeroizing<String> = Zeroizing::new(
        rest[body_start..body_end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    );
    let der = STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| "PEM body is not base64")?;
    Ok((label, Zeroizing::new(der)))
}

impl GithubApp {
    /// Parses the private key (PEM); the error never includes key material.
    pub fn new(cfg: GithubAppConfig, pem: &SecretValue) -> Result<GithubApp, String> {
        let (label, der) = pem_der(pem.expose())?;
        let key = match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            other => return Err(format!("`{other}` is not an RSA private key")),
        }
        .map_err(|e| format!("the private key is not a usable RSA key: {e}"))?;
        Ok(GithubApp {
            cfg,
            key,
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// The config (API base, ids).
    pub fn config(&self) -> &GithubAppConfig {
        &self.cfg
    }

    /// The App JWT for `now` (Unix seconds).
    pub fn jwt(&self, now: i64) -> Result<String, MintError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let iat = now - IAT_SKEW;
        let claims = serde_json::json!({
            "iat": iat,
            "exp": iat + JWT_LIFETIME,
            "iss": self.cfg.app_id.to_string(),
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| MintError::new("signing the App JWT failed"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// Exchanges a fresh JWT for an installation token.
    pub async fn mint(&self, ctx: MintContext<'_>) -> Result<Fetched, MintError> {
        let jwt = Zeroizing::new(self.jwt(Utc::now().timestamp())?);
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", jwt.as_str()))
            .map_err(|_| MintError::new("invalid JWT"))?;
        auth.set_sensitive(true);
        let mut body = serde_json::Map::new();
        if !self.cfg.repositories.is_empty() {
            body.insert(
                "repositories".into(),
                serde_json::json!(self.cfg.repositories),
            );
        }
        if !self.cfg.permissions.is_empty() {
            body.insert(
                "permissions".into(),
                serde_json::json!(self.cfg.permissions),
            );
        }
        let headers = [
            (header::AUTHORIZATION, auth),
            (
                header::ACCEPT,
                HeaderValue::from_static("application/vnd.github+json"),
            ),
            (
                header::HeaderName::from_static("x-github-api-version"),
                HeaderValue::from_static("2022-11-28"),
            ),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ];
        let (status, bytes) = super::http::post(
            ctx,
            &self.cfg.api,
            &format!(
                "/app/installations/{}/access_tokens",
                self.cfg.installation_id
            ),
            &headers,
            serde_json::Value::Object(body).to_string().into_bytes(),
        )
        .await?;
        if status.as_u16() != 201 {
            // GitHub: 401 bad JWT, 403 forbidden, 404 no such installation, 422 bad scope.
            return Err(MintError::new(format!(
                "installation token refused: HTTP {}",
                status.as_u16()
            )));
        }
        parse_token_response(&bytes)
    }
}

/// Reads `{"token","expires_at"}` from GitHub's 201 answer.
fn parse_token_response(bytes: &[u8]) -> Result<Fetched, MintError> {
    #[derive(serde::Deserialize)]
    struct Resp {
        token: String,
        expires_at: String,
    }
    let r: Resp = serde_json::from_slice(bytes)
        .map_err(|_| MintError::new("installation token response is not {token, expires_at}"))?;
    let token = SecretValue::new(r.token);
    if token.len() < crate::secrets::MIN_SECRET_LEN
        || token.expose().chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(MintError::new("installation token has an unusable shape"));
    }
    let expires_at: DateTime<Utc> = DateTime::parse_from_rfc3339(&r.expires_at)
        .map_err(|_| MintError::new("installation token expires_at is not RFC 3339"))?
        .with_timezone(&Utc);
    let lifetime = (expires_at - Utc::now())
        .to_std()
        .map_err(|_| MintError::new("installation token is already expired"))?;
    Ok(Fetched {
        value: token,
        lifetime: lifetime.min(Duration::from_secs(24 * 3600)),
        expires_at,
        rotated: None,
    })
}
