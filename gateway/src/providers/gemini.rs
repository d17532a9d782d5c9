//! Google Gemini: `POST {base}/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse` with an `x-goog-api-key` header
//! (ai.google.dev/api/generate-content). The same transport serves Vertex AI's
//! Gemini models with a bearer token instead (see `vertex.rs`).

use super::{
    CallOpts, EventStream, Provider, SseDecoder, byte_stream, event_stream, read_body, send,
};
use crate::canonical::{ChatRequest, ChatResponse, StreamEvent};
use crate::config::{ConfigError, ModelEntry};
use crate::error::ProviderError;
use crate::formats::gemini as fmt;
use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

pub const DEFAULT_BASE: &str = "https://generativelanguage.googleapis.com/v1beta";

pub struct Gemini {
    id: String,
    base: String,
    client: reqwest::Client,
    headers: HeaderMap,
}

pub(crate) fn base_headers(entry: &ModelEntry) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (k, v) in &entry.extra_headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            headers.insert(k, v);
        }
    }
    headers
}

impl Gemini {
    pub fn new(entry: &ModelEntry, client: reqwest::Client) -> Result<Self, ConfigError> {
        let base = entry
            .api_base
            .as_deref()
            .unwrap_or(DEFAULT_BASE)
            .trim_end_matches('/')
            .to_owned();
        let mut headers = base_headers(entry);
        let key = entry.api_key.as_ref().ok_or_else(|| ConfigError::Invalid {
            path: format!("model_list[{}].litellm_params.api_key", entry.model_name),
            message: "gemini/ needs api_key (or GEMINI_API_KEY)".into(),
        })?;
        let mut v = HeaderValue::from_str(key.expose()).map_err(|_| ConfigError::Invalid {
            path: format!("model_list[{}].litellm_params.api_key", entry.model_name),
            message: "not a valid header value".into(),
        })?;
        v.set_sensitive(true);
        headers.insert("x-goog-api-key", v);
        Ok(Self {
            id: format!("gemini:{base}"),
            base,
            client,
            headers,
        })
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

/// One `generateContent` exchange at `url` (method suffix included).
pub(crate) async fn complete_at(
    rb: reqwest::RequestBuilder,
    req: &ChatRequest,
    o: CallOpts<'_>,
) -> Result<ChatResponse, ProviderError> {
    let body = serde_json::to_vec(&fmt::encode_request(req))
        .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
    let resp = send(rb.body(body), o.timeout).await?;
    let bytes = read_body(resp, o.timeout).await?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::Protocol(e.to_string()))?;
    let mut r = fmt::decode_response(&v).map_err(ProviderError::Protocol)?;
    if r.model.is_empty() {
        r.model = o.model.to_owned();
    }
    Ok(r)
}

pub(crate) async fn stream_at(
    rb: reqwest::RequestBuilder,
    req: &ChatRequest,
    o: CallOpts<'_>,
) -> Result<EventStream, ProviderError> {
    let body = serde_json::to_vec(&fmt::encode_request(req))
        .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
    let resp = send(rb.body(body), o.timeout).await?;
    Ok(event_stream(
        byte_stream(resp, o.idle_timeout),
        Decoder(fmt::StreamDecoder::default()),
    ))
}

#[async_trait]
impl Provider for Gemini {
    fn id(&self) -> &str {
        &self.id
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<ChatResponse, ProviderError> {
        let url = format!("{}/models/{}:generateContent", self.base, o.model);
        let rb = self.client.post(url).headers(self.headers.clone());
        complete_at(rb, req, o).await
    }

    async fn stream(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<EventStream, ProviderError> {
        let url = format!(
            "{}/models/{}:streamGenerateContent?alt=sse",
            self.base, o.model
        );
        let rb = self.client.post(url).headers(self.headers.clone());
        stream_at(rb, req, o).await
    }
}
