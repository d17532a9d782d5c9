//! Spin before park: a serving thread that just had a request keeps polling its sockets for a
//! short window instead of going to sleep in `epoll_wait`.
//!
//! Why: at one connection most of what the gateway adds to a request's latency is not its own
//! work but the two times its thread is woken from sleep — when the client's request arrives and
//! when the upstream's answer does. On a virtual machine a sleeping vCPU halts, and waking it
//! costs a trip through the hypervisor: tens of microseconds each (the bench machines are
//! Firecracker guests with no cpuidle driver). A thread that is still polling when the bytes
//! arrive picks them up at the cost of one `epoll_wait(…, 0)`.
//!
//! How: one task per serving thread. A request that starts on the thread while no other is in
//! flight there opens a window; while it is open the task yields on every turn, and tokio's
//! current-thread scheduler answers a task that yields by polling the I/O driver *without
//! blocking* before running it again (`park_yield`), so the thread keeps checking its sockets
//! (and timers) and never parks. When the window closes, or a request starts beside others (the
//! thread is busy: its gaps are short, and spinning in them kept the CPU from the processes that
//! had work), the task waits for the next lone request, which wakes it ([`note_request`]). An
//! idle gateway therefore costs nothing; one serving requests one at a time spends up to one
//! window of CPU per request; a busy one does not spin. Each spinning turn also offers the CPU to
//! any other runnable thread (`sched_yield`).
//!
//! The same idea is glommio's `spin_before_park` and DPDK's adaptive polling.

use std::cell::Cell;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    /// Requests started on this thread while it had no other in flight (they open the
    /// window), requests started beside others (they close it), the requests in flight, and
    /// the spinner's waker while it waits.
    static SOLO: Cell<u64> = const { Cell::new(0) };
    static CROWDED: Cell<u64> = const { Cell::new(0) };
    static IN_FLIGHT: Cell<u32> = const { Cell::new(0) };
    static PARKED: Cell<Option<Waker>> = const { Cell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Spinning turns taken on this thread.
    static SPUN: Cell<u64> = const { Cell::new(0) };
}

/// The default window: long enough to cover an upstream round trip and the client's turnaround
/// to its next request on a loopback or same-zone network, short enough that a trickle of
/// requests costs little CPU. `GATEWAY_SPIN_US` overrides it; 0 turns spinning off.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(200);

/// A request in flight on this thread, from [`note_request`] until dropped.
pub(crate) struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        // Saturating: a request future dropped on another thread (never on the serving
        // threads' own runtimes) must not underflow that thread's count.
        IN_FLIGHT.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Marks a request start on this thread. A request that starts with none other in flight
/// here opens the spin window (and wakes the spinner if it waits); one that starts beside
/// others closes it: the thread has work queued, and spinning in its gaps only keeps the
/// CPU from whatever else wants it (at 50 connections, spinning in those gaps cost 2–3 % of
/// throughput, bench/gateway/ab.sh).
#[inline]
pub(crate) fn note_request() -> InFlight {
    let before = IN_FLIGHT.with(|n| {
        let v = n.get();
        n.set(v + 1);
        v
    });
    if before == 0 {
        SOLO.with(|w| w.set(w.get().wrapping_add(1)));
        PARKED.with(|p| {
            if let Some(w) = p.take() {
                w.wake();
            }
        });
    } else {
        CROWDED.with(|w| w.set(w.get().wrapping_add(1)));
    }
    InFlight(())
}

/// Runs on a serving thread's current-thread runtime until dropped (see the module doc).
pub(crate) async fn spin_before_park(window: Duration) {
    let mut solo = SOLO.with(Cell::get);
    let mut crowded = CROWDED.with(Cell::get);
    let mut until = Instant::now();
    loop {
        let now = Instant::now();
        let (s, c) = (SOLO.with(Cell::get), CROWDED.with(Cell::get));
        if c != crowded {
            crowded = c;
            until = now;
        } else if s != solo {
            until = now + window;
        }
        solo = s;
        if now < until {
            // Someone else runnable on this CPU (the upstream, the client) goes first.
            std::thread::yield_now();
            #[cfg(test)]
            SPUN.with(|n| n.set(n.get() + 1));
            tokio::task::yield_now().await;
            continue;
        }
        std::future::poll_fn(|cx| {
            if SOLO.with(Cell::get) != solo {
                return Poll::Ready(());
            }
            PARKED.with(|p| p.set(Some(cx.waker().clone())));
            Poll::Pending
        })
        .await;
    }
}

/// The window from `GATEWAY_SPIN_US` (microseconds), else [`DEFAULT_WINDOW`].
pub fn window_from_env() -> Duration {
    std::env::var("GATEWAY_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_WINDOW, Duration::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn idle_for(d: Duration) -> u64 {
        let before = SPUN.with(Cell::get);
        tokio::time::sleep(d).await;
        SPUN.with(Cell::get) - before
    }

    /// Idle, the spinner waits (the runtime parks); a request opens the window and the thread
    /// turns without parking; once the window has passed it waits again.
    #[test]
    fn spins_only_in_the_window_after_a_request() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let long = tokio::spawn(spin_before_park(Duration::from_secs(30)));
            assert_eq!(
                idle_for(Duration::from_millis(20)).await,
                0,
                "spun while idle"
            );
            drop(note_request());
            let turns = idle_for(Duration::from_millis(50)).await;
            assert!(turns >= 100, "{turns} turns in 50 ms after a request");
            long.abort();
            let _ = long.await;

            let short = tokio::spawn(spin_before_park(Duration::from_millis(1)));
            tokio::task::yield_now().await; // it takes its first look
            drop(note_request());
            idle_for(Duration::from_millis(50)).await;
            assert_eq!(
                idle_for(Duration::from_millis(20)).await,
                0,
                "spun past the window"
            );
            // The next request wakes it again.
            let before = SPUN.with(Cell::get);
            drop(note_request());
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert!(SPUN.with(Cell::get) > before, "a request did not wake it");
            short.abort();
            let _ = short.await;

            // A request that starts while another is in flight closes the window at once.
            let long = tokio::spawn(spin_before_park(Duration::from_secs(30)));
            tokio::task::yield_now().await;
            let first = note_request();
            assert!(
                idle_for(Duration::from_millis(20)).await > 0,
                "a lone request spins"
            );
            let second = note_request();
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert_eq!(
                idle_for(Duration::from_millis(20)).await,
                0,
                "spun beside others"
            );
            drop((first, second));
            long.abort();
        });
    }
}
