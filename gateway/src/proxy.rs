//! The request path shared by both inbound routes: peek, check the caller,
//! route with retries/fallbacks, then either pass the body through (client
//! format == provider format) or translate through the canonical types.
//! Spend is recorded when the answer (or the stream) ends.

use crate::Inner;
use crate::canonical::{ChatRequest, StreamEvent, Usage};
use crate::error::{GatewayError, ProviderError, WireFormat};
use crate::formats::{self, anthropic as an, openai as oa};
use crate::keys::{Caller, SpendRecord};
use crate::limits::{ParallelGuard, RateStatus};
use crate::params;
use crate::pricing::Price;
use crate::providers::{self, ByteStream, CallOpts, EventStream, RawResponse};
use crate::routing::InFlight;
use crate::sse::{self, Scanned, SseSplitter};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// Records usage and releases the in-flight slot when dropped (end of answer or stream).
pub(crate) struct SpendGuard {
    inner: Arc<Inner>,
    caller: Caller,
    flight: InFlight,
    price: Price,
    upstream: String,
    start_ms: i64,
    pub usage: Usage,
    /// Only answered calls are recorded (a failed attempt is not a request).
    armed: bool,
    /// The request's `max_parallel_requests` slot, held until the answer ends.
    _parallel: Option<Arc<ParallelGuard>>,
}

impl SpendGuard {
    pub(crate) fn new(
        inner: Arc<Inner>,
        caller: Caller,
        flight: InFlight,
        price: Price,
        upstream: &str,
        parallel: Option<Arc<ParallelGuard>>,
    ) -> Self {
        Self {
            inner,
            caller,
            flight,
            price,
            upstream: upstream.to_owned(),
            start_ms: chrono::Utc::now().timestamp_millis(),
            usage: Usage::default(),
            armed: false,
            _parallel: parallel,
        }
    }

    /// Cost of the usage so far.
    pub(crate) fn cost(&self) -> f64 {
        self.price.cost(self.usage)
    }

    /// The upstream answered: record this call when the guard drops.
    pub(crate) fn arm(&mut self) {
        self.armed = true;
    }
}

impl Drop for SpendGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let d = self.flight.deployment();
        d.add_tokens(self.usage.input_tokens + self.usage.output_tokens);
        let cost = self.price.cost(self.usage);
        let (team_id, user_id) = match &self.caller {
            Caller::Key(k) => (k.row.team_id.clone(), k.row.user_id.clone()),
            _ => (None, None),
        };
        let took = chrono::Utc::now().timestamp_millis() - self.start_ms;
        let took = std::time::Duration::from_millis(u64::try_from(took).unwrap_or(0));
        self.inner
            .metrics
            .record(&d.model_name, self.usage, cost, took);
        self.inner.keys.record(
            &self.caller,
            SpendRecord {
                bucket: self.caller.bucket(),
                model: d.model_name.clone(),
                upstream: std::mem::take(&mut self.upstream),
                usage: self.usage,
                cost,
                start_ms: self.start_ms,
                end_ms: chrono::Utc::now().timestamp_millis(),
                team_id,
                user_id,
            },
        );
    }
}

pub(crate) fn json_response(body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    // Room for what an answer gets (cost, rate limits, the upstream's `llm_provider-*`):
    // one allocation instead of a few regrowths.
    r.headers_mut().reserve(16);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn sse_response<S>(s: S) -> Response
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut r = Response::new(Body::from_stream(s));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

fn decode_canonical(format: WireFormat, body: &[u8]) -> Result<ChatRequest, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match format {
        WireFormat::OpenAi => oa::decode_request(&v),
        WireFormat::Anthropic => an::decode_request(&v),
    }
    .map_err(|e| e.to_string())
}

/// Handle one inbound chat request in `format`; errors come back in the same format.
pub(crate) async fn handle(
    inner: &Arc<Inner>,
    format: WireFormat,
    caller: Caller,
    body: Bytes,
    beta: Option<&str>,
) -> Response {
    match handle_inner(inner, format, caller, body, beta).await {
        Ok(r) => r,
        Err(e) => {
            inner.metrics.error(&e);
            e.into_response_for(format)
        }
    }
}

async fn handle_inner(
    inner: &Arc<Inner>,
    format: WireFormat,
    caller: Caller,
    body: Bytes,
    beta: Option<&str>,
) -> Result<Response, GatewayError> {
    let peek = formats::peek(&body).map_err(GatewayError::BadRequest)?;
    caller.check(&peek.model)?;
    let (rate, parallel) = inner.keys.admit(&caller)?;
    let parallel = parallel.map(Arc::new);
    let mut resp = route(inner, format, &caller, &body, beta, &peek, parallel).await?;
    set_rate_headers(resp.headers_mut(), rate);
    Ok(resp)
}

// Header names built once: inserting by `&'static str` re-parses and validates the
// name on every request (~1 k instructions each, measured with callgrind).
static RL_LIMIT_REQUESTS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-limit-requests");
static RL_REMAINING_REQUESTS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining-requests");
static RL_LIMIT_TOKENS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-limit-tokens");
static RL_REMAINING_TOKENS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining-tokens");
static RL_RESET_REQUESTS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-reset-requests");
static RESPONSE_COST: http::HeaderName = http::HeaderName::from_static("x-litellm-response-cost");

/// LiteLLM's `x-ratelimit-*` response headers for a key with rpm/tpm limits.
///
/// Every value is written into one buffer and each header value is a slice of it: one
/// allocation for all five instead of a `String` plus a copy per number (callgrind: ~4.7k
/// instructions a request before, the largest single item of the gateway's own code).
pub(crate) fn set_rate_headers(h: &mut http::HeaderMap, rate: Option<RateStatus>) {
    let Some(r) = rate else { return };
    let numbers = [
        (&RL_LIMIT_REQUESTS, r.rpm_limit),
        (&RL_REMAINING_REQUESTS, r.remaining_requests),
        (&RL_LIMIT_TOKENS, r.tpm_limit),
        (&RL_REMAINING_TOKENS, r.remaining_tokens),
        (&RL_RESET_REQUESTS, Some(r.reset_secs)),
    ];
    let mut buf = bytes::BytesMut::with_capacity(numbers.len() * 21);
    let mut ends = [0usize; 5];
    let mut digits = itoa::Buffer::new();
    for (i, (_, v)) in numbers.iter().enumerate() {
        if let Some(v) = v {
            buf.extend_from_slice(digits.format(*v).as_bytes());
            if i == numbers.len() - 1 {
                buf.extend_from_slice(b"s"); // `reset` is a duration: "42s"
            }
        }
        ends[i] = buf.len();
    }
    let all = buf.freeze();
    let mut start = 0;
    for ((name, v), end) in numbers.iter().zip(ends) {
        if v.is_some()
            && let Ok(value) = http::HeaderValue::from_maybe_shared(all.slice(start..end))
        {
            h.insert((*name).clone(), value);
        }
        start = end;
    }
}

/// The rate-limit headers OpenAI-style upstreams send, which LiteLLM returns as they are.
const UPSTREAM_RATE_HEADERS: &[&str] = &[
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
];

/// The upstream's response headers as LiteLLM passes them on: every one again as
/// `llm_provider-<name>`, and OpenAI's `x-ratelimit-*` also under their own names
/// (a key's own limits, set afterwards, take precedence). Framing headers and
/// cookies describe the upstream connection, not this response, and stay behind.
pub(crate) fn set_upstream_headers(out: &mut http::HeaderMap, upstream: Option<&http::HeaderMap>) {
    let Some(up) = upstream else { return };
    for (k, v) in up {
        if matches!(
            *k,
            http::header::CONTENT_LENGTH
                | http::header::TRANSFER_ENCODING
                | http::header::CONNECTION
                | http::header::CONTENT_ENCODING
                | http::header::SET_COOKIE
                | http::header::CONTENT_TYPE
        ) {
            continue;
        }
        if UPSTREAM_RATE_HEADERS.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
        if let Some(n) = provider_header_name(k) {
            out.append(n, v.clone());
        }
    }
}

/// How many `llm_provider-<name>` names each thread keeps built.
const PROVIDER_NAMES_KEPT: usize = 64;

thread_local! {
    /// `llm_provider-<name>` for the upstream header names seen on this thread. An upstream
    /// sends the same few names on every answer; building each anew (format, validate,
    /// allocate) cost a few hundred instructions a header. Bounded: names past the first
    /// [`PROVIDER_NAMES_KEPT`] are built every time.
    static PROVIDER_NAMES: std::cell::RefCell<Vec<(http::HeaderName, http::HeaderName)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn provider_header_name(upstream: &http::HeaderName) -> Option<http::HeaderName> {
    PROVIDER_NAMES.with_borrow_mut(|kept| {
        if let Some((_, n)) = kept.iter().find(|(u, _)| u == upstream) {
            return Some(n.clone());
        }
        let mut name = String::with_capacity(13 + upstream.as_str().len());
        name.push_str("llm_provider-");
        name.push_str(upstream.as_str());
        let n = http::HeaderName::from_bytes(name.as_bytes()).ok()?;
        if kept.len() < PROVIDER_NAMES_KEPT {
            kept.push((upstream.clone(), n.clone()));
        }
        Some(n)
    })
}

/// `x-litellm-response-cost` (USD) for an answer whose usage is known.
pub(crate) fn set_cost_header(h: &mut http::HeaderMap, cost: f64) {
    use std::fmt::Write as _;
    // Written straight into the bytes the header keeps (no String, no copy).
    let mut buf = bytes::BytesMut::with_capacity(24);
    if write!(buf, "{cost}").is_ok()
        && let Ok(v) = http::HeaderValue::from_maybe_shared(buf.freeze())
    {
        h.insert(RESPONSE_COST.clone(), v);
    }
}

#[allow(clippy::too_many_arguments)]
async fn route(
    inner: &Arc<Inner>,
    format: WireFormat,
    caller: &Caller,
    body: &Bytes,
    beta: Option<&str>,
    peek: &formats::Peeked,
    parallel: Option<Arc<ParallelGuard>>,
) -> Result<Response, GatewayError> {
    let canon: OnceLock<Result<ChatRequest, String>> = OnceLock::new();
    let (canon, parallel) = (&canon, &parallel);
    inner
        .router
        .execute_with(
            &peek.model,
            peek.fallbacks.as_deref(),
            move |flight, group| async move {
                let dep = flight.deployment().clone();
                let upstream = dep.upstream_for(&peek.model, &group.name).into_owned();
                let price = dep.price_for(&upstream);
                caller
                    .check_priced(&upstream, &price)
                    .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
                let opts = CallOpts {
                    model: &upstream,
                    timeout: dep.timeout,
                    idle_timeout: dep.idle_timeout,
                    anthropic_beta: beta,
                };
                let mut guard = SpendGuard::new(
                    inner.clone(),
                    caller.clone(),
                    flight,
                    price,
                    &upstream,
                    parallel.clone(),
                );
                if dep.provider.wire_format() == Some(format) {
                    // Pass-through: the body goes as is, apart from the model name
                    // (and LiteLLM-only fields, which the upstream would reject).
                    let out = formats::rewrite(body, peek, &upstream, format == WireFormat::OpenAi)
                        .map(Bytes::from)
                        .unwrap_or_else(|| body.clone());
                    let openai = format == WireFormat::OpenAi;
                    let out = match peek.litellm_fields || (openai && peek.metadata) {
                        true => formats::strip_litellm_fields(&out, openai)
                            .map(Bytes::from)
                            .unwrap_or(out),
                        false => out,
                    };
                    let policy = params::DropPolicy::new(
                        dep.drop_params,
                        &dep.additional_drop_params,
                        peek.drop_params,
                    );
                    let out = match params::passthrough_drops(
                        dep.family,
                        &upstream,
                        peek.temperature,
                        policy,
                        &peek.additional_drop_params,
                    )? {
                        Some(fields) => params::remove_fields(&out, &fields)
                            .map(Bytes::from)
                            .unwrap_or(out),
                        None => out,
                    };
                    let (raw, up_headers) =
                        providers::capturing_headers(dep.provider.forward(out, peek.stream, opts))
                            .await;
                    let mut resp = match raw? {
                        RawResponse::Full(bytes) => {
                            guard.arm();
                            guard.usage = sse::usage_from_body(format, &bytes);
                            let mut r = json_response(bytes);
                            set_cost_header(r.headers_mut(), guard.cost());
                            r
                        }
                        RawResponse::Stream(s) => pass_through_response(
                            inner,
                            s,
                            format,
                            format == WireFormat::OpenAi && !peek.include_usage,
                            guard,
                        ),
                    };
                    set_upstream_headers(resp.headers_mut(), up_headers.as_ref());
                    Ok(resp)
                } else {
                    let req = canon
                        .get_or_init(|| decode_canonical(format, body))
                        .as_ref()
                        .map_err(|e| ProviderError::InvalidRequest(e.clone()))?;
                    let policy = params::DropPolicy::new(
                        dep.drop_params,
                        &dep.additional_drop_params,
                        req.drop_params,
                    );
                    let prepared = params::prepare(req, dep.family, &upstream, policy)?;
                    let req = prepared.req.as_ref();
                    if peek.stream {
                        let (events, up_headers) =
                            providers::capturing_headers(dep.provider.stream(req, opts)).await;
                        let mut events = events?;
                        if prepared.json_mode {
                            events = params::json_mode_stream(events);
                        }
                        let encoder = match format {
                            WireFormat::OpenAi => Encoder::OpenAi(oa::StreamEncoder::new(
                                &peek.model,
                                peek.include_usage,
                            )),
                            WireFormat::Anthropic => {
                                Encoder::Anthropic(an::StreamEncoder::new(&peek.model))
                            }
                        };
                        let mut resp = sse_response(Translate {
                            inner: Some(events),
                            encoder,
                            guard: {
                                guard.arm();
                                guard
                            },
                            cost_in_usage: inner.cost_in_stream_usage,
                        });
                        set_upstream_headers(resp.headers_mut(), up_headers.as_ref());
                        Ok(resp)
                    } else {
                        let (r, up_headers) =
                            providers::capturing_headers(dep.provider.complete(req, opts)).await;
                        let mut r = r?;
                        if prepared.json_mode {
                            r = params::json_mode_response(r);
                        }
                        guard.arm();
                        guard.usage = r.usage;
                        let v = match format {
                            WireFormat::OpenAi => oa::encode_response(&r, &peek.model),
                            WireFormat::Anthropic => an::encode_response(&r, &peek.model),
                        };
                        let bytes = serde_json::to_vec(&v)
                            .map_err(|e| ProviderError::Protocol(e.to_string()))?;
                        let mut r = json_response(Bytes::from(bytes));
                        set_cost_header(r.headers_mut(), guard.cost());
                        set_upstream_headers(r.headers_mut(), up_headers.as_ref());
                        Ok(r)
                    }
                }
            },
        )
        .await
}

/// An armed pass-through stream as an SSE response (for the other endpoints,
/// e.g. `/v1/completions`): spend is recorded when it ends.
pub(crate) fn pass_through_response(
    inner: &Inner,
    s: ByteStream,
    format: WireFormat,
    drop_usage_only: bool,
    mut guard: SpendGuard,
) -> Response {
    guard.arm();
    sse_response(PassThrough::new(
        s,
        format,
        drop_usage_only,
        inner.cost_in_stream_usage,
        guard,
    ))
}

/// A pass-through stream: forwards upstream chunks untouched (zero-copy) while
/// scanning the events that can carry usage. When the gateway itself asked an
/// OpenAI upstream for usage, the extra usage-only chunk is cut out again; the
/// usage event the client does get carries the answer's `cost` (LiteLLM's
/// `include_cost_in_streaming_usage`: an OpenAI chunk's `usage`, Anthropic's
/// `message_delta`), since a stream's headers left before the cost was known.
struct PassThrough {
    inner: Option<ByteStream>,
    format: WireFormat,
    splitter: SseSplitter,
    drop_usage_only: bool,
    cost_in_usage: bool,
    guard: SpendGuard,
}

impl PassThrough {
    fn new(
        s: ByteStream,
        format: WireFormat,
        drop_usage_only: bool,
        cost_in_usage: bool,
        guard: SpendGuard,
    ) -> Self {
        PassThrough {
            inner: Some(s),
            format,
            splitter: SseSplitter::default(),
            drop_usage_only,
            cost_in_usage,
            guard,
        }
    }

    /// What to send instead of this event: None = the event as is, Some(None) =
    /// nothing, Some(Some(bytes)) = a rewritten event. Updates the usage either way.
    fn rewrite(
        format: WireFormat,
        drop_usage_only: bool,
        cost_in_usage: bool,
        guard: &mut SpendGuard,
        ev: &[u8],
    ) -> Option<Option<Vec<u8>>> {
        match sse::scan_usage(format, ev, &mut guard.usage) {
            Scanned::UsageOnly if drop_usage_only => Some(None),
            Scanned::Usage | Scanned::UsageOnly if cost_in_usage => {
                sse::with_cost(ev, guard.cost()).map(Some)
            }
            _ => None,
        }
    }

    /// Event-aligned forwarding: only complete events leave (an event may be
    /// rewritten, so none may leave half-sent); still zero-copy when nothing in
    /// the chunk changes and no earlier partial event is held.
    fn aligned(&mut self, chunk: Bytes) -> Bytes {
        let (format, drop_uo, cost) = (self.format, self.drop_usage_only, self.cost_in_usage);
        let guard = &mut self.guard;
        if self.splitter.pending_len() == 0 {
            let base = chunk.as_ptr() as usize;
            let mut out: Option<Vec<u8>> = None;
            let mut last = 0;
            self.splitter.push(&chunk, |ev| {
                if let Some(rep) = Self::rewrite(format, drop_uo, cost, guard, ev) {
                    let start = ev.as_ptr() as usize - base;
                    let o = out.get_or_insert_with(|| Vec::with_capacity(chunk.len() + 32));
                    o.extend_from_slice(&chunk[last..start]);
                    if let Some(r) = rep {
                        o.extend_from_slice(&r);
                    }
                    last = start + ev.len();
                }
            });
            let end = chunk.len() - self.splitter.pending_len();
            match out {
                None => chunk.slice(..end),
                Some(mut o) => {
                    o.extend_from_slice(&chunk[last..end]);
                    Bytes::from(o)
                }
            }
        } else {
            let mut out = Vec::with_capacity(self.splitter.pending_len() + chunk.len());
            self.splitter.push(&chunk, |ev| {
                match Self::rewrite(format, drop_uo, cost, guard, ev) {
                    None => out.extend_from_slice(ev),
                    Some(Some(r)) => out.extend_from_slice(&r),
                    Some(None) => {}
                }
            });
            Bytes::from(out)
        }
    }

    /// The stream ended: an unterminated last event still goes out (and counts).
    fn tail(&mut self) -> Bytes {
        let (format, drop_uo, cost) = (self.format, self.drop_usage_only, self.cost_in_usage);
        let guard = &mut self.guard;
        let mut out = Vec::new();
        self.splitter
            .finish(|ev| match Self::rewrite(format, drop_uo, cost, guard, ev) {
                None => out.extend_from_slice(ev),
                Some(Some(r)) => out.extend_from_slice(&r),
                Some(None) => {}
            });
        Bytes::from(out)
    }
}

impl Stream for PassThrough {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let aligned = this.drop_usage_only || this.cost_in_usage;
        loop {
            let Some(s) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match s.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.inner = None;
                    if aligned {
                        let t = this.tail();
                        if !t.is_empty() {
                            return Poll::Ready(Some(Ok(t)));
                        }
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.inner = None;
                    return Poll::Ready(Some(Ok(error_frame(this.format, e))));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    if !aligned {
                        let (format, usage) = (this.format, &mut this.guard.usage);
                        this.splitter.push(&chunk, |ev| {
                            sse::scan_usage(format, ev, usage);
                        });
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    let out = this.aligned(chunk);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
            }
        }
    }
}

fn error_frame(format: WireFormat, e: ProviderError) -> Bytes {
    let err = GatewayError::Provider(e);
    let mut out = Vec::new();
    match format {
        WireFormat::OpenAi => oa::StreamEncoder::new("", false).error(&err, &mut out),
        WireFormat::Anthropic => an::StreamEncoder::new("").error(&err, &mut out),
    }
    Bytes::from(out)
}

enum Encoder {
    OpenAi(oa::StreamEncoder),
    Anthropic(an::StreamEncoder),
}

impl Encoder {
    fn push(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        match self {
            Encoder::OpenAi(e) => e.push(ev, out),
            Encoder::Anthropic(e) => e.push(ev, out),
        }
    }
    fn error(&self, err: &GatewayError, out: &mut Vec<u8>) {
        match self {
            Encoder::OpenAi(e) => e.error(err, out),
            Encoder::Anthropic(e) => e.error(err, out),
        }
    }
}

/// A translating stream: provider events -> canonical -> the client's SSE format.
struct Translate {
    inner: Option<EventStream>,
    encoder: Encoder,
    guard: SpendGuard,
    /// `include_cost_in_streaming_usage`: the usage event carries `cost`.
    cost_in_usage: bool,
}

impl Stream for Translate {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(s) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let mut out = Vec::new();
        // Drain what is ready into one chunk.
        loop {
            match s.as_mut().poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    this.inner = None;
                    break;
                }
                Poll::Ready(Some(Ok(ev))) => {
                    if let StreamEvent::Finish { usage, .. } = &ev {
                        this.guard.usage = *usage;
                        if this.cost_in_usage {
                            let cost = Some(this.guard.cost());
                            match &mut this.encoder {
                                Encoder::OpenAi(e) => e.cost = cost,
                                Encoder::Anthropic(e) => e.cost = cost,
                            }
                        }
                    }
                    if let StreamEvent::Start { input_tokens, .. } = &ev {
                        this.guard.usage.input_tokens = *input_tokens;
                    }
                    this.encoder.push(&ev, &mut out);
                    if out.len() > 16 * 1024 {
                        break;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.encoder.error(&GatewayError::Provider(e), &mut out);
                    this.inner = None;
                    break;
                }
            }
        }
        if out.is_empty() {
            if this.inner.is_none() {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        } else {
            Poll::Ready(Some(Ok(Bytes::from(out))))
        }
    }
}

/// Canonical stream wrapper for the in-process API: records spend at the end.
pub(crate) struct Recorded {
    pub(crate) inner: EventStream,
    pub(crate) guard: SpendGuard,
}

impl Stream for Recorded {
    type Item = Result<StreamEvent, ProviderError>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let r = this.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(ev))) = &r {
            match ev {
                StreamEvent::Start { input_tokens, .. } => {
                    this.guard.usage.input_tokens = *input_tokens
                }
                StreamEvent::Finish { usage, .. } => this.guard.usage = *usage,
                _ => {}
            }
        }
        r
    }
}
