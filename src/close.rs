//! Why the gateway ends a session: each cause has its close code, the reason
//! text sent with it, and whether the frames already queued go out first.
//! The router orders the closes decided elsewhere (a newer session took the
//! name, the queue overflowed); the session decides the rest.

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

/// The close ordered for a session from outside its task: set once (the
/// first order wins), read by the session when its token fires. Unset means
/// the shutdown cancelled it.
#[derive(Debug, Default)]
pub struct CloseOrder(OnceLock<Close>);

impl CloseOrder {
    /// Records `close` unless an order is already there; true if this was
    /// the first.
    pub fn set(&self, close: Close) -> bool {
        self.0.set(close).is_ok()
    }

    /// The order given, if any.
    pub fn get(&self) -> Option<Close> {
        self.0.get().copied()
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
        ] {
            let order = CloseOrder::default();
            order.set(close);
            assert_eq!(order.get(), Some(close), "{close:?}");
        }
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
