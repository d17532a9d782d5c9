//! Spans on per-request hot paths (the gateway's HTTP request, the vault's egress decision):
//! compact records that never touch the OpenTelemetry SDK, queued for the export runtime,
//! which encodes them with the same OTLP encoder (`crate::otlp`) and sends them to the same
//! endpoint with the same resource, scope (`airlock`), batching, timeout, retries and gzip.
//!
//! Why not the SDK: through `tracing` + `tracing-opentelemetry` one span per request cost the
//! gateway 21k instructions (94.6k a request without tracing; callgrind,
//! bench/telemetry/callgrind.sh); straight on the SDK tracer it still cost ~7k per gateway span
//! and ~10k per vault span (with 9 attributes) beyond the encoding: `SpanBuilder`, a `Context`
//! and its `Arc`s, the sampler's and id generator's virtual calls (ChaCha ids), `SpanData`'s
//! `Vec`s of attributes, events and links, a `String` per owned value, the batch
//! processor's channel, and freeing it all on the export thread. That was 9% of the gateway's
//! and 17% of the vault's instructions per request; the budget is 5%.
//!
//! A [`HotSpan`] is one fixed-size value: ids, parent, start/end (Unix ns), a `&'static str`
//! name and up to [`MAX_ATTRIBUTES`] attributes (`&'static str` keys; an integer, a bool, a
//! static string or a copy kept inline when short). Ids come from a per-thread wyrand seeded
//! from the OS (`RandomState`'s keys); parenting follows the W3C `traceparent` and the sampler
//! the SDK would use (`OTEL_TRACES_SAMPLER`/`_ARG`, read once by [`install`]). On end the record
//! is moved into a bounded queue under a mutex held for one push: when the queue is full it is
//! dropped and counted (a warning says how many), never waited for, never grown. With tracing
//! off, [`HotSpan::start`] is one relaxed load: no clock read, no allocation.
//!
//! Spans that nest under `tracing` spans (the brain's session, model and tool calls;
//! `gateway.chat`) keep using the layer and the SDK.
//!
//! Log lines: [`HotSpan::scope`] runs a future with the span's trace id in a task-local, and
//! JSON lines written inside it start with that `trace_id`, as they would inside an entered
//! `tracing` span (one swap of a thread-local per poll).

use std::cell::Cell;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TraceId;

use crate::trace_context::TraceParent;

/// Attributes a hot span keeps; more are counted as dropped (as the SDK's span limits do).
pub const MAX_ATTRIBUTES: usize = 12;
/// Bytes of a string value kept inside the record; a longer one is one allocation.
const INLINE: usize = 30;

/// Records queued at most (the batch processor's queue size for the SDK's spans).
pub(crate) const MAX_QUEUE: usize = 8192;
/// A queue this long wakes the exporter before its next tick.
pub(crate) const WAKE_AT: usize = 2048;

tokio::task_local! {
    static LOG_TRACE_ID: TraceId;
}

/// The value of a hot span's attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    I64(i64),
    Bool(bool),
    /// A string known at compile time: nothing copied.
    Static(&'static str),
    /// A copy of a short string, inside the record (no allocation).
    Inline(InlineStr),
    /// A copy of a longer one.
    Owned(Box<str>),
}

impl AttrValue {
    /// A copy of `s` (inline when it is at most 30 bytes).
    pub fn text(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Self::Inline(InlineStr {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Self::Owned(s.into())
        }
    }

    /// The string of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Static(s) => Some(s),
            // Copied from a `&str` whole: UTF-8 (checked again rather than trusted unsafely).
            Self::Inline(s) => std::str::from_utf8(&s.bytes[..s.len as usize]).ok(),
            Self::Owned(s) => Some(s),
            Self::I64(_) | Self::Bool(_) => None,
        }
    }

    /// The bytes of a string value, for the encoder: [`Self::as_str`] without checking an
    /// inline copy's UTF-8 again (it was a `&str`; the check cost ~0.3k instructions a vault
    /// span, callgrind).
    pub(crate) fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Static(s) => Some(s.as_bytes()),
            Self::Inline(s) => Some(&s.bytes[..s.len as usize]),
            Self::Owned(s) => Some(s.as_bytes()),
            Self::I64(_) | Self::Bool(_) => None,
        }
    }
}

/// At most 30 bytes of a string, made only by [`AttrValue::text`].
#[derive(Debug, Clone, PartialEq)]
pub struct InlineStr {
    len: u8,
    bytes: [u8; INLINE],
}

impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        Self::I64(v)
    }
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

impl From<&'static str> for AttrValue {
    fn from(v: &'static str) -> Self {
        Self::Static(v)
    }
}

/// A finished (or running) hot span, as it is queued and encoded.
#[derive(Debug)]
pub(crate) struct Record {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0: a root.
    pub parent_span_id: u64,
    pub parent_is_remote: bool,
    pub name: &'static str,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    len: u8,
    pub dropped_attributes: u32,
    attributes: [(&'static str, AttrValue); MAX_ATTRIBUTES],
}

impl Record {
    /// No span yet: what a spare box holds.
    const EMPTY: Record = Record {
        trace_id: 0,
        span_id: 0,
        parent_span_id: 0,
        parent_is_remote: false,
        name: "",
        start_unix_nanos: 0,
        end_unix_nanos: 0,
        len: 0,
        dropped_attributes: 0,
        attributes: [const { ("", AttrValue::Bool(false)) }; MAX_ATTRIBUTES],
    };

    pub(crate) fn attributes(&self) -> &[(&'static str, AttrValue)] {
        &self.attributes[..self.len as usize]
    }

    /// Ready for another span: the attributes' owned strings freed (the slots past `len` are
    /// never read; a slot is overwritten when set).
    fn clear(&mut self) {
        for (_, value) in &mut self.attributes[..self.len as usize] {
            if matches!(value, AttrValue::Owned(_)) {
                *value = AttrValue::Bool(false);
            }
        }
        self.len = 0;
        self.dropped_attributes = 0;
    }

    fn set(&mut self, key: &'static str, value: AttrValue) {
        let len = self.len as usize;
        if let Some(slot) = self.attributes[..len].iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.add(key, value);
        }
    }

    /// Appends an attribute whose key is not set yet.
    #[inline]
    fn add(&mut self, key: &'static str, value: AttrValue) {
        debug_assert!(
            self.attributes().iter().all(|(k, _)| *k != key),
            "{key} added twice"
        );
        let len = self.len as usize;
        if len < MAX_ATTRIBUTES {
            self.attributes[len] = (key, value);
            self.len += 1;
        } else {
            self.dropped_attributes += 1;
        }
    }
}

/// Which spans are recorded: the SDK's samplers, as `OTEL_TRACES_SAMPLER` chooses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sampler {
    /// A span with a parent follows the parent's sampled flag.
    parent_based: bool,
    /// Spans without a parent (or all, when not parent-based): a ratio of trace ids (1.0 =
    /// all, 0.0 = none), decided as the SDK's `TraceIdRatioBased`.
    ratio: f64,
}

impl Sampler {
    const DEFAULT: Self = Self {
        parent_based: true,
        ratio: 1.0,
    };

    /// `OTEL_TRACES_SAMPLER` and `_ARG` as `opentelemetry_sdk`'s `Config` reads them (it warns
    /// about the values it does not take, and falls back to the same default).
    pub(crate) fn from_env(sampler: Option<&str>, arg: Option<&str>) -> Self {
        let ratio = || arg.and_then(|r| r.parse::<f64>().ok()).unwrap_or(1.0);
        match sampler {
            Some("always_on") => Self {
                parent_based: false,
                ratio: 1.0,
            },
            Some("always_off") => Self {
                parent_based: false,
                ratio: 0.0,
            },
            Some("traceidratio") => Self {
                parent_based: false,
                ratio: ratio(),
            },
            Some("parentbased_always_off") => Self {
                parent_based: true,
                ratio: 0.0,
            },
            Some("parentbased_traceidratio") => Self {
                parent_based: true,
                ratio: ratio(),
            },
            _ => Self::DEFAULT,
        }
    }

    fn sample(&self, parent: Option<&TraceParent>, trace_id: u128) -> bool {
        match parent {
            Some(p) if self.parent_based => p.sampled,
            _ if self.ratio >= 1.0 => true,
            // The SDK's `sample_based_on_probability`.
            _ => {
                let bound = (self.ratio.max(0.0) * (1u64 << 63) as f64) as u64;
                ((trace_id as u64) >> 1) < bound
            }
        }
    }
}

static SAMPLER: OnceLock<Sampler> = OnceLock::new();

/// Exported records kept for new spans at most (~650 bytes each).
const MAX_SPARE: usize = WAKE_AT;
/// Boxes made for new spans when the exporter starts (~0.65 MB): the spares fill only as
/// spans are exported, so without these every span of the first export periods after
/// start-up would still allocate.
pub(crate) const PREFILL: usize = MAX_SPARE / 2;

/// The spans ended and not yet taken by the exporter.
pub(crate) struct Queue {
    /// Boxed: a record is ~650 bytes, boxed when the span starts and then moved as a pointer
    /// (measured: the copies cost more than one allocation and its free).
    #[allow(clippy::vec_box)]
    records: Mutex<Vec<Box<Record>>>,
    /// Boxes of exported records, which new spans take instead of allocating: a box was a
    /// `malloc` on the request's thread and a `free` on the export thread (another thread's
    /// arena), ~0.6k instructions a vault span (callgrind); a pop under an uncontended lock is
    /// a few dozen.
    #[allow(clippy::vec_box)]
    spare: Mutex<Vec<Box<Record>>>,
    capacity: usize,
    dropped: AtomicU64,
    wake: tokio::sync::Notify,
}

impl Queue {
    pub(crate) const fn new(capacity: usize) -> Self {
        Self {
            records: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            capacity,
            dropped: AtomicU64::new(0),
            wake: tokio::sync::Notify::const_new(),
        }
    }

    /// Queues `record`, or drops and counts it when the queue is full.
    pub(crate) fn push(&self, record: Box<Record>) {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if records.len() >= self.capacity {
            drop(records);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        records.push(record);
        let wake = records.len() == WAKE_AT.min(self.capacity);
        drop(records);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Moves every queued record into `into` (empty; its allocation becomes the queue's).
    #[allow(clippy::vec_box)] // the queue's own type
    pub(crate) fn take(&self, into: &mut Vec<Box<Record>>) {
        debug_assert!(into.is_empty());
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *records, into);
    }

    /// A box for a new span's record: an exported one when there is one.
    fn spare(&self) -> Option<Box<Record>> {
        self.spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Adds `n` new boxes to the spares (up to [`MAX_SPARE`]).
    pub(crate) fn prefill(&self, n: usize) {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        let n = n.min(MAX_SPARE.saturating_sub(spare.len()));
        spare.extend((0..n).map(|_| Box::new(Record::EMPTY)));
    }

    /// Keeps the boxes of exported `records` (up to [`MAX_SPARE`]) for new spans and frees
    /// the rest; `records` is left empty.
    #[allow(clippy::vec_box)] // the queue's own type
    pub(crate) fn recycle(&self, records: &mut Vec<Box<Record>>) {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = MAX_SPARE.saturating_sub(spare.len()).min(records.len());
        spare.extend(records.drain(..keep).map(|mut r| {
            r.clear();
            r
        }));
        drop(spare);
        records.clear();
    }

    /// Records dropped because the queue was full, since the last call.
    pub(crate) fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Resolves when the queue reached [`WAKE_AT`] records.
    pub(crate) async fn filled(&self) {
        self.wake.notified().await;
    }
}

/// The process's queue of hot spans, drained by the exporter `crate::export` starts.
pub(crate) static QUEUE: Queue = Queue::new(MAX_QUEUE);

/// Called by `init` before tracing is turned on: the sampler, as the SDK's tracer reads it.
pub(crate) fn install() {
    let _ = SAMPLER.set(Sampler::from_env(
        std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
        std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().as_deref(),
    ));
}

thread_local! {
    /// wyrand's state; 0 until seeded.
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A random u64 (wyrand): trace and span ids, which must be unique, not secret.
fn random() -> u64 {
    RNG.with(|state| {
        let mut s = state.get();
        if s == 0 {
            // `RandomState`'s keys come from the OS once per thread, and differ per call.
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(now_unix_nanos());
            s = h.finish() | 1;
        }
        s = s.wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

fn nonzero_random() -> u64 {
    loop {
        let v = random();
        if v != 0 {
            return v;
        }
    }
}

fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A started span; it ends (and is queued for export) when dropped.
pub struct HotSpan {
    trace_id: u128,
    /// `None` when the sampler drops the span (its trace id still goes on log lines) and once
    /// it has ended.
    record: Option<Box<Record>>,
    /// Ends when it starts (a decision is a moment): one clock read.
    instant: bool,
}

impl HotSpan {
    /// Starts `name`, a child of the remote span named by `traceparent` (a W3C header value)
    /// or a root when there is none or it is malformed. `None` when tracing is off: then
    /// nothing is read or allocated.
    pub fn start(name: &'static str, traceparent: Option<&str>) -> Option<Self> {
        if !crate::tracing_enabled() {
            return None;
        }
        Self::start_under(name, traceparent.and_then(TraceParent::parse).as_ref())
    }

    /// [`Self::start`] with the parent already parsed (a caller that starts many spans under
    /// one `traceparent` parses it once).
    pub fn start_under(name: &'static str, parent: Option<&TraceParent>) -> Option<Self> {
        if !crate::tracing_enabled() {
            return None;
        }
        let sampler = SAMPLER.get().copied().unwrap_or(Sampler::DEFAULT);
        Some(Self::start_with(&sampler, name, parent, &QUEUE))
    }

    /// Starts a span; its record's box comes from `spares` when it has one.
    fn start_with(
        sampler: &Sampler,
        name: &'static str,
        parent: Option<&TraceParent>,
        spares: &Queue,
    ) -> Self {
        let trace_id = match parent {
            Some(p) => p.trace_id,
            None => (u128::from(nonzero_random()) << 64) | u128::from(random()),
        };
        let record = sampler.sample(parent, trace_id).then(|| {
            let start = now_unix_nanos();
            let span_id = nonzero_random();
            let parent_span_id = parent.map_or(0, |p| p.span_id);
            // Only remote parents are parsed here (a `traceparent` comes from elsewhere).
            let parent_is_remote = parent.is_some();
            match spares.spare() {
                Some(mut r) => {
                    // Cleared when it was put back: only the span's own fields to set.
                    r.trace_id = trace_id;
                    r.span_id = span_id;
                    r.parent_span_id = parent_span_id;
                    r.parent_is_remote = parent_is_remote;
                    r.name = name;
                    r.start_unix_nanos = start;
                    r.end_unix_nanos = start;
                    r
                }
                None => Box::new(Record {
                    trace_id,
                    span_id,
                    parent_span_id,
                    parent_is_remote,
                    name,
                    start_unix_nanos: start,
                    end_unix_nanos: start,
                    ..Record::EMPTY
                }),
            }
        });
        Self {
            trace_id,
            record,
            instant: false,
        }
    }

    /// Sets (or replaces) an attribute, e.g. the response status once it is known.
    pub fn set(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        if let Some(record) = &mut self.record {
            record.set(key, value.into());
        }
    }

    /// [`Self::set`] for a key not set on this span yet, without looking through the keys set
    /// so far (a caller setting a fixed list of distinct keys: the look-ups were ~0.25k
    /// instructions a 9-attribute vault span, callgrind). A key added twice would be exported
    /// twice (debug builds panic).
    pub fn add(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        if let Some(record) = &mut self.record {
            record.add(key, value.into());
        }
    }

    /// [`Self::set`], for chaining.
    pub fn with(mut self, key: &'static str, value: impl Into<AttrValue>) -> Self {
        self.set(key, value);
        self
    }

    /// Ends the span now, at its start (no second clock read).
    pub fn end_at_start(mut self) {
        self.instant = true;
    }

    /// The span's trace id (32 lower-case hex digits).
    pub fn trace_id(&self) -> String {
        TraceId::from(self.trace_id).to_string()
    }

    /// Runs `fut` with this span's trace id on the JSON log lines written while it is polled.
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        LOG_TRACE_ID.scope(TraceId::from(self.trace_id), fut)
    }

    /// Ends the span into `queue` (what `Drop` does with [`QUEUE`]).
    fn end(&mut self, queue: &Queue) {
        if let Some(mut record) = self.record.take() {
            if !self.instant {
                record.end_unix_nanos = now_unix_nanos();
            }
            queue.push(record);
        }
    }
}

impl Drop for HotSpan {
    fn drop(&mut self) {
        self.end(&QUEUE);
    }
}

/// The trace id of the [`HotSpan::scope`] being polled on this thread, if any.
pub(crate) fn scoped_trace_id() -> Option<String> {
    LOG_TRACE_ID.try_with(|t| t.to_string()).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(tp: &str) -> Option<TraceParent> {
        TraceParent::parse(tp)
    }

    /// Ends `span` into a queue of its own and returns its record.
    pub(crate) fn finish(mut span: HotSpan) -> Option<Box<Record>> {
        let queue = Queue::new(4);
        span.end(&queue);
        let mut out = Vec::new();
        queue.take(&mut out);
        out.pop()
    }

    pub(crate) fn start(name: &'static str, traceparent: Option<&str>) -> HotSpan {
        HotSpan::start_with(
            &Sampler::DEFAULT,
            name,
            traceparent.and_then(parse).as_ref(),
            &QUEUE,
        )
    }

    #[test]
    fn a_hot_span_keeps_its_remote_parent_and_attributes() {
        let mut span = start("gateway.request", Some(TRACEPARENT))
            .with("http.route", "/v1/chat/completions")
            .with("http.request.method", AttrValue::text("PROPFIND"));
        assert_eq!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seen = rt.block_on(span.scope(async { scoped_trace_id() }));
        assert_eq!(seen.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(scoped_trace_id(), None, "only while the scope is polled");
        span.set("http.response.status_code", 200_i64);
        span.set("http.response.status_code", 404_i64);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let request = finish(span).unwrap();
        assert_eq!(request.name, "gateway.request");
        assert_eq!(request.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(request.parent_span_id, 0x00f067aa0ba902b7);
        assert!(request.parent_is_remote);
        assert_ne!(request.span_id, 0);
        assert_ne!(request.span_id, request.parent_span_id);
        assert!(request.end_unix_nanos >= request.start_unix_nanos + 2_000_000);
        let now = now_unix_nanos();
        assert!(request.start_unix_nanos > now - 60_000_000_000 && request.start_unix_nanos < now);
        assert_eq!(
            request.attributes(),
            [
                ("http.route", AttrValue::Static("/v1/chat/completions")),
                ("http.request.method", AttrValue::text("PROPFIND")),
                // Replaced, not repeated.
                ("http.response.status_code", AttrValue::I64(404)),
            ]
        );

        // A root when there is no parent or it is malformed: a trace of its own.
        let a = finish(start("vault.egress", None)).unwrap();
        let b = finish(start(
            "vault.egress",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        ))
        .unwrap();
        assert_eq!((a.parent_span_id, b.parent_span_id), (0, 0));
        assert!(!a.parent_is_remote);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.trace_id, request.trace_id);
        assert_ne!(a.trace_id >> 64, 0);
    }

    #[test]
    fn an_instant_span_ends_when_it_starts() {
        let queue = Queue::new(4);
        let mut span = start("vault.egress", Some(TRACEPARENT));
        span.instant = true;
        std::thread::sleep(std::time::Duration::from_millis(2));
        span.end(&queue);
        let mut out = Vec::new();
        queue.take(&mut out);
        assert_eq!(out[0].start_unix_nanos, out[0].end_unix_nanos);
        // Ended once: the drop after `end` queues nothing.
        drop(span);
        let mut again = Vec::new();
        queue.take(&mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn sampling_follows_the_parent_and_the_env() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let on = Sampler::from_env(None, None);
        assert_eq!(on, Sampler::DEFAULT);
        let span = HotSpan::start_with(&on, "x", parse(unsampled).as_ref(), &QUEUE);
        // Not exported, but its log lines still carry the caller's trace id.
        assert_eq!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(finish(span).is_none());
        assert!(finish(HotSpan::start_with(&on, "x", None, &QUEUE)).is_some());

        let always = Sampler::from_env(Some("always_on"), None);
        assert!(
            finish(HotSpan::start_with(
                &always,
                "x",
                parse(unsampled).as_ref(),
                &QUEUE
            ))
            .is_some()
        );
        let off = Sampler::from_env(Some("parentbased_always_off"), None);
        assert!(finish(HotSpan::start_with(&off, "x", None, &QUEUE)).is_none());
        assert!(
            finish(HotSpan::start_with(
                &off,
                "x",
                parse(TRACEPARENT).as_ref(),
                &QUEUE
            ))
            .is_some()
        );
        assert!(
            finish(HotSpan::start_with(
                &Sampler::from_env(Some("always_off"), None),
                "x",
                parse(TRACEPARENT).as_ref(),
                &QUEUE
            ))
            .is_none()
        );
        // A ratio: about that share of root traces (the SDK's rule on the low 64 bits).
        let half = Sampler::from_env(Some("traceidratio"), Some("0.5"));
        let kept = (0..2000)
            .filter(|_| finish(HotSpan::start_with(&half, "x", None, &QUEUE)).is_some())
            .count();
        assert!((800..1200).contains(&kept), "{kept}");
        assert!(half.sample(None, 0x3fff_ffff_ffff_ffff));
        assert!(!half.sample(None, 0x8000_0000_0000_0000));
        // A missing or bad argument: all, as the SDK falls back.
        assert_eq!(
            Sampler::from_env(Some("parentbased_traceidratio"), Some("x")),
            Sampler::DEFAULT
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let queue = Queue::new(3);
        for i in 0..5 {
            let span = start("x", None).with("i", i64::from(i));
            let mut span = span;
            span.end(&queue);
        }
        assert_eq!(queue.take_dropped(), 2);
        assert_eq!(queue.take_dropped(), 0, "counted once");
        let mut out = Vec::new();
        queue.take(&mut out);
        let mut seen: Vec<_> = out.iter().map(|r| r.attributes()[0].1.clone()).collect();
        seen.sort_by_key(|v| format!("{v:?}"));
        assert_eq!(seen.len(), 3);
        // Taken: room again, and the taken ones are gone from the queue.
        out.clear();
        start("y", None).end(&queue);
        queue.take(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(queue.take_dropped(), 0);
    }

    #[test]
    fn attributes_beyond_the_limit_are_counted_and_strings_kept() {
        const KEYS: [&str; 14] = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
        ];
        let mut span = start("x", None);
        for k in KEYS {
            span.set(k, true);
        }
        let long = "h".repeat(31);
        span.set("a", AttrValue::text(&long));
        span.set("b", AttrValue::text(&long[..30]));
        let r = finish(span).unwrap();
        assert_eq!(r.attributes().len(), MAX_ATTRIBUTES);
        assert_eq!(r.dropped_attributes, 2);
        assert!(matches!(r.attributes()[0].1, AttrValue::Owned(_)));
        assert!(matches!(r.attributes()[1].1, AttrValue::Inline(_)));
        assert_eq!(r.attributes()[0].1.as_str(), Some(&long[..]));
        assert_eq!(r.attributes()[1].1.as_str(), Some(&long[..30]));
        assert_eq!(AttrValue::text("").as_str(), Some(""));
        assert_eq!(AttrValue::I64(1).as_str(), None);
    }

    #[test]
    fn exported_boxes_are_reused_clean_and_kept_up_to_a_bound() {
        let queue = Queue::new(8);
        let mut span =
            HotSpan::start_with(&Sampler::DEFAULT, "a", parse(TRACEPARENT).as_ref(), &queue);
        for k in [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m",
        ] {
            span.set(k, AttrValue::text(&"long".repeat(10)));
        }
        span.end(&queue);
        let mut out = Vec::new();
        queue.take(&mut out);
        let used: *const Record = &*out[0];
        queue.recycle(&mut out);
        assert!(out.is_empty());

        let r = finish(HotSpan::start_with(&Sampler::DEFAULT, "b", None, &queue).with("k", 1_i64))
            .unwrap();
        assert!(std::ptr::eq(&*r, used), "the exported record's box");
        assert_eq!(r.name, "b");
        assert_eq!((r.parent_span_id, r.parent_is_remote), (0, false));
        assert_ne!(r.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(r.dropped_attributes, 0);
        assert_eq!(r.attributes(), [("k", AttrValue::I64(1))]);
        assert!(queue.spare().is_none(), "taken");

        let mut many: Vec<_> = (0..MAX_SPARE + 3)
            .map(|_| finish(start("x", None)).unwrap())
            .collect();
        queue.recycle(&mut many);
        assert!(many.is_empty());
        assert_eq!(queue.spare.lock().unwrap().len(), MAX_SPARE);
    }

    #[test]
    fn added_attributes_are_appended_and_counted_beyond_the_limit() {
        let mut span = start("x", None);
        for k in [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
        ] {
            span.add(k, 1_i64);
        }
        let r = finish(span).unwrap();
        assert_eq!(r.attributes().len(), MAX_ATTRIBUTES);
        assert_eq!(r.attributes()[11], ("l", AttrValue::I64(1)));
        assert_eq!(r.dropped_attributes, 2);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "added twice")]
    fn adding_a_key_twice_is_a_bug() {
        let mut span = start("x", None);
        span.add("a", 1_i64);
        span.add("a", 2_i64);
    }

    #[test]
    fn ids_are_random_and_nonzero() {
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|_| nonzero_random()).collect();
        assert_eq!(ids.len(), 10_000);
        // Another thread, another seed.
        let there = std::thread::spawn(random).join().unwrap();
        assert!(!ids.contains(&there));
    }

    #[test]
    fn nothing_when_tracing_is_off() {
        assert!(HotSpan::start("x", None).is_none());
    }
}
