//! The four security modes and what each one means for a listener.
//!
//! `non-secure` is plain `ws://`. The TLS modes (`secure`, `accept-all`,
//! `verify-none`) are named here so that configs can already say them; the
//! listener refuses them at start until rustls support lands (`src/tls.rs`).

use serde::Deserialize;

/// A listener's security mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Plain WebSocket over TCP (`ws://`), no encryption.
    #[default]
    NonSecure,
    /// TLS with a verified server certificate; client certificates verified when asked for.
    Secure,
    /// DANGEROUS: TLS that requests client certificates and accepts them unverified.
    AcceptAll,
    /// DANGEROUS: TLS without client certificates and without any verification by peers.
    VerifyNone,
}

impl Mode {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::NonSecure => "non-secure",
            Mode::Secure => "secure",
            Mode::AcceptAll => "accept-all",
            Mode::VerifyNone => "verify-none",
        }
    }

    /// True for every mode that runs TLS on the listener.
    pub fn is_tls(self) -> bool {
        self != Mode::NonSecure
    }
}
