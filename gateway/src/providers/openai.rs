//! OpenAI and OpenAI-compatible servers (`POST {api_base}/chat/completions`),
//! and Azure OpenAI, which speaks the same body at a per-deployment URL:
//! `POST {api_base}/openai/deployments/{deployment}/chat/completions?api-version=…`
//! with an `api-key` header (learn.microsoft.com/azure/ai-services/openai/reference,
//! "Chat completions"; LiteLLM's azure.py builds the same URL).

use super::RawClient;
use super::{
    CallOpts, Endpoint, EventStream, Provider, RawResponse, SseDecoder, byte_stream, event_stream,
    read_body, send,
};
use crate::canonical::{ChatRequest, ChatResponse, StreamEvent};
use crate::config::{ConfigError, ModelEntry};
use crate::error::{ProviderError, WireFormat};
use crate::formats::openai as fmt;
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

/// LiteLLM's default `api_version` for Azure when none is configured
/// (litellm/constants.py `AZURE_DEFAULT_API_VERSION`).
pub const AZURE_DEFAULT_API_VERSION: &str = "2025-02-01-preview";

pub struct OpenAi {
    id: String,
    /// Azure: (api_base, api-version); the URL then depends on the deployment.
    azure: Option<(String, String)>,
    url: reqwest::Url,
    client: reqwest::Client,
    headers: HeaderMap,
    raw: RawClient,
    uri: http::Uri,
}

impl OpenAi {
    pub fn new(
        entry: &ModelEntry,
        client: reqwest::Client,
        raw: RawClient,
    ) -> Result<Self, ConfigError> {
        let base = entry
            .api_base
            .as_deref()
            .unwrap_or("https://api.openai.com/v1");
        let is_azure = entry.provider == crate::config::ProviderKind::Azure;
        let azure = is_azure.then(|| {
            (
                base.trim_end_matches('/').to_owned(),
                entry
                    .api_version
                    .clone()
                    .unwrap_or_else(|| AZURE_DEFAULT_API_VERSION.to_owned()),
            )
        });
        let url_s = match &azure {
            Some((b, v)) => azure_url(b, &entry.model, v, "chat/completions"),
            None => format!("{}/chat/completions", base.trim_end_matches('/')),
        };
        let url = reqwest::Url::parse(&url_s).map_err(|e| ConfigError::Invalid {
            path: format!("model_list[{}].litellm_params.api_base", entry.model_name),
            message: format!("`{url_s}` is not a URL: {e}"),
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(k) = &entry.api_key {
            let text = if is_azure {
                k.expose().to_owned()
            } else {
                format!("Bearer {}", k.expose())
            };
            let mut v = HeaderValue::from_str(&text).map_err(|_| ConfigError::Invalid {
                path: format!("model_list[{}].litellm_params.api_key", entry.model_name),
                message: "not a valid header value".into(),
            })?;
            v.set_sensitive(true);
            headers.insert(if is_azure { AZURE_KEY } else { AUTHORIZATION }, v);
        }
        if let Some(org) = &entry.organization
            && let Ok(v) = HeaderValue::from_str(org)
        {
            headers.insert("openai-organization", v);
        }
        for (k, v) in &entry.extra_headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
                headers.insert(k, v);
            }
        }
        let uri: http::Uri = url.as_str().parse().map_err(|e| ConfigError::Invalid {
            path: format!("model_list[{}].litellm_params.api_base", entry.model_name),
            message: format!("`{url}` is not a URI: {e}"),
        })?;
        super::set_host_header(&mut headers, &uri);
        Ok(Self {
            id: format!("{}:{}", entry.provider_name, url),
            azure,
            url,
            raw,
            uri,
            client,
            headers,
        })
    }

    /// The URL for one call: fixed, except for Azure where it names the deployment.
    fn url_for(&self, model: &str) -> Result<reqwest::Url, ProviderError> {
        match &self.azure {
            None => Ok(self.url.clone()),
            Some((b, v)) => reqwest::Url::parse(&azure_url(b, model, v, "chat/completions"))
                .map_err(|e| ProviderError::InvalidRequest(format!("azure URL: {e}"))),
        }
    }

    fn post(
        &self,
        model: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        Ok(self
            .client
            .post(self.url_for(model)?)
            .headers(self.headers.clone())
            .body(body))
    }
}

const AZURE_KEY: HeaderName = HeaderName::from_static("api-key");

/// The URI of another OpenAI endpoint (`embeddings`, `completions`) of this upstream:
/// the chat URL with its last path (`chat/completions`) swapped.
impl OpenAi {
    fn endpoint_uri(&self, ep: Endpoint, model: &str) -> Result<http::Uri, ProviderError> {
        let path = match ep {
            Endpoint::Embeddings => "embeddings",
            Endpoint::Completions => "completions",
            Endpoint::Responses if self.azure.is_none() => "responses",
            Endpoint::Responses => {
                return Err(ProviderError::InvalidRequest(
                    "Azure deployments take /v1/responses translated, not passed through".into(),
                ));
            }
            Endpoint::CountTokens => {
                return Err(ProviderError::InvalidRequest(
                    "OpenAI-compatible providers have no count_tokens endpoint".into(),
                ));
            }
        };
        let s = match &self.azure {
            Some((b, v)) => azure_url(b, model, v, path),
            None => {
                let chat = self.url.as_str();
                match chat.strip_suffix("chat/completions") {
                    Some(base) => format!("{base}{path}"),
                    // An api_base that already named some other path: append ours.
                    None => format!("{}/{path}", chat.trim_end_matches('/')),
                }
            }
        };
        s.parse()
            .map_err(|e| ProviderError::InvalidRequest(format!("endpoint URL `{s}`: {e}")))
    }
}

fn azure_url(base: &str, deployment: &str, version: &str, path: &str) -> String {
    let base = base
        .split_once("/openai/deployments")
        .map(|(b, _)| b)
        .unwrap_or(base);
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!(
        "{base}/openai/deployments/{}/{path}?api-version={}",
        enc(deployment),
        enc(version)
    )
}

struct Decoder(fmt::StreamDecoder);

impl SseDecoder for Decoder {
    fn event(
        &mut self,
        ev: crate::sse::Event<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), String> {
        if ev.data.is_empty() {
            return Ok(());
        }
        self.0.push(&ev.data, out)
    }
    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.0.finish(out)
    }
}

#[async_trait]
impl Provider for OpenAi {
    fn id(&self) -> &str {
        &self.id
    }

    fn wire_format(&self) -> Option<WireFormat> {
        Some(WireFormat::OpenAi)
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<ChatResponse, ProviderError> {
        let body = serde_json::to_vec(&fmt::encode_request(req, o.model, false))
            .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
        let resp = send(self.post(o.model, body)?, o.timeout).await?;
        let bytes = read_body(resp, o.timeout).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        fmt::decode_response(&v).map_err(ProviderError::Protocol)
    }

    async fn stream(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<EventStream, ProviderError> {
        let body = serde_json::to_vec(&fmt::encode_request(req, o.model, true))
            .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
        let resp = send(self.post(o.model, body)?, o.timeout).await?;
        Ok(event_stream(
            byte_stream(resp, o.idle_timeout),
            Decoder(fmt::StreamDecoder::default()),
        ))
    }

    async fn forward(
        &self,
        body: Bytes,
        stream: bool,
        o: CallOpts<'_>,
    ) -> Result<RawResponse, ProviderError> {
        let owned: http::Uri;
        let uri = match &self.azure {
            None => &self.uri,
            Some(_) => {
                owned = self
                    .url_for(o.model)?
                    .as_str()
                    .parse()
                    .map_err(|e| ProviderError::InvalidRequest(format!("azure URL: {e}")))?;
                &owned
            }
        };
        self.raw
            .forward(uri, &self.headers, None, body, stream, o)
            .await
    }

    fn has_endpoint(&self, ep: Endpoint) -> bool {
        matches!(ep, Endpoint::Embeddings | Endpoint::Completions)
            || (ep == Endpoint::Responses && self.azure.is_none())
    }

    async fn forward_endpoint(
        &self,
        ep: Endpoint,
        body: Bytes,
        stream: bool,
        o: CallOpts<'_>,
    ) -> Result<RawResponse, ProviderError> {
        let uri = self.endpoint_uri(ep, o.model)?;
        self.raw
            .forward(&uri, &self.headers, None, body, stream, o)
            .await
    }
}
