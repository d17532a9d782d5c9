//! Prometheus metrics of the proxy: served by the admin listener at `GET /metrics`
//! (standalone) or merged into the brain's `/metrics` (embedded, [`crate::RunningProxy::metrics_text`]).
//!
//! Every decision the proxy makes is audited, so the counters are bumped where records
//! enter the audit log ([`crate::audit::AuditLog`]): one place, and a decision that is not
//! audited cannot be counted either. Labels are from fixed sets: event kinds, decisions and
//! the known reason codes (anything else is `other`); never a host, sandbox or credential.
//! Handles are resolved once: counting is a few relaxed atomic adds and no lock.
//!
//! Registry and encoding are `prometheus-client`'s; its OpenMetrics text is turned into the
//! Prometheus 0.0.4 text format (`promtool check metrics` reads only that) by
//! [`openmetrics_to_text`], which lives in `airlock-telemetry` so the gateway's `prom` module
//! uses the same rewrite (neither crate depends on the other).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::audit::{AuditEvent, Decision, EventKind};

/// Block reasons counted under their own label (the codes of `deny.rs` and the pipeline).
pub const BLOCK_REASONS: &[&str] = &[
    "proxy_auth_required",
    "credential_not_allowed_for_host",
    "credential_position_not_allowed",
    "credential_path_not_allowed",
    "destination_mismatch",
    "destination_not_allowed",
    "egress_denied",
    "tls_error",
    "unbound_host",
    "plain_http",
    "ip_literal",
    "unknown_credential",
    "unknown_protocol",
    "stub_in_connect_target",
    "stub_outside_positions",
    "position_not_allowed",
    "method_not_allowed",
    "path_not_allowed",
    "too_many_tunnels",
    "too_many_requests",
    "request_body_too_large",
    "response_not_scrubbable",
    "audit_unavailable",
    "resolve_failed",
    "upstream_error",
    "grant_revoked",
    "overloaded",
    "other",
];

const EVENTS: [EventKind; 6] = [
    EventKind::Connect,
    EventKind::Swap,
    EventKind::Block,
    EventKind::Scrub,
    EventKind::Allow,
    EventKind::Approval,
];

type Labels2 = [(&'static str, &'static str); 2];
type Labels1 = [(&'static str, &'static str); 1];

/// The proxy's counters (one per running proxy; clones of the handles share counts).
#[derive(Debug)]
pub struct VaultMetrics {
    registry: Registry,
    /// `[event][decision]`.
    decisions: [[Counter; 2]; 6],
    blocks: Vec<Counter>,
    swaps: Counter,
    scrubs: Counter,
    tunnels: Counter,
    tls_client: Counter,
    tls_listener: Counter,
    audit_write: Histogram,
    audit_write_failures: Counter,
    grants: Gauge,
    tunnels_open: Gauge,
    approvals_pending: Gauge,
    audit_queue: Gauge,
    audit_healthy: Gauge,
}

impl Default for VaultMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What a scrape reads from the running proxy (gauges).
pub struct Snapshot {
    pub grants: usize,
    pub tunnels_open: usize,
    pub approvals_pending: usize,
    pub audit_queue_depth: usize,
    pub audit_healthy: bool,
}

impl VaultMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let decisions_f = Family::<Labels2, Counter>::default();
        let decisions = std::array::from_fn(|e| {
            let event = EVENTS[e].as_str();
            [Decision::Allow, Decision::Deny].map(|d| {
                decisions_f
                    .get_or_create(&[("event", event), ("decision", d.as_str())])
                    .clone()
            })
        });
        let blocks_f = Family::<Labels1, Counter>::default();
        let blocks = BLOCK_REASONS
            .iter()
            .map(|r| blocks_f.get_or_create(&[("reason", r)]).clone())
            .collect();
        let tls_f = Family::<Labels1, Counter>::default();
        let tls_client = tls_f.get_or_create(&[("side", "client")]).clone();
        let tls_listener = tls_f.get_or_create(&[("side", "listener")]).clone();
        let audit_write = Histogram::new([
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            1.0,
        ]);
        let m = VaultMetrics {
            decisions,
            blocks,
            swaps: Counter::default(),
            scrubs: Counter::default(),
            tunnels: Counter::default(),
            tls_client,
            tls_listener,
            audit_write: audit_write.clone(),
            audit_write_failures: Counter::default(),
            grants: Gauge::default(),
            tunnels_open: Gauge::default(),
            approvals_pending: Gauge::default(),
            audit_queue: Gauge::default(),
            audit_healthy: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "airlock_vault_decisions",
            "Audited decisions by event kind and outcome",
            decisions_f,
        );
        r.register(
            "airlock_vault_swaps",
            "Stubs swapped for real values (one per credential per request)",
            m.swaps.clone(),
        );
        r.register(
            "airlock_vault_blocks",
            "Requests and tunnels refused, by reason",
            blocks_f,
        );
        r.register(
            "airlock_vault_scrubs",
            "Responses in which a real value was replaced by its stub",
            m.scrubs.clone(),
        );
        r.register(
            "airlock_vault_tunnels",
            "Tunnels and plain requests admitted (CONNECT allowed)",
            m.tunnels.clone(),
        );
        r.register(
            "airlock_vault_tls_handshake_failures",
            "Failed TLS handshakes: inside a tunnel (client) or on the listen_tls listener",
            tls_f,
        );
        r.register(
            "airlock_vault_audit_write_duration_seconds",
            "Time of one audit write(2) (a group of records)",
            audit_write,
        );
        r.register(
            "airlock_vault_audit_write_failures",
            "Audit writes that failed (the log then refuses everything until a restart)",
            m.audit_write_failures.clone(),
        );
        r.register(
            "airlock_vault_grants_active",
            "Live grants (sandboxes that can use the proxy)",
            m.grants.clone(),
        );
        r.register(
            "airlock_vault_tunnels_open",
            "Open tunnels across all sandboxes",
            m.tunnels_open.clone(),
        );
        r.register(
            "airlock_vault_approvals_pending",
            "Egress requests held for a person's answer",
            m.approvals_pending.clone(),
        );
        r.register(
            "airlock_vault_audit_queue_depth",
            "Audit records queued for the writer",
            m.audit_queue.clone(),
        );
        r.register(
            "airlock_vault_audit_healthy",
            "1 while the audit log can be written; 0 means every swap is refused",
            m.audit_healthy.clone(),
        );
        VaultMetrics { registry, ..m }
    }

    /// Renders with the state of a running proxy.
    pub fn render_for(
        &self,
        audit: &crate::audit::AuditLog,
        grants: &crate::grants::Grants,
        approvals: &crate::approvals::Approvals,
    ) -> String {
        self.render(Snapshot {
            grants: grants.len(),
            tunnels_open: grants.open_tunnels(),
            approvals_pending: approvals.pending().len(),
            audit_queue_depth: audit.queue_depth(),
            audit_healthy: audit.is_healthy(),
        })
    }

    /// Counts one audited decision.
    pub fn decision(&self, ev: &AuditEvent) {
        let e = EVENTS.iter().position(|k| *k == ev.event).unwrap_or(0);
        let d = usize::from(ev.decision == Decision::Deny);
        self.decisions[e][d].inc();
        match (ev.event, ev.decision) {
            (EventKind::Swap, Decision::Allow) => {
                self.swaps.inc();
            }
            (EventKind::Scrub, _) => {
                self.scrubs.inc();
            }
            (EventKind::Connect, Decision::Allow) => {
                self.tunnels.inc();
            }
            (_, Decision::Deny) => {
                let code = reason_code(&ev.reason);
                if code == "tls_error" {
                    self.tls_client.inc();
                }
                let i = BLOCK_REASONS
                    .iter()
                    .position(|r| *r == code)
                    .unwrap_or(BLOCK_REASONS.len() - 1);
                self.blocks[i].inc();
            }
            _ => {}
        }
    }

    /// A TLS handshake on the `listen_tls` listener failed.
    pub fn listener_tls_failure(&self) {
        self.tls_listener.inc();
    }

    /// One audit write took `took`.
    pub fn audit_write(&self, took: Duration) {
        self.audit_write.observe(took.as_secs_f64());
    }

    /// An audit write failed.
    pub fn audit_write_failed(&self) {
        self.audit_write_failures.inc();
    }

    /// The Prometheus text (format 0.0.4), with the gauges read now.
    pub fn render(&self, now: Snapshot) -> String {
        let g = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.grants.set(g(now.grants));
        self.tunnels_open.set(g(now.tunnels_open));
        self.approvals_pending.set(g(now.approvals_pending));
        self.audit_queue.set(g(now.audit_queue_depth));
        self.audit_healthy.set(i64::from(now.audit_healthy));
        let mut open = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut open, &self.registry);
        openmetrics_to_text(&open)
    }
}

/// The code of a reason (`tls_error: handshake failed` → `tls_error`).
fn reason_code(reason: &str) -> &str {
    reason
        .split(|c: char| c == ':' || c.is_whitespace())
        .next()
        .unwrap_or("")
}

use airlock_telemetry::openmetrics_to_text;

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: EventKind, decision: Decision, reason: &str) -> AuditEvent {
        AuditEvent {
            sandbox: "sb".into(),
            session: None,
            event,
            host: "api.example.com".into(),
            port: 443,
            method: "GET".into(),
            path: "/".into(),
            credential: Some("TOKEN".into()),
            decision,
            reason: reason.into(),
            status: Some(403),
            traceparent: None,
        }
    }

    #[test]
    fn decisions_are_counted_with_bounded_labels_only() {
        let m = VaultMetrics::new();
        m.decision(&ev(EventKind::Swap, Decision::Allow, "swapped"));
        m.decision(&ev(
            EventKind::Block,
            Decision::Deny,
            "credential_not_allowed_for_host",
        ));
        m.decision(&ev(
            EventKind::Connect,
            Decision::Deny,
            "tls_error: handshake failed",
        ));
        m.decision(&ev(
            EventKind::Block,
            Decision::Deny,
            "something new: a.example",
        ));
        m.decision(&ev(EventKind::Scrub, Decision::Allow, "scrubbed"));
        m.audit_write(Duration::from_micros(80));
        let text = m.render(Snapshot {
            grants: 2,
            tunnels_open: 1,
            approvals_pending: 3,
            audit_queue_depth: 0,
            audit_healthy: true,
        });
        for want in [
            "airlock_vault_swaps_total 1",
            "airlock_vault_scrubs_total 1",
            "airlock_vault_blocks_total{reason=\"credential_not_allowed_for_host\"} 1",
            "airlock_vault_blocks_total{reason=\"tls_error\"} 1",
            "airlock_vault_blocks_total{reason=\"other\"} 1",
            "airlock_vault_tls_handshake_failures_total{side=\"client\"} 1",
            "airlock_vault_decisions_total{event=\"swap\",decision=\"allow\"} 1",
            "airlock_vault_approvals_pending 3",
            "airlock_vault_audit_healthy 1",
            "airlock_vault_audit_write_duration_seconds_count 1",
            "# TYPE airlock_vault_swaps_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "{want:?} missing in\n{text}"
            );
        }
        assert!(
            !text.contains("api.example.com")
                && !text.contains("TOKEN")
                && !text.contains("a.example")
        );
    }
}
