//! Google Vertex AI. Auth: the service-account JSON's key signs a JWT
//! (RS256; claims iss/scope/aud/iat/exp) exchanged at its `token_uri` for an
//! access token (RFC 7523 `jwt-bearer` grant; developers.google.com/identity/protocols/oauth2/service-account
//! "Preparing to make an authorized API call"), cached until a minute before expiry.
//! Gemini models: `{host}/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent`
//! (`:streamGenerateContent?alt=sse`); Anthropic models: `…/publishers/anthropic/models/{m}:rawPredict`
//! (`:streamRawPredict`) with the Messages body minus `model`, plus
//! `anthropic_version: vertex-2023-10-16` (docs.anthropic.com "Claude on Vertex AI").

use super::{CallOpts, EventStream, Provider, byte_stream, event_stream, read_body, send};
use crate::canonical::{ChatRequest, ChatResponse};
use crate::config::{ConfigError, ModelEntry};
use crate::error::ProviderError;
use crate::formats::anthropic as an;
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::HeaderMap;
use std::time::{Duration, Instant};

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const ANTHROPIC_VERTEX_VERSION: &str = "vertex-2023-10-16";

/// A service account's credentials and its cached access token.
pub struct TokenSource {
    email: String,
    key_id: Option<String>,
    key: ring::signature::RsaKeyPair,
    token_uri: String,
    client: reqwest::Client,
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    /// Parse a service-account JSON key file's content.
    pub fn from_json(
        json: &str,
        client: reqwest::Client,
    ) -> Result<(Self, Option<String>), String> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("service-account JSON: {e}"))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let email = s("client_email").ok_or("service-account JSON has no client_email")?;
        let pem = s("private_key").ok_or("service-account JSON has no private_key")?;
        let b64: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("private_key is not PEM: {e}"))?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| format!("private_key is not a PKCS#8 RSA key: {e}"))?;
        Ok((
            Self {
                email,
                key_id: s("private_key_id"),
                key,
                token_uri: s("token_uri")
                    .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
                client,
                cached: tokio::sync::Mutex::new(None),
            },
            s("project_id"),
        ))
    }

    /// The signed JWT assertion for a token request issued at `now` (unix seconds).
    pub fn assertion(&self, now: u64) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(k) = &self.key_id {
            header["kid"] = k.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.email, "scope": SCOPE, "aud": self.token_uri,
            "iat": now, "exp": now + 3600,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "RSA signing failed".to_owned())?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// A valid access token: the cached one, or a fresh exchange.
    pub async fn token(&self, timeout: Duration) -> Result<String, ProviderError> {
        // Held across the exchange so concurrent callers share one refresh.
        let mut cached = self.cached.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let jwt = self.assertion(now).map_err(ProviderError::Protocol)?;
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
        );
        let rb = self
            .client
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        let resp = send(rb, timeout).await.map_err(|e| match e {
            // A refused assertion is a credentials problem, not the caller's request.
            ProviderError::Status {
                status, message, ..
            } if status < 500 => ProviderError::Status {
                status: 401,
                error_type: "authentication_error".into(),
                message: format!("Vertex AI token exchange refused ({status}): {message}"),
                retry_after: None,
            },
            e => e,
        })?;
        let v: serde_json::Value = serde_json::from_slice(&read_body(resp, timeout).await?)
            .map_err(|e| ProviderError::Protocol(format!("token response: {e}")))?;
        let token = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| ProviderError::Protocol("token response has no access_token".into()))?
            .to_owned();
        let ttl = v.get("expires_in").and_then(|e| e.as_u64()).unwrap_or(3600);
        let until = Instant::now() + Duration::from_secs(ttl.saturating_sub(60));
        *cached = Some((token.clone(), until));
        Ok(token)
    }
}

pub struct Vertex {
    id: String,
    /// `…/v1/projects/{p}/locations/{l}/publishers`
    prefix: String,
    client: reqwest::Client,
    headers: HeaderMap,
    auth: TokenSource,
}

impl Vertex {
    pub fn new(entry: &ModelEntry, client: reqwest::Client) -> Result<Self, ConfigError> {
        let err = |m: String| ConfigError::Invalid {
            path: format!(
                "model_list[{}].litellm_params.vertex_credentials",
                entry.model_name
            ),
            message: m,
        };
        let creds = entry.vertex.credentials.as_ref().ok_or_else(|| {
            err("vertex_ai/ needs vertex_credentials or GOOGLE_APPLICATION_CREDENTIALS".into())
        })?;
        let (auth, sa_project) =
            TokenSource::from_json(creds.expose(), client.clone()).map_err(err)?;
        let project =
            entry
                .vertex
                .project
                .clone()
                .or(sa_project)
                .ok_or_else(|| ConfigError::Missing {
                    path: format!(
                        "model_list[{}].litellm_params.vertex_project",
                        entry.model_name
                    ),
                })?;
        let loc = &entry.vertex.location;
        let host = match entry.api_base.as_deref() {
            Some(b) => b.trim_end_matches('/').to_owned(),
            None if loc == "global" => "https://aiplatform.googleapis.com".to_owned(),
            None => format!("https://{loc}-aiplatform.googleapis.com"),
        };
        let prefix = format!("{host}/v1/projects/{project}/locations/{loc}/publishers");
        Ok(Self {
            id: format!("vertex_ai:{prefix}"),
            prefix,
            client,
            headers: super::gemini::base_headers(entry),
            auth,
        })
    }

    async fn post(
        &self,
        url: String,
        o: &CallOpts<'_>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let token = self.auth.token(o.timeout).await?;
        Ok(self
            .client
            .post(url)
            .headers(self.headers.clone())
            .bearer_auth(token))
    }

    fn is_anthropic(model: &str) -> bool {
        model.starts_with("claude")
    }

    fn anthropic_body(
        req: &ChatRequest,
        o: &CallOpts<'_>,
        stream: bool,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut v = an::encode_request(req, o.model, stream);
        if let Some(m) = v.as_object_mut() {
            m.remove("model");
            m.insert("anthropic_version".into(), ANTHROPIC_VERTEX_VERSION.into());
        }
        serde_json::to_vec(&v).map_err(|e| ProviderError::InvalidRequest(e.to_string()))
    }
}

#[async_trait]
impl Provider for Vertex {
    fn id(&self) -> &str {
        &self.id
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<ChatResponse, ProviderError> {
        if Self::is_anthropic(o.model) {
            let url = format!("{}/anthropic/models/{}:rawPredict", self.prefix, o.model);
            let body = Self::anthropic_body(req, &o, false)?;
            let resp = send(self.post(url, &o).await?.body(body), o.timeout).await?;
            let v: serde_json::Value = serde_json::from_slice(&read_body(resp, o.timeout).await?)
                .map_err(|e| ProviderError::Protocol(e.to_string()))?;
            return an::decode_response(&v).map_err(ProviderError::Protocol);
        }
        let url = format!("{}/google/models/{}:generateContent", self.prefix, o.model);
        super::gemini::complete_at(self.post(url, &o).await?, req, o).await
    }

    async fn stream(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<EventStream, ProviderError> {
        if Self::is_anthropic(o.model) {
            let url = format!(
                "{}/anthropic/models/{}:streamRawPredict",
                self.prefix, o.model
            );
            let body = Self::anthropic_body(req, &o, true)?;
            let resp = send(self.post(url, &o).await?.body(body), o.timeout).await?;
            return Ok(event_stream(
                byte_stream(resp, o.idle_timeout),
                super::anthropic::Decoder(an::StreamDecoder::default()),
            ));
        }
        let url = format!(
            "{}/google/models/{}:streamGenerateContent?alt=sse",
            self.prefix, o.model
        );
        super::gemini::stream_at(self.post(url, &o).await?, req, o).await
    }
}
