//! Trace spans for egress decisions: one `vault.egress` span per audited decision of a sandbox
//! whose grant carries the session's trace (the brain passes its `traceparent` with the grant),
//! a child of the span that asked for the grant. Attributes name the host, port, method, event,
//! decision, reason, status and credential, never a value, stub or token; the path is left out
//! (a stub may stand in it). With tracing off, or a grant without a trace, nothing is created.
//!
//! The span is an [`airlock_telemetry::HotSpan`]: a compact record queued for the exporter,
//! not a `tracing` span nor an SDK span (it runs on the request path of every audited request;
//! see that type for the figures). Values that are one of a known few (the method, the reason
//! code, no credential) are `&'static str`s; others are copied into the record (inline when
//! short: no allocation).

use airlock_telemetry::AttrValue;

use crate::audit::AuditEvent;

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// Reasons of allowed decisions (the block reasons are `metrics::BLOCK_REASONS`).
const ALLOW_REASONS: &[&str] = &[
    "stub_swapped_for_bound_host",
    "egress_allowed",
    "tunnel_opened",
    "secret_in_response_headers",
    "secret_in_response_body",
    "secret_in_websocket_frame",
];

/// `s` as a value: the static copy when it is one of `known`, else a copy.
fn value(s: &str, known: &[&[&'static str]]) -> AttrValue {
    match known.iter().flat_map(|k| k.iter()).find(|k| **k == s) {
        Some(k) => AttrValue::Static(k),
        None => AttrValue::text(s),
    }
}

/// Emits the decision's span (it starts and ends here: the decision is the moment).
pub(crate) fn egress_span(ev: &AuditEvent) {
    let Some(parent) = &ev.traceparent else {
        return;
    };
    let Some(mut span) = airlock_telemetry::HotSpan::start_under("vault.egress", Some(parent))
    else {
        return;
    };
    // `add` on the one value, not `with` (each `with` moves the span's record); the keys are
    // distinct, so no look-up of the ones set before.
    span.add("sandbox.id", AttrValue::text(&ev.sandbox));
    span.add("server.address", AttrValue::text(&ev.host));
    span.add("server.port", i64::from(ev.port));
    span.add("http.request.method", value(&ev.method, &[METHODS]));
    span.add("airlock.egress.event", ev.event.as_str());
    span.add("airlock.egress.decision", ev.decision.as_str());
    span.add(
        "airlock.egress.reason",
        value(&ev.reason, &[ALLOW_REASONS, crate::metrics::BLOCK_REASONS]),
    );
    span.add(
        "airlock.credential",
        match &ev.credential {
            Some(name) => AttrValue::text(name),
            None => AttrValue::Static(""),
        },
    );
    span.add(
        "http.response.status_code",
        i64::from(ev.status.unwrap_or(0)),
    );
    span.end_at_start();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_others_keep_their_text() {
        let block = crate::metrics::BLOCK_REASONS;
        for (s, known) in [
            ("POST", &[METHODS][..]),
            ("PROPFIND", &[METHODS][..]),
            ("egress_allowed", &[ALLOW_REASONS, block][..]),
            ("tls_error", &[ALLOW_REASONS, block][..]),
            ("tls_error: handshake failed", &[ALLOW_REASONS, block][..]),
        ] {
            assert_eq!(value(s, known).as_str(), Some(s));
        }
    }
}
