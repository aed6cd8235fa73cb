//! Memory given back after a burst. glibc keeps what a burst of connections
//! used mapped after they leave (free to reuse, never returned): measured,
//! 10,000 idle clients took a gateway from 7.6 to 61 MiB, and it stayed at
//! 61 MiB once they had left. `malloc_trim(0)` then brings it to 9 MiB
//! (`bench/burst-rss`; bench/RESULTS.md, "memory after a burst"). mimalloc,
//! tried as the global allocator instead, kept all of it (76 MiB after,
//! and 18 MiB before any client).
//!
//! So a task watches the number of sessions and trims once it has fallen
//! by [`MIN_DROP`] from the highest seen since the last trim, checking every
//! [`CHECK_EVERY`]: steady churn never trims, a burst that leaves does, once.
//! The trim runs on a blocking thread; the message path never waits for it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::router::Router;

/// How often the number of sessions is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Sessions gone since the high-water mark that make a trim worth it (a
/// thousand idle sessions hold about 5 MiB).
pub const MIN_DROP: usize = 1_000;

/// The highest number of sessions since the last trim.
#[derive(Debug, Default)]
struct Watermark {
    high: usize,
}

impl Watermark {
    /// Takes the current number of sessions; true when it is time to trim
    /// (the mark then starts again from `now`).
    fn observe(&mut self, now: usize) -> bool {
        self.high = self.high.max(now);
        if self.high - now >= MIN_DROP {
            self.high = now;
            return true;
        }
        false
    }
}

/// Watches `router` until `shutdown`, trimming after each burst that left.
pub async fn run(router: Arc<Router>, shutdown: CancellationToken) {
    let mut mark = Watermark::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sessions = router.len();
        if !mark.observe(sessions) {
            continue;
        }
        let trimmed = tokio::task::spawn_blocking(give_back)
            .await
            .unwrap_or(false);
        router.metrics().memory_trim();
        tracing::debug!(
            sessions,
            trimmed,
            "gave memory back to the system after a burst"
        );
    }
}

/// Returns the allocator's free memory to the system; true if some was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn give_back() -> bool {
    // SAFETY: malloc_trim takes no pointer, only the padding to keep (0),
    // and glibc documents it as thread-safe (MT-Safe): it locks each arena
    // in turn, as malloc itself does.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// Elsewhere (musl, other systems) there is nothing to call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_that_leaves_trims_once_and_churn_never() {
        let mut mark = Watermark::default();
        // Steady churn around a few hundred sessions.
        for n in [300, 320, 280, 310, 290] {
            assert!(!mark.observe(n));
        }
        // A burst up to 10,000, then gone.
        assert!(!mark.observe(10_000));
        assert!(!mark.observe(9_500));
        assert!(mark.observe(300), "the burst left");
        assert!(!mark.observe(300), "once");
        assert!(!mark.observe(250));
    }

    #[test]
    fn give_back_can_be_called_from_any_thread() {
        let handles: Vec<_> = (0..4).map(|_| std::thread::spawn(give_back)).collect();
        for handle in handles {
            assert!(handle.join().is_ok());
        }
    }
}
