//! One admitted connection: a single task that reads client frames and hands
//! them to the router, writes what the router queued for it (every ready
//! frame, then one flush), pings, and closes with the right code.
//!
//! One task rather than a reader and a writer keeps an idle session small;
//! every `select!` arm is cancel-safe (`next()` on the stream, `recv()` on the
//! queue, a tick, a cancellation), and the write phase watches the close
//! token so that a peer that never reads cannot hold the task.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::outbox::{Next, Outbox};
use crate::presence::{Backlog, RESYNC_INTERVAL};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, MissedTickBehavior, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use crate::busypoll::BusyPoll;
use crate::close::Close;
use crate::cluster::Cluster;
use crate::events::Event;
use crate::identity::ClientName;
use crate::metrics::{ErrorKind, RouteKind};
use crate::protocol::{self, Envelope, Forward, Request};
use crate::ratelimit::{SessionLimits, Verdict};
use crate::router::{Delivery, RouteCache, Router, SessionHandle};
use crate::token::Permissions;
use prometheus_client::metrics::counter::Counter;
use serde_json::value::RawValue;
use wssgate_wire::Notice;
use wssgate_wire::notice;

/// Frames written per flush at most, so one busy queue cannot starve reading.
const MAX_BATCH: usize = 64;
/// Time a slow consumer or a silent peer is given for its close reply,
/// once the close frame is written.
const SLOW_CLOSE_TIMEOUT: Duration = Duration::from_millis(100);

/// Timers of a session.
#[derive(Debug, Clone)]
pub struct SessionTimers {
    /// Interval between pings.
    pub ping_interval: Duration,
    /// Silence after which the peer is closed.
    pub idle_timeout: Duration,
    /// Drain time when closing.
    pub close_grace: Duration,
    /// The gateway's spinner, told of every frame read (`[runtime] busy_poll`).
    pub busy_poll: Option<Arc<BusyPoll>>,
}

/// What a session's frames are held to beyond its timers.
pub struct SessionRules {
    /// The timers.
    pub timers: SessionTimers,
    /// Its rate limits, if `[limits] messages_per_second` is not 0.
    pub limits: Option<SessionLimits>,
    /// When its token expires (`identity = "token"`): closed then with 1008.
    pub expires: Option<SystemTime>,
    /// What its token allows, when it restricts anything.
    pub permissions: Option<Box<Permissions>>,
    /// The cluster, with `[cluster]`: what is not for this node goes there.
    pub cluster: Option<Arc<Cluster>>,
}

/// Why a session ended, for the disconnect log line.
#[derive(Debug)]
enum End {
    ClientClosed,
    Gone(String),
    Closed(Close),
}

/// Runs a session to its end: the handle is removed from the router, the
/// socket closed, `on_end` called (so that gauges are right before anyone
/// hears of it), and the disconnect logged and published.
pub async fn run<S>(
    mut ws: WebSocketStream<S>,
    handle: Arc<SessionHandle>,
    rx: Arc<Outbox>,
    router: Arc<Router>,
    rules: SessionRules,
    on_end: impl FnOnce() + Send,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let SessionRules {
        timers,
        limits,
        expires,
        permissions,
        cluster,
    } = rules;
    let permissions = permissions.as_deref();
    // Boxed, and only for token sessions: a timer in every session's
    // state would cost every idle connection its size.
    let mut expiry = expires.map(|at| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Box::pin(tokio::time::sleep(left))
    });
    let counters = Counters::new(&router);
    let mut routes = RouteCache::default();
    let mut ping =
        tokio::time::interval_at(Instant::now() + timers.ping_interval, timers.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heard = false;
    let mut silent = Duration::ZERO;
    // A write still pending after this many ticks means the peer stopped
    // reading: it is closed like a slow consumer.
    let stall_ticks = timers
        .idle_timeout
        .as_nanos()
        .div_ceil(timers.ping_interval.as_nanos().max(1))
        .max(1);

    let mut resync = Resync::default();

    let end = loop {
        tokio::select! {
            biased;
            () = handle.closed() => break ordered_end(&handle),
            // Before the queue: a busy session must not outlive its token.
            () = async { if let Some(e) = expiry.as_mut() { e.as_mut().await } }, if expiry.is_some() => {
                break End::Closed(Close::TokenExpired);
            }
            Some(next) = rx.pop() => {
                let result = match next {
                    Next::Frame(first) => {
                        let batch = write_batch(&mut ws, first, &rx);
                        guarded(batch, &handle, &mut ping, stall_ticks).await
                    }
                    Next::Presence => {
                        let frames = presence_frames(&router, &handle, &mut resync, cluster.as_deref());
                        // Boxed: inline, this rare write would grow every
                        // idle session's task by its size (measured: 120
                        // bytes per idle connection).
                        let write = Box::pin(write_all(&mut ws, frames));
                        guarded(write, &handle, &mut ping, stall_ticks).await
                    }
                };
                if let Err(end) = result {
                    break end;
                }
            }
            () = resync.wait() => {
                resync.retry = None;
                rx.mark_presence();
            }
            frame = ws.next() => {
                if let Some(busy) = &timers.busy_poll {
                    busy.touch();
                }
                heard = true;
                let Some(frame) = frame else { break End::Gone("connection closed without a close frame".into()) };
                let verdict = match (&frame, &limits) {
                    (Ok(Message::Text(_) | Message::Binary(_)), Some(limits)) => limits.check(),
                    _ => Verdict::Pass,
                };
                match verdict {
                    Verdict::Pass => {}
                    Verdict::Refuse => {
                        rate_refused(&router, &handle, &frame);
                        continue;
                    }
                    Verdict::Close => {
                        rate_refused(&router, &handle, &frame);
                        break End::Closed(Close::RateLimit);
                    }
                }
                match frame {
                    Ok(Message::Text(text)) => {
                        // Only the boxed step is held across the await: every
                        // session's state holds a pointer, not a step.
                        if let Some(step) = text_frame(&router, &handle, &counters, &mut routes, permissions, cluster.as_ref(), text) {
                            step.await;
                        }
                    }
                    Ok(Message::Binary(data)) => {
                        if let Some(cluster) = cluster.as_ref().filter(|_| handle.unanswered() > 0) {
                            // In order: after the earlier messages' errors.
                            Box::pin(cluster.fence()).await;
                        }
                        on_binary(&router, &handle, &counters, permissions, &data);
                    }
                    Ok(Message::Ping(_)) => {
                        // tungstenite queued the pong; send it now.
                        if let Err(end) = guarded(ws.flush(), &handle, &mut ping, stall_ticks).await {
                            break end;
                        }
                    }
                    Ok(Message::Pong(_) | Message::Frame(_)) => {}
                    Ok(Message::Close(_)) => {
                        // tungstenite queued the close reply; flushing sends it.
                        let _ = ws.flush().await;
                        break End::ClientClosed;
                    }
                    Err(e) => break on_read_error(&router, &handle, e),
                }
            }
            _ = ping.tick() => {
                silent = if heard { Duration::ZERO } else { silent + timers.ping_interval };
                heard = false;
                if silent >= timers.idle_timeout {
                    router.metrics().error(ErrorKind::idle_timeout);
                    break End::Closed(Close::Idle);
                }
                let ping_frame = ws.send(Message::Ping(Bytes::new()));
                if let Err(end) = guarded(ping_frame, &handle, &mut ping, stall_ticks).await {
                    break end;
                }
            }
        }
    };

    match &cluster {
        Some(cluster) => {
            let rooms = router.rooms_of(&handle);
            router.remove(&handle);
            // The cluster's part as a task of its own: nothing of it is
            // held in every session's state, and the close is not delayed.
            let (cluster, handle) = (cluster.clone(), handle.clone());
            tokio::spawn(async move { cluster.session_ended(&handle, rooms).await });
        }
        None => router.remove(&handle),
    }
    let name = handle.name();
    let remote = handle.info.remote;
    let reason = match &end {
        End::ClientClosed => "client closed".to_owned(),
        End::Gone(why) => why.clone(),
        End::Closed(why) => format!(
            "closed by gateway: {} {}",
            why.code().code(),
            handle.close_reason(*why)
        ),
    };
    if let End::Closed(why) = end {
        let reason = handle.close_reason(why);
        close(&mut ws, &rx, why, reason, timers.close_grace).await;
    }
    on_end();
    tracing::info!(client = %name, %remote, %reason, "disconnected");
    router.events().publish(&Event::Disconnect {
        name: name.as_str(),
        remote,
        reason: &reason,
    });
}

/// Runs one write while watching for a close order and for a peer that
/// stopped reading (the write still pending after `stall_ticks` pings).
/// Without this, a peer that never reads would hold the task in a write
/// forever, deaf to closes and to the idle timer.
async fn guarded<F>(
    write: F,
    handle: &SessionHandle,
    ping: &mut tokio::time::Interval,
    stall_ticks: u128,
) -> Result<(), End>
where
    F: std::future::Future<Output = Result<(), WsError>>,
{
    tokio::pin!(write);
    let mut ticks = 0;
    loop {
        tokio::select! {
            biased;
            () = handle.closed() => return Err(ordered_end(handle)),
            result = &mut write => {
                return result.map_err(|e| End::Gone(format!("write failed: {e}")));
            }
            _ = ping.tick() => {
                ticks += 1;
                if ticks >= stall_ticks {
                    handle.close_with(Close::SlowConsumer);
                    return Err(End::Closed(Close::SlowConsumer));
                }
            }
        }
    }
}

/// The end chosen by whoever cancelled the session: its order, or the
/// shutdown when nobody gave one.
fn ordered_end(handle: &SessionHandle) -> End {
    End::Closed(handle.close_order().unwrap_or(Close::ShuttingDown))
}

/// When a session may resync presence with a `list` again, and the timer
/// that retries a resync put off until then (allocated only in a storm).
#[derive(Default)]
struct Resync {
    allowed_at: Option<Instant>,
    retry: Option<Pin<Box<Sleep>>>,
}

impl Resync {
    /// Resolves when a put-off resync is due; never without one.
    /// Cancel-safe: the timer stays armed.
    async fn wait(&mut self) {
        match &mut self.retry {
            Some(sleep) => sleep.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

/// The presence notices a session owes its client: the events it has not
/// seen, one notice each; many of them folded into one digest; or, when the
/// log moved past it, one `list` of who is connected (at most once per
/// [`RESYNC_INTERVAL`]; sooner, it is put off).
fn presence_frames(
    router: &Router,
    handle: &SessionHandle,
    resync: &mut Resync,
    cluster: Option<&Cluster>,
) -> Vec<Message> {
    let me = handle.name();
    match router.presence_backlog(handle) {
        Backlog::Nothing => Vec::new(),
        Backlog::Events(events) => events
            .iter()
            .map(|(event, name)| {
                Message::text(Notice::presence(me.as_str(), *event, name.as_str()).to_json())
            })
            .collect(),
        Backlog::Digest { joined, left } => {
            let digest = Notice::presence_digest(me.as_str(), &joined, &left).to_json();
            vec![Message::text(digest)]
        }
        Backlog::Behind => {
            let now = Instant::now();
            if let Some(at) = resync.allowed_at.filter(|at| *at > now) {
                if resync.retry.is_none() {
                    resync.retry = Some(Box::pin(tokio::time::sleep_until(at)));
                }
                return Vec::new();
            }
            resync.allowed_at = Some(now + RESYNC_INTERVAL);
            router.metrics().presence_resync();
            let mut names = router.presence_resync(handle);
            if let Some(cluster) = cluster {
                names = cluster.names(names);
            }
            let list = Notice::list(me.as_str(), &names, None, None).to_json();
            vec![Message::text(list)]
        }
    }
}

/// Writes `frames` and flushes once. Cancel-safe in the way
/// [`write_batch`] is: a frame is handed over whole or not at all.
async fn write_all<S>(ws: &mut WebSocketStream<S>, frames: Vec<Message>) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if frames.is_empty() {
        return Ok(());
    }
    for frame in frames {
        ws.feed(frame).await?;
    }
    ws.flush().await
}

/// Feeds `first` and every frame already queued (up to a batch), then flushes once.
///
/// Cancel-safe: the session drops this future when it is told to close, and
/// `close` then sends what is left. So a frame is taken from the queue only
/// once the sink is ready and is handed over at once; while the socket is
/// full the wait holds no frame (`feed` would, and dropping it lost one).
async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    first: Message,
    rx: &Outbox,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Ready: the previous batch ended with a completed flush.
    std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
    ws.start_send_unpin(first)?;
    for _ in 1..MAX_BATCH {
        std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
        match rx.try_pop() {
            Some(frame) => ws.start_send_unpin(frame)?,
            None => break,
        }
    }
    ws.flush().await
}

/// Sends what is queued (unless the cause drops it), then the close frame
/// (`reason`: the cause's words, and the operator's for a kick), and waits
/// for the peer's close reply.
///
/// The close frame goes out behind what the socket already holds, the rest
/// of a frame cut off mid-write included, so it is given the whole `grace`
/// to be written: a client that reads, however slowly, gets whole frames
/// and then its close code, not a stream that stops mid-frame. A slow
/// consumer or a silent peer is then given only [`SLOW_CLOSE_TIMEOUT`] for
/// its reply; others the rest of the grace.
async fn close<S>(
    ws: &mut WebSocketStream<S>,
    rx: &Outbox,
    why: Close,
    reason: Cow<'static, str>,
    grace: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: why.code().code().into(),
        reason: match reason {
            Cow::Borrowed(text) => Utf8Bytes::from_static(text),
            Cow::Owned(text) => Utf8Bytes::from(text),
        },
    };
    let drain = why.drains_queue();
    let deadline = Instant::now() + grace;
    let written = tokio::time::timeout_at(deadline, async {
        if drain {
            rx.close();
            while let Some(queued) = rx.try_pop() {
                ws.feed(queued).await?;
            }
        }
        ws.send(Message::Close(Some(frame))).await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let reply_by = if drain {
        deadline
    } else {
        deadline.min(Instant::now() + SLOW_CLOSE_TIMEOUT)
    };
    // Read until the peer's close reply ends the stream.
    let _ = tokio::time::timeout_at(reply_by, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn on_read_error(router: &Router, handle: &SessionHandle, e: WsError) -> End {
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
    let name = handle.name();
    let remote = handle.info.remote;
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            router.metrics().error(ErrorKind::too_large);
            tracing::info!(client = %name, %remote, size, max_size, "message too large");
            let notice = Notice::error(name.as_str(), "message too large", None).to_json();
            router.reply(handle, Message::text(notice));
            router.events().publish(&Event::Error {
                name: name.as_str(),
                remote,
                msg: "message too large",
            });
            End::Closed(Close::TooBig)
        }
        WsError::Capacity(e) => {
            router.metrics().error(ErrorKind::too_large);
            tracing::debug!(client = %name, %remote, error = %e, "capacity exceeded");
            End::Closed(Close::TooBig)
        }
        WsError::Utf8(e) => {
            router.metrics().error(ErrorKind::protocol);
            tracing::debug!(client = %name, %remote, error = %e, "invalid UTF-8 in a text frame or close reason");
            End::Closed(Close::InvalidUtf8)
        }
        // The peer's TCP connection ended without a close frame (it vanished,
        // perhaps mid-message): nobody is left to send a close to, and it
        // is not a protocol error to count.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            End::Gone("connection closed without a close frame".into())
        }
        WsError::Protocol(e) => {
            router.metrics().error(ErrorKind::protocol);
            tracing::debug!(client = %name, %remote, error = %e, "protocol violation");
            End::Closed(Close::Protocol)
        }
        other => End::Gone(format!("read failed: {other}")),
    }
}

/// Counters on the message path, cloned once per session.
struct Counters {
    private: Counter,
    room: prometheus_client::metrics::counter::Counter,
    to_server: prometheus_client::metrics::counter::Counter,
}

impl Counters {
    fn new(router: &Router) -> Counters {
        let m = router.metrics();
        Counters {
            private: m.routed(RouteKind::private),
            room: m.routed(RouteKind::room),
            to_server: m.routed(RouteKind::to_server),
        }
    }
}

/// What a frame still needs from the other cluster nodes once its local
/// part is done ([`remote_step`]).
enum Remote {
    /// A private message for a name no session here holds.
    Private {
        from: ClientName,
        dst: String,
        frame: Message,
        id: Option<Box<RawValue>>,
    },
    /// A room message, delivered to the members here.
    Room {
        room: String,
        frame: Message,
        id: Option<Box<RawValue>>,
    },
    /// A room joined here.
    Joined {
        room: String,
        id: Option<Box<RawValue>>,
    },
    /// A room left here.
    Left { room: String },
    /// `list` of a room's members on every node.
    RoomList {
        room: String,
        id: Option<Box<RawValue>>,
    },
}

/// Handles a text frame (`request`, read from `text`) here; returns what
/// the other nodes must still do (only with a cluster).
#[allow(clippy::too_many_arguments)]
fn on_text(
    router: &Router,
    handle: &Arc<SessionHandle>,
    counters: &Counters,
    routes: &mut RouteCache,
    permissions: Option<&Permissions>,
    cluster: Option<&Cluster>,
    request: Request<'_>,
    text: &Utf8Bytes,
) -> Option<Remote> {
    match request {
        Request::Private(mut envelope) => {
            let name = sender_name(router, handle, &envelope);
            let dst = std::mem::take(&mut envelope.dst);
            let delivery =
                router.send_to_name_cached(routes, &dst, || forward(&envelope, &name, text));
            if delivery.targets == 0 && cluster.is_some() {
                return Some(Remote::Private {
                    frame: forward(&envelope, &name, text),
                    from: name,
                    dst: dst.into_owned(),
                    id: envelope.id.map(RawValue::to_owned),
                });
            }
            let failure = match delivery {
                Delivery { targets: 0, .. } => {
                    Some((ErrorKind::unknown_recipient, notice::NOT_CONNECTED))
                }
                Delivery { queued: 0, .. } => Some((ErrorKind::slow_recipient, notice::TOO_SLOW)),
                _ => None,
            };
            match failure {
                None => {
                    counters.private.inc();
                }
                Some((kind, why)) => {
                    reject(router, handle, kind, &format!("{why}: {dst}"), envelope.id)
                }
            };
        }
        Request::Room(mut envelope) => {
            let name = sender_name(router, handle, &envelope);
            let room = std::mem::take(&mut envelope.dst);
            let delivery = router
                .send_to_room_cached(routes, handle, &room, || forward(&envelope, &name, text));
            match delivery {
                Ok(_) => {
                    counters.room.inc();
                    if cluster.is_some() {
                        return Some(Remote::Room {
                            frame: forward(&envelope, &name, text),
                            room: room.into_owned(),
                            id: envelope.id.map(RawValue::to_owned),
                        });
                    }
                }
                Err(e) => reject(
                    router,
                    handle,
                    ErrorKind::invalid_request,
                    &e.to_string(),
                    envelope.id,
                ),
            };
        }
        Request::Join { room, id } => {
            if permissions.is_some_and(|p| !p.may_join(&room)) {
                let why = format!("not allowed by your token: join {room}");
                {
                    reject(router, handle, ErrorKind::forbidden, &why, id);
                    return None;
                }
            }
            if let Err(e) = router.join(handle, &room) {
                reject(
                    router,
                    handle,
                    ErrorKind::invalid_request,
                    &e.to_string(),
                    id,
                );
            } else if cluster.is_some() {
                return Some(Remote::Joined {
                    room: room.into_owned(),
                    id: id.map(RawValue::to_owned),
                });
            }
        }
        Request::Leave { room, .. } => {
            router.leave(handle, &room);
            if cluster.is_some() {
                return Some(Remote::Left {
                    room: room.into_owned(),
                });
            }
        }
        Request::List { room, id } => {
            if let Some(room) = room.as_deref()
                && permissions.is_some_and(|p| !p.may_join(room))
            {
                let why = format!("not allowed by your token: list {room}");
                {
                    reject(router, handle, ErrorKind::forbidden, &why, id);
                    return None;
                }
            }
            let names = match (cluster, room.as_deref()) {
                (Some(_), Some(room)) => {
                    return Some(Remote::RoomList {
                        room: room.to_owned(),
                        id: id.map(RawValue::to_owned),
                    });
                }
                (Some(cluster), None) => cluster.names(router.names(None)),
                (None, room) => router.names(room),
            };
            let me = handle.name();
            let notice = Notice::list(me.as_str(), &names, room.as_deref(), id);
            router.reply(handle, Message::text(notice.to_json()));
        }
        Request::Invalid { reason, id } => {
            reject(router, handle, ErrorKind::invalid_request, &reason, id);
        }
        Request::ToServer => {
            if permissions.is_some_and(|p| !p.operator) {
                {
                    reject(router, handle, ErrorKind::forbidden, NO_OPERATOR, None);
                    return None;
                }
            }
            counters.to_server.inc();
            let name = handle.name();
            let remote = handle.info.remote;
            tracing::info!(client = %name, %remote, text = %text.as_str(), "message to server");
            router.events().publish(&Event::Message {
                name: name.as_str(),
                remote,
                text,
            });
        }
    }
    None
}

/// What a session waits for after a text frame: the other nodes' part.
type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Private messages for other nodes a session may have unanswered before
/// it waits for their answers.
const UNANSWERED: u32 = 32;

/// Handles a text frame here, and returns the other nodes' part of it, if
/// any, as one boxed future (a Qt rename, then its [`Remote`] step).
///
/// A private message for another node is not waited for: it is queued for
/// the publisher, and the publisher's task answers the sender if it was
/// not delivered, as [`remote_step`] would, so that the session reads on
/// and its messages share the publisher's batches. Order holds: messages
/// are published in the order they were read, and answered in that order;
/// any other frame first waits until the answers to the earlier ones came
/// (so a `list` stays a barrier), and a session with [`UNANSWERED`]
/// messages unanswered waits for them before it reads on.
/// An error about a later message to a client of this node may come before
/// an earlier remote one's, as an error from the receiving node always
/// could; each carries its request's `ref`.
#[allow(clippy::too_many_arguments)]
fn text_frame<'a>(
    router: &'a Arc<Router>,
    handle: &'a Arc<SessionHandle>,
    counters: &'a Counters,
    routes: &'a mut RouteCache,
    permissions: Option<&'a Permissions>,
    cluster: Option<&'a Arc<Cluster>>,
    text: Utf8Bytes,
) -> Option<Step<'a>> {
    let request = protocol::classify(&text);
    if let Some(cluster) = cluster
        && handle.unanswered() > 0
        && !for_another_node(router, &request)
    {
        drop(request);
        return Some(Box::pin(async move {
            cluster.fence().await;
            // Once: answers that never come (the publisher stopped) are
            // answered as failed, and the frame is handled regardless.
            fenced_text_frame(router, handle, counters, routes, permissions, cluster, text).await;
        }));
    }
    let (provisional, remote) = here(
        router,
        handle,
        counters,
        routes,
        permissions,
        cluster.map(|c| &**c),
        request,
        &text,
    );
    let cluster = cluster?;
    let remote = match remote {
        Some(Remote::Private {
            from,
            dst,
            frame,
            id,
        }) if provisional.is_none() => {
            let text = frame.to_text().unwrap_or_default();
            match cluster.private_queued((from.as_str(), handle.id()), &dst, text, id.as_deref()) {
                Some(queued) => {
                    // Counted before its answer can come.
                    let unanswered = handle.published();
                    let (router, handle) = (router.clone(), handle.clone());
                    let delivered = counters.private.clone();
                    queued.then(move |reached| {
                        private_answered(
                            &router,
                            &handle,
                            &delivered,
                            &dst,
                            id.as_deref(),
                            reached,
                        );
                        handle.answered();
                    });
                    if unanswered < UNANSWERED {
                        return None;
                    }
                    return Some(Box::pin(cluster.fence()));
                }
                None => Some(Remote::Private {
                    from,
                    dst,
                    frame,
                    id,
                }),
            }
        }
        remote => remote,
    };
    if remote.is_none() && provisional.is_none() {
        return None;
    }
    // Waits: after the answers to the messages before it.
    let fence = handle.unanswered() > 0;
    Some(Box::pin(async move {
        if fence {
            cluster.fence().await;
        }
        for_other_nodes(cluster, router, handle, counters, remote, provisional).await;
    }))
}

/// Whether `request` is a private message for a name no session here
/// holds: one that is published, in order, after the earlier ones without
/// waiting for their answers. Anything else, a private message delivered
/// here included (its recipient may have just moved here from the node an
/// earlier one went to), waits for those answers first.
fn for_another_node(router: &Router, request: &Request<'_>) -> bool {
    matches!(request, Request::Private(envelope) if !router.holds(&envelope.dst))
}

/// [`text_frame`] after its fence: the frame handled, its own step awaited.
async fn fenced_text_frame(
    router: &Arc<Router>,
    handle: &Arc<SessionHandle>,
    counters: &Counters,
    routes: &mut RouteCache,
    permissions: Option<&Permissions>,
    cluster: &Arc<Cluster>,
    text: Utf8Bytes,
) {
    let (provisional, remote) = here(
        router,
        handle,
        counters,
        routes,
        permissions,
        Some(cluster),
        protocol::classify(&text),
        &text,
    );
    for_other_nodes(cluster, router, handle, counters, remote, provisional).await;
}

/// [`on_text`], and with a cluster the session's provisional name before
/// the frame (a Qt client may take its full name with it, which the other
/// nodes are told).
#[allow(clippy::too_many_arguments)]
fn here(
    router: &Router,
    handle: &Arc<SessionHandle>,
    counters: &Counters,
    routes: &mut RouteCache,
    permissions: Option<&Permissions>,
    cluster: Option<&Cluster>,
    request: Request<'_>,
    text: &Utf8Bytes,
) -> (Option<ClientName>, Option<Remote>) {
    let provisional = (cluster.is_some() && handle.is_provisional()).then(|| handle.name());
    let remote = on_text(
        router,
        handle,
        counters,
        routes,
        permissions,
        cluster,
        request,
        text,
    );
    (provisional, remote)
}

/// The other nodes' part of a text frame: a rename it made (a provisional
/// name was `provisional` before it), then its [`Remote`] step.
async fn for_other_nodes(
    cluster: &Cluster,
    router: &Router,
    handle: &Arc<SessionHandle>,
    counters: &Counters,
    remote: Option<Remote>,
    provisional: Option<ClientName>,
) {
    if let Some(old) = provisional
        && !handle.is_provisional()
    {
        cluster.renamed(handle, old.as_str()).await;
    }
    if let Some(step) = remote {
        remote_step(cluster, router, handle, counters, step).await;
    }
}

/// Does what a frame needs from the other nodes ([`Remote`]); a failure is
/// answered with an `error` notice, never dropped in silence.
async fn remote_step(
    cluster: &Cluster,
    router: &Router,
    handle: &Arc<SessionHandle>,
    counters: &Counters,
    step: Remote,
) {
    let unavailable = |why: String, id: Option<&RawValue>| {
        reject(router, handle, ErrorKind::cluster_unavailable, &why, id);
    };
    match step {
        Remote::Private {
            from,
            dst,
            frame,
            id,
        } => {
            let text = frame.to_text().unwrap_or_default();
            let reached = cluster
                .private((from.as_str(), handle.id()), &dst, text, id.as_deref())
                .await;
            private_answered(
                router,
                handle,
                &counters.private,
                &dst,
                id.as_deref(),
                reached,
            );
        }
        Remote::Room { room, frame, id } => {
            let text = frame.to_text().unwrap_or_default();
            if let Err(e) = cluster.room(&room, text).await {
                tracing::debug!(error = %e, "cluster: room message not published");
                unavailable(
                    format!(
                        "cluster unavailable: room message reached local members only ({room})"
                    ),
                    id.as_deref(),
                );
            }
        }
        Remote::Joined { room, id } => {
            if let Err(e) = cluster.joined(&room, handle.name().as_str()).await {
                tracing::debug!(error = %e, "cluster: join not recorded");
                unavailable(
                    format!("cluster unavailable: joined {room} on this node only"),
                    id.as_deref(),
                );
            }
        }
        Remote::Left { room } => cluster.left(&room, handle.name().as_str()).await,
        Remote::RoomList { room, id } => {
            let me = handle.name();
            let names = match cluster.room_names(&room).await {
                Ok(names) => names,
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: room members not read");
                    unavailable(
                        format!(
                            "cluster unavailable: the list of {room} has this node's members only"
                        ),
                        id.as_deref(),
                    );
                    router.names(Some(&room))
                }
            };
            let notice = Notice::list(me.as_str(), &names, Some(&room), id.as_deref());
            router.reply(handle, Message::text(notice.to_json()));
        }
    }
}

/// Answers the sender of a private message for another node by what Redis
/// said: `recipient not connected` when no node took it, `cluster
/// unavailable` when Redis failed.
fn private_answered(
    router: &Router,
    handle: &SessionHandle,
    delivered: &Counter,
    dst: &str,
    id: Option<&RawValue>,
    reached: Result<usize, String>,
) {
    match reached {
        Ok(0) => reject(
            router,
            handle,
            ErrorKind::unknown_recipient,
            &format!("{}: {dst}", notice::NOT_CONNECTED),
            id,
        ),
        Ok(_) => {
            delivered.inc();
        }
        Err(e) => {
            tracing::debug!(error = %e, "cluster: private message not published");
            reject(
                router,
                handle,
                ErrorKind::cluster_unavailable,
                &format!("cluster unavailable: cannot reach {dst}"),
                id,
            );
        }
    }
}

/// The frame receivers get: the client's own frame when its `src` is right.
fn forward(envelope: &Envelope<'_>, name: &ClientName, text: &Utf8Bytes) -> Message {
    match envelope.forward(name.as_str()) {
        Forward::Unchanged => Message::Text(text.clone()),
        Forward::Rewritten(frame) => Message::text(frame),
    }
}

/// The sender's name for `src`; a provisional Qt name may first take the
/// full name the client put in its `src`.
fn sender_name(router: &Router, handle: &Arc<SessionHandle>, envelope: &Envelope) -> ClientName {
    if handle.is_provisional()
        && let Some(src) = envelope.claimed_src.as_deref()
    {
        router.claim_full_name(handle, src);
    }
    handle.name()
}

/// The refusal of a message to the operator that a token does not allow.
const NO_OPERATOR: &str = "not allowed by your token: messages to the operator";

fn on_binary(
    router: &Router,
    handle: &SessionHandle,
    counters: &Counters,
    permissions: Option<&Permissions>,
    data: &[u8],
) {
    if permissions.is_some_and(|p| !p.operator) {
        return reject(router, handle, ErrorKind::forbidden, NO_OPERATOR, None);
    }
    counters.to_server.inc();
    let name = handle.name();
    let remote = handle.info.remote;
    tracing::info!(client = %name, %remote, bytes = data.len(), "binary message to server");
    router.events().publish(&Event::Binary {
        name: name.as_str(),
        remote,
        base64: data_encoding::BASE64.encode(data),
    });
}

/// Answers a frame dropped for the rate limit with `rate limit exceeded`,
/// carrying the request's `id` (when it is a JSON request with one).
fn rate_refused(router: &Router, handle: &SessionHandle, frame: &Result<Message, WsError>) {
    let id = match frame {
        Ok(Message::Text(text)) => protocol::classify(text).id(),
        _ => None,
    };
    reject(
        router,
        handle,
        ErrorKind::rate_limited,
        notice::RATE_LIMITED,
        id,
    );
}

/// Answers a request that failed with an `error` notice (never a silent drop).
fn reject(
    router: &Router,
    handle: &SessionHandle,
    kind: ErrorKind,
    msg: &str,
    reference: Option<&RawValue>,
) {
    router.metrics().error(kind);
    let name = handle.name();
    let remote = handle.info.remote;
    tracing::debug!(client = %name, %remote, error = msg, "request refused");
    router.events().publish(&Event::Error {
        name: name.as_str(),
        remote,
        msg,
    });
    let notice = Notice::error(name.as_str(), msg, reference).to_json();
    router.reply(handle, Message::text(notice));
}
