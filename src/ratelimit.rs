//! Rate limits, on governor's GCRA (one atomic word of state per limit):
//!
//! - per session: data frames (text and binary) a second, with a burst.
//!   A frame over it is dropped and answered with `rate limit exceeded`
//!   (with the request's `id` as `ref`); a second limit on those refusals
//!   closes a session that keeps on with 1008 `rate limit`, so a flood
//!   cannot turn into a flood of notices either. The limit is the
//!   session's: a reconnect starts afresh (the connection rate below is
//!   what limits reconnecting).
//! - per client address (after PROXY and forwarding headers): upgrade
//!   requests a second, counted as soon as the request head is read
//!   (before the token, name and origin checks, so that refused requests
//!   count too), answered over it with 503 and
//!   `Retry-After`. Off by default: many clients share an address behind
//!   NAT, and a reconnecting crowd must not be refused by default.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use crate::config::LimitsConfig;

/// The window `max_rate_refusals` counts over.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// How often the per-address state forgets addresses that went quiet.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// What the session does with one data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: handle it.
    Pass,
    /// Over the limit: drop it and say so.
    Refuse,
    /// Over the limit, and refused too often lately: close with 1008.
    Close,
}

/// One session's limits.
pub struct SessionLimits {
    messages: DefaultDirectRateLimiter,
    refusals: DefaultDirectRateLimiter,
}

impl SessionLimits {
    /// The limits `[limits]` sets; `None` when `messages_per_second = 0`.
    pub fn new(limits: &LimitsConfig) -> Option<SessionLimits> {
        let rate = NonZeroU32::new(limits.messages_per_second)?;
        let burst = NonZeroU32::new(limits.message_burst).unwrap_or(rate);
        let refusals = NonZeroU32::new(limits.max_rate_refusals).unwrap_or(NonZeroU32::MIN);
        let refusal_period = REFUSAL_WINDOW / refusals.get();
        Some(SessionLimits {
            messages: DefaultDirectRateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            refusals: DefaultDirectRateLimiter::direct(
                Quota::with_period(refusal_period)
                    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                    .allow_burst(refusals),
            ),
        })
    }

    /// Counts one data frame.
    pub fn check(&self) -> Verdict {
        if self.messages.check().is_ok() {
            Verdict::Pass
        } else if self.refusals.check().is_ok() {
            Verdict::Refuse
        } else {
            Verdict::Close
        }
    }
}

/// New connections per client address.
pub struct AddressRate {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl AddressRate {
    /// The limit `[limits]` sets; `None` when `connection_rate_per_address = 0`.
    pub fn new(limits: &LimitsConfig) -> Option<AddressRate> {
        let rate = NonZeroU32::new(limits.connection_rate_per_address)?;
        let burst = NonZeroU32::new(limits.connection_burst_per_address).unwrap_or(rate);
        Some(AddressRate {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    /// Counts one connection from `ip`; over the limit, how long until the
    /// next one would pass.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets, every minute until `shutdown`, the addresses whose limit
    /// is back to full, so that the table holds only recent ones.
    pub async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.limiter.retain_recent();
                    self.limiter.shrink_to_fit();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(text: &str) -> LimitsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_session_passes_its_burst_then_is_refused_then_closed() {
        let limits = SessionLimits::new(&limits(
            "messages_per_second = 1\nmessage_burst = 3\nmax_rate_refusals = 2\n",
        ))
        .unwrap();
        let verdicts: Vec<Verdict> = (0..6).map(|_| limits.check()).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Pass, Pass, Pass, Refuse, Refuse, Close]);
    }

    #[test]
    fn zero_turns_a_limit_off() {
        assert!(SessionLimits::new(&limits("messages_per_second = 0\n")).is_none());
        assert!(
            AddressRate::new(&LimitsConfig::default()).is_none(),
            "off by default"
        );
    }

    #[test]
    fn an_address_over_its_rate_is_told_when_to_retry() {
        let rate = AddressRate::new(&limits(
            "connection_rate_per_address = 1\nconnection_burst_per_address = 2\n",
        ))
        .unwrap();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        assert!(rate.check(a).is_ok() && rate.check(a).is_ok());
        let wait = rate.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(rate.check(b).is_ok(), "another address is not affected");
    }
}
