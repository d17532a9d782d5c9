//! Trace spans for egress decisions: one `vault.egress` span per audited decision of a sandbox
//! whose grant carries the session's trace (the brain passes its `traceparent` with the grant),
//! a child of the span that asked for the grant. Attributes name the host, port, method, event,
//! decision, reason, status and credential, never a value, stub or token; the path is left out
//! (a stub may stand in it). With tracing off, or a grant without a trace, nothing is created.
//!
//! The span is an [`airlock_telemetry::HotSpan`]: started and ended on the SDK tracer with
//! `&'static str` keys, not through the `tracing` layer (it runs on the request path of every
//! audited request; see that type for the figures).

use airlock_telemetry::KeyValue;

use crate::audit::AuditEvent;

/// Emits the decision's span (it starts and ends here: the decision is the moment).
pub(crate) fn egress_span(ev: &AuditEvent) {
    let Some(traceparent) = ev.traceparent.as_deref() else {
        return;
    };
    if !airlock_telemetry::tracing_enabled() {
        return;
    }
    airlock_telemetry::emit_span(
        "vault.egress",
        Some(traceparent),
        vec![
            KeyValue::new("sandbox.id", ev.sandbox.clone()),
            KeyValue::new("server.address", ev.host.clone()),
            KeyValue::new("server.port", i64::from(ev.port)),
            KeyValue::new("http.request.method", ev.method.clone()),
            KeyValue::new("airlock.egress.event", ev.event.as_str()),
            KeyValue::new("airlock.egress.decision", ev.decision.as_str()),
            KeyValue::new("airlock.egress.reason", ev.reason.clone()),
            KeyValue::new(
                "airlock.credential",
                ev.credential.clone().unwrap_or_default(),
            ),
            KeyValue::new(
                "http.response.status_code",
                i64::from(ev.status.unwrap_or(0)),
            ),
        ],
    );
}
