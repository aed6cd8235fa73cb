//! `connect`: full handshakes per second. `--concurrency` workers each
//! loop: TCP connect, TLS handshake (wss; no session resumption unless
//! `--resume`), WebSocket upgrade, then a polite close. The handshake
//! latency runs from the TCP connect to the `101`; the close is not in it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;

use super::conn;
use super::frame::{Masker, Reader};
use super::options::ConnectArgs;
use super::stats::{self, Latency};
use super::{Figures, Outcome, Run, STOP_WAIT, join_or_abort};

/// Read buffer of a connection: the upgrade response.
const READ_BUFFER: usize = 1024;
/// Time a connection gets to close politely.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed attempt, so that a refusing server is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Most handshakes in flight at once.
const MAX_CONCURRENCY: usize = 1024;

/// What `connect` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectFigures {
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// TLS session resumption allowed.
    pub resume: bool,
    /// Handshakes completed in the window.
    pub handshakes: u64,
    /// Handshakes per second.
    pub handshakes_per_s: f64,
    /// Latency of a handshake (TCP connect to `101`).
    pub latency: Latency,
}

impl std::fmt::Display for ConnectFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} in flight, TLS resumption {}",
            self.concurrency,
            if self.resume { "allowed" } else { "off" }
        )?;
        writeln!(
            f,
            "handshakes: {} ({:.0}/s)",
            self.handshakes, self.handshakes_per_s
        )?;
        writeln!(f, "latency: {}", self.latency)
    }
}

/// Runs `connect`.
pub(crate) async fn run(run: &Arc<Run>, args: &ConnectArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        (1..=MAX_CONCURRENCY).contains(&args.concurrency),
        "--concurrency must be 1..={MAX_CONCURRENCY}"
    );
    let start_ns = run.now_ns() + run.common.warmup.as_nanos() as u64;
    let end_ns = start_ns + run.common.duration.as_nanos() as u64;
    let next = Arc::new(AtomicUsize::new(0));
    let histogram = Arc::new(Mutex::new(stats::histogram()));
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        tasks.spawn(worker(
            run.clone(),
            next.clone(),
            histogram.clone(),
            (start_ns, end_ns),
        ));
    }
    let (first, last) = run.window((start_ns, end_ns)).await;
    run.stop.cancel();
    join_or_abort(&mut tasks, STOP_WAIT).await;
    let histogram = histogram.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let window = last.wall.duration_since(first.wall).as_secs_f64();
    let figures = ConnectFigures {
        concurrency: args.concurrency,
        resume: args.resume,
        handshakes: histogram.len(),
        handshakes_per_s: histogram.len() as f64 / window,
        latency: Latency::of(&histogram),
    };
    Ok(Outcome {
        units: Some(figures.handshakes),
        figures: Figures::Connect(figures),
        window: (first, last),
    })
}

/// Handshakes one after the other until the stop.
async fn worker(
    run: Arc<Run>,
    next: Arc<AtomicUsize>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    window: (u64, u64),
) {
    let mut reader = Reader::new(READ_BUFFER);
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let name = run.name(index);
        let began = Instant::now();
        let opened = tokio::select! {
            biased;
            _ = run.stop.cancelled() => return,
            opened = run.target(index).open(index, &name, &mut reader) => opened,
        };
        match opened {
            Ok(mut stream) => {
                let took = began.elapsed().as_nanos() as u64;
                if (window.0..window.1).contains(&run.now_ns()) {
                    histogram
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .saturating_record(took.clamp(1, stats::MAX_LATENCY_NS));
                }
                run.progress.fetch_add(1, Ordering::Relaxed);
                // Not cut short by the stop: a close takes at most CLOSE_WAIT.
                conn::close(
                    &mut stream,
                    &mut reader,
                    Masker::new(index).next_key(),
                    CLOSE_WAIT,
                )
                .await;
            }
            Err(e) => {
                if run.stop.is_cancelled() {
                    return;
                }
                run.error(|| format!("connection {name}: {e:#}"));
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        reader.consume(reader.pending().len());
    }
}
