//! Prometheus counters for `/metrics`. Labels come from bounded sets only: the
//! configured model groups (anything else is `other`), token kinds, error classes.

use crate::canonical::Usage;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct PerModel {
    requests: AtomicU64,
    input: AtomicU64,
    output: AtomicU64,
    cache_read: AtomicU64,
    cache_creation: AtomicU64,
    /// Nano-USD.
    spend: AtomicU64,
}

/// Error classes counted by `airlock_gateway_request_errors_total{reason}`.
pub const ERROR_REASONS: &[&str] = &[
    "auth",
    "budget",
    "rate_limit",
    "bad_request",
    "upstream",
    "internal",
];

pub struct Metrics {
    models: HashMap<String, PerModel>,
    other: PerModel,
    errors: [AtomicU64; 6],
}

impl Metrics {
    pub fn new<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        Metrics {
            models: names.map(|n| (n.to_owned(), PerModel::default())).collect(),
            other: PerModel::default(),
            errors: Default::default(),
        }
    }

    pub fn record(&self, model: &str, u: Usage, cost: f64) {
        let m = self.models.get(model).unwrap_or(&self.other);
        m.requests.fetch_add(1, Ordering::Relaxed);
        m.input.fetch_add(u.input_tokens, Ordering::Relaxed);
        m.output.fetch_add(u.output_tokens, Ordering::Relaxed);
        m.cache_read
            .fetch_add(u.cache_read_tokens, Ordering::Relaxed);
        m.cache_creation
            .fetch_add(u.cache_creation_tokens, Ordering::Relaxed);
        m.spend
            .fetch_add((cost * 1e9).round().max(0.0) as u64, Ordering::Relaxed);
    }

    pub fn error(&self, e: &crate::error::GatewayError) {
        use crate::error::GatewayError as G;
        let i = match e {
            G::Unauthorized(_) | G::Forbidden(_) => 0,
            G::BudgetExceeded(_) => 1,
            G::RateLimited(_) => 2,
            G::BadRequest(_) | G::NotFound(_) => 3,
            G::Provider(_) => 4,
            G::Internal(_) => 5,
        };
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self, db_degraded: bool, db_error_age_secs: Option<i64>) -> String {
        let mut out = String::with_capacity(2048);
        let mut rows: Vec<(&str, &PerModel)> =
            self.models.iter().map(|(k, v)| (k.as_str(), v)).collect();
        rows.sort_by_key(|(k, _)| *k);
        rows.push(("other", &self.other));
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let _ = writeln!(
            out,
            "# HELP airlock_gateway_requests_total Answered model calls.\n# TYPE airlock_gateway_requests_total counter"
        );
        for (m, v) in &rows {
            let _ = writeln!(
                out,
                "airlock_gateway_requests_total{{model=\"{}\"}} {}",
                esc(m),
                v.requests.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP airlock_gateway_tokens_total Tokens by kind (cache kinds are part of input).\n# TYPE airlock_gateway_tokens_total counter"
        );
        for (m, v) in &rows {
            for (kind, c) in [
                ("input", &v.input),
                ("output", &v.output),
                ("cache_read", &v.cache_read),
                ("cache_creation", &v.cache_creation),
            ] {
                let _ = writeln!(
                    out,
                    "airlock_gateway_tokens_total{{model=\"{}\",kind=\"{kind}\"}} {}",
                    esc(m),
                    c.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP airlock_gateway_spend_usd_total Spend priced from the price table.\n# TYPE airlock_gateway_spend_usd_total counter"
        );
        for (m, v) in &rows {
            let _ = writeln!(
                out,
                "airlock_gateway_spend_usd_total{{model=\"{}\"}} {}",
                esc(m),
                v.spend.load(Ordering::Relaxed) as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "# HELP airlock_gateway_request_errors_total Refused or failed requests by reason.\n# TYPE airlock_gateway_request_errors_total counter"
        );
        for (i, r) in ERROR_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "airlock_gateway_request_errors_total{{reason=\"{r}\"}} {}",
                self.errors[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP airlock_gateway_ratelimit_degraded 1 while rate limits count per replica (database unavailable).\n# TYPE airlock_gateway_ratelimit_degraded gauge\nairlock_gateway_ratelimit_degraded {}",
            u8::from(db_degraded)
        );
        if let Some(age) = db_error_age_secs {
            let _ = writeln!(
                out,
                "# HELP airlock_gateway_db_last_error_age_seconds Seconds since the database last failed an operation.\n# TYPE airlock_gateway_db_last_error_age_seconds gauge\nairlock_gateway_db_last_error_age_seconds {age}"
            );
        }
        out
    }
}
