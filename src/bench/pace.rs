//! Open-loop pacing for `pairs --rate`: a schedule with sub-millisecond
//! spacing, which tokio's timers (one-millisecond wheel) cannot give.
//!
//! The schedule is fixed up front: message `j` of the run is due at
//! `begin + j / rate` and belongs to connection `j % n`, so the load reaches
//! the server evenly spread, not as one burst per millisecond. One OS thread
//! (the clock) sleeps until the next message is due, counts it in that
//! connection's slot and wakes its task; a task sends what is due and stamps
//! each message with its *scheduled* time, so a late send (the load generator
//! or the server falling behind) shows in the latency instead of being
//! hidden (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Run;

/// The clock never sleeps longer than this, so it notices the stop soon.
const MAX_SLEEP: Duration = Duration::from_millis(20);

/// One connection's slot: messages due so far, and its task's wake-up.
struct Slot {
    due: AtomicU64,
    wake: Notify,
}

/// The shared schedule of one run.
pub(crate) struct Clock {
    slots: Vec<Slot>,
    /// Nanoseconds since the run's epoch when message 0 is due.
    begin_ns: u64,
    /// Nanoseconds between two messages of the run.
    spacing_ns: f64,
}

impl Clock {
    /// Starts the clock thread: `rate` messages a second over `n`
    /// connections from now until `stop`.
    pub(crate) fn start(run: &Arc<Run>, n: usize, rate: f64) -> anyhow::Result<Arc<Clock>> {
        let clock = Arc::new(Clock {
            slots: (0..n)
                .map(|_| Slot {
                    due: AtomicU64::new(0),
                    wake: Notify::new(),
                })
                .collect(),
            begin_ns: run.now_ns(),
            spacing_ns: 1e9 / rate,
        });
        let (ticking, run, stop) = (clock.clone(), run.clone(), run.stop.clone());
        std::thread::Builder::new()
            .name("pace-clock".into())
            .spawn(move || ticking.tick(&run, &stop))?;
        Ok(clock)
    }

    /// The clock thread: releases every message whose time has come, then
    /// sleeps until the next one (the kernel's timer slack, about 50 µs,
    /// decides how many are released together).
    fn tick(&self, run: &Run, stop: &CancellationToken) {
        let n = self.slots.len() as u64;
        let mut released = 0u64;
        while !stop.is_cancelled() {
            let now = run.now_ns().saturating_sub(self.begin_ns);
            let due = (now as f64 / self.spacing_ns) as u64 + 1;
            if due > released {
                // Slot i holds the messages j < due with j % n == i.
                for j in released..due.min(released + n) {
                    let i = j % n;
                    let slot = &self.slots[i as usize];
                    slot.due.store((due - i).div_ceil(n), Ordering::Release);
                    slot.wake.notify_one();
                }
                released = due;
            }
            let next = self.begin_ns + (released as f64 * self.spacing_ns) as u64;
            let wait = next.saturating_sub(run.now_ns());
            std::thread::sleep(Duration::from_nanos(wait).min(MAX_SLEEP));
        }
        // Wake every task so none waits on a clock that has stopped.
        for slot in &self.slots {
            slot.wake.notify_one();
        }
    }

    /// Waits until connection `index` has messages due beyond `sent`, and
    /// returns how many (at least one). Cancel-safe.
    pub(crate) async fn due(&self, index: usize, sent: u64) -> u64 {
        let slot = &self.slots[index];
        loop {
            let due = slot.due.load(Ordering::Acquire);
            if due > sent {
                return due - sent;
            }
            slot.wake.notified().await;
        }
    }

    /// The scheduled send time (nanoseconds since the run's epoch) of
    /// connection `index`'s `k`-th message (from 0).
    pub(crate) fn scheduled_ns(&self, index: usize, k: u64) -> u64 {
        let j = k * self.slots.len() as u64 + index as u64;
        self.begin_ns + (j as f64 * self.spacing_ns) as u64
    }
}
