//! W3C trace context (`traceparent`) in and out of `tracing` spans.
//!
//! Everything here answers `None` / does nothing when tracing is off: a span then has no
//! OpenTelemetry context.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span's W3C `traceparent` header value (`00-<trace id>-<span id>-<flags>`).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The `traceparent` of the current span.
pub fn current_traceparent() -> Option<String> {
    traceparent(&tracing::Span::current())
}

/// The span's trace id (32 lower-case hex digits).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The current span's trace id.
pub fn current_trace_id() -> Option<String> {
    trace_id(&tracing::Span::current())
}

/// A valid W3C `traceparent`, parsed once: what a span needs of its remote parent and what
/// an audit record writes of it. The vault proxy keeps one with each traced grant, instead of
/// parsing the same header again for every span and every audit record of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// Non-zero.
    pub(crate) trace_id: u128,
    /// Non-zero.
    pub(crate) span_id: u64,
    /// The `sampled` flag (the only trace flag kept, as the SDK's parser keeps it).
    pub(crate) sampled: bool,
    /// The trace id as it stood in the header: 32 lower-case hex digits (ids must be lower
    /// case, so these are the id's canonical text; kept to be written without formatting).
    trace_id_hex: [u8; 32],
}

impl TraceParent {
    /// Parses a `traceparent` value (version 00 layout; later versions are read by the same
    /// prefix, as the spec asks). `None` for anything malformed or all-zero ids. Byte by
    /// byte, without splitting or allocating.
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim().as_bytes();
        // vv-<32 hex>-<16 hex>-ff, then nothing (version 00) or `-…` (a later version).
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = hex_any_case(&v[0..2])?;
        let flags = hex_any_case(&v[53..55])?;
        if version == 0xff {
            return None;
        }
        match v.get(55) {
            None => {}
            Some(b'-') if version != 0 => {}
            Some(_) => return None,
        }
        let trace = (u128::from(hex16(&v[3..19])?) << 64) | u128::from(hex16(&v[19..35])?);
        let span = hex16(&v[36..52])?;
        if trace == 0 || span == 0 {
            return None;
        }
        Some(Self {
            trace_id: trace,
            span_id: span,
            sampled: flags & u32::from(TraceFlags::SAMPLED.to_u8()) != 0,
            trace_id_hex: v[3..35].try_into().ok()?,
        })
    }

    /// The trace id: 32 lower-case hex digits, as ASCII bytes (what a JSON string of it
    /// holds; nothing in it needs escaping).
    pub fn trace_id_hex(&self) -> &[u8; 32] {
        &self.trace_id_hex
    }

    /// The trace id as text.
    pub fn trace_id_str(&self) -> &str {
        // Parsed as hex digits: ASCII, so UTF-8 (checked rather than trusted unsafely).
        std::str::from_utf8(&self.trace_id_hex).unwrap_or_default()
    }

    /// The remote span context, as the SDK's own `traceparent` parser makes it.
    pub(crate) fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.span_id),
            if self.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )
    }
}

/// [`TraceParent::parse`], as a remote span context.
pub(crate) fn parse(value: &str) -> Option<SpanContext> {
    TraceParent::parse(value).map(|tp| tp.span_context())
}

/// `n` copies of byte `b`.
const fn bytes(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// 8 lower-case hex digits as a number, 8 at a time in a u64 (SWAR: no branch or table per
/// digit; a byte-by-byte `match` into a u128 was ~0.7k instructions a `traceparent`, parsed
/// on every traced request and egress decision).
fn hex8(digits: [u8; 8]) -> Option<u32> {
    let x = u64::from_be_bytes(digits);
    const HIGH: u64 = bytes(0x80);
    // Below 0x80 each byte plus up to 0x50 cannot carry into the next one.
    let ge = |c: u8| x.wrapping_add(bytes(0x80 - c)) & HIGH;
    let digit = ge(b'0') & !ge(b'9' + 1);
    let letter = ge(b'a') & !ge(b'f' + 1);
    if x & HIGH != 0 || (digit | letter) != HIGH {
        return None;
    }
    // '0'..'9' → 0..9; 'a'..'f' → 1..6, + 9.
    let mut n = (x & bytes(0x0f)) + (letter >> 7) * 9;
    // One nibble per byte (the first digit in the top byte) → packed.
    n = ((n >> 4) | n) & 0x00ff_00ff_00ff_00ff;
    n = ((n >> 8) | n) & 0x0000_ffff_0000_ffff;
    n = ((n >> 16) | n) & 0x0000_0000_ffff_ffff;
    Some(n as u32)
}

/// 16 lower-case hex digits (ids must be lower case) as a number.
fn hex16(digits: &[u8]) -> Option<u64> {
    let (hi, lo) = digits.split_at(8);
    let hi = hex8(hi.try_into().ok()?)?;
    let lo = hex8(lo.try_into().ok()?)?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Two hex digits of either case (version and flags).
fn hex_any_case(digits: &[u8]) -> Option<u32> {
    let mut eight = *b"00000000";
    eight[6] = digits[0].to_ascii_lowercase();
    eight[7] = digits[1].to_ascii_lowercase();
    hex8(eight)
}

/// The trace id inside a valid `traceparent` value.
pub fn trace_id_of_traceparent(value: &str) -> Option<String> {
    TraceParent::parse(value).map(|tp| tp.trace_id_str().to_owned())
}

/// Makes `span` a child of the remote span named by `traceparent` (a W3C header value).
/// Returns false (span unchanged) when the value is malformed or tracing is off.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) -> bool {
    let Some(sc) = parse(traceparent) else {
        return false;
    };
    let cx = opentelemetry::Context::new().with_remote_span_context(sc);
    span.set_parent(cx).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_eight_at_a_time() {
        for s in [
            "00000000", "0123abcd", "ffffffff", "89abcdef", "deadbeef", "0000000a",
        ] {
            let want = u32::from_str_radix(s, 16).unwrap();
            assert_eq!(hex8(s.as_bytes().try_into().unwrap()), Some(want), "{s}");
        }
        // Every byte that is not a lower-case hex digit, in every position.
        for b in (0..=255u8).filter(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            for at in 0..8 {
                let mut d = *b"01234567";
                d[at] = b;
                assert_eq!(hex8(d), None, "{b:#x} at {at}");
            }
        }
        assert_eq!(hex16(b"b7ad6b7169203331"), Some(0xb7ad_6b71_6920_3331));
    }

    #[test]
    fn parses_the_w3c_examples_and_refuses_malformed_values() {
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            trace_id_of_traceparent(ok).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        // A future version may append fields.
        assert!(parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra").is_some());
        // Ids, flags (only `sampled` is kept) and remoteness as the SDK's own parser reads them.
        let sc = parse(" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03 ").unwrap();
        assert_eq!(
            sc.trace_id(),
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        assert_eq!(sc.span_id(), SpanId::from_hex("b7ad6b7169203331").unwrap());
        assert_eq!(sc.trace_flags(), TraceFlags::SAMPLED);
        assert!(sc.is_remote());
        // Parsed once, kept: the same context, and the id's text as it stood.
        let tp = TraceParent::parse(" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03 ")
            .unwrap();
        assert_eq!(tp.span_context(), sc);
        assert_eq!(tp.trace_id_hex(), b"0af7651916cd43dd8448eb211c80319c");
        assert_eq!(tp.trace_id_str(), "0af7651916cd43dd8448eb211c80319c");
        assert!(
            !parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
                .unwrap()
                .is_sampled()
        );
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_an_exporter_spans_have_no_trace() {
        let span = tracing::info_span!(target: crate::TARGET, "x");
        assert_eq!(traceparent(&span), None);
        assert!(!set_remote_parent(
            &span,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
    }
}
