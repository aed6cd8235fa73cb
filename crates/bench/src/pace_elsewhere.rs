//! `pairs --rate` paces its sends on a Linux timerfd (see `pace.rs`); on
//! other systems the load generator builds, and `--rate` is refused.

use std::convert::Infallible;
use std::sync::Arc;

use super::Run;

/// Never made: [`Clock::start`] refuses.
pub(crate) struct Clock(Infallible);

impl Clock {
    /// Refuses: the open-loop schedule needs a timerfd.
    pub(crate) fn start(
        _run: &Arc<Run>,
        _n: usize,
        _rate: f64,
        _burst: u64,
    ) -> anyhow::Result<Arc<Clock>> {
        anyhow::bail!("--rate needs Linux (its pacer runs on a timerfd); run closed-loop instead")
    }

    pub(crate) async fn due(&self, _index: usize, _sent: u64) -> u64 {
        match self.0 {}
    }

    pub(crate) fn scheduled_ns(&self, _index: usize, _k: u64) -> u64 {
        match self.0 {}
    }
}
