//! OTLP protobuf, written by hand: a batch of `SpanData` straight into the bytes of an
//! `ExportTraceServiceRequest` (opentelemetry-proto's `collector/trace/v1`, `trace/v1`,
//! `common/v1`, `resource/v1`), in one buffer the exporter reuses.
//!
//! Why not `opentelemetry-otlp` (prost): it first converts every span into prost structs (a
//! `String` per attribute key and value, a `Vec` per id, a hash of the scope to group by it),
//! then walks them twice (sizes, then bytes). That was ~11k instructions per gateway span and
//! ~21k per vault span on the export thread, most of tracing's cost (callgrind,
//! bench/telemetry/callgrind.sh). Here each field is copied once from the `SpanData`.
//!
//! Nested lengths without a second pass or buffer: a message's length prefix is reserved
//! (a width guessed from the message's usual size) before its fields are written, and filled
//! in afterwards; a wrong guess moves the message's bytes once. Lengths are always minimal
//! varints, so the bytes are the ones prost writes (fields in tag order, as prost writes them), which the tests
//! check against `opentelemetry-proto`'s own conversion.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

use crate::hot::{AttrValue, Record};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags` (trace.proto): whether the span's parent is known to be remote or local, and
/// whether it is remote; the low byte holds the W3C trace flags.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

#[inline]
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
fn varint_len(v: u64) -> usize {
    // Most lengths and tags: one byte, without the bit count (~0.3k instructions a vault
    // span's encoding, callgrind).
    if v < 0x80 {
        return 1;
    }
    // 1 byte per 7 bits.
    (64 - v.leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn tag(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from((field << 3) | wire));
}

#[inline]
fn bytes_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A proto3 string: the empty string is the default and is not written.
#[inline]
fn string_field(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        bytes_field(buf, field, s.as_bytes());
    }
}

#[inline]
fn uint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, VARINT);
        varint(buf, v);
    }
}

#[inline]
fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

#[inline]
fn fixed32_field(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// An open length-delimited field: where its contents start and how many bytes were
/// reserved for its length.
#[derive(Clone, Copy)]
struct Open {
    start: usize,
    width: usize,
}

/// Starts a nested message, reserving `width` bytes for its length (a guess: 1 below 128
/// bytes, 2 below 16 KiB, 3 below 2 MiB).
#[inline]
fn open(buf: &mut Vec<u8>, field: u32, width: usize) -> Open {
    tag(buf, field, LEN);
    buf.resize(buf.len() + width, 0);
    Open {
        start: buf.len(),
        width,
    }
}

/// Ends a nested message: writes its length as a minimal varint, moving the contents when
/// the reserved width was not the right one.
#[inline]
fn close(buf: &mut Vec<u8>, open: Open) {
    let len = buf.len() - open.start;
    if len < 0x80 && open.width == 1 {
        // Most messages (attributes, values): one byte, as reserved.
        buf[open.start - 1] = len as u8;
        return;
    }
    let need = varint_len(len as u64);
    let at = open.start - open.width;
    if need != open.width {
        let to = at + need;
        if need > open.width {
            buf.resize(buf.len() + need - open.width, 0);
        }
        buf.copy_within(open.start..open.start + len, to);
        buf.truncate(to + len);
    }
    let mut v = len as u64;
    for b in &mut buf[at..at + need] {
        *b = (v as u8 & 0x7f) | if v >= 0x80 { 0x80 } else { 0 };
        v >>= 7;
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `SpanFlags` as opentelemetry-proto's transform sets them.
fn flags(trace_flags: u8, is_remote: bool) -> u32 {
    let remote = if is_remote { CONTEXT_IS_REMOTE } else { 0 };
    u32::from(trace_flags) | CONTEXT_HAS_IS_REMOTE | remote
}

/// The W3C `tracestate` header form (`k=v,k2=v2`), written without building the string.
fn trace_state_field(buf: &mut Vec<u8>, field: u32, state: &TraceState) {
    let mut len = 0;
    let mut n = 0;
    for (k, v) in state {
        len += k.len() + 1 + v.len();
        n += 1;
    }
    if n == 0 {
        return;
    }
    len += n - 1;
    tag(buf, field, LEN);
    varint(buf, len as u64);
    let mut first = true;
    for (k, v) in state {
        if !first {
            buf.push(b',');
        }
        first = false;
        buf.extend_from_slice(k.as_bytes());
        buf.push(b'=');
        buf.extend_from_slice(v.as_bytes());
    }
}

// AnyValue (common.proto): a oneof, so even a default value (false, 0, "") is written.

#[inline]
fn any_str(buf: &mut Vec<u8>, field: u32, s: &str) {
    let o = open(buf, field, 1);
    bytes_field(buf, 1, s.as_bytes());
    close(buf, o);
}

#[inline]
fn any_bool(buf: &mut Vec<u8>, field: u32, b: bool) {
    tag(buf, field, LEN);
    buf.extend_from_slice(&[2, (2 << 3) | VARINT as u8, u8::from(b)]);
}

#[inline]
fn any_i64(buf: &mut Vec<u8>, field: u32, i: i64) {
    let o = open(buf, field, 1);
    tag(buf, 3, VARINT);
    varint(buf, i as u64);
    close(buf, o);
}

fn any_f64(buf: &mut Vec<u8>, field: u32, f: f64) {
    tag(buf, field, LEN);
    buf.extend_from_slice(&[9, (4 << 3) | FIXED64 as u8]);
    buf.extend_from_slice(&f.to_bits().to_le_bytes());
}

fn any_value(buf: &mut Vec<u8>, field: u32, value: &Value) {
    match value {
        Value::String(s) => any_str(buf, field, s.as_str()),
        Value::Bool(b) => any_bool(buf, field, *b),
        Value::I64(i) => any_i64(buf, field, *i),
        Value::F64(f) => any_f64(buf, field, *f),
        Value::Array(array) => {
            let any = open(buf, field, 1);
            let arr = open(buf, 5, 1);
            match array {
                Array::Bool(v) => v.iter().for_each(|b| any_bool(buf, 1, *b)),
                Array::I64(v) => v.iter().for_each(|i| any_i64(buf, 1, *i)),
                Array::F64(v) => v.iter().for_each(|f| any_f64(buf, 1, *f)),
                Array::String(v) => v.iter().for_each(|s| any_str(buf, 1, s.as_str())),
                // `Array` is non-exhaustive; 0.33 has no other kind.
                _ => {}
            }
            close(buf, arr);
            close(buf, any);
        }
        // `Value` is non-exhaustive; 0.33 has no other kind: an empty AnyValue.
        _ => bytes_field(buf, field, &[]),
    }
}

fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let o = open(buf, field, 1);
    string_field(buf, 1, key);
    any_value(buf, 2, value);
    close(buf, o);
}

/// Bytes of a length-delimited field (tag, length, contents) of `len` content bytes, for a
/// field number below 16.
#[inline]
fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// A hot span's attribute (`crate::hot`): the same `KeyValue` message (field 9 of a `Span`)
/// as [`key_value`], its lengths computed up front. When they are all below 128 (every
/// attribute the gateway and the vault set, unless a value is long), each run of tags and
/// lengths is one fixed-size copy instead of a `Vec::push` (a capacity check and a length
/// store) per byte: ~2.1k instructions per 9-attribute span before (callgrind).
#[inline]
fn hot_key_value(buf: &mut Vec<u8>, key: &str, value: &AttrValue) {
    // AnyValue: a string (1), a bool (2) or an int (3).
    let text = value.as_bytes().unwrap_or_default();
    let any_len = match value {
        AttrValue::I64(i) => 1 + varint_len(*i as u64),
        AttrValue::Bool(_) => 2,
        _ => len_field_size(text.len()),
    };
    let key_len = if key.is_empty() {
        0
    } else {
        len_field_size(key.len())
    };
    let kv_len = key_len + len_field_size(any_len);
    const KV: u8 = (9 << 3) | LEN as u8;
    const KEY: u8 = (1 << 3) | LEN as u8;
    const ANY: u8 = (2 << 3) | LEN as u8;
    if kv_len < 0x80 {
        // So is every length inside it: one byte each.
        if key.is_empty() {
            buf.extend_from_slice(&[KV, kv_len as u8]);
        } else {
            buf.extend_from_slice(&[KV, kv_len as u8, KEY, key.len() as u8]);
            buf.extend_from_slice(key.as_bytes());
        }
        match value {
            AttrValue::I64(i) => {
                buf.extend_from_slice(&[ANY, any_len as u8, (3 << 3) | VARINT as u8]);
                varint(buf, *i as u64);
            }
            AttrValue::Bool(b) => {
                buf.extend_from_slice(&[ANY, 2, (2 << 3) | VARINT as u8, u8::from(*b)]);
            }
            _ => {
                buf.extend_from_slice(&[
                    ANY,
                    any_len as u8,
                    (1 << 3) | LEN as u8,
                    text.len() as u8,
                ]);
                buf.extend_from_slice(text);
            }
        }
        return;
    }
    buf.reserve(kv_len + 6);
    tag(buf, 9, LEN);
    varint(buf, kv_len as u64);
    string_field(buf, 1, key);
    tag(buf, 2, LEN);
    varint(buf, any_len as u64);
    match value {
        AttrValue::I64(i) => {
            tag(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        AttrValue::Bool(b) => buf.extend_from_slice(&[(2 << 3) | VARINT as u8, u8::from(*b)]),
        _ => bytes_field(buf, 1, text),
    }
}

fn attributes<'a>(buf: &mut Vec<u8>, field: u32, kvs: impl IntoIterator<Item = &'a KeyValue>) {
    for kv in kvs {
        key_value(buf, field, kv.key.as_str(), &kv.value);
    }
}

/// The `resource` field (1) of a `ResourceSpans`; the same for every batch, so the exporter
/// encodes it once.
pub(crate) fn resource_field(resource: &Resource) -> Vec<u8> {
    let mut buf = Vec::new();
    let o = open(&mut buf, 1, 2);
    for (k, v) in resource.iter() {
        key_value(&mut buf, 1, k.as_str(), v);
    }
    close(&mut buf, o);
    buf
}

/// The encoded `resource` field and the resource's schema URL, before `set_resource`: an
/// empty resource, as opentelemetry-otlp sent.
#[derive(Debug, Clone)]
pub(crate) struct EncodedResource {
    field: Vec<u8>,
    schema_url: Option<String>,
}

impl Default for EncodedResource {
    fn default() -> Self {
        Self {
            field: vec![(1 << 3) | LEN as u8, 0],
            schema_url: None,
        }
    }
}

impl EncodedResource {
    pub(crate) fn new(resource: &Resource) -> Self {
        Self {
            field: resource_field(resource),
            schema_url: resource.schema_url().map(str::to_owned),
        }
    }
}

/// Whether two spans share their instrumentation scope. `InstrumentationScope`'s `==` sorts
/// copies of both attribute lists; spans of one tracer have equal lists in the same order.
fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    if std::ptr::eq(a, b) {
        return true;
    }
    if a.name() != b.name() || a.version() != b.version() || a.schema_url() != b.schema_url() {
        return false;
    }
    a.attributes().eq(b.attributes()) || a == b
}

fn link_field(buf: &mut Vec<u8>, link: &opentelemetry::trace::Link) {
    let o = open(buf, 13, 1);
    ids(buf, &link.span_context);
    attributes(buf, 4, &link.attributes);
    uint_field(buf, 5, u64::from(link.dropped_attributes_count));
    fixed32_field(
        buf,
        6,
        flags(
            link.span_context.trace_flags().to_u8(),
            link.span_context.is_remote(),
        ),
    );
    close(buf, o);
}

/// trace_id (1), span_id (2), trace_state (3): the same fields in a span and a link.
fn ids(buf: &mut Vec<u8>, sc: &SpanContext) {
    bytes_field(buf, 1, &sc.trace_id().to_bytes());
    bytes_field(buf, 2, &sc.span_id().to_bytes());
    trace_state_field(buf, 3, sc.trace_state());
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// The fields of a `Span` message before its attributes and after its links.
struct SpanHead<'a> {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    trace_state: Option<&'a TraceState>,
    /// `None`: a root.
    parent_span_id: Option<[u8; 8]>,
    name: &'a str,
    kind: u64,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
    status: &'a Status,
    flags: u32,
}

/// A `Span` message (field 2 of a `ScopeSpans`): `head`'s fields, and fields 9 to 14
/// (attributes, events, links and their dropped counts) written by `body`.
fn span_field(buf: &mut Vec<u8>, head: &SpanHead<'_>, body: impl FnOnce(&mut Vec<u8>)) {
    let o = open(buf, 2, 2);
    bytes_field(buf, 1, &head.trace_id);
    bytes_field(buf, 2, &head.span_id);
    if let Some(state) = head.trace_state {
        trace_state_field(buf, 3, state);
    }
    if let Some(parent) = &head.parent_span_id {
        bytes_field(buf, 4, parent);
    }
    string_field(buf, 5, head.name);
    uint_field(buf, 6, head.kind);
    fixed64_field(buf, 7, head.start_unix_nanos);
    fixed64_field(buf, 8, head.end_unix_nanos);
    body(buf);
    // Always present (opentelemetry-proto's transform sets it for every span).
    let s = open(buf, 15, 1);
    let code = match head.status {
        Status::Unset => 0,
        Status::Ok => 1,
        Status::Error { description } => {
            string_field(buf, 2, description);
            2
        }
    };
    uint_field(buf, 3, code);
    close(buf, s);
    fixed32_field(buf, 16, head.flags);
    close(buf, o);
}

/// A span the encoder writes: the SDK's `SpanData` or a hot span's record.
pub(crate) trait EncodeSpan {
    fn scope(&self) -> &InstrumentationScope;
    /// Appends the span's `Span` message (field 2 of a `ScopeSpans`).
    fn encode(&self, buf: &mut Vec<u8>);
}

impl<S: EncodeSpan> EncodeSpan for Box<S> {
    fn scope(&self) -> &InstrumentationScope {
        (**self).scope()
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        (**self).encode(buf);
    }
}

impl EncodeSpan for SpanData {
    fn scope(&self) -> &InstrumentationScope {
        &self.instrumentation_scope
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        let span = self;
        let sc = &span.span_context;
        let head = SpanHead {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            trace_state: Some(sc.trace_state()),
            parent_span_id: (span.parent_span_id != SpanId::INVALID)
                .then(|| span.parent_span_id.to_bytes()),
            name: &span.name,
            kind: span_kind(&span.span_kind),
            start_unix_nanos: nanos(span.start_time),
            end_unix_nanos: nanos(span.end_time),
            status: &span.status,
            flags: flags(sc.trace_flags().to_u8(), span.parent_span_is_remote),
        };
        span_field(buf, &head, |buf| {
            attributes(buf, 9, &span.attributes);
            uint_field(buf, 10, u64::from(span.dropped_attributes_count));
            for event in span.events.iter() {
                let e = open(buf, 11, 1);
                fixed64_field(buf, 1, nanos(event.timestamp));
                string_field(buf, 2, &event.name);
                attributes(buf, 3, &event.attributes);
                uint_field(buf, 4, u64::from(event.dropped_attributes_count));
                close(buf, e);
            }
            uint_field(buf, 12, u64::from(span.events.dropped_count));
            for link in span.links.iter() {
                link_field(buf, link);
            }
            uint_field(buf, 14, u64::from(span.links.dropped_count));
        });
    }
}

/// The scope of every hot span: the tracer's, `airlock` (no version, schema or attributes).
pub(crate) static HOT_SCOPE: LazyLock<InstrumentationScope> =
    LazyLock::new(|| InstrumentationScope::builder(crate::SCOPE).build());

impl EncodeSpan for Record {
    fn scope(&self) -> &InstrumentationScope {
        &HOT_SCOPE
    }

    /// The fields [`span_field`] writes for a span with these ids, times, attributes and
    /// dropped count (no trace state, events or links; status unset; kind internal;
    /// sampled), in the same order and bytes, with runs of fixed-size fields copied at once
    /// (see [`hot_key_value`]).
    fn encode(&self, buf: &mut Vec<u8>) {
        // A span is usually 128 bytes to 16 KiB long: two bytes for its length.
        let o = open(buf, 2, 2);
        let mut ids = [0; 28];
        ids[..2].copy_from_slice(&[(1 << 3) | LEN as u8, 16]);
        ids[2..18].copy_from_slice(&self.trace_id.to_be_bytes());
        ids[18..20].copy_from_slice(&[(2 << 3) | LEN as u8, 8]);
        ids[20..].copy_from_slice(&self.span_id.to_be_bytes());
        buf.extend_from_slice(&ids);
        if self.parent_span_id != 0 {
            let mut parent = [(4 << 3) | LEN as u8, 8, 0, 0, 0, 0, 0, 0, 0, 0];
            parent[2..].copy_from_slice(&self.parent_span_id.to_be_bytes());
            buf.extend_from_slice(&parent);
        }
        string_field(buf, 5, self.name);
        let kind = span_kind(&SpanKind::Internal) as u8;
        if self.start_unix_nanos != 0 && self.end_unix_nanos != 0 {
            let mut times = [0; 20];
            times[..3].copy_from_slice(&[(6 << 3) | VARINT as u8, kind, (7 << 3) | FIXED64 as u8]);
            times[3..11].copy_from_slice(&self.start_unix_nanos.to_le_bytes());
            times[11] = (8 << 3) | FIXED64 as u8;
            times[12..].copy_from_slice(&self.end_unix_nanos.to_le_bytes());
            buf.extend_from_slice(&times);
        } else {
            uint_field(buf, 6, u64::from(kind));
            fixed64_field(buf, 7, self.start_unix_nanos);
            fixed64_field(buf, 8, self.end_unix_nanos);
        }
        for (key, value) in self.attributes() {
            hot_key_value(buf, key, value);
        }
        uint_field(buf, 10, u64::from(self.dropped_attributes));
        // Status (15): unset, an empty message. Flags (16): fixed32, never 0 (it has
        // CONTEXT_HAS_IS_REMOTE); its tag (16 << 3) | FIXED32 = 133 is the varint 0x85 0x01.
        let flags = flags(TraceFlags::SAMPLED.to_u8(), self.parent_is_remote);
        let mut tail = [(15 << 3) | LEN as u8, 0, 0x85, 0x01, 0, 0, 0, 0];
        tail[4..].copy_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(&tail);
        close(buf, o);
    }
}

fn scope_field(buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    let o = open(buf, 1, 1);
    string_field(buf, 1, scope.name());
    string_field(buf, 2, scope.version().unwrap_or_default());
    attributes(buf, 3, scope.attributes());
    close(buf, o);
}

/// Appends the `ExportTraceServiceRequest` for `spans` to `buf`: one `ResourceSpans`, one
/// `ScopeSpans` per instrumentation scope in order of first appearance, spans in batch order
/// (what opentelemetry-proto's `group_spans_by_resource_and_scope` builds).
pub(crate) fn encode_request<S: EncodeSpan>(
    buf: &mut Vec<u8>,
    resource: &EncodedResource,
    spans: &[S],
) {
    let rs = open(buf, 1, 3);
    buf.extend_from_slice(&resource.field);
    // The first span of each scope written so far. Usually every span has the one scope
    // ("airlock"): one pass, one comparison per span.
    let mut firsts: Vec<usize> = Vec::new();
    let mut current = (!spans.is_empty()).then_some(0);
    while let Some(first) = current {
        firsts.push(first);
        let scope = spans[first].scope();
        let ss = open(buf, 2, 3);
        scope_field(buf, scope);
        let mut next = None;
        for (i, span) in spans.iter().enumerate().skip(first) {
            if i == first || same_scope(span.scope(), scope) {
                span.encode(buf);
            } else if next.is_none()
                && !firsts
                    .iter()
                    .any(|&f| same_scope(spans[f].scope(), span.scope()))
            {
                // Every span before `first` is in a scope already written, so this is the
                // first span of the next one.
                next = Some(i);
            }
        }
        string_field(buf, 3, scope.schema_url().unwrap_or_default());
        close(buf, ss);
        current = next;
    }
    string_field(buf, 3, resource.schema_url.as_deref().unwrap_or_default());
    close(buf, rs);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, TraceFlags, TraceId};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    fn every_kind_of_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("str", "text"),
            KeyValue::new("empty", ""),
            KeyValue::new("yes", true),
            KeyValue::new("no", false),
            KeyValue::new("int", 42_i64),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("negative", -7_i64),
            KeyValue::new("min", i64::MIN),
            KeyValue::new("double", 1.5),
            KeyValue::new("negative_double", -0.25),
            KeyValue::new("long", "x".repeat(300)),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2, i64::MAX]))),
            KeyValue::new("doubles", Value::Array(Array::F64(vec![0.5, -1e300, 0.0]))),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec!["a".into(), "".into(), "ü".into()])),
            ),
            KeyValue::new("no_ints", Value::Array(Array::I64(vec![]))),
        ]
    }

    fn context(
        trace: u128,
        span: u64,
        flags: TraceFlags,
        remote: bool,
        state: &str,
    ) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            flags,
            remote,
            state.parse().unwrap(),
        )
    }

    /// A finished span of `scope`, root, sampled, 1.5 ms long.
    pub(crate) fn span(name: &'static str, scope: &InstrumentationScope) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_764_900_000_123_456_789);
        SpanData {
            span_context: context(
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x1234,
                TraceFlags::SAMPLED,
                false,
                "",
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: start,
            end_time: start + Duration::from_micros(1500),
            attributes: vec![],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_schema_url(
                [
                    KeyValue::new("service.name", "airlock-test"),
                    KeyValue::new("host.cores", 2_i64),
                ],
                "https://opentelemetry.io/schemas/1.30.0",
            )
            .build()
    }

    /// Our bytes and opentelemetry-proto's conversion (what opentelemetry-otlp sent) must be
    /// the same message, and the same bytes as prost writes.
    fn assert_same_as_reference(
        spans: &[SpanData],
        resource: &Resource,
    ) -> ExportTraceServiceRequest {
        let mut ours = Vec::new();
        encode_request(&mut ours, &EncodedResource::new(resource), spans);
        let reference = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans.to_vec(),
                &ResourceAttributesWithSchema::from(resource),
            ),
        };
        let decoded = ExportTraceServiceRequest::decode(&ours[..]).expect("our bytes decode");
        assert_eq!(decoded, reference);
        assert!(
            ours == reference.encode_to_vec(),
            "same message, other bytes"
        );
        decoded
    }

    #[test]
    fn every_field_matches_opentelemetry_proto() {
        let airlock = InstrumentationScope::builder("airlock").build();
        let library = InstrumentationScope::builder("library")
            .with_version("1.2.3")
            .with_schema_url("https://example.com/schema")
            .with_attributes([KeyValue::new("scope.attr", 7_i64)])
            .build();
        let airlock_v2 = InstrumentationScope::builder("airlock")
            .with_version("2")
            .build();

        let mut server = span("gateway.request", &airlock);
        server.span_context = context(
            0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            0xb7ad_6b71_6920_3331,
            TraceFlags::SAMPLED,
            false,
            "vendor=abc,other=x-y",
        );
        server.parent_span_id = SpanId::from(0x00f0_67aa_0ba9_02b7);
        server.parent_span_is_remote = true;
        server.span_kind = SpanKind::Server;
        server.attributes = every_kind_of_value();
        server.dropped_attributes_count = 3;
        server.events.events = vec![
            Event::new(
                "retry",
                UNIX_EPOCH + Duration::from_secs(1_764_900_001),
                every_kind_of_value(),
                0,
            ),
            Event::new("dropped", UNIX_EPOCH + Duration::from_nanos(5), vec![], 4),
        ];
        server.events.dropped_count = 1;
        server.links.links = vec![
            Link::new(
                context(7, 8, TraceFlags::SAMPLED, true, "k=v"),
                vec![KeyValue::new("link.kind", "follows")],
                2,
            ),
            Link::new(
                context(9, 10, TraceFlags::NOT_SAMPLED, false, ""),
                vec![],
                0,
            ),
        ];
        server.links.dropped_count = 5;
        server.status = Status::error("upstream failed");

        let mut client = span("library.call", &library);
        client.span_kind = SpanKind::Client;
        client.status = Status::Ok;
        client.attributes = vec![KeyValue::new("n", 1_i64)];

        let mut child = span("", &airlock);
        child.parent_span_id = SpanId::from(0x1234);
        child.span_kind = SpanKind::Producer;
        child.status = Status::error("");

        let mut other = span("consumer", &airlock_v2);
        other.span_kind = SpanKind::Consumer;
        other.span_context = context(1, 2, TraceFlags::NOT_SAMPLED, false, "");

        let mut late = span("late", &library);
        late.start_time = UNIX_EPOCH;

        let spans = [server, client, child, other, late];
        let decoded = assert_same_as_reference(&spans, &resource());

        // What the reference check stands on: three scopes in order of first appearance,
        // the remote parent's flags, the trace state.
        let scopes = &decoded.resource_spans[0].scope_spans;
        let names: Vec<_> = scopes
            .iter()
            .map(|s| (s.scope.as_ref().unwrap().name.as_str(), s.spans.len()))
            .collect();
        assert_eq!(names, [("airlock", 2), ("library", 2), ("airlock", 1)]);
        let server = &scopes[0].spans[0];
        assert_eq!(server.flags, 0x301);
        assert_eq!(scopes[0].spans[1].flags, 0x101);
        assert_eq!(server.trace_state, "vendor=abc,other=x-y");
        assert_eq!(server.attributes.len(), every_kind_of_value().len());
    }

    #[test]
    fn lengths_of_every_width_and_empty_batches() {
        let airlock = InstrumentationScope::builder("airlock").build();
        // Values around each varint width boundary of the nested lengths, up to a request
        // over 2 MiB (more than the 3 bytes reserved for the ResourceSpans length).
        for n in [0, 100, 127, 128, 16_000, 16_383, 16_384, 2_100_000] {
            let mut s = span("sized", &airlock);
            s.attributes = vec![KeyValue::new("v", "y".repeat(n))];
            assert_same_as_reference(&[s], &resource());
        }
        assert_same_as_reference(&[], &resource());
        assert_same_as_reference(
            &[span("no resource", &airlock)],
            &Resource::builder_empty().build(),
        );
        // Before `set_resource`: an empty resource, as opentelemetry-otlp sent.
        let mut ours = Vec::new();
        encode_request(
            &mut ours,
            &EncodedResource::default(),
            &[span("x", &airlock)],
        );
        let decoded = ExportTraceServiceRequest::decode(&ours[..]).unwrap();
        assert_eq!(decoded.resource_spans[0].resource, Some(Default::default()));
    }

    #[test]
    fn varint_lengths() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
            assert_eq!(prost::encoding::decode_varint(&mut &buf[..]).unwrap(), v);
        }
    }

    /// The `SpanData` the SDK made of a hot span (for the reference conversion).
    fn as_span_data(r: &Record) -> SpanData {
        let mut s = span(r.name, &HOT_SCOPE);
        s.span_context = context(r.trace_id, r.span_id, TraceFlags::SAMPLED, false, "");
        s.parent_span_id = SpanId::from(r.parent_span_id);
        s.parent_span_is_remote = r.parent_is_remote;
        s.start_time = UNIX_EPOCH + Duration::from_nanos(r.start_unix_nanos);
        s.end_time = UNIX_EPOCH + Duration::from_nanos(r.end_unix_nanos);
        s.dropped_attributes_count = r.dropped_attributes;
        s.attributes = r
            .attributes()
            .iter()
            .map(|(k, v)| match v {
                AttrValue::I64(i) => KeyValue::new(*k, *i),
                AttrValue::Bool(b) => KeyValue::new(*k, *b),
                other => KeyValue::new(*k, other.as_str().unwrap().to_owned()),
            })
            .collect();
        s
    }

    #[test]
    fn a_hot_span_encodes_as_the_sdk_span_would() {
        use crate::hot::tests::{finish, start};
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let request = start("gateway.request", Some(tp))
            .with("http.request.method", "POST")
            .with("http.route", AttrValue::text("/v1/chat/completions"))
            .with("http.response.status_code", 200_i64)
            .with("ok", true)
            .with("empty", "")
            .with("long", AttrValue::text(&"z".repeat(200)))
            // A `KeyValue` of 127 bytes (the last with one-byte lengths) and of 128.
            .with("edge", AttrValue::text(&"y".repeat(117)))
            .with("egde", AttrValue::text(&"y".repeat(118)));
        let mut egress = start("vault.egress", Some(tp));
        for key in [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m",
        ] {
            egress.set(key, -1_i64);
        }
        let records = [
            finish(request).unwrap(),
            finish(egress).unwrap(),
            finish(start("root", None)).unwrap(),
        ];
        assert_eq!(records[1].dropped_attributes, 1);
        let resource = resource();
        let mut ours = Vec::new();
        encode_request(&mut ours, &EncodedResource::new(&resource), &records);
        let as_sdk: Vec<SpanData> = records.iter().map(|r| as_span_data(r)).collect();
        let reference = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                as_sdk.clone(),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(
            ExportTraceServiceRequest::decode(&ours[..]).unwrap(),
            reference
        );
        assert!(
            ours == reference.encode_to_vec(),
            "same message, other bytes"
        );
        // And the same bytes as the SDK's spans through this encoder.
        let mut sdk = Vec::new();
        encode_request(&mut sdk, &EncodedResource::new(&resource), &as_sdk);
        assert_eq!(ours, sdk);

        let spans = &reference.resource_spans[0].scope_spans[0];
        assert_eq!(spans.scope.as_ref().unwrap().name, "airlock");
        let [request, egress, root] = &spans.spans[..] else {
            panic!("three spans")
        };
        assert_eq!(
            request.trace_id,
            0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c_u128.to_be_bytes()
        );
        assert_eq!(
            request.parent_span_id,
            0xb7ad_6b71_6920_3331_u64.to_be_bytes()
        );
        assert_eq!((request.flags, root.flags), (0x301, 0x101));
        assert_eq!(request.attributes.len(), 8);
        assert_eq!(egress.dropped_attributes_count, 1);
        assert!(root.parent_span_id.is_empty());
    }

    /// A `vault.egress` span as the proxy emits it (9 attributes), or a `gateway.request` (3).
    fn bench_span(i: u64, vault: bool, scope: &InstrumentationScope) -> SpanData {
        let mut s = span(
            if vault {
                "vault.egress"
            } else {
                "gateway.request"
            },
            scope,
        );
        s.span_context = context(
            (u128::from(i) << 64) | 0x77,
            i + 1,
            TraceFlags::SAMPLED,
            false,
            "",
        );
        s.parent_span_id = SpanId::from(0x00f0_67aa_0ba9_02b7);
        s.parent_span_is_remote = true;
        s.attributes = if vault {
            vec![
                KeyValue::new("sandbox.id", format!("sbx-{i:016x}")),
                KeyValue::new("server.address", "api.github.com".to_owned()),
                KeyValue::new("server.port", 443_i64),
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("airlock.egress.event", "swap"),
                KeyValue::new("airlock.egress.decision", "allow"),
                KeyValue::new("airlock.egress.reason", "stub_swapped_for_bound_host"),
                KeyValue::new("airlock.credential", "github_token".to_owned()),
                KeyValue::new("http.response.status_code", 200_i64),
            ]
        } else {
            vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", "/v1/chat/completions"),
                KeyValue::new("http.response.status_code", 200_i64),
            ]
        };
        s
    }

    /// Export-thread encoding cost, for callgrind (release):
    /// `OTLP_BENCH=ours|prost|none OTLP_BENCH_SPAN=vault|gateway valgrind --tool=callgrind
    /// <test binary> --ignored --exact otlp::tests::encoding_cost`; (variant − none) / spans
    /// is the cost per span. Each round clones a batch of 2048 spans (the batch the SDK hands
    /// over) and drops it after encoding, in every variant.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn encoding_cost() {
        const SPANS: u64 = 2048;
        const ROUNDS: u64 = 10;
        let vault = std::env::var("OTLP_BENCH_SPAN").as_deref() != Ok("gateway");
        let scope = InstrumentationScope::builder("airlock").build();
        let spans: Vec<SpanData> = (0..SPANS).map(|i| bench_span(i, vault, &scope)).collect();
        let resource = Resource::builder()
            .with_service_name("airlock-vault-proxy")
            .build();
        let encoded = EncodedResource::new(&resource);
        let with_schema = ResourceAttributesWithSchema::from(&resource);
        let variant = std::env::var("OTLP_BENCH").unwrap_or_default();
        let mut buf = Vec::new();
        let mut bytes = 0;
        for _ in 0..ROUNDS {
            let batch = spans.clone();
            match variant.as_str() {
                "ours" => {
                    buf.clear();
                    encode_request(&mut buf, &encoded, &batch);
                    bytes += std::hint::black_box(&buf).len();
                    drop(batch);
                }
                "prost" => {
                    let request = ExportTraceServiceRequest {
                        resource_spans: group_spans_by_resource_and_scope(batch, &with_schema),
                    };
                    bytes += std::hint::black_box(request.encode_to_vec()).len();
                }
                _ => drop(std::hint::black_box(batch)),
            }
        }
        eprintln!("{variant}: {bytes} bytes for {} spans", SPANS * ROUNDS);
    }
}
