//! Trace spans for egress decisions: one `vault.egress` span per audited decision of a sandbox
//! whose grant carries the session's trace (the brain passes its `traceparent` with the grant),
//! a child of the span that asked for the grant. Attributes name the host, port, method, event,
//! decision, reason, status and credential, never a value, stub or token; the path is left out
//! (a stub may stand in it). With tracing off, or a grant without a trace, nothing is created.
//!
//! The span is an [`airlock_telemetry::HotSpan`]: started and ended on the SDK tracer with
//! `&'static str` keys, not through the `tracing` layer (it runs on the request path of every
//! audited request; see that type for the figures). Values that are one of a known few (the
//! method, the reason code, no credential) are `&'static str`s, not copies: a `String` per
//! attribute is an allocation on the request thread and a free on the export thread.

use airlock_telemetry::KeyValue;
use airlock_telemetry::Value;

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
fn value(s: &str, known: &[&[&'static str]]) -> Value {
    match known.iter().flat_map(|k| k.iter()).find(|k| **k == s) {
        Some(k) => Value::from(*k),
        None => Value::from(s.to_owned()),
    }
}

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
            KeyValue::new("http.request.method", value(&ev.method, &[METHODS])),
            KeyValue::new("airlock.egress.event", ev.event.as_str()),
            KeyValue::new("airlock.egress.decision", ev.decision.as_str()),
            KeyValue::new(
                "airlock.egress.reason",
                value(&ev.reason, &[ALLOW_REASONS, crate::metrics::BLOCK_REASONS]),
            ),
            KeyValue::new(
                "airlock.credential",
                match &ev.credential {
                    Some(name) => Value::from(name.clone()),
                    None => Value::from(""),
                },
            ),
            KeyValue::new(
                "http.response.status_code",
                i64::from(ev.status.unwrap_or(0)),
            ),
        ],
    );
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
            assert_eq!(value(s, known).as_str(), s);
        }
    }
}
