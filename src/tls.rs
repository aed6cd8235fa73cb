//! rustls set-up: PEM loading (rustls-pki-types `PemObject`), the server
//! config of each TLS listener (with reload), the client config of each
//! certificate policy, and certificate facts (name, fingerprint, validity).
//!
//! The crypto provider is *ring*, passed explicitly everywhere: it builds
//! with a C compiler alone (aws-lc-rs needs cmake and a much longer build),
//! and passing it explicitly avoids rustls' process-default provider, which
//! panics when two providers are compiled in.

pub mod danger;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::modes::{ClientAuth, Mode};

/// ALPN protocol offered and accepted: WebSocket upgrades are HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider used for every TLS config (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

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

/// The files and policy of one TLS listener.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// Listener name, for logs.
    pub listener: String,
    /// Security mode (not `non-secure`).
    pub mode: Mode,
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// CA that client certificates must chain to (mode `secure`).
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// Every file the config is built from, for change detection.
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths
    }
}

/// Builds a listener's rustls config from its files. Logs a warning for an
/// expired or not-yet-valid certificate (it is still served: refusing would
/// turn a late renewal into an outage).
pub fn server_config(files: &ServerTlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    if let Some(problem) = validity_problem(&certs[0], SystemTime::now()) {
        tracing::warn!(listener = %files.listener, cert = %files.cert.display(), "server certificate {problem}");
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rejected {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    let builder = match (files.mode, files.client_auth) {
        (Mode::Secure, ClientAuth::None) | (Mode::VerifyNone, _) | (Mode::NonSecure, _) => {
            builder.with_no_client_auth()
        }
        (Mode::Secure, auth) => {
            let ca = files
                .client_ca
                .as_deref()
                .ok_or_else(|| TlsError::Rejected {
                    path: files.cert.clone(),
                    reason: "client_auth needs client_ca".into(),
                })?;
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsError::Rejected {
                path: ca.to_owned(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        (Mode::AcceptAll, auth) => builder.with_client_cert_verifier(Arc::new(
            danger::AcceptAnyClientCert::new(provider.clone(), auth == ClientAuth::Required),
        )),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        other => TlsError::Rejected {
            path: files.key.clone(),
            reason: other.to_string(),
        },
    })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}

/// A listener's TLS acceptor that can be swapped for one built from new
/// files while connections are open (they keep the config they started with).
pub struct ServerTls {
    files: ServerTlsFiles,
    acceptor: RwLock<TlsAcceptor>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl ServerTls {
    /// Loads the files; errors name the file at fault.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let config = server_config(&files)?;
        let stamps = stamps(&files);
        Ok(ServerTls {
            files,
            acceptor: RwLock::new(TlsAcceptor::from(Arc::new(config))),
            stamps: Mutex::new(stamps),
        })
    }

    /// The acceptor new handshakes use.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The files this listener serves.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// True when a file's modification time or size changed since the last load.
    pub fn changed_on_disk(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) != stamps(&self.files)
    }

    /// Rebuilds from the files. On failure the old config stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let new_stamps = stamps(&self.files);
        // Remember the stamps even on failure, so that a broken file is
        // reported once, not on every poll; fixing it changes them again.
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = new_stamps;
        let config = server_config(&self.files)?;
        *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) =
            TlsAcceptor::from(Arc::new(config));
        Ok(())
    }
}

fn stamps(files: &ServerTlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    files
        .paths()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// How a client verifies the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// The system's root certificates (the default).
    SystemRoots,
    /// Only the CA certificates in this file (`--ca FILE`).
    Ca(PathBuf),
    /// DANGEROUS: no chain validation, fingerprint policy instead.
    Fingerprint(danger::Expect),
}

/// A client's TLS policy.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// How the server is verified.
    pub trust: ServerTrust,
    /// Client certificate and key for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A client config for `policy`; `seen` receives the server fingerprint
/// (for trust on first use).
pub fn client_config(
    policy: &ClientTls,
    seen: Arc<Mutex<Option<String>>>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rejected {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
    let builder = match &policy.trust {
        ServerTrust::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(error = %error, "a system root certificate could not be loaded");
            }
            roots.add_parsable_certificates(native.certs);
            builder.with_root_certificates(roots)
        }
        ServerTrust::Ca(path) => builder.with_root_certificates(load_roots(path)?),
        ServerTrust::Fingerprint(expect) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(danger::FingerprintVerifier::new(
                    provider.clone(),
                    expect.clone(),
                    seen,
                )))
        }
    };
    let mut config = match &policy.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = load_certs(cert)?;
            let key_der = load_key(key)?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                        cert: cert.clone(),
                        key: key.clone(),
                    },
                    other => TlsError::Rejected {
                        path: key.clone(),
                        reason: other.to_string(),
                    },
                })?
        }
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}

/// Explains a failed TLS handshake as a client sees it, naming the flag that
/// would change the outcome. `None` when the error is not a TLS one.
pub fn explain_client_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cur {
        // An io::Error's source() skips the error it wraps: look inside it.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(explained) = explain_client_error_here(inner) {
                return Some(explained);
            }
        }
        if let Some(explained) = explain_client_error_here(e) {
            return Some(explained);
        }
        cur = e.source();
    }
    None
}

fn explain_client_error_here(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::{AlertDescription, CertificateError, Error};
    let tls = e.downcast_ref::<Error>()?;
    Some(match tls {
                Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    "the server certificate is signed by an unknown issuer: pass --ca FILE with the CA that signed it, or --accept-all to trust it on first use".into()
                }
                Error::InvalidCertificate(CertificateError::BadSignature) => {
                    "the server certificate's signature does not verify against the trusted CA (another CA of the same name?): pass --ca FILE with the CA that signed it".into()
                }
                Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                ) => "hostname mismatch: the server certificate is not valid for the host in the URL; connect with a name it lists (e.g. localhost), or --pin its fingerprint".into(),
                Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => "the server certificate has expired: renew it on the server (or, knowingly, --pin its fingerprint)".into(),
                Error::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
                    "the server certificate is not valid yet: check the clocks".into()
                }
                Error::General(msg) if msg.starts_with("pin mismatch") => {
                    format!("{msg}: check --pin")
                }
                Error::General(msg) if msg.starts_with("server certificate changed") => {
                    format!("{msg}: if the change is expected, pass --accept-new")
                }
                Error::AlertReceived(AlertDescription::CertificateRequired) => {
                    "the server requires a client certificate: pass --cert FILE --key FILE".into()
                }
                Error::AlertReceived(AlertDescription::UnknownCA)
                | Error::AlertReceived(AlertDescription::BadCertificate) => {
                    "the server does not trust our client certificate: use one signed by the server's client CA".into()
                }
                Error::NoApplicationProtocol => {
                    "the server does not speak HTTP/1.1 over TLS (ALPN)".into()
                }
                other => format!("TLS handshake failed: {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_a_rustls_error_inside_an_io_error() {
        use rustls::{CertificateError, Error};
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = explain_client_error(&io).expect("a TLS error");
        assert!(text.contains("--ca FILE"), "{text}");
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Error::General("server certificate changed since first use: x".into()),
        );
        assert!(
            explain_client_error(&io)
                .expect("a TLS error")
                .contains("--accept-new")
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(explain_client_error(&plain), None);
    }
}
