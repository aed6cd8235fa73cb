//! `pairs --stalled N`: slow consumers alongside the pairs traffic. N more
//! clients (named `stalled-` + the run's usual name) complete the WebSocket
//! upgrade and then never read a byte; one feeder connection sends them
//! private messages `{"id":SEQ,"dst":NAME,"msg":"xxx…"}` of `--stalled-size`
//! bytes at `--stalled-rate` messages a second in total, round-robin.
//!
//! The server should close such a client (wssgate: 1013 when its queue is
//! full, or after `idle_timeout` of a write that does not move). The client
//! cannot see the close frame, since it does not read, so a close is seen in
//! one of two ways:
//!
//! - the feeder gets `recipient not connected: NAME` for a message it sent
//!   while the current connection under NAME was open: the `ref` of that
//!   notice (the message's `id`) is at least the feeder's sequence number
//!   when the connection completed its upgrade (the server registers a name
//!   before it answers 101). Notices about messages sent before the
//!   reconnect are thereby told apart from a second close. A notice without
//!   `ref` is taken to be about the feeder's last message;
//! - the socket itself: a reset, or the server's FIN (read-closed readiness),
//!   checked every [`SOCKET_CHECK`]. With wssgate the FIN waits behind the
//!   unread bytes and never arrives; other servers may reset.
//!
//! Then the client drops its socket (the unread bytes make that a reset,
//! which also frees the server's side at once) and reconnects under the
//! same name, at most once per [`RECONNECT_INTERVAL`], so the pressure lasts
//! the whole run. The feeder reads what comes back: `recipient too slow` and
//! `recipient not connected` notices are counted, not run errors.
//!
//! With `--pid`, the server's RSS is sampled every [`RSS_EVERY`] during the
//! measured window. Everything is bounded: at most N + 1 extra connections
//! at a time, at most [`MAX_STALLED`] stalled clients, and every task
//! returns on the run's stop.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use wssgate_wire::notice;

use super::conn::{self, Stream};
use super::frame::{self, Masker, Reader};
use super::options::PairsArgs;
use super::stats;
use super::{Run, STOP_WAIT, join_or_abort};

/// Most stalled clients one run may hold.
pub const MAX_STALLED: usize = 1000;
/// Highest `--stalled-rate` (messages a second, in total).
pub const MAX_STALLED_RATE: f64 = 10_000.0;
/// Largest `--stalled-size`: the gateway's default `max_message_size`
/// (a larger message would close the feeder with 1009).
pub const MAX_STALLED_SIZE: usize = wssgate_wire::DEFAULT_MAX_MESSAGE_SIZE;
/// Shortest time between two connection attempts of one stalled client
/// (at most 10 reconnects a second each).
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);
/// How often a stalled client looks at its socket for a reset or a FIN.
pub const SOCKET_CHECK: Duration = Duration::from_millis(100);
/// How often the server's RSS is read during the window.
pub const RSS_EVERY: Duration = Duration::from_millis(250);
/// Read buffer of a stalled client: only the upgrade response is read.
const STALLED_READ_BUFFER: usize = 512;
/// Read buffer of the feeder: notices and pings.
const FEEDER_READ_BUFFER: usize = 4 * 1024;
/// The feeder's shortest tick; a faster rate sends several messages a tick.
const MIN_TICK: Duration = Duration::from_millis(1);
/// Most frames the feeder writes at once; a feeder that fell behind (its
/// writes blocked) skips what it missed beyond this instead of catching up.
const MAX_BURST: u64 = 64;
/// Time the feeder gets to close politely at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Digits the longest `id` takes (u64::MAX).
const MAX_ID_DIGITS: usize = 20;

/// Extra connections `--stalled n` opens: the stalled clients and the feeder.
pub fn extra_connections(stalled: usize) -> usize {
    if stalled == 0 {
        0
    } else {
        stalled.saturating_add(1)
    }
}

/// What the stalled clients and their feeder saw, over the whole run
/// (warm-up included); the server's RSS over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct StalledFigures {
    /// Clients that never read (`--stalled`).
    pub clients: usize,
    /// True for the control run (`--stalled-reading`): they read everything.
    pub reading: bool,
    /// Bytes per feeder frame.
    pub frame_bytes: usize,
    /// Messages a second the feeder was asked to send, in total.
    pub feeder_rate: f64,
    /// Messages the feeder sent.
    pub feeder_sent: u64,
    /// Times the server closed a stalled client (each followed by a reconnect).
    pub closed_by_server: u64,
    /// Of those, seen through the feeder's `recipient not connected` notice.
    pub seen_by_notice: u64,
    /// Of those, seen on the socket (a reset or the server's FIN).
    pub seen_by_socket: u64,
    /// Reconnects that completed the upgrade.
    pub reconnects: u64,
    /// Reconnect attempts that failed (each retried).
    pub reconnect_failures: u64,
    /// The first failed reconnect's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_error: Option<String>,
    /// Frames the feeder received (notices, in practice).
    pub notices: u64,
    /// Of those, `recipient too slow, message dropped` notices.
    pub too_slow: u64,
    /// Of those, `recipient not connected` notices.
    pub not_connected: u64,
    /// The server's RSS during the window (with `--pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss: Option<ServerRss>,
}

/// The server's RSS sampled every [`RSS_EVERY`] over the measured window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerRss {
    /// Samples read.
    pub samples: usize,
    /// At the start of the window, bytes.
    pub first: u64,
    /// The largest sample, bytes.
    pub max: u64,
    /// At the end of the window, bytes.
    pub last: u64,
    /// `last - first`, bytes (negative when memory went back).
    pub growth: i64,
}

impl ServerRss {
    /// The summary of samples in time order; `None` without any.
    pub fn of(samples: &[u64]) -> Option<ServerRss> {
        let (&first, &last) = (samples.first()?, samples.last()?);
        Some(ServerRss {
            samples: samples.len(),
            first,
            max: samples.iter().copied().max().unwrap_or(first),
            last,
            growth: (last as i128 - first as i128).clamp(i64::MIN.into(), i64::MAX.into()) as i64,
        })
    }
}

impl std::fmt::Display for StalledFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "stalled: {} client(s) that {}; feeder sent {} messages of {} bytes ({} msgs/s asked)",
            self.clients,
            if self.reading {
                "read everything (control run)"
            } else {
                "never read"
            },
            self.feeder_sent,
            self.frame_bytes,
            self.feeder_rate
        )?;
        write!(
            f,
            "stalled: closed by the server {} times ({} seen by notice, {} on the socket), \
             reconnected {} times, {} reconnects failed",
            self.closed_by_server,
            self.seen_by_notice,
            self.seen_by_socket,
            self.reconnects,
            self.reconnect_failures
        )?;
        match &self.reconnect_error {
            Some(e) => writeln!(f, " (first: {e})")?,
            None => writeln!(f)?,
        }
        writeln!(
            f,
            "stalled: feeder got {} notices ({} too slow, {} not connected)",
            self.notices, self.too_slow, self.not_connected
        )?;
        if let Some(rss) = &self.server_rss {
            let mib = |b: u64| b as f64 / 1048576.0;
            writeln!(
                f,
                "server RSS in the window: first {:.1} MiB, max {:.1} MiB, last {:.1} MiB, \
                 growth {:+.1} MiB ({} samples)",
                mib(rss.first),
                mib(rss.max),
                mib(rss.last),
                rss.growth as f64 / 1048576.0,
                rss.samples
            )?;
        }
        Ok(())
    }
}

/// One stalled client's name and what the feeder learnt about it.
struct Slot {
    name: String,
    /// The highest `ref` of a `recipient not connected` notice for this name.
    absent_ref: AtomicU64,
    /// Woken when `absent_ref` may have moved.
    wake: Notify,
}

/// State shared by the stalled clients, the feeder and the RSS sampler.
struct Shared {
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    /// The `id` of the feeder's next message (from 1; 0 means none).
    next_id: AtomicU64,
    feeder_sent: AtomicU64,
    seen_by_notice: AtomicU64,
    seen_by_socket: AtomicU64,
    reconnects: AtomicU64,
    reconnect_failures: AtomicU64,
    reconnect_error: Mutex<Option<String>>,
    notices: AtomicU64,
    too_slow: AtomicU64,
    not_connected: AtomicU64,
    rss: Mutex<Vec<u64>>,
    /// `--stalled-reading`: the clients read and discard (the control run).
    reading: bool,
}

/// The running stalled clients and feeder of a `pairs` run.
pub(crate) struct Stalled {
    run: Arc<Run>,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    clients: usize,
    frame_bytes: usize,
    rate: f64,
}

/// Checks the `--stalled*` flags, opens the stalled clients and the feeder
/// (connection indices from `first_index` on, for their source addresses)
/// and starts them; `None` with `--stalled 0`.
pub(crate) async fn start(
    run: &Arc<Run>,
    args: &PairsArgs,
    first_index: usize,
) -> anyhow::Result<Option<Stalled>> {
    let n = args.stalled;
    if n == 0 {
        return Ok(None);
    }
    anyhow::ensure!(n <= MAX_STALLED, "--stalled must be at most {MAX_STALLED}");
    anyhow::ensure!(
        args.stalled_rate > 0.0 && args.stalled_rate <= MAX_STALLED_RATE,
        "--stalled-rate must be above 0 and at most {MAX_STALLED_RATE}"
    );
    anyhow::ensure!(
        args.stalled_size <= MAX_STALLED_SIZE,
        "--stalled-size must be at most {MAX_STALLED_SIZE} (the gateway's default \
         max_message_size; a larger message closes the feeder)"
    );
    let slots: Vec<Slot> = (0..n)
        .map(|i| Slot {
            name: format!("stalled-{}", run.name(i)),
            absent_ref: AtomicU64::new(0),
            wake: Notify::new(),
        })
        .collect();
    let longest = slots.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let payload_len = frame::payload_len_for(args.stalled_size);
    let minimum = feeder_overhead(longest);
    anyhow::ensure!(
        payload_len >= minimum,
        "--stalled-size {} is too small: a feeder frame needs at least {} bytes",
        args.stalled_size,
        minimum + frame::client_header_len(minimum)
    );
    let shared = Arc::new(Shared {
        by_name: slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect(),
        slots,
        next_id: AtomicU64::new(1),
        feeder_sent: AtomicU64::new(0),
        seen_by_notice: AtomicU64::new(0),
        seen_by_socket: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        reconnect_failures: AtomicU64::new(0),
        reconnect_error: Mutex::new(None),
        notices: AtomicU64::new(0),
        too_slow: AtomicU64::new(0),
        not_connected: AtomicU64::new(0),
        rss: Mutex::new(Vec::new()),
        reading: args.stalled_reading,
    });
    let opened: Vec<_> = futures_util::stream::iter(0..n)
        .map(|slot| {
            let shared = &shared;
            async move {
                let index = first_index + slot;
                let name = &shared.slots[slot].name;
                let opened = open(run, shared, index, name).await;
                opened.map(|(stream, since)| (slot, stream, since))
            }
        })
        .buffer_unordered(run.common.open_concurrency)
        .collect()
        .await;
    let opened = opened.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let feeder_index = first_index + n;
    let feeder_name = format!("stalled-{}feeder", run.prefix);
    let mut feeder_reader = Reader::new(FEEDER_READ_BUFFER);
    let feeder = run
        .target(feeder_index)
        .open(feeder_index, &feeder_name, &mut feeder_reader)
        .await
        .map_err(|e| anyhow::anyhow!("the stalled clients' feeder {feeder_name}: {e:#}"))?;
    let mut tasks = JoinSet::new();
    for (slot, stream, since) in opened {
        tasks.spawn(stalled(
            run.clone(),
            shared.clone(),
            slot,
            first_index + slot,
            stream,
            since,
        ));
    }
    tasks.spawn(feed(
        run.clone(),
        shared.clone(),
        Feeder {
            stream: feeder,
            reader: feeder_reader,
            index: feeder_index,
            rate: args.stalled_rate,
            payload_len,
        },
    ));
    Ok(Some(Stalled {
        run: run.clone(),
        shared,
        tasks,
        clients: n,
        frame_bytes: frame::client_header_len(payload_len) + payload_len,
        rate: args.stalled_rate,
    }))
}

impl Stalled {
    /// Samples the server's RSS (`--pid`) every [`RSS_EVERY`] over the
    /// window (nanoseconds since the run's epoch), ends included.
    pub(crate) fn sample_rss(&mut self, window: (u64, u64)) {
        let Some(pid) = self.run.common.pid() else {
            return;
        };
        let shared = self.shared.clone();
        let epoch = Instant::from_std(self.run.epoch);
        self.tasks.spawn(async move {
            let end = epoch + Duration::from_nanos(window.1);
            let mut at = epoch + Duration::from_nanos(window.0);
            loop {
                tokio::time::sleep_until(at).await;
                if let Some(bytes) = stats::rss_bytes(pid) {
                    shared
                        .rss
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(bytes);
                }
                if at >= end {
                    break;
                }
                at = (at + RSS_EVERY).min(end);
            }
        });
    }

    /// Waits for the tasks (the run's stop must have been given) and
    /// returns the figures.
    pub(crate) async fn finish(mut self) -> StalledFigures {
        join_or_abort(&mut self.tasks, STOP_WAIT).await;
        let s = &self.shared;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (notice, socket) = (count(&s.seen_by_notice), count(&s.seen_by_socket));
        StalledFigures {
            clients: self.clients,
            reading: s.reading,
            frame_bytes: self.frame_bytes,
            feeder_rate: self.rate,
            feeder_sent: count(&s.feeder_sent),
            closed_by_server: notice + socket,
            seen_by_notice: notice,
            seen_by_socket: socket,
            reconnects: count(&s.reconnects),
            reconnect_failures: count(&s.reconnect_failures),
            reconnect_error: s
                .reconnect_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            notices: count(&s.notices),
            too_slow: count(&s.too_slow),
            not_connected: count(&s.not_connected),
            server_rss: ServerRss::of(&s.rss.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }
}

/// Opens a stalled client's connection (the upgrade read, then nothing) and
/// returns it with the feeder's sequence number at that moment: every
/// message with this `id` or a later one went to this connection.
async fn open(
    run: &Run,
    shared: &Shared,
    index: usize,
    name: &str,
) -> anyhow::Result<(Stream, u64)> {
    let mut reader = Reader::new(STALLED_READ_BUFFER);
    let stream = run
        .target(index)
        .open(index, name, &mut reader)
        .await
        .map_err(|e| anyhow::anyhow!("stalled client {name}: {e:#}"))?;
    Ok((stream, shared.next_id.load(Ordering::SeqCst)))
}

/// How a stalled client learnt that the server closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The feeder's `recipient not connected` notice.
    Notice,
    /// A reset or FIN on its socket.
    Socket,
}

/// One stalled client: holds its connection without reading until the
/// server closes it, then reconnects (at most once per
/// [`RECONNECT_INTERVAL`]) and stalls again, until the run's stop.
async fn stalled(
    run: Arc<Run>,
    shared: Arc<Shared>,
    slot: usize,
    index: usize,
    stream: Stream,
    since: u64,
) {
    let name = shared.slots[slot].name.clone();
    let mut held = Some((stream, since));
    let mut last_attempt = Instant::now();
    loop {
        if let Some((mut stream, since)) = held.take() {
            if shared.reading {
                // The control run: the same feed to a consumer that keeps up.
                tokio::select! {
                    biased;
                    _ = run.stop.cancelled() => return,
                    () = discard(&mut stream, index) => {}
                }
                shared.seen_by_socket.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let seen = tokio::select! {
                biased;
                _ = run.stop.cancelled() => return,
                seen = hold(&shared.slots[slot], &stream, since) => seen,
            };
            match seen {
                Seen::Notice => shared.seen_by_notice.fetch_add(1, Ordering::Relaxed),
                Seen::Socket => shared.seen_by_socket.fetch_add(1, Ordering::Relaxed),
            };
            // Unread bytes make the close a reset: the server's side goes at once.
            drop(stream);
        }
        tokio::select! {
            biased;
            _ = run.stop.cancelled() => return,
            () = tokio::time::sleep_until(last_attempt + RECONNECT_INTERVAL) => {}
        }
        last_attempt = Instant::now();
        let opened = tokio::select! {
            biased;
            _ = run.stop.cancelled() => return,
            opened = open(&run, &shared, index, &name) => opened,
        };
        match opened {
            Ok(conn) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                held = Some(conn);
            }
            Err(e) => {
                shared.reconnect_failures.fetch_add(1, Ordering::Relaxed);
                let mut first = shared
                    .reconnect_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
}

/// Reads and drops everything until the connection ends, answering the
/// server's pings (a control client must not be closed as idle in a long
/// run) and leaving at its close frame.
async fn discard(stream: &mut Stream, index: usize) {
    let mut reader = Reader::new(64 * 1024);
    let mut masker = Masker::new(index);
    let mut out = Vec::new();
    loop {
        match reader.fill(stream).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if frame::drain(&mut reader, &mut out, &mut masker, |_| {}).is_err() {
            return;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// Waits, never reading, until the connection opened at feeder sequence
/// `since` is known to be closed.
async fn hold(slot: &Slot, stream: &Stream, since: u64) -> Seen {
    let mut check = tokio::time::interval(SOCKET_CHECK);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = slot.wake.notified() => {
                if slot.absent_ref.load(Ordering::Acquire) >= since {
                    return Seen::Notice;
                }
            }
            _ = check.tick() => {
                if socket_closed(stream) {
                    return Seen::Socket;
                }
            }
        }
    }
}

/// True when the socket under `stream` was reset or got the server's FIN,
/// without reading from it: its pending error, or the readiness the
/// runtime recorded (kept, since nothing is ever read).
fn socket_closed(stream: &Stream) -> bool {
    let tcp: &TcpStream = match stream {
        Stream::Plain(tcp) => tcp,
        Stream::Tls(tls) => tls.get_ref().0,
    };
    if !matches!(tcp.take_error(), Ok(None)) {
        return true;
    }
    match tcp
        .ready(Interest::READABLE | Interest::WRITABLE)
        .now_or_never()
    {
        Some(Ok(ready)) => ready.is_read_closed() || ready.is_write_closed(),
        Some(Err(_)) => true,
        None => false,
    }
}

/// The feeder's connection and what it sends.
struct Feeder {
    stream: Stream,
    reader: Reader,
    /// Its connection index (mask seed).
    index: usize,
    /// Messages a second, in total.
    rate: f64,
    /// Payload bytes per message.
    payload_len: usize,
}

/// The feeder: sends `rate` messages a second round-robin to the stalled
/// names, reads and counts what comes back, answers pings.
async fn feed(run: Arc<Run>, shared: Arc<Shared>, feeder: Feeder) {
    let Feeder {
        mut stream,
        mut reader,
        index,
        rate,
        payload_len,
    } = feeder;
    let mut masker = Masker::new(index);
    let mut out = Vec::new();
    let mut payload = Vec::with_capacity(payload_len);
    let dsts: Vec<String> = shared
        .slots
        .iter()
        .map(|s| serde_json::to_string(&s.name).unwrap_or_default())
        .collect();
    let period = Duration::from_secs_f64(1.0 / rate).max(MIN_TICK);
    let begin = Instant::now();
    let mut tick = tokio::time::interval_at(begin + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut due_so_far = 0u64;
    let mut next_slot = 0;
    let clean = loop {
        if !out.is_empty() {
            // The write first: one that completes at once is not cut short
            // by the stop (half a frame would spoil the close after it).
            tokio::select! {
                biased;
                written = conn::send(&mut stream, &out) => if let Err(e) = written {
                    return run.error(|| format!("stalled feeder: write failed: {e}"));
                },
                _ = run.stop.cancelled() => break false,
            }
            out.clear();
        }
        let read = tokio::select! {
            biased;
            _ = run.stop.cancelled() => break true,
            read = reader.fill(&mut stream) => read,
            _ = tick.tick() => {
                let due = (begin.elapsed().as_secs_f64() * rate) as u64;
                let n = due.saturating_sub(due_so_far).min(MAX_BURST);
                due_so_far = due_so_far.max(due);
                for _ in 0..n {
                    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
                    feeder_payload(&mut payload, id, &dsts[next_slot], payload_len);
                    frame::append_frame(&mut out, frame::OP_TEXT, &payload, masker.next_key());
                    next_slot = (next_slot + 1) % dsts.len();
                }
                shared.feeder_sent.fetch_add(n, Ordering::Relaxed);
                continue;
            }
        };
        match read {
            Ok(0) => return run.error(|| "stalled feeder: the server closed it".to_owned()),
            Err(e) => return run.error(|| format!("stalled feeder: read failed: {e}")),
            Ok(_) => {}
        }
        let drained = frame::drain(&mut reader, &mut out, &mut masker, |payload| {
            shared.on_notice(&run, payload)
        });
        if let Err(why) = drained {
            return run.error(|| format!("stalled feeder: {why}"));
        }
    };
    if clean {
        conn::close(&mut stream, &mut reader, masker.next_key(), CLOSE_WAIT).await;
    }
}

impl Shared {
    /// Counts a frame the feeder received; a `recipient not connected`
    /// notice for a stalled name tells that client (see the module doc).
    /// Other error notices are run errors.
    fn on_notice(&self, run: &Run, payload: &[u8]) {
        self.notices.fetch_add(1, Ordering::Relaxed);
        match classify(payload) {
            Notice::TooSlow => {
                self.too_slow.fetch_add(1, Ordering::Relaxed);
            }
            Notice::NotConnected { name, reference } => {
                self.not_connected.fetch_add(1, Ordering::Relaxed);
                if let Some(&i) = self.by_name.get(&name) {
                    // Without a ref: about the last message sent, at worst.
                    let reference = reference
                        .unwrap_or_else(|| self.next_id.load(Ordering::SeqCst).saturating_sub(1));
                    let slot = &self.slots[i];
                    slot.absent_ref.fetch_max(reference, Ordering::AcqRel);
                    slot.wake.notify_one();
                }
            }
            Notice::Other => run.notice(payload),
        }
    }
}

/// What a frame the feeder received says.
#[derive(Debug, PartialEq, Eq)]
enum Notice {
    /// `recipient too slow, message dropped: NAME`.
    TooSlow,
    /// `recipient not connected: NAME`, with the request's `id` as `ref`.
    NotConnected {
        /// The name nobody holds.
        name: String,
        /// The `ref` of the notice, if it has one.
        reference: Option<u64>,
    },
    /// Anything else.
    Other,
}

/// Reads a gateway notice (`docs/PROTOCOL.md` section 4.3).
fn classify(payload: &[u8]) -> Notice {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return Notice::Other;
    };
    if value["type"] != "error" {
        return Notice::Other;
    }
    let Some(msg) = value["msg"].as_str() else {
        return Notice::Other;
    };
    let not_connected = msg
        .strip_prefix(notice::NOT_CONNECTED)
        .and_then(|rest| rest.strip_prefix(": "));
    if let Some(name) = not_connected {
        Notice::NotConnected {
            name: name.to_owned(),
            reference: value["ref"].as_u64(),
        }
    } else if msg.starts_with(notice::TOO_SLOW) {
        Notice::TooSlow
    } else {
        Notice::Other
    }
}

/// Bytes of a feeder payload besides the filler, for the longest `id` and
/// a name of `name_len` bytes (JSON escapes aside: names here are ASCII).
fn feeder_overhead(name_len: usize) -> usize {
    r#"{"id":,"dst":"","msg":""}"#.len() + MAX_ID_DIGITS + name_len
}

/// Writes into `out` the feeder message `{"id":ID,"dst":DST,"msg":"xxx…"}`
/// padded to `len` bytes (`dst_json` is the name as a JSON string).
fn feeder_payload(out: &mut Vec<u8>, id: u64, dst_json: &str, len: usize) {
    out.clear();
    let mut head = String::with_capacity(48 + dst_json.len());
    let _ = write!(head, r#"{{"id":{id},"dst":{dst_json},"msg":""#);
    out.extend_from_slice(head.as_bytes());
    let tail = b"\"}";
    out.resize(len.saturating_sub(tail.len()).max(out.len()), b'x');
    out.extend_from_slice(tail);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_told_apart() {
        let not_connected =
            br#"{"src":"@gateway","dst":"f","type":"error","msg":"recipient not connected: stalled-b-0","ref":42}"#;
        assert_eq!(
            classify(not_connected),
            Notice::NotConnected {
                name: "stalled-b-0".into(),
                reference: Some(42)
            }
        );
        let without_ref = br#"{"type":"error","msg":"recipient not connected: a b"}"#;
        assert_eq!(
            classify(without_ref),
            Notice::NotConnected {
                name: "a b".into(),
                reference: None
            }
        );
        let too_slow = br#"{"src":"@gateway","type":"error","msg":"recipient too slow, message dropped: x","ref":7}"#;
        assert_eq!(classify(too_slow), Notice::TooSlow);
        for other in [
            &br#"{"type":"error","msg":"message too large"}"#[..],
            br#"{"type":"list","msg":"recipient not connected: x"}"#,
            br#"{"type":"error","msg":7}"#,
            b"plain text",
            b"[1,2]",
        ] {
            assert_eq!(
                classify(other),
                Notice::Other,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn feeder_frames_have_the_asked_size_and_parse() {
        let dst = serde_json::to_string("stalled-bench7-0").unwrap();
        let mut payload = Vec::new();
        for size in [60_000, 65_536, 200, 131] {
            let len = frame::payload_len_for(size);
            assert!(len >= feeder_overhead("stalled-bench7-0".len()));
            for id in [1, 12_345, u64::MAX] {
                feeder_payload(&mut payload, id, &dst, len);
                assert_eq!(payload.len(), len);
                let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(json["id"], id);
                assert_eq!(json["dst"], "stalled-bench7-0");
                let mut out = Vec::new();
                frame::append_frame(&mut out, frame::OP_TEXT, &payload, [1, 2, 3, 4]);
                assert!(
                    out.len() <= size && out.len() + 2 >= size,
                    "{size}: {}",
                    out.len()
                );
            }
        }
    }

    #[test]
    fn rss_summary() {
        assert_eq!(ServerRss::of(&[]), None);
        let rss = ServerRss::of(&[10, 30, 20]).unwrap();
        assert_eq!((rss.samples, rss.first, rss.max, rss.last), (3, 10, 30, 20));
        assert_eq!(rss.growth, 10);
        assert_eq!(ServerRss::of(&[30, 5]).unwrap().growth, -25);
    }

    #[test]
    fn extra_connections_count_the_feeder() {
        assert_eq!(extra_connections(0), 0);
        assert_eq!(extra_connections(3), 4);
        assert_eq!(extra_connections(usize::MAX), usize::MAX);
    }
}
