//! Who is admitted at the upgrade, and what the others are told: 503 over
//! the connection caps, 403 for an origin not allowed, and the name a client
//! may use, from its claim or its client certificate (400, 401 or 403 when
//! there is none). The checks are pure; the connection writes the answer.
//!
//! The caps are counted in [`caps`](crate::caps); this module decides what
//! being over one means.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;

use crate::caps::{AddressLimit, AddressSlot, Place};
use crate::config::ListenerConfig;
use crate::handshake::{Refusal, Upgrade};
use crate::identity::{self, Claim, ClientName, NameError};
use crate::modes::{IdentitySource, Mode};
use crate::router::AdmitError;
use crate::token::{self, Permissions, TokenError, TokenKeys};

/// What a listener checks at the upgrade, taken from its config once.
pub(crate) struct Policy {
    /// `allowed_origins`: when set, `Origin` is a browser's origin, checked,
    /// and never a name.
    allowed_origins: Vec<String>,
    /// Where names come from.
    identity: IdentitySource,
    /// The token keys, for `identity = "token"`.
    tokens: Option<Arc<TokenKeys>>,
}

/// A client admitted at the upgrade: its name, and when its token expires
/// (`identity = "token"`).
pub(crate) struct Admitted {
    pub(crate) claim: Claim,
    pub(crate) expires: Option<SystemTime>,
    /// What its token allows, when it restricts anything.
    pub(crate) permissions: Option<Box<Permissions>>,
}

impl Policy {
    pub(crate) fn of(l: &ListenerConfig, tokens: Option<Arc<TokenKeys>>) -> Policy {
        Policy {
            allowed_origins: l.allowed_origins.clone(),
            identity: l.identity,
            tokens,
        }
    }

    /// The name `upgrade` may connect under, or the refusal to answer with:
    /// first the connection cap, then the origin, then the name.
    pub(crate) fn admit(
        &self,
        place: &Place,
        upgrade: &Upgrade,
        cert: Option<&PeerCert>,
    ) -> Result<Admitted, Refusal> {
        if !place.is_admitted() {
            return Err(full());
        }
        let query = upgrade.query.as_deref();
        if self.identity == IdentitySource::Token {
            let token = token::from_request(upgrade.authorization.as_deref(), query);
            return self.token_claim(token.as_deref(), query, upgrade.origin.as_deref());
        }
        self.name(query, upgrade.origin.as_deref(), cert)
            .map(|claim| Admitted {
                claim,
                expires: None,
                permissions: None,
            })
    }

    /// `Origin` checked against `allowed_origins`; the bytes to take a
    /// name from (none when origins are checked instead).
    fn name_origin<'a>(&self, origin: Option<&'a [u8]>) -> Result<Option<&'a [u8]>, Refusal> {
        if self.allowed_origins.is_empty() {
            return Ok(origin);
        }
        if let Some(origin) = origin {
            let origin = identity::decode_header(origin);
            if !self
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(&origin))
            {
                return Err(Refusal::new(403, format!("origin not allowed: {origin}")));
            }
        }
        Ok(None)
    }

    /// The name a token gives (401 without a valid one, 403 when it names
    /// nobody usable or a claimed name differs).
    fn token_claim(
        &self,
        token: Option<&str>,
        query: Option<&str>,
        origin: Option<&[u8]>,
    ) -> Result<Admitted, Refusal> {
        // A browser's origin is never a name here (it is checked against
        // allowed_origins when set); a Qt-style name in Origin is one.
        let name_origin = self.name_origin(origin)?.filter(|o| !is_browser_origin(o));
        let verifier = self.tokens.as_ref().map(|t| t.verifier()).ok_or_else(|| {
            Refusal::new(401, "this listener needs tokens but [auth] has no keys")
        })?;
        let verified = token
            .ok_or(TokenError::Missing)
            .and_then(|t| verifier.verify(t))
            .map_err(|e| Refusal::new(e.status(), e.to_string()))?;
        let name = ClientName::new(&verified.name).map_err(|e| {
            Refusal::new(
                403,
                format!("the token's name {:?} is not usable: {e}", verified.name),
            )
        })?;
        match identity::claim(query, name_origin) {
            Ok(claimed) if claimed.name != name => Err(Refusal::new(
                403,
                format!(
                    "claimed name {:?} differs from the token's name {:?}",
                    claimed.name.as_str(),
                    name.as_str()
                ),
            )),
            _ => Ok(Admitted {
                claim: Claim {
                    name,
                    provisional: false,
                },
                expires: Some(verified.expires),
                permissions: (!verified.permissions.is_unrestricted())
                    .then(|| Box::new(verified.permissions)),
            }),
        }
    }

    /// The origin and name checks of [`Policy::admit`], on the raw `?query`
    /// and `Origin` bytes.
    fn name(
        &self,
        query: Option<&str>,
        origin: Option<&[u8]>,
        cert: Option<&PeerCert>,
    ) -> Result<Claim, Refusal> {
        let origins = &self.allowed_origins;
        let name_origin = self.name_origin(origin)?;
        let claimed = identity::claim(query, name_origin);
        match self.identity {
            IdentitySource::Claimed => claimed.map_err(|e| match e {
                // The usual hint ("send an Origin header") is wrong here.
                NameError::Missing if !origins.is_empty() => Refusal::new(
                    400,
                    "missing name: add ?name= to the URL (on this listener Origin is checked against allowed_origins, never a name)",
                ),
                e => Refusal::new(400, e.to_string()),
            }),
            IdentitySource::Certificate => certificate_claim(cert, claimed),
            IdentitySource::Token => Err(Refusal::new(401, TokenError::Missing.to_string())),
        }
    }
}

/// True for an `Origin` a browser sends (RFC 6454): `null`, or
/// `scheme://host[:port]`.
fn is_browser_origin(origin: &[u8]) -> bool {
    origin == b"null"
        || origin
            .windows(3)
            .position(|w| w == b"://")
            .is_some_and(|at| at > 0 && origin[..at].iter().all(u8::is_ascii_alphabetic))
}

/// The answer over `max_connections`, to an upgrade and to a health check.
pub(crate) fn full() -> Refusal {
    Refusal::new(503, "too many connections: try again later")
}

/// The answer when the cluster's registry did not answer within the
/// handshake's time.
pub(crate) fn cluster_timeout() -> Refusal {
    Refusal::new(
        503,
        "cluster unavailable: the name registry (Redis) did not answer in time",
    )
    .retry_after(5)
}

/// The answer over `max_connections_per_address`.
pub(crate) fn address_over_limit() -> Refusal {
    Refusal::new(
        503,
        "too many connections from this address: try again later",
    )
}

/// The answer over `connection_rate_per_address`: 503, and when to retry
/// (whole seconds, at least 1).
pub(crate) fn connection_rate(wait: std::time::Duration) -> Refusal {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Refusal::new(
        503,
        "too many new connections from this address: try again later",
    )
    .retry_after(seconds.max(1))
}

/// A place under `max_connections_per_address` for a session from `ip`
/// (none to hold without a limit), or the 503 to answer with.
pub(crate) fn address_slot(
    limit: &Arc<AddressLimit>,
    ip: IpAddr,
) -> Result<Option<AddressSlot>, Refusal> {
    limit.acquire(ip).ok_or_else(address_over_limit)
}

/// The answer to a name the router will not take (`on_duplicate = "reject"`).
pub(crate) fn router_refusal(e: AdmitError) -> Refusal {
    match e {
        AdmitError::Duplicate(_) => Refusal::new(409, e.to_string()),
    }
}

/// The client certificate of a TLS connection, as far as identity goes.
pub(crate) struct PeerCert {
    name: Option<String>,
    fingerprint: String,
}

impl PeerCert {
    /// The leaf of what the client presented, if anything; logged, and said
    /// loudly when `mode` accepted it without verification.
    pub(crate) fn of(mode: Mode, certs: Option<&[CertificateDer<'static>]>) -> Option<PeerCert> {
        let leaf = certs?.first()?;
        let cert = PeerCert {
            name: wssgate_pki::certificate_name(leaf),
            fingerprint: wssgate_pki::fingerprint(leaf),
        };
        if mode == Mode::AcceptAll {
            tracing::info!(fingerprint = %cert.fingerprint, cert_name = ?cert.name, "client certificate accepted WITHOUT verification (accept-all)");
        } else {
            tracing::debug!(fingerprint = %cert.fingerprint, cert_name = ?cert.name, "client certificate verified");
        }
        Some(cert)
    }
}

/// With `identity = "certificate"`: the name is the certificate's; a claimed
/// name, if any, must be the same (or what Qt makes of it in `Origin`).
fn certificate_claim(
    cert: Option<&PeerCert>,
    claimed: Result<Claim, NameError>,
) -> Result<Claim, Refusal> {
    let Some(cert) = cert else {
        return Err(Refusal::new(
            401,
            "a client certificate is required: this listener names clients by their certificate",
        ));
    };
    let Some(cert_name) = cert.name.as_deref() else {
        return Err(Refusal::new(
            403,
            format!(
                "the client certificate {} has no name (no DNS or URI SAN, no CN)",
                cert.fingerprint
            ),
        ));
    };
    let name = ClientName::new(cert_name).map_err(|e| {
        Refusal::new(
            403,
            format!("the client certificate's name {cert_name:?} is not usable: {e}"),
        )
    })?;
    match claimed {
        Ok(claim)
            if claim.name != name
                && !(claim.provisional
                    && identity::qt_latin1(cert_name) == claim.name.as_str()) =>
        {
            Err(Refusal::new(
                403,
                format!(
                    "claimed name {:?} differs from the certificate's name {cert_name:?}",
                    claim.name.as_str()
                ),
            ))
        }
        _ => Ok(Claim {
            name,
            provisional: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `?query`, `Origin`, and the name admitted or the refusal's status.
    type Case<'a> = (Option<&'a str>, Option<&'a [u8]>, Result<&'a str, u16>);

    fn policy(origins: &[&str], identity: IdentitySource) -> Policy {
        Policy {
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            identity,
            tokens: None,
        }
    }

    fn cert(name: Option<&str>) -> PeerCert {
        PeerCert {
            name: name.map(str::to_owned),
            fingerprint: "sha256:00".into(),
        }
    }

    /// Every case that does not give what it expects.
    fn failures(policy: &Policy, cert: Option<&PeerCert>, cases: &[Case<'_>]) -> Vec<String> {
        cases
            .iter()
            .filter_map(|&(query, origin, expected)| {
                let got = policy
                    .name(query, origin, cert)
                    .map(|c| c.name.as_str().to_owned())
                    .map_err(|r| r.status);
                let expected = expected.map(str::to_owned);
                (got != expected).then(|| format!("{query:?} {origin:?}: {got:?} != {expected:?}"))
            })
            .collect()
    }

    #[test]
    fn claimed_names() {
        let open = policy(&[], IdentitySource::Claimed);
        let cases: &[Case] = &[
            (None, Some(b"alice"), Ok("alice")),
            (Some("name=bob"), Some(b"alice"), Ok("bob")),
            (None, None, Err(400)),
        ];
        let failed = failures(&open, None, cases);
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn allowed_origins_are_checked_and_never_names() {
        let browsers = policy(&["https://chat.example"], IdentitySource::Claimed);
        let cases: &[Case] = &[
            (Some("name=bob"), Some(b"https://CHAT.example"), Ok("bob")),
            (Some("name=bob"), None, Ok("bob")),
            (Some("name=bob"), Some(b"https://evil.example"), Err(403)),
            (None, Some(b"https://chat.example"), Err(400)),
        ];
        let failed = failures(&browsers, None, cases);
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn certificate_names() {
        let by_cert = policy(&[], IdentitySource::Certificate);
        let alice: &[Case] = &[
            (None, None, Ok("alice")),
            (Some("name=alice"), None, Ok("alice")),
            (Some("name=mallory"), None, Err(403)),
        ];
        // What Qt sends in Origin for the certificate's name is that name.
        let qt: &[Case] = &[
            (None, Some(b"C1?"), Ok("C1\u{6211}")),
            (None, Some(b"C2?"), Err(403)),
        ];
        let mut failed = failures(&by_cert, Some(&cert(Some("alice"))), alice);
        failed.extend(failures(&by_cert, Some(&cert(Some("C1\u{6211}"))), qt));
        failed.extend(failures(
            &by_cert,
            None,
            &[(Some("name=alice"), None, Err(401))],
        ));
        failed.extend(failures(
            &by_cert,
            Some(&cert(None)),
            &[(None, None, Err(403))],
        ));
        assert!(failed.is_empty(), "{failed:#?}");
    }
}
