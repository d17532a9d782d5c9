//! Prometheus metrics, written by hand: a few counters and latency histograms behind one mutex
//! (updates are a handful per request, far from contended), rendered in the text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

const PROVISION_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const EXEC_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Outcome label of a provision or exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    Error,
    Timeout,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (non-cumulative) counts; one extra slot for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[slot] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    provisions: BTreeMap<(String, Outcome), u64>,
    execs: BTreeMap<(String, Outcome), u64>,
    provision_seconds: BTreeMap<String, Histogram>,
    exec_seconds: BTreeMap<String, Histogram>,
    /// Warm-pool claims by (backend, hit): a hit got a pooled sandbox, a miss provisions cold.
    pool_claims: BTreeMap<(String, bool), u64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn provision(&self, backend: &str, outcome: Outcome, took: Duration) {
        let mut inner = self.lock();
        *inner
            .provisions
            .entry((backend.to_string(), outcome))
            .or_default() += 1;
        inner
            .provision_seconds
            .entry(backend.to_string())
            .or_insert_with(|| Histogram::new(PROVISION_BUCKETS))
            .observe(took.as_secs_f64());
    }

    pub fn exec(&self, backend: &str, outcome: Outcome, took: Duration) {
        let mut inner = self.lock();
        *inner
            .execs
            .entry((backend.to_string(), outcome))
            .or_default() += 1;
        inner
            .exec_seconds
            .entry(backend.to_string())
            .or_insert_with(|| Histogram::new(EXEC_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// A provision that asked a warm pool: `hit` = it got a pooled sandbox.
    pub fn pool_claim(&self, backend: &str, hit: bool) {
        *self
            .lock()
            .pool_claims
            .entry((backend.to_string(), hit))
            .or_default() += 1;
    }

    /// Pool lines: the ready gauge (`depth`, backend → ready sandboxes) and claims/misses.
    pub fn render_pools(&self, depth: &BTreeMap<String, usize>) -> String {
        let inner = self.lock();
        let mut out = String::new();
        out.push_str("# HELP airlock_brain_pool_ready_sandboxes Warm-pool sandboxes ready to claim, by backend.\n");
        out.push_str("# TYPE airlock_brain_pool_ready_sandboxes gauge\n");
        for (backend, n) in depth {
            let _ = writeln!(
                out,
                "airlock_brain_pool_ready_sandboxes{{backend=\"{}\"}} {n}",
                escape(backend)
            );
        }
        for (name, help, hit) in [
            (
                "airlock_brain_pool_claims_total",
                "Provisions served from a warm pool.",
                true,
            ),
            (
                "airlock_brain_pool_misses_total",
                "Provisions a warm pool could not serve (empty).",
                false,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((backend, h), n) in &inner.pool_claims {
                if *h == hit {
                    let _ = writeln!(out, "{name}{{backend=\"{}\"}} {n}", escape(backend));
                }
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only counters behind; they are still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The exposition text; `active` is (backend, live sandboxes) read from the store.
    pub fn render(&self, active: &[(String, i64)]) -> String {
        let inner = self.lock();
        let mut out = String::new();
        out.push_str(
            "# HELP airlock_sandboxes_active Sandboxes provisioning or running, by backend.\n",
        );
        out.push_str("# TYPE airlock_sandboxes_active gauge\n");
        for (backend, n) in active {
            let _ = writeln!(
                out,
                "airlock_sandboxes_active{{backend=\"{}\"}} {n}",
                escape(backend)
            );
        }
        counter(
            &mut out,
            "airlock_sandbox_provisions_total",
            "Sandbox provisions, by backend and outcome.",
            &inner.provisions,
        );
        counter(
            &mut out,
            "airlock_sandbox_execs_total",
            "Commands run in sandboxes, by backend and outcome.",
            &inner.execs,
        );
        histograms(
            &mut out,
            "airlock_sandbox_provision_duration_seconds",
            "Time to provision a sandbox.",
            &inner.provision_seconds,
        );
        histograms(
            &mut out,
            "airlock_sandbox_exec_duration_seconds",
            "Time to run a command (non-streamed).",
            &inner.exec_seconds,
        );
        out
    }
}

fn counter(out: &mut String, name: &str, help: &str, values: &BTreeMap<(String, Outcome), u64>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for ((backend, outcome), n) in values {
        let _ = writeln!(
            out,
            "{name}{{backend=\"{}\",outcome=\"{}\"}} {n}",
            escape(backend),
            outcome.as_str()
        );
    }
}

fn histograms(out: &mut String, name: &str, help: &str, values: &BTreeMap<String, Histogram>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (backend, h) in values {
        h.render(out, name, &format!("backend=\"{}\"", escape(backend)));
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_counters_and_gauges() {
        let m = Metrics::default();
        m.exec("local", Outcome::Ok, Duration::from_millis(3));
        m.exec("local", Outcome::Ok, Duration::from_millis(40));
        m.exec("local", Outcome::Timeout, Duration::from_secs(1000));
        m.provision("docker", Outcome::Error, Duration::from_millis(200));
        let text = m.render(&[("local".into(), 2)]);
        for line in [
            "airlock_sandboxes_active{backend=\"local\"} 2",
            "airlock_sandbox_execs_total{backend=\"local\",outcome=\"ok\"} 2",
            "airlock_sandbox_execs_total{backend=\"local\",outcome=\"timeout\"} 1",
            "airlock_sandbox_exec_duration_seconds_bucket{backend=\"local\",le=\"0.005\"} 1",
            "airlock_sandbox_exec_duration_seconds_bucket{backend=\"local\",le=\"0.05\"} 2",
            "airlock_sandbox_exec_duration_seconds_bucket{backend=\"local\",le=\"300\"} 2",
            "airlock_sandbox_exec_duration_seconds_bucket{backend=\"local\",le=\"+Inf\"} 3",
            "airlock_sandbox_exec_duration_seconds_count{backend=\"local\"} 3",
            "airlock_sandbox_provisions_total{backend=\"docker\",outcome=\"error\"} 1",
            "# TYPE airlock_sandbox_provision_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
