//! PUBLISH in batches. Every message waiting when the previous batch was
//! answered goes out in the next one, as one pipeline: one write and one
//! read for all of them. Under load a round trip to Redis is shared by many
//! messages (a round trip per message, each waking three processes, is what
//! made cross-node messages cost ten times a local one); at low load a
//! message waits for nothing but its own round trip.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

/// Messages waiting for a batch before a publisher waits for room.
const QUEUE: usize = 16 * 1024;
/// Messages in one pipeline at most.
const BATCH: usize = 512;

/// Why a publish failed: the text, and whether Redis was unreachable (as
/// opposed to answering with an error).
pub(crate) type Failure = (String, bool);

struct Request {
    channel: String,
    payload: String,
    reply: oneshot::Sender<Result<usize, Failure>>,
}

/// The sending side; the batching task ends when it is dropped.
pub(crate) struct Publisher {
    tx: mpsc::Sender<Request>,
}

impl Publisher {
    /// A publisher on `conn`, with `timeout` for each batch's answer.
    pub(crate) fn start(conn: ConnectionManager, timeout: Duration) -> Publisher {
        let (tx, rx) = mpsc::channel(QUEUE);
        // Not on the gateway's task tracker: sessions closing at shutdown
        // still publish their leave, and the task ends with the last sender.
        tokio::spawn(run(conn, rx, timeout));
        Publisher { tx }
    }

    /// Publishes `payload` on `channel`: how many subscribers took it.
    pub(crate) async fn publish(&self, channel: String, payload: String) -> Result<usize, Failure> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            channel,
            payload,
            reply,
        };
        if self.tx.send(request).await.is_err() {
            return Err(("the publisher stopped".into(), true));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(("the publisher stopped".into(), true)))
    }
}

async fn run(mut conn: ConnectionManager, mut rx: mpsc::Receiver<Request>, timeout: Duration) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for request in &batch {
            pipe.publish(&request.channel, &request.payload);
        }
        let answer =
            match tokio::time::timeout(timeout, pipe.query_async::<Vec<usize>>(&mut conn)).await {
                Ok(Ok(counts)) if counts.len() == batch.len() => Ok(counts),
                Ok(Ok(counts)) => Err((
                    format!(
                        "PUBLISH: {} answers for {} messages",
                        counts.len(),
                        batch.len()
                    ),
                    false,
                )),
                Ok(Err(e)) => {
                    let unreachable = e.is_io_error()
                        || e.is_timeout()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal();
                    Err((format!("PUBLISH: {e}"), unreachable))
                }
                Err(_) => Err((format!("PUBLISH: no answer within {timeout:?}"), true)),
            };
        match answer {
            Ok(counts) => {
                for (request, count) in batch.drain(..).zip(counts) {
                    let _ = request.reply.send(Ok(count));
                }
            }
            Err(failure) => {
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(failure.clone()));
                }
            }
        }
    }
}
