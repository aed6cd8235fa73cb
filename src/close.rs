//! Why the gateway ends a session: each cause has its close code, the reason
//! text sent with it, and whether the frames already queued go out first.
//! The router orders the closes decided elsewhere (a newer session took the
//! name, the queue overflowed); the session decides the rest.

use std::borrow::Cow;
use std::sync::OnceLock;

use wssgate_wire::CloseCode;

/// A close the gateway starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The gateway is shutting down (1001).
    ShuttingDown,
    /// A newer session took the name (`on_duplicate = "replace"`, 4000).
    Replaced,
    /// The client does not take its frames: its queue is full, or its
    /// socket took nothing for `idle_timeout` (1013).
    SlowConsumer,
    /// Nothing heard from the peer for `idle_timeout` (1000).
    Idle,
    /// A message over `max_message_size` (1009).
    TooBig,
    /// A text frame or a close reason that is not UTF-8 (1007; tungstenite
    /// reports both alike).
    InvalidUtf8,
    /// Any other WebSocket protocol violation (1002).
    Protocol,
    /// Frames over the rate limit, refused too often (1008).
    RateLimit,
    /// The session's token expired (1008).
    TokenExpired,
    /// The operator disconnected the client (`DELETE /clients/{name}`, 4001).
    Kicked,
}

impl Close {
    /// The close code sent.
    pub fn code(self) -> CloseCode {
        match self {
            Close::ShuttingDown => CloseCode::GoingAway,
            Close::Replaced => CloseCode::Replaced,
            Close::SlowConsumer => CloseCode::TryAgainLater,
            Close::Idle => CloseCode::Normal,
            Close::TooBig => CloseCode::TooBig,
            Close::InvalidUtf8 => CloseCode::InvalidData,
            Close::Protocol => CloseCode::Protocol,
            Close::RateLimit | Close::TokenExpired => CloseCode::Policy,
            Close::Kicked => CloseCode::Kicked,
        }
    }

    /// The reason sent with the code (and logged).
    pub fn reason(self) -> &'static str {
        match self {
            Close::ShuttingDown => "gateway shutting down",
            Close::Replaced => "replaced",
            Close::SlowConsumer => "slow consumer",
            Close::Idle => "idle timeout",
            Close::TooBig => "message too big",
            Close::InvalidUtf8 => "invalid UTF-8 in a text frame or close reason",
            Close::Protocol => "protocol error",
            Close::RateLimit => "rate limit",
            Close::TokenExpired => "token expired",
            Close::Kicked => "kicked",
        }
    }

    /// Whether the queued frames are sent before the close frame, with the
    /// whole shutdown grace for it. A slow consumer is not reading and an
    /// idle peer is not answering: their queue stays behind, and their close
    /// frame gets only a short time.
    pub fn drains_queue(self) -> bool {
        !matches!(self, Close::SlowConsumer | Close::Idle)
    }
}

/// The longest close reason a close frame can carry: its payload is at most
/// 125 bytes, two of them the code (RFC 6455 section 5.5).
pub const MAX_CLOSE_REASON: usize = 123;

/// The close ordered for a session from outside its task: set once (the
/// first order wins), read by the session when its token fires. Unset means
/// the shutdown cancelled it.
#[derive(Debug, Default)]
pub struct CloseOrder(OnceLock<(Close, Option<Box<str>>)>);

impl CloseOrder {
    /// Records `close` unless an order is already there; true if this was
    /// the first.
    pub fn set(&self, close: Close) -> bool {
        self.set_with(close, None)
    }

    /// Records `close` with words of whoever ordered it (the operator's
    /// reason for a kick), sent after the cause's own reason.
    pub fn set_with(&self, close: Close, detail: Option<&str>) -> bool {
        let detail = detail
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(Box::from);
        self.0.set((close, detail)).is_ok()
    }

    /// The order given, if any.
    pub fn get(&self) -> Option<Close> {
        self.0.get().map(|(close, _)| *close)
    }

    /// The reason to send with `close`: the cause's own, followed by the
    /// detail given with the order when it was for that cause, cut to what a
    /// close frame holds (at a character boundary).
    pub fn reason(&self, close: Close) -> Cow<'static, str> {
        match self.0.get() {
            Some((ordered, Some(detail))) if *ordered == close => {
                let mut reason = format!("{}: {detail}", close.reason());
                if reason.len() > MAX_CLOSE_REASON {
                    let mut end = MAX_CLOSE_REASON;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                Cow::Owned(reason)
            }
            _ => Cow::Borrowed(close.reason()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_order_wins() {
        let order = CloseOrder::default();
        assert_eq!(order.get(), None);
        assert!(order.set(Close::Replaced));
        assert!(!order.set(Close::SlowConsumer));
        assert_eq!(order.get(), Some(Close::Replaced));
    }

    #[test]
    fn every_cause_round_trips_through_an_order() {
        for close in [
            Close::ShuttingDown,
            Close::Replaced,
            Close::SlowConsumer,
            Close::Idle,
            Close::TooBig,
            Close::InvalidUtf8,
            Close::Protocol,
            Close::RateLimit,
            Close::TokenExpired,
            Close::Kicked,
        ] {
            let order = CloseOrder::default();
            order.set(close);
            assert_eq!(order.get(), Some(close), "{close:?}");
        }
    }

    #[test]
    fn a_kick_reason_follows_the_cause_and_fits_a_close_frame() {
        let order = CloseOrder::default();
        assert!(order.set_with(Close::Kicked, Some(" spam ")));
        assert_eq!(order.reason(Close::Kicked), "kicked: spam");
        // Another cause (the shutdown that overtook it) keeps its own words.
        assert_eq!(order.reason(Close::ShuttingDown), "gateway shutting down");

        let blank = CloseOrder::default();
        blank.set_with(Close::Kicked, Some("  "));
        assert_eq!(blank.reason(Close::Kicked), "kicked");

        let long = CloseOrder::default();
        long.set_with(Close::Kicked, Some(&"é".repeat(100)));
        let reason = long.reason(Close::Kicked);
        assert!(reason.len() <= MAX_CLOSE_REASON, "{}", reason.len());
        assert!(reason.starts_with("kicked: éé"));
        assert_eq!(Close::Kicked.code().code(), 4001);
    }

    #[test]
    fn only_a_silent_or_slow_peer_loses_its_queue() {
        assert!(!Close::SlowConsumer.drains_queue());
        assert!(!Close::Idle.drains_queue());
        assert!(Close::Replaced.drains_queue());
        assert!(Close::ShuttingDown.drains_queue());
        assert_eq!(Close::Replaced.code().code(), 4000);
        assert_eq!(Close::SlowConsumer.code().code(), 1013);
    }
}
