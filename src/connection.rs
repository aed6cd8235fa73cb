//! One accepted connection, from its TCP stream to its session: the PROXY
//! header (on listeners that expect one), TLS (on TLS listeners), the HTTP
//! upgrade with admission, then the session as a task of its own.
//!
//! Every phase runs in the connection's own task, under one deadline
//! (`handshake_timeout`) and the shutdown token, so nothing in the accept
//! loop awaits a peer. The stream type is generic, so a TLS stream slots in
//! before the upgrade without touching the router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::{self, Admitted, PeerCert, Policy};
use crate::busypoll::BusyPoll;
use crate::caps::{
    AddressLimit, AddressSlot, ConnectionCap, PendingHandshakes, PendingSlot, Place,
};
use crate::cluster::Cluster;
use crate::config::{DEFAULT_MAX_REQUEST_HEAD, LimitsConfig, ListenerConfig};
use crate::events::{Event, Events};
use crate::handshake::{self, Head, Refusal, Upgrade};
use crate::metrics::{ErrorKind, ListenerMetrics, Metrics};
use crate::outbox::Outbox;
use crate::proxy::{self, Prefixed};
use crate::ratelimit::{AddressRate, SessionLimits};
use crate::router::{ClientInfo, Router};
use crate::session::{self, SessionRules, SessionTimers};
use crate::tls::ServerTls;
use crate::token::TokenKeys;
use crate::web;

/// Read buffer per connection: small, because most messages are small and
/// an idle connection should cost little.
const READ_BUFFER_SIZE: usize = 2 * 1024;
/// Bytes buffered before tungstenite writes to the socket on its own; the
/// session flushes after each batch anyway.
const WRITE_BUFFER_SIZE: usize = 16 * 1024;

/// What every connection of a gateway shares; one per gateway.
pub(crate) struct Shared {
    pub(crate) router: Arc<Router>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) events: Events,
    pub(crate) limits: LimitsConfig,
    /// Cancelled when shutdown begins: stop accepting, close sessions.
    pub(crate) shutdown: CancellationToken,
    /// Every connection and session task, so that shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// `[runtime] busy_poll`: the spinner sessions touch.
    pub(crate) busy_poll: Option<Arc<BusyPoll>>,
    ws_config: WebSocketConfig,
    connections: ConnectionCap,
    per_address: Arc<AddressLimit>,
    pending: Arc<PendingHandshakes>,
    /// `connection_rate_per_address`, when set.
    pub(crate) address_rate: Option<Arc<AddressRate>>,
    /// The cluster, with `[cluster]`.
    pub(crate) cluster: Option<Arc<Cluster>>,
}

impl Shared {
    /// The connection side of a gateway whose routing core is `router`.
    pub(crate) fn new(
        router: Arc<Router>,
        limits: LimitsConfig,
        busy_poll: Option<Arc<BusyPoll>>,
    ) -> Shared {
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_SIZE)
            .write_buffer_size(WRITE_BUFFER_SIZE)
            .max_message_size(Some(limits.max_message_size.get()))
            .max_frame_size(Some(limits.max_message_size.get()));
        Shared {
            metrics: router.metrics().clone(),
            events: router.events().clone(),
            router,
            connections: ConnectionCap::new(limits.max_connections()),
            per_address: Arc::new(AddressLimit::new(limits.max_connections_per_address)),
            pending: Arc::new(PendingHandshakes::new(limits.max_pending_handshakes())),
            address_rate: AddressRate::new(&limits).map(Arc::new),
            cluster: None,
            limits,
            ws_config,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            busy_poll,
        }
    }
}

/// One listener's identity, shared by its connections.
pub(crate) struct Listener {
    pub(crate) config: ListenerConfig,
    pub(crate) name: Arc<str>,
    metrics: ListenerMetrics,
    policy: Policy,
    tls: Option<Arc<ServerTls>>,
}

impl Listener {
    pub(crate) fn new(
        config: ListenerConfig,
        tls: Option<Arc<ServerTls>>,
        tokens: Option<Arc<TokenKeys>>,
        shared: &Shared,
    ) -> Self {
        Listener {
            name: config.name.as_str().into(),
            metrics: shared.metrics.listener(&config.name),
            policy: Policy::of(&config, tokens),
            config,
            tls,
        }
    }
}

/// One connection on its way to a session: what its phases need, in one
/// value. Dropping it gives back its place under the connection cap.
struct Connection {
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    /// The client's address: the TCP peer's, or the one its PROXY header names.
    peer: SocketAddr,
    /// Its place under the connection cap, held until its session ends.
    place: Place,
    /// Its place under `max_connections_per_address`, when its address was
    /// known at accept (see [`spawn`]); held until its session ends.
    address: Accounted,
    /// Its place among the pending handshakes (only under the cap); its
    /// token stops the handshake at shutdown or when it is evicted.
    pending: Option<PendingSlot>,
    /// Ends every handshake phase: the pending slot's token, else shutdown's.
    stop: CancellationToken,
    /// When every handshake phase together must be over.
    deadline: Instant,
    /// The client certificate, once TLS has run.
    cert: Option<PeerCert>,
}

/// How a connection stands with `max_connections_per_address`.
enum Accounted {
    /// Its address is known only after its PROXY header or request head
    /// (a trusted proxy's connection): counted at the upgrade.
    Later,
    /// Counted at accept: the place it holds (none without a limit).
    Counted(Option<AddressSlot>),
    /// Its address was at its limit at accept: it gets a 503.
    OverLimit,
}

/// Starts a task for a connection the accept loop just took, without
/// awaiting anything: over the cap, the connection still gets its 503 (after
/// TLS and the request head), unless too many are already waiting for one.
///
/// Where the client's address is the TCP peer's (no PROXY header expected,
/// the peer not a trusted proxy) it is counted under
/// `max_connections_per_address` here, before it takes a place under the
/// cap: an address at its limit is refused without ever holding one, so a
/// single peer with many silent sockets cannot fill the cap. A connection
/// under the cap also enters the pending handshakes, whose budget evicts the
/// longest-waiting handshake when full.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    listener: &Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let span = tracing::info_span!("conn", listener = %listener.name, peer = %peer, client = tracing::field::Empty);
    let config = &listener.config;
    let direct = !config.proxy_protocol && !config.trusted_proxies.contains(peer.ip());
    let address = if direct {
        match shared.per_address.acquire(peer.ip()) {
            Some(slot) => Accounted::Counted(slot),
            None => Accounted::OverLimit,
        }
    } else {
        Accounted::Later
    };
    let place = match address {
        Accounted::OverLimit => shared.connections.refuse(),
        _ => shared.connections.enter(),
    };
    let Some(place) = place else {
        shared.metrics.refusal(503);
        tracing::debug!(parent: &span, "over the connection limit; dropped");
        return;
    };
    let pending = place.is_admitted().then(|| {
        let (slot, evicted) = shared.pending.enter(&shared.shutdown);
        if evicted > 0 {
            shared.metrics.handshake_evictions(evicted);
            tracing::debug!(parent: &span, evicted, "pending handshakes over budget; evicted the longest-waiting");
        }
        slot
    });
    let stop = pending
        .as_ref()
        .map_or_else(|| shared.shutdown.child_token(), |p| p.stop.clone());
    let (shared, listener) = (shared.clone(), listener.clone());
    let tracker = shared.tracker.clone();
    let task = async move {
        // The handshake deadline starts with the task.
        let deadline = Instant::now() + shared.limits.handshake_timeout.0;
        let connection = Connection {
            shared,
            listener,
            peer,
            place,
            address,
            pending,
            stop,
            deadline,
            cert: None,
        };
        connection.run(stream).await;
    };
    tracker.spawn(task.instrument(span));
}

impl Connection {
    /// Every phase in order, each ending the connection when it fails.
    async fn run(mut self, stream: TcpStream) {
        if !self.listener.config.proxy_protocol {
            return self.terminate(stream).await;
        }
        if let Some((stream, source)) = self.proxy_header(stream).await {
            self.peer = source;
            self.terminate(stream).await;
        }
    }

    /// Reads the PROXY header a `proxy_protocol` listener expects; returns the
    /// stream after it and the client address it names (the peer's own for a
    /// `LOCAL` header). `None` when it is missing or the peer may not send one.
    async fn proxy_header(&self, stream: TcpStream) -> Option<(Prefixed<TcpStream>, SocketAddr)> {
        let (shared, peer) = (&self.shared, self.peer);
        let trusted = &self.listener.config.trusted_proxies;
        if !trusted.is_empty() && !trusted.contains(peer.ip()) {
            shared.metrics.error(ErrorKind::handshake);
            tracing::info!("PROXY header from a peer outside trusted_proxies; closing");
            return None;
        }
        let read = tokio::select! {
            biased;
            () = self.stop.cancelled() => return None,
            r = tokio::time::timeout_at(self.deadline, proxy::read_header(stream)) => r,
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
    async fn terminate<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(acceptor) = self.listener.tls.as_ref().map(|t| t.acceptor()) else {
            return self.upgrade(stream).await;
        };
        let accepted = tokio::select! {
            biased;
            () = self.stop.cancelled() => return,
            r = tokio::time::timeout_at(self.deadline, acceptor.accept(stream)) => r,
        };
        match accepted {
            Ok(Ok(tls_stream)) => {
                let certs = tls_stream.get_ref().1.peer_certificates();
                self.cert = PeerCert::of(self.listener.config.mode, certs);
                self.upgrade(tls_stream).await;
            }
            Ok(Err(e)) => {
                self.shared.metrics.error(ErrorKind::tls_handshake);
                tracing::info!(error = %e, "TLS handshake failed");
            }
            Err(_) => {
                self.shared.metrics.error(ErrorKind::handshake);
                tracing::debug!("TLS handshake timed out; dropping");
            }
        }
    }

    /// The HTTP upgrade on the (TLS-terminated) stream, admission, and the
    /// session. Over the connection cap it ends with 503.
    async fn upgrade<S>(mut self, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = &self.shared;
        let listener = &self.listener;
        let request = tokio::select! {
            biased;
            () = self.stop.cancelled() => return,
            result = tokio::time::timeout_at(self.deadline, self.read_upgrade(&mut stream)) => match result {
                Ok(Some(request)) => request,
                Ok(None) => return,
                Err(_) => {
                    shared.metrics.error(ErrorKind::handshake);
                    tracing::debug!("handshake timed out; dropping");
                    return;
                }
            },
        };
        let (
            upgrade,
            remote,
            Admitted {
                claim,
                expires,
                permissions,
            },
        ) = request;
        let address_slot = match std::mem::replace(&mut self.address, Accounted::Later) {
            Accounted::Counted(slot) => slot,
            // Refused in read_upgrade already; never here.
            Accounted::OverLimit => return,
            Accounted::Later => match admission::address_slot(&shared.per_address, remote.ip()) {
                Ok(slot) => slot,
                Err(refusal) => return refuse(shared, &mut stream, &refusal).await,
            },
        };
        let rx = Arc::new(Outbox::new(shared.limits.outbound_queue.get()));
        let tx = rx.clone();
        let info = ClientInfo {
            remote,
            listener: listener.name.clone(),
            tls: listener.config.mode.is_tls(),
            connected_at: SystemTime::now(),
        };
        let close = shared.shutdown.child_token();
        let admitted = match &shared.cluster {
            None => shared.router.admit(claim, info, tx, close),
            // Announced once the cluster's registry agreed too.
            Some(_) => shared.router.admit_unannounced(claim, info, tx, close),
        };
        let handle = match admitted {
            Ok(handle) => handle,
            Err(e) => return refuse(shared, &mut stream, &admission::router_refusal(e)).await,
        };
        if let Some(cluster) = &shared.cluster {
            // Boxed: only cluster nodes pay for this future in the task.
            // Within the handshake's time: a slow Redis is a refusal.
            let claimed =
                tokio::time::timeout_at(self.deadline, Box::pin(cluster.admit(&handle))).await;
            let refusal = match claimed {
                Ok(Ok(())) => None,
                Ok(Err(refusal)) => Some(refusal),
                Err(_) => Some(admission::cluster_timeout()),
            };
            if let Some(refusal) = refusal {
                shared.router.withdraw(&handle);
                // Whatever the claim got done is undone (by session id).
                Box::pin(cluster.session_ended(&handle, Vec::new())).await;
                return refuse(shared, &mut stream, &refusal).await;
            }
            shared.router.announce_join(&handle);
        }
        let accepted = tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            r = tokio::time::timeout_at(self.deadline, handshake::accept(&mut stream, &upgrade)) => Some(r),
        };
        let failed = match accepted {
            None => Some("handshake stopped before the upgrade response went out".to_owned()),
            Some(Ok(Ok(()))) => None,
            Some(Ok(Err(e))) => Some(format!("peer left during the upgrade: {e}")),
            Some(Err(_)) => Some("peer did not take the upgrade response in time".to_owned()),
        };
        if let Some(why) = failed {
            tracing::debug!(%why, "no session");
            shared.router.remove(&handle);
            if let Some(cluster) = &shared.cluster {
                Box::pin(cluster.session_ended(&handle, Vec::new())).await;
            }
            return;
        }
        // The handshakes are over: out of the pending budget.
        drop(self.pending.take());
        let leftover = upgrade.leftover;
        let name = handle.name();
        tracing::Span::current().record("client", tracing::field::display(&name));
        tracing::info!(client = %name, %remote, provisional = handle.is_provisional(), "connected");
        shared.events.publish(&Event::Connect {
            name: name.as_str(),
            remote,
            listener: &listener.name,
            tls: handle.info.tls,
            connected_at: handle.info.connected_at,
            provisional: handle.is_provisional(),
        });
        listener.metrics.open.inc();
        listener.metrics.total.inc();
        let ws = WebSocketStream::from_partially_read(
            stream,
            leftover,
            Role::Server,
            Some(shared.ws_config),
        )
        .await;
        let rules = SessionRules {
            timers: SessionTimers {
                ping_interval: shared.limits.ping_interval.0,
                idle_timeout: shared.limits.idle_timeout.0,
                close_grace: shared.limits.shutdown_grace.0,
                busy_poll: shared.busy_poll.clone(),
            },
            limits: SessionLimits::new(&shared.limits),
            expires,
            permissions,
            cluster: shared.cluster.clone(),
        };
        let open = listener.metrics.open.clone();
        let place = self.place;
        let session = session::run(ws, handle, rx, shared.router.clone(), rules, move || {
            open.dec();
            drop(address_slot);
            drop(place);
        });
        // The session runs as a task of its own: this one, with the state of the
        // TLS and HTTP handshakes (about 10 KiB), ends here and frees it.
        shared
            .tracker
            .spawn(session.instrument(tracing::Span::current()));
    }

    /// Reads the upgrade request and admits the name it claims; `None`
    /// after answering with an HTTP refusal (or when the peer went away).
    async fn read_upgrade<S>(&self, stream: &mut S) -> Option<(Upgrade, SocketAddr, Admitted)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = &self.listener.config;
        let web = config.web.then(|| &*web::CHAT);
        let head =
            match handshake::read_head(stream, DEFAULT_MAX_REQUEST_HEAD, &config.path, web).await {
                Ok(head) => head,
                Err(e) => {
                    tracing::debug!(error = %e, "no request");
                    return None;
                }
            };
        let upgrade = match head {
            Head::Upgrade(upgrade) => upgrade,
            // A health check of a listener at its cap: not healthy, so that
            // a load balancer sends new clients elsewhere.
            Head::Respond(refusal) if refusal.status == 200 && !self.place.is_admitted() => {
                refuse(&self.shared, stream, &admission::full()).await;
                return None;
            }
            Head::Respond(refusal) => {
                refuse(&self.shared, stream, &refusal).await;
                return None;
            }
            Head::Page(page) => {
                tracing::debug!(file = page.asset.file, fresh = page.fresh, "chat page file");
                let _ = handshake::respond_page(stream, &page).await;
                return None;
            }
            Head::Redirect(location) => {
                let _ = handshake::redirect(stream, &location).await;
                return None;
            }
        };
        if matches!(self.address, Accounted::OverLimit) {
            refuse(&self.shared, stream, &admission::address_over_limit()).await;
            return None;
        }
        let remote = proxy::client_addr(
            self.peer,
            &upgrade.forwarded,
            &config.trusted_proxies,
            config.forwarded_header,
        );
        // Before the token, origin and name checks: refused requests count.
        if let Some(rate) = &self.shared.address_rate
            && let Err(wait) = rate.check(remote.ip())
        {
            self.shared.metrics.error(ErrorKind::connection_rate);
            refuse(&self.shared, stream, &admission::connection_rate(wait)).await;
            return None;
        }
        let policy = &self.listener.policy;
        match policy.admit(&self.place, &upgrade, self.cert.as_ref()) {
            Ok(admitted) => Some((upgrade, remote, admitted)),
            Err(refusal) => {
                refuse(&self.shared, stream, &refusal).await;
                None
            }
        }
    }
}

/// Answers with `refusal` (counted and logged unless it is a 200, the
/// health check) and lets the connection end.
async fn refuse<S: AsyncWrite + Unpin>(shared: &Shared, stream: &mut S, refusal: &Refusal) {
    if refusal.status != 200 {
        shared.metrics.refusal(refusal.status);
        tracing::info!(status = refusal.status, reason = %refusal.reason, "handshake refused");
    }
    let _ = handshake::respond(stream, refusal).await;
}
