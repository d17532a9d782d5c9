//! Prometheus metrics for `/metrics` (registry and encoding: `prometheus-client`, see
//! [`crate::prom`]). Labels come from bounded sets only: the configured model groups
//! (anything else is `other`), token kinds, error reasons, upstream error classes.
//!
//! Every handle is created once, at start: the request path only does atomic adds (no
//! label lookup, no lock).

use crate::canonical::Usage;
use crate::error::ProviderError;
use crate::prom::{AtomicHistogram, LATENCY_BUCKETS};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Error classes counted by `airlock_gateway_request_errors_total{reason}`.
pub const ERROR_REASONS: &[&str] = &[
    "auth",
    "budget",
    "rate_limit",
    "bad_request",
    "upstream",
    "internal",
];

/// Upstream failure classes of `airlock_gateway_upstream_errors_total{class}`.
pub const UPSTREAM_CLASSES: &[&str] = &[
    "rate_limit",
    "server",
    "client",
    "timeout",
    "connect",
    "protocol",
];

type ModelLabel = [(&'static str, String); 1];
type TokenLabel = [(&'static str, String); 2];
type OneLabel = [(&'static str, &'static str); 1];

struct PerModel {
    requests: Counter,
    input: Counter,
    output: Counter,
    cache_read: Counter,
    cache_creation: Counter,
    spend: Counter<f64, AtomicU64>,
    latency: AtomicHistogram,
}

/// Counters the router bumps (retries, fallbacks, upstream failures); created with the
/// router, registered by [`Metrics::new`].
pub struct RouteCounters {
    retries: Counter,
    fallbacks: Counter,
    upstream_family: Family<OneLabel, Counter>,
    upstream: [Counter; 6],
    limited_family: Family<OneLabel, Counter>,
    upstream_rate_limited: Counter,
    key_rate_limited: Counter,
}

impl Default for RouteCounters {
    fn default() -> Self {
        let upstream_family = Family::<OneLabel, Counter>::default();
        let upstream = std::array::from_fn(|i| {
            upstream_family
                .get_or_create(&[("class", UPSTREAM_CLASSES[i])])
                .clone()
        });
        let limited_family = Family::<OneLabel, Counter>::default();
        let key_rate_limited = limited_family.get_or_create(&[("scope", "key")]).clone();
        let upstream_rate_limited = limited_family
            .get_or_create(&[("scope", "upstream")])
            .clone();
        RouteCounters {
            retries: Counter::default(),
            fallbacks: Counter::default(),
            upstream_family,
            upstream,
            limited_family,
            upstream_rate_limited,
            key_rate_limited,
        }
    }
}

impl RouteCounters {
    /// One more attempt after a failed one (same or another deployment).
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Moved on to a fallback model group.
    pub fn fallback(&self) {
        self.fallbacks.inc();
    }

    /// An upstream call failed.
    pub fn upstream_error(&self, e: &ProviderError) {
        let i = match e {
            ProviderError::Status { status: 429, .. } => 0,
            ProviderError::Status { status, .. } if *status >= 500 => 1,
            ProviderError::Status { .. } | ProviderError::InvalidRequest(_) => 2,
            ProviderError::Timeout(_) => 3,
            ProviderError::Connect(_) => 4,
            ProviderError::Protocol(_) => 5,
        };
        self.upstream[i].inc();
        if i == 0 {
            self.upstream_rate_limited.inc();
        }
    }
}

pub struct Metrics {
    registry: Registry,
    models: crate::FastMap<String, PerModel>,
    other: PerModel,
    errors: [Counter; 6],
    key_rate_limited: Counter,
    degraded: Gauge,
}

impl Metrics {
    pub fn new<'a>(names: impl Iterator<Item = &'a str>, route: Arc<RouteCounters>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<ModelLabel, Counter>::default();
        let tokens = Family::<TokenLabel, Counter>::default();
        let spend = Family::<ModelLabel, Counter<f64, AtomicU64>>::default();
        let latency = Family::<ModelLabel, AtomicHistogram>::new_with_constructor(|| {
            AtomicHistogram::new(LATENCY_BUCKETS)
        });
        let per_model = |name: &str| {
            let m = [("model", name.to_owned())];
            let t = |kind: &str| {
                tokens
                    .get_or_create(&[m[0].clone(), ("kind", kind.to_owned())])
                    .clone()
            };
            PerModel {
                requests: requests.get_or_create(&m).clone(),
                input: t("input"),
                output: t("output"),
                cache_read: t("cache_read"),
                cache_creation: t("cache_creation"),
                spend: spend.get_or_create(&m).clone(),
                latency: latency.get_or_create(&m).clone(),
            }
        };
        let models: crate::FastMap<String, PerModel> =
            names.map(|n| (n.to_owned(), per_model(n))).collect();
        let other = per_model("other");
        let errors_family = Family::<OneLabel, Counter>::default();
        let errors = std::array::from_fn(|i| {
            errors_family
                .get_or_create(&[("reason", ERROR_REASONS[i])])
                .clone()
        });
        let key_rate_limited = route.key_rate_limited.clone();
        let degraded = Gauge::default();
        let r = &mut registry;
        r.register("airlock_gateway_requests", "Answered model calls", requests);
        r.register(
            "airlock_gateway_tokens",
            "Tokens by kind (cache kinds are part of input)",
            tokens,
        );
        r.register(
            "airlock_gateway_spend_usd",
            "Spend priced from the price table",
            spend,
        );
        r.register(
            "airlock_gateway_request_duration_seconds",
            "Time from the request to the end of the answer (streams: the last byte)",
            latency,
        );
        r.register(
            "airlock_gateway_request_errors",
            "Refused or failed requests by reason",
            errors_family,
        );
        r.register(
            "airlock_gateway_upstream_errors",
            "Failed upstream calls (every attempt) by class",
            route.upstream_family.clone(),
        );
        r.register(
            "airlock_gateway_retries",
            "Upstream attempts after a failed one",
            route.retries.clone(),
        );
        r.register(
            "airlock_gateway_fallbacks",
            "Requests moved on to a fallback model group",
            route.fallbacks.clone(),
        );
        r.register(
            "airlock_gateway_ratelimit_hits",
            "Rate limits hit: a key's rpm/tpm/parallel limit (scope=key) or a provider's 429 (scope=upstream)",
            route.limited_family.clone(),
        );
        r.register(
            "airlock_gateway_ratelimit_degraded",
            "1 while rate limits count per replica (database unavailable)",
            degraded.clone(),
        );
        Metrics {
            registry,
            models,
            other,
            errors,
            key_rate_limited,
            degraded,
        }
    }

    /// An answered call: usage, cost, and the time since the request started.
    pub fn record(&self, model: &str, u: Usage, cost: f64, took: Duration) {
        let m = self.models.get(model).unwrap_or(&self.other);
        m.requests.inc();
        m.input.inc_by(u.input_tokens);
        m.output.inc_by(u.output_tokens);
        m.cache_read.inc_by(u.cache_read_tokens);
        m.cache_creation.inc_by(u.cache_creation_tokens);
        if cost > 0.0 {
            m.spend.inc_by(cost);
        }
        m.latency.observe(took.as_secs_f64());
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
        self.errors[i].inc();
        if i == 2 {
            self.key_rate_limited.inc();
        }
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self, db_degraded: bool, db_error_age_secs: Option<i64>) -> String {
        self.degraded.set(i64::from(db_degraded));
        let mut out = crate::prom::render(&self.registry);
        // Only while there was an error: an age of "never" has no number.
        if let Some(age) = db_error_age_secs {
            out.push_str(
                "# HELP airlock_gateway_db_last_error_age_seconds Seconds since the database last failed an operation.\n\
                 # TYPE airlock_gateway_db_last_error_age_seconds gauge\n",
            );
            out.push_str(&format!(
                "airlock_gateway_db_last_error_age_seconds {age}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_models_count_as_other_and_errors_by_reason() {
        let route = Arc::new(RouteCounters::default());
        let m = Metrics::new(["gpt-x"].into_iter(), route.clone());
        let u = Usage {
            input_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        };
        m.record("gpt-x", u, 0.25, Duration::from_millis(20));
        m.record("who-knows", u, 0.0, Duration::from_millis(20));
        m.error(&crate::error::GatewayError::RateLimited("x".into()));
        route.upstream_error(&ProviderError::Status {
            status: 429,
            error_type: "rate_limit_error".into(),
            message: String::new(),
            retry_after: None,
        });
        route.retry();
        let text = m.render(false, None);
        for want in [
            "airlock_gateway_requests_total{model=\"gpt-x\"} 1",
            "airlock_gateway_requests_total{model=\"other\"} 1",
            "airlock_gateway_tokens_total{model=\"gpt-x\",kind=\"input\"} 10",
            "airlock_gateway_spend_usd_total{model=\"gpt-x\"} 0.25",
            "airlock_gateway_request_errors_total{reason=\"rate_limit\"} 1",
            "airlock_gateway_upstream_errors_total{class=\"rate_limit\"} 1",
            "airlock_gateway_ratelimit_hits_total{scope=\"key\"} 1",
            "airlock_gateway_ratelimit_hits_total{scope=\"upstream\"} 1",
            "airlock_gateway_retries_total 1",
            "airlock_gateway_request_duration_seconds_bucket{le=\"0.025\",model=\"gpt-x\"} 1",
            "airlock_gateway_ratelimit_degraded 0",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "{want:?} missing in\n{text}"
            );
        }
        assert!(!text.contains("who-knows"));
    }
}
