//! PUBLISH in batches, on a connection of its own. Every message waiting
//! when the previous batch was answered goes out in the next one, as one
//! pipeline: one write and one read for all of them. Under load a round
//! trip to Redis is shared by many messages (a round trip per message, each
//! waking three processes, is what made cross-node messages cost ten times
//! a local one); at low load a message waits for nothing but its own round
//! trip.
//!
//! Messages are published and answered in the order they were queued. An
//! answer goes to a task waiting for it, or to a function called on this
//! task (a session's private messages: the session reads on meanwhile, see
//! `session.rs`); a fence, queued like a message, is answered once
//! everything queued before it was.
//!
//! The connection speaks RESP itself ([`super::resp`]): commands are written
//! straight into one buffer and the answers (integers) read in place;
//! redis-rs's pipeline, connection task and parser cost more than the rest
//! of the message did.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::bytes::{Buf, BytesMut};

use super::resp::{self, Connector, Frame, Item};

/// Messages waiting for a batch before a publisher waits for room.
const QUEUE: usize = 16 * 1024;
/// Messages in one pipeline at most.
const BATCH: usize = 512;
/// The longest bulk string an answer to PUBLISH may hold (it holds none:
/// the answer is an integer).
const ANSWER_BULK: usize = 0;
/// Capacity of the output buffer kept between batches; a batch of large
/// messages grows it for itself only.
const KEEP_OUTPUT: usize = 256 * 1024;

/// Why a publish failed: the text, and whether Redis was unreachable (as
/// opposed to answering with an error).
pub(crate) type Failure = (String, bool);

/// What gets a message's answer: how many subscribers took it.
pub(crate) enum Reply {
    /// A task waiting for it.
    Wait(oneshot::Sender<Result<usize, Failure>>),
    /// A function, called on the publisher's task: it must not wait.
    Call(Callback),
}

impl Reply {
    fn send(self, answer: Result<usize, Failure>) {
        match self {
            Reply::Wait(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Call(mut f) => f.call(answer),
        }
    }
}

/// A function that gets a message's answer, called exactly once: with the
/// answer, or, if the message is dropped unanswered (the publisher's task
/// ended), with "the publisher stopped", so that a session's sender is
/// told and its count of unanswered messages comes down either way.
pub(crate) struct Callback(Option<Answer>);

/// A function given a message's answer.
type Answer = Box<dyn FnOnce(Result<usize, Failure>) + Send>;

impl Callback {
    pub(crate) fn new(f: impl FnOnce(Result<usize, Failure>) + Send + 'static) -> Callback {
        Callback(Some(Box::new(f)))
    }

    fn call(&mut self, answer: Result<usize, Failure>) {
        if let Some(f) = self.0.take() {
            // A panic in one sender's answer must not end the task that
            // answers every other one.
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(answer)));
            if called.is_err() {
                tracing::error!("cluster: answering a published message panicked");
            }
        }
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.call(Err(stopped()));
    }
}

struct Request {
    /// Channel and payload; `None` for a fence.
    message: Option<(String, String)>,
    reply: Reply,
}

/// The sending side; the batching task ends when it is dropped.
pub(crate) struct Publisher {
    tx: mpsc::Sender<Request>,
}

/// Room in the queue for one message, taken without waiting.
pub(crate) struct Slot<'a>(mpsc::Permit<'a, Request>);

impl Slot<'_> {
    /// Queues `payload` for `channel`; its answer goes to `reply`.
    pub(crate) fn send(self, channel: String, payload: String, reply: Reply) {
        self.0.send(Request {
            message: Some((channel, payload)),
            reply,
        });
    }
}

impl Publisher {
    /// A publisher on `first`, then on connections from `connector`, with
    /// `timeout` for each batch's answer.
    pub(crate) fn start(
        connector: Arc<Connector>,
        first: Pin<Box<dyn resp::Stream>>,
        timeout: Duration,
    ) -> Publisher {
        let (tx, rx) = mpsc::channel(QUEUE);
        // Not on the gateway's task tracker: sessions closing at shutdown
        // still publish their leave, and the task ends with the last sender.
        tokio::spawn(run(connector, first, rx, timeout));
        Publisher { tx }
    }

    /// Publishes `payload` on `channel`: how many subscribers took it.
    pub(crate) async fn publish(&self, channel: String, payload: String) -> Result<usize, Failure> {
        let Ok(permit) = self.tx.reserve().await else {
            return Err(stopped());
        };
        let (tx, rx) = oneshot::channel();
        Slot(permit).send(channel, payload, Reply::Wait(tx));
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Room for one message now; `None` while the queue is full (or the
    /// publisher stopped).
    pub(crate) fn slot(&self) -> Option<Slot<'_>> {
        self.tx.try_reserve().ok().map(Slot)
    }

    /// Resolves once every message queued before was answered (or, the
    /// publisher having stopped, dropped: answered as failed).
    pub(crate) async fn fence(&self) {
        let (tx, rx) = oneshot::channel();
        let fence = Request {
            message: None,
            reply: Reply::Wait(tx),
        };
        if self.tx.send(fence).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn stopped() -> Failure {
    ("the publisher stopped".into(), true)
}

async fn run(
    connector: Arc<Connector>,
    first: Pin<Box<dyn resp::Stream>>,
    mut rx: mpsc::Receiver<Request>,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut conn = Some(first);
    let mut output = Vec::new();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut answers: Vec<Result<usize, Failure>> = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // The first message woke this task ahead of the other tasks ready
        // now (sessions with frames read in the same turn): let them queue
        // theirs first, so that they share this batch, not make one each.
        tokio::task::yield_now().await;
        let room = BATCH - batch.len();
        rx.recv_many(&mut batch, room).now_or_never();
        output.clear();
        output.shrink_to(KEEP_OUTPUT);
        answers.clear();
        let mut expected = 0;
        for (channel, payload) in batch.iter().filter_map(|r| r.message.as_ref()) {
            let args = [&b"PUBLISH"[..], channel.as_bytes(), payload.as_bytes()];
            resp::command(&mut output, args.into_iter());
            expected += 1;
        }
        let outcome = if expected == 0 {
            Ok(())
        } else {
            let exchange = exchange(
                &connector,
                &mut conn,
                &output,
                &mut input,
                &mut answers,
                expected,
            );
            // A slow answer alone does not say Redis is gone (the
            // heartbeat decides that); the batch fails, the connection is
            // made again.
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| Err((format!("PUBLISH: no answer within {timeout:?}"), false)))
        };
        if let Err(failure) = outcome {
            // The connection is in doubt: the next batch makes a new one,
            // and what was not answered is answered with the failure.
            conn = None;
            answers.resize(expected, Err(failure));
        }
        let mut answers = answers.drain(..);
        for request in batch.drain(..) {
            let answer = match request.message {
                Some(_) => answers.next().unwrap_or_else(|| Err(stopped())),
                None => Ok(0),
            };
            request.reply.send(answer);
        }
    }
}

/// Writes `output` (`expected` commands) on the connection, made first if
/// there is none, and reads their answers into `answers`.
async fn exchange(
    connector: &Connector,
    conn: &mut Option<Pin<Box<dyn resp::Stream>>>,
    output: &[u8],
    input: &mut BytesMut,
    answers: &mut Vec<Result<usize, Failure>>,
    expected: usize,
) -> Result<(), Failure> {
    let unreachable = |e: String| (format!("PUBLISH: {e}"), true);
    // A connection idle since its last batch may have been closed by the
    // other end meanwhile (Redis restarted, `CLIENT KILL`, a timeout on
    // the way): its end of file or error is already here to read, and
    // nothing of this batch was sent yet, so a new connection takes it.
    // Redis sends nothing unasked on this connection, so bytes read now are
    // a reason to start afresh too.
    if let Some(stream) = conn.as_mut() {
        input.clear();
        if let Some(read) = stream.read_buf(input).now_or_never() {
            tracing::debug!(
                ?read,
                "cluster: the publisher's connection was closed while idle; a new one"
            );
            *conn = None;
        }
    }
    let stream = match conn {
        Some(stream) => stream,
        None => {
            input.clear();
            conn.insert(connector.connect().await.map_err(unreachable)?)
        }
    };
    stream
        .write_all(output)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    // TLS keeps what the socket did not take yet until a flush: reading
    // alone would wait for answers to commands never sent.
    stream
        .flush()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    while answers.len() < expected {
        let mut at = 0;
        while answers.len() < expected {
            let Some((frame, used)) =
                resp::parse(&input[at..], ANSWER_BULK).map_err(unreachable)?
            else {
                break;
            };
            at += used;
            answers.push(match frame {
                Frame::Item(Item::Int(n)) => Ok(usize::try_from(n).unwrap_or(0)),
                Frame::Item(Item::Error(e)) => {
                    Err((format!("PUBLISH: {}", String::from_utf8_lossy(e)), false))
                }
                other => return Err(unreachable(format!("unexpected answer {other:?}"))),
            });
        }
        input.advance(at);
        if answers.len() < expected
            && stream
                .read_buf(input)
                .await
                .map_err(|e| unreachable(e.to_string()))?
                == 0
        {
            return Err(unreachable("connection closed".into()));
        }
    }
    Ok(())
}
