//! The node's Redis subscriber: one PUB/SUB connection, supervised. A plain
//! PUB/SUB connection does not subscribe again by itself after it is lost,
//! so the supervisor does: it reconnects with backoff (100 ms doubling to
//! 5 s), and subscribes what the router holds *now* (every name, every room
//! with a member here, and the node's own channels), so a subscription that
//! failed while Redis was down is not lost either.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Cluster, REDIS_TIMEOUT};

/// Channels sent in one SUBSCRIBE when subscribing everything again.
const BATCH: usize = 512;
/// First wait before reconnecting, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The subscriber connection's sending half, while it is connected.
#[derive(Default)]
pub(crate) struct Subscriber {
    sink: Mutex<Option<PubSubSink>>,
    up: AtomicBool,
}

impl Subscriber {
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn sink(&self) -> Result<PubSubSink, String> {
        self.sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| "the Redis subscriber is not connected".to_owned())
    }

    fn set(&self, sink: Option<PubSubSink>) {
        let up = sink.is_some();
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
        self.up.store(up, Ordering::Release);
    }

    /// Subscribes `channels`, once Redis confirmed them.
    pub(crate) async fn subscribe(&self, channels: Vec<String>) -> Result<(), String> {
        let mut sink = self.sink()?;
        match tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(channels)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("SUBSCRIBE: {e}")),
            Err(_) => Err("SUBSCRIBE: no answer".into()),
        }
    }

    /// Unsubscribes `channels` (nothing to do while disconnected: the next
    /// connection subscribes only what is wanted then).
    pub(crate) async fn unsubscribe(&self, channels: Vec<String>) -> Result<(), String> {
        let mut sink = self.sink()?;
        match tokio::time::timeout(REDIS_TIMEOUT, sink.unsubscribe(channels)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("UNSUBSCRIBE: {e}")),
            Err(_) => Err("UNSUBSCRIBE: no answer".into()),
        }
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
            r = tokio::time::timeout(REDIS_TIMEOUT, cluster.client.get_async_pubsub()) => r,
        };
        match attempt {
            Ok(Ok(pubsub)) => {
                let (sink, mut stream) = pubsub.split();
                // In place first, so that a name admitted meanwhile subscribes
                // on this connection; then everything held now.
                cluster.pubsub.set(Some(sink));
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
                loop {
                    let message = tokio::select! {
                        () = shutdown.cancelled() => {
                            cluster.pubsub.set(None);
                            return;
                        }
                        m = stream.next() => m,
                    };
                    let Some(message) = message else { break };
                    let channel = message.get_channel_name();
                    cluster.dispatch(channel, message.get_payload_bytes());
                }
                cluster.pubsub.set(None);
                cluster.health_changed();
                tracing::warn!(node = %cluster.node, "cluster: lost the Redis subscriber connection; messages from other nodes are lost until it is back (reconnecting)");
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
