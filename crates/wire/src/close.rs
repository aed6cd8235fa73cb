//! The close codes the gateway sends (and a client may receive), as one
//! enum: the gateway closes with them, the client explains them and decides
//! whether reconnecting can help (`docs/PROTOCOL.md`, "Close codes").

/// A WebSocket close code, with the meaning wssgate gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: a normal close (the gateway also uses it for an idle peer).
    Normal,
    /// 1001: the gateway is shutting down.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    Protocol,
    /// 1005: a close frame without a code (received, never sent).
    NoStatus,
    /// 1007: a text frame that is not UTF-8.
    InvalidData,
    /// 1008: a policy violation.
    Policy,
    /// 1009: a message over the size limit.
    TooBig,
    /// 1011: an internal error.
    Internal,
    /// 1013: the client does not read fast enough (slow consumer); try
    /// again later.
    TryAgainLater,
    /// 4000: a newer session took this name (`on_duplicate = "replace"`).
    Replaced,
    /// 4001: the operator disconnected this client (`DELETE /clients/{name}`).
    Kicked,
    /// Any other code.
    Other(u16),
}

impl CloseCode {
    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::NoStatus => 1005,
            CloseCode::InvalidData => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::TryAgainLater => 1013,
            CloseCode::Replaced => 4000,
            CloseCode::Kicked => 4001,
            CloseCode::Other(code) => code,
        }
    }

    /// The code for a number on the wire.
    pub const fn from_code(code: u16) -> CloseCode {
        match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::Protocol,
            1005 => CloseCode::NoStatus,
            1007 => CloseCode::InvalidData,
            1008 => CloseCode::Policy,
            1009 => CloseCode::TooBig,
            1011 => CloseCode::Internal,
            1013 => CloseCode::TryAgainLater,
            4000 => CloseCode::Replaced,
            4001 => CloseCode::Kicked,
            other => CloseCode::Other(other),
        }
    }

    /// What the code means, in words for a person ("" for an unknown one).
    pub const fn meaning(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "gateway shutting down",
            CloseCode::Protocol => "protocol error",
            CloseCode::NoStatus => "no close code",
            CloseCode::InvalidData => "invalid UTF-8",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::Internal => "internal error",
            CloseCode::TryAgainLater => "slow consumer, try again later",
            CloseCode::Replaced => "replaced by a newer session",
            CloseCode::Kicked => "disconnected by the operator",
            CloseCode::Other(_) => "",
        }
    }

    /// True when reconnecting under the same name and credentials cannot
    /// help: a newer session took the name, the operator disconnected the
    /// client, or the gateway's policy refused it.
    pub const fn is_permanent(self) -> bool {
        matches!(
            self,
            CloseCode::Replaced | CloseCode::Kicked | CloseCode::Policy
        )
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> CloseCode {
        CloseCode::from_code(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for code in [
            1000, 1001, 1002, 1005, 1007, 1008, 1009, 1011, 1013, 4000, 4001, 4999,
        ] {
            assert_eq!(CloseCode::from_code(code).code(), code);
        }
        assert_eq!(CloseCode::from_code(4000), CloseCode::Replaced);
        assert_eq!(CloseCode::from_code(4001), CloseCode::Kicked);
        assert_eq!(CloseCode::from_code(4999), CloseCode::Other(4999));
    }

    #[test]
    fn only_a_replaced_or_refused_session_is_permanent() {
        assert!(CloseCode::Replaced.is_permanent());
        assert!(CloseCode::Policy.is_permanent());
        assert!(!CloseCode::TryAgainLater.is_permanent());
        assert!(!CloseCode::GoingAway.is_permanent());
    }
}
