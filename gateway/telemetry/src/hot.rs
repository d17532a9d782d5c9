//! Spans on per-request hot paths (the gateway's HTTP request, the vault's egress decision):
//! started and ended straight on the SDK tracer, not through `tracing` + the
//! `tracing-opentelemetry` layer.
//!
//! Why: through the layer, one span per request cost the gateway 21k instructions on the
//! request thread (94.6k a request without tracing; callgrind, bench/telemetry/callgrind.sh):
//! the registry's slab, the per-layer filters, the layer's `OtelData` behind an `Arc<Mutex>`,
//! a `String` per `Display` attribute, set_parent's second lookup, and on every poll of an
//! instrumented future an enter/exit through both layers plus a clock read. A hot span is an
//! `opentelemetry_sdk` span with `&'static str` keys, its parent taken from the W3C header,
//! attributes set without a lock; it goes to the same tracer, batch processor and exporter as
//! every other span, so a trace looks the same. Request-thread cost now ~2.5k instructions per
//! span. The export thread's share is the encoding: ~11k per gateway span and ~21k per vault
//! span through `opentelemetry-otlp`, which is why spans are encoded by `crate::otlp` instead.
//! Spans that nest under `tracing` spans (the brain's session, model and tool calls;
//! `gateway.chat`) keep using the layer.
//!
//! Log lines: [`HotSpan::scope`] runs a future with the span's trace id in a task-local, and
//! JSON lines written inside it start with that `trace_id`, as they would inside an entered
//! `tracing` span (one swap of a thread-local per poll).

use std::future::Future;
use std::sync::OnceLock;

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, TraceContextExt, TraceId, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span as SdkSpan};

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

tokio::task_local! {
    static LOG_TRACE_ID: TraceId;
}

/// Called by `init` once the exporter is installed.
pub(crate) fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// A started span; it ends (and is queued for export) when dropped.
pub struct HotSpan {
    span: SdkSpan,
    trace_id: TraceId,
}

impl HotSpan {
    /// Starts `name` with `attributes`, a child of the remote span named by `traceparent` (a
    /// W3C header value) or a root when there is none or it is malformed. `None` when tracing
    /// is off: then nothing is allocated.
    pub fn start(
        name: &'static str,
        traceparent: Option<&str>,
        attributes: Vec<KeyValue>,
    ) -> Option<Self> {
        if !crate::tracing_enabled() {
            return None;
        }
        let tracer = TRACER.get()?;
        let parent = traceparent.and_then(crate::trace_context::parse);
        Some(Self::start_with(tracer, name, parent, attributes))
    }

    fn start_with(
        tracer: &SdkTracer,
        name: &'static str,
        parent: Option<SpanContext>,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let parent = match parent {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let span = tracer.build_with_context(
            SpanBuilder::from_name(name).with_attributes(attributes),
            &parent,
        );
        let trace_id = span.span_context().trace_id();
        Self { span, trace_id }
    }

    /// Sets (or replaces) an attribute, e.g. the response status once it is known.
    pub fn set_attribute(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    /// The span's trace id (32 lower-case hex digits).
    pub fn trace_id(&self) -> String {
        self.trace_id.to_string()
    }

    /// Runs `fut` with this span's trace id on the JSON log lines written while it is polled.
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        LOG_TRACE_ID.scope(self.trace_id, fut)
    }
}

/// Emits a span that starts and ends now (a decision is a moment): [`HotSpan::start`], dropped.
pub fn emit(name: &'static str, traceparent: Option<&str>, attributes: Vec<KeyValue>) {
    drop(HotSpan::start(name, traceparent, attributes));
}

/// The trace id of the [`HotSpan::scope`] being polled on this thread, if any.
pub(crate) fn scoped_trace_id() -> Option<String> {
    LOG_TRACE_ID.try_with(|t| t.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use std::sync::{Arc, Mutex};

    /// Keeps what it is given (the SDK's in-memory exporter needs its `testing` feature).
    #[derive(Debug, Clone, Default)]
    struct Keep(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Keep {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn a_hot_span_keeps_its_remote_parent_and_attributes() {
        let exporter = Keep::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("airlock");
        let parent =
            crate::trace_context::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let mut span = HotSpan::start_with(
            &tracer,
            "gateway.request",
            parent,
            vec![KeyValue::new("http.route", "/v1/chat/completions")],
        );
        assert_eq!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seen = rt.block_on(span.scope(async { scoped_trace_id() }));
        assert_eq!(seen.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(scoped_trace_id(), None, "only while the scope is polled");
        span.set_attribute(KeyValue::new("http.response.status_code", 200));
        drop(span);
        // A root when there is no parent: a trace of its own.
        drop(HotSpan::start_with(&tracer, "vault.egress", None, vec![]));
        let spans = exporter.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 2);
        let request = &spans[0];
        assert_eq!(request.name, "gateway.request");
        assert_eq!(
            request.span_context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            request.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(request.parent_span_is_remote);
        assert!(request.span_context.is_sampled());
        let attr = |k: &str| {
            request
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("http.route").as_deref(), Some("/v1/chat/completions"));
        assert_eq!(attr("http.response.status_code").as_deref(), Some("200"));
        let root = &spans[1];
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_ne!(
            root.span_context.trace_id(),
            request.span_context.trace_id()
        );
    }

    #[test]
    fn nothing_without_an_exporter() {
        assert!(HotSpan::start("x", None, vec![]).is_none());
    }
}
