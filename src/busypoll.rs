//! Opt-in busy polling (`[runtime] busy_poll`): after traffic, one runtime
//! worker keeps polling the sockets for a short window instead of parking.
//!
//! An idle CPU that has to be woken for the next frame costs tens of
//! microseconds of wake-up, and on a virtual machine often far more (the
//! host may have given the idle vCPU away). Measured here (a 2-vCPU VM,
//! `wssgate-bench pairs -n 2 -k 1`, one message in flight): p50 180 µs and
//! p99 1.2 ms without, 48 µs and 0.69 ms with a 200 µs window. The price is
//! CPU: a worker stays busy while traffic keeps coming and for one window
//! after it; when the gateway is quiet the spinner parks and costs nothing.
//!
//! The spinner is one task that yields in a loop: tokio polls the sockets
//! (epoll with no timeout) before it resumes a yielded task, so while it
//! spins, a worker never sleeps. Sessions [`BusyPoll::touch`] it on every
//! frame they read; the first touch after it parked wakes it.
//!
//! Measured with one runtime worker (the gateway pinned to one core; there
//! it now runs tokio's current-thread scheduler, and the spin does the same:
//! p50 98 -> 28 µs at `-n 2 -k 1`, as with the one-worker multi-threaded
//! scheduler). With
//! several workers, the spinner's worker polls the sockets only when it
//! holds tokio's I/O driver, which a worker sleeping in epoll usually has:
//! the spin may then buy little for its CPU. Measure before enabling it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// No traffic seen since the spinner last looked.
const QUIET: u8 = 0;
/// Traffic seen since the spinner last looked.
const ACTIVE: u8 = 1;
/// The spinner is parked, waiting for traffic.
const PARKED: u8 = 2;

/// The shared state of one gateway's spinner.
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    state: AtomicU8,
    wake: Notify,
}

impl BusyPoll {
    /// A spinner that keeps polling for `window` after the last traffic.
    pub fn new(window: Duration) -> BusyPoll {
        BusyPoll {
            window,
            state: AtomicU8::new(QUIET),
            wake: Notify::new(),
        }
    }

    /// Marks traffic; wakes the spinner if it parked. One relaxed load when
    /// traffic was already marked since the spinner last looked.
    #[inline]
    pub fn touch(&self) {
        if self.state.load(Ordering::Relaxed) != ACTIVE
            && self.state.swap(ACTIVE, Ordering::AcqRel) == PARKED
        {
            self.wake.notify_one();
        }
    }

    /// True while the spinner is parked.
    #[cfg(test)]
    fn is_parked(&self) -> bool {
        self.state.load(Ordering::Acquire) == PARKED
    }

    /// The spinner: yields in a loop while traffic was seen within the
    /// window, parks when it has been quiet that long, until `stop`.
    pub async fn run(&self, stop: CancellationToken) {
        let mut deadline = Instant::now() + self.window;
        while !stop.is_cancelled() {
            // Written only when traffic was marked: while frames keep coming
            // a session's touch is one read of a line that rarely changes.
            if self.state.load(Ordering::Relaxed) == ACTIVE
                && self
                    .state
                    .compare_exchange(ACTIVE, QUIET, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                deadline = Instant::now() + self.window;
            } else if Instant::now() >= deadline {
                // A touch between the exchange and the wait leaves a permit.
                if self
                    .state
                    .compare_exchange(QUIET, PARKED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = stop.cancelled() => break,
                    }
                }
                deadline = Instant::now() + self.window;
                continue;
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Yields until `cond` holds (bounded: the test fails rather than hang).
    async fn until(cond: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !cond() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("condition not reached in 5 s");
    }

    #[tokio::test]
    async fn parks_when_quiet_and_wakes_on_traffic() {
        let busy = Arc::new(BusyPoll::new(Duration::from_millis(1)));
        let stop = CancellationToken::new();
        let spinner = tokio::spawn({
            let (busy, stop) = (busy.clone(), stop.clone());
            async move { busy.run(stop).await }
        });
        until(|| busy.is_parked()).await;
        busy.touch();
        assert!(!busy.is_parked(), "a touch takes it out of the park");
        // It spins through the window, then parks again.
        until(|| busy.is_parked()).await;
        stop.cancel();
        spinner.await.unwrap();
    }
}
