//! The client library behind `wssgate-client`: connect to a ws or wss URL
//! under a certificate policy, with the name in `Origin` as the Qt example
//! does, and explain a failure in words that name the flag to change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::tls::{self, ClientTls, ServerTrust};
use wssgate_pki::TlsError;
use wssgate_pki::danger::Expect;

/// A byte stream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected client.
pub type ClientStream = WebSocketStream<Box<dyn Io>>;

/// Where a connection goes and how the server is trusted.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// The client's name, sent in `Origin` (raw UTF-8, as Qt sends its origin).
    pub name: String,
    /// TLS policy (wss only).
    pub tls: ClientTls,
    /// Trust-on-first-use store for `--accept-all`.
    pub known_hosts: PathBuf,
    /// A token (JWT) for a gateway listener with `identity = "token"`,
    /// sent as `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
}

/// What the connection learned about the server.
#[derive(Debug, Clone, Default)]
pub struct ConnectInfo {
    /// The server certificate fingerprint, when a fingerprint policy saw it.
    pub server_fingerprint: Option<String>,
    /// True when the fingerprint was stored now (first use or `--accept-new`).
    pub newly_trusted: bool,
    /// With `newly_trusted`: the fingerprint remembered before, which
    /// `--accept-new` replaced (`None` on first use).
    pub replaced_fingerprint: Option<String>,
    /// `host:port` as the known-hosts file names the server.
    pub addr: String,
}

/// Why a connection failed; the text says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a ws/wss URL.
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// TCP connection failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// host:port.
        addr: String,
        /// Why.
        reason: std::io::Error,
    },
    /// The TLS handshake failed; the text explains and names a flag.
    #[error("TLS handshake with {addr} failed: {explanation}")]
    Tls {
        /// host:port.
        addr: String,
        /// What went wrong and what would change it.
        explanation: String,
    },
    /// A certificate or key file could not be used.
    #[error(transparent)]
    Files(#[from] TlsError),
    /// The gateway refused the WebSocket upgrade.
    #[error("the gateway refused the connection: {status} {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The gateway's one-line reason.
        body: String,
    },
    /// The WebSocket handshake failed otherwise.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// The known-hosts file could not be read or written.
    #[error("known-hosts file {path}: {reason}")]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
}

impl ConnectError {
    /// True for failures a retry cannot fix (bad flags, refused certificates,
    /// refused names); `--reconnect` gives up on these.
    pub fn is_permanent(&self) -> bool {
        match self {
            ConnectError::Connect { .. } => false,
            ConnectError::Refused { status, .. } => !matches!(status, 503),
            ConnectError::Handshake(_) => false,
            _ => true,
        }
    }
}

/// Buffer sizes for a client connection (small messages, many clients in load tests).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
}

/// Connects and completes the WebSocket upgrade.
pub async fn connect(opts: &ConnectOptions) -> Result<(ClientStream, ConnectInfo), ConnectError> {
    let mut request = opts
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Url {
            url: opts.url.clone(),
            reason: e.to_string(),
        })?;
    let origin = HeaderValue::from_bytes(opts.name.as_bytes()).map_err(|_| ConnectError::Url {
        url: opts.url.clone(),
        reason: format!("name {:?} cannot be sent in a header", opts.name),
    })?;
    request.headers_mut().insert("Origin", origin);
    if let Some(token) = &opts.token {
        let bearer =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ConnectError::Url {
                url: opts.url.clone(),
                reason: "the token cannot be sent in a header".into(),
            })?;
        request.headers_mut().insert("Authorization", bearer);
    }
    let uri = request.uri().clone();
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => {
            return Err(ConnectError::Url {
                url: opts.url.clone(),
                reason: "the scheme must be ws:// or wss://".into(),
            });
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| ConnectError::Url {
            url: opts.url.clone(),
            reason: "no host".into(),
        })?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|reason| ConnectError::Connect {
            addr: addr.clone(),
            reason,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut info = ConnectInfo {
        addr: addr.clone(),
        ..ConnectInfo::default()
    };
    let stream: Box<dyn Io> = if secure {
        let (tls_stream, seen) = tls_connect(opts, &host, &addr, tcp).await?;
        info = remember(opts, &addr, seen)?;
        Box::new(tls_stream)
    } else {
        Box::new(tcp)
    };
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
            .await
            .map_err(|e| handshake_error(e, &addr))?;
    Ok((ws, info))
}

async fn tls_connect(
    opts: &ConnectOptions,
    host: &str,
    addr: &str,
    tcp: TcpStream,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Option<String>), ConnectError> {
    let seen = Arc::new(Mutex::new(None));
    let mut policy = opts.tls.clone();
    if let ServerTrust::Fingerprint(Expect::FirstUse { known, .. }) = &mut policy.trust {
        *known = known_fingerprint(&opts.known_hosts, addr)?;
    }
    let config = tls::client_config(&policy, seen.clone())?;
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
        ConnectError::Url {
            url: opts.url.clone(),
            reason: format!("host {host:?} is not a valid TLS server name: {e}"),
        }
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| ConnectError::Tls {
            addr: addr.to_owned(),
            explanation: tls::explain_client_error(&e).unwrap_or_else(|| format!("{e}")),
        })?;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((stream, seen))
}

/// Stores a first-use (or accepted new) fingerprint.
fn remember(
    opts: &ConnectOptions,
    addr: &str,
    seen: Option<String>,
) -> Result<ConnectInfo, ConnectError> {
    let mut info = ConnectInfo {
        server_fingerprint: seen.clone(),
        addr: addr.to_owned(),
        ..ConnectInfo::default()
    };
    if let (ServerTrust::Fingerprint(Expect::FirstUse { .. }), Some(seen)) = (&opts.tls.trust, seen)
    {
        let known = known_fingerprint(&opts.known_hosts, addr)?;
        if known.as_deref() != Some(seen.as_str()) {
            store_fingerprint(&opts.known_hosts, addr, &seen)?;
            info.newly_trusted = true;
            info.replaced_fingerprint = known;
        }
    }
    Ok(info)
}

/// The fingerprint remembered for `addr`, if any. File format: one
/// `host:port sha256:HEX` per line; `#` starts a comment.
pub fn known_fingerprint(path: &Path, addr: &str) -> Result<Option<String>, ConnectError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(reason) => {
            return Err(ConnectError::KnownHosts {
                path: path.to_owned(),
                reason,
            });
        }
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .find(|(host, _)| *host == addr)
        .map(|(_, fp)| fp.trim().to_owned()))
}

fn store_fingerprint(path: &Path, addr: &str, fingerprint: &str) -> Result<(), ConnectError> {
    let io = |reason| ConnectError::KnownHosts {
        path: path.to_owned(),
        reason,
    };
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| l.split_once(' ').is_none_or(|(host, _)| host != addr))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{addr} {fingerprint}"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, lines.join("\n") + "\n").map_err(io)
}

fn handshake_error(e: tokio_tungstenite::tungstenite::Error, addr: &str) -> ConnectError {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(response) => ConnectError::Refused {
            status: response.status().as_u16(),
            body: response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .unwrap_or_default(),
        },
        Error::Io(io) => match tls::explain_client_error(&io) {
            // TLS 1.3 reports a refused client certificate only after the
            // handshake, on the first read: here.
            Some(explanation) => ConnectError::Tls {
                addr: addr.to_owned(),
                explanation,
            },
            None => ConnectError::Handshake(io.to_string()),
        },
        other => ConnectError::Handshake(other.to_string()),
    }
}

/// The default known-hosts file: `$XDG_CONFIG_HOME/wssgate/known_hosts`, else
/// `~/.config/wssgate/known_hosts`, else `./.wssgate_known_hosts`.
pub fn default_known_hosts() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("wssgate").join("known_hosts");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home)
            .join(".config")
            .join("wssgate")
            .join("known_hosts");
    }
    PathBuf::from(".wssgate_known_hosts")
}
