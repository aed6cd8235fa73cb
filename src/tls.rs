//! The server side of TLS: each TLS listener's rustls config, built from its
//! files and mode, and reloaded in place (`reload` decides when). What the gateway shares with its client (provider, PEM loading,
//! fingerprints, the dangerous verifiers) is in `wssgate-pki`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
pub use wssgate_pki::TlsError;
use wssgate_pki::{
    ALPN_HTTP11, danger, load_certs, load_key, load_roots, provider, validity_problem,
};

use crate::config::ListenerConfig;
use crate::modes::{ClientAuth, Mode};

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
    /// The TLS files of a listener; `None` for plain ws (or a listener
    /// without a certificate and key, which validation has refused).
    pub(crate) fn of(l: &ListenerConfig) -> Option<ServerTlsFiles> {
        let (Some(cert), Some(key)) = (l.cert.clone(), l.key.clone()) else {
            return None;
        };
        if !l.mode.is_tls() {
            return None;
        }
        Some(ServerTlsFiles {
            listener: l.name.clone(),
            mode: l.mode,
            cert,
            key,
            client_auth: l.client_auth,
            client_ca: l.client_ca.clone(),
        })
    }

    /// Says, once at start, that this listener's mode gives up a check.
    pub(crate) fn warn_if_dangerous(&self) {
        let listener = &self.listener;
        match self.mode {
            Mode::AcceptAll => {
                tracing::warn!(listener = %listener, "DANGEROUS mode accept-all: client certificates are accepted WITHOUT verification; identities are only as good as the fingerprints you check")
            }
            Mode::VerifyNone => {
                tracing::warn!(listener = %listener, "DANGEROUS mode verify-none: TLS without client certificates; clients are told to skip server verification")
            }
            _ => {}
        }
    }

    /// Every file the config is built from, for change detection.
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths
    }
}

/// What to do with a certificate outside its validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// At start: serve it with a warning (there is no other certificate to
    /// keep, and refusing to start would turn a late renewal into an outage
    /// of the plain listeners too).
    WarnOnly,
    /// At a reload: refuse it, so that the valid certificate in service
    /// stays (every handshake would fail with the new one).
    Refuse,
}

/// Builds a listener's rustls config from its files; a leaf certificate
/// that is expired or not yet valid is warned about or refused, as
/// `validity` says.
pub fn server_config(files: &ServerTlsFiles, validity: Validity) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    if let Some(problem) = validity_problem(&certs[0], SystemTime::now()) {
        if validity == Validity::Refuse {
            return Err(TlsError::Rejected {
                path: files.cert.clone(),
                reason: format!("the certificate {problem}; keeping the one in service"),
            });
        }
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
        let config = server_config(&files, Validity::WarnOnly)?;
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
        let config = server_config(&self.files, Validity::Refuse)?;
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
