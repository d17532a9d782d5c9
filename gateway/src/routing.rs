//! Model groups, deployment choice (simple-shuffle, least-busy,
//! latency-based-routing), rpm/tpm limits, cooldowns, retries and fallbacks.

use crate::config::{Config, ConfigError, ModelEntry, RoutingStrategy};
use crate::error::{GatewayError, ProviderError};
use crate::fallbacks::{FallbackList, RequestFallbacks, is_content_policy_error};
use crate::pricing::{self, Price};
use crate::providers::{self, Provider};
use rand::Rng;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One upstream deployment of a model group.
pub struct Deployment {
    pub provider: Arc<dyn Provider>,
    /// Client-facing group name (for spend).
    pub model_name: Arc<str>,
    /// Upstream model; may contain `*` (wildcard groups).
    pub upstream: String,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    /// Price override from the config, or the table's price for `upstream`.
    pub price: Option<Price>,
    /// LiteLLM provider name for price lookups (`openai`, `bedrock`, …).
    pub provider_prefix: Option<&'static str>,
    pub weight: f64,
    /// `litellm_params.max_retries`: extra attempts on this deployment itself.
    pub max_retries: u32,
    /// `model_info` from the config, as given.
    pub model_info: Option<serde_json::Value>,
    /// Drop request parameters this provider cannot take instead of a 400.
    pub drop_params: bool,
    /// Parameters always removed before this upstream.
    pub additional_drop_params: Vec<String>,
    /// Which parameters this deployment's provider takes.
    pub family: crate::params::Family,
    /// The provider prefix (`openai`, `azure`, `bedrock`, …).
    pub provider_name: Arc<str>,
    in_flight: AtomicU64,
    /// EWMA latency in microseconds (0 = never measured).
    latency_us: AtomicU64,
    /// Epoch millis until which this deployment is skipped.
    cooldown_until: AtomicU64,
    /// Minute window for rpm/tpm: (minute number, requests, tokens).
    window_minute: AtomicU64,
    window_requests: AtomicU64,
    window_tokens: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Deployment {
    fn new(e: &ModelEntry, provider: Arc<dyn Provider>, cfg: &Config) -> Self {
        let timeout = e.timeout.unwrap_or(cfg.request_timeout);
        let provider_prefix = pricing::provider_prefix(&e.provider);
        let price = match (e.input_cost_per_token, e.output_cost_per_token) {
            // Wildcard deployments are priced per request, by the upstream name.
            (None, None) if e.model.contains('*') => None,
            // A scripted replay costs nothing, and knowingly so.
            (None, None) if matches!(e.provider, crate::config::ProviderKind::Scripted(_)) => {
                Some(Price::new(0.0, 0.0))
            }
            (i, o) => {
                let (p, m) = pricing::priced_name(provider_prefix, &e.model, e.model_info.as_ref());
                Some(pricing::for_deployment(p, m, i, o))
            }
        };
        Self {
            provider,
            model_name: Arc::from(e.model_name.as_str()),
            upstream: e.model.clone(),
            rpm: e.rpm,
            tpm: e.tpm,
            timeout,
            idle_timeout: e.stream_timeout.unwrap_or(timeout),
            price,
            provider_prefix,
            weight: e
                .weight
                .or(e.rpm.map(|r| r as f64))
                .or(e.tpm.map(|t| t as f64))
                .unwrap_or(1.0)
                .max(0.0),
            max_retries: e.max_retries.unwrap_or(0),
            model_info: e.model_info.clone(),
            drop_params: e.drop_params,
            additional_drop_params: e.additional_drop_params.clone(),
            family: crate::params::Family::of(&e.provider, &e.provider_name, &e.model),
            provider_name: Arc::from(e.provider_name.as_str()),
            in_flight: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            cooldown_until: AtomicU64::new(0),
            window_minute: AtomicU64::new(0),
            window_requests: AtomicU64::new(0),
            window_tokens: AtomicU64::new(0),
        }
    }

    /// The upstream model name for a requested model (fills in wildcards).
    pub fn upstream_for<'a>(
        &'a self,
        requested: &'a str,
        group_pattern: &str,
    ) -> std::borrow::Cow<'a, str> {
        if !self.upstream.contains('*') {
            return std::borrow::Cow::Borrowed(&self.upstream);
        }
        let matched = wildcard_capture(group_pattern, requested).unwrap_or(requested);
        std::borrow::Cow::Owned(self.upstream.replacen('*', matched, 1))
    }

    pub fn price_for(&self, upstream: &str) -> Price {
        self.price.unwrap_or_else(|| {
            pricing::table()
                .find(self.provider_prefix, upstream)
                .unwrap_or_default()
        })
    }

    fn roll_window(&self) -> u64 {
        let minute = now_ms() / 60_000;
        if self.window_minute.load(Ordering::Relaxed) != minute {
            self.window_minute.store(minute, Ordering::Relaxed);
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_tokens.store(0, Ordering::Relaxed);
        }
        minute
    }

    fn under_limits(&self) -> bool {
        if self.rpm.is_none() && self.tpm.is_none() {
            return true;
        }
        self.roll_window();
        self.rpm
            .is_none_or(|r| self.window_requests.load(Ordering::Relaxed) < r)
            && self
                .tpm
                .is_none_or(|t| self.window_tokens.load(Ordering::Relaxed) < t)
    }

    fn cooling(&self, now: u64) -> bool {
        self.cooldown_until.load(Ordering::Relaxed) > now
    }

    /// Count tokens against the tpm window.
    pub fn add_tokens(&self, tokens: u64) {
        if self.tpm.is_some() {
            self.roll_window();
            self.window_tokens.fetch_add(tokens, Ordering::Relaxed);
        }
    }

    fn observe_latency(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 7 + us) / 8 };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }
}

/// Guard counting a call as in flight (least-busy) until dropped.
pub struct InFlight(Arc<Deployment>);

impl InFlight {
    pub fn new(d: Arc<Deployment>) -> Self {
        d.in_flight.fetch_add(1, Ordering::Relaxed);
        if d.rpm.is_some() || d.tpm.is_some() {
            d.roll_window();
            d.window_requests.fetch_add(1, Ordering::Relaxed);
        }
        Self(d)
    }
    pub fn deployment(&self) -> &Arc<Deployment> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All deployments serving one `model_name`.
pub struct ModelGroup {
    pub name: String,
    pub deployments: Vec<Arc<Deployment>>,
}

/// `pattern` like `anthropic/*` or `claude-*`; returns what `*` matched.
fn wildcard_capture<'a>(pattern: &str, name: &'a str) -> Option<&'a str> {
    let (pre, post) = pattern.split_once('*')?;
    if name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post) {
        Some(&name[pre.len()..name.len() - post.len()])
    } else {
        None
    }
}

pub struct Router {
    groups: crate::FastMap<String, Arc<ModelGroup>>,
    wildcards: Vec<Arc<ModelGroup>>,
    /// Model names in config order (for /v1/models).
    pub names: Vec<String>,
    strategy: RoutingStrategy,
    num_retries: u32,
    fallbacks: HashMap<String, Vec<String>>,
    default_fallbacks: Vec<String>,
    context_window_fallbacks: HashMap<String, Vec<String>>,
    content_policy_fallbacks: HashMap<String, Vec<String>>,
    /// `max_fallbacks`: how deep a fallback walk may go (0 = no fallbacks).
    max_fallbacks: u32,
    cooldown: Duration,
    max_retry_after: Duration,
    /// Retries, fallbacks and upstream failures for `/metrics`.
    pub(crate) counters: Arc<crate::metrics::RouteCounters>,
}

impl Router {
    pub fn new(cfg: &Config, client: &reqwest::Client) -> Result<Router, ConfigError> {
        let raw = providers::RawClient::new();
        let mut groups: HashMap<String, Vec<Arc<Deployment>>> = HashMap::new();
        let mut names = Vec::new();
        for e in &cfg.model_list {
            let p = providers::build(e, client, &raw)?;
            if !groups.contains_key(&e.model_name) {
                names.push(e.model_name.clone());
            }
            groups
                .entry(e.model_name.clone())
                .or_default()
                .push(Arc::new(Deployment::new(e, p, cfg)));
        }
        let mut exact = crate::FastMap::default();
        let mut wildcards = Vec::new();
        for (name, deployments) in groups {
            let g = Arc::new(ModelGroup {
                name: name.clone(),
                deployments,
            });
            if name.contains('*') {
                wildcards.push(g);
            } else {
                exact.insert(name, g);
            }
        }
        // Most specific wildcard first.
        wildcards.sort_by_key(|g| std::cmp::Reverse(g.name.len()));
        Ok(Router {
            groups: exact,
            wildcards,
            names,
            strategy: cfg.routing_strategy,
            num_retries: cfg.num_retries,
            fallbacks: cfg.fallbacks.clone(),
            default_fallbacks: cfg.default_fallbacks.clone(),
            context_window_fallbacks: cfg.context_window_fallbacks.clone(),
            content_policy_fallbacks: cfg.content_policy_fallbacks.clone(),
            max_fallbacks: cfg.max_fallbacks,
            cooldown: cfg.cooldown_time,
            max_retry_after: cfg.max_retry_after,
            counters: Arc::default(),
        })
    }

    pub fn group(&self, model: &str) -> Option<&Arc<ModelGroup>> {
        self.groups.get(model).or_else(|| {
            self.wildcards
                .iter()
                .find(|g| wildcard_capture(&g.name, model).is_some())
        })
    }

    /// Choose a deployment, avoiding those already tried, cooling down, or over rpm/tpm.
    fn pick(&self, g: &ModelGroup, tried: u64) -> Option<usize> {
        let n = g.deployments.len();
        if n == 1 {
            // The common case: no choice to make, no clock to read.
            return g.deployments[0].under_limits().then_some(0);
        }
        let now = now_ms();
        let fresh = |i: &usize| tried & (1u64 << (i % 64)) == 0;
        let mut cands: Vec<usize> = (0..n)
            .filter(fresh)
            .filter(|&i| !g.deployments[i].cooling(now) && g.deployments[i].under_limits())
            .collect();
        if cands.is_empty() {
            cands = (0..n)
                .filter(fresh)
                .filter(|&i| g.deployments[i].under_limits())
                .collect();
        }
        if cands.is_empty() {
            // Everything tried: allow a retry on any deployment under its limits.
            cands = (0..n)
                .filter(|&i| g.deployments[i].under_limits())
                .collect();
        }
        if cands.len() <= 1 {
            return cands.first().copied();
        }
        let mut rng = rand::rng();
        let d = |i: usize| &g.deployments[i];
        Some(match self.strategy {
            RoutingStrategy::SimpleShuffle => {
                let total: f64 = cands.iter().map(|&i| d(i).weight).sum();
                if total <= 0.0 {
                    cands[rng.random_range(0..cands.len())]
                } else {
                    let mut x = rng.random_range(0.0..total);
                    let mut pick = cands[cands.len() - 1];
                    for &i in &cands {
                        if x < d(i).weight {
                            pick = i;
                            break;
                        }
                        x -= d(i).weight;
                    }
                    pick
                }
            }
            RoutingStrategy::LeastBusy => {
                let min = cands
                    .iter()
                    .map(|&i| d(i).in_flight.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0);
                let best: Vec<usize> = cands
                    .into_iter()
                    .filter(|&i| d(i).in_flight.load(Ordering::Relaxed) == min)
                    .collect();
                best[rng.random_range(0..best.len())]
            }
            RoutingStrategy::LatencyBased => {
                // Unmeasured deployments (0) go first so each gets measured.
                let min = cands
                    .iter()
                    .map(|&i| d(i).latency_us.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0);
                // Within 10% of the best counts as a tie (LiteLLM's lowest_latency_buffer idea).
                let best: Vec<usize> = cands
                    .into_iter()
                    .filter(|&i| d(i).latency_us.load(Ordering::Relaxed) <= min + min / 10)
                    .collect();
                best[rng.random_range(0..best.len())]
            }
        })
    }

    /// Run `call` against the model's deployments with retries, then against
    /// each fallback model group. Never waits longer than the attempts' own
    /// timeouts plus bounded backoff.
    pub async fn execute<T, F, Fut>(&self, model: &str, call: F) -> Result<T, GatewayError>
    where
        F: Fn(InFlight, Arc<ModelGroup>) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        self.execute_with(model, None, call).await
    }

    /// [`Router::execute`] with the request's own fallback lists, each of which
    /// replaces the config's for this call (LiteLLM's router reads them from the
    /// call's kwargs before its own settings).
    ///
    /// The walk is LiteLLM's (`Router.async_function_with_fallbacks_common_utils` and
    /// `run_async_fallback`, litellm 1.108): a group that fails after its retries has
    /// its own fallback list tried in order, and each of those groups, when it fails,
    /// its own in turn (a chain `a → b → c`). Every fallback tried adds one to the
    /// depth of its list's walk; a failed group's list is walked only while that
    /// depth is below `max_fallbacks` ("max fallback depth reached"), and no model is
    /// tried twice in one request (`attempted_targets`).
    pub async fn execute_with<T, F, Fut>(
        &self,
        model: &str,
        req: Option<&RequestFallbacks>,
        call: F,
    ) -> Result<T, GatewayError>
    where
        F: Fn(InFlight, Arc<ModelGroup>) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let first = self.group(model).ok_or_else(|| {
            GatewayError::NotFound(format!(
                "Invalid model name passed in model={model}. Call `/v1/models` to view available models."
            ))
        })?;
        let mut last_err: Option<ProviderError> = None;
        let failed = match self.attempt(first, &call, &mut last_err).await {
            Ok(v) => return Ok(v),
            Err(Failed::Abort) => return Err(into_gateway_error(last_err)),
            Err(Failed::Error(class)) => class,
        };
        if self.max_fallbacks == 0 {
            return Err(into_gateway_error(last_err));
        }
        // Lists still being walked (one per failed group whose fallbacks are being
        // tried), innermost last, each with the depth its walk has reached. Only a
        // failed request gets here, so the allocations are off the hot path.
        struct Walk<'l> {
            list: std::slice::Iter<'l, String>,
            depth: u32,
        }
        let mut walks: Vec<Walk<'_>> = Vec::new();
        if let Some(l) = self.fallback_list(req, model, &first.name, failed) {
            walks.push(Walk {
                list: l.iter(),
                depth: 0,
            });
        }
        let mut attempted: Vec<&str> = vec![model];
        while let Some(walk) = walks.last_mut() {
            let Some(next) = walk.list.next() else {
                walks.pop();
                continue;
            };
            if attempted.contains(&next.as_str()) {
                continue;
            }
            attempted.push(next);
            walk.depth += 1;
            let depth = walk.depth;
            // A name no group serves fails like any other fallback attempt.
            let Some(g) = self.group(next) else {
                tracing::warn!(model, to = %next, "fallback model is not in model_list");
                continue;
            };
            tracing::info!(model, to = %g.name, depth, "falling back");
            self.counters.fallback();
            match self.attempt(g, &call, &mut last_err).await {
                Ok(v) => return Ok(v),
                Err(Failed::Abort) => return Err(into_gateway_error(last_err)),
                Err(Failed::Error(class)) => {
                    if depth < self.max_fallbacks
                        && let Some(l) = self.fallback_list(req, next, &g.name, class)
                    {
                        walks.push(Walk {
                            list: l.iter(),
                            depth,
                        });
                    }
                }
            }
        }
        Err(into_gateway_error(last_err))
    }

    /// The fallback list for `model` (served by `group`) after an error of `class`:
    /// a request's plain list (`["a", "b"]`) whatever the error; for a context-window
    /// or content-policy error, that error's own list when there is one; else the
    /// ordinary fallbacks (the request's, the config's, or `default_fallbacks`).
    fn fallback_list<'a>(
        &'a self,
        req: Option<&'a RequestFallbacks>,
        model: &str,
        group: &str,
        class: ErrorClass,
    ) -> Option<&'a [String]> {
        let req_fallbacks = req.and_then(|r| r.fallbacks.as_ref());
        if let Some(l @ FallbackList::Ordered(_)) = req_fallbacks {
            return Some(l.for_model(model, group));
        }
        let configured = |m| configured_list(m, model, group);
        let special = match class {
            ErrorClass::Other => None,
            ErrorClass::ContextWindow => match req.and_then(|r| r.context_window.as_ref()) {
                Some(l) => Some(l.for_model(model, group)),
                None => configured(&self.context_window_fallbacks),
            },
            ErrorClass::ContentPolicy => match req.and_then(|r| r.content_policy.as_ref()) {
                Some(l) => Some(l.for_model(model, group)),
                None => configured(&self.content_policy_fallbacks),
            },
        };
        special.or_else(|| match req_fallbacks {
            Some(l) => Some(l.for_model(model, group)),
            None => Some(configured(&self.fallbacks).unwrap_or(&self.default_fallbacks)),
        })
    }

    /// One model group with its retries: the answer, or how it failed (the error
    /// itself is left in `last_err`).
    async fn attempt<T, F, Fut>(
        &self,
        g: &Arc<ModelGroup>,
        call: &F,
        last_err: &mut Option<ProviderError>,
    ) -> Result<T, Failed>
    where
        F: Fn(InFlight, Arc<ModelGroup>) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut tried: u64 = 0;
        for attempt in 0..=self.num_retries {
            let Some(i) = self.pick(g, tried) else {
                if last_err.is_none() {
                    *last_err = Some(ProviderError::Status {
                        status: 429,
                        error_type: "rate_limit_error".into(),
                        message: format!(
                            "all deployments of {} are at their rpm/tpm limit",
                            g.name
                        ),
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
                return Err(Failed::Error(ErrorClass::Other));
            };
            tried |= 1u64 << (i % 64);
            let dep = &g.deployments[i];
            let mut started = Instant::now();
            if attempt > 0 {
                self.counters.retry();
            }
            let mut outcome = call(InFlight::new(dep.clone()), g.clone()).await;
            // `max_retries`: the deployment's own retries (LiteLLM hands it to the
            // provider client), before the router's retries and fallbacks.
            for _ in 0..dep.max_retries {
                match &outcome {
                    Err(e) if e.retryable() => {
                        self.counters.upstream_error(e);
                        let wait = e
                            .retry_after()
                            .unwrap_or(Duration::from_millis(50))
                            .min(self.max_retry_after);
                        tokio::time::sleep(wait).await;
                        self.counters.retry();
                        started = Instant::now();
                        outcome = call(InFlight::new(dep.clone()), g.clone()).await;
                    }
                    _ => break,
                }
            }
            match outcome {
                Ok(v) => {
                    dep.observe_latency(started.elapsed());
                    return Ok(v);
                }
                Err(e) => {
                    tracing::warn!(model = %g.name, deployment = dep.provider.id(), attempt, error = %e, "upstream call failed");
                    self.counters.upstream_error(&e);
                    let retryable = e.retryable();
                    if retryable {
                        let cool = e
                            .retry_after()
                            .unwrap_or(self.cooldown)
                            .min(self.cooldown.max(Duration::from_millis(1)));
                        dep.cooldown_until
                            .store(now_ms() + cool.as_millis() as u64, Ordering::Relaxed);
                        dep.observe_latency(started.elapsed());
                    }
                    let ra = e.retry_after();
                    let class = if is_context_window_error(&e) {
                        ErrorClass::ContextWindow
                    } else if is_content_policy_error(&e) {
                        ErrorClass::ContentPolicy
                    } else {
                        ErrorClass::Other
                    };
                    *last_err = Some(e);
                    if class != ErrorClass::Other {
                        // Retrying the same prompt on the same group cannot help.
                        return Err(Failed::Error(class));
                    }
                    if !retryable {
                        return Err(Failed::Abort);
                    }
                    if attempt < self.num_retries {
                        let backoff = Duration::from_millis(50 * (1u64 << attempt.min(5)));
                        let wait = ra.unwrap_or(backoff).min(self.max_retry_after);
                        // Another healthy deployment needs no wait.
                        if g.deployments.len() <= tried.count_ones() as usize
                            || ra.is_some() && g.deployments.len() == 1
                        {
                            tokio::time::sleep(wait).await;
                        } else {
                            tokio::time::sleep(backoff.min(Duration::from_millis(50))).await;
                        }
                    }
                }
            }
        }
        Err(Failed::Error(ErrorClass::Other))
    }

    /// `model_info` of each deployment of a model group (for `/v1/models`, `/model/info`).
    pub fn deployments(&self, model: &str) -> &[Arc<Deployment>] {
        self.group(model)
            .map(|g| g.deployments.as_slice())
            .unwrap_or_default()
    }

    /// Expose groups for `/v1/models`.
    pub fn model_names(&self) -> &[String] {
        &self.names
    }
}

/// Which fallback list an upstream error sends the request to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    Other,
    /// LiteLLM's `ContextWindowExceededError`: `context_window_fallbacks`.
    ContextWindow,
    /// LiteLLM's `ContentPolicyViolationError`: `content_policy_fallbacks`.
    ContentPolicy,
}

/// How one model group's attempts ended without an answer.
enum Failed {
    /// A non-retryable error: no fallback can help, the request ends.
    Abort,
    /// Retries used up (or pointless): fallbacks for this class of error may run.
    Error(ErrorClass),
}

fn into_gateway_error(e: Option<ProviderError>) -> GatewayError {
    GatewayError::Provider(
        e.unwrap_or_else(|| ProviderError::Connect("no deployment available".into())),
    )
}

/// A config fallback map's entry for `model`, else for the group serving it.
fn configured_list<'m>(
    m: &'m HashMap<String, Vec<String>>,
    model: &str,
    group: &str,
) -> Option<&'m [String]> {
    m.get(model).or_else(|| m.get(group)).map(Vec::as_slice)
}

/// The upstream said the prompt does not fit the model's context window: LiteLLM's
/// `ContextWindowExceededError`, recognised by the same message fragments
/// (`ExceptionCheckers.is_error_str_context_window_exceeded` and the per-provider
/// checks in litellm/litellm_core_utils/exception_mapping_utils.py).
pub fn is_context_window_error(e: &ProviderError) -> bool {
    let ProviderError::Status {
        status, message, ..
    } = e
    else {
        return false;
    };
    if !matches!(status, 400 | 413 | 422) {
        return false;
    }
    let m = message.to_ascii_lowercase();
    // OpenAI's own parameter-length errors are not about the context window.
    if m.contains("string_above_max_length")
        || (m.contains("invalid 'user'") && m.contains("string too long"))
    {
        return false;
    }
    const FRAGMENTS: &[&str] = &[
        "exceed context limit",
        "this model's maximum context length is",
        "string too long. expected a string with maximum length",
        "model's maximum context limit",
        "is longer than the model's context length",
        "input tokens exceed the configured limit",
        "`inputs` tokens + `max_new_tokens` must be",
        "exceeds the available context size",
        "exceeds the maximum number of tokens allowed",
        "prompt is too long",
        "input is too long",
        "too many input tokens",
        "context_length_exceeded",
    ];
    FRAGMENTS.iter().any(|f| m.contains(f))
        || (m.contains("current length is") && m.contains("while limit is"))
        || (m.contains("maximum input length is") && m.contains("tokens"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, message: &str) -> ProviderError {
        ProviderError::Status {
            status,
            error_type: "invalid_request_error".into(),
            message: message.into(),
            retry_after: None,
        }
    }

    #[test]
    fn context_window_errors_are_recognised_as_litellm_does() {
        for m in [
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            "prompt is too long: 208310 tokens > 200000 maximum",
            "Input is too long for requested model.",
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            "Current length is 9000 while limit is 8192",
        ] {
            assert!(is_context_window_error(&status(400, m)), "{m}");
        }
        for (s, m) in [
            (400, "Invalid value for 'messages'"),
            (
                400,
                "Invalid 'user': string too long. Expected a string with maximum length 64",
            ),
            (500, "prompt is too long"),
        ] {
            assert!(!is_context_window_error(&status(s, m)), "{s} {m}");
        }
        assert!(!is_context_window_error(&ProviderError::Timeout(
            Duration::from_secs(1)
        )));
    }
}
