//! The node's Redis subscriber: one PUB/SUB connection, supervised. A plain
//! PUB/SUB connection does not subscribe again by itself after it is lost,
//! so the supervisor does: it reconnects with backoff (100 ms doubling to
//! 5 s), and subscribes what the router holds *now* (every name, every room
//! with a member here, and the node's own channels), so a subscription that
//! failed while Redis was down is not lost either.
//!
//! The connection speaks RESP itself ([`super::resp`]): one task reads it,
//! hands every message in what one read brought straight to
//! [`Cluster::dispatch`] from the receive buffer, and writes the
//! (UN)SUBSCRIBE commands other tasks queue, answering each once Redis
//! confirmed all its channels.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::bytes::{Buf, BytesMut};
use tokio_util::sync::CancellationToken;

use super::resp::{self, Frame, Item};
use super::{Cluster, REDIS_TIMEOUT};

/// Channels sent in one SUBSCRIBE when subscribing everything again.
const BATCH: usize = 512;
/// Capacity of the receive buffer kept once it is empty.
const KEEP_INPUT: usize = 1024 * 1024;
/// First wait before reconnecting, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A SUBSCRIBE or UNSUBSCRIBE for the connection's task to write.
struct Command {
    bytes: Vec<u8>,
    /// Confirmations Redis sends for it: one per channel.
    confirmations: usize,
    done: oneshot::Sender<Result<(), String>>,
}

/// Where commands for the subscriber connection go, while it is connected.
#[derive(Default)]
pub(crate) struct Subscriber {
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    up: AtomicBool,
}

impl Subscriber {
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn set(&self, commands: Option<mpsc::UnboundedSender<Command>>) {
        let up = commands.is_some();
        *self.commands.lock().unwrap_or_else(|p| p.into_inner()) = commands;
        self.up.store(up, Ordering::Release);
    }

    /// Sends `verb` for `channels` and waits for Redis to confirm them all.
    async fn send(&self, verb: &str, channels: Vec<String>) -> Result<(), String> {
        if channels.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        let args = std::iter::once(verb.as_bytes()).chain(channels.iter().map(|c| c.as_bytes()));
        resp::command(&mut bytes, args.collect::<Vec<_>>().into_iter());
        let (done, answer) = oneshot::channel();
        let command = Command {
            bytes,
            confirmations: channels.len(),
            done,
        };
        let sent = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(command).is_ok());
        if !sent {
            return Err("the Redis subscriber is not connected".to_owned());
        }
        match tokio::time::timeout(REDIS_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("{verb}: {e}")),
            Ok(Err(_)) => Err(format!("{verb}: the connection was lost")),
            Err(_) => Err(format!("{verb}: no answer")),
        }
    }

    /// Subscribes `channels`, once Redis confirmed them.
    pub(crate) async fn subscribe(&self, channels: Vec<String>) -> Result<(), String> {
        self.send("SUBSCRIBE", channels).await
    }

    /// Unsubscribes `channels` (nothing to do while disconnected: the next
    /// connection subscribes only what is wanted then).
    pub(crate) async fn unsubscribe(&self, channels: Vec<String>) -> Result<(), String> {
        self.send("UNSUBSCRIBE", channels).await
    }

    /// Subscribes everything the node needs now, in batches; repairs a
    /// subscription lost to a race between a join and a leave.
    pub(crate) async fn reconcile(&self, cluster: &Cluster) {
        for batch in cluster.wanted().chunks(BATCH) {
            if self.subscribe(batch.to_vec()).await.is_err() {
                return;
            }
        }
    }
}

/// Keeps the subscriber connected until shutdown; `ready` is told after the
/// first connection subscribed everything.
pub(crate) async fn supervise(
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
    ready: Arc<Notify>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut warned = false;
    // The first connection is part of the start, which claims nothing yet.
    let mut first = true;
    loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => break,
            r = tokio::time::timeout(REDIS_TIMEOUT, cluster.connector.connect()) => r,
        };
        match attempt {
            Ok(Ok(stream)) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let (ended_tx, mut ended) = oneshot::channel();
                let driver = tokio::spawn({
                    let cluster = cluster.clone();
                    async move {
                        let _ = ended_tx.send(drive(&cluster, stream, rx).await);
                    }
                });
                // In place first, so that a name admitted meanwhile subscribes
                // on this connection; then everything held now.
                cluster.pubsub.set(Some(tx));
                cluster.pubsub.reconcile(&cluster).await;
                cluster.metrics.reconnects.inc();
                cluster.health_changed();
                tracing::info!(node = %cluster.node, "cluster: subscriber connected");
                ready.notify_one();
                if !first {
                    cluster.recover.notify_one();
                }
                first = false;
                backoff = MIN_BACKOFF;
                warned = false;
                let why = tokio::select! {
                    () = shutdown.cancelled() => {
                        driver.abort();
                        cluster.pubsub.set(None);
                        return;
                    }
                    why = &mut ended => why.unwrap_or_else(|_| "the connection's task ended".into()),
                };
                cluster.pubsub.set(None);
                cluster.health_changed();
                tracing::warn!(node = %cluster.node, reason = %why, "cluster: lost the Redis subscriber connection; messages from other nodes are lost until it is back (reconnecting)");
            }
            Ok(Err(e)) => {
                if !warned {
                    tracing::warn!(node = %cluster.node, error = %e, "cluster: cannot connect the Redis subscriber; retrying");
                    warned = true;
                }
            }
            Err(_) => {
                if !warned {
                    tracing::warn!(node = %cluster.node, "cluster: the Redis subscriber connection timed out; retrying");
                    warned = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    cluster.pubsub.set(None);
}

/// A subscriber confirmation still to come, and who waits for it.
struct Waiting {
    confirmations: usize,
    done: oneshot::Sender<Result<(), String>>,
}

/// What the subscriber sends when its connection was quiet for a
/// heartbeat interval: Redis answers a PING on a subscribed connection with
/// `pong`.
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Runs one subscriber connection: writes the commands from `commands`,
/// dispatches every message read, answers commands when confirmed. Returns
/// why it ended.
///
/// A subscribed connection that is cut somewhere on the way without a FIN
/// or a reset (a proxy or a NAT that forgot it, a host that vanished)
/// would otherwise look alive forever while Redis's messages for this node
/// go nowhere and their senders are told they were delivered. So the
/// connection proves itself: after a heartbeat interval (`[cluster]
/// heartbeat`) with nothing read, it sends a PING; if nothing comes within
/// [`REDIS_TIMEOUT`] after that, the connection is given up and the
/// supervisor makes a new one and subscribes everything again. Under
/// traffic the messages themselves are the proof, and no PING is sent.
async fn drive(
    cluster: &Arc<Cluster>,
    mut stream: Pin<Box<dyn resp::Stream>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> String {
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut output: Vec<u8> = Vec::new();
    let mut written = 0;
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let quiet = cluster.heartbeat;
    // When something was last read; the probe's timer is moved lazily, when
    // it fires, not at every read.
    let mut last_read = Instant::now();
    let mut probe = Box::pin(tokio::time::sleep(quiet));
    let mut pinged: Option<Instant> = None;
    poll_fn(|cx| {
        loop {
            if probe.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                if pinged.is_some_and(|at| last_read >= at) {
                    // Something came after the PING: alive.
                    pinged = None;
                }
                match pinged {
                    None if now.duration_since(last_read) < quiet => {
                        probe.as_mut().reset(last_read + quiet);
                    }
                    Some(at) if now.duration_since(at) >= REDIS_TIMEOUT => {
                        return Poll::Ready(format!(
                            "no answer to PING within {REDIS_TIMEOUT:?} (the connection is gone on the way)"
                        ));
                    }
                    Some(at) => probe.as_mut().reset(at + REDIS_TIMEOUT),
                    None => {
                        output.extend_from_slice(PING);
                        pinged = Some(now);
                        probe.as_mut().reset(now + REDIS_TIMEOUT);
                    }
                }
                continue;
            }
            while let Poll::Ready(command) = commands.poll_recv(cx) {
                let Some(command) = command else {
                    return Poll::Ready("the subscriber was dropped".to_owned());
                };
                output.extend_from_slice(&command.bytes);
                waiting.push_back(Waiting {
                    confirmations: command.confirmations,
                    done: command.done,
                });
            }
            while written < output.len() {
                match stream.as_mut().poll_write(cx, &output[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready("write: connection closed".into()),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(format!("write: {e}")),
                    Poll::Pending => break,
                }
            }
            if written > 0 && written == output.len() {
                // Written, but TLS may hold some of it until a flush.
                match stream.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        output.clear();
                        written = 0;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(format!("write: {e}")),
                    // Flushed again on the next wake-up.
                    Poll::Pending => {}
                }
            }
            if input.capacity() - input.len() < 16 * 1024 {
                input.reserve(64 * 1024);
            }
            match tokio_util::io::poll_read_buf(stream.as_mut(), cx, &mut input) {
                Poll::Ready(Ok(0)) => return Poll::Ready("connection closed".into()),
                Poll::Ready(Ok(_)) => last_read = Instant::now(),
                Poll::Ready(Err(e)) => return Poll::Ready(format!("read: {e}")),
                Poll::Pending => return Poll::Pending,
            }
            if let Err(why) = take_frames(cluster, &mut input, &mut waiting) {
                return Poll::Ready(why);
            }
        }
    })
    .await
}

/// Handles every whole frame at the start of `input` and drops it.
fn take_frames(
    cluster: &Arc<Cluster>,
    input: &mut BytesMut,
    waiting: &mut VecDeque<Waiting>,
) -> Result<(), String> {
    let mut at = 0;
    let result = loop {
        let (frame, used) = match resp::parse(&input[at..], cluster.max_payload) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("protocol: {e}")),
        };
        at += used;
        match frame {
            Frame::Array(
                [
                    Item::Bulk(Some(b"message")),
                    Item::Bulk(Some(channel)),
                    Item::Bulk(Some(payload)),
                ],
                3,
            ) => match std::str::from_utf8(channel) {
                Ok(channel) => cluster.dispatch(channel, payload),
                Err(_) => {
                    tracing::warn!("cluster: a message on a channel that is not UTF-8; ignored")
                }
            },
            Frame::Array([Item::Bulk(Some(b"subscribe" | b"unsubscribe")), _, _], 3) => {
                if let Some(front) = waiting.front_mut() {
                    front.confirmations = front.confirmations.saturating_sub(1);
                    if front.confirmations == 0
                        && let Some(done) = waiting.pop_front()
                    {
                        let _ = done.done.send(Ok(()));
                    }
                }
            }
            // The answer to the liveness PING: reading it was the point.
            Frame::Array([Item::Bulk(Some(b"pong")), _, _], 2) => {}
            Frame::Item(Item::Error(e)) => {
                if let Some(done) = waiting.pop_front() {
                    let _ = done.done.send(Err(String::from_utf8_lossy(e).into_owned()));
                }
            }
            other => break Err(format!("unexpected {other:?}")),
        }
    };
    input.advance(at);
    if input.is_empty() && input.capacity() > KEEP_INPUT {
        // A large message grew the buffer for itself only.
        *input = BytesMut::with_capacity(64 * 1024);
    }
    result
}
