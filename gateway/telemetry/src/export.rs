//! The OTLP/HTTP exporter: endpoint resolution, its HTTP client and the batch processor.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};

use crate::TelemetryError;

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

/// The workspace's reqwest (rustls with ring; no aws-lc-rs) running on [`ExportRuntime`].
#[derive(Debug)]
struct ReqwestOnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

/// Collector answers are tiny (an `ExportTraceServiceResponse`); a larger one is not read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ReqwestOnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let mut response = client.execute(request).await?;
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            let mut out = http::Response::new(Bytes::from(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok::<_, reqwest::Error>(out)
        });
        Ok(task.await??)
    }
}

/// Spans queued for export at most; beyond, new spans are dropped (never waited for).
const MAX_QUEUE: usize = 8192;
/// Spans per export request (the SDK's default is 512): under load, a quarter of the HTTP
/// requests and wake-ups of the export thread.
const MAX_BATCH: usize = 2048;
/// How often a partial batch goes out (the SDK's default is 5 s; the tests and an operator
/// watching a session want spans soon).
const EXPORT_EVERY: Duration = Duration::from_millis(1000);

pub(crate) fn provider(
    service: &str,
    endpoint: &Endpoint,
) -> Result<(SdkTracerProvider, ExportRuntime), TelemetryError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = ExportRuntime::start()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TelemetryError::Exporter(format!("building the HTTP client: {e}")))?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(ReqwestOnRuntime {
            client,
            runtime: runtime.handle.clone(),
        });
    if let Endpoint::Url(url) = endpoint {
        builder = builder.with_endpoint(url.clone());
    }
    let exporter = builder
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
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
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    Ok((provider, runtime))
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
}
