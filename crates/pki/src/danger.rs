//! DANGEROUS certificate verifiers: each one skips chain validation. They are
//! reachable only through an explicit mode (`accept-all`, `verify-none`) or
//! flag (`--accept-all`, `--verify-none`, `--pin`), and every one of them
//! still verifies the handshake signatures, so the peer must hold the private
//! key of the certificate it shows.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme};

use crate::fingerprint;

/// The one check every verifier here keeps: handshake signatures, with the
/// provider's algorithms.
#[derive(Debug)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Server side of `accept-all`: asks for a client certificate and accepts
/// any, unverified. The fingerprint is what identifies the client.
#[derive(Debug)]
pub struct AcceptAnyClientCert {
    signatures: Signatures,
    mandatory: bool,
}

impl AcceptAnyClientCert {
    /// A verifier that accepts every client certificate; with `mandatory`, a
    /// client without one fails the handshake.
    pub fn new(provider: Arc<CryptoProvider>, mandatory: bool) -> Self {
        AcceptAnyClientCert {
            signatures: Signatures(provider),
            mandatory,
        }
    }
}

impl ClientCertVerifier for AcceptAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// What a fingerprint-based server verifier expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Anything (`--verify-none`).
    Anything,
    /// Exactly this fingerprint (`--pin sha256:HEX`).
    Pin(String),
    /// Trust on first use (`--accept-all`): the fingerprint seen before for
    /// this server, if any; `accept_new` lets a changed one through.
    FirstUse {
        /// The fingerprint remembered for this host.
        known: Option<String>,
        /// Accept a fingerprint different from `known`.
        accept_new: bool,
    },
}

/// Why [`FingerprintVerifier`] refused a server: carried inside
/// `rustls::Error::Other`, so that a client can match it
/// ([`Mismatch::find`]) instead of reading the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The server's fingerprint is not the pinned one (`--pin`).
    #[error("pin mismatch: the server presented {got}, the pin is {pin}")]
    Pin {
        /// The pinned fingerprint.
        pin: String,
        /// What the server presented.
        got: String,
    },
    /// The server's fingerprint differs from the one stored on first use.
    #[error("server certificate changed since first use: it was {known}, now {got}")]
    Changed {
        /// The fingerprint stored for this host.
        known: String,
        /// What the server presented.
        got: String,
    },
}

impl Mismatch {
    /// The mismatch inside a rustls error, if that is what it is.
    pub fn find(error: &Error) -> Option<&Mismatch> {
        match error {
            Error::Other(OtherError(inner)) => inner.downcast_ref::<Mismatch>(),
            _ => None,
        }
    }
}

impl From<Mismatch> for Error {
    fn from(m: Mismatch) -> Error {
        Error::Other(OtherError(Arc::new(m)))
    }
}

/// Client side of `--accept-all`, `--verify-none` and `--pin`: no chain
/// validation, no hostname check; the server's end-entity fingerprint is
/// checked against [`Expect`] and recorded for the caller.
#[derive(Debug)]
pub struct FingerprintVerifier {
    signatures: Signatures,
    expect: Expect,
    seen: Arc<Mutex<Option<String>>>,
}

impl FingerprintVerifier {
    /// A verifier; `seen` receives the fingerprint the server presented.
    pub fn new(
        provider: Arc<CryptoProvider>,
        expect: Expect,
        seen: Arc<Mutex<Option<String>>>,
    ) -> Self {
        FingerprintVerifier {
            signatures: Signatures(provider),
            expect,
            seen,
        }
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let got = fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(got.clone());
        match &self.expect {
            Expect::Anything => Ok(ServerCertVerified::assertion()),
            Expect::Pin(pin) if pin.eq_ignore_ascii_case(&got) => {
                Ok(ServerCertVerified::assertion())
            }
            Expect::Pin(pin) => Err(Mismatch::Pin {
                pin: pin.clone(),
                got,
            }
            .into()),
            Expect::FirstUse {
                known: Some(known),
                accept_new: false,
            } if known != &got => Err(Mismatch::Changed {
                known: known.clone(),
                got,
            }
            .into()),
            Expect::FirstUse { .. } => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}
