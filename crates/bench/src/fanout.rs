//! `fanout`: N members join a room (each join confirmed by a message to
//! itself, since a server handles a connection's frames in order), one
//! publisher (also a member: wssgate lets only members send to a room)
//! sends numbered, timestamped messages at a fixed rate. Reports deliveries
//! per second, per-delivery latency, and the time for one message to reach
//! every member (its last arrival minus its send time).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;

use super::conn::{self, Stream};
use super::frame::{self, Masker, Reader, Template};
use super::options::FanoutArgs;
use super::stats::{self, Latency};
use super::{Figures, Outcome, Run, STOP_WAIT, join_or_abort};

/// Read buffer per member.
const READ_BUFFER: usize = 2 * 1024;
/// Most messages one run may publish.
const MAX_PUBLISHED: u64 = 1_000_000;
/// Time the last messages get to reach everyone after the window.
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// The text of the message a member sends itself to confirm its join.
const JOIN_ACK: &str = "wssgate-bench join barrier";
/// Time for a join's confirmation.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the connections get to close politely at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// The publisher's shortest tick; faster rates send several messages a tick.
const MIN_TICK: Duration = Duration::from_millis(1);

/// What `fanout` measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutFigures {
    /// Room members (besides the publisher).
    pub members: usize,
    /// Messages per second asked for.
    pub rate: f64,
    /// Bytes per client frame.
    pub frame_bytes: usize,
    /// Messages published in the window.
    pub published: u64,
    /// Deliveries received in the window.
    pub deliveries: u64,
    /// Deliveries per second.
    pub deliveries_per_s: f64,
    /// Messages published in the window that reached every member.
    pub complete: u64,
    /// Messages published in the window that did not reach every member
    /// by the end of the drain.
    pub incomplete: u64,
    /// Time for one message to reach every member.
    pub reach_all: Latency,
    /// Latency of each delivery.
    pub delivery: Latency,
}

impl std::fmt::Display for FanoutFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} members, {} msgs/s published, {}-byte frames",
            self.members, self.rate, self.frame_bytes
        )?;
        writeln!(
            f,
            "published {}, delivered {} ({:.0} deliveries/s); reached everyone: {}, not: {}",
            self.published, self.deliveries, self.deliveries_per_s, self.complete, self.incomplete
        )?;
        writeln!(f, "time to reach all: {}", self.reach_all)?;
        writeln!(f, "per delivery: {}", self.delivery)
    }
}

/// Per published message: send time, members still to receive it, last arrival.
struct Tracker {
    sent: Vec<AtomicU64>,
    remaining: Vec<AtomicU32>,
    last: Vec<AtomicU64>,
    published: AtomicU64,
    window: (u64, u64),
    deliveries: AtomicU64,
}

/// Runs `fanout`.
pub(crate) async fn run(run: &Arc<Run>, args: &FanoutArgs) -> anyhow::Result<Outcome> {
    let members = args.connections;
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be above 0"
    );
    anyhow::ensure!(args.room.starts_with('#'), "--room must start with '#'");
    let total_s = (run.common.warmup + run.common.duration).as_secs_f64();
    let capacity = (args.rate * total_s).ceil() as u64 + 1;
    anyhow::ensure!(
        capacity <= MAX_PUBLISHED,
        "--rate x (--warmup + --duration) is over {MAX_PUBLISHED} messages"
    );
    let template = Template::new(&args.room, args.size, true)?;
    let frame_bytes = template.frame_len();
    // Connection 0 publishes; 1..=members receive.
    let open = conn::open_all(run, 0..members + 1, READ_BUFFER, false).await;
    if open.len() < members + 1 {
        anyhow::bail!(
            "only {} of {} connections opened: {}",
            open.len(),
            members + 1,
            run.first_error().unwrap_or_default()
        );
    }
    let joined: Vec<_> = futures_util::stream::iter(open)
        .map(|(i, mut stream, mut reader)| {
            let room = args.room.clone();
            async move {
                join(&mut stream, &mut reader, &room, i, &run.name(i))
                    .await
                    .with_context(|| format!("connection {i} joining {room}"))?;
                Ok::<_, anyhow::Error>((i, stream, reader))
            }
        })
        .buffer_unordered(run.common.open_concurrency)
        .collect()
        .await;
    let mut joined = joined.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    joined.sort_by_key(|(i, _, _)| *i);
    let start_ns = run.now_ns() + run.common.warmup.as_nanos() as u64;
    let end_ns = start_ns + run.common.duration.as_nanos() as u64;
    let tracker = Arc::new(Tracker {
        sent: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        remaining: (0..capacity)
            .map(|_| AtomicU32::new(members as u32))
            .collect(),
        last: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        published: AtomicU64::new(0),
        window: (start_ns, end_ns),
        deliveries: AtomicU64::new(0),
    });
    let shards: Vec<_> = (0..run.common.threads)
        .map(|_| Arc::new(Mutex::new(stats::histogram())))
        .collect();
    let mut tasks = JoinSet::new();
    let mut joined = joined.into_iter();
    let (_, publisher, publisher_reader) = joined.next().expect("the publisher opened");
    for (i, stream, reader) in joined {
        let shard = shards[i % shards.len()].clone();
        tasks.spawn(member(
            run.clone(),
            i,
            stream,
            reader,
            tracker.clone(),
            shard,
        ));
    }
    let rate = args.rate;
    tasks.spawn(publish(
        run.clone(),
        publisher,
        publisher_reader,
        template,
        tracker.clone(),
        rate,
    ));

    let (first, last) = run.window((start_ns, end_ns)).await;
    // Let the last messages arrive everywhere before counting who got what.
    let drained = tokio::time::Instant::now() + DRAIN_WAIT;
    let published = tracker.published.load(Ordering::Acquire) as usize;
    let mut next = 0;
    while tokio::time::Instant::now() < drained {
        while next < published && tracker.remaining[next].load(Ordering::Acquire) == 0 {
            next += 1;
        }
        if next == published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.stop.cancel();
    join_or_abort(&mut tasks, STOP_WAIT).await;

    let mut reach = stats::histogram();
    let (mut in_window, mut complete) = (0, 0);
    for seq in 0..published {
        let sent = tracker.sent[seq].load(Ordering::Acquire);
        if !(start_ns..end_ns).contains(&sent) {
            continue;
        }
        in_window += 1;
        if tracker.remaining[seq].load(Ordering::Acquire) == 0 {
            complete += 1;
            let last = tracker.last[seq].load(Ordering::Acquire);
            reach.saturating_record(last.saturating_sub(sent).clamp(1, stats::MAX_LATENCY_NS));
        }
    }
    let mut delivery = stats::histogram();
    for shard in &shards {
        delivery.add(&*shard.lock().unwrap_or_else(|p| p.into_inner()))?;
    }
    let window = last.wall.duration_since(first.wall).as_secs_f64();
    let deliveries = tracker.deliveries.load(Ordering::Relaxed);
    let figures = FanoutFigures {
        members,
        rate,
        frame_bytes,
        published: in_window,
        deliveries,
        deliveries_per_s: deliveries as f64 / window,
        complete,
        incomplete: in_window - complete,
        reach_all: Latency::of(&reach),
        delivery: Latency::of(&delivery),
    };
    Ok(Outcome {
        units: Some(deliveries),
        figures: Figures::Fanout(figures),
        window: (first, last),
    })
}

/// Joins `room` and waits for a private message to itself sent after it:
/// servers handle a client's frames in order, so its arrival proves the
/// join was handled. (A `list` would do too, but its answer names every
/// client: 10,000 joins would cost the server quadratic work.)
async fn join(
    stream: &mut Stream,
    reader: &mut Reader,
    room: &str,
    index: usize,
    name: &str,
) -> anyhow::Result<()> {
    let mut masker = Masker::new(index);
    let mut out = Vec::new();
    let join = serde_json::json!({"type": "join", "room": room}).to_string();
    frame::append_frame(&mut out, frame::OP_TEXT, join.as_bytes(), masker.next_key());
    let ack = serde_json::json!({"dst": name, "msg": JOIN_ACK}).to_string();
    frame::append_frame(&mut out, frame::OP_TEXT, ack.as_bytes(), masker.next_key());
    conn::send(stream, &out).await?;
    out.clear();
    tokio::time::timeout(JOIN_TIMEOUT, async {
        loop {
            while let Some((opcode, range)) = reader.next_frame()? {
                let payload = reader.payload(range);
                match opcode {
                    frame::OP_TEXT => {
                        let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
                            continue;
                        };
                        if value["msg"] == JOIN_ACK {
                            return Ok(());
                        }
                        if value["type"] == "error" {
                            anyhow::bail!("the server answered: {}", value["msg"]);
                        }
                    }
                    frame::OP_CLOSE => anyhow::bail!("{}", frame::describe_close(payload)),
                    _ => {}
                }
            }
            anyhow::ensure!(
                reader.fill(stream).await? > 0,
                "the server closed the connection"
            );
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the join was not confirmed within {JOIN_TIMEOUT:?}"))?
}

/// A member: counts and times every message of the room.
async fn member(
    run: Arc<Run>,
    index: usize,
    mut stream: Stream,
    mut reader: Reader,
    tracker: Arc<Tracker>,
    shard: Arc<Mutex<Histogram<u64>>>,
) {
    let mut masker = Masker::new(index);
    let mut out = Vec::new();
    let mut latencies = Vec::new();
    let clean = loop {
        if !out.is_empty() {
            tokio::select! {
                biased;
                written = conn::send(&mut stream, &out) => if written.is_err() {
                    return run.error(|| format!("member {index}: write failed"));
                },
                _ = run.stop.cancelled() => break false,
            }
            out.clear();
        }
        let read = tokio::select! {
            biased;
            _ = run.stop.cancelled() => break true,
            read = reader.fill(&mut stream) => read,
        };
        match read {
            Ok(0) => return run.error(|| format!("member {index}: the server closed it")),
            Err(e) => return run.error(|| format!("member {index}: read failed: {e}")),
            Ok(_) => {}
        }
        let now = run.now_ns();
        let in_window = (tracker.window.0..tracker.window.1).contains(&now);
        let mut got = 0;
        let drained =
            frame::drain(
                &mut reader,
                &mut out,
                &mut masker,
                |payload| match frame::find_stamp(payload, true) {
                    Some((sent, seq)) => {
                        got += 1;
                        if let Some(remaining) = tracker.remaining.get(seq as usize) {
                            tracker.last[seq as usize].fetch_max(now, Ordering::AcqRel);
                            remaining.fetch_sub(1, Ordering::AcqRel);
                        }
                        if in_window {
                            latencies.push(now.saturating_sub(sent));
                        }
                    }
                    None => run.notice(payload),
                },
            );
        if let Err(why) = drained {
            return run.error(|| format!("member {index}: {why}"));
        }
        if !latencies.is_empty() {
            tracker
                .deliveries
                .fetch_add(latencies.len() as u64, Ordering::Relaxed);
            let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
            for &ns in &latencies {
                h.saturating_record(ns.clamp(1, stats::MAX_LATENCY_NS));
            }
            latencies.clear();
        }
        run.progress.fetch_add(got, Ordering::Relaxed);
    };
    if clean {
        conn::close(&mut stream, &mut reader, masker.next_key(), CLOSE_WAIT).await;
    }
}

/// The publisher: `rate` messages a second until the window ends, each
/// stamped with its send time and sequence number; it also answers pings
/// and counts error notices.
async fn publish(
    run: Arc<Run>,
    mut stream: Stream,
    mut reader: Reader,
    template: Template,
    tracker: Arc<Tracker>,
    rate: f64,
) {
    let mut masker = Masker::new(0);
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate).max(MIN_TICK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let begin = run.now_ns();
    let capacity = tracker.sent.len() as u64;
    let mut seq = 0u64;
    let clean = loop {
        if !out.is_empty() {
            tokio::select! {
                biased;
                written = conn::send(&mut stream, &out) => if written.is_err() {
                    return run.error(|| "publisher: write failed".to_owned());
                },
                _ = run.stop.cancelled() => break false,
            }
            out.clear();
        }
        tokio::select! {
            biased;
            _ = run.stop.cancelled() => break true,
            _ = tick.tick() => {
                let now = run.now_ns();
                if now >= tracker.window.1 {
                    continue;
                }
                let due = (((now - begin) as f64 / 1e9 * rate) as u64 + 1).min(capacity);
                while seq < due {
                    tracker.sent[seq as usize].store(now, Ordering::Release);
                    template.append(&mut out, now, seq, masker.next_key());
                    seq += 1;
                }
                tracker.published.store(seq, Ordering::Release);
            }
            read = reader.fill(&mut stream) => {
                match read {
                    Ok(0) => return run.error(|| "publisher: the server closed it".to_owned()),
                    Err(e) => return run.error(|| format!("publisher: read failed: {e}")),
                    Ok(_) => {}
                }
                if let Err(why) = frame::drain(&mut reader, &mut out, &mut masker, |p| run.notice(p)) {
                    return run.error(|| format!("publisher: {why}"));
                }
            }
        }
    };
    if clean {
        conn::close(&mut stream, &mut reader, masker.next_key(), CLOSE_WAIT).await;
    }
}
