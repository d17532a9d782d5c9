//! Trace spans for egress decisions: one `vault.egress` span per audited decision of a sandbox
//! whose grant carries the session's trace (the brain passes its `traceparent` with the grant),
//! a child of the span that asked for the grant. Attributes name the host, port, method, event,
//! decision, reason, status and credential, never a value, stub or token; the path is left out
//! (a stub may stand in it). With tracing off, or a grant without a trace, nothing is created.

use crate::audit::AuditEvent;

/// Emits the decision's span (it starts and ends here: the decision is the moment).
pub(crate) fn egress_span(ev: &AuditEvent) {
    let Some(traceparent) = ev.traceparent.as_deref() else {
        return;
    };
    if !airlock_telemetry::tracing_enabled() {
        return;
    }
    let span = tracing::info_span!(
        target: airlock_telemetry::TARGET,
        "vault.egress",
        "sandbox.id" = %ev.sandbox,
        "server.address" = %ev.host,
        "server.port" = ev.port,
        "http.request.method" = %ev.method,
        "airlock.egress.event" = ev.event.as_str(),
        "airlock.egress.decision" = ev.decision.as_str(),
        "airlock.egress.reason" = %ev.reason,
        "airlock.credential" = ev.credential.as_deref().unwrap_or(""),
        "http.response.status_code" = ev.status.unwrap_or(0),
    );
    airlock_telemetry::set_remote_parent(&span, traceparent);
}
