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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admin;
use crate::busypoll::BusyPoll;
use crate::certgen;
use crate::config::{Config, DEFAULT_MAX_REQUEST_HEAD, LimitsConfig, ListenerConfig};
use crate::events::{Event, Events};
use crate::handshake::{self, Head, Refusal};
use crate::identity::{self, Claim, ClientName};
use crate::metrics::{ErrorKind, ListenerMetrics, Metrics};
use crate::modes::{IdentitySource, Mode};
use crate::outbox::Outbox;
use crate::proxy::{self, Prefixed};
use crate::router::{AdmitError, ClientInfo, Router, RouterConfig};
use crate::session::{self, SessionTimers};
use crate::tls::{self, ServerTls, ServerTlsFiles, TlsError};

/// Read buffer per connection: small, because most messages are small and
/// an idle connection should cost little.
const READ_BUFFER_SIZE: usize = 2 * 1024;
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
}

/// A bound, not yet serving gateway.
pub struct Server {
    config: Config,
    listeners: Vec<(ListenerConfig, TcpListener, Option<Arc<ServerTls>>)>,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
}

/// What every connection task needs.
struct Shared {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    events: Events,
    limits: LimitsConfig,
    ws_config: WebSocketConfig,
    connections: Arc<Semaphore>,
    refusing: AtomicUsize,
    per_address: Arc<AddressLimit>,
    /// Cancelled when shutdown begins: stop accepting, close sessions.
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// `[runtime] busy_poll`: the spinner sessions touch.
    busy_poll: Option<Arc<BusyPoll>>,
}

/// One listener's identity, shared by its connections.
struct ListenerCtx {
    config: ListenerConfig,
    name: Arc<str>,
    metrics: ListenerMetrics,
    tls: Option<Arc<ServerTls>>,
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
            connections: Arc::new(Semaphore::new(limits.max_connections())),
            per_address: Arc::new(AddressLimit::new(limits.max_connections_per_address)),
            refusing: AtomicUsize::new(0),
            limits,
            ws_config,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            busy_poll: config
                .runtime
                .busy_poll
                .map(|window| Arc::new(BusyPoll::new(window.0))),
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
            .filter_map(|(c, l, _)| Some((c.name.clone(), l.local_addr().ok()?)))
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
        let mut reloadable = Vec::new();
        for (config, tcp, tls) in self.listeners {
            reloadable.extend(tls.clone());
            let ctx = Arc::new(ListenerCtx {
                name: config.name.as_str().into(),
                metrics: shared.metrics.listener(&config.name),
                config,
                tls,
            });
            tracing::info!(listener = %ctx.name, addr = %local(&tcp), mode = ctx.config.mode.as_str(), path = ctx.config.path.as_str(), "listening");
            shared.tracker.spawn(accept_loop(shared.clone(), ctx, tcp));
        }
        if !reloadable.is_empty() {
            let interval = self.config.tls.reload_interval.0;
            let reload = tls::reload_on_change(
                reloadable,
                interval,
                shared.events.clone(),
                shared.shutdown.clone(),
            );
            shared.tracker.spawn(reload);
        }
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
        if let Some(tcp) = self.admin {
            let api = admin::Api {
                router: shared.router.clone(),
                metrics: shared.metrics.clone(),
                events: shared.events.clone(),
                shutdown: shared.shutdown.clone(),
                max_body: shared.limits.max_message_size.get(),
                token: self.config.admin.get_ref().token.as_deref().map(Arc::from),
            };
            tracing::info!(addr = %local(&tcp), auth = api.token.is_some(), "admin API listening");
            shared.tracker.spawn(admin::serve(tcp, api));
        }
        shutdown.await;
        tracing::info!("shutting down: closing sessions with 1001");
        shared.events.publish(&Event::Shutdown);
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
            biased;
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
    let span = tracing::info_span!("conn", listener = %ctx.name, peer = %peer, client = tracing::field::Empty);
    // Over the cap, the connection still gets its 503 (after TLS and the
    // request head), unless too many are already waiting for one.
    let permit = match shared.connections.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) if shared.refusing.fetch_add(1, Ordering::Relaxed) < MAX_REFUSING => None,
        Err(_) => {
            shared.refusing.fetch_sub(1, Ordering::Relaxed);
            shared.metrics.refusal(503);
            tracing::debug!(parent: &span, "over the connection limit; dropped");
            return;
        }
    };
    let (shared, ctx) = (shared.clone(), ctx.clone());
    let tracker = shared.tracker.clone();
    tracker.spawn(
        async move {
            let refusing = permit.is_none();
            let deadline = Instant::now() + shared.limits.handshake_timeout.0;
            if ctx.config.proxy_protocol {
                if let Some((stream, source)) =
                    proxy_header(&shared, &ctx, stream, peer, deadline).await
                {
                    terminate(&shared, &ctx, stream, source, permit, deadline).await;
                }
            } else {
                terminate(&shared, &ctx, stream, peer, permit, deadline).await;
            }
            if refusing {
                shared.refusing.fetch_sub(1, Ordering::Relaxed);
            }
        }
        .instrument(span),
    );
}

/// Reads the PROXY header a `proxy_protocol` listener expects; returns the
/// stream after it and the client address it names (the peer's own for a
/// `LOCAL` header). `None` when it is missing or the peer may not send one.
async fn proxy_header(
    shared: &Shared,
    ctx: &ListenerCtx,
    stream: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<(Prefixed<TcpStream>, SocketAddr)> {
    let trusted = &ctx.config.trusted_proxies;
    if !trusted.is_empty() && !trusted.contains(peer.ip()) {
        shared.metrics.error(ErrorKind::handshake);
        tracing::info!("PROXY header from a peer outside trusted_proxies; closing");
        return None;
    }
    let read = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => return None,
        r = tokio::time::timeout_at(deadline, proxy::read_header(stream)) => r,
    };
    match read {
        Ok(Ok((source, stream))) => {
            let source = source.unwrap_or(peer);
            tracing::debug!(client_addr = %source, "PROXY header");
            Some((stream, source))
        }
        Ok(Err(e)) => {
            shared.metrics.error(ErrorKind::handshake);
            tracing::info!(error = %e, "connection without a valid PROXY header; closing");
            None
        }
        Err(_) => {
            shared.metrics.error(ErrorKind::handshake);
            tracing::debug!("PROXY header timed out; dropping");
            None
        }
    }
}

/// TLS (on a TLS listener), then the WebSocket connection.
async fn terminate<S>(
    shared: &Arc<Shared>,
    ctx: &ListenerCtx,
    stream: S,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    deadline: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(acceptor) = ctx.tls.as_ref().map(|t| t.acceptor()) else {
        return connection(shared, ctx, stream, peer, permit, deadline, None).await;
    };
    let accepted = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
    };
    match accepted {
        Ok(Ok(tls_stream)) => {
            let cert = PeerCert::of(ctx, tls_stream.get_ref().1.peer_certificates());
            connection(shared, ctx, tls_stream, peer, permit, deadline, cert).await;
        }
        Ok(Err(e)) => {
            shared.metrics.error(ErrorKind::tls_handshake);
            tracing::info!(error = %e, "TLS handshake failed");
        }
        Err(_) => {
            shared.metrics.error(ErrorKind::handshake);
            tracing::debug!("TLS handshake timed out; dropping");
        }
    }
}

/// Sessions per client address, under `max_connections_per_address`.
struct AddressLimit {
    limit: Option<std::num::NonZeroUsize>,
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One session's place in its address's count; released on drop.
struct AddressSlot {
    limits: Arc<AddressLimit>,
    ip: std::net::IpAddr,
}

impl AddressLimit {
    fn new(limit: Option<std::num::NonZeroUsize>) -> Self {
        AddressLimit {
            limit,
            counts: Default::default(),
        }
    }

    /// A slot for `ip`, or `None` when it has its limit of sessions.
    fn acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Option<AddressSlot>> {
        let Some(limit) = self.limit else {
            return Some(None);
        };
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit.get() {
            return None;
        }
        *count += 1;
        Some(Some(AddressSlot {
            limits: self.clone(),
            ip,
        }))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The client certificate of a TLS connection, as far as identity goes.
struct PeerCert {
    name: Option<String>,
    fingerprint: String,
}

impl PeerCert {
    fn of(
        ctx: &ListenerCtx,
        certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Option<PeerCert> {
        let leaf = certs?.first()?;
        let cert = PeerCert {
            name: wssgate_pki::certificate_name(leaf),
            fingerprint: wssgate_pki::fingerprint(leaf),
        };
        if ctx.config.mode == Mode::AcceptAll {
            tracing::info!(fingerprint = %cert.fingerprint, cert_name = ?cert.name, "client certificate accepted WITHOUT verification (accept-all)");
        } else {
            tracing::debug!(fingerprint = %cert.fingerprint, cert_name = ?cert.name, "client certificate verified");
        }
        Some(cert)
    }
}

async fn refuse<S: AsyncWrite + Unpin>(shared: &Shared, stream: &mut S, refusal: &Refusal) {
    if refusal.status != 200 {
        shared.metrics.refusal(refusal.status);
        tracing::info!(status = refusal.status, reason = %refusal.reason, "handshake refused");
    }
    let _ = handshake::respond(stream, refusal).await;
}

/// A connection from its (TLS-terminated) stream to the end of its session.
/// Without a permit it is over the connection cap: it gets 503.
async fn connection<S>(
    shared: &Arc<Shared>,
    ctx: &ListenerCtx,
    mut stream: S,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    deadline: Instant,
    cert: Option<PeerCert>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => return,
        result = tokio::time::timeout_at(deadline, read_upgrade(shared, ctx, &mut stream, permit.is_some(), cert.as_ref())) => match result {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(_) => {
                shared.metrics.error(ErrorKind::handshake);
                tracing::debug!("handshake timed out; dropping");
                return;
            }
        },
    };
    let (upgrade, claim) = request;
    let remote = proxy::client_addr(
        peer,
        &upgrade.forwarded,
        &ctx.config.trusted_proxies,
        ctx.config.forwarded_header,
    );
    let Some(address_slot) = shared.per_address.acquire(remote.ip()) else {
        let refusal = Refusal::new(
            503,
            "too many connections from this address: try again later",
        );
        refuse(shared, &mut stream, &refusal).await;
        return;
    };
    let rx = Arc::new(Outbox::new(shared.limits.outbound_queue.get()));
    let tx = rx.clone();
    let info = ClientInfo {
        remote,
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
    match tokio::time::timeout_at(deadline, handshake::accept(&mut stream, &upgrade)).await {
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
    tracing::info!(client = %name, %remote, provisional = handle.is_provisional(), "connected");
    shared.events.publish(&Event::Connect {
        name: name.as_str(),
        remote,
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
        busy_poll: shared.busy_poll.clone(),
    };
    let open = ctx.metrics.open.clone();
    let session = session::run(ws, handle, rx, shared.router.clone(), timers, move || {
        open.dec();
        drop(address_slot);
        drop(permit);
    });
    // The session runs as a task of its own: this one, with the state of the
    // TLS and HTTP handshakes (about 10 KiB), ends here and frees it.
    shared
        .tracker
        .spawn(session.instrument(tracing::Span::current()));
}

/// Reads and checks the upgrade request and the name it claims; `None`
/// after answering with an HTTP refusal (or when the peer went away).
async fn read_upgrade<S>(
    shared: &Shared,
    ctx: &ListenerCtx,
    stream: &mut S,
    admitted: bool,
    cert: Option<&PeerCert>,
) -> Option<(handshake::Upgrade, Claim)>
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
    if !admitted {
        let refusal = Refusal::new(503, "too many connections: try again later");
        refuse(shared, stream, &refusal).await;
        return None;
    }
    // With allowed_origins, Origin is a browser's origin, checked, and never a name.
    let origins = &ctx.config.allowed_origins;
    let name_origin = if origins.is_empty() {
        upgrade.origin.as_deref()
    } else {
        if let Some(origin) = upgrade.origin.as_deref() {
            let origin = identity::decode_header(origin);
            if !origins.iter().any(|o| o.eq_ignore_ascii_case(&origin)) {
                let refusal = Refusal::new(403, format!("origin not allowed: {origin}"));
                refuse(shared, stream, &refusal).await;
                return None;
            }
        }
        None
    };
    let claimed = identity::claim(upgrade.query.as_deref(), name_origin);
    let claim = match ctx.config.identity {
        IdentitySource::Claimed => claimed.map_err(|e| match e {
            // The usual hint ("send an Origin header") is wrong here.
            identity::NameError::Missing if !origins.is_empty() => Refusal::new(
                400,
                "missing name: add ?name= to the URL (on this listener Origin is checked against allowed_origins, never a name)",
            ),
            e => Refusal::new(400, e.to_string()),
        }),
        IdentitySource::Certificate => certificate_claim(cert, claimed),
    };
    match claim {
        Ok(claim) => Some((upgrade, claim)),
        Err(refusal) => {
            refuse(shared, stream, &refusal).await;
            None
        }
    }
}

/// With `identity = "certificate"`: the name is the certificate's; a claimed
/// name, if any, must be the same (or what Qt makes of it in `Origin`).
fn certificate_claim(
    cert: Option<&PeerCert>,
    claimed: Result<Claim, identity::NameError>,
) -> Result<Claim, Refusal> {
    let Some(cert) = cert else {
        return Err(Refusal::new(
            401,
            "a client certificate is required: this listener names clients by their certificate",
        ));
    };
    let Some(cert_name) = cert.name.as_deref() else {
        return Err(Refusal::new(
            403,
            format!(
                "the client certificate {} has no name (no DNS or URI SAN, no CN)",
                cert.fingerprint
            ),
        ));
    };
    let name = ClientName::new(cert_name).map_err(|e| {
        Refusal::new(
            403,
            format!("the client certificate's name {cert_name:?} is not usable: {e}"),
        )
    })?;
    match claimed {
        Ok(claim)
            if claim.name != name
                && !(claim.provisional
                    && identity::qt_latin1(cert_name) == claim.name.as_str()) =>
        {
            Err(Refusal::new(
                403,
                format!(
                    "claimed name {:?} differs from the certificate's name {cert_name:?}",
                    claim.name.as_str()
                ),
            ))
        }
        _ => Ok(Claim {
            name,
            provisional: false,
        }),
    }
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
