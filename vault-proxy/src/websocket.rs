//! WebSocket tunnels after a `101 Switching Protocols`.
//!
//! What is inspected: every client→server frame is parsed, unmasked and its
//! payload scanned (with the tail of the previous payload, so a stub split
//! across frames is caught) for the stub of *any* sandbox; one hit closes
//! both sides and is audited as a block. Stubs are never swapped inside
//! frames. `Sec-WebSocket-Extensions` is stripped from the upgrade request,
//! so frames are not compressed (permessage-deflate would hide stubs).
//! Server→client frames are scrubbed like response bodies: a real secret value
//! (or its base64) inside a frame payload is replaced by the grant's stub before
//! the sandbox sees it (the frame is re-encoded when the length changes), and
//! the first scrub on a socket is audited. A value split across two frames
//! cannot be patched in a frame already sent, so it closes the socket and is
//! audited as a block (fail closed). Masked or extension-flagged (RSV) server
//! frames close the socket too: they are either a protocol violation or
//! compressed data we cannot inspect. A proxy with no secret values to scrub
//! copies server bytes through unparsed.
//! Revoking the grant closes the socket.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::handler::Target;
use crate::pipeline::scrub_response::Replacer;

/// Largest client frame accepted (bigger closes the socket).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Parses one frame header; returns (header length, payload length, mask).
fn parse_header(b: &[u8]) -> Option<(usize, usize, Option<[u8; 4]>)> {
    if b.len() < 2 {
        return None;
    }
    let masked = b[1] & 0x80 != 0;
    let len7 = (b[1] & 0x7f) as usize;
    let (mut pos, len) = match len7 {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (4, u16::from_be_bytes([b[2], b[3]]) as usize)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2..10]);
            (
                10,
                usize::try_from(u64::from_be_bytes(a)).unwrap_or(usize::MAX),
            )
        }
        n => (2, n),
    };
    let mask = if masked {
        if b.len() < pos + 4 {
            return None;
        }
        let m = [b[pos], b[pos + 1], b[pos + 2], b[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    Some((pos, len, mask))
}

/// Scans client frames in `buf`; returns Ok(bytes of complete frames to
/// forward) or Err(reason) to close.
fn inspect(buf: &mut BytesMut, carry: &mut Vec<u8>, t: &Target) -> Result<BytesMut, &'static str> {
    let index = t.shared.grants.index();
    let hold = index.max_len().saturating_sub(1);
    let mut out = BytesMut::new();
    while let Some((hl, len, mask)) = parse_header(buf) {
        if len > MAX_FRAME {
            return Err("websocket_frame_too_large");
        }
        if buf.len() < hl + len {
            break;
        }
        let mut payload = carry.clone();
        let start = payload.len();
        payload.extend_from_slice(&buf[hl..hl + len]);
        if let Some(m) = mask {
            for (i, b) in payload[start..].iter_mut().enumerate() {
                *b ^= m[i % 4];
            }
        }
        if index.contains_any(&payload) {
            return Err("credential_not_allowed_for_host: stub_in_websocket_frame");
        }
        let keep = payload.len().min(hold);
        *carry = payload[payload.len() - keep..].to_vec();
        out.extend_from_slice(&buf[..hl + len]);
        buf.advance(hl + len);
    }
    Ok(out)
}

/// Scrubs complete server frames in `buf`; returns Ok(bytes to forward, whether
/// a real value was replaced) or Err(reason) to close the socket.
fn scrub_server(
    buf: &mut BytesMut,
    carry: &mut Vec<u8>,
    r: &Replacer,
) -> Result<(BytesMut, bool), &'static str> {
    let hold = r.max_pattern_len().saturating_sub(1);
    let mut out = BytesMut::new();
    let mut scrubbed = false;
    while let Some((hl, len, mask)) = parse_header(buf) {
        if mask.is_some() {
            return Err("websocket_masked_server_frame");
        }
        if buf[0] & 0x70 != 0 {
            return Err("websocket_server_frame_uses_an_extension");
        }
        if len > MAX_FRAME {
            return Err("websocket_frame_too_large");
        }
        if buf.len() < hl + len {
            break;
        }
        let frame = buf.split_to(hl + len);
        let (head, payload) = frame.split_at(hl);
        let replaced = r.replace_all(payload);
        let payload: &[u8] = match &replaced {
            Some(p) => {
                scrubbed = true;
                p
            }
            None => payload,
        };
        // Control frames (close/ping/pong) may sit between the fragments of a
        // message: scrub them, but only data frames carry the split check.
        if head[0] & 0x08 == 0 && hold > 0 {
            let edge = payload.len().min(hold);
            let mut joint = Vec::with_capacity(carry.len() + edge);
            joint.extend_from_slice(carry);
            joint.extend_from_slice(&payload[..edge]);
            if r.straddles(&joint, carry.len()) {
                return Err("secret_split_across_websocket_frames");
            }
            if payload.len() >= hold {
                carry.clear();
                carry.extend_from_slice(&payload[payload.len() - hold..]);
            } else {
                let drop = joint.len().saturating_sub(hold);
                carry.clear();
                carry.extend_from_slice(&joint[drop..]);
            }
        }
        if replaced.is_none() {
            out.extend_from_slice(&frame);
        } else if payload.len() == len {
            out.extend_from_slice(head);
            out.extend_from_slice(payload);
        } else {
            write_header(&mut out, head[0], payload.len());
            out.extend_from_slice(payload);
        }
    }
    Ok((out, scrubbed))
}

/// Writes an unmasked frame header with `first` (FIN, RSV, opcode) and `len`.
fn write_header(out: &mut BytesMut, first: u8, len: usize) {
    out.extend_from_slice(&[first]);
    if len < 126 {
        out.extend_from_slice(&[len as u8]);
    } else if let Ok(short) = u16::try_from(len) {
        out.extend_from_slice(&[126]);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.extend_from_slice(&[127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Pumps both directions until either side closes, the grant is revoked, a
/// stub shows up client→server or a secret cannot be scrubbed server→client
/// (then `on_block` is called). `on_scrub` is called after the first scrub.
pub(crate) async fn pump<F: FnOnce(&str) + Send, S: FnOnce() + Send>(
    t: Arc<Target>,
    client: OnUpgrade,
    server: OnUpgrade,
    on_block: F,
    on_scrub: S,
) {
    let (Ok(c), Ok(s)) = tokio::join!(client, server) else {
        return;
    };
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(c));
    let (mut sr, mut sw) = tokio::io::split(TokioIo::new(s));
    let t2 = t.clone();
    let c2s = async move {
        let mut buf = BytesMut::with_capacity(8192);
        let mut carry = Vec::new();
        loop {
            let n = cr.read_buf(&mut buf).await.map_err(|_| "io")?;
            if n == 0 {
                return Ok::<(), &'static str>(());
            }
            let out = inspect(&mut buf, &mut carry, &t2)?;
            if !out.is_empty() {
                sw.write_all(&out).await.map_err(|_| "io")?;
            }
        }
    };
    let replacer = t.grant.scrubber();
    let s2c = async move {
        if replacer.is_empty() {
            // No secret value to scrub (min length, no credentials): frames go through as
            // bytes, without parsing or copying.
            return tokio::io::copy(&mut sr, &mut cw)
                .await
                .map(|_| ())
                .map_err(|_| "io");
        }
        let mut buf = BytesMut::with_capacity(8192);
        let mut carry = Vec::new();
        let mut on_scrub = Some(on_scrub);
        loop {
            let n = sr.read_buf(&mut buf).await.map_err(|_| "io")?;
            if n == 0 {
                return Ok::<(), &'static str>(());
            }
            let (out, scrubbed) = scrub_server(&mut buf, &mut carry, &replacer)?;
            if scrubbed && let Some(f) = on_scrub.take() {
                f();
            }
            if !out.is_empty() {
                cw.write_all(&out).await.map_err(|_| "io")?;
            }
        }
    };
    let blocked = tokio::select! {
        r = c2s => r.err(),
        r = s2c => r.err(),
        _ = t.grant.revoked() => None,
    };
    if let Some(reason) = blocked
        && reason != "io"
    {
        on_block(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_header;

    #[test]
    fn frame_headers() {
        assert_eq!(parse_header(&[0x81, 0x05]), Some((2, 5, None)));
        assert_eq!(
            parse_header(&[0x81, 0x85, 1, 2, 3, 4]),
            Some((6, 5, Some([1, 2, 3, 4])))
        );
        assert_eq!(parse_header(&[0x82, 126, 0x01, 0x00]), Some((4, 256, None)));
        assert_eq!(parse_header(&[0x82, 126, 0x01]), None);
        assert_eq!(parse_header(&[0x82, 0x85, 1]), None);
    }
}
