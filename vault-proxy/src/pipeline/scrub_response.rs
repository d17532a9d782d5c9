//! Rule 5: responses are scrubbed. Every real secret value (of *all*
//! credentials, plus its base64 and percent-encoded forms) in response status line, headers and body
//! is replaced by this grant's stub for it (or a same-length mask for
//! credentials the grant does not hold). Bodies are scrubbed while
//! streaming; a match split across chunks is caught by holding back only a
//! tail that could still become a secret. Bodies in gzip/deflate/br (content or
//! transfer codings) are decoded, scrubbed and sent on decoded (`content-encoding` and
//! `content-length` removed); other encodings fail closed (502).

use std::collections::BTreeMap;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};

use crate::body::{BoxError, ProxyBody};
use crate::deny::Deny;
use crate::secrets::Credentials;

/// Shortest secret value that is scrubbed (shorter ones would hit ordinary text).
pub const MIN_SCRUB_LEN: usize = 8;

/// Multi-pattern replacer: patterns → replacements.
pub struct Replacer {
    ac: Option<AhoCorasick>,
    patterns: Vec<Vec<u8>>,
    replacements: Vec<Vec<u8>>,
    same_length: bool,
}

impl Replacer {
    /// A replacer over explicit pairs (pattern, replacement).
    pub fn new(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Replacer {
        let pairs: Vec<_> = pairs.into_iter().filter(|(p, _)| !p.is_empty()).collect();
        let same_length = pairs.iter().all(|(p, r)| p.len() == r.len());
        let (patterns, replacements): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        let ac = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Replacer {
            ac,
            patterns,
            replacements,
            same_length,
        }
    }

    /// The scrubber of one grant: every credential's real value → the
    /// grant's stub (or a same-length mask of `*` for credentials the grant
    /// does not hold), and so are the value's encodings: standard and
    /// URL-safe base64 at each of the three alignments (the value inside
    /// `Basic user:password` for any user name) and percent-encoding
    /// (reserved characters only, or every byte; upper- and lower-case hex).
    pub fn for_grant(creds: &Credentials, stubs: &BTreeMap<String, String>) -> Replacer {
        let mut pairs = Vec::new();
        for c in creds.iter() {
            let stub = stubs.get(&c.name).map(String::as_str);
            // aws_sigv4: the secret key and the access key id (crate::aws_sigv4).
            let typed = crate::aws_sigv4::scrub_pairs(c, stub);
            if !typed.is_empty() {
                for (real, repl) in typed {
                    push_pair(&mut pairs, &real, repl);
                }
                continue;
            }
            match &c.minter {
                None => push_value(&mut pairs, c.value.expose().as_bytes(), stub),
                // Minted: tokens map to the stub; the long-lived material (private key,
                // refresh tokens, client secret) is masked.
                Some(m) => {
                    push_value(&mut pairs, c.value.expose().as_bytes(), None);
                    let (tokens, secrets) = m.scrub_values();
                    for t in &tokens {
                        push_value(&mut pairs, t.expose().as_bytes(), stub);
                    }
                    for s in &secrets {
                        push_value(&mut pairs, s.expose().as_bytes(), None);
                    }
                }
            }
        }
        Replacer::new(pairs)
    }

    /// True when there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.ac.is_none()
    }

    /// Whether every replacement has its pattern's length (content-length stays valid).
    pub fn same_length(&self) -> bool {
        self.same_length
    }

    /// Replaces all occurrences in `hay`; `None` when nothing matched.
    pub fn replace_all(&self, hay: &[u8]) -> Option<Vec<u8>> {
        let ac = self.ac.as_ref()?;
        if !ac.is_match(hay) {
            return None;
        }
        let mut out = Vec::with_capacity(hay.len());
        ac.replace_all_with_bytes(hay, &mut out, |m, _, dst| {
            dst.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            true
        });
        Some(out)
    }

    /// Length of the longest pattern (0 when there is none).
    pub fn max_pattern_len(&self) -> usize {
        self.patterns.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Whether a pattern occurrence in `hay` starts before `boundary` and ends after it
    /// (a value split between two separately delivered pieces).
    pub fn straddles(&self, hay: &[u8], boundary: usize) -> bool {
        let Some(ac) = self.ac.as_ref() else {
            return false;
        };
        ac.find_iter(hay)
            .any(|m| m.start() < boundary && m.end() > boundary)
    }

    /// Length of the longest suffix of `buf` that is a proper prefix of a pattern.
    fn held_tail(&self, buf: &[u8]) -> usize {
        let mut best = 0;
        for p in &self.patterns {
            let max = (p.len() - 1).min(buf.len());
            for k in (best + 1..=max).rev() {
                if p[..k] == buf[buf.len() - k..] {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

/// Adds `real` and its encodings → the stub (or a same-length mask).
fn push_value(pairs: &mut Vec<(Vec<u8>, Vec<u8>)>, real: &[u8], stub: Option<&str>) {
    let repl = match stub {
        Some(s) => s.as_bytes().to_vec(),
        None => vec![b'*'; real.len()],
    };
    push_pair(pairs, real, repl);
}

/// `real` and its encodings → `repl` and the same encodings of it.
fn push_pair(pairs: &mut Vec<(Vec<u8>, Vec<u8>)>, real: &[u8], repl: Vec<u8>) {
    if real.len() < MIN_SCRUB_LEN || pairs.iter().any(|(q, _)| q == real) {
        return;
    }
    for (p, r) in encodings(real, &repl) {
        if p != real && !pairs.iter().any(|(q, _)| *q == p) {
            // A stub with other characters than the value (an aws_sigv4 secret is random over
            // base64's alphabet) can percent-encode to another length. A same-length mask
            // keeps every response's length, so Content-Length survives the scrub.
            let r = if r.len() != p.len() && repl.len() == real.len() {
                vec![b'*'; p.len()]
            } else {
                r
            };
            pairs.push((p, r));
        }
    }
    pairs.push((real.to_vec(), repl));
}

/// The encoded forms of `real`, each paired with the same encoding of `repl`.
fn encodings(real: &[u8], repl: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out = Vec::new();
    for engine in [&STANDARD, &URL_SAFE] {
        // Whole value at offset 0, with its padding.
        out.push((
            engine.encode(real).into_bytes(),
            engine.encode(repl).into_bytes(),
        ));
        // Three alignments: after k filler bytes, the characters that depend only on
        // the value's bytes (bits [8k, 8(k+n)) fully covering 6-bit groups).
        for k in 0..3usize {
            let slice = |v: &[u8]| -> Vec<u8> {
                let mut buf = vec![0u8; k];
                buf.extend_from_slice(v);
                let enc = URL_SAFE_NO_PAD.encode(&buf);
                let enc = if std::ptr::eq(engine, &STANDARD) {
                    enc.replace('-', "+").replace('_', "/")
                } else {
                    enc
                };
                let start = (8 * k).div_ceil(6);
                let end = (8 * (k + v.len())) / 6;
                enc.as_bytes()[start.min(end)..end].to_vec()
            };
            let (p, r) = (slice(real), slice(repl));
            if p.len() >= MIN_SCRUB_LEN {
                out.push((p, r));
            }
        }
    }
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let pct = |v: &[u8]| percent_encoding::percent_encode(v, COMPONENT).to_string();
    let all = |v: &[u8], lower: bool| -> String {
        v.iter()
            .map(|b| {
                if lower {
                    format!("%{b:02x}")
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    out.push((pct(real).into_bytes(), pct(repl).into_bytes()));
    // Lower-case hex: only the escapes change case, never the value's own characters.
    let lower_escapes = |v: &[u8]| -> String {
        let e = pct(v);
        let mut o = String::with_capacity(e.len());
        let mut it = e.chars().peekable();
        while let Some(c) = it.next() {
            o.push(c);
            if c == '%' {
                for _ in 0..2 {
                    if let Some(h) = it.next() {
                        o.push(h.to_ascii_lowercase());
                    }
                }
            }
        }
        o
    };
    out.push((
        lower_escapes(real).into_bytes(),
        lower_escapes(repl).into_bytes(),
    ));
    out.push((all(real, false).into_bytes(), all(repl, false).into_bytes()));
    out.push((all(real, true).into_bytes(), all(repl, true).into_bytes()));
    out
}

/// Streaming state over one body: feed chunks, get scrubbed output.
pub struct StreamReplacer<'a> {
    r: &'a Replacer,
    buf: BytesMut,
    /// How many replacements were made.
    pub count: usize,
}

impl<'a> StreamReplacer<'a> {
    /// A fresh stream.
    pub fn new(r: &'a Replacer) -> Self {
        StreamReplacer {
            r,
            buf: BytesMut::new(),
            count: 0,
        }
    }

    /// Feeds one chunk; returns what can be emitted now.
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        self.feed_bytes(Bytes::copy_from_slice(chunk), false)
    }

    /// End of stream: everything that is left.
    pub fn finish(&mut self) -> Bytes {
        self.feed_bytes(Bytes::new(), true)
    }

    /// Feeds one chunk (`last`: and ends the stream). Copies only when it must: a chunk
    /// with nothing to replace and no held tail before it comes back as a slice of itself;
    /// a replacement builds the output once.
    pub fn feed_bytes(&mut self, chunk: Bytes, last: bool) -> Bytes {
        // What to scan: the tail held back from the previous chunk, then this one.
        let input = if self.buf.is_empty() {
            chunk
        } else {
            let mut joined = std::mem::take(&mut self.buf);
            joined.extend_from_slice(&chunk);
            joined.freeze()
        };
        let Some(ac) = self.r.ac.as_ref() else {
            return input;
        };
        let mut out: Option<BytesMut> = None;
        let mut pos = 0;
        for m in ac.find_iter(&input[..]) {
            let o = out.get_or_insert_with(|| BytesMut::with_capacity(input.len()));
            o.extend_from_slice(&input[pos..m.start()]);
            o.extend_from_slice(&self.r.replacements[m.pattern().as_usize()]);
            pos = m.end();
            self.count += 1;
        }
        let hold = if last {
            0
        } else {
            self.r.held_tail(&input[pos..])
        };
        let emit_end = input.len() - hold;
        if hold > 0 {
            self.buf = BytesMut::from(&input[emit_end..]);
        }
        match out {
            None => input.slice(..emit_end),
            Some(mut o) => {
                o.extend_from_slice(&input[pos..emit_end]);
                o.freeze()
            }
        }
    }
}

/// Scrubs header values in place; returns how many values changed.
pub fn scrub_headers(r: &Replacer, headers: &mut HeaderMap) -> usize {
    if r.is_empty() {
        return 0;
    }
    let mut n = 0;
    for v in headers.values_mut() {
        if let Some(new) = r.replace_all(v.as_bytes()) {
            // Replacements are stubs or `*`: valid header bytes; if not, drop the value.
            *v = HeaderValue::from_bytes(&new).unwrap_or_else(|_| HeaderValue::from_static(""));
            n += 1;
        }
    }
    n
}

enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    fn write(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Zlib(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Brotli(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
    fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Zlib(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Brotli(d) => {
                d.close()?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}

/// Prepares a response for scrubbing: scrubs headers, picks the decoders for
/// its `Transfer-Encoding` codings other than `chunked` (`transfer_codings`,
/// read before hop-by-hop headers were stripped) and its `Content-Encoding`s,
/// and fixes the framing headers (the body goes on decoded). Returns the
/// number of header values scrubbed, or `Deny::Unscrubbable` for a coding we
/// cannot decode (fail closed: the response is refused with 502).
pub fn prepare_response(
    r: &std::sync::Arc<Replacer>,
    headers: &mut HeaderMap,
    transfer_codings: &[String],
) -> Result<(usize, ScrubPlan), Deny> {
    let scrubbed = scrub_headers(r, headers);
    if r.is_empty() && transfer_codings.is_empty() {
        return Ok((scrubbed, ScrubPlan::PassThrough));
    }
    let content: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s != "identity")
        .collect();
    // Applied in order content codings, then transfer codings: decode in reverse.
    let mut chain = Vec::new();
    for e in transfer_codings.iter().rev().chain(content.iter().rev()) {
        chain.push(match e.as_str() {
            "gzip" | "x-gzip" => DecoderKind::Gzip,
            "deflate" => DecoderKind::Zlib,
            "br" => DecoderKind::Brotli,
            _ => return Err(Deny::Unscrubbable("unknown content or transfer coding")),
        });
    }
    if chain.len() > 4 {
        return Err(Deny::Unscrubbable("too many codings"));
    }
    if !chain.is_empty() {
        headers.remove(CONTENT_ENCODING);
        headers.remove(CONTENT_LENGTH);
    } else if !r.same_length() {
        headers.remove(CONTENT_LENGTH);
    }
    Ok((scrubbed, ScrubPlan::Scrub(chain)))
}

/// Transfer codings other than `chunked`/`identity` named by `Transfer-Encoding`
/// (empty, without allocating, for the usual response).
pub fn transfer_codings(headers: &HeaderMap) -> Vec<String> {
    let Some(_) = headers.get(http::header::TRANSFER_ENCODING) else {
        return Vec::new();
    };
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("unreadable"))
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s != "chunked" && s != "identity")
        .collect()
}

/// Scrubs a non-standard HTTP/1 reason phrase (kept by hyper in the
/// response extensions and sent on as is). Returns whether it changed.
pub fn scrub_reason(r: &Replacer, ext: &mut http::Extensions) -> bool {
    let Some(reason) = ext.get::<hyper::ext::ReasonPhrase>() else {
        return false;
    };
    let Some(new) = r.replace_all(reason.as_bytes()) else {
        return false;
    };
    match hyper::ext::ReasonPhrase::try_from(new) {
        Ok(p) => {
            ext.insert(p);
        }
        Err(_) => {
            ext.remove::<hyper::ext::ReasonPhrase>();
        }
    }
    true
}

/// What [`prepare_response`] decided for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScrubPlan {
    /// Nothing to scrub.
    PassThrough,
    /// Scrub, decoding first through these (in order).
    Scrub(Vec<DecoderKind>),
}

/// Supported content-encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// gzip / x-gzip.
    Gzip,
    /// deflate (zlib-wrapped).
    Zlib,
    /// br.
    Brotli,
}

/// Keeps only the encodings we can decode in a request's `Accept-Encoding`.
pub fn restrict_accept_encoding(headers: &mut HeaderMap) {
    let keep: Vec<String> = headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| {
            let name = s
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(
                name.as_str(),
                "gzip" | "x-gzip" | "deflate" | "br" | "identity"
            )
        })
        .collect();
    headers.remove(http::header::ACCEPT_ENCODING);
    if !keep.is_empty()
        && let Ok(v) = HeaderValue::from_str(&keep.join(", "))
    {
        headers.insert(http::header::ACCEPT_ENCODING, v);
    }
}

/// A response body scrubbed while streaming.
pub struct ScrubBody {
    inner: ProxyBody,
    replacer: std::sync::Arc<Replacer>,
    buf: BytesMut,
    decoders: Vec<Decoder>,
    pending_trailers: Option<HeaderMap>,
    done: bool,
    saw_data: bool,
    count: usize,
    on_first_scrub: Option<Box<dyn FnOnce() + Send>>,
}

impl ScrubBody {
    /// Wraps `inner`; `on_first_scrub` runs once, at the first replacement.
    pub fn new(
        inner: ProxyBody,
        replacer: std::sync::Arc<Replacer>,
        decoders: Vec<DecoderKind>,
        on_first_scrub: Option<Box<dyn FnOnce() + Send>>,
    ) -> ScrubBody {
        let decoders = decoders
            .into_iter()
            .map(|k| match k {
                DecoderKind::Gzip => Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
                DecoderKind::Zlib => Decoder::Zlib(flate2::write::ZlibDecoder::new(Vec::new())),
                DecoderKind::Brotli => Decoder::Brotli(Box::new(
                    brotli_decompressor::DecompressorWriter::new(Vec::new(), 4096),
                )),
            })
            .collect();
        ScrubBody {
            inner,
            replacer,
            buf: BytesMut::new(),
            decoders,
            pending_trailers: None,
            done: false,
            saw_data: false,
            count: 0,
            on_first_scrub,
        }
    }

    fn process(&mut self, data: Bytes, last: bool) -> Result<Bytes, BoxError> {
        if !data.is_empty() {
            self.saw_data = true;
        }
        let mut plain = data;
        for d in &mut self.decoders {
            let mut v = d.write(&plain)?;
            // An empty body (HEAD, 304) has no compressed stream to finish.
            if last && self.saw_data {
                v.extend(d.finish()?);
            }
            plain = Bytes::from(v);
        }
        let mut s = StreamReplacer {
            r: &self.replacer,
            buf: std::mem::take(&mut self.buf),
            count: 0,
        };
        let out = s.feed_bytes(plain, last);
        self.buf = s.buf;
        if s.count > 0 {
            self.count += s.count;
            if let Some(f) = self.on_first_scrub.take() {
                f();
            }
        }
        Ok(out)
    }
}

impl Body for ScrubBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(t) = this.pending_trailers.take() {
                this.done = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.process(data, false)?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        let mut trailers = frame.into_trailers().unwrap_or_default();
                        scrub_headers(&this.replacer, &mut trailers);
                        this.pending_trailers = Some(trailers);
                        let out = this.process(Bytes::new(), true)?;
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    let out = this.process(Bytes::new(), true)?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending_trailers.is_none()
    }
}

#[cfg(test)]
mod tests;
