//! PUBLISH in batches, on a connection of its own. Every message waiting
//! when the previous batch was answered goes out in the next one, as one
//! pipeline: one write and one read for all of them. Under load a round
//! trip to Redis is shared by many messages (a round trip per message, each
//! waking three processes, is what made cross-node messages cost ten times
//! a local one); at low load a message waits for nothing but its own round
//! trip. Within a batch, messages queued one after the other for the same
//! channel share one PUBLISH (a bundle, see [`encode`]).
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

use super::envelope::{self, BUNDLE_BYTES, BUNDLE_MESSAGES, bundle_cost};
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
    let mut lasts = Vec::with_capacity(BATCH);
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
        let expected = encode(&batch, &mut output, &mut lasts);
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
        // Every message of a bundle takes its PUBLISH's answer.
        let mut answers = answers.drain(..);
        let mut answer = None;
        for (request, &last) in batch.drain(..).zip(&lasts) {
            if request.message.is_none() {
                request.reply.send(Ok(0));
                continue;
            }
            let this = answer
                .get_or_insert_with(|| answers.next().unwrap_or_else(|| Err(stopped())))
                .clone();
            request.reply.send(this);
            if last {
                answer = None;
            }
        }
    }
}

/// Writes the PUBLISH commands of `batch` into `output`: how many. Messages
/// queued one after the other for the same channel (a client writing
/// several messages to one peer at once) share one PUBLISH as a bundle
/// (see `envelope::BUNDLE`), within [`BUNDLE_BYTES`] and
/// [`BUNDLE_MESSAGES`]: Redis handles one command, and the other node reads
/// one message, for all of them. `lasts` gets, per request, whether it is
/// the last of its PUBLISH (true for a fence).
fn encode(batch: &[Request], output: &mut Vec<u8>, lasts: &mut Vec<bool>) -> usize {
    lasts.clear();
    let mut commands = 0;
    let mut line = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        let Some((channel, payload)) = &batch[i].message else {
            lasts.push(true);
            i += 1;
            continue;
        };
        let mut end = i + 1;
        // As a bundle: `#` and each envelope's cost.
        let mut bytes = 1 + bundle_cost(payload.len());
        while end < batch.len() && end - i < BUNDLE_MESSAGES {
            match &batch[end].message {
                Some((next, more))
                    if next == channel && bytes + bundle_cost(more.len()) <= BUNDLE_BYTES =>
                {
                    bytes += bundle_cost(more.len());
                    end += 1;
                }
                _ => break,
            }
        }
        if end - i == 1 {
            let args = [&b"PUBLISH"[..], channel.as_bytes(), payload.as_bytes()];
            resp::command(output, args.into_iter());
        } else {
            let payloads = || {
                batch[i..end]
                    .iter()
                    .filter_map(|r| r.message.as_ref())
                    .map(|(_, p)| p.as_bytes())
            };
            line.clear();
            envelope::bundle_line(&mut line, payloads().map(<[u8]>::len));
            let parts: Vec<&[u8]> = std::iter::once(&line[..]).chain(payloads()).collect();
            let args: [&[&[u8]]; 3] = [&[b"PUBLISH"], &[channel.as_bytes()], &parts];
            resp::command_of_parts(output, &args);
        }
        lasts.extend((i..end).map(|k| k + 1 == end));
        commands += 1;
        i = end;
    }
    commands
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, payload: &str) -> Request {
        Request {
            message: Some((channel.into(), payload.into())),
            reply: Reply::Call(Callback::new(|_| {})),
        }
    }

    fn fence() -> Request {
        Request {
            message: None,
            reply: Reply::Call(Callback::new(|_| {})),
        }
    }

    /// The (channel, envelopes) of every PUBLISH in `output`.
    fn published(mut output: &[u8]) -> Vec<(String, Vec<String>)> {
        let mut commands = Vec::new();
        while !output.is_empty() {
            let (frame, used) = resp::parse(output, usize::MAX).unwrap().unwrap();
            let Frame::Array(
                [
                    Item::Bulk(Some(verb)),
                    Item::Bulk(Some(channel)),
                    Item::Bulk(Some(payload)),
                ],
                3,
            ) = frame
            else {
                panic!("not a PUBLISH: {frame:?}");
            };
            assert_eq!(verb, b"PUBLISH");
            if payload.first() == Some(&envelope::BUNDLE) {
                assert!(
                    payload.len() <= BUNDLE_BYTES,
                    "a bundle of {} bytes",
                    payload.len()
                );
            }
            let envelopes = envelope::unbundle(payload).unwrap();
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
            commands.push((text(channel), envelopes.map(text).collect()));
            output = &output[used..];
        }
        commands
    }

    #[test]
    fn messages_one_after_the_other_for_a_channel_share_a_publish() {
        let big = "x".repeat(BUNDLE_BYTES - 10);
        let mut batch = vec![
            message("a", "1"),
            message("a", "2"),
            fence(),
            message("a", "3"),
            message("b", "4"),
            message("b", "5"),
            message("a", "6"),
            message("c", &big),
            message("c", "0123456789x"),
            message("c", "7"),
        ];
        batch.extend((0..BUNDLE_MESSAGES + 1).map(|_| message("d", "m")));
        let mut output = Vec::new();
        let mut lasts = Vec::new();
        let commands = encode(&batch, &mut output, &mut lasts);
        let many = vec!["m".to_string(); BUNDLE_MESSAGES];
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            published(&output),
            [
                ("a".into(), strings(&["1", "2"])),
                ("a".into(), strings(&["3"])),
                ("b".into(), strings(&["4", "5"])),
                ("a".into(), strings(&["6"])),
                // Past the bundle's bytes: a PUBLISH of its own.
                ("c".into(), vec![big.clone()]),
                ("c".into(), strings(&["0123456789x", "7"])),
                // Past the bundle's count: the rest in the next.
                ("d".into(), many),
                ("d".into(), strings(&["m"])),
            ]
        );
        assert_eq!(commands, 8);
        let mut expected = vec![
            false, true, true, true, false, true, true, true, false, true,
        ];
        expected.extend(std::iter::repeat_n(false, BUNDLE_MESSAGES - 1));
        expected.extend([true, true]);
        assert_eq!(lasts, expected);
    }

    #[test]
    fn a_bundle_with_its_first_line_stays_within_what_a_subscriber_takes() {
        // 64 envelopes of 1 KiB: 64 KiB of envelopes, and the lengths'
        // line on top would pass the smallest subscriber limit (64 KiB and
        // twice a tiny max_message_size).
        let envelope = "e".repeat(1024);
        let batch: Vec<Request> = (0..BUNDLE_MESSAGES)
            .map(|_| message("a", &envelope))
            .collect();
        let mut output = Vec::new();
        let commands = encode(&batch, &mut output, &mut Vec::new());
        assert_eq!(
            commands, 2,
            "the last envelope goes in a PUBLISH of its own"
        );
        let mut at = 0;
        while at < output.len() {
            let (_, used) = resp::parse(&output[at..], BUNDLE_BYTES).unwrap().unwrap();
            at += used;
        }
        let published = published(&output);
        assert_eq!(published[0].1.len() + published[1].1.len(), BUNDLE_MESSAGES);
    }
}
