//! The TOML configuration: serde structs, defaults as named constants, and
//! validation whose errors name the file, the line and the reason.
//!
//! Values that can be checked alone (addresses, durations, paths, modes) are
//! checked while deserializing, so the TOML parser reports their line. Rules
//! that span several values (two listeners on one address, a public admin
//! listener without a token) are checked in `Config::validate`, which finds
//! the line through the spans it kept.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use crate::modes::{ClientAuth, IdentitySource, Mode};
pub use crate::proxy::{ForwardedHeader, TrustedProxies};

/// Where `serve` looks for a config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";
/// The listener used when the config names none.
pub const DEFAULT_LISTENER_BIND: &str = "127.0.0.1:8080";
/// The admin listener used when the config has no `[admin]` table.
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9090";
/// Largest message a client may send (bytes); larger ones close with 1009.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = wssgate_wire::DEFAULT_MAX_MESSAGE_SIZE;
/// Frames waiting for one slow receiver before it is closed with 1013.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 256;
/// Default `messages_per_second`: far above a chat, far below a flood.
pub const DEFAULT_MESSAGES_PER_SECOND: u32 = 100;
/// Default `message_burst`.
pub const DEFAULT_MESSAGE_BURST: u32 = 200;
/// Default `max_rate_refusals` (per 10 s).
pub const DEFAULT_MAX_RATE_REFUSALS: u32 = 20;
/// Ceiling of the automatic `max_connections` (the open-file limit decides below it).
pub const AUTO_MAX_CONNECTIONS_CEILING: usize = 100_000;
/// File descriptors kept for listeners, the admin API, logs and certificates.
pub const RESERVED_FILES: usize = 64;
/// Time a peer has to complete the HTTP upgrade (slow-loris protection).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle session is pinged.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// A peer silent for this long (no frame, no pong) is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown lets queued frames drain before giving up.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Rooms one session may be a member of at once.
pub const DEFAULT_MAX_ROOMS_PER_SESSION: usize = 64;
/// Largest HTTP upgrade request head accepted.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// WebSocket listeners; all feed the same router.
    #[serde(default = "default_listeners", rename = "listener")]
    pub listeners: Vec<Spanned<ListenerConfig>>,
    /// The operator HTTP API.
    #[serde(default = "unspanned")]
    pub admin: Spanned<AdminConfig>,
    /// Limits that keep the gateway standing under load and abuse.
    #[serde(default = "unspanned")]
    pub limits: Spanned<LimitsConfig>,
    /// Name and delivery policies.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// TLS settings shared by all listeners.
    #[serde(default)]
    pub tls: TlsConfig,
    /// How the runtime waits for traffic.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// How `identity = "token"` listeners verify client tokens.
    #[serde(default = "unspanned")]
    pub auth: Spanned<AuthConfig>,
    /// Several nodes over Redis; absent: one node, as without it.
    #[serde(default)]
    pub cluster: Option<Spanned<ClusterConfig>>,
}

/// The `[cluster]` table: nodes that share names, rooms and presence over
/// Redis (the gateway's `cluster` module).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[:password@]host:port/db`, `rediss://` (TLS) or
    /// `unix:///path/to/redis.sock`.
    pub redis: String,
    /// An environment variable holding the Redis password (instead of
    /// putting it in the URL).
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM file of the CA that a `rediss://` server's certificate must
    /// chain to (default: the system's roots).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// This node's id; default: host name, process id and a random suffix,
    /// new at every start (a restarted node never inherits a dead one's lease).
    #[serde(default)]
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel.
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// A node silent this long is dead: its names are freed and its
    /// clients announced as gone.
    #[serde(default = "default_cluster_lease")]
    pub lease: ConfigDuration,
    /// How often a node renews its lease (and reaps dead nodes).
    #[serde(default = "default_cluster_heartbeat")]
    pub heartbeat: ConfigDuration,
    /// Redis unreachable at start: `refuse` (exit with the reason) or
    /// `wait` (retry until it answers).
    #[serde(default)]
    pub at_start: ClusterStart,
    /// New connections while Redis is unreachable: `refuse` (503) or
    /// `local` (admit names free on this node; claimed when Redis is back).
    #[serde(default)]
    pub when_down: ClusterDown,
}

impl std::fmt::Debug for ClusterConfig {
    // The URL may hold a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &"<redacted>")
            .field("password_env", &self.password_env)
            .field("tls_ca", &self.tls_ca)
            .field("node_id", &self.node_id)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("heartbeat", &self.heartbeat)
            .field("at_start", &self.at_start)
            .field("when_down", &self.when_down)
            .finish()
    }
}

/// `[cluster] at_start`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterStart {
    /// Exit with the reason: a mistyped URL or password shows at once, and
    /// a service manager restarts the gateway.
    #[default]
    Refuse,
    /// Retry (with a warning each time) until Redis answers.
    Wait,
}

/// `[cluster] when_down`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterDown {
    /// Refuse new connections with 503: no name is admitted that another
    /// node might hold.
    #[default]
    Refuse,
    /// Admit names free on this node; they are claimed when Redis is back,
    /// and a name another node took meanwhile closes the later session here
    /// with 4000.
    Local,
}

fn default_cluster_prefix() -> String {
    "wsg".into()
}

fn default_cluster_lease() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}

fn default_cluster_heartbeat() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}

/// The `[auth]` table: the keys and rules `identity = "token"` listeners
/// verify client tokens (JWT) with. See the gateway's `token` module.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC secret for the HS* algorithms (at least 32 bytes).
    pub hmac_secret: Option<String>,
    /// The previous HMAC secret, still accepted while tokens signed with
    /// it are out there (rotation).
    pub hmac_previous_secret: Option<String>,
    /// PEM files of public keys (RSA, EC P-256/P-384, Ed25519).
    pub public_keys: Vec<PathBuf>,
    /// A JWKS file (RFC 7517) of public keys, chosen by the token's `kid`.
    pub jwks: Option<PathBuf>,
    /// The algorithms accepted, explicitly (`HS256`, `RS256`, `ES256`,
    /// `EdDSA`, ...); `none` never is.
    pub algorithms: Vec<String>,
    /// The claim that holds the client's name.
    pub name_claim: String,
    /// Accepted `aud` values; when set, a token must carry one of them.
    pub audience: Vec<String>,
    /// Accepted `iss` values; when set, a token must carry one of them.
    pub issuer: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (at most 60 s; `"0s"` for none).
    pub leeway: Leeway,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secret: None,
            hmac_previous_secret: None,
            public_keys: Vec::new(),
            jwks: None,
            algorithms: Vec::new(),
            name_claim: "sub".into(),
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Leeway(Duration::from_secs(30)),
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    // The secrets are secrets: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("AuthConfig")
            .field("hmac_secret", &redacted(&self.hmac_secret))
            .field(
                "hmac_previous_secret",
                &redacted(&self.hmac_previous_secret),
            )
            .field("public_keys", &self.public_keys)
            .field("jwks", &self.jwks)
            .field("algorithms", &self.algorithms)
            .field("name_claim", &self.name_claim)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// The `[runtime]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Keep one worker polling for this long after traffic instead of
    /// parking (lower latency at low load, for CPU); absent: off. The
    /// spinner and its measurements are in the gateway's `busypoll` module.
    pub busy_poll: Option<ConfigDuration>,
}

/// The `[tls]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// How often certificate files are checked for changes (SIGHUP reloads at once).
    pub reload_interval: ConfigDuration,
}

/// How often certificate files are checked for changes.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            reload_interval: ConfigDuration(DEFAULT_TLS_RELOAD_INTERVAL),
        }
    }
}

/// One `[[listener]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Shown in logs, `/clients` and metrics; unique.
    pub name: String,
    /// Address to bind, e.g. `127.0.0.1:8080` or `[::]:80`.
    pub bind: SocketAddr,
    /// Security mode, see [`Mode`].
    #[serde(default)]
    pub mode: Mode,
    /// Path prefix under which WebSocket upgrades are accepted.
    #[serde(default)]
    pub path: PathPrefix,
    /// TLS certificate chain (PEM, leaf first); TLS modes only.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1); TLS modes only.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Client certificates: none, optional or required.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// CA that client certificates must chain to (mode `secure`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Where client names come from: `claimed` or `certificate`.
    #[serde(default)]
    pub identity: IdentitySource,
    /// Generate a development CA and server certificate at `cert`/`key`
    /// when they are missing (never overwrites).
    #[serde(default)]
    pub dev_certs: bool,
    /// Proxies whose `Forwarded`/`X-Forwarded-For`/`X-Real-IP` headers are
    /// believed (and, with `proxy_protocol`, who may send PROXY headers).
    #[serde(default)]
    pub trusted_proxies: TrustedProxies,
    /// The header a trusted proxy's client address is read from: `auto`
    /// (`Forwarded`, else `X-Forwarded-For`, else `X-Real-IP`),
    /// `forwarded`, `x-forwarded-for` or `x-real-ip`. Naming the one your
    /// proxy sets means a header a client forged and the proxy passed on
    /// is never believed.
    #[serde(default)]
    pub forwarded_header: ForwardedHeader,
    /// Every connection starts with a PROXY protocol v1 or v2 header.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Browser origins allowed to connect; when set, an `Origin` not listed
    /// is refused with 403 and names come from `?name=` only.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Serve the chat page at `path` to browsers (a `GET` without an
    /// upgrade); off where not set, on in the shipped config.
    #[serde(default)]
    pub web: bool,
}

impl ListenerConfig {
    /// The TLS keys fit the mode; origins are origins.
    fn check_tls(&self) -> Result<(), String> {
        if let Some(bad) = self
            .allowed_origins
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/'))
        {
            return Err(format!(
                "allowed_origins entry {bad:?} is not an origin: write scheme://host[:port], e.g. \"https://chat.example.com\""
            ));
        }
        let mode = self.mode.as_str();
        if !self.mode.is_tls() {
            let tls_only = [
                ("cert", self.cert.is_some()),
                ("key", self.key.is_some()),
                ("client_ca", self.client_ca.is_some()),
                ("client_auth", self.client_auth != ClientAuth::None),
                (
                    "identity = \"certificate\"",
                    self.identity == IdentitySource::Certificate,
                ),
                ("dev_certs", self.dev_certs),
            ];
            if let Some((key, _)) = tls_only.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "{key} is only for TLS modes (secure, accept-all, verify-none), not {mode}"
                ));
            }
            return Ok(());
        }
        if self.cert.is_none() || self.key.is_none() {
            return Err(format!("mode {mode} needs cert and key (PEM files)"));
        }
        match self.mode {
            Mode::Secure if self.client_auth != ClientAuth::None && self.client_ca.is_none() => {
                Err(format!("client_auth = \"{}\" needs client_ca, the CA that client certificates must chain to", self.client_auth.as_str()))
            }
            Mode::Secure if self.client_auth == ClientAuth::None && self.client_ca.is_some() => {
                Err("client_ca is set but client_auth is \"none\": say \"optional\" or \"required\"".into())
            }
            Mode::AcceptAll if self.client_ca.is_some() => {
                Err("accept-all does not verify client certificates, so client_ca would be ignored; use mode = \"secure\" to verify them".into())
            }
            Mode::VerifyNone if self.client_auth != ClientAuth::None || self.client_ca.is_some() => {
                Err("verify-none requests no client certificates; use secure or accept-all for client_auth".into())
            }
            _ if self.identity == IdentitySource::Certificate && self.client_auth == ClientAuth::None && self.mode != Mode::AcceptAll => {
                Err("identity = \"certificate\" needs client certificates: set client_auth".into())
            }
            _ => Ok(()),
        }
    }
}

/// The `[admin]` table.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Set to false to run without an operator API.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address of the operator API.
    #[serde(default = "default_admin_bind")]
    pub bind: SocketAddr,
    /// Bearer token; required when `bind` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
    /// Serve the operator console (a browser page) at `/`.
    #[serde(default = "default_true")]
    pub console: bool,
}

/// The `[limits]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest client message in bytes (close 1009 beyond it).
    pub max_message_size: NonZeroUsize,
    /// Frames queued for one receiver before it is closed with 1013.
    pub outbound_queue: NonZeroUsize,
    /// Sessions plus handshakes in progress, beyond which handshakes get 503;
    /// unset: the open-file limit less [`RESERVED_FILES`], at most
    /// [`AUTO_MAX_CONNECTIONS_CEILING`] (see [`LimitsConfig::max_connections`]).
    #[serde(rename = "max_connections")]
    pub max_connections_setting: Option<NonZeroUsize>,
    /// Time allowed for the HTTP upgrade.
    pub handshake_timeout: ConfigDuration,
    /// Interval between pings.
    pub ping_interval: ConfigDuration,
    /// Silence after which a peer is closed.
    pub idle_timeout: ConfigDuration,
    /// Bounded drain time at shutdown.
    pub shutdown_grace: ConfigDuration,
    /// Rooms one session may join.
    pub max_rooms_per_session: usize,
    /// Sessions from one client address (after proxy resolution); unset: no limit.
    pub max_connections_per_address: Option<NonZeroUsize>,
    /// Connections still in their handshakes (PROXY header, TLS, upgrade)
    /// at once; a new one beyond it evicts the one that has waited longest.
    /// Unset: half of `max_connections`.
    #[serde(rename = "max_pending_handshakes")]
    pub max_pending_handshakes_setting: Option<NonZeroUsize>,
    /// Data frames a session may send per second (0: no limit); over it a
    /// frame is dropped and answered with `rate limit exceeded`.
    pub messages_per_second: u32,
    /// Frames a session may send at once above that rate (0: the rate).
    pub message_burst: u32,
    /// Frames refused for the rate that a session may have within 10 s;
    /// one more closes it with 1008 `rate limit`.
    pub max_rate_refusals: u32,
    /// New connections a client address may open per second, counted at
    /// the upgrade (0, the default: no limit); over it, 503 with `Retry-After`.
    pub connection_rate_per_address: u32,
    /// Connections an address may open at once above that rate (0: the rate).
    pub connection_burst_per_address: u32,
}

/// What to do when a second session claims a name already connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicatePolicy {
    /// Refuse the newcomer with HTTP 409.
    #[default]
    Reject,
    /// Close the old session with 4000 "replaced" and admit the newcomer.
    Replace,
    /// Admit both; messages to the name reach every session of it.
    Allow,
}

/// The `[routing]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Duplicate-name policy.
    pub on_duplicate: DuplicatePolicy,
    /// Send `presence` notices to every client on each connect and disconnect.
    pub presence: bool,
}

/// The `[log]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `wssgate=debug`; `RUST_LOG` wins.
    pub level: LogLevel,
}

/// A `tracing` filter directive, checked when the config is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LogLevel(pub String);

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        tracing_subscriber::EnvFilter::try_new(&s)
            .map_err(|e| format!("invalid log level {s:?}: {e}"))?;
        Ok(LogLevel(s))
    }
}

/// A duration written as `"10s"`, `"500ms"` or `"2m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ConfigDuration(pub Duration);

/// A listener's path prefix: starts with `/`, no query, no fragment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PathPrefix(String);

/// A configuration that could not be loaded, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (not a `source`, so that it is printed once).
        reason: std::io::Error,
    },
    /// The file was read but a line in it is wrong.
    #[error("{path}:{line}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending value (0 if unknown).
        line: usize,
        /// One-line reason.
        reason: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<Range<usize>>, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: span.map_or(0, |s| line_of(text, s.start)),
            reason,
        };
        let config: Config =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().replace('\n', " ")))?;
        config
            .validate()
            .map_err(|(span, reason)| invalid(Some(span), reason))?;
        Ok(config)
    }

    /// The built-in defaults: one ws listener on 127.0.0.1:8080, admin on 127.0.0.1:9090.
    pub fn builtin() -> Config {
        toml::from_str("").unwrap_or_else(|_| unreachable!("an empty config uses only defaults"))
    }

    /// Rules across values; the error carries the span of the value to blame.
    fn validate(&self) -> Result<(), (Range<usize>, String)> {
        if self.listeners.is_empty() {
            return Err((0..0, "at least one [[listener]] is required".into()));
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            let l = listener.get_ref();
            if l.name.trim().is_empty() || l.name.chars().any(char::is_control) {
                return Err((
                    listener.span(),
                    "listener name must be non-empty text".into(),
                ));
            }
            for earlier in &self.listeners[..i] {
                let e = earlier.get_ref();
                if e.name == l.name {
                    return Err((
                        listener.span(),
                        format!("listener name {:?} is used twice", l.name),
                    ));
                }
                if e.bind == l.bind && l.bind.port() != 0 {
                    return Err((
                        listener.span(),
                        format!(
                            "listeners {:?} and {:?} both bind {}",
                            e.name, l.name, l.bind
                        ),
                    ));
                }
            }
            if let Err(reason) = l.check_tls() {
                return Err((listener.span(), format!("listener {:?}: {reason}", l.name)));
            }
        }
        let token_listener = self
            .listeners
            .iter()
            .find(|l| l.get_ref().identity == IdentitySource::Token);
        if let Err(reason) =
            crate::token::check_config(self.auth.get_ref(), token_listener.is_some())
        {
            let span = if self.auth.span().is_empty() {
                token_listener.map_or(0..0, Spanned::span)
            } else {
                self.auth.span()
            };
            return Err((span, reason));
        }
        let admin = self.admin.get_ref();
        if admin.enabled && !admin.bind.ip().is_loopback() && admin.token.is_none() {
            return Err((
                self.admin.span(),
                format!(
                    "admin listener {} is not on loopback: set [admin] token so the operator API is not open to the network",
                    admin.bind
                ),
            ));
        }
        if let Some(token) = admin.token.as_deref() {
            if token.chars().count() < 16 {
                return Err((
                    self.admin.span(),
                    "[admin] token must be at least 16 characters".into(),
                ));
            }
            // It travels in a header, where whitespace is trimmed and
            // control characters are not allowed: such a token could never
            // be presented, and 16 spaces are no secret.
            if !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err((
                    self.admin.span(),
                    "[admin] token must be printable ASCII without spaces".into(),
                ));
            }
        }
        if let Some(cluster) = &self.cluster
            && let Err(reason) = crate::cluster::check_config(cluster.get_ref())
        {
            return Err((cluster.span(), format!("[cluster] {reason}")));
        }
        let limits = self.limits.get_ref();
        if limits.idle_timeout.0 <= limits.ping_interval.0 {
            return Err((
                self.limits.span(),
                "[limits] idle_timeout must be longer than ping_interval".into(),
            ));
        }
        Ok(())
    }

    /// The listeners without their spans.
    pub fn listener_configs(&self) -> impl Iterator<Item = &ListenerConfig> {
        self.listeners.iter().map(Spanned::get_ref)
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn nonzero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or_else(|| unreachable!("default limits are not zero"))
}

/// A default value, spanning nothing (errors about it point at line 1).
fn unspanned<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}

fn default_true() -> bool {
    true
}

fn default_admin_bind() -> SocketAddr {
    parse_const_addr(DEFAULT_ADMIN_BIND)
}

fn parse_const_addr(addr: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or_else(|_| unreachable!("default addresses are valid literals"))
}

fn default_listeners() -> Vec<Spanned<ListenerConfig>> {
    vec![Spanned::new(
        0..0,
        ListenerConfig {
            name: "ws".into(),
            bind: parse_const_addr(DEFAULT_LISTENER_BIND),
            mode: Mode::NonSecure,
            path: PathPrefix::default(),
            cert: None,
            key: None,
            client_auth: ClientAuth::None,
            client_ca: None,
            identity: IdentitySource::Claimed,
            dev_certs: false,
            trusted_proxies: TrustedProxies::default(),
            forwarded_header: ForwardedHeader::Auto,
            proxy_protocol: false,
            allowed_origins: Vec::new(),
            web: false,
        },
    )]
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            bind: default_admin_bind(),
            token: None,
            console: true,
        }
    }
}

impl fmt::Debug for AdminConfig {
    /// The token is a secret: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("console", &self.console)
            .finish()
    }
}

impl LimitsConfig {
    /// The connection cap in force: the configured one, else what the
    /// process's open-file limit allows (read now: raise it first).
    pub fn max_connections(&self) -> usize {
        if let Some(n) = self.max_connections_setting {
            return n.get();
        }
        let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| {
            usize::try_from(soft).unwrap_or(usize::MAX)
        });
        soft.saturating_sub(RESERVED_FILES)
            .clamp(1, AUTO_MAX_CONNECTIONS_CEILING)
    }

    /// The budget of connections in their handshakes: the configured one,
    /// else half of [`LimitsConfig::max_connections`] (at least 1).
    pub fn max_pending_handshakes(&self) -> usize {
        self.max_pending_handshakes_setting
            .map_or_else(|| (self.max_connections() / 2).max(1), NonZeroUsize::get)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: nonzero(DEFAULT_MAX_MESSAGE_SIZE),
            outbound_queue: nonzero(DEFAULT_OUTBOUND_QUEUE),
            max_connections_setting: None,
            handshake_timeout: ConfigDuration(DEFAULT_HANDSHAKE_TIMEOUT),
            ping_interval: ConfigDuration(DEFAULT_PING_INTERVAL),
            idle_timeout: ConfigDuration(DEFAULT_IDLE_TIMEOUT),
            shutdown_grace: ConfigDuration(DEFAULT_SHUTDOWN_GRACE),
            max_rooms_per_session: DEFAULT_MAX_ROOMS_PER_SESSION,
            max_connections_per_address: None,
            max_pending_handshakes_setting: None,
            messages_per_second: DEFAULT_MESSAGES_PER_SECOND,
            message_burst: DEFAULT_MESSAGE_BURST,
            max_rate_refusals: DEFAULT_MAX_RATE_REFUSALS,
            connection_rate_per_address: 0,
            connection_burst_per_address: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel("info".into()),
        }
    }
}

/// A duration that may be zero (`[auth] leeway`), written like the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Leeway(pub Duration);

impl TryFrom<String> for Leeway {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        humantime::parse_duration(&s)
            .map(Leeway)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. \"30s\" or \"0s\""))
    }
}

impl TryFrom<String> for ConfigDuration {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let d = humantime::parse_duration(&s).map_err(|e| {
            format!("invalid duration {s:?} ({e}); write e.g. \"10s\" or \"500ms\"")
        })?;
        if d.is_zero() {
            return Err(format!("duration {s:?} must be greater than zero"));
        }
        Ok(ConfigDuration(d))
    }
}

impl Default for PathPrefix {
    fn default() -> Self {
        PathPrefix("/".into())
    }
}

impl PathPrefix {
    /// True when `path` (the request path, without query) is this prefix or under it.
    pub fn matches(&self, path: &str) -> bool {
        let prefix = self.0.trim_end_matches('/');
        match path.strip_prefix(prefix) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// What follows the prefix in a path it [`matches`](Self::matches):
    /// `""` or text starting with `/`.
    pub fn rest<'a>(&self, path: &'a str) -> &'a str {
        path.strip_prefix(self.0.trim_end_matches('/'))
            .unwrap_or(path)
    }

    /// The prefix as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PathPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("path {s:?} must start with '/'"));
        }
        if s.contains(['?', '#']) || s.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "path {s:?} may not contain '?', '#', spaces or control characters"
            ));
        }
        Ok(PathPrefix(s.to_owned()))
    }
}

impl TryFrom<String> for PathPrefix {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn error_of(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn builtin_defaults() {
        let c = Config::builtin();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].get_ref().bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin.get_ref().bind.to_string(), "127.0.0.1:9090");
        assert_eq!(c.limits.get_ref().max_message_size.get(), 65536);
        assert_eq!(c.routing.on_duplicate, DuplicatePolicy::Reject);
    }

    #[test]
    fn bad_values_name_file_and_line() {
        let cases = [
            (
                "[[listener]]\nname = \"a\"\nbind = \"nowhere\"\n",
                3,
                "invalid socket address",
            ),
            (
                "[limits]\nhandshake_timeout = \"soon\"\n",
                2,
                "invalid duration",
            ),
            (
                "[routing]\non_duplicate = \"merge\"\n",
                2,
                "unknown variant",
            ),
            ("\n[limits]\nmax_mesage_size = 10\n", 3, "unknown field"),
            ("[runtime]\nbusy_poll = \"soon\"\n", 2, "invalid duration"),
            (
                "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nforwarded_header = \"via\"\n",
                4,
                "unknown variant",
            ),
            ("[runtime]\nbusy_pol = \"1ms\"\n", 2, "unknown field"),
            (
                "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npath = \"chat\"\n",
                4,
                "must start with '/'",
            ),
            (
                "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nmode = \"sekure\"\n",
                4,
                "unknown variant",
            ),
            ("[admin]\nbind = \"0.0.0.0:9090\"\n", 1, "not on loopback"),
            ("# c\n[limits]\noutbound_queue = 0\n", 3, "nonzero"),
            ("[log]\nlevel = \"=\"\n", 2, "invalid log level"),
            (
                "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:2\"\n",
                4,
                "used twice",
            ),
        ];
        for (text, line, reason) in cases {
            let e = error_of(text);
            assert!(e.starts_with(&format!("test.toml:{line}: ")), "{e}");
            assert!(e.contains(reason), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn token_is_not_printed() {
        let c =
            parse("[admin]\nbind = \"0.0.0.0:9090\"\ntoken = \"s3cret-s3cret-s3cret\"\n").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn path_prefix_matching() {
        let p: PathPrefix = "/chat".parse().unwrap();
        assert!(p.matches("/chat"));
        assert!(p.matches("/chat/room"));
        assert!(!p.matches("/chatter"));
        assert!(!p.matches("/"));
        let root = PathPrefix::default();
        assert!(root.matches("/"));
        assert!(root.matches("/anything"));
    }
}
