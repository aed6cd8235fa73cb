//! Development certificates with rcgen (`wssgate gen-certs`, and a
//! listener's `dev_certs` on first start): a CA, a server certificate signed
//! by it, and client certificates for mutual TLS.
//!
//! Files are never overwritten unless asked (`force`): an existing CA is
//! reused to sign new certificates, so `gen-certs --client carol` later adds a
//! client without invalidating what was issued before. Keys are written with
//! mode 0600.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use wssgate_pki::fingerprint;

/// SANs every development server certificate has.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Validity of the development CA.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of server and client certificates.
pub const LEAF_VALIDITY_DAYS: i64 = 365;

/// Why certificates could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum CertGenError {
    /// rcgen refused the parameters (e.g. a SAN that is not a DNS name or IP).
    #[error("cannot generate {what}: {reason}")]
    Generate {
        /// Which certificate.
        what: String,
        /// Why.
        reason: rcgen::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
}

/// Key algorithm of generated keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (fast handshakes, universal support).
    #[default]
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

impl KeyType {
    fn generate(self) -> Result<KeyPair, rcgen::Error> {
        match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        }
    }
}

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
    /// The certificate's DER, for fingerprints.
    pub der: CertificateDer<'static>,
}

/// A certificate authority that can sign server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's own certificate and key.
    pub pem: Pem,
    key_type: KeyType,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (EKU serverAuth).
    Server,
    /// A TLS client (EKU clientAuth).
    Client,
}

/// Parameters of a leaf certificate.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Subject common name.
    pub common_name: String,
    /// SANs: DNS names or IP addresses.
    pub sans: Vec<String>,
    /// Server or client.
    pub usage: Usage,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Leaf {
    /// A server certificate for `sans`, valid from yesterday for a year.
    pub fn server(sans: &[String]) -> Leaf {
        let now = OffsetDateTime::now_utc();
        Leaf {
            common_name: sans.first().cloned().unwrap_or_else(|| "localhost".into()),
            sans: sans.to_vec(),
            usage: Usage::Server,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(LEAF_VALIDITY_DAYS),
        }
    }

    /// A client certificate naming `name` in its CN.
    pub fn client(name: &str) -> Leaf {
        Leaf {
            common_name: name.to_owned(),
            sans: Vec::new(),
            usage: Usage::Client,
            ..Leaf::server(&[])
        }
    }
}

impl Ca {
    /// A new self-signed CA.
    pub fn generate(common_name: &str, key_type: KeyType) -> Result<Ca, CertGenError> {
        Ca::new_ca(common_name, key_type, BasicConstraints::Unconstrained, None)
    }

    /// A CA: self-signed without `parent`, else signed by it.
    fn new_ca(
        common_name: &str,
        key_type: KeyType,
        constraints: BasicConstraints,
        parent: Option<&Ca>,
    ) -> Result<Ca, CertGenError> {
        let failed = |reason| CertGenError::Generate {
            what: format!("the CA {common_name:?}"),
            reason,
        };
        let key = key_type.generate().map_err(failed)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(constraints);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let cert = match parent {
            None => params.self_signed(&key),
            Some(parent) => {
                params.use_authority_key_identifier_extension = true;
                params.signed_by(&key, &parent.issuer)
            }
        }
        .map_err(failed)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
            key_type,
        })
    }

    /// Loads a CA from its certificate and key PEM files.
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, CertGenError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let failed = |reason| CertGenError::Generate {
            what: format!("the CA from {}", cert.display()),
            reason,
        };
        let key_pair = KeyPair::from_pem(&key_pem).map_err(failed)?;
        let key_type = if key_pair.algorithm() == &rcgen::PKCS_ED25519 {
            KeyType::Ed25519
        } else {
            KeyType::EcdsaP256
        };
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(failed)?;
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes()).map_err(
            |e| CertGenError::Io {
                path: cert.to_owned(),
                reason: std::io::Error::other(e.to_string()),
            },
        )?;
        Ok(Ca {
            issuer,
            pem: Pem {
                cert: cert_pem,
                key: key_pem,
                der,
            },
            key_type,
        })
    }

    /// Issues a leaf certificate with a new key.
    pub fn issue(&self, leaf: &Leaf) -> Result<Pem, CertGenError> {
        let key = self
            .key_type
            .generate()
            .map_err(|reason| CertGenError::Generate {
                what: format!("a key for {:?}", leaf.common_name),
                reason,
            })?;
        self.issue_for_key(leaf, &key)
    }

    /// Issues a leaf certificate for an existing key (e.g. an RSA key made
    /// elsewhere); the returned PEM key is that key in PKCS#8.
    pub fn issue_for_key(&self, leaf: &Leaf, key: &KeyPair) -> Result<Pem, CertGenError> {
        let failed = |reason| CertGenError::Generate {
            what: format!("the certificate for {:?}", leaf.common_name),
            reason,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        for san in &leaf.sans {
            params.subject_alt_names.push(match san.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into().map_err(failed)?),
            });
        }
        params.distinguished_name = name(&leaf.common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match leaf.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        let cert = params.signed_by(key, &self.issuer).map_err(failed)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        })
    }

    /// An intermediate CA signed by this one (for chains in tests and labs).
    pub fn intermediate(&self, common_name: &str) -> Result<Ca, CertGenError> {
        Ca::new_ca(
            common_name,
            self.key_type,
            BasicConstraints::Constrained(0),
            Some(self),
        )
    }

    /// The CA certificate's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.pem.der)
    }
}

/// A development CA's name, unique so that two dev CAs never look alike
/// to a verifier (the same subject with another key only fails late, as a
/// bad signature, instead of as an unknown issuer).
fn dev_ca_name() -> String {
    use ring::rand::SecureRandom;
    let mut tag = [0u8; 4];
    // The tag only disambiguates names; a failed RNG leaves it zero.
    let _ = ring::rand::SystemRandom::new().fill(&mut tag);
    format!(
        "wssgate development CA {}",
        data_encoding::HEXLOWER.encode(&tag)
    )
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// What `gen-certs` should produce.
#[derive(Debug, Clone)]
pub struct GenCerts {
    /// Output directory.
    pub out: PathBuf,
    /// SANs beyond localhost, 127.0.0.1 and ::1.
    pub extra_sans: Vec<String>,
    /// Client certificate names.
    pub clients: Vec<String>,
    /// Overwrite existing files (and make a new CA).
    pub force: bool,
    /// Key algorithm.
    pub key_type: KeyType,
}

/// One file `gen-certs` looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// True if written now, false if it existed and was kept.
    pub created: bool,
}

/// What `gen-certs` did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every file, written or kept.
    pub files: Vec<Written>,
    /// The CA's SHA-256 fingerprint.
    pub ca_fingerprint: String,
    /// The CA certificate file.
    pub ca_cert: PathBuf,
}

/// File names `gen-certs` uses inside its output directory.
pub mod files {
    /// The CA certificate.
    pub const CA_CERT: &str = "ca.pem";
    /// The CA key.
    pub const CA_KEY: &str = "ca-key.pem";
    /// The server certificate.
    pub const SERVER_CERT: &str = "server.pem";
    /// The server key.
    pub const SERVER_KEY: &str = "server-key.pem";

    /// A client's certificate and key file names (names made file-safe).
    pub fn client(name: &str) -> (String, String) {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        (
            format!("client-{safe}.pem"),
            format!("client-{safe}-key.pem"),
        )
    }
}

/// Generates what is missing (or everything, with `force`) in `opts.out`.
pub fn gen_certs(opts: &GenCerts) -> Result<Report, CertGenError> {
    fs::create_dir_all(&opts.out).map_err(|reason| CertGenError::Io {
        path: opts.out.clone(),
        reason,
    })?;
    let path = |name: &str| opts.out.join(name);
    let mut written = Vec::new();
    let (ca_cert, ca_key) = (path(files::CA_CERT), path(files::CA_KEY));
    let ca = if !opts.force && ca_cert.exists() && ca_key.exists() {
        written.push(Written {
            path: ca_cert.clone(),
            created: false,
        });
        written.push(Written {
            path: ca_key.clone(),
            created: false,
        });
        Ca::load(&ca_cert, &ca_key)?
    } else {
        let ca = Ca::generate(&dev_ca_name(), opts.key_type)?;
        written.push(write_file(&ca_cert, &ca.pem.cert, false)?);
        written.push(write_file(&ca_key, &ca.pem.key, true)?);
        ca
    };
    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| (*s).to_owned()).collect();
    sans.extend(opts.extra_sans.iter().cloned());
    let mut pairs = vec![(
        path(files::SERVER_CERT),
        path(files::SERVER_KEY),
        Leaf::server(&sans),
    )];
    for client in &opts.clients {
        let (cert, key) = files::client(client);
        pairs.push((path(&cert), path(&key), Leaf::client(client)));
    }
    for (cert, key, leaf) in pairs {
        if !opts.force && cert.exists() && key.exists() {
            written.push(Written {
                path: cert,
                created: false,
            });
            written.push(Written {
                path: key,
                created: false,
            });
            continue;
        }
        let pem = ca.issue(&leaf)?;
        written.push(write_file(&cert, &pem.cert, false)?);
        written.push(write_file(&key, &pem.key, true)?);
    }
    Ok(Report {
        files: written,
        ca_fingerprint: ca.fingerprint(),
        ca_cert,
    })
}

/// For `dev_certs = true`: when `cert` or `key` is missing, generates a dev
/// CA (beside them, unless one is there) and a server certificate at exactly
/// these paths. Returns the report when something was generated.
pub fn ensure_dev_certs(cert: &Path, key: &Path) -> Result<Option<Report>, CertGenError> {
    if cert.exists() && key.exists() {
        return Ok(None);
    }
    let dir = cert
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|reason| CertGenError::Io {
        path: dir.to_owned(),
        reason,
    })?;
    let (ca_cert, ca_key) = (dir.join(files::CA_CERT), dir.join(files::CA_KEY));
    let mut written = Vec::new();
    let ca = if ca_cert.exists() && ca_key.exists() {
        Ca::load(&ca_cert, &ca_key)?
    } else {
        let ca = Ca::generate(&dev_ca_name(), KeyType::default())?;
        written.push(write_file(&ca_cert, &ca.pem.cert, false)?);
        written.push(write_file(&ca_key, &ca.pem.key, true)?);
        ca
    };
    let sans: Vec<String> = DEFAULT_SANS.iter().map(|s| (*s).to_owned()).collect();
    let pem = ca.issue(&Leaf::server(&sans))?;
    written.push(write_file(cert, &pem.cert, false)?);
    written.push(write_file(key, &pem.key, true)?);
    Ok(Some(Report {
        files: written,
        ca_fingerprint: ca.fingerprint(),
        ca_cert,
    }))
}

/// For a listener with `dev_certs = true`, at start: [`ensure_dev_certs`],
/// logging every file it made and the CA that clients can trust.
pub(crate) fn dev_certs_for(listener: &str, cert: &Path, key: &Path) -> Result<(), CertGenError> {
    let Some(report) = ensure_dev_certs(cert, key)? else {
        return Ok(());
    };
    for file in &report.files {
        tracing::info!(listener = %listener, file = %file.path.display(), "generated development certificate file");
    }
    tracing::info!(listener = %listener, ca = %report.ca_cert.display(), fingerprint = %report.ca_fingerprint, "dev_certs: generated a development CA and server certificate; clients can trust the CA file");
    Ok(())
}

fn read(path: &Path) -> Result<String, CertGenError> {
    fs::read_to_string(path).map_err(|reason| CertGenError::Io {
        path: path.to_owned(),
        reason,
    })
}

/// Writes a file (a key with mode 0600 from its creation on).
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<Written, CertGenError> {
    let io = |reason| CertGenError::Io {
        path: path.to_owned(),
        reason,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    if secret {
        // An existing file keeps its old mode on open; force 0600.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(contents.as_bytes()).map_err(io)?;
    Ok(Written {
        path: path.to_owned(),
        created: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_chain_verifies_with_webpki_and_names() {
        let ca = Ca::generate("test CA", KeyType::EcdsaP256).unwrap();
        let server = ca.issue(&Leaf::server(&["localhost".into()])).unwrap();
        assert_eq!(
            wssgate_pki::certificate_name(&server.der).as_deref(),
            Some("localhost")
        );
        let client = ca.issue(&Leaf::client("C1我是客户端")).unwrap();
        assert_eq!(
            wssgate_pki::certificate_name(&client.der).as_deref(),
            Some("C1我是客户端")
        );
        assert!(ca.fingerprint().starts_with("sha256:"));
        assert_eq!(ca.fingerprint().len(), "sha256:".len() + 64);
    }

    #[test]
    fn never_overwrites_without_force_and_keys_are_private() {
        let dir = std::env::temp_dir().join(format!("wssgate-certgen-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let opts = GenCerts {
            out: dir.clone(),
            extra_sans: vec!["gw.example".into()],
            clients: vec!["alice".into()],
            force: false,
            key_type: KeyType::EcdsaP256,
        };
        let first = gen_certs(&opts).unwrap();
        assert!(first.files.iter().all(|w| w.created));
        assert_eq!(first.files.len(), 6);
        let ca_before = fs::read_to_string(dir.join(files::CA_CERT)).unwrap();
        let second = gen_certs(&GenCerts {
            clients: vec!["alice".into(), "bob".into()],
            ..opts.clone()
        })
        .unwrap();
        let created: Vec<_> = second.files.iter().filter(|w| w.created).collect();
        assert_eq!(created.len(), 2, "only bob's files are new: {created:?}");
        assert_eq!(first.ca_fingerprint, second.ca_fingerprint);
        assert_eq!(
            ca_before,
            fs::read_to_string(dir.join(files::CA_CERT)).unwrap()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(files::SERVER_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let forced = gen_certs(&GenCerts {
            force: true,
            ..opts
        })
        .unwrap();
        assert_ne!(forced.ca_fingerprint, first.ca_fingerprint);
        fs::remove_dir_all(&dir).unwrap();
    }
}
