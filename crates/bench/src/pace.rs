//! Open-loop pacing for `pairs --rate`: a schedule with sub-millisecond
//! spacing, which tokio's timers (one-millisecond wheel) cannot give.
//!
//! The schedule is fixed up front: burst `j` of the run (`--burst` messages,
//! one write) is due at `begin + j * burst / rate` and belongs to connection
//! `j % n`, so the load reaches the server evenly spread, not as one lump
//! per millisecond. The clock is a task on a Linux timerfd, armed for the
//! next burst's time (at least 50 µs ahead): it counts what is due in
//! each connection's slot and wakes its task, all on the load generator's own
//! thread (a clock on an OS thread of its own cost a fifth of the core in
//! context switches). A task sends what is due and stamps each message with
//! its *scheduled* time, so a late send (the load generator or the server
//! falling behind) shows in the latency instead of being hidden (no
//! coordinated omission).

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::Run;

/// The clock's finest tick: below it, wake-ups cost more than they spread
/// (a burst due sooner leaves up to this late, and its latency shows it).
const MIN_TICK: Duration = Duration::from_micros(50);

/// The timerfd, as the runtime needs it (a raw descriptor).
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One connection's slot: bursts due so far, and its task's wake-up.
struct Slot {
    due: AtomicU64,
    wake: Notify,
}

/// The shared schedule of one run.
pub(crate) struct Clock {
    slots: Vec<Slot>,
    /// Nanoseconds since the run's epoch when message 0 is due.
    begin_ns: u64,
    /// Nanoseconds between two bursts of the run.
    spacing_ns: f64,
    /// Messages per burst.
    burst: u64,
}

impl Clock {
    /// Starts the clock task: `rate` messages a second in bursts of
    /// `burst` over `n` connections, from now until the run's stop.
    pub(crate) fn start(
        run: &Arc<Run>,
        n: usize,
        rate: f64,
        burst: u64,
    ) -> anyhow::Result<Arc<Clock>> {
        let clock = Arc::new(Clock {
            slots: (0..n)
                .map(|_| Slot {
                    due: AtomicU64::new(0),
                    wake: Notify::new(),
                })
                .collect(),
            begin_ns: run.now_ns(),
            spacing_ns: burst as f64 * 1e9 / rate,
            burst,
        });
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .context("timerfd_create")?;
        // The file descriptor is owned (moved in) and closed only when the
        // AsyncFd drops, which is what the newer, unsafe `register` asks;
        // the lib forbids unsafe code, so the safe constructor it replaces.
        #[allow(deprecated)]
        let timer = AsyncFd::with_interest(Timer(timer), Interest::READABLE)?;
        tokio::spawn(clock.clone().tick(run.clone(), timer));
        Ok(clock)
    }

    /// The clock task: releases every burst whose time has come, then arms
    /// the timer for the next one (at least [`MIN_TICK`] ahead), until the
    /// run stops. Armed afresh from the schedule each time, so it never
    /// drifts from it.
    async fn tick(self: Arc<Clock>, run: Arc<Run>, timer: AsyncFd<Timer>) {
        let n = self.slots.len() as u64;
        let mut released = 0u64;
        loop {
            let now = run.now_ns().saturating_sub(self.begin_ns);
            let due = (now as f64 / self.spacing_ns) as u64 + 1;
            if due > released {
                // Slot i holds the bursts j < due with j % n == i.
                for j in released..due.min(released + n) {
                    let i = j % n;
                    let slot = &self.slots[i as usize];
                    slot.due.store((due - i).div_ceil(n), Ordering::Release);
                    slot.wake.notify_one();
                }
                released = due;
            }
            // Burst `released` is the next: due at begin + released * spacing.
            let next = self.begin_ns + (released as f64 * self.spacing_ns).ceil() as u64;
            let wait = Duration::from_nanos(next.saturating_sub(run.now_ns())).max(MIN_TICK);
            let armed = timer.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from_duration(wait)),
                TimerSetTimeFlags::empty(),
            );
            if let Err(e) = armed {
                run.error(|| format!("pacing timer failed: {e}"));
                break;
            }
            let ready = tokio::select! {
                _ = run.stop.cancelled() => break,
                ready = timer.readable() => ready,
            };
            match ready {
                // The read takes the expiry; the timer is then not readable
                // until armed again.
                Ok(mut guard) => {
                    let _ = nix::unistd::read(&guard.get_inner().0, &mut [0u8; 8]);
                    guard.clear_ready();
                }
                Err(e) => {
                    run.error(|| format!("pacing timer failed: {e}"));
                    break;
                }
            }
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
            let due = slot.due.load(Ordering::Acquire) * self.burst;
            if due > sent {
                return due - sent;
            }
            slot.wake.notified().await;
        }
    }

    /// The scheduled send time (nanoseconds since the run's epoch) of
    /// connection `index`'s `k`-th message (from 0).
    pub(crate) fn scheduled_ns(&self, index: usize, k: u64) -> u64 {
        let j = (k / self.burst) * self.slots.len() as u64 + index as u64;
        self.begin_ns + (j as f64 * self.spacing_ns) as u64
    }
}
