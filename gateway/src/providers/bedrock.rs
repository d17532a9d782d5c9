//! AWS Bedrock Converse: `POST {endpoint}/model/{modelId}/converse` and
//! `/converse-stream` (event-stream answer), SigV4-signed for service
//! `bedrock` (docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html).
//! Endpoint: `https://bedrock-runtime.{region}.amazonaws.com`, or `api_base` /
//! `aws_bedrock_runtime_endpoint`.

use super::{CallOpts, EventStream, Provider, byte_stream, read_body, send, sigv4};
use crate::canonical::{ChatRequest, ChatResponse};
use crate::config::{ConfigError, ModelEntry, Secret};
use crate::error::ProviderError;
use crate::formats::bedrock as fmt;
use async_trait::async_trait;
use futures_util::StreamExt;

pub struct Bedrock {
    id: String,
    endpoint: reqwest::Url,
    client: reqwest::Client,
    region: String,
    key_id: Secret,
    secret: Secret,
    session_token: Option<Secret>,
    extra_headers: Vec<(String, String)>,
}

impl Bedrock {
    pub fn new(entry: &ModelEntry, client: reqwest::Client) -> Result<Self, ConfigError> {
        let a = &entry.aws;
        let missing = || ConfigError::Invalid {
            path: format!(
                "model_list[{}].litellm_params.aws_access_key_id",
                entry.model_name
            ),
            message: "bedrock/ needs AWS credentials".into(),
        };
        let ep = entry
            .api_base
            .clone()
            .unwrap_or_else(|| format!("https://bedrock-runtime.{}.amazonaws.com", a.region));
        let endpoint =
            reqwest::Url::parse(ep.trim_end_matches('/')).map_err(|e| ConfigError::Invalid {
                path: format!("model_list[{}].litellm_params.api_base", entry.model_name),
                message: format!("`{ep}` is not a URL: {e}"),
            })?;
        Ok(Self {
            id: format!("bedrock:{}", endpoint),
            endpoint,
            client,
            region: a.region.clone(),
            key_id: a.access_key_id.clone().ok_or_else(missing)?,
            secret: a.secret_access_key.clone().ok_or_else(missing)?,
            session_token: a.session_token.clone(),
            extra_headers: entry.extra_headers.clone(),
        })
    }

    /// A signed POST of `body` to `/model/{model}/{action}`.
    fn signed(
        &self,
        model: &str,
        action: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        // LiteLLM accepts `bedrock/converse/<id>`: the route is explicit here anyway.
        let model = model.strip_prefix("converse/").unwrap_or(model);
        let base_path = self.endpoint.path().trim_end_matches('/');
        let path = format!(
            "{base_path}/model/{}/{action}",
            sigv4::uri_encode(model, false)
        );
        let mut url = self.endpoint.clone();
        url.set_path(&path);
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("host".to_owned(), host),
            ("x-amz-date".to_owned(), amz_date.clone()),
        ];
        if let Some(t) = &self.session_token {
            headers.push(("x-amz-security-token".into(), t.expose().to_owned()));
        }
        let auth = sigv4::authorization(
            &sigv4::Request {
                method: "POST",
                path: url.path(),
                query: "",
                headers: &headers,
                payload_sha256: &sigv4::sha256_hex(&body),
            },
            &sigv4::Scope {
                access_key_id: self.key_id.expose(),
                secret: self.secret.expose(),
                region: &self.region,
                service: "bedrock",
                amz_date: &amz_date,
            },
        );
        let mut rb = self.client.post(url).header("authorization", auth);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            rb = rb.header(k.as_str(), v.as_str());
        }
        for (k, v) in &self.extra_headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        Ok(rb.body(body))
    }
}

#[async_trait]
impl Provider for Bedrock {
    fn id(&self) -> &str {
        &self.id
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<ChatResponse, ProviderError> {
        let body = serde_json::to_vec(&fmt::encode_request(req))
            .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
        let resp = send(self.signed(o.model, "converse", body)?, o.timeout).await?;
        let v: serde_json::Value = serde_json::from_slice(&read_body(resp, o.timeout).await?)
            .map_err(|e| ProviderError::Protocol(e.to_string()))?;
        fmt::decode_response(&v, o.model).map_err(ProviderError::Protocol)
    }

    async fn stream(
        &self,
        req: &ChatRequest,
        o: CallOpts<'_>,
    ) -> Result<EventStream, ProviderError> {
        let body = serde_json::to_vec(&fmt::encode_request(req))
            .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
        let resp = send(self.signed(o.model, "converse-stream", body)?, o.timeout).await?;
        let bytes = byte_stream(resp, o.idle_timeout);
        let decoder = fmt::StreamDecoder::new(o.model);
        // (bytes, buffer, decoder, pending events, done)
        let st = (
            Some(bytes),
            Vec::<u8>::new(),
            decoder,
            std::collections::VecDeque::new(),
        );
        Ok(Box::pin(futures_util::stream::unfold(
            st,
            |mut st| async move {
                loop {
                    if let Some(ev) = st.3.pop_front() {
                        return Some((ev, st));
                    }
                    let b = st.0.as_mut()?;
                    match b.next().await {
                        Some(Ok(chunk)) => {
                            st.1.extend_from_slice(&chunk);
                            let mut out = Vec::new();
                            loop {
                                match fmt::decode_frame(&mut st.1) {
                                    Ok(Some(f)) => {
                                        if let Err(e) = st.2.push(&f, &mut out) {
                                            st.3.extend(out.drain(..).map(Ok));
                                            st.3.push_back(Err(ProviderError::Protocol(e)));
                                            st.0 = None;
                                            break;
                                        }
                                    }
                                    Ok(None) => break,
                                    Err(e) => {
                                        st.3.push_back(Err(ProviderError::Protocol(e)));
                                        st.0 = None;
                                        break;
                                    }
                                }
                            }
                            st.3.extend(out.into_iter().map(Ok));
                        }
                        Some(Err(e)) => {
                            st.3.push_back(Err(e));
                            st.0 = None;
                        }
                        None => {
                            let mut out = Vec::new();
                            st.2.finish(&mut out);
                            st.3.extend(out.into_iter().map(Ok));
                            st.0 = None;
                        }
                    }
                }
            },
        )))
    }
}
