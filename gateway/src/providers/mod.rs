//! Providers transport canonical requests to one upstream (or, on the
//! pass-through path, bytes already in the provider's own wire format).
//! One module per provider; `build` is the registry.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod openai;
pub(crate) mod pool;
pub mod scripted;
pub mod sigv4;
pub mod vertex;

use crate::canonical::{ChatRequest, ChatResponse, StreamEvent};
use crate::config::{ModelEntry, ProviderKind};
use crate::error::{ProviderError, WireFormat, parse_error_body};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ProviderError>> + Send>>;

/// Per-call parameters a provider needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct CallOpts<'a> {
    /// Upstream model name.
    pub model: &'a str,
    /// Time allowed until the response (non-stream) or the headers (stream).
    pub timeout: Duration,
    /// Time allowed between stream chunks.
    pub idle_timeout: Duration,
    /// The client's `anthropic-beta` header, forwarded to Anthropic upstreams.
    pub anthropic_beta: Option<&'a str>,
}

/// Inference endpoints besides chat that some providers serve natively
/// (pass-through only; see `Provider::forward_endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// OpenAI `POST /embeddings`.
    Embeddings,
    /// OpenAI legacy `POST /completions`.
    Completions,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// OpenAI `POST /responses` (the Responses API).
    Responses,
}

/// A raw upstream answer on the pass-through path (status already 2xx).
pub enum RawResponse {
    Full(Bytes),
    Stream(ByteStream),
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn id(&self) -> &str;

    /// The wire format this provider speaks natively, if it can take
    /// pass-through bodies in that format.
    fn wire_format(&self) -> Option<WireFormat> {
        None
    }

    async fn complete(
        &self,
        req: &ChatRequest,
        opts: CallOpts<'_>,
    ) -> Result<ChatResponse, ProviderError>;

    async fn stream(
        &self,
        req: &ChatRequest,
        opts: CallOpts<'_>,
    ) -> Result<EventStream, ProviderError>;

    /// Send a body already in `wire_format()` (model already rewritten).
    async fn forward(
        &self,
        _body: Bytes,
        _stream: bool,
        _opts: CallOpts<'_>,
    ) -> Result<RawResponse, ProviderError> {
        Err(ProviderError::InvalidRequest(
            "this provider has no pass-through".into(),
        ))
    }

    /// Whether `forward_endpoint` serves `ep` for this provider.
    fn has_endpoint(&self, _ep: Endpoint) -> bool {
        false
    }

    /// Send a body already in the endpoint's wire format (model already rewritten)
    /// to that endpoint of this upstream, with the same auth headers as chat.
    async fn forward_endpoint(
        &self,
        ep: Endpoint,
        _body: Bytes,
        _stream: bool,
        _opts: CallOpts<'_>,
    ) -> Result<RawResponse, ProviderError> {
        Err(ProviderError::InvalidRequest(format!(
            "provider {} does not serve {ep:?}",
            self.id()
        )))
    }
}

/// Build the provider for one `model_list` entry.
pub fn build(
    entry: &ModelEntry,
    client: &reqwest::Client,
    raw: &RawClient,
) -> Result<Arc<dyn Provider>, crate::config::ConfigError> {
    Ok(match &entry.provider {
        ProviderKind::OpenAi | ProviderKind::Azure => {
            Arc::new(openai::OpenAi::new(entry, client.clone(), raw.clone())?)
        }
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(
            entry,
            client.clone(),
            raw.clone(),
        )?),
        ProviderKind::Gemini => Arc::new(gemini::Gemini::new(entry, client.clone())?),
        ProviderKind::VertexAi => Arc::new(vertex::Vertex::new(entry, client.clone())?),
        ProviderKind::Bedrock => Arc::new(bedrock::Bedrock::new(entry, client.clone())?),
        ProviderKind::Scripted(path) => Arc::new(scripted::Scripted::load(path)?),
    })
}

/// The shared HTTP client: one keep-alive pool for every upstream.
pub fn http_client() -> reqwest::Client {
    // A second install attempt returns Err when a provider is already installed; that is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| {
            tracing::error!("building the HTTP client failed ({e}); using defaults");
            reqwest::Client::new()
        })
}

fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(Duration::from_secs_f64((ms / 1000.0).max(0.0)));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

tokio::task_local! {
    /// The response headers of the last upstream call made inside [`capturing_headers`].
    static UPSTREAM_HEADERS: std::cell::RefCell<Option<http::HeaderMap>>;
}

/// Run a provider call and also return the headers its upstream answered with
/// (LiteLLM hands them to the client as `llm_provider-*`). Providers need no
/// plumbing for this: [`send`] and [`RawClient`] record what they receive.
pub async fn capturing_headers<F: std::future::Future>(
    f: F,
) -> (F::Output, Option<http::HeaderMap>) {
    UPSTREAM_HEADERS
        .scope(std::cell::RefCell::new(None), async move {
            let out = f.await;
            let h = UPSTREAM_HEADERS.with(|c| c.borrow_mut().take());
            (out, h)
        })
        .await
}

fn record_headers(h: &http::HeaderMap) {
    let _ = UPSTREAM_HEADERS.try_with(|c| *c.borrow_mut() = Some(h.clone()));
}

/// Send a request with a timeout; map non-2xx to `ProviderError::Status`.
pub(crate) async fn send(
    rb: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<reqwest::Response, ProviderError> {
    let resp = match tokio::time::timeout(timeout, rb.send()).await {
        Err(_) => return Err(ProviderError::Timeout(timeout)),
        Ok(Err(e)) if e.is_timeout() => return Err(ProviderError::Timeout(timeout)),
        Ok(Err(e)) => return Err(ProviderError::Connect(e.to_string())),
        Ok(Ok(r)) => r,
    };
    if resp.status().is_success() {
        record_headers(resp.headers());
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let ra = retry_after(resp.headers());
    let body = tokio::time::timeout(timeout, resp.bytes())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let (error_type, message) = parse_error_body(&body).unwrap_or_else(|| {
        (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
        )
    });
    Err(ProviderError::Status {
        status,
        error_type,
        message,
        retry_after: ra,
    })
}

/// Read a whole body within `timeout`.
pub(crate) async fn read_body(
    resp: reqwest::Response,
    timeout: Duration,
) -> Result<Bytes, ProviderError> {
    match tokio::time::timeout(timeout, resp.bytes()).await {
        Err(_) => Err(ProviderError::Timeout(timeout)),
        Ok(Err(e)) => Err(ProviderError::Connect(e.to_string())),
        Ok(Ok(b)) => Ok(b),
    }
}

/// The body as a stream of chunks, each awaited with `idle` as its deadline.
pub(crate) fn byte_stream(resp: reqwest::Response, idle: Duration) -> ByteStream {
    use futures_util::StreamExt;
    let s = resp.bytes_stream();
    Box::pin(futures_util::stream::unfold(
        Some(Box::pin(s)),
        move |st| async move {
            let mut s = st?;
            match tokio::time::timeout(idle, s.next()).await {
                Err(_) => Some((Err(ProviderError::Timeout(idle)), None)),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((Err(ProviderError::Connect(e.to_string())), None)),
                Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            }
        },
    ))
}

/// A format-specific SSE decoder producing canonical events.
pub(crate) trait SseDecoder: Send + 'static {
    fn event(
        &mut self,
        ev: crate::sse::Event<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), String>;
    /// End of the byte stream: emit the final event if not done yet.
    fn finish(&mut self, out: &mut Vec<StreamEvent>);
}

/// Decode an SSE byte stream into canonical events.
pub(crate) fn event_stream<D: SseDecoder>(bytes: ByteStream, mut decoder: D) -> EventStream {
    use futures_util::StreamExt;
    use std::task::Poll;
    let mut splitter = crate::sse::SseSplitter::default();
    let mut queue: std::collections::VecDeque<Result<StreamEvent, ProviderError>> =
        Default::default();
    let mut bytes = Some(bytes);
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        loop {
            if let Some(ev) = queue.pop_front() {
                return Poll::Ready(Some(ev));
            }
            let Some(b) = bytes.as_mut() else {
                return Poll::Ready(None);
            };
            let mut out = Vec::new();
            let mut err = None;
            match b.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    splitter.push(&chunk, |raw| {
                        if err.is_none()
                            && let Err(e) = decoder.event(crate::sse::parse_event(raw), &mut out)
                        {
                            err = Some(e);
                        }
                    });
                }
                Poll::Ready(Some(Err(e))) => {
                    queue.push_back(Err(e));
                    bytes = None;
                    continue;
                }
                Poll::Ready(None) => {
                    splitter.finish(|raw| {
                        if err.is_none()
                            && let Err(e) = decoder.event(crate::sse::parse_event(raw), &mut out)
                        {
                            err = Some(e);
                        }
                    });
                    if err.is_none() {
                        decoder.finish(&mut out);
                    }
                    bytes = None;
                }
            }
            queue.extend(out.into_iter().map(Ok));
            if let Some(e) = err {
                queue.push_back(Err(ProviderError::Protocol(e)));
                bytes = None;
            }
        }
    }))
}

/// Sets the `Host` header of an upstream's fixed header map, as hyper_util's client would add
/// it to every HTTP/1 request (the host, and the port when it is not the scheme's default),
/// unless the config set one. Made once per upstream: added per request, it cost a `format!`,
/// a header-value check and the growth of the cloned map (~2.3k instructions a request,
/// callgrind, bench/gateway/callgrind.sh). All of an upstream's URIs share the host of its
/// `api_base`. Over HTTP/2 the same value goes as `host` next to `:authority` (RFC 9113
/// §8.3.1 allows both when they agree).
pub(crate) fn set_host_header(headers: &mut http::HeaderMap, uri: &http::Uri) {
    if headers.contains_key(http::header::HOST) {
        return;
    }
    let Some(host) = uri.host() else { return };
    let default_port = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    let text = match uri.port_u16() {
        Some(p) if Some(p) != default_port => format!("{host}:{p}"),
        _ => host.to_owned(),
    };
    if let Ok(v) = http::HeaderValue::from_str(&text) {
        headers.insert(http::header::HOST, v);
    }
}

/// A bare hyper client (a keep-alive pool per thread, TCP_NODELAY) for the
/// pass-through path, where reqwest's per-request conveniences are overhead.
#[derive(Clone)]
pub struct RawClient {
    _private: (),
}

type Pool = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

thread_local! {
    /// One upstream connection pool per thread. A pooled connection is driven by a task on
    /// the runtime that opened it; shared across the standalone gateway's per-thread runtimes,
    /// a request on one thread would often get a connection served by another and pay two
    /// cross-thread wake-ups (futex) per request. Per thread, the whole exchange stays on the
    /// thread that accepted the client. In a multi-threaded runtime (the brain) each worker
    /// simply keeps its own idle connections.
    static POOL: Pool = new_pool();
}

fn new_pool() -> Pool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .timer(hyper_util::rt::TokioTimer::new())
        .build(https)
}

impl RawClient {
    pub fn new() -> Self {
        Self { _private: () }
    }

    /// POST `body` with `headers`; non-2xx becomes `ProviderError::Status`.
    /// No timeout here: callers bound the whole exchange with one timer.
    async fn post(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        extra: Option<(&'static str, &str)>,
        body: Bytes,
    ) -> Result<http::Response<pool::Body>, ProviderError> {
        let mut req = http::Request::new(http_body_util::Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        if let Some((k, v)) = extra
            && let Ok(v) = http::HeaderValue::from_str(v)
        {
            req.headers_mut().insert(k, v);
        }
        let resp = if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            pool::send(req).await.map_err(ProviderError::Connect)?
        } else {
            POOL.with(|pool| pool.request(req))
                .await
                .map_err(|e| ProviderError::Connect(e.to_string()))?
                .map(pool::Body::unpooled)
        };
        if resp.status().is_success() {
            record_headers(resp.headers());
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let ra = retry_after(resp.headers());
        let body = match http_body_util::BodyExt::collect(resp.into_body()).await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let (error_type, message) = parse_error_body(&body).unwrap_or_else(|| {
            (
                String::new(),
                String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
            )
        });
        Err(ProviderError::Status {
            status,
            error_type,
            message,
            retry_after: ra,
        })
    }

    /// The pass-through exchange: one timer covers the request and (non-stream)
    /// the whole body; streams get an idle timer per chunk instead.
    pub(crate) async fn forward(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        extra: Option<(&'static str, &str)>,
        body: Bytes,
        stream: bool,
        o: CallOpts<'_>,
    ) -> Result<RawResponse, ProviderError> {
        if !stream {
            let exchange = async {
                let resp = self.post(uri, headers, extra, body).await?;
                http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .map(|c| RawResponse::Full(c.to_bytes()))
                    .map_err(|e| ProviderError::Connect(e.to_string()))
            };
            return tokio::time::timeout(o.timeout, exchange)
                .await
                .unwrap_or(Err(ProviderError::Timeout(o.timeout)));
        }
        let resp = tokio::time::timeout(o.timeout, self.post(uri, headers, extra, body))
            .await
            .unwrap_or(Err(ProviderError::Timeout(o.timeout)))?;
        use futures_util::StreamExt;
        let idle = o.idle_timeout;
        let s = http_body_util::BodyDataStream::new(resp.into_body());
        Ok(RawResponse::Stream(Box::pin(futures_util::stream::unfold(
            Some(Box::pin(s)),
            move |st| async move {
                let mut s = st?;
                match tokio::time::timeout(idle, s.next()).await {
                    Err(_) => Some((Err(ProviderError::Timeout(idle)), None)),
                    Ok(None) => None,
                    Ok(Some(Err(e))) => Some((Err(ProviderError::Connect(e.to_string())), None)),
                    Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
                }
            },
        ))))
    }
}

impl Default for RawClient {
    fn default() -> Self {
        Self::new()
    }
}
