//! Anthropic Messages API (`POST {api_base}/v1/messages`).

use super::RawClient;
use super::{
    CallOpts, Endpoint, EventStream, Provider, RawResponse, SseDecoder, byte_stream, event_stream,
    read_body, send,
};
use crate::canonical::{ChatRequest, ChatResponse, StreamEvent};
use crate::config::{ConfigError, ModelEntry};
use crate::error::{ProviderError, WireFormat};
use crate::formats::anthropic as fmt;
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

pub const DEFAULT_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    id: String,
    url: reqwest::Url,
    client: reqwest::Client,
    headers: HeaderMap,
    raw: RawClient,
    uri: http::Uri,
    /// `{api_base}/v1/messages/count_tokens` (docs.anthropic.com, "Count message tokens").
    count_uri: http::Uri,
}

impl Anthropic {
    pub fn new(
        entry: &ModelEntry,
        client: reqwest::Client,
        raw: RawClient,
    ) -> Result<Self, ConfigError> {
        let base = entry
            .api_base
            .as_deref()
            .unwrap_or("https://api.anthropic.com")
            .trim_end_matches('/');
        let url_s = if base.ends_with("/v1/messages") {
            base.to_owned()
        } else if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        };
        let url = reqwest::Url::parse(&url_s).map_err(|e| ConfigError::Invalid {
            path: format!("model_list[{}].litellm_params.api_base", entry.model_name),
            message: format!("`{url_s}` is not a URL: {e}"),
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let version = entry.api_version.as_deref().unwrap_or(DEFAULT_VERSION);
        if let Ok(v) = HeaderValue::from_str(version) {
            headers.insert("anthropic-version", v);
        }
        if let Some(k) = &entry.api_key {
            let mut v = HeaderValue::from_str(k.expose()).map_err(|_| ConfigError::Invalid {
                path: format!("model_list[{}].litellm_params.api_key", entry.model_name),
                message: "not a valid header value".into(),
            })?;
            v.set_sensitive(true);
            headers.insert("x-api-key", v);
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
        let count_s = format!("{url_s}/count_tokens");
        let count_uri: http::Uri = count_s.parse().map_err(|e| ConfigError::Invalid {
            path: format!("model_list[{}].litellm_params.api_base", entry.model_name),
            message: format!("`{count_s}` is not a URI: {e}"),
        })?;
        Ok(Self {
            count_uri,
            id: format!("anthropic:{}", url),
            url,
            raw,
            uri,
            client,
            headers,
        })
    }

    fn post(&self, body: impl Into<reqwest::Body>, o: &CallOpts<'_>) -> reqwest::RequestBuilder {
        let rb = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body);
        match o.anthropic_beta {
            Some(b) => rb.header("anthropic-beta", b),
            None => rb,
        }
    }
}

pub(crate) struct Decoder(pub(crate) fmt::StreamDecoder);

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
impl Provider for Anthropic {
    fn id(&self) -> &str {
        &self.id
    }

    fn wire_format(&self) -> Option<WireFormat> {
        Some(WireFormat::Anthropic)
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<ChatResponse, ProviderError> {
        let body = serde_json::to_vec(&fmt::encode_request(req, o.model, false))
            .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
        let resp = send(self.post(body, &o), o.timeout).await?;
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
        let resp = send(self.post(body, &o), o.timeout).await?;
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
        self.raw
            .forward(
                &self.uri,
                &self.headers,
                o.anthropic_beta.map(|b| ("anthropic-beta", b)),
                body,
                stream,
                o,
            )
            .await
    }

    fn has_endpoint(&self, ep: Endpoint) -> bool {
        ep == Endpoint::CountTokens
    }

    async fn forward_endpoint(
        &self,
        ep: Endpoint,
        body: Bytes,
        stream: bool,
        o: CallOpts<'_>,
    ) -> Result<RawResponse, ProviderError> {
        if ep != Endpoint::CountTokens {
            return Err(ProviderError::InvalidRequest(format!(
                "Anthropic has no {ep:?} endpoint"
            )));
        }
        self.raw
            .forward(
                &self.count_uri,
                &self.headers,
                o.anthropic_beta.map(|b| ("anthropic-beta", b)),
                body,
                stream,
                o,
            )
            .await
    }
}
