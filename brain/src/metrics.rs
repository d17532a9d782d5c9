//! The brain's Prometheus metrics (`prometheus-client`; text via [`gateway::prom`]):
//! sandboxes, sessions and triggers. `GET /metrics` appends the embedded gateway's and
//! vault proxy's families. Labels come from fixed sets (backends, outcomes, statuses,
//! failure reasons, trigger sources); ids and user text never become labels.
//!
//! Handles with fixed labels are resolved once; the per-sandbox paths (provision, exec:
//! milliseconds or more each) use the crate's label families.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use gateway::prom::AtomicHistogram;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// Why a session failed (`airlock_brain_session_failures_total{reason}`).
pub const FAILURE_REASONS: &[&str] = &[
    "timeout",
    "max_steps",
    "max_cost",
    "model_error",
    "max_resumes",
    "no_model",
    "other",
];

/// Webhook sources.
pub const SOURCES: &[&str] = &["slack", "github"];
/// What became of a webhook delivery.
pub const WEBHOOK_OUTCOMES: &[&str] = &["accepted", "deduplicated", "refused"];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type BackendOutcome = [(&'static str, String); 2];
type Backend = [(&'static str, String); 1];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sandboxes_active: Family<Backend, Gauge>,
    provisions: Family<BackendOutcome, Counter>,
    execs: Family<BackendOutcome, Counter>,
    provision_seconds: Family<Backend, AtomicHistogram>,
    exec_seconds: Family<Backend, AtomicHistogram>,
    sessions: Family<Labels1, Gauge>,
    steps: Counter,
    input_tokens: Counter,
    output_tokens: Counter,
    cost: Counter<f64, AtomicU64>,
    finished: Family<Labels1, Counter>,
    failures: Vec<Counter>,
    resumes: Counter,
    webhooks: Family<Labels2, Counter>,
    replies_pending: Gauge,
    outbox_retries: Family<Labels1, Counter>,
    replies_failed: Family<Labels1, Counter>,
    pool_ready: Family<Backend, Gauge>,
    pool_claims: Family<Backend, Counter>,
    pool_misses: Family<Backend, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn provision_histogram() -> AtomicHistogram {
    AtomicHistogram::new(PROVISION_BUCKETS)
}

fn exec_histogram() -> AtomicHistogram {
    AtomicHistogram::new(EXEC_BUCKETS)
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let sandboxes_active = Family::<Backend, Gauge>::default();
        let provisions = Family::<BackendOutcome, Counter>::default();
        let execs = Family::<BackendOutcome, Counter>::default();
        let provision_seconds = Family::<Backend, AtomicHistogram>::new_with_constructor(
            provision_histogram as fn() -> _,
        );
        let exec_seconds =
            Family::<Backend, AtomicHistogram>::new_with_constructor(exec_histogram as fn() -> _);
        let sessions = Family::<Labels1, Gauge>::default();
        let finished = Family::<Labels1, Counter>::default();
        let failures_f = Family::<Labels1, Counter>::default();
        let failures = FAILURE_REASONS
            .iter()
            .map(|r| failures_f.get_or_create(&[("reason", *r)]).clone())
            .collect();
        let webhooks = Family::<Labels2, Counter>::default();
        // Every series exists from the start, so rates and alerts see zeros, not gaps.
        for s in SOURCES {
            for o in WEBHOOK_OUTCOMES {
                let _ = webhooks.get_or_create(&[("source", *s), ("outcome", *o)]);
            }
        }
        for s in ["queued", "running"] {
            let _ = sessions.get_or_create(&[("status", s)]);
        }
        for s in ["succeeded", "failed", "cancelled"] {
            let _ = finished.get_or_create(&[("status", s)]);
        }
        let outbox_retries = Family::<Labels1, Counter>::default();
        let replies_failed = Family::<Labels1, Counter>::default();
        for s in SOURCES {
            let _ = outbox_retries.get_or_create(&[("source", *s)]);
            let _ = replies_failed.get_or_create(&[("source", *s)]);
        }
        let m = Metrics {
            registry: Registry::default(),
            sandboxes_active,
            provisions,
            execs,
            provision_seconds,
            exec_seconds,
            sessions,
            steps: Counter::default(),
            input_tokens: Counter::default(),
            output_tokens: Counter::default(),
            cost: Counter::default(),
            finished,
            failures,
            resumes: Counter::default(),
            webhooks,
            replies_pending: Gauge::default(),
            outbox_retries,
            replies_failed,
            pool_ready: Family::default(),
            pool_claims: Family::default(),
            pool_misses: Family::default(),
        };
        r.register(
            "airlock_brain_pool_ready_sandboxes",
            "Warm-pool sandboxes ready to claim, by backend",
            m.pool_ready.clone(),
        );
        r.register(
            "airlock_brain_pool_claims",
            "Provisions served from a warm pool, by backend",
            m.pool_claims.clone(),
        );
        r.register(
            "airlock_brain_pool_misses",
            "Provisions a warm pool could not serve (empty), by backend",
            m.pool_misses.clone(),
        );
        r.register(
            "airlock_sandboxes_active",
            "Sandboxes provisioning or running, by backend",
            m.sandboxes_active.clone(),
        );
        r.register(
            "airlock_sandbox_provisions",
            "Sandbox provisions, by backend and outcome",
            m.provisions.clone(),
        );
        r.register(
            "airlock_sandbox_execs",
            "Commands run in sandboxes, by backend and outcome",
            m.execs.clone(),
        );
        r.register(
            "airlock_sandbox_provision_duration_seconds",
            "Time to provision a sandbox",
            m.provision_seconds.clone(),
        );
        r.register(
            "airlock_sandbox_exec_duration_seconds",
            "Time to run a command (non-streamed)",
            m.exec_seconds.clone(),
        );
        r.register(
            "airlock_brain_sessions",
            "Sessions queued or running (all replicas: read from the database)",
            m.sessions.clone(),
        );
        r.register(
            "airlock_brain_session_steps",
            "Model calls answered for sessions (steps)",
            m.steps.clone(),
        );
        let tokens = Family::<Labels1, Counter>::default();
        // One statement each: a family's read guard held while another series is created
        // (a write lock) would deadlock.
        let input_tokens = tokens.get_or_create(&[("kind", "input")]).clone();
        let output_tokens = tokens.get_or_create(&[("kind", "output")]).clone();
        let m = Metrics {
            input_tokens,
            output_tokens,
            ..m
        };
        r.register(
            "airlock_brain_session_tokens",
            "Tokens used by sessions' model calls, by kind",
            tokens,
        );
        r.register(
            "airlock_brain_session_cost_usd",
            "Cost of sessions' model calls (price table)",
            m.cost.clone(),
        );
        r.register(
            "airlock_brain_sessions_finished",
            "Session runs that ended, by final status",
            m.finished.clone(),
        );
        r.register(
            "airlock_brain_session_failures",
            "Failed sessions by reason",
            failures_f,
        );
        r.register(
            "airlock_brain_session_resumes",
            "Session runs resumed (after a restart, a lost lease or a requeue)",
            m.resumes.clone(),
        );
        r.register(
            "airlock_triggers_webhooks",
            "Webhook deliveries by source and outcome (accepted, deduplicated, refused)",
            m.webhooks.clone(),
        );
        r.register(
            "airlock_triggers_replies_pending",
            "Replies (Slack messages, GitHub comments) waiting in the outbox",
            m.replies_pending.clone(),
        );
        r.register(
            "airlock_triggers_outbox_retries",
            "Reply deliveries that failed and were scheduled again",
            m.outbox_retries.clone(),
        );
        r.register(
            "airlock_triggers_replies_failed",
            "Replies given up after their last attempt",
            m.replies_failed.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn provision(&self, backend: &str, outcome: Outcome, took: Duration) {
        self.provisions
            .get_or_create(&[
                ("backend", backend.to_owned()),
                ("outcome", outcome.as_str().to_owned()),
            ])
            .inc();
        self.provision_seconds
            .get_or_create(&[("backend", backend.to_owned())])
            .observe(took.as_secs_f64());
    }

    pub fn exec(&self, backend: &str, outcome: Outcome, took: Duration) {
        self.execs
            .get_or_create(&[
                ("backend", backend.to_owned()),
                ("outcome", outcome.as_str().to_owned()),
            ])
            .inc();
        self.exec_seconds
            .get_or_create(&[("backend", backend.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// A provision that asked a warm pool: `hit` = it got a pooled sandbox.
    pub fn pool_claim(&self, backend: &str, hit: bool) {
        let f = if hit {
            &self.pool_claims
        } else {
            &self.pool_misses
        };
        f.get_or_create(&[("backend", backend.to_owned())]).inc();
    }

    /// Sets the ready gauge from `depth` (backend → ready sandboxes); call before [`Self::render`].
    pub fn set_pool_depth(&self, depth: &std::collections::BTreeMap<String, usize>) {
        for (backend, n) in depth {
            self.pool_ready
                .get_or_create(&[("backend", backend.clone())])
                .set(*n as i64);
        }
    }

    /// A session's model call was answered.
    pub fn session_step(&self, input_tokens: u64, output_tokens: u64, cost_usd: f64) {
        self.steps.inc();
        self.input_tokens.inc_by(input_tokens);
        self.output_tokens.inc_by(output_tokens);
        if cost_usd > 0.0 {
            self.cost.inc_by(cost_usd);
        }
    }

    /// A session run was resumed.
    pub fn session_resumed(&self) {
        self.resumes.inc();
    }

    /// A session run ended with `status`; `error` is its failure message.
    pub fn session_finished(&self, status: &str, error: Option<&str>) {
        let status: &'static str = match status {
            "succeeded" => "succeeded",
            "failed" => "failed",
            "cancelled" => "cancelled",
            _ => return,
        };
        self.finished.get_or_create(&[("status", status)]).inc();
        if status == "failed" {
            let i = failure_reason(error.unwrap_or(""));
            self.failures[i].inc();
        }
    }

    /// A webhook delivery from `source` (`slack`/`github`) ended as `outcome`.
    pub fn webhook(&self, source: &'static str, outcome: &'static str) {
        self.webhooks
            .get_or_create(&[("source", source), ("outcome", outcome)])
            .inc();
    }

    /// A reply delivery failed: retried later, or (`gave_up`) not any more.
    pub fn reply_failed(&self, source: &'static str, gave_up: bool) {
        let f = if gave_up {
            &self.replies_failed
        } else {
            &self.outbox_retries
        };
        f.get_or_create(&[("source", source)]).inc();
    }

    /// The exposition text; the arguments are read from the store at scrape time.
    pub fn render(
        &self,
        active: &[(String, i64)],
        sessions: &[(String, i64)],
        replies_pending: i64,
    ) -> String {
        for (backend, n) in active {
            self.sandboxes_active
                .get_or_create(&[("backend", backend.clone())])
                .set(*n);
        }
        for status in ["queued", "running"] {
            let n = sessions
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            self.sessions.get_or_create(&[("status", status)]).set(n);
        }
        self.replies_pending.set(replies_pending);
        gateway::prom::render(&self.registry)
    }
}

/// Middleware over the routes: counts a webhook (`/hooks/slack`, `/hooks/github`) answered
/// with an error status as refused (bad signature, bad payload, busy, store down); the
/// handlers count what they accept or deduplicate.
pub async fn count_refused_webhooks(
    axum::extract::State(metrics): axum::extract::State<std::sync::Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let source = match request.uri().path() {
        "/hooks/slack" => Some("slack"),
        "/hooks/github" => Some("github"),
        _ => None,
    };
    let response = next.run(request).await;
    if let Some(source) = source
        && (response.status().is_client_error() || response.status().is_server_error())
        && response.status() != axum::http::StatusCode::NOT_FOUND
    {
        metrics.webhook(source, "refused");
    }
    response
}

/// Maps the loop's failure messages (`sessions/agent.rs`) to a fixed reason.
fn failure_reason(error: &str) -> usize {
    let reason = if error.starts_with("timed out") {
        "timeout"
    } else if error.starts_with("max_steps") {
        "max_steps"
    } else if error.starts_with("max_cost_usd") {
        "max_cost"
    } else if error.starts_with("model call failed") {
        "model_error"
    } else if error.starts_with("resumed ") {
        "max_resumes"
    } else if error.starts_with("no model") {
        "no_model"
    } else {
        "other"
    };
    FAILURE_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(FAILURE_REASONS.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sandboxes_sessions_and_triggers() {
        let m = Metrics::default();
        m.exec("local", Outcome::Ok, Duration::from_millis(3));
        m.exec("local", Outcome::Ok, Duration::from_millis(40));
        m.exec("local", Outcome::Timeout, Duration::from_secs(1000));
        m.provision("docker", Outcome::Error, Duration::from_millis(200));
        m.session_step(100, 20, 0.5);
        m.session_finished("failed", Some("max_steps (3) reached"));
        m.session_finished("succeeded", None);
        m.webhook("github", "deduplicated");
        m.reply_failed("slack", false);
        let text = m.render(&[("local".into(), 2)], &[("running".into(), 1)], 4);
        for line in [
            "airlock_sandboxes_active{backend=\"local\"} 2",
            "airlock_sandbox_execs_total{backend=\"local\",outcome=\"ok\"} 2",
            "airlock_sandbox_execs_total{backend=\"local\",outcome=\"timeout\"} 1",
            "airlock_sandbox_exec_duration_seconds_bucket{le=\"0.005\",backend=\"local\"} 1",
            "airlock_sandbox_exec_duration_seconds_bucket{le=\"0.05\",backend=\"local\"} 2",
            "airlock_sandbox_exec_duration_seconds_bucket{le=\"300.0\",backend=\"local\"} 2",
            "airlock_sandbox_exec_duration_seconds_bucket{le=\"+Inf\",backend=\"local\"} 3",
            "airlock_sandbox_exec_duration_seconds_count{backend=\"local\"} 3",
            "airlock_sandbox_provisions_total{backend=\"docker\",outcome=\"error\"} 1",
            "# TYPE airlock_sandbox_provision_duration_seconds histogram",
            "airlock_brain_sessions{status=\"running\"} 1",
            "airlock_brain_sessions{status=\"queued\"} 0",
            "airlock_brain_session_steps_total 1",
            "airlock_brain_session_tokens_total{kind=\"input\"} 100",
            "airlock_brain_session_cost_usd_total 0.5",
            "airlock_brain_session_failures_total{reason=\"max_steps\"} 1",
            "airlock_brain_sessions_finished_total{status=\"succeeded\"} 1",
            "airlock_triggers_webhooks_total{source=\"github\",outcome=\"deduplicated\"} 1",
            "airlock_triggers_webhooks_total{source=\"slack\",outcome=\"accepted\"} 0",
            "airlock_triggers_outbox_retries_total{source=\"slack\"} 1",
            "airlock_triggers_replies_pending 4",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}

/// The exposition of every component together (brain, embedded gateway and vault proxy), as
/// `GET /metrics` serves it, checked by `promtool` and against the shipped dashboard and
/// alert rules (`k8s/observability/`): every metric they query must exist.
#[cfg(test)]
mod exposition_tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn observability_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/observability")
    }

    /// Every component's text after some traffic, so each family has series.
    fn scrape() -> String {
        let m = Metrics::default();
        m.provision("local", Outcome::Ok, Duration::from_millis(300));
        m.exec("local", Outcome::Ok, Duration::from_millis(3));
        m.session_step(10, 2, 0.01);
        m.session_resumed();
        m.session_finished("failed", Some("timed out after 5 s"));
        m.webhook("github", "accepted");
        m.reply_failed("slack", false);
        m.reply_failed("slack", true);
        let mut text = m.render(&[("local".into(), 1)], &[], 0);
        let route = std::sync::Arc::new(gateway::metrics::RouteCounters::default());
        let gw = gateway::metrics::Metrics::new(["scripted"].into_iter(), route);
        gw.record(
            "scripted",
            gateway::canonical::Usage::default(),
            0.0,
            Duration::from_millis(5),
        );
        text.push_str(&gw.render(false, Some(3)));
        let vault = vault_proxy::metrics::VaultMetrics::new();
        vault.audit_write(Duration::from_micros(50));
        text.push_str(&vault.render(vault_proxy::metrics::Snapshot {
            grants: 1,
            tunnels_open: 0,
            approvals_pending: 0,
            audit_queue_depth: 0,
            audit_healthy: true,
        }));
        text
    }

    fn promtool() -> Option<&'static str> {
        let found = Command::new("promtool").arg("--version").output().is_ok();
        if !found {
            assert!(
                std::env::var_os("AIRLOCK_REQUIRE_PROMTOOL").is_none(),
                "promtool is required (apt-get install prometheus)"
            );
            eprintln!("skipping: promtool not installed");
        }
        found.then_some("promtool")
    }

    #[test]
    fn promtool_accepts_the_metrics_of_every_component() {
        let text = scrape();
        let Some(promtool) = promtool() else { return };
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writing to promtool");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn alert_rules_pass_promtool() {
        let Some(promtool) = promtool() else { return };
        let out = Command::new(promtool)
            .args(["check", "rules"])
            .arg(observability_dir().join("alerts.yaml"))
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `airlock_…` names in a text (PromQL expressions, JSON).
    fn referenced(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("airlock_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn dashboard_and_alerts_query_only_metrics_that_exist() {
        let text = scrape();
        let samples: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
            .collect();
        let dashboard =
            std::fs::read_to_string(observability_dir().join("grafana-dashboard.json")).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
        let mut exprs = String::new();
        for panel in parsed["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().into_iter().flatten() {
                exprs.push_str(t["expr"].as_str().expect("expr"));
                exprs.push('\n');
            }
        }
        let alerts = std::fs::read_to_string(observability_dir().join("alerts.yaml")).unwrap();
        let mut seen = 0;
        for (what, source) in [("dashboard", &exprs), ("alerts", &alerts)] {
            let names = referenced(source);
            assert!(names.len() > 5, "{what} queries almost nothing: {names:?}");
            for name in names {
                seen += 1;
                assert!(
                    samples.contains(name.as_str()),
                    "{what} queries `{name}`, which no component serves; served: {samples:?}"
                );
            }
        }
        assert!(seen > 20);
    }
}
