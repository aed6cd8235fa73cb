//! The client side of TLS: how `wssgate-client` (and the load generator)
//! verify a server, and what a failed handshake means for the user.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::{ClientConfig, RootCertStore};
use wssgate_pki::danger::{self, Mismatch};
use wssgate_pki::{ALPN_HTTP11, TlsError, load_certs, load_key, load_roots, provider};

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
    match Mismatch::find(tls) {
        Some(pin @ Mismatch::Pin { .. }) => return Some(format!("{pin}: check --pin")),
        Some(changed @ Mismatch::Changed { .. }) => {
            return Some(format!(
                "{changed}: if the change is expected, pass --accept-new"
            ));
        }
        None => {}
    }
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
        let changed = Mismatch::Changed {
            known: "sha256:aa".into(),
            got: "sha256:bb".into(),
        };
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, Error::from(changed));
        assert!(
            explain_client_error(&io)
                .expect("a TLS error")
                .contains("--accept-new")
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(explain_client_error(&plain), None);
    }
}
