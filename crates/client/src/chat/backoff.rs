//! Exponential backoff with jitter for reconnects.

use std::time::Duration;

/// Exponential backoff: the delay doubles from `initial` to `max`; each
/// delay handed out is jittered into its upper half so that many clients
/// cut off together do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The next delay before jitter, and advances.
    pub fn next_base(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base
    }

    /// The next delay, jittered into `[base/2, base]`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next_base();
        base / 2 + base.mul_f64(random_fraction() / 2.0)
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A number in `[0, 1)`, random enough for jitter (std's `RandomState` is
/// randomly keyed per process and per instance).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let bases: Vec<u128> = (0..9).map(|_| b.next_base().as_millis()).collect();
        assert_eq!(
            bases,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        for base in [500u64, 1000, 2000] {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
    }
}
