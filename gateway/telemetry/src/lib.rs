//! Logs and traces for every Airlock binary (brain, gateway, vault proxy).
//!
//! - **Logs** go to stderr as text, or as one JSON object per line when
//!   `AIRLOCK_LOG_FORMAT=json`; a line written inside a traced span starts with its
//!   `"trace_id"`, so a log line, a session event, an audit record and a trace can be joined.
//! - **Traces** are exported over OTLP/HTTP (protobuf) when an endpoint is configured
//!   (`telemetry.otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); off by default. The spans of `tracing` spans go
//!   through `tracing-opentelemetry` to the SDK's batch processor (a bounded queue drained by
//!   its own thread); per-request spans ([`HotSpan`]) bypass the SDK: compact records in a
//!   bounded queue of their own (`hot.rs`). Both queues drop spans when full, so no request
//!   ever waits on the collector. The exporter is ours (`export.rs`, `otlp.rs`): it writes
//!   each batch straight into OTLP protobuf bytes (a fraction of what `opentelemetry-otlp`'s
//!   conversion to prost structs cost per span) and POSTs them with the workspace's reqwest on
//!   a one-thread runtime of its own (not the application's).
//! - Only spans with target [`TARGET`] are exported: their attributes are chosen by us (names,
//!   counts, decisions), never a value a dependency happened to put on its own span.

mod export;
mod hot;
mod json;
mod otlp;
mod prom_text;
mod trace_context;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use hot::{AttrValue, HotSpan, InlineStr, MAX_ATTRIBUTES};
pub use prom_text::openmetrics_to_text;
pub use trace_context::{
    TraceParent, current_trace_id, current_traceparent, set_remote_parent, trace_id,
    trace_id_of_traceparent, traceparent,
};

/// The target of every exported span: `tracing::info_span!(target: airlock_telemetry::TARGET, …)`.
pub const TARGET: &str = "airlock_trace";
/// The instrumentation scope (tracer name) of every span.
pub(crate) const SCOPE: &str = "airlock";
/// `text` (default) or `json`.
pub const LOG_FORMAT_ENV: &str = "AIRLOCK_LOG_FORMAT";

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether traces are being exported in this process. Hot paths check it before creating a
/// span, so telemetry off costs one relaxed load.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{LOG_FORMAT_ENV}={0:?}: expected `text` or `json`")]
    LogFormat(String),
    #[error(
        "{var}={value:?}: Airlock exports traces over OTLP/HTTP with protobuf only (`http/protobuf`)"
    )]
    Protocol { var: &'static str, value: String },
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("installing the log subscriber: {0}")]
    Subscriber(String),
}

/// How a process logs and traces.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `service.name` of the spans (unless `OTEL_SERVICE_NAME` says otherwise).
    pub service: String,
    /// `telemetry.otlp_endpoint`: the collector's base URL (`http://host:4318`); traces go
    /// to `<base>/v1/traces`, like `OTEL_EXPORTER_OTLP_ENDPOINT`. Overrides the env vars.
    pub otlp_endpoint: Option<String>,
    /// `EnvFilter` directives when `RUST_LOG` is unset.
    pub default_filter: String,
}

/// Keeps the exporter alive; dropping it flushes the spans still queued (bounded by the
/// exporter's timeout) and stops the export thread.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    hot: Option<export::HotExporter>,
    runtime: Option<export::ExportRuntime>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            TRACING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                eprintln!("telemetry: flushing spans at shutdown failed: {e}");
            }
        }
        drop(self.hot.take());
        drop(self.runtime.take());
    }
}

/// Checks a configured `telemetry.otlp_endpoint` (an `http://` or `https://` base URL) the
/// way [`init`] reads it, so a config file is refused when loaded rather than at start-up.
pub fn check_otlp_endpoint(url: &str) -> Result<(), TelemetryError> {
    export::endpoint_from(Some(url), |_| None).map(|_| ())
}

/// The log format asked for by `AIRLOCK_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn from_env() -> Result<Self, TelemetryError> {
        match std::env::var(LOG_FORMAT_ENV) {
            Err(_) => Ok(Self::Text),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "text" => Ok(Self::Text),
                "json" => Ok(Self::Json),
                _ => Err(TelemetryError::LogFormat(v)),
            },
        }
    }
}

/// Installs the process-wide subscriber: logs (text or JSON) and, when configured, the OTLP
/// trace exporter. Call once, early in `main`; keep the returned guard until exit.
pub fn init(opts: &Options) -> Result<Telemetry, TelemetryError> {
    let format = LogFormat::from_env()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&opts.default_filter));
    let fmt: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .event_format(json::JsonWithTraceId::default())
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let (provider, hot, runtime) = match export::endpoint(opts.otlp_endpoint.as_deref())? {
        None => (None, None, None),
        Some(endpoint) => {
            let (provider, hot, runtime) = export::provider(&opts.service, &endpoint)?;
            (Some(provider), Some(hot), Some(runtime))
        }
    };
    let otel = provider.as_ref().map(|p| {
        let tracer = p.tracer(SCOPE);
        hot::install();
        // No context activation: entering a span (every poll of an instrumented future) would
        // clone and attach its OpenTelemetry context, which nothing here reads (parents come
        // from the `tracing` span tree, `traceparent`s from `OpenTelemetrySpanExt::context`).
        // No `target` attribute: every exported span has the same one, `TARGET`.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_context_activation(false)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target() == TARGET
            }))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    if provider.is_some() {
        TRACING.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry {
        provider,
        hot,
        runtime,
    })
}
