//! Per-sandbox limits inside tunnels (rule 1: one sandbox at its limits never
//! delays another sandbox's requests): requests in flight across all of a
//! sandbox's tunnels and HTTP/2 streams, and request body bytes it has
//! buffered. Both are counted on the sandbox's [`Grant`], refused with `429`
//! beyond [`Limits`](crate::Limits), and released when the request (its
//! response body included) is done. Also the request clock that decides
//! when an HTTP/2 tunnel is idle: requests, not frames (a client's PINGs
//! do not keep a tunnel open).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody, boxed};
use crate::deny::Deny;
use crate::grants::Grant;
use crate::proxy::{Limits, now_ms};

/// When a tunnel last started or finished a request, and how many are open.
#[derive(Debug)]
pub(crate) struct RequestClock {
    last: AtomicU64,
    open: AtomicUsize,
}

impl RequestClock {
    pub(crate) fn new() -> Arc<RequestClock> {
        Arc::new(RequestClock {
            last: AtomicU64::new(now_ms()),
            open: AtomicUsize::new(0),
        })
    }

    /// Resolves once no request was open for `timeout`.
    pub(crate) async fn idle(&self, timeout: Duration) {
        let limit = timeout.as_millis() as u64;
        loop {
            let since = now_ms().saturating_sub(self.last.load(Ordering::Relaxed));
            if self.open.load(Ordering::Acquire) == 0 && since >= limit {
                return;
            }
            let wait = if since >= limit { limit } else { limit - since };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}

/// One request in flight: counted on the grant and on the tunnel's clock
/// until dropped (it travels with the response body).
pub(crate) struct RequestGuard {
    grant: Arc<Grant>,
    clock: Arc<RequestClock>,
}

impl RequestGuard {
    /// Counts a new request, or refuses it when the sandbox has
    /// `max_requests_per_sandbox` in flight.
    pub(crate) fn enter(
        grant: &Arc<Grant>,
        clock: &Arc<RequestClock>,
        limits: &Limits,
    ) -> Result<RequestGuard, Deny> {
        let before = grant.inflight.fetch_add(1, Ordering::AcqRel);
        clock.open.fetch_add(1, Ordering::AcqRel);
        clock.last.store(now_ms(), Ordering::Relaxed);
        let guard = RequestGuard {
            grant: grant.clone(),
            clock: clock.clone(),
        };
        if before >= limits.max_requests_per_sandbox {
            return Err(Deny::TooManyRequests("requests in flight"));
        }
        Ok(guard)
    }

    /// Keeps the request counted until `body` is finished or dropped.
    pub(crate) fn track(self, body: ProxyBody) -> ProxyBody {
        boxed(Tracked {
            inner: body,
            _guard: self,
        })
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.grant.inflight.fetch_sub(1, Ordering::AcqRel);
        self.clock.last.store(now_ms(), Ordering::Relaxed);
        self.clock.open.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Tracked {
    inner: ProxyBody,
    _guard: RequestGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Body bytes a request may buffer, reserved on the grant until dropped.
pub(crate) struct BufferSlot {
    grant: Arc<Grant>,
    bytes: usize,
}

impl BufferSlot {
    /// Reserves `bytes` of the sandbox's buffer budget, or refuses (429).
    pub(crate) fn reserve(
        grant: &Arc<Grant>,
        bytes: usize,
        limits: &Limits,
    ) -> Result<BufferSlot, Deny> {
        let before = grant.buffered.fetch_add(bytes, Ordering::AcqRel);
        let slot = BufferSlot {
            grant: grant.clone(),
            bytes,
        };
        if before.saturating_add(bytes) > limits.max_buffered_per_sandbox {
            return Err(Deny::TooManyRequests("buffered request bytes"));
        }
        Ok(slot)
    }
}

impl Drop for BufferSlot {
    fn drop(&mut self) {
        self.grant.buffered.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}
