//! `pairs`: N connections in N/2 pairs; each keeps K private messages in
//! flight to its partner (sends K, then one more per message received) and
//! measures delivered messages per second and latency (the send time rides
//! in the message as nanoseconds since the run's epoch).
//!
//! With `--rate R` the load is open-loop instead: R messages a second in
//! total, evenly spaced and dealt round-robin to the connections whatever
//! comes back ([`super::pace`]), each stamped with its scheduled send time,
//! to read latency at a chosen fraction of a server's maximum.
//!
//! The hot path per connection: one read, every complete frame in it
//! handled (latencies noted in a reused vector), one reply per message
//! appended to a reused write buffer from the pre-serialized template, then
//! one write and one flush; the latencies go into a histogram shard under
//! one lock per read, not per message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::conn::{self, Stream};
use super::frame::{self, Masker, Reader, Template};
use super::options::{Framing, PairsArgs};
use super::pace::Clock;
use super::stalled::{self, StalledFigures};
use super::stats::{self, Latency};
use super::{Figures, Outcome, Run, STOP_WAIT, join_or_abort};

/// Read buffer per connection: K small frames fit many times over.
const READ_BUFFER: usize = 4 * 1024;
/// Most messages a connection may keep in flight.
const MAX_IN_FLIGHT: usize = 10_000;
/// Highest `--rate` (messages a second in total).
const MAX_RATE: f64 = 10_000_000.0;
/// Time the connections get to close politely at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What `pairs` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PairsFigures {
    /// Connections open.
    pub connections: usize,
    /// Messages each connection kept in flight (closed loop).
    pub in_flight: Option<usize>,
    /// Messages per second sent in total (open loop, `--rate`).
    pub rate: Option<f64>,
    /// Messages per write in the open loop (`--burst`).
    pub burst: Option<u64>,
    /// Bytes per client frame.
    pub frame_bytes: usize,
    /// `raw` or `tungstenite`.
    pub framing: &'static str,
    /// Messages delivered in the window.
    pub messages: u64,
    /// Messages delivered per second.
    pub msgs_per_s: f64,
    /// Send-to-receive latency of the messages delivered in the window.
    pub latency: Latency,
    /// The never-reading clients and their feeder (`--stalled`); absent without.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<StalledFigures>,
}

impl std::fmt::Display for PairsFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.in_flight, self.rate) {
            (_, Some(rate)) => write!(
                f,
                "{} connections, {rate} msgs/s sent in bursts of {}",
                self.connections,
                self.burst.unwrap_or(1)
            )?,
            (k, None) => write!(
                f,
                "{} connections, {} in flight each",
                self.connections,
                k.unwrap_or_default()
            )?,
        }
        writeln!(
            f,
            ", {}-byte frames ({} framing)",
            self.frame_bytes, self.framing
        )?;
        writeln!(
            f,
            "delivered: {} messages, {:.0} msgs/s",
            self.messages, self.msgs_per_s
        )?;
        writeln!(f, "latency: {}", self.latency)?;
        match &self.stalled {
            Some(s) => write!(f, "{s}"),
            None => Ok(()),
        }
    }
}

/// The measured window in nanoseconds since the epoch, and the histogram
/// shard a connection records into.
struct Plan {
    window: (u64, u64),
    shard: Arc<Mutex<Histogram<u64>>>,
    in_flight: usize,
    /// Open loop: the run's schedule.
    pace: Option<Arc<Clock>>,
}

/// Runs `pairs`.
pub(crate) async fn run(run: &Arc<Run>, args: &PairsArgs) -> anyhow::Result<Outcome> {
    let n = args.connections;
    anyhow::ensure!(
        n >= 2 && n.is_multiple_of(2),
        "pairs needs an even number of connections (-n)"
    );
    anyhow::ensure!(
        (1..=MAX_IN_FLIGHT).contains(&args.in_flight),
        "-k must be 1..={MAX_IN_FLIGHT}"
    );
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate > 0.0 && rate <= MAX_RATE,
            "--rate must be above 0 and at most {MAX_RATE}"
        );
        anyhow::ensure!(args.framing == Framing::Raw, "--rate needs the raw framing");
        anyhow::ensure!(
            (1..=MAX_IN_FLIGHT as u64).contains(&args.burst),
            "--burst must be 1..={MAX_IN_FLIGHT}"
        );
    }
    let templates = (0..n)
        .map(|i| Template::new(&run.name(i ^ 1), args.size, false))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let frame_bytes = templates[0].frame_len();
    // --stalled: slow consumers and their feeder, pressing from the start.
    let mut stalled = stalled::start(run, args, n).await?;
    let open = conn::open_all(run, 0..n, READ_BUFFER, false).await;
    if open.len() < n {
        anyhow::bail!(
            "only {} of {n} connections opened: {}",
            open.len(),
            run.first_error().unwrap_or_default()
        );
    }
    let shards: Vec<_> = (0..run.common.threads)
        .map(|_| Arc::new(Mutex::new(stats::histogram())))
        .collect();
    let clock = match args.rate {
        Some(rate) => Some(Clock::start(run, n, rate, args.burst)?),
        None => None,
    };
    let start_ns = run.now_ns() + run.common.warmup.as_nanos() as u64;
    let end_ns = start_ns + run.common.duration.as_nanos() as u64;
    if let Some(s) = &mut stalled {
        s.sample_rss((start_ns, end_ns));
    }
    let mut tasks = JoinSet::new();
    for ((i, stream, reader), template) in open.into_iter().zip(templates) {
        let plan = Plan {
            window: (start_ns, end_ns),
            shard: shards[i % shards.len()].clone(),
            in_flight: args.in_flight,
            pace: clock.clone(),
        };
        let run = run.clone();
        match args.framing {
            Framing::Raw => tasks.spawn(peer_raw(run, i, stream, reader, template, plan)),
            Framing::Tungstenite => {
                tasks.spawn(peer_tungstenite(run, i, stream, reader, template, plan))
            }
        };
    }
    let (first, last) = run.window((start_ns, end_ns)).await;
    run.stop.cancel();
    join_or_abort(&mut tasks, STOP_WAIT).await;
    let stalled = match stalled {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let mut total = stats::histogram();
    for shard in &shards {
        total.add(&*shard.lock().unwrap_or_else(|p| p.into_inner()))?;
    }
    let window = last.wall.duration_since(first.wall).as_secs_f64();
    let figures = PairsFigures {
        connections: n,
        in_flight: args.rate.is_none().then_some(args.in_flight),
        rate: args.rate,
        burst: args.rate.map(|_| args.burst),
        frame_bytes,
        framing: match args.framing {
            Framing::Raw => "raw",
            Framing::Tungstenite => "tungstenite",
        },
        messages: total.len(),
        msgs_per_s: total.len() as f64 / window,
        latency: Latency::of(&total),
        stalled,
    };
    Ok(Outcome {
        units: Some(figures.messages),
        figures: Figures::Pairs(figures),
        window: (first, last),
    })
}

/// Records the latencies of one read (one lock) and counts the messages.
fn record(run: &Run, plan: &Plan, latencies: &mut Vec<u64>, got: u64) {
    if !latencies.is_empty() {
        let mut h = plan.shard.lock().unwrap_or_else(|p| p.into_inner());
        for &ns in latencies.iter() {
            h.saturating_record(ns.clamp(1, stats::MAX_LATENCY_NS));
        }
        latencies.clear();
    }
    run.progress
        .fetch_add(got, std::sync::atomic::Ordering::Relaxed);
}

/// One connection on the hand-rolled framing.
async fn peer_raw(
    run: Arc<Run>,
    index: usize,
    mut stream: Stream,
    mut reader: Reader,
    template: Template,
    plan: Plan,
) {
    let mut masker = Masker::new(index);
    let mut out = Vec::with_capacity(template.frame_len() * (plan.in_flight + 1));
    let mut latencies = Vec::with_capacity(plan.in_flight * 2);
    let now = run.now_ns();
    // Open loop: messages sent so far (the schedule says when each is due).
    let mut paced = 0u64;
    if plan.pace.is_none() {
        for _ in 0..plan.in_flight {
            template.append(&mut out, now, 0, masker.next_key());
        }
    }
    let clean = loop {
        if !out.is_empty() {
            let write = async {
                stream.write_all(&out).await?;
                stream.flush().await
            };
            // The write first: one that completes at once is not cut short
            // by the stop (half a frame would spoil the close after it).
            tokio::select! {
                biased;
                written = write => if let Err(e) = written {
                    run.error(|| format!("connection {index}: write failed: {e}"));
                    return;
                },
                _ = run.stop.cancelled() => break false,
            }
            out.clear();
        }
        let read = tokio::select! {
            biased;
            _ = run.stop.cancelled() => break true,
            read = reader.fill(&mut stream) => read,
            due = due(plan.pace.as_deref(), index, paced) => {
                if let Some(clock) = &plan.pace {
                    for _ in 0..due {
                        let at = clock.scheduled_ns(index, paced);
                        template.append(&mut out, at, 0, masker.next_key());
                        paced += 1;
                    }
                }
                continue;
            }
        };
        match read {
            Ok(0) => return run.error(|| format!("connection {index}: the server closed it")),
            Err(e) => return run.error(|| format!("connection {index}: read failed: {e}")),
            Ok(_) => {}
        }
        let now = run.now_ns();
        let in_window = (plan.window.0..plan.window.1).contains(&now);
        let mut got = 0;
        let drained =
            frame::drain(
                &mut reader,
                &mut out,
                &mut masker,
                |payload| match frame::find_stamp(payload, false) {
                    Some((sent, _)) => {
                        got += 1;
                        if in_window {
                            latencies.push(now.saturating_sub(sent));
                        }
                    }
                    None => run.notice(payload),
                },
            );
        if let Err(why) = drained {
            return run.error(|| format!("connection {index}: {why}"));
        }
        record(&run, &plan, &mut latencies, got);
        if plan.pace.is_none() {
            for _ in 0..got {
                template.append(&mut out, now, 0, masker.next_key());
            }
        }
    };
    if clean {
        conn::close(&mut stream, &mut reader, masker.next_key(), CLOSE_WAIT).await;
    }
}

/// One connection on tungstenite's `WebSocketStream`: every message already
/// readable is handled, the replies fed, then one flush. Each message is an
/// owned `Message` both ways (an allocation per message that the raw path avoids).
async fn peer_tungstenite(
    run: Arc<Run>,
    index: usize,
    stream: Stream,
    reader: Reader,
    template: Template,
    plan: Plan,
) {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(READ_BUFFER);
    let mut ws = WebSocketStream::from_partially_read(
        stream,
        reader.pending().to_vec(),
        Role::Client,
        Some(config),
    )
    .await;
    let mut latencies = Vec::with_capacity(plan.in_flight * 2);
    let mut text = Vec::with_capacity(template.frame_len());
    let message = |text: &mut Vec<u8>, now: u64| {
        text.clear();
        template.append_payload(text, now, 0);
        let s = String::from_utf8(text.clone()).expect("templates are UTF-8");
        Message::text(s)
    };
    let now = run.now_ns();
    for _ in 0..plan.in_flight {
        if ws.feed(message(&mut text, now)).await.is_err() {
            return run.error(|| format!("connection {index}: write failed"));
        }
    }
    loop {
        let flushed = tokio::select! {
            biased;
            _ = run.stop.cancelled() => break,
            flushed = ws.flush() => flushed,
        };
        if let Err(e) = flushed {
            return run.error(|| format!("connection {index}: write failed: {e}"));
        }
        let first = tokio::select! {
            biased;
            _ = run.stop.cancelled() => break,
            next = ws.next() => next,
        };
        let now = run.now_ns();
        let in_window = (plan.window.0..plan.window.1).contains(&now);
        let mut got = 0;
        let mut next = first;
        loop {
            match next {
                Some(Ok(Message::Text(t))) => match frame::find_stamp(t.as_bytes(), false) {
                    Some((sent, _)) => {
                        got += 1;
                        if in_window {
                            latencies.push(now.saturating_sub(sent));
                        }
                    }
                    None => run.notice(t.as_bytes()),
                },
                Some(Ok(Message::Close(c))) => {
                    return run
                        .error(|| format!("connection {index}: closed by the server: {c:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return run.error(|| format!("connection {index}: {e}")),
                None => return run.error(|| format!("connection {index}: the server closed it")),
            }
            // Whatever the last read already brought in; no waiting.
            match ws.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        record(&run, &plan, &mut latencies, got);
        for _ in 0..got {
            if let Err(e) = ws.feed(message(&mut text, now)).await {
                return run.error(|| format!("connection {index}: write failed: {e}"));
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        ws.close(None).await?;
        while ws.next().await.is_some() {}
        Ok::<_, tokio_tungstenite::tungstenite::Error>(())
    })
    .await;
}

/// Open loop: waits for this connection's next due messages; closed loop:
/// never returns. Cancel-safe.
async fn due(clock: Option<&Clock>, index: usize, sent: u64) -> u64 {
    match clock {
        Some(clock) => clock.due(index, sent).await,
        None => std::future::pending().await,
    }
}
