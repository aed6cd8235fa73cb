//! The gateway's lifecycle and its accept loops: bind every listener, start
//! the tasks (accept loops, certificate reload, busy polling, the operator
//! API), serve until shutdown, then close sessions and wait for every task.
//!
//! An accept loop only accepts: each connection's handshakes run in a task
//! of its own (the private `connection` module), so a slow peer never
//! holds up the next one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::admin;
use crate::busypoll::BusyPoll;
use crate::certgen;
use crate::cluster::{Cluster, ClusterError};
use crate::config::{Config, ListenerConfig};
use crate::connection::{self, Listener, Shared};
use crate::events::{Event, Events};
use crate::metrics::Metrics;
use crate::modes::IdentitySource;
use crate::reload::{self, Reload};
use crate::router::{Router, RouterConfig};
use crate::tls::{ServerTls, ServerTlsFiles, TlsError};
use crate::token::TokenKeys;
use crate::trim;

/// Pause after a failed `accept()` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("listener {listener:?}: cannot bind {addr}: {reason}")]
    Bind {
        /// Listener name (`admin` for the operator API).
        listener: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: std::io::Error,
    },
    /// A TLS listener's certificate, key or CA could not be loaded.
    #[error("listener {listener:?}: {error}")]
    Tls {
        /// Listener name.
        listener: String,
        /// What is wrong, with the file.
        error: TlsError,
    },
    /// Development certificates could not be generated.
    #[error("listener {listener:?}: dev_certs: {error}")]
    DevCerts {
        /// Listener name.
        listener: String,
        /// Why.
        error: certgen::CertGenError,
    },
    /// `[auth]` cannot verify tokens (a listener has `identity = "token"`).
    #[error("{0}")]
    Auth(String),
    /// `[cluster]`: Redis could not be reached (or its settings are wrong).
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// A read-only view of who is connected: what an embedding program or a
/// test may ask of the routing core without reaching into it.
#[derive(Clone)]
pub struct Roster(Arc<Router>);

impl Roster {
    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sorted, distinct names of the connected sessions, or of a room's
    /// members.
    pub fn names(&self, room: Option<&str>) -> Vec<String> {
        self.0.names(room)
    }
}

/// A bound, not yet serving gateway.
pub struct Server {
    config: Config,
    listeners: Vec<(ListenerConfig, TcpListener, Option<Arc<ServerTls>>)>,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    reload: Reload,
    /// The token keys, when a listener has `identity = "token"`.
    tokens: Option<Arc<TokenKeys>>,
}

impl Server {
    /// Binds every listener of `config` (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let mut listeners = Vec::new();
        for l in config.listener_configs() {
            let tls = server_tls(l)?.map(Arc::new);
            let tcp = bind(&l.name, l.bind).await?;
            listeners.push((l.clone(), tcp, tls));
        }
        let tokens = if config
            .listener_configs()
            .any(|l| l.identity == IdentitySource::Token)
        {
            Some(Arc::new(
                TokenKeys::load(config.auth.get_ref()).map_err(StartError::Auth)?,
            ))
        } else {
            None
        };
        let admin_config = config.admin.get_ref();
        let admin = if admin_config.enabled {
            Some(bind("admin", admin_config.bind).await?)
        } else {
            None
        };
        let router = Arc::new(Router::new(
            RouterConfig {
                on_duplicate: config.routing.on_duplicate,
                presence: config.routing.presence,
                max_rooms_per_session: config.limits.get_ref().max_rooms_per_session,
            },
            Arc::new(Metrics::new()),
            Events::new(),
        ));
        let busy_poll = config
            .runtime
            .busy_poll
            .map(|window| Arc::new(BusyPoll::new(window.0)));
        let mut shared = Shared::new(router, config.limits.get_ref().clone(), busy_poll);
        if let Some(cluster) = &config.cluster {
            shared.cluster = Some(
                Cluster::start(
                    cluster.get_ref(),
                    shared.limits.max_message_size.get(),
                    shared.router.clone(),
                    &shared.metrics,
                    &shared.tracker,
                    shared.shutdown.clone(),
                )
                .await?,
            );
        }
        let shared = Arc::new(shared);
        Ok(Server {
            config,
            listeners,
            admin,
            shared,
            reload: Reload::default(),
            tokens,
        })
    }

    /// The bound WebSocket listeners: name and address.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(c, l, _)| Some((c.name.clone(), l.local_addr().ok()?)))
            .collect()
    }

    /// The bound admin address, if the operator API is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle that asks this gateway, once running, to reload its
    /// certificates (`wssgate serve` uses it on SIGHUP).
    pub fn reload_handle(&self) -> Reload {
        self.reload.clone()
    }

    /// Who is connected, read-only (for embedding and tests).
    pub fn roster(&self) -> Roster {
        Roster(self.shared.router.clone())
    }

    /// Serves until `shutdown` resolves, then stops accepting, closes every
    /// session with 1001, lets queued frames drain for `shutdown_grace`, and
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        let mut reloadable = Vec::new();
        for (config, tcp, tls) in self.listeners {
            reloadable.extend(tls.clone());
            let tokens = (config.identity == IdentitySource::Token)
                .then(|| self.tokens.clone())
                .flatten();
            let listener = Arc::new(Listener::new(config, tls, tokens, &shared));
            tracing::info!(listener = %listener.name, addr = %local(&tcp), mode = listener.config.mode.as_str(), path = listener.config.path.as_str(), "listening");
            shared
                .tracker
                .spawn(accept_loop(shared.clone(), listener, tcp));
        }
        // Always running: a reload request must never be what stops the
        // gateway, TLS listeners or not.
        shared.tracker.spawn(reload::run(
            reloadable,
            self.tokens.clone(),
            self.config.tls.reload_interval.0,
            self.reload.clone(),
            shared.events.clone(),
            shared.shutdown.clone(),
        ));
        if let Some(busy) = shared.busy_poll.clone() {
            let window = self
                .config
                .runtime
                .busy_poll
                .map(|w| w.0)
                .unwrap_or_default();
            tracing::info!(window = ?window, "busy polling: a worker keeps polling for this long after traffic (CPU for latency)");
            let stop = shared.shutdown.clone();
            shared.tracker.spawn(async move { busy.run(stop).await });
        }
        shared
            .tracker
            .spawn(trim::run(shared.router.clone(), shared.shutdown.clone()));
        if let Some(rate) = shared.address_rate.clone() {
            shared.tracker.spawn(rate.sweep(shared.shutdown.clone()));
        }
        if let Some(tcp) = self.admin {
            let api = admin::Api {
                router: shared.router.clone(),
                metrics: shared.metrics.clone(),
                events: shared.events.clone(),
                shutdown: shared.shutdown.clone(),
                max_body: shared.limits.max_message_size.get(),
                token: self.config.admin.get_ref().token.as_deref().map(Arc::from),
                console: self.config.admin.get_ref().console,
                cluster: shared.cluster.clone(),
            };
            tracing::info!(addr = %local(&tcp), auth = api.token.is_some(), "admin API listening");
            shared.tracker.spawn(admin::serve(tcp, api));
        }
        shutdown.await;
        tracing::info!("shutting down: closing sessions with 1001");
        shared.events.publish(&Event::Shutdown);
        // Every session's close is the shutdown's (1001), whatever else
        // happens while they close; then the listeners and tasks stop.
        shared.router.shut_down();
        shared.shutdown.cancel();
        shared.tracker.close();
        let grace = shared.limits.shutdown_grace.0 + Duration::from_secs(1);
        if tokio::time::timeout(grace, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tracker.len(),
                "shutdown grace over; dropping what is left"
            );
        }
        tracing::info!("stopped");
    }
}

fn local(tcp: &TcpListener) -> String {
    tcp.local_addr()
        .map_or_else(|e| format!("<{e}>"), |a| a.to_string())
}

/// Connections the kernel holds for a listener before `accept` (capped by
/// `net.core.somaxconn`). tokio's default, 1,024, overflows when thousands
/// of clients come back at once after an outage, and a dropped SYN costs
/// the client a retransmission backoff of seconds.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(listener: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let bound = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As TcpListener::bind does: a restart may bind while old
        // connections linger in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bound().map_err(|reason| StartError::Bind {
        listener: listener.to_owned(),
        addr,
        reason,
    })
}

async fn accept_loop(shared: Arc<Shared>, listener: Arc<Listener>, tcp: TcpListener) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            accepted = tcp.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                connection::spawn(&shared, &listener, stream, peer);
            }
            Err(e) => {
                tracing::warn!(listener = %listener.name, error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    tracing::debug!(listener = %listener.name, "stopped accepting");
}

/// The TLS state of a listener: `None` for plain ws. Generates development
/// certificates first when the listener asks for them and they are missing.
fn server_tls(l: &ListenerConfig) -> Result<Option<ServerTls>, StartError> {
    let Some(files) = ServerTlsFiles::of(l) else {
        return Ok(None);
    };
    if l.dev_certs {
        certgen::dev_certs_for(&l.name, &files.cert, &files.key).map_err(|error| {
            StartError::DevCerts {
                listener: l.name.clone(),
                error,
            }
        })?;
    }
    files.warn_if_dangerous();
    ServerTls::load(files)
        .map(Some)
        .map_err(|error| StartError::Tls {
            listener: l.name.clone(),
            error,
        })
}

/// Starts a gateway from a config and serves until `shutdown` resolves.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let server = Server::bind(config).await?;
    server.run(shutdown).await;
    Ok(())
}
