//! `idle`: opens N connections, holds them (answering pings) for
//! `--duration`, and reads the server's RSS (`--pid`) before opening and
//! after the last one opened and settled: the server's bytes per connection,
//! and how many connections would fit in 24 GiB at that rate.
//!
//! Run it against a freshly started server: an allocator keeps memory that
//! earlier connections freed, so a second run on the same server measures
//! mostly reuse (near zero per connection).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use super::conn::{self, Stream};
use super::frame::{self, Masker, Reader};
use super::options::IdleArgs;
use super::stats::rss_bytes;
use super::{Figures, Outcome, Run, join_or_abort};

/// Read buffer of a held connection: pings and the odd notice.
const READ_BUFFER: usize = 256;
/// Time the connections get to close politely at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Time the tasks get to return after the stop, before they are aborted.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// The memory the "fits in" figure divides.
const MEMORY_BUDGET: u64 = 24 << 30;

/// What `idle` measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleFigures {
    /// Connections asked for.
    pub requested: usize,
    /// Connections that opened.
    pub open: usize,
    /// Connections the server closed while they were held.
    pub dropped: u64,
    /// The server's RSS before the first connection (bytes, with `--pid`).
    pub rss_before: Option<u64>,
    /// The server's RSS once all were open and settled.
    pub rss_after: Option<u64>,
    /// The server's RSS at the end of the hold.
    pub rss_end: Option<u64>,
    /// `(rss_after - rss_before) / open`.
    pub bytes_per_conn: Option<f64>,
    /// Connections that would fit in 24 GiB at `bytes_per_conn`.
    pub fit_in_24gib: Option<u64>,
}

impl std::fmt::Display for IdleFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} of {} connections open, {} dropped by the server while held",
            self.open, self.requested, self.dropped
        )?;
        let mib = |b: Option<u64>| {
            b.map_or("?".to_owned(), |b| {
                format!("{:.1} MiB", b as f64 / 1048576.0)
            })
        };
        writeln!(
            f,
            "server RSS: {} before, {} after opening, {} at the end",
            mib(self.rss_before),
            mib(self.rss_after),
            mib(self.rss_end)
        )?;
        match self.bytes_per_conn {
            Some(b) => write!(f, "per connection: {b:.0} bytes ({:.2} KiB)", b / 1024.0)?,
            None => write!(f, "per connection: ? (give the server's --pid)")?,
        }
        match self.fit_in_24gib {
            Some(n) => writeln!(f, "; {n} would fit in 24 GiB"),
            None => writeln!(f),
        }
    }
}

/// Runs `idle`.
pub(crate) async fn run(run: &Arc<Run>, args: &IdleArgs) -> anyhow::Result<Outcome> {
    let pid = run.common.pid();
    let rss = || pid.and_then(rss_bytes);
    let rss_before = rss();
    anyhow::ensure!(
        pid.is_none() || rss_before.is_some(),
        "cannot read /proc/{}/status: is --pid the server's process id?",
        pid.unwrap_or_default()
    );
    let open = conn::open_all(run, 0..args.connections, READ_BUFFER, true).await;
    let count = open.len();
    let mut tasks = JoinSet::new();
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (i, stream, reader) in open {
        tasks.spawn(hold(run.clone(), i, stream, reader, dropped.clone()));
    }
    tokio::time::sleep(args.settle).await;
    let rss_after = rss();
    let first = run.snapshot();
    tokio::time::sleep(run.common.duration).await;
    let rss_end = rss();
    let last = run.snapshot();
    run.stop.cancel();
    join_or_abort(&mut tasks, STOP_WAIT).await;
    let bytes_per_conn = match (rss_before, rss_after) {
        (Some(a), Some(b)) if count > 0 => Some((b as f64 - a as f64) / count as f64),
        _ => None,
    };
    let figures = IdleFigures {
        requested: args.connections,
        open: count,
        dropped: dropped.load(Ordering::Relaxed),
        rss_before,
        rss_after,
        rss_end,
        bytes_per_conn,
        fit_in_24gib: bytes_per_conn
            .filter(|&b| b > 0.0)
            .map(|b| (MEMORY_BUDGET as f64 / b) as u64),
    };
    Ok(Outcome {
        figures: Figures::Idle(figures),
        window: (first, last),
        units: None,
    })
}

/// Holds one connection: answers pings until the stop, then closes.
pub(crate) async fn hold(
    run: Arc<Run>,
    index: usize,
    mut stream: Stream,
    mut reader: Reader,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut masker = Masker::new(index);
    let mut out = Vec::new();
    let lost = |why: String| {
        dropped.fetch_add(1, Ordering::Relaxed);
        run.progress.fetch_sub(1, Ordering::Relaxed);
        run.error(|| format!("connection {index}: {why}"));
    };
    loop {
        let read = tokio::select! {
            biased;
            _ = run.stop.cancelled() => break,
            read = reader.fill(&mut stream) => read,
        };
        match read {
            Ok(0) => return lost("the server closed it".to_owned()),
            Err(e) => return lost(format!("read failed: {e}")),
            Ok(_) => {}
        }
        loop {
            let (opcode, range) = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return lost(e.to_string()),
            };
            let payload = reader.payload(range);
            match opcode {
                frame::OP_PING => {
                    frame::append_frame(&mut out, frame::OP_PONG, payload, masker.next_key())
                }
                frame::OP_CLOSE => return lost(frame::describe_close(payload)),
                frame::OP_TEXT => run.notice(payload),
                _ => {}
            }
        }
        reader.compact();
        if !out.is_empty() {
            if let Err(e) = conn::send(&mut stream, &out).await {
                return lost(format!("write failed: {e}"));
            }
            out.clear();
        }
    }
    conn::close(&mut stream, &mut reader, masker.next_key(), CLOSE_WAIT).await;
}
