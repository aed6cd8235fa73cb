//! The four security modes and what each one means for a listener.
//!
//! A mode says what a listener (server side) or a connector (client side)
//! verifies; `src/tls.rs` turns that into rustls configuration.
//!
//! | mode | listener | client connector |
//! | --- | --- | --- |
//! | `non-secure` | plain ws | ws only |
//! | `secure` | TLS; client certificates verified against `client_ca` when `client_auth` asks | chain verified against system roots or `--ca`, hostname checked |
//! | `accept-all` | TLS; client certificates requested and accepted unverified (fingerprint logged) | chain not verified, fingerprint remembered on first use, a changed one refused |
//! | `verify-none` | TLS; no client certificate requested | nothing verified (dangerous) |

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

/// Whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is requested.
    #[default]
    None,
    /// A certificate is requested; clients without one are still admitted.
    Optional,
    /// A certificate is required; the handshake fails without one.
    Required,
}

/// Where a client's name comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySource {
    /// The name the client claims (`?name=` or `Origin`).
    #[default]
    Claimed,
    /// The client certificate (first DNS or URI SAN, else CN); a different
    /// claimed name is refused with 403.
    Certificate,
    /// A signed token (JWT, `[auth]`), from `Authorization: Bearer` or
    /// `?token=`; a different claimed name is refused with 403.
    Token,
}

impl ClientAuth {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}
