//! `soak`: what only time shows. For `--duration` (30 minutes for the
//! table in `bench/RESULTS.md`, 60 seconds in the test suite) the gateway
//! carries at once:
//!
//! - `--idle` connections held open, reading everything (with presence on,
//!   every join and leave) and answering pings;
//! - `--pairs` connections sending to their partners at `--rate` messages
//!   a second in total, each message stamped, so every window has its
//!   latency;
//! - churn: `--churn` new connections a second, each staying
//!   `--churn-hold` and then leaving in turn with a close frame, with a FIN
//!   and no close frame, or with a reset;
//! - every `--slow-every`, a slow-consumer episode: a client that does not
//!   read is sent 16 KiB messages by a feeder until the gateway says it is
//!   too slow; then it reads what it was sent, which must be whole frames
//!   ending in the 1013 close.
//!
//! Every `--sample` the soak reads the gateway's RSS and open files
//! (`/proc/PID`), its `/metrics`, and closes a latency window. At the end it
//! closes everything, waits for the gateway's connection gauge to reach
//! zero and its open files to fall back to where they were, stops a
//! gateway it started, and gives the verdict ([`verdict`]). Bounded like
//! every scenario: the connections it holds are counted up front
//! ([`EXTRA_CONNECTIONS`] beyond the idle and paired ones).

pub mod gateway;
pub mod verdict;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use wssgate_wire::notice;

use super::conn::{self, Stream};
use super::frame::{self, Masker, Reader, Template};
use super::options::SoakArgs;
use super::stats::{self, rss_bytes};
use super::{Figures, Outcome, Run, idle, join_or_abort};
use gateway::Gateway;
use verdict::Check;

/// Churn connections in flight at most; a tick that finds this many still
/// open is skipped (and counted).
pub const MAX_CHURN_IN_FLIGHT: usize = 256;
/// Connections beyond `--idle` and `--pairs`: the feeder, the slow client
/// and the churn in flight.
pub const EXTRA_CONNECTIONS: usize = 2 + MAX_CHURN_IN_FLIGHT;
/// Highest `--rate`.
const MAX_RATE: f64 = 100_000.0;
/// Highest `--churn`.
const MAX_CHURN: f64 = 1_000.0;
/// Frame size of the pairs' messages.
const PAIR_SIZE: usize = 128;
/// Frame size of the messages to a slow client (well under the default
/// `max_message_size`).
const SLOW_SIZE: usize = 16 * 1024;
/// Messages the feeder writes at once in an episode.
const SLOW_BATCH: usize = 8;
/// Most messages one episode sends (8 MiB at [`SLOW_SIZE`]... times 4).
const SLOW_MAX_MESSAGES: usize = 2048;
/// Longest an episode feeds before it gives up on a cut-off.
const FEED_LIMIT: Duration = Duration::from_secs(10);
/// Longest the cut-off client gets to read what it was sent.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// No episode starts later than this before the end of the run.
const EPISODE_SPAN: Duration = Duration::from_secs(16);
/// A write of the feeder that takes longer is a failure of the episode.
const WRITE_LIMIT: Duration = Duration::from_secs(5);
/// Connection indices the churn cycles through (for source addresses).
const CHURN_INDICES: usize = 1024;
/// Shortest `--sample`.
const MIN_SAMPLE: Duration = Duration::from_secs(1);
/// Read buffers: idle and churn connections get pings and notices; pairs
/// small messages; the slow client 16 KiB frames.
const SMALL_READ_BUFFER: usize = 1024;
const PAIR_READ_BUFFER: usize = 8 * 1024;
const SLOW_READ_BUFFER: usize = 64 * 1024;
/// Time a connection gets to close politely at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Time the tasks get to return after the stop.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// Time the gateway gets, after everything closed, to report no clients
/// and to close their files.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Open files the gateway may hold at the end beyond what it held before
/// the first connection.
const FILE_SLACK: u64 = 8;

/// The prefix of the slow clients' names for a run whose names start with
/// `prefix`; the gateway's warnings about them are expected.
pub fn slow_prefix(prefix: &str) -> String {
    format!("{prefix}slow")
}

/// How a churn connection leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// A close frame, then the server's close and FIN.
    Clean,
    /// A FIN without a close frame.
    Fin,
    /// A reset (SO_LINGER 0), nothing else.
    Reset,
}

impl Leave {
    fn of(n: u64) -> Leave {
        match n % 3 {
            0 => Leave::Clean,
            1 => Leave::Fin,
            _ => Leave::Reset,
        }
    }
}

/// Counters the soak's tasks share.
#[derive(Default)]
struct Shared {
    /// Connections the soak holds now.
    held: AtomicU64,
    /// Idle connections the server closed.
    idle_dropped: Arc<AtomicU64>,
    /// Paired connections lost.
    pairs_lost: AtomicU64,
    /// The feeder lost.
    feeder_lost: AtomicBool,
    /// Messages the pairs received.
    messages: AtomicU64,
    /// Latencies of the current window (nanoseconds).
    window: Mutex<Option<Histogram<u64>>>,
    /// Churn cycles completed, by how they left: clean, FIN, reset.
    churned: [AtomicU64; 3],
    /// Churn connections that could not open.
    churn_failed: AtomicU64,
    /// Churn connections the server closed while they were held.
    churn_lost: AtomicU64,
    /// Churn ticks skipped because [`MAX_CHURN_IN_FLIGHT`] were open.
    churn_skipped: AtomicU64,
    /// The slow-consumer episodes so far.
    episodes: Mutex<Vec<Episode>>,
}

impl Shared {
    fn churned(&self) -> u64 {
        self.churned.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn take_window(&self) -> Histogram<u64> {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window
            .replace(stats::histogram())
            .unwrap_or_else(stats::histogram)
    }
}

/// One sample: the gateway's state at `t_s` and the window that ended there.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the measured run began.
    pub t_s: f64,
    /// The gateway's RSS (KiB).
    pub rss_kib: Option<u64>,
    /// The gateway's open files.
    pub open_files: Option<u64>,
    /// The gateway's `wssgate_connections` (all listeners).
    pub clients: Option<f64>,
    /// Connections the soak held.
    pub held: u64,
    /// Messages the pairs received in the window.
    pub messages: u64,
    /// Their latency in the window: median, 99th percentile, largest (us).
    pub p50_us: f64,
    /// See `p50_us`.
    pub p99_us: f64,
    /// See `p50_us`.
    pub max_us: f64,
    /// Churn cycles completed in the window.
    pub churned: u64,
    /// The gateway's `wssgate_queue_drops_total`.
    pub queue_drops: Option<f64>,
    /// The gateway's `wssgate_presence_resyncs_total`.
    pub presence_resyncs: Option<f64>,
    /// The gateway's `wssgate_memory_trims_total`.
    pub memory_trims: Option<f64>,
    /// Errors the soak counted so far.
    pub errors: u64,
    /// Unexpected WARN/ERROR lines in the gateway's log so far.
    pub log_unexpected: Option<u64>,
}

/// One slow-consumer episode.
#[derive(Debug, Clone, Serialize)]
pub struct Episode {
    /// The slow client's name.
    pub name: String,
    /// Seconds into the run it began.
    pub at_s: f64,
    /// 16 KiB messages the feeder sent it.
    pub sent: u64,
    /// Milliseconds from the first message to the gateway's notice that the
    /// client is too slow (or gone).
    pub cut_off_ms: Option<f64>,
    /// Whole data frames the client read after the cut-off, before the close.
    pub frames_read: u64,
    /// The close code it read last.
    pub close_code: Option<u16>,
    /// What went wrong, if anything.
    pub problem: Option<String>,
}

impl Episode {
    fn passed(&self) -> bool {
        self.problem.is_none() && self.cut_off_ms.is_some() && self.close_code == Some(1013)
    }
}

/// What a soak measured and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct SoakFigures {
    /// The mix: idle, paired connections, pair rate, churn rate.
    pub idle: usize,
    /// See `idle`.
    pub pairs: usize,
    /// See `idle`.
    pub rate: f64,
    /// See `idle`.
    pub churn: f64,
    /// The gateway's RSS (KiB) and open files before the first connection.
    pub rss_before_kib: Option<u64>,
    /// See `rss_before_kib`.
    pub files_before: Option<u64>,
    /// Every sample, the first at the start of the measured run.
    pub samples: Vec<Sample>,
    /// The slow-consumer episodes.
    pub episodes: Vec<Episode>,
    /// Churn cycles by how they left: clean, FIN, reset.
    pub churned: [u64; 3],
    /// After everything closed: the gateway's clients, open files, RSS (KiB).
    pub clients_after: Option<f64>,
    /// See `clients_after`.
    pub files_after: Option<u64>,
    /// See `clients_after`.
    pub rss_after_kib: Option<u64>,
    /// The gateway's unexpected WARN/ERROR lines (the first few).
    pub log_lines: Vec<String>,
    /// Each check of the verdict.
    pub checks: Vec<Check>,
    /// True when every check passed.
    pub passed: bool,
}

/// Checks the soak's flags.
fn validate(args: &SoakArgs, duration: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.pairs >= 2 && args.pairs.is_multiple_of(2),
        "--pairs must be an even number, at least 2"
    );
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= MAX_RATE,
        "--rate must be above 0 and at most {MAX_RATE}"
    );
    anyhow::ensure!(
        (0.0..=MAX_CHURN).contains(&args.churn),
        "--churn must be 0..={MAX_CHURN}"
    );
    anyhow::ensure!(
        args.churn_hold <= Duration::from_secs(60),
        "--churn-hold must be at most 60s"
    );
    anyhow::ensure!(
        args.sample >= MIN_SAMPLE && args.sample <= duration,
        "--sample must be at least {MIN_SAMPLE:?} and at most --duration"
    );
    anyhow::ensure!(
        args.slow_every >= EPISODE_SPAN,
        "--slow-every must be at least {EPISODE_SPAN:?} (one episode's span)"
    );
    anyhow::ensure!(
        args.max_growth >= 0.0 && args.max_latency_ratio >= 1.0,
        "--max-growth must be at least 0 and --max-latency-ratio at least 1"
    );
    Ok(())
}

/// Runs `soak` against `gateway`.
pub(crate) async fn run(
    run: &Arc<Run>,
    args: &SoakArgs,
    mut gateway: Gateway,
) -> anyhow::Result<Outcome> {
    let duration = run.common.duration;
    validate(args, duration)?;
    let pid = run.common.pid();
    let quiet = run.common.quiet;
    let rss_kib = move || pid.and_then(rss_bytes).map(|b| b / 1024);
    let files = move || pid.and_then(gateway::open_files);
    let rss_before_kib = rss_kib();
    let files_before = files();
    let shared = Arc::new(Shared::default());
    *shared.window.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats::histogram());
    let mut tasks = JoinSet::new();

    // The idle holders, then the pairs, then the feeder.
    let idle_open = conn::open_all(run, 0..args.idle, SMALL_READ_BUFFER, true).await;
    anyhow::ensure!(
        idle_open.len() == args.idle,
        "only {} of {} idle connections opened (first error: {})",
        idle_open.len(),
        args.idle,
        run.first_error().unwrap_or_default()
    );
    for (i, stream, reader) in idle_open {
        shared.held.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(idle::hold(
            run.clone(),
            i,
            stream,
            reader,
            shared.idle_dropped.clone(),
        ));
    }
    let first_pair = args.idle;
    let pairs_open = conn::open_all(
        run,
        first_pair..first_pair + args.pairs,
        PAIR_READ_BUFFER,
        true,
    )
    .await;
    anyhow::ensure!(
        pairs_open.len() == args.pairs,
        "only {} of {} paired connections opened (first error: {})",
        pairs_open.len(),
        args.pairs,
        run.first_error().unwrap_or_default()
    );
    let epoch = Instant::now();
    let interval = Duration::from_secs_f64(args.pairs as f64 / args.rate);
    for (i, stream, reader) in pairs_open {
        let k = i - first_pair;
        let partner = run.name(first_pair + (k ^ 1));
        let offset = interval.mul_f64(k as f64 / args.pairs as f64);
        shared.held.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(pair(
            run.clone(),
            shared.clone(),
            Peer {
                index: i,
                stream,
                reader,
            },
            partner,
            epoch + offset,
            interval,
        ));
    }
    let feeder_index = first_pair + args.pairs;
    let mut feeder_reader = Reader::new(PAIR_READ_BUFFER);
    let feeder_stream = run
        .target(feeder_index)
        .open(feeder_index, &run.name(feeder_index), &mut feeder_reader)
        .await
        .map_err(|e| e.context("the slow-consumer feeder cannot connect"))?;
    shared.held.fetch_add(1, Ordering::Relaxed);

    // The measured run: samples from the end of the warm-up.
    tokio::time::sleep(run.common.warmup).await;
    let start = Instant::now();
    let first_snapshot = run.snapshot();
    let end = start + duration;
    let slow_indices = feeder_index + 1;
    tasks.spawn(feed(
        run.clone(),
        shared.clone(),
        Peer {
            index: feeder_index,
            stream: feeder_stream,
            reader: feeder_reader,
        },
        Schedule {
            start,
            every: args.slow_every,
            last: end.checked_sub(EPISODE_SPAN).unwrap_or(start),
        },
        slow_indices,
    ));
    tasks.spawn(churn(
        run.clone(),
        shared.clone(),
        args.churn,
        args.churn_hold,
        slow_indices + 1,
    ));
    let slow = slow_prefix(&run.prefix);
    let mut samples = Vec::new();
    let mut last_churned = 0;
    let mut last_messages = 0;
    let mut next = start;
    loop {
        tokio::time::sleep_until(next).await;
        let window = shared.take_window();
        let metrics = match gateway.metrics().await {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                run.error(|| format!("cannot read the gateway's metrics: {e:#}"));
                None
            }
            None => None,
        };
        let churned = shared.churned();
        let messages = shared.messages.load(Ordering::Relaxed);
        let latency = stats::Latency::of(&window);
        let sample = Sample {
            t_s: start.elapsed().as_secs_f64(),
            rss_kib: rss_kib(),
            open_files: files(),
            clients: metrics.as_ref().map(|m| m.sum("wssgate_connections")),
            held: shared
                .held
                .load(Ordering::Relaxed)
                .saturating_sub(shared.idle_dropped.load(Ordering::Relaxed)),
            messages: messages - last_messages,
            p50_us: latency.p50_us,
            p99_us: latency.p99_us,
            max_us: latency.max_us,
            churned: churned - last_churned,
            queue_drops: metrics.as_ref().map(|m| m.sum("wssgate_queue_drops_total")),
            presence_resyncs: metrics
                .as_ref()
                .map(|m| m.sum("wssgate_presence_resyncs_total")),
            memory_trims: metrics
                .as_ref()
                .map(|m| m.sum("wssgate_memory_trims_total")),
            errors: run.errors.load(Ordering::Relaxed),
            log_unexpected: gateway.log_scan(&slow).map(|s| s.unexpected),
        };
        last_churned = churned;
        last_messages = messages;
        if !quiet {
            if samples.is_empty() {
                eprintln!("{}", Sample::HEADER);
            }
            eprintln!("{sample}");
        }
        samples.push(sample);
        if Instant::now() >= end {
            break;
        }
        next = (next + args.sample).min(end);
    }

    let last_snapshot = run.snapshot();
    run.stop.cancel();
    join_or_abort(&mut tasks, STOP_WAIT).await;
    let (clients_after, files_after) = settle(&gateway, &files, files_before).await;
    let rss_after_kib = rss_kib();
    let stopped = gateway.stop().await;
    let log = gateway.log_scan(&slow);
    let episodes = shared
        .episodes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let churned = [0, 1, 2].map(|k| shared.churned[k].load(Ordering::Relaxed));

    let mut checks = vec![verdict::memory(
        &samples
            .iter()
            .filter_map(|s| Some((s.t_s, s.rss_kib? as f64 * 1024.0)))
            .collect::<Vec<_>>(),
        args.max_growth,
    )];
    if pid.is_none() {
        checks[0] = Check::new("memory without growth", false, "no --pid: RSS not read");
    }
    checks.push(match (files_before, files_after) {
        (Some(before), Some(after)) => Check::new(
            "open files back to where they were",
            after <= before + FILE_SLACK,
            format!(
                "{before} before the first connection, peak {}, {after} after the last \
                 closed (slack {FILE_SLACK})",
                samples
                    .iter()
                    .filter_map(|s| s.open_files)
                    .max()
                    .unwrap_or(0)
            ),
        ),
        _ => Check::new(
            "open files back to where they were",
            false,
            "the gateway's open files could not be read (--pid)",
        ),
    });
    checks.push(match clients_after {
        Some(c) => Check::new(
            "clients gauge back to zero",
            c == 0.0,
            format!("wssgate_connections {c} after every connection closed"),
        ),
        None => Check::new(
            "clients gauge back to zero",
            false,
            "no metrics (--admin or --gateway)",
        ),
    });
    let idle_dropped = shared.idle_dropped.load(Ordering::Relaxed);
    let pairs_lost = shared.pairs_lost.load(Ordering::Relaxed);
    let churn_lost = shared.churn_lost.load(Ordering::Relaxed);
    let feeder_lost = shared.feeder_lost.load(Ordering::Relaxed);
    checks.push(Check::new(
        "no healthy client closed",
        idle_dropped == 0 && pairs_lost == 0 && churn_lost == 0 && !feeder_lost,
        format!(
            "idle dropped {idle_dropped}, pairs lost {pairs_lost}, churn closed early \
             {churn_lost}, feeder lost {feeder_lost}"
        ),
    ));
    let errors = run.errors.load(Ordering::Relaxed);
    checks.push(Check::new(
        "no errors",
        errors == 0,
        match run.first_error() {
            Some(first) => format!("{errors} errors, first: {first}"),
            None => "none".to_owned(),
        },
    ));
    let expected_messages = args.rate * duration.as_secs_f64();
    let messages: u64 = samples.iter().map(|s| s.messages).sum();
    checks.push(Check::new(
        "pairs kept their pace",
        messages as f64 >= 0.9 * expected_messages,
        format!("{messages} messages of {expected_messages:.0} scheduled"),
    ));
    let expected_churn = args.churn * duration.as_secs_f64();
    let churn_failed = shared.churn_failed.load(Ordering::Relaxed);
    let churn_skipped = shared.churn_skipped.load(Ordering::Relaxed);
    let churn_total: u64 = churned.iter().sum();
    checks.push(Check::new(
        "churn kept its pace",
        churn_total as f64 >= 0.9 * expected_churn - 1.0 && churn_failed == 0 && churn_skipped == 0,
        format!(
            "{churn_total} cycles of {expected_churn:.0} scheduled (clean {}, FIN {}, reset {}), \
             {churn_failed} failed to open, {churn_skipped} skipped",
            churned[0], churned[1], churned[2]
        ),
    ));
    let cut = episodes.iter().filter(|e| e.passed()).count();
    checks.push(Check::new(
        "slow consumers cut off with 1013",
        cut == episodes.len(),
        format!(
            "{cut} of {} episodes{}",
            episodes.len(),
            episodes
                .iter()
                .find_map(|e| e.problem.as_ref().map(|p| format!("; {}: {p}", e.name)))
                .unwrap_or_default()
        ),
    ));
    checks.push(verdict::latency(
        &samples[1..].iter().map(|s| s.p50_us).collect::<Vec<_>>(),
        &samples[1..].iter().map(|s| s.p99_us).collect::<Vec<_>>(),
        args.max_latency_ratio,
        args.latency_floor.as_secs_f64() * 1e6,
    ));
    checks.push(match &log {
        Some(scan) => Check::new(
            "no unexpected WARN or ERROR",
            scan.unexpected == 0,
            format!(
                "{} log lines, {} expected warnings (slow consumers), {} unexpected",
                scan.lines, scan.expected, scan.unexpected
            ),
        ),
        None => Check::new(
            "no unexpected WARN or ERROR",
            true,
            "not checked: no --log (or --gateway)",
        ),
    });
    if let Some(stopped) = stopped {
        checks.push(match stopped {
            Ok(status) => Check::new(
                "gateway stopped cleanly on SIGTERM",
                status.success(),
                format!("{status}"),
            ),
            Err(e) => Check::new(
                "gateway stopped cleanly on SIGTERM",
                false,
                format!("{e:#}"),
            ),
        });
    }
    let passed = checks.iter().all(|c| c.passed);
    let figures = SoakFigures {
        idle: args.idle,
        pairs: args.pairs,
        rate: args.rate,
        churn: args.churn,
        rss_before_kib,
        files_before,
        samples,
        episodes,
        churned,
        clients_after,
        files_after,
        rss_after_kib,
        log_lines: log.map(|s| s.kept).unwrap_or_default(),
        checks,
        passed,
    };
    Ok(Outcome {
        units: Some(messages),
        figures: Figures::Soak(figures),
        window: (first_snapshot, last_snapshot),
    })
}

/// Waits (at most [`SETTLE_LIMIT`]) for the gateway to report no clients
/// and to hold no more files than before; returns what it last reported.
async fn settle(
    gateway: &Gateway,
    files: &impl Fn() -> Option<u64>,
    files_before: Option<u64>,
) -> (Option<f64>, Option<u64>) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let clients = match gateway.metrics().await {
            Some(Ok(m)) => Some(m.sum("wssgate_connections")),
            _ => None,
        };
        let open = files();
        let files_done = match (open, files_before) {
            (Some(now), Some(before)) => now <= before + FILE_SLACK,
            _ => true,
        };
        if (clients.is_none_or(|c| c == 0.0) && files_done) || Instant::now() >= deadline {
            return (clients, open);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A connection and its read buffer.
struct Peer {
    index: usize,
    stream: Stream,
    reader: Reader,
}

/// One paired connection: sends a stamped message to `partner` every
/// `interval` from `first`, and records the latency of what it receives.
async fn pair(
    run: Arc<Run>,
    shared: Arc<Shared>,
    peer: Peer,
    partner: String,
    first: Instant,
    interval: Duration,
) {
    let Peer {
        index,
        mut stream,
        mut reader,
    } = peer;
    let lost = |why: String| {
        shared.pairs_lost.fetch_add(1, Ordering::Relaxed);
        shared.held.fetch_sub(1, Ordering::Relaxed);
        run.error(|| format!("paired connection {index}: {why}"));
    };
    let template = match Template::new(&partner, PAIR_SIZE, false) {
        Ok(t) => t,
        Err(e) => return lost(format!("{e:#}")),
    };
    let mut masker = Masker::new(index);
    let mut out = Vec::with_capacity(4 * template.frame_len());
    let mut latencies = Vec::new();
    let mut tick = tokio::time::interval_at(first, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = run.stop.cancelled() => break,
            read = reader.fill(&mut stream) => {
                match read {
                    Ok(0) => return lost("the server closed it".to_owned()),
                    Err(e) => return lost(format!("read failed: {e}")),
                    Ok(_) => {}
                }
                let now = run.now_ns();
                let drained = frame::drain(&mut reader, &mut out, &mut masker, |payload| {
                    match frame::find_stamp(payload, false) {
                        Some((sent, _)) => latencies.push(now.saturating_sub(sent)),
                        None => run.notice(payload),
                    }
                });
                if let Err(why) = drained {
                    return lost(why);
                }
                if !latencies.is_empty() {
                    shared.messages.fetch_add(latencies.len() as u64, Ordering::Relaxed);
                    let mut window = shared.window.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(h) = window.as_mut() {
                        for &ns in &latencies {
                            h.saturating_record(ns.clamp(1, stats::MAX_LATENCY_NS));
                        }
                    }
                    latencies.clear();
                }
            }
            _ = tick.tick() => template.append(&mut out, run.now_ns(), 0, masker.next_key()),
        }
        if !out.is_empty() {
            if let Err(e) = conn::send(&mut stream, &out).await {
                return lost(format!("write failed: {e}"));
            }
            out.clear();
        }
    }
    conn::close(&mut stream, &mut reader, masker.next_key(), CLOSE_WAIT).await;
    shared.held.fetch_sub(1, Ordering::Relaxed);
}

/// Connect/disconnect cycles at `rate` a second until the stop.
async fn churn(run: Arc<Run>, shared: Arc<Shared>, rate: f64, hold: Duration, first_index: usize) {
    if rate <= 0.0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut cycles = JoinSet::new();
    let mut n = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = run.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        while cycles.try_join_next().is_some() {}
        if cycles.len() >= MAX_CHURN_IN_FLIGHT {
            shared.churn_skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let index = first_index + (n as usize % CHURN_INDICES);
        cycles.spawn(cycle(run.clone(), shared.clone(), n, index, hold));
        n += 1;
    }
    join_or_abort(&mut cycles, STOP_WAIT - Duration::from_secs(2)).await;
}

/// One churn connection: opens, holds (reading, answering pings), leaves.
async fn cycle(run: Arc<Run>, shared: Arc<Shared>, n: u64, index: usize, hold: Duration) {
    let name = format!("{}c{n}", run.prefix);
    let mut reader = Reader::new(SMALL_READ_BUFFER);
    let opened = tokio::select! {
        biased;
        _ = run.stop.cancelled() => return,
        opened = run.target(index).open(index, &name, &mut reader) => opened,
    };
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            shared.churn_failed.fetch_add(1, Ordering::Relaxed);
            return run.error(|| format!("churn {name}: {e:#}"));
        }
    };
    shared.held.fetch_add(1, Ordering::Relaxed);
    let lost = |why: String| {
        shared.churn_lost.fetch_add(1, Ordering::Relaxed);
        shared.held.fetch_sub(1, Ordering::Relaxed);
        run.error(|| format!("churn {name}: {why}"));
    };
    let mut masker = Masker::new(index);
    let mut out = Vec::new();
    let until = tokio::time::sleep(hold);
    tokio::pin!(until);
    loop {
        tokio::select! {
            biased;
            _ = run.stop.cancelled() => break,
            () = &mut until => break,
            read = reader.fill(&mut stream) => {
                match read {
                    Ok(0) => return lost("the server closed it".to_owned()),
                    Err(e) => return lost(format!("read failed: {e}")),
                    Ok(_) => {}
                }
                if let Err(why) = frame::drain(&mut reader, &mut out, &mut masker, |p| run.notice(p)) {
                    return lost(why);
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = conn::send(&mut stream, &out).await {
                return lost(format!("write failed: {e}"));
            }
            out.clear();
        }
    }
    let leave = Leave::of(n);
    match leave {
        Leave::Clean => {
            conn::close(&mut stream, &mut reader, masker.next_key(), CLOSE_WAIT).await;
        }
        Leave::Fin => {
            // No close frame: the gateway sees EOF, closes its side, and
            // the FIN that follows ends the read below.
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                stream.shutdown().await?;
                loop {
                    reader.consume(reader.pending().len());
                    if reader.fill(&mut stream).await? == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                }
            })
            .await;
        }
        Leave::Reset => {
            // SO_LINGER 0: dropping the socket sends a reset, not a FIN.
            let _ = stream.tcp().set_zero_linger();
        }
    }
    drop(stream);
    shared.held.fetch_sub(1, Ordering::Relaxed);
    shared.churned[leave as usize].fetch_add(1, Ordering::Relaxed);
}

/// When the slow-consumer episodes happen: every `every` after `start`,
/// none after `last`.
struct Schedule {
    start: Instant,
    every: Duration,
    last: Instant,
}

/// The feeder: reads what comes to it (presence, pings, the notices about
/// slow clients) and runs the episodes on `schedule`.
async fn feed(
    run: Arc<Run>,
    shared: Arc<Shared>,
    mut feeder: Peer,
    schedule: Schedule,
    slow_index: usize,
) {
    let slow = slow_prefix(&run.prefix);
    let mut masker = Masker::new(feeder.index);
    let mut out = Vec::new();
    let mut next = schedule.start + schedule.every;
    let mut k = 0;
    let lost = |why: String| {
        shared.feeder_lost.store(true, Ordering::Relaxed);
        shared.held.fetch_sub(1, Ordering::Relaxed);
        run.error(|| format!("slow-consumer feeder: {why}"));
    };
    loop {
        let episode_due = next <= schedule.last;
        tokio::select! {
            biased;
            _ = run.stop.cancelled() => break,
            () = tokio::time::sleep_until(next), if episode_due => {
                let at_s = next.duration_since(schedule.start).as_secs_f64();
                let episode = episode(&run, &mut feeder, &mut masker, format!("{slow}{k}"), slow_index, at_s).await;
                let feeder_broken = episode.problem.as_deref().is_some_and(|p| p.starts_with("feeder"));
                shared.episodes.lock().unwrap_or_else(|p| p.into_inner()).push(episode);
                if feeder_broken {
                    return lost("broken during an episode".to_owned());
                }
                k += 1;
                next += schedule.every;
            }
            read = feeder.reader.fill(&mut feeder.stream) => {
                match read {
                    Ok(0) => return lost("the server closed it".to_owned()),
                    Err(e) => return lost(format!("read failed: {e}")),
                    Ok(_) => {}
                }
                let drained = frame::drain(&mut feeder.reader, &mut out, &mut masker, |p| {
                    if about_slow(p, &slow).is_none() {
                        run.notice(p);
                    }
                });
                if let Err(why) = drained {
                    return lost(why);
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = conn::send(&mut feeder.stream, &out).await {
                return lost(format!("write failed: {e}"));
            }
            out.clear();
        }
    }
    conn::close(
        &mut feeder.stream,
        &mut feeder.reader,
        masker.next_key(),
        CLOSE_WAIT,
    )
    .await;
    shared.held.fetch_sub(1, Ordering::Relaxed);
}

/// The name a gateway `error` notice says is too slow or not connected,
/// when it starts with `slow_prefix`.
fn about_slow(payload: &[u8], slow_prefix: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if value["type"] != "error" {
        return None;
    }
    let msg = value["msg"].as_str()?;
    let name = msg
        .strip_prefix(notice::TOO_SLOW)
        .or_else(|| msg.strip_prefix(notice::NOT_CONNECTED))?
        .strip_prefix(": ")?;
    name.starts_with(slow_prefix).then(|| name.to_owned())
}

/// One episode: connects `name`, which never reads; the feeder sends it
/// 16 KiB messages until the gateway says it is too slow (or gone); then
/// it reads everything it was sent and its close.
async fn episode(
    run: &Run,
    feeder: &mut Peer,
    masker: &mut Masker,
    name: String,
    index: usize,
    at_s: f64,
) -> Episode {
    let mut episode = Episode {
        name: name.clone(),
        at_s,
        sent: 0,
        cut_off_ms: None,
        frames_read: 0,
        close_code: None,
        problem: None,
    };
    let mut slow_reader = Reader::new(SLOW_READ_BUFFER);
    let mut slow = match run.target(index).open(index, &name, &mut slow_reader).await {
        Ok(s) => s,
        Err(e) => {
            episode.problem = Some(format!("cannot connect: {e:#}"));
            return episode;
        }
    };
    let template = match Template::new(&name, SLOW_SIZE, false) {
        Ok(t) => t,
        Err(e) => {
            episode.problem = Some(format!("{e:#}"));
            return episode;
        }
    };
    let began = Instant::now();
    let mut out = Vec::with_capacity(SLOW_BATCH * template.frame_len());
    let mut pongs = Vec::new();
    while episode.cut_off_ms.is_none()
        && (episode.sent as usize) < SLOW_MAX_MESSAGES
        && began.elapsed() < FEED_LIMIT
    {
        out.clear();
        for _ in 0..SLOW_BATCH {
            template.append(&mut out, run.now_ns(), 0, masker.next_key());
        }
        out.append(&mut pongs);
        match tokio::time::timeout(WRITE_LIMIT, conn::send(&mut feeder.stream, &out)).await {
            Ok(Ok(())) => episode.sent += SLOW_BATCH as u64,
            Ok(Err(e)) => {
                episode.problem = Some(format!("feeder write failed: {e}"));
                return episode;
            }
            Err(_) => {
                episode.problem = Some(format!("feeder write blocked for {WRITE_LIMIT:?}"));
                return episode;
            }
        }
        // Whatever reached the feeder meanwhile, without waiting for more.
        while let Ok(read) = tokio::time::timeout(
            Duration::from_millis(1),
            feeder.reader.fill(&mut feeder.stream),
        )
        .await
        {
            match read {
                Ok(0) => {
                    episode.problem = Some("feeder closed by the server".to_owned());
                    return episode;
                }
                Err(e) => {
                    episode.problem = Some(format!("feeder read failed: {e}"));
                    return episode;
                }
                Ok(_) => {}
            }
            let drained = frame::drain(
                &mut feeder.reader,
                &mut pongs,
                masker,
                |p| match about_slow(p, &name) {
                    Some(n) if n == name => {
                        episode
                            .cut_off_ms
                            .get_or_insert(began.elapsed().as_secs_f64() * 1e3);
                    }
                    Some(_) => {}
                    None => run.notice(p),
                },
            );
            if let Err(why) = drained {
                episode.problem = Some(format!("feeder: {why}"));
                return episode;
            }
        }
    }
    if episode.cut_off_ms.is_none() {
        episode.problem = Some(format!(
            "not cut off after {} messages in {:.1} s",
            episode.sent,
            began.elapsed().as_secs_f64()
        ));
    }
    // Now it reads: whole frames, then the close, then EOF.
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        loop {
            loop {
                match slow_reader.next_frame() {
                    Ok(Some((frame::OP_CLOSE, range))) => {
                        let payload = slow_reader.payload(range);
                        return Ok(payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])));
                    }
                    Ok(Some(_)) => episode.frames_read += 1,
                    Ok(None) => break,
                    Err(e) => return Err(format!("a broken frame: {e}")),
                }
            }
            slow_reader.compact();
            match slow_reader.fill(&mut slow).await {
                Ok(0) => return Err("EOF without a close frame".to_owned()),
                Err(e) => return Err(format!("read failed before a close frame: {e}")),
                Ok(_) => {}
            }
        }
    })
    .await;
    match drained {
        Ok(Ok(code)) => {
            episode.close_code = code;
            if code != Some(1013) && episode.problem.is_none() {
                episode.problem = Some(format!("closed with {code:?}, not 1013"));
            }
        }
        Ok(Err(why)) => {
            episode.problem.get_or_insert(why);
        }
        Err(_) => {
            episode
                .problem
                .get_or_insert(format!("no close frame within {DRAIN_LIMIT:?}"));
        }
    }
    episode
}

impl Sample {
    /// Column heads of [`Sample`]'s lines.
    pub const HEADER: &'static str = "     t   RSS MiB  files  clients   held  msgs/win  p50 us  p99 us   max us  churn  drops  resyncs  trims  errors  log";
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.0}"));
        write!(
            f,
            "{:>6.0} {:>9} {:>6} {:>8} {:>6} {:>9} {:>7.0} {:>7.0} {:>8.0} {:>6} {:>6} {:>8} {:>6} {:>7} {:>4}",
            self.t_s,
            self.rss_kib
                .map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0)),
            self.open_files.map_or("?".to_owned(), |v| v.to_string()),
            opt(self.clients),
            self.held,
            self.messages,
            self.p50_us,
            self.p99_us,
            self.max_us,
            self.churned,
            opt(self.queue_drops),
            opt(self.presence_resyncs),
            opt(self.memory_trims),
            self.errors,
            self.log_unexpected
                .map_or("?".to_owned(), |v| v.to_string()),
        )
    }
}

impl std::fmt::Display for SoakFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} idle readers, {} paired at {} msgs/s, churn {}/s",
            self.idle, self.pairs, self.rate, self.churn
        )?;
        let kib =
            |v: Option<u64>| v.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        writeln!(
            f,
            "before: RSS {}, {} open files; after: RSS {}, {} open files, {} clients",
            kib(self.rss_before_kib),
            self.files_before.map_or("?".to_owned(), |v| v.to_string()),
            kib(self.rss_after_kib),
            self.files_after.map_or("?".to_owned(), |v| v.to_string()),
            self.clients_after.map_or("?".to_owned(), |v| v.to_string()),
        )?;
        writeln!(f, "{}", Sample::HEADER)?;
        for s in &self.samples {
            writeln!(f, "{s}")?;
        }
        for e in &self.episodes {
            writeln!(
                f,
                "slow consumer {} at {:.0} s: {} messages sent, cut off after {}, read {} \
                 frames then close {}{}",
                e.name,
                e.at_s,
                e.sent,
                e.cut_off_ms
                    .map_or("never".to_owned(), |ms| format!("{ms:.0} ms")),
                e.frames_read,
                e.close_code.map_or("none".to_owned(), |c| c.to_string()),
                e.problem
                    .as_ref()
                    .map_or(String::new(), |p| format!(" ({p})")),
            )?;
        }
        for line in &self.log_lines {
            writeln!(f, "gateway log: {line}")?;
        }
        for c in &self.checks {
            writeln!(
                f,
                "[{}] {}: {}",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        writeln!(f, "verdict: {}", if self.passed { "PASS" } else { "FAIL" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_about_slow_clients_are_recognised() {
        let too_slow = br#"{"src":"@gateway","dst":"f","type":"error","msg":"recipient too slow, message dropped: b-slow0"}"#;
        assert_eq!(about_slow(too_slow, "b-slow").as_deref(), Some("b-slow0"));
        let gone = br#"{"type":"error","msg":"recipient not connected: b-slow1","ref":3}"#;
        assert_eq!(about_slow(gone, "b-slow").as_deref(), Some("b-slow1"));
        let other = br#"{"type":"error","msg":"recipient not connected: b-7"}"#;
        assert_eq!(about_slow(other, "b-slow"), None);
        assert_eq!(about_slow(br#"{"type":"presence"}"#, "b-slow"), None);
        assert_eq!(about_slow(b"not json", "b-slow"), None);
    }

    #[test]
    fn churn_leaves_in_turn() {
        let kinds: Vec<_> = (0..6).map(Leave::of).collect();
        assert_eq!(
            kinds,
            [
                Leave::Clean,
                Leave::Fin,
                Leave::Reset,
                Leave::Clean,
                Leave::Fin,
                Leave::Reset
            ]
        );
    }
}
