//! Request bodies of re-signed requests.
//!
//! - [`ChunkResigner`]: `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` (aws-chunked).
//!   Each chunk is `hex(size);chunk-signature=<sig>\r\n<data>\r\n`, the last
//!   one has size 0; the signature of chunk *n* signs its data and chains on
//!   the signature before it (the seed is the request's own signature). Every
//!   chunk is verified with the stub key chain and re-emitted, same length,
//!   with the real key chain. A chunk is held until it is whole (its new
//!   signature precedes its data), so memory per request is one chunk.
//! - [`HashCheck`]: a body whose SHA-256 must equal the signed hex payload
//!   hash; its last bytes are held back until the hash is known, so a body
//!   changed after signing never arrives whole upstream.
//!
//! Both fail the stream (hyper then aborts the upstream request) and call
//! `on_fail` once with a reason for the audit log.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame};
use ring::digest;

use super::sign::{SigningKey, chunk_string_to_sign};
use crate::body::{BoxError, ProxyBody};

/// Longest chunk accepted (S3 clients use 8 KiB – 8 MiB chunks).
pub const MAX_CHUNK: usize = 16 * 1024 * 1024;
/// Longest chunk header line (`hex;chunk-signature=<64 hex>`).
const MAX_HEADER_LINE: usize = 128;

/// Reports a failure once (audit).
pub type OnFail = Box<dyn FnOnce(&'static str) + Send>;

/// One signing chain (stub or real): key, scope, date and the last signature.
pub struct Chain {
    /// The derived key.
    pub key: SigningKey,
    /// `date/region/service/aws4_request`.
    pub scope: String,
    /// The request's `x-amz-date`.
    pub amz_date: String,
    /// The previous signature (the seed for the first chunk).
    pub previous: String,
}

impl Chain {
    fn string_to_sign(&self, data_hash: &str) -> String {
        chunk_string_to_sign(&self.amz_date, &self.scope, &self.previous, data_hash)
    }
}

enum State {
    /// Reading a chunk header line.
    Header,
    /// Reading `size` data bytes plus CRLF; `sig` is the stub's signature.
    Data {
        size: usize,
        size_text: String,
        sig: String,
    },
    /// The final chunk was read: only its closing CRLF may follow.
    Final,
    Done,
}

/// Verifies and re-signs an aws-chunked body (see the module docs).
pub struct ChunkResigner {
    inner: ProxyBody,
    buf: BytesMut,
    state: State,
    stub: Chain,
    real: Chain,
    decoded: u64,
    expected_decoded: Option<u64>,
    on_fail: Option<OnFail>,
    eof: bool,
}

impl ChunkResigner {
    /// `stub.previous` / `real.previous` are the two seed signatures.
    pub fn new(
        inner: ProxyBody,
        stub: Chain,
        real: Chain,
        expected_decoded: Option<u64>,
        on_fail: OnFail,
    ) -> ChunkResigner {
        ChunkResigner {
            inner,
            buf: BytesMut::new(),
            state: State::Header,
            stub,
            real,
            decoded: 0,
            expected_decoded,
            on_fail: Some(on_fail),
            eof: false,
        }
    }

    fn fail(&mut self, reason: &'static str) -> BoxError {
        self.state = State::Done;
        if let Some(f) = self.on_fail.take() {
            f(reason);
        }
        format!("aws-chunked body refused: {reason}").into()
    }

    /// Tries to make progress on the buffered bytes: `Ok(Some(out))` emits,
    /// `Ok(None)` needs more input.
    fn step(&mut self) -> Result<Option<Bytes>, &'static str> {
        loop {
            match &self.state {
                State::Header => {
                    let Some(nl) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        if self.buf.len() > MAX_HEADER_LINE {
                            return Err("chunk header too long");
                        }
                        return Ok(None);
                    };
                    if nl > MAX_HEADER_LINE {
                        return Err("chunk header too long");
                    }
                    let line = std::str::from_utf8(&self.buf[..nl]).map_err(|_| "chunk header")?;
                    let (size_text, ext) = line.split_once(';').ok_or("chunk without signature")?;
                    let size = size_text;
                    let sig = ext
                        .strip_prefix("chunk-signature=")
                        .ok_or("chunk without signature")?;
                    if sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err("chunk signature malformed");
                    }
                    if size.is_empty()
                        || size.len() > 8
                        || !size.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err("chunk size malformed");
                    }
                    let size =
                        usize::from_str_radix(size, 16).map_err(|_| "chunk size malformed")?;
                    if size > MAX_CHUNK {
                        return Err("chunk too large");
                    }
                    let sig = sig.to_ascii_lowercase();
                    let size_text = size_text.to_string();
                    self.buf.advance(nl + 2);
                    self.state = State::Data {
                        size,
                        size_text,
                        sig,
                    };
                }
                State::Data {
                    size,
                    size_text,
                    sig,
                } => {
                    let size = *size;
                    if self.buf.len() < size + 2 {
                        return Ok(None);
                    }
                    if &self.buf[size..size + 2] != b"\r\n" {
                        return Err("chunk not terminated by CRLF");
                    }
                    let data = self.buf.split_to(size).freeze();
                    self.buf.advance(2);
                    let hash = hex::encode(digest::digest(&digest::SHA256, &data));
                    let sts = self.stub.string_to_sign(&hash);
                    if !self.stub.key.verify(&sts, sig) {
                        return Err("chunk signature does not verify with the sandbox's key");
                    }
                    self.stub.previous = sig.clone();
                    let new_sig = self.real.key.sign(&self.real.string_to_sign(&hash));
                    self.real.previous = new_sig.clone();
                    self.decoded += size as u64;
                    let mut out = BytesMut::with_capacity(size + 100);
                    // Same size text as received: the body keeps its length.
                    out.extend_from_slice(
                        format!("{size_text};chunk-signature={new_sig}\r\n").as_bytes(),
                    );
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                    if size == 0 {
                        // The final chunk carries "0;sig\r\n" + "\r\n" (its empty data).
                        if self.expected_decoded.is_some_and(|n| n != self.decoded) {
                            return Err("decoded length differs from x-amz-decoded-content-length");
                        }
                        self.state = State::Final;
                    } else {
                        self.state = State::Header;
                    }
                    return Ok(Some(out.freeze()));
                }
                State::Final => {
                    if !self.buf.is_empty() {
                        return Err("bytes after the final chunk");
                    }
                    return Ok(None);
                }
                State::Done => return Ok(None),
            }
        }
    }
}

impl Body for ChunkResigner {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if matches!(this.state, State::Done) {
                return Poll::Ready(None);
            }
            match this.step() {
                Err(reason) => return Poll::Ready(Some(Err(this.fail(reason)))),
                Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Ok(None) => {}
            }
            if this.eof {
                if matches!(this.state, State::Final) && this.buf.is_empty() {
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(this.fail("body ended inside a chunk"))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.eof = true,
                Poll::Ready(Some(Err(e))) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(d) = frame.into_data() {
                        if this.buf.len() + d.len() > MAX_CHUNK + MAX_HEADER_LINE + 4 {
                            return Poll::Ready(Some(Err(this.fail("chunk too large"))));
                        }
                        this.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}

/// A body that must hash to `expected` (see the module docs).
pub struct HashCheck {
    inner: ProxyBody,
    ctx: Option<digest::Context>,
    expected: String,
    held: Option<Bytes>,
    on_fail: Option<OnFail>,
    done: bool,
}

impl HashCheck {
    /// `expected`: lower-hex SHA-256.
    pub fn new(inner: ProxyBody, expected: String, on_fail: OnFail) -> HashCheck {
        HashCheck {
            inner,
            ctx: Some(digest::Context::new(&digest::SHA256)),
            expected,
            held: None,
            on_fail: Some(on_fail),
            done: false,
        }
    }
}

impl Body for HashCheck {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(d) = frame.into_data() else { continue };
                    if d.is_empty() {
                        continue;
                    }
                    if let Some(c) = this.ctx.as_mut() {
                        c.update(&d);
                    }
                    // Hold the newest frame back; send the one before it.
                    if let Some(prev) = this.held.replace(d) {
                        return Poll::Ready(Some(Ok(Frame::data(prev))));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let got = this
                        .ctx
                        .take()
                        .map(|c| hex::encode(c.finish()))
                        .unwrap_or_default();
                    if got != this.expected {
                        if let Some(f) = this.on_fail.take() {
                            f("payload hash differs from the signed x-amz-content-sha256");
                        }
                        return Poll::Ready(Some(Err("payload hash mismatch".into())));
                    }
                    return Poll::Ready(this.held.take().map(|d| Ok(Frame::data(d))));
                }
            }
        }
    }
}
