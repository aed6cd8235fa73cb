//! Listeners: bind, accept, the HTTP upgrade with identity and limits, and a
//! session per admitted connection; plus the whole server's lifecycle
//! (start, serve, graceful shutdown).
//!
//! Nothing in an accept loop awaits a peer: each connection's handshake runs
//! in its own task under `handshake_timeout`. The stream type is generic, so
//! a TLS stream slots in before the upgrade without touching the router.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin;
use crate::config::{Config, DEFAULT_MAX_REQUEST_HEAD, LimitsConfig, ListenerConfig};
use crate::events::{Event, Events};
use crate::handshake::{self, Head, Refusal};
use crate::identity;
use crate::metrics::{ErrorKind, ListenerMetrics, Metrics};
use crate::router::{AdmitError, ClientInfo, Router, RouterConfig};
use crate::session::{self, SessionTimers};

/// Read buffer per connection: small, because most messages are small and
/// an idle connection should cost little.
const READ_BUFFER_SIZE: usize = 4 * 1024;
/// Bytes buffered before tungstenite writes to the socket on its own; the
/// session flushes after each batch anyway.
const WRITE_BUFFER_SIZE: usize = 16 * 1024;
/// Pause after a failed `accept()` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections over the cap that may wait for their 503 at once; beyond
/// this, excess connections are dropped without an answer.
const MAX_REFUSING: usize = 1024;

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
}

/// A bound, not yet serving gateway.
pub struct Server {
    config: Config,
    listeners: Vec<(ListenerConfig, TcpListener)>,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
}

/// What every connection task needs.
pub(crate) struct Shared {
    pub(crate) router: Arc<Router>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) events: Events,
    pub(crate) limits: LimitsConfig,
    ws_config: WebSocketConfig,
    connections: Arc<Semaphore>,
    refusing: AtomicUsize,
    /// Cancelled when shutdown begins: stop accepting, close sessions.
    pub(crate) shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// One listener's identity, shared by its connections.
struct ListenerCtx {
    config: ListenerConfig,
    name: Arc<str>,
    metrics: ListenerMetrics,
}

impl Server {
    /// Binds every listener of `config` (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let mut listeners = Vec::new();
        for l in config.listener_configs() {
            let tcp = bind(&l.name, l.bind).await?;
            listeners.push((l.clone(), tcp));
        }
        let admin_config = config.admin.get_ref();
        let admin = if admin_config.enabled {
            Some(bind("admin", admin_config.bind).await?)
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new());
        let events = Events::new();
        let router = Arc::new(Router::new(
            RouterConfig {
                on_duplicate: config.routing.on_duplicate,
                presence: config.routing.presence,
                max_rooms_per_session: config.limits.get_ref().max_rooms_per_session,
            },
            metrics.clone(),
            events.clone(),
        ));
        let limits = config.limits.get_ref().clone();
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_SIZE)
            .write_buffer_size(WRITE_BUFFER_SIZE)
            .max_message_size(Some(limits.max_message_size.get()))
            .max_frame_size(Some(limits.max_message_size.get()));
        let shared = Arc::new(Shared {
            router,
            metrics,
            events,
            connections: Arc::new(Semaphore::new(limits.max_connections.get())),
            refusing: AtomicUsize::new(0),
            limits,
            ws_config,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        Ok(Server {
            config,
            listeners,
            admin,
            shared,
        })
    }

    /// The bound WebSocket listeners: name and address.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(c, l)| Some((c.name.clone(), l.local_addr().ok()?)))
            .collect()
    }

    /// The bound admin address, if the operator API is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The routing core (for embedding and tests).
    pub fn router(&self) -> Arc<Router> {
        self.shared.router.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, closes every
    /// session with 1001, lets queued frames drain for `shutdown_grace`, and
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        for (config, tcp) in self.listeners {
            let ctx = Arc::new(ListenerCtx {
                name: config.name.as_str().into(),
                metrics: shared.metrics.listener(&config.name),
                config,
            });
            tracing::info!(listener = %ctx.name, addr = %local(&tcp), mode = ctx.config.mode.as_str(), path = ctx.config.path.as_str(), "listening");
            shared.tracker.spawn(accept_loop(shared.clone(), ctx, tcp));
        }
        if let Some(tcp) = self.admin {
            let token = self.config.admin.get_ref().token.clone();
            tracing::info!(addr = %local(&tcp), auth = token.is_some(), "admin API listening");
            shared
                .tracker
                .spawn(admin::serve(tcp, shared.clone(), token));
        }
        shutdown.await;
        tracing::info!("shutting down: closing sessions with 1001");
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

async fn bind(listener: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|reason| StartError::Bind {
            listener: listener.to_owned(),
            addr,
            reason,
        })
}

async fn accept_loop(shared: Arc<Shared>, ctx: Arc<ListenerCtx>, tcp: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = tcp.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(&shared, &ctx, stream, peer);
            }
            Err(e) => {
                tracing::warn!(listener = %ctx.name, error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    tracing::debug!(listener = %ctx.name, "stopped accepting");
}

fn spawn_connection(
    shared: &Arc<Shared>,
    ctx: &Arc<ListenerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let span = tracing::info_span!("conn", listener = %ctx.name, remote = %peer);
    match shared.connections.clone().try_acquire_owned() {
        Ok(permit) => {
            let (shared2, ctx) = (shared.clone(), ctx.clone());
            shared.tracker.spawn(
                async move {
                    connection(&shared2, &ctx, stream, peer).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
        Err(_) => {
            if shared.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
                shared.refusing.fetch_sub(1, Ordering::Relaxed);
                shared.metrics.refusal(503);
                tracing::debug!(parent: &span, "over the connection limit; dropped");
                return;
            }
            let (shared2, ctx) = (shared.clone(), ctx.clone());
            shared.tracker.spawn(
                async move {
                    let refusal = Refusal::new(503, "too many connections: try again later");
                    refuse_after_head(&shared2, &ctx, stream, refusal).await;
                    shared2.refusing.fetch_sub(1, Ordering::Relaxed);
                }
                .instrument(span),
            );
        }
    }
}

/// Reads the request head (so the client sees an HTTP answer), then refuses.
async fn refuse_after_head(
    shared: &Shared,
    ctx: &ListenerCtx,
    mut stream: TcpStream,
    refusal: Refusal,
) {
    let limit = shared.limits.handshake_timeout.0;
    let _ = tokio::time::timeout(limit, async {
        if handshake::read_head(&mut stream, DEFAULT_MAX_REQUEST_HEAD, &ctx.config.path)
            .await
            .is_ok()
        {
            refuse(shared, &mut stream, &refusal).await;
        }
    })
    .await;
}

async fn refuse<S: AsyncWrite + Unpin>(shared: &Shared, stream: &mut S, refusal: &Refusal) {
    if refusal.status != 200 {
        shared.metrics.refusal(refusal.status);
        tracing::info!(status = refusal.status, reason = %refusal.reason, "handshake refused");
    }
    let _ = handshake::respond(stream, refusal).await;
}

/// A connection from accept to the end of its session.
async fn connection<S>(shared: &Arc<Shared>, ctx: &ListenerCtx, mut stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = shared.limits.handshake_timeout.0;
    let request = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        result = tokio::time::timeout(limit, read_upgrade(shared, ctx, &mut stream)) => match result {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(_) => {
                shared.metrics.error(ErrorKind::handshake);
                tracing::debug!(timeout = ?limit, "handshake timed out; dropping");
                return;
            }
        },
    };
    let (upgrade, claim) = request;
    let (tx, rx) = mpsc::channel(shared.limits.outbound_queue.get());
    let info = ClientInfo {
        remote: peer,
        listener: ctx.name.clone(),
        tls: ctx.config.mode.is_tls(),
        connected_at: SystemTime::now(),
    };
    let handle = match shared
        .router
        .admit(claim, info, tx, shared.shutdown.child_token())
    {
        Ok(handle) => handle,
        Err(e @ AdmitError::Duplicate(_)) => {
            refuse(shared, &mut stream, &Refusal::new(409, e.to_string())).await;
            return;
        }
    };
    match tokio::time::timeout(limit, handshake::accept(&mut stream, &upgrade)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "peer left during the upgrade");
            shared.router.remove(&handle);
            return;
        }
        Err(_) => {
            tracing::debug!("peer did not take the upgrade response in time");
            shared.router.remove(&handle);
            return;
        }
    }
    let leftover = upgrade.leftover;
    let name = handle.name();
    tracing::Span::current().record("client", tracing::field::display(&name));
    tracing::info!(client = %name, remote = %peer, provisional = handle.is_provisional(), "connected");
    shared.events.publish(&Event::Connect {
        name: name.as_str(),
        remote: peer,
        listener: &ctx.name,
    });
    ctx.metrics.open.inc();
    ctx.metrics.total.inc();
    let ws = WebSocketStream::from_partially_read(
        stream,
        leftover,
        Role::Server,
        Some(shared.ws_config),
    )
    .await;
    let timers = SessionTimers {
        ping_interval: shared.limits.ping_interval.0,
        idle_timeout: shared.limits.idle_timeout.0,
        close_grace: shared.limits.shutdown_grace.0,
    };
    session::run(ws, handle, rx, shared.router.clone(), timers).await;
    ctx.metrics.open.dec();
}

/// Reads and checks the upgrade request and the name it claims; `None`
/// after answering with an HTTP refusal (or when the peer went away).
async fn read_upgrade<S>(
    shared: &Shared,
    ctx: &ListenerCtx,
    stream: &mut S,
) -> Option<(handshake::Upgrade, identity::Claim)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match handshake::read_head(stream, DEFAULT_MAX_REQUEST_HEAD, &ctx.config.path).await
    {
        Ok(head) => head,
        Err(e) => {
            tracing::debug!(error = %e, "no request");
            return None;
        }
    };
    let upgrade = match head {
        Head::Upgrade(upgrade) => upgrade,
        Head::Respond(refusal) => {
            refuse(shared, stream, &refusal).await;
            return None;
        }
    };
    match identity::claim(upgrade.query.as_deref(), upgrade.origin.as_deref()) {
        Ok(claim) => Some((upgrade, claim)),
        Err(e) => {
            refuse(shared, stream, &Refusal::new(400, e.to_string())).await;
            None
        }
    }
}

/// Starts a gateway from a config and serves until `shutdown` resolves.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let server = Server::bind(config).await?;
    server.run(shutdown).await;
    Ok(())
}
