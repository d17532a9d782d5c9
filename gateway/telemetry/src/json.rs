//! JSON log lines with the trace id first: `{"trace_id":"…","timestamp":…,"level":…,…}`.
//!
//! The line is `tracing-subscriber`'s own JSON format; the trace id of the innermost span that
//! belongs to a trace is put in front of it, so every line written while serving a traced
//! session carries it.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent};
use tracing_subscriber::registry::LookupSpan;

pub(crate) struct JsonWithTraceId {
    inner: Format<Json>,
}

impl Default for JsonWithTraceId {
    fn default() -> Self {
        Self {
            inner: Format::default().json(),
        }
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonWithTraceId
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let trace_id = trace_id_in_scope(ctx);
        let Some(trace_id) = trace_id else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

/// The trace id of the event's span or its nearest traced ancestor, else of the
/// [`crate::HotSpan::scope`] being polled.
fn trace_id_in_scope<S>(ctx: &FmtContext<'_, S, JsonFields>) -> Option<String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if !crate::tracing_enabled() {
        return None;
    }
    for span in ctx.event_scope().into_iter().flatten() {
        let id = span.id();
        let found = tracing::dispatcher::get_default(|dispatch| {
            use opentelemetry::trace::TraceContextExt;
            let cx = tracing_opentelemetry::get_otel_context(&id, dispatch)?;
            let sc = cx.span().span_context().clone();
            sc.is_valid().then(|| sc.trace_id().to_string())
        });
        if found.is_some() {
            return found;
        }
    }
    crate::hot::scoped_trace_id()
}
