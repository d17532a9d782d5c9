//! The OTLP/HTTP exporter: endpoint and settings resolution, our span exporter (encoding in
//! [`crate::otlp`]), its HTTP client and the batch processor.

use std::time::Duration;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};

use crate::{TelemetryError, hot, otlp};

/// Where traces go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `telemetry.otlp_endpoint`, already extended to the traces URL.
    Url(String),
    /// The `OTEL_EXPORTER_OTLP_*` env vars, resolved by the exporter as the spec says.
    Env,
}

const TRACES_PATH: &str = "/v1/traces";

/// Resolves the endpoint: the config wins, then the env vars; `None` = tracing off
/// (also when `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
pub(crate) fn endpoint(configured: Option<&str>) -> Result<Option<Endpoint>, TelemetryError> {
    endpoint_from(configured, |name| std::env::var(name).ok())
}

pub(crate) fn endpoint_from(
    configured: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Endpoint>, TelemetryError> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = set(var) {
            if value.trim() != "http/protobuf" {
                return Err(TelemetryError::Protocol { var, value });
            }
            break;
        }
    }
    if let Some(base) = configured.map(str::trim).filter(|s| !s.is_empty()) {
        let parsed: http::Uri = base.parse().map_err(|e| {
            TelemetryError::Exporter(format!("telemetry.otlp_endpoint {base:?}: {e}"))
        })?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            return Err(TelemetryError::Exporter(format!(
                "telemetry.otlp_endpoint {base:?}: expected an http:// or https:// URL"
            )));
        }
        let base = base.trim_end_matches('/');
        let url = if base.ends_with(TRACES_PATH) {
            base.to_owned()
        } else {
            format!("{base}{TRACES_PATH}")
        };
        return Ok(Some(Endpoint::Url(url)));
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    {
        return Ok(Some(Endpoint::Env));
    }
    Ok(None)
}

/// A current-thread runtime on its own thread, for the exporter's HTTP requests: the SDK's
/// batch thread drives export futures without a Tokio context, and the application's runtime
/// may already be shutting down when the last spans are flushed.
pub(crate) struct ExportRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExportRuntime {
    fn start() -> Result<Self, TelemetryError> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| TelemetryError::Exporter(format!("starting the export thread: {e}")))?;
        let handle = handle_rx
            .recv()
            .map_err(|_| TelemetryError::Exporter("the export thread died".into()))?
            .map_err(TelemetryError::Exporter)?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where and how spans are sent: the OTLP exporter spec's settings
/// (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>), as opentelemetry-otlp
/// read them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExportConfig {
    /// The full traces URL (`…/v1/traces`).
    pub url: reqwest::Url,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`.
    pub headers: http::HeaderMap,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`: bounds each export, retries included.
    pub timeout: Duration,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION=gzip`.
    pub gzip: bool,
}

/// The spec's default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl ExportConfig {
    /// Reads the settings for `endpoint` from `env`; warnings (ignored values, as the spec
    /// says for unparsable numbers) come back with it. A malformed endpoint, header list or
    /// an unsupported compression is an error: a start-up failure, not spans silently lost.
    pub(crate) fn from_env(
        endpoint: &Endpoint,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<String>), TelemetryError> {
        let set = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut warnings = Vec::new();
        let url = match endpoint {
            Endpoint::Url(url) => parse_url("telemetry.otlp_endpoint", url)?,
            Endpoint::Env => {
                if let Some(url) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                    // The signal's own variable is used as is.
                    parse_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url)?
                } else if let Some(base) = set("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    let url = format!("{}{TRACES_PATH}", base.trim_end_matches('/'));
                    parse_url("OTEL_EXPORTER_OTLP_ENDPOINT", &url)?
                } else {
                    return Err(TelemetryError::Exporter("no endpoint configured".into()));
                }
            }
        };
        let mut headers = http::HeaderMap::new();
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ] {
            if let Some(list) = set(var) {
                headers = parse_headers(&list).map_err(|e| {
                    TelemetryError::Exporter(format!(
                        "{var}: {e} (expected comma-separated key=value pairs, values percent-encoded)"
                    ))
                })?;
                break;
            }
        }
        let mut timeout = DEFAULT_TIMEOUT;
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ] {
            if let Some(value) = set(var) {
                match value.parse::<u64>() {
                    Ok(ms) if ms > 0 => {
                        timeout = Duration::from_millis(ms);
                        break;
                    }
                    _ => warnings.push(format!(
                        "{var}={value:?} ignored: expected a positive number of milliseconds"
                    )),
                }
            }
        }
        let mut gzip = false;
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ] {
            if let Some(value) = set(var) {
                gzip = if value.eq_ignore_ascii_case("gzip") {
                    true
                } else if value.eq_ignore_ascii_case("none") {
                    false
                } else {
                    return Err(TelemetryError::Exporter(format!(
                        "{var}={value:?}: expected `gzip` or `none`"
                    )));
                };
                break;
            }
        }
        Ok((
            Self {
                url,
                headers,
                timeout,
                gzip,
            },
            warnings,
        ))
    }
}

fn parse_url(source: &str, url: &str) -> Result<reqwest::Url, TelemetryError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| TelemetryError::Exporter(format!("{source} {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(TelemetryError::Exporter(format!(
            "{source} {url:?}: expected an http:// or https:// URL"
        )));
    }
    Ok(parsed)
}

/// `key=value,key2=value2`, values percent-decoded (the spec's format for
/// `OTEL_EXPORTER_OTLP_HEADERS`); empty entries are skipped.
fn parse_headers(list: &str) -> Result<http::HeaderMap, String> {
    let mut headers = http::HeaderMap::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?} has no `=`"))?;
        let name = http::HeaderName::from_bytes(key.trim().as_bytes())
            .map_err(|_| format!("{:?} is not a header name", key.trim()))?;
        let decoded = percent_decode(value.trim())
            .ok_or_else(|| format!("the value of {name} is not valid percent-encoding"))?;
        let value = http::HeaderValue::from_bytes(&decoded)
            .map_err(|_| format!("the value of {name} is not a valid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Collector answers are tiny (an `ExportTraceServiceResponse`); a larger one is not read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The OTLP/HTTP spec's recommended request limit: a bigger batch is dropped, not sent.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// The encoding buffer kept between batches; a rare bigger one is freed after use.
const KEEP_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Retries of a failed export (connection errors, 429, 502, 503, 504, as the OTLP/HTTP
/// spec and opentelemetry-otlp do), backing off from 100 ms to at most 1.6 s; all within the
/// export timeout.
const MAX_RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_millis(1600);

/// Sends encoded batches: the request body (size limit, gzip) and the POST with retries, for
/// the SDK's spans ([`OtlpExporter`]) and the hot spans ([`HotExporter`]) alike.
pub(crate) struct Poster {
    config: ExportConfig,
    client: reqwest::Client,
}

impl Poster {
    pub(crate) fn new(config: ExportConfig) -> Result<Self, TelemetryError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("airlock-telemetry/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| TelemetryError::Exporter(format!("building the HTTP client: {e}")))?;
        Ok(Self { config, client })
    }

    /// The request body for the encoded batch of `spans` spans in `encoded`: gzipped if
    /// configured, else `encoded`'s own bytes (no copy: copying them cost ~0.35k
    /// instructions a vault span, callgrind), `encoded` left empty with room for as many.
    fn body(&self, encoded: &mut Vec<u8>, spans: usize) -> Result<Bytes, String> {
        if encoded.len() > MAX_REQUEST_BYTES {
            Err(format!(
                "a batch of {spans} spans encodes to {} bytes, over the {MAX_REQUEST_BYTES} limit: dropped",
                encoded.len()
            ))
        } else if self.config.gzip {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(encoded.len() / 4),
                flate2::Compression::default(),
            );
            gz.write_all(encoded)
                .and_then(|()| gz.finish())
                .map(Bytes::from)
                .map_err(|e| format!("gzip: {e}"))
        } else {
            // The next batch's buffer: the same size, so it does not grow by copies either.
            let next = Vec::with_capacity(encoded.capacity().min(KEEP_BUFFER_BYTES));
            Ok(Bytes::from(std::mem::replace(encoded, next)))
        }
    }

    /// Encodes `batch` into `buf` (cleared first; freed after a rare big batch) and returns
    /// the request body.
    fn encode<S: otlp::EncodeSpan>(
        &self,
        buf: &mut Vec<u8>,
        resource: &otlp::EncodedResource,
        batch: &[S],
    ) -> Result<Bytes, String> {
        buf.clear();
        otlp::encode_request(buf, resource, batch);
        let body = self.body(buf, batch.len());
        if buf.capacity() > KEEP_BUFFER_BYTES {
            *buf = Vec::new();
        }
        body
    }
}

/// The span exporter of the SDK's batch processor (the spans of `tracing` spans): each batch
/// encoded by [`crate::otlp`] into one reused buffer and POSTed (`application/x-protobuf`)
/// with the workspace's reqwest (rustls with ring; no aws-lc-rs) on [`ExportRuntime`]. Called
/// by the SDK's batch thread, never on a request path.
pub(crate) struct OtlpExporter {
    poster: Arc<Poster>,
    runtime: tokio::runtime::Handle,
    resource: otlp::EncodedResource,
    buf: Mutex<Vec<u8>>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the headers: they may hold a collector's credentials.
        let config = &self.poster.config;
        f.debug_struct("OtlpExporter")
            .field("url", &config.url.as_str())
            .field("timeout", &config.timeout)
            .field("gzip", &config.gzip)
            .finish_non_exhaustive()
    }
}

impl OtlpExporter {
    pub(crate) fn new(poster: Arc<Poster>, runtime: tokio::runtime::Handle) -> Self {
        Self {
            poster,
            runtime,
            resource: otlp::EncodedResource::default(),
            buf: Mutex::new(Vec::new()),
            shut_down: AtomicBool::new(false),
        }
    }

    /// The request body for `batch`: encoded, then gzipped if configured.
    fn body(&self, batch: &[SpanData]) -> Result<Bytes, OTelSdkError> {
        let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        self.poster
            .encode(&mut buf, &self.resource, batch)
            .map_err(OTelSdkError::InternalFailure)
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let body = self.body(&batch)?;
        drop(batch);
        let send = post(self.poster.client.clone(), self.poster.config.clone(), body);
        match self.runtime.spawn(send).await {
            Ok(result) => result.map_err(OTelSdkError::InternalFailure),
            // The runtime is gone (shutting down): the spans are lost, nothing waits.
            Err(e) => Err(OTelSdkError::InternalFailure(format!(
                "the export task did not finish: {e}"
            ))),
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = otlp::EncodedResource::new(resource);
    }
}

/// The exporter of the hot spans (`crate::hot`): a task on [`ExportRuntime`] that takes the
/// queued records every [`EXPORT_EVERY`] (sooner when [`hot::WAKE_AT`] are queued), encodes
/// them in batches of at most [`MAX_BATCH`] with the same encoder, resource and scope as the
/// SDK's spans, and POSTs them with the same [`Poster`]. Dropping it exports what is queued
/// (bounded by the export timeout) and stops the task.
pub(crate) struct HotExporter {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
    timeout: Duration,
}

impl HotExporter {
    pub(crate) fn start(
        poster: Arc<Poster>,
        resource: &Resource,
        runtime: &tokio::runtime::Handle,
        queue: &'static hot::Queue,
    ) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let resource = otlp::EncodedResource::new(resource);
        let timeout = poster.config.timeout;
        runtime.spawn(async move {
            queue.prefill(hot::PREFILL);
            let mut tick = tokio::time::interval(EXPORT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut records = Vec::new();
            let mut buf = Vec::new();
            let mut failing = false;
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    () = queue.filled() => false,
                    _ = &mut stopped => true,
                };
                queue.take(&mut records);
                let dropped = queue.take_dropped();
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "telemetry: the span queue was full ({} spans): spans dropped",
                        hot::MAX_QUEUE
                    );
                }
                for batch in records.chunks(MAX_BATCH) {
                    let result = match poster.encode(&mut buf, &resource, batch) {
                        Ok(body) => post(poster.client.clone(), poster.config.clone(), body).await,
                        Err(e) => Err(e),
                    };
                    // Once per outage, not once per batch (the SDK's processor logs the same).
                    match result {
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!("telemetry: exporting spans failed: {e}");
                        }
                        Err(_) => {}
                        Ok(()) => failing = false,
                    }
                }
                // Their boxes go to the next spans.
                queue.recycle(&mut records);
                if last {
                    let _ = done_tx.send(());
                    return;
                }
            }
        });
        Self {
            stop: Some(stop),
            done,
            timeout,
        }
    }
}

impl Drop for HotExporter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take()
            && stop.send(()).is_ok()
        {
            // One last export: retries and all, within the timeout (plus encoding time).
            let _ = self
                .done
                .recv_timeout(self.timeout + Duration::from_secs(1));
        }
    }
}

/// POSTs one batch, retrying what the OTLP/HTTP spec calls retryable, all within the
/// configured timeout (reqwest's per-request timeout covers connect, send and the answer).
async fn post(client: reqwest::Client, config: ExportConfig, body: Bytes) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + config.timeout;
    let attempts = async {
        let mut attempt = 0;
        loop {
            let mut request = client
                .post(config.url.clone())
                .headers(config.headers.clone())
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .timeout(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .body(body.clone());
            if config.gzip {
                request = request.header(http::header::CONTENT_ENCODING, "gzip");
            }
            let (error, retry, after) = match request.send().await {
                Ok(mut response) => {
                    let status = response.status();
                    // Read the (small) answer so the connection can be reused.
                    let mut read = 0;
                    while let Ok(Some(chunk)) = response.chunk().await {
                        read += chunk.len();
                        if read > MAX_RESPONSE_BYTES {
                            break;
                        }
                    }
                    if status.is_success() {
                        return Ok(());
                    }
                    let after = response
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (
                        format!("the collector answered {status}"),
                        matches!(status.as_u16(), 429 | 502 | 503 | 504),
                        after,
                    )
                }
                Err(e) => (
                    format!("sending to the collector failed: {e}"),
                    !e.is_timeout(),
                    None,
                ),
            };
            let delay =
                after.unwrap_or_else(|| (FIRST_BACKOFF * 2u32.pow(attempt)).min(MAX_BACKOFF));
            if !retry || attempt >= MAX_RETRIES || tokio::time::Instant::now() + delay >= deadline {
                return Err(error);
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    };
    // Belt and braces: whatever happens inside, the export ends at the deadline.
    tokio::time::timeout_at(deadline, attempts)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer from the collector within {:?}",
                config.timeout
            ))
        })
}

/// Spans queued for export at most; beyond, new spans are dropped (never waited for).
const MAX_QUEUE: usize = 8192;
/// Spans per export request (the SDK's default is 512): under load, a quarter of the HTTP
/// requests and wake-ups of the export thread.
const MAX_BATCH: usize = 2048;
/// How often a partial batch goes out (the SDK's default is 5 s; the tests and an operator
/// watching a session want spans soon).
const EXPORT_EVERY: Duration = Duration::from_millis(1000);

/// The SDK's provider (for the spans of `tracing` spans), and the hot spans' exporter; both
/// send with one [`Poster`] from one [`ExportRuntime`].
pub(crate) fn provider(
    service: &str,
    endpoint: &Endpoint,
) -> Result<(SdkTracerProvider, HotExporter, ExportRuntime), TelemetryError> {
    let (config, warnings) = ExportConfig::from_env(endpoint, |name| std::env::var(name).ok())?;
    for warning in warnings {
        // The log subscriber is not installed yet.
        eprintln!("telemetry: {warning}");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = ExportRuntime::start()?;
    let poster = Arc::new(Poster::new(config)?);
    let exporter = OtlpExporter::new(poster.clone(), runtime.handle.clone());
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUE)
                .with_max_export_batch_size(MAX_BATCH)
                .with_scheduled_delay(EXPORT_EVERY)
                .build(),
        )
        .build();
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let resource = resource.build();
    let hot = HotExporter::start(poster, &resource, &runtime.handle, &hot::QUEUE);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    Ok((provider, hot, runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn off_by_default_and_the_config_wins_over_the_env() {
        assert_eq!(endpoint_from(None, env(&[])).unwrap(), None);
        assert_eq!(
            endpoint_from(
                Some("http://collector:4318/"),
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")])
            )
            .unwrap(),
            Some(Endpoint::Url("http://collector:4318/v1/traces".into()))
        );
        assert_eq!(
            endpoint_from(Some("https://c.example/v1/traces"), env(&[])).unwrap(),
            Some(Endpoint::Url("https://c.example/v1/traces".into()))
        );
        assert_eq!(
            endpoint_from(
                None,
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
            )
            .unwrap(),
            Some(Endpoint::Env)
        );
        assert_eq!(
            endpoint_from(
                None,
                env(&[(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces"
                )])
            )
            .unwrap(),
            Some(Endpoint::Env)
        );
    }

    #[test]
    fn disabled_sdk_grpc_and_bad_urls() {
        let on = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(endpoint_from(None, env(&on)).unwrap(), None);
        let none = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(endpoint_from(None, env(&none)).unwrap(), None);
        let grpc = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let err = endpoint_from(None, env(&grpc)).unwrap_err().to_string();
        assert!(err.contains("http/protobuf"), "{err}");
        // The traces-specific variable wins over the general one.
        let specific = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        assert!(endpoint_from(None, env(&specific)).unwrap().is_some());
        for bad in ["collector:4318", "ftp://c/", "http://"] {
            assert!(endpoint_from(Some(bad), env(&[])).is_err(), "{bad}");
        }
    }

    fn config(env_pairs: &[(&str, &str)]) -> Result<(ExportConfig, Vec<String>), TelemetryError> {
        ExportConfig::from_env(&Endpoint::Env, env(env_pairs))
    }

    #[test]
    fn the_exporter_settings_from_the_env() {
        let url = |pairs: &[(&str, &str)]| config(pairs).unwrap().0.url.to_string();
        // The signal's own variable as is; the general one + /v1/traces.
        assert_eq!(
            url(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom")]),
            "http://c:4318/custom"
        );
        assert_eq!(
            url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/base/")]),
            "http://c:4318/base/v1/traces"
        );
        assert_eq!(
            url(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://traces:4318/t"
                ),
            ]),
            "https://traces:4318/t"
        );
        let configured = Endpoint::Url("https://c.example/v1/traces".into());
        let general = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")]);
        let (c, _) = ExportConfig::from_env(&configured, general).unwrap();
        assert_eq!(c.url.as_str(), "https://c.example/v1/traces");
        assert!(config(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")]).is_err());

        // Headers: the signal's variable wins; values percent-decoded; empty entries skipped.
        let (c, warnings) = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "ignored=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "Authorization=Bearer%20a%20b , x-list = x%2Cy%3Dz,,",
            ),
        ])
        .unwrap();
        assert!(warnings.is_empty());
        assert_eq!(c.headers.len(), 2);
        assert_eq!(c.headers["authorization"], "Bearer a b");
        assert_eq!(c.headers["x-list"], "x,y=z");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(!c.gzip);
        for bad in ["novalue", "a=%zz", "bad key=v", "a=%4"] {
            let err = config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", bad),
            ])
            .unwrap_err()
            .to_string();
            assert!(err.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{bad}: {err}");
        }

        // Timeouts in ms; an unparsable one is ignored with a warning.
        let timeout = |pairs: &[(&str, &str)]| {
            let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
            all.extend_from_slice(pairs);
            let (c, w) = config(&all).unwrap();
            (c.timeout, w.len())
        };
        assert_eq!(
            timeout(&[
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "900")
            ]),
            (Duration::from_millis(250), 0)
        );
        assert_eq!(
            timeout(&[
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
            ]),
            (Duration::from_millis(500), 1)
        );
        assert_eq!(
            timeout(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "0")]),
            (DEFAULT_TIMEOUT, 1)
        );

        // Compression: gzip or none, the signal's variable first; anything else refused.
        let gzip = |pairs: &[(&str, &str)]| {
            let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
            all.extend_from_slice(pairs);
            config(&all).map(|(c, _)| c.gzip)
        };
        assert!(gzip(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP")]).unwrap());
        assert!(
            !gzip(&[
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
            ])
            .unwrap()
        );
        let err = gzip(&[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"),
            "{err}"
        );
    }

    mod collector {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::{Arc, Mutex};
        use std::time::Instant;

        use opentelemetry::InstrumentationScope;
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;

        use super::super::*;

        /// One request as the collector saw it: the head (lower-cased) and the body.
        type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

        /// A collector on 127.0.0.1 answering its n-th request with the n-th status line
        /// (`None`: never answers), one request per connection.
        fn collector(answers: Vec<Option<&'static str>>) -> (String, Seen) {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
            let seen = Seen::default();
            let record = seen.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for answer in answers {
                    let Ok((mut stream, _)) = listener.accept() else {
                        return;
                    };
                    let request = read_request(&mut stream);
                    record.lock().unwrap().push(request);
                    match answer {
                        Some(status) => {
                            let _ = write!(
                                stream,
                                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            );
                        }
                        None => held.push(stream),
                    }
                }
                // Keep the unanswered connections open until the test ends.
                std::thread::sleep(Duration::from_secs(30));
            });
            (url, seen)
        }

        fn read_request(stream: &mut TcpStream) -> (String, Vec<u8>) {
            let mut data = Vec::new();
            let mut chunk = [0u8; 8192];
            let head_end = loop {
                if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "the request ended early");
                data.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while data.len() < head_end + length {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "the body ended early");
                data.extend_from_slice(&chunk[..n]);
            }
            (head, data[head_end..head_end + length].to_vec())
        }

        fn start_exporter(url: &str, extra: &[(&str, &str)]) -> (OtlpExporter, ExportRuntime) {
            let mut pairs = vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)];
            pairs.extend_from_slice(extra);
            let (config, _) = ExportConfig::from_env(&Endpoint::Env, super::env(&pairs)).unwrap();
            let _ = rustls::crypto::ring::default_provider().install_default();
            let runtime = ExportRuntime::start().unwrap();
            let poster = Arc::new(Poster::new(config).unwrap());
            let mut exporter = OtlpExporter::new(poster, runtime.handle.clone());
            exporter.set_resource(
                &Resource::builder_empty()
                    .with_service_name("export-test")
                    .build(),
            );
            (exporter, runtime)
        }

        /// Runs one export as the batch processor would (outside the export runtime).
        fn export(exporter: &OtlpExporter) -> (OTelSdkResult, Duration) {
            let scope = InstrumentationScope::builder("airlock").build();
            let batch = vec![
                crate::otlp::tests::span("one", &scope),
                crate::otlp::tests::span("two", &scope),
            ];
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let started = Instant::now();
            let result = rt.block_on(exporter.export(batch));
            (result, started.elapsed())
        }

        fn decode(body: &[u8]) -> ExportTraceServiceRequest {
            let request = ExportTraceServiceRequest::decode(body).unwrap();
            let rs = &request.resource_spans[0];
            let service = &rs.resource.as_ref().unwrap().attributes[0];
            assert_eq!(service.key, "service.name");
            let names: Vec<_> = rs.scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names, ["one", "two"]);
            request
        }

        #[test]
        fn posts_protobuf_with_the_configured_headers() {
            let (url, seen) = collector(vec![Some("200 OK")]);
            let (exporter, _rt) =
                start_exporter(&url, &[("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=t%201")]);
            let (result, _) = export(&exporter);
            result.unwrap();
            let seen = seen.lock().unwrap();
            let (head, body) = &seen[0];
            assert!(head.starts_with("post /v1/traces http/1.1\r\n"), "{head}");
            assert!(
                head.contains("content-type: application/x-protobuf\r\n"),
                "{head}"
            );
            assert!(head.contains("x-tenant: t 1\r\n"), "{head}");
            assert!(!head.contains("content-encoding"), "{head}");
            decode(body);
        }

        #[test]
        fn gzip_when_asked() {
            let (url, seen) = collector(vec![Some("200 OK")]);
            let (exporter, _rt) =
                start_exporter(&url, &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]);
            export(&exporter).0.unwrap();
            let seen = seen.lock().unwrap();
            let (head, body) = &seen[0];
            assert!(head.contains("content-encoding: gzip\r\n"), "{head}");
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .unwrap();
            decode(&plain);
        }

        #[test]
        fn an_error_answer_is_an_export_error_and_only_some_are_retried() {
            let (url, seen) = collector(vec![Some("500 Internal Server Error")]);
            let (exporter, _rt) = start_exporter(&url, &[]);
            let (result, took) = export(&exporter);
            let err = result.unwrap_err().to_string();
            assert!(err.contains("500"), "{err}");
            assert!(took < Duration::from_secs(5), "{took:?}");
            assert_eq!(seen.lock().unwrap().len(), 1, "500 is not retried");

            // 503 is retried (with back-off) until the collector takes the batch.
            let (url, seen) = collector(vec![
                Some("503 Service Unavailable"),
                Some("429 Too Many Requests"),
                Some("200 OK"),
            ]);
            let (exporter, _rt) = start_exporter(&url, &[]);
            export(&exporter).0.unwrap();
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 3);
            assert_eq!(seen[0].1, seen[2].1, "the same batch each time");
        }

        #[test]
        fn a_silent_or_absent_collector_times_out() {
            let (url, seen) = collector(vec![None]);
            let (exporter, _rt) =
                start_exporter(&url, &[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300")]);
            let (result, took) = export(&exporter);
            assert!(result.is_err());
            assert!(
                took >= Duration::from_millis(250) && took < Duration::from_secs(3),
                "{took:?}"
            );
            assert_eq!(seen.lock().unwrap().len(), 1);

            // Nobody listening: connection refused, retried within the timeout, then an error.
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let (exporter, _rt) = start_exporter(
                &format!("http://127.0.0.1:{port}/v1/traces"),
                &[("OTEL_EXPORTER_OTLP_TIMEOUT", "500")],
            );
            let (result, took) = export(&exporter);
            assert!(result.is_err());
            assert!(took < Duration::from_secs(3), "{took:?}");
        }
    }
}
