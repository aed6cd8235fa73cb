//! wssgate-pki: the TLS building blocks the gateway and its client share.
//!
//! - the crypto provider (*ring*, passed explicitly everywhere: it builds
//!   with a C compiler alone, where aws-lc-rs needs cmake, and passing it
//!   avoids rustls' process-default provider, which panics when two
//!   providers are compiled in);
//! - PEM loading (rustls-pki-types `PemObject`) with errors that name the file;
//! - certificate facts: fingerprint, the name a certificate identifies, validity;
//! - [`danger`]: the verifiers that skip chain validation, in one module.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod danger;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider used for every TLS config (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN protocol offered and accepted: WebSocket upgrades are HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A TLS set-up that could not be loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{path}: cannot read: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The file holds no certificate.
    #[error("{path}: no certificate found (expected a PEM 'BEGIN CERTIFICATE' block)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no private key.
    #[error(
        "{path}: no private key found (expected a PEM 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY' block)"
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The PEM is malformed.
    #[error("{path}: invalid PEM: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("{key}: this private key does not match the certificate in {cert}")]
    KeyMismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
    /// rustls refused the certificate, key or CA.
    #[error("{path}: {reason}")]
    Rejected {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Reads every certificate of a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        other => pem_error(path, other),
    })
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(reason) => TlsError::Read {
            path: path.to_owned(),
            reason,
        },
        pem::Error::NoItemsFound => TlsError::NoCertificate {
            path: path.to_owned(),
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// A root store with every certificate of a PEM file.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Rejected {
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// `sha256:` and the lowercase hex SHA-256 of a certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    format!("sha256:{}", data_encoding::HEXLOWER.encode(digest.as_ref()))
}

/// The name a certificate identifies: its first DNS or URI SAN, else its CN.
pub fn certificate_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => return Some((*n).to_owned()),
                _ => {}
            }
        }
    }
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Why a certificate is outside its validity period, if it is.
pub fn validity_problem(cert: &CertificateDer<'_>, now: SystemTime) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs()
        .try_into()
        .ok()?;
    let validity = parsed.validity();
    if validity.not_after.timestamp() < now {
        Some(format!("expired on {}", validity.not_after))
    } else if validity.not_before.timestamp() > now {
        Some(format!("not valid before {}", validity.not_before))
    } else {
        None
    }
}
