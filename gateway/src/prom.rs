//! Prometheus plumbing shared by the gateway and (as a library) the brain: a lock-free
//! histogram for hot paths and the text rendering of a `prometheus-client` registry.
//!
//! `prometheus-client` keeps the registry, label encoding and escaping; two things are ours:
//! - [`AtomicHistogram`]: the crate's `Histogram` takes a lock per observation; this one is
//!   a few relaxed atomic adds, so a request path never waits on another request.
//! - [`render`]: the crate writes OpenMetrics 1.0 text (`# TYPE x counter` over `x_total`
//!   samples, `# UNIT`, `# EOF`), which the classic Prometheus text format 0.0.4 parsers —
//!   `promtool check metrics` among them — read as untyped, help-less families. We serve
//!   0.0.4 (every Prometheus scrapes it) by renaming counter descriptors to their `_total`
//!   sample name and dropping the OpenMetrics-only lines.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets (seconds) for request-scale operations.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A fixed-bucket histogram updated with atomics only. Clones share the counts.
#[derive(Clone)]
pub struct AtomicHistogram(Arc<Inner>);

struct Inner {
    bounds: &'static [f64],
    /// Per-bucket (non-cumulative) counts; the last slot is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// `f64` bits of the sum.
    sum: AtomicU64,
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicHistogram")
            .field("count", &self.count())
            .finish()
    }
}

impl AtomicHistogram {
    /// `bounds` ascending upper bounds (the `+Inf` bucket is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram(Arc::new(Inner {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one value.
    pub fn observe(&self, v: f64) {
        let i = self.0.bounds.partition_point(|b| *b < v);
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        // A CAS loop, not a lock: contention only costs a retry.
        let _ = self
            .0
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per-bucket counts: the encoder accumulates them.
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.0.counts.len());
        for (i, c) in self.0.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            let bound = self.0.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        let sum = f64::from_bits(self.0.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The registry in Prometheus text format 0.0.4 (see the module docs). Help texts are
/// registered without a final period: the encoder adds one.
pub fn render(registry: &Registry) -> String {
    let mut open = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut open, registry);
    openmetrics_to_text(&open)
}

/// Shared with the vault proxy (`airlock_telemetry::openmetrics_to_text`).
pub use airlock_telemetry::openmetrics_to_text;

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn histogram_counts_cumulatively_and_sums() {
        static B: &[f64] = &[0.1, 1.0];
        let h = AtomicHistogram::new(B);
        for v in [0.05, 0.1, 0.5, 7.0] {
            h.observe(v);
        }
        let mut r = Registry::default();
        r.register("airlock_test_latency_seconds", "Latency", h.clone());
        let text = render(&r);
        for want in [
            "# TYPE airlock_test_latency_seconds histogram",
            "airlock_test_latency_seconds_bucket{le=\"0.1\"} 2",
            "airlock_test_latency_seconds_bucket{le=\"1.0\"} 3",
            "airlock_test_latency_seconds_bucket{le=\"+Inf\"} 4",
            "airlock_test_latency_seconds_count 4",
            "airlock_test_latency_seconds_sum 7.65",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "{want:?} missing in\n{text}"
            );
        }
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn counters_are_described_under_their_total_name() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(3);
        r.register("airlock_test_things", "Things", c);
        let text = render(&r);
        assert!(
            text.contains("# HELP airlock_test_things_total Things.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE airlock_test_things_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nairlock_test_things_total 3\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
