//! Measuring: latency summaries from HDR histograms, CPU time and RSS of a
//! process from `/proc`, the open-file limit, and the once-a-second
//! progress line on stderr.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Run;

/// Highest latency the histograms hold (longer values are clamped to it).
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`, 100 on Linux's
/// x86 and ARM ABIs).
const USER_HZ: u64 = 100;

/// A histogram of nanoseconds, 3 significant digits, 1 ns to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("constant bounds are valid")
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 95th percentile.
    pub p95_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Values recorded.
    pub count: u64,
}

impl Latency {
    /// The summary of a histogram of nanoseconds (zeros when empty).
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50_us: us(h.value_at_quantile(0.50)),
            p95_us: us(h.value_at_quantile(0.95)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} us, p95 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.p50_us, self.p95_us, self.p99_us, self.p999_us, self.max_us
        )
    }
}

/// User and system CPU time of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// In user space.
    pub user: Duration,
    /// In the kernel (for a load generator on loopback, mostly the TCP
    /// stack: a loopback write also runs the receiving side).
    pub sys: Duration,
}

impl CpuTimes {
    /// User + system.
    pub fn total(&self) -> Duration {
        self.user + self.sys
    }

    /// The time spent since `earlier`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }
}

/// CPU times at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// When.
    pub wall: Instant,
    /// This process.
    pub own_cpu: CpuTimes,
    /// The server (`--pid`; summed over several), if every one is readable.
    pub server_cpu: Option<CpuTimes>,
    /// Time the hypervisor gave this machine's CPUs to others, summed
    /// over CPUs (`steal` of `/proc/stat`), if readable.
    pub steal: Option<Duration>,
    /// CPUs counted in `/proc/stat`.
    pub cpus: usize,
}

impl Snapshot {
    /// Reads the CPU times now; `server`: the server's processes (none,
    /// one, or the several of a cluster, whose times are summed).
    pub fn take(server: &[u32]) -> Snapshot {
        let (steal, cpus) = steal_time().map_or((None, 0), |(t, n)| (Some(t), n));
        Snapshot {
            wall: Instant::now(),
            own_cpu: cpu_time("self").unwrap_or_default(),
            server_cpu: summed_cpu_time(server),
            steal,
            cpus,
        }
    }
}

/// The CPU times of `pids` added up; `None` when there are none or one
/// cannot be read (a sum missing a process would read as a cheaper server).
pub fn summed_cpu_time(pids: &[u32]) -> Option<CpuTimes> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(CpuTimes::default(), |sum, pid| {
        let t = cpu_time(&pid.to_string())?;
        Some(CpuTimes {
            user: sum.user + t.user,
            sys: sum.sys + t.sys,
        })
    })
}

/// CPU time of a process (`self` or a pid), all its threads, from
/// `/proc/PID/stat` (10 ms resolution).
pub fn cpu_time(pid: &str) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11); // field 14 is utime; `rest` starts at 3
    let mut ticks = || -> Option<Duration> {
        let n: u64 = fields.next()?.parse().ok()?;
        Some(Duration::from_millis(n * 1000 / USER_HZ))
    };
    Some(CpuTimes {
        user: ticks()?,
        sys: ticks()?,
    })
}

/// Steal time summed over the CPUs, and how many CPUs: the eighth value of
/// each `cpuN` line of `/proc/stat`, in `USER_HZ` ticks.
pub fn steal_time() -> Option<(Duration, usize)> {
    parse_steal(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_steal(stat: &str) -> Option<(Duration, usize)> {
    let mut ticks = 0u64;
    let mut cpus = 0;
    for line in stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(cpu) = fields.next() else { continue };
        if !(cpu.starts_with("cpu") && cpu.len() > 3) {
            continue;
        }
        ticks += fields.nth(7)?.parse::<u64>().ok()?;
        cpus += 1;
    }
    Some((Duration::from_millis(ticks * 1000 / USER_HZ), cpus))
}

/// Resident set size of a process in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The open-file limits of this process.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NoFile {
    /// Soft limit at start.
    pub soft_before: u64,
    /// Soft limit after raising it.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to the hard limit.
pub fn raise_nofile() -> NoFile {
    let (soft_before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    let soft = rlimit::increase_nofile_limit(hard).unwrap_or(soft_before);
    NoFile {
        soft_before,
        soft,
        hard,
    }
}

/// What the progress line shows.
#[derive(Debug, Clone, Copy)]
pub enum Label {
    /// The counter's increase per second.
    Rate(&'static str),
    /// The counter itself.
    Level(&'static str),
}

/// Prints one line a second on stderr until aborted: the progress counter,
/// errors, and this process's share of a core.
pub(crate) fn progress(run: Arc<Run>, label: Label) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if run.common.quiet {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = (run.progress.load(Ordering::Relaxed), Snapshot::take(&[]));
        loop {
            tick.tick().await;
            let now = (run.progress.load(Ordering::Relaxed), Snapshot::take(&[]));
            let secs = now.1.wall.duration_since(last.1.wall).as_secs_f64();
            let cpu = now.1.own_cpu.since(&last.1.own_cpu).total().as_secs_f64() / secs;
            let shown = match label {
                Label::Rate(name) => format!("{:>10.0} {name}", (now.0 - last.0) as f64 / secs),
                Label::Level(name) => format!("{:>10} {name}", now.0),
            };
            eprintln!(
                "[{:>5.1}s] {shown}  errors {}  load cpu {:>3.0}%",
                run.epoch.elapsed().as_secs_f64(),
                run.errors.load(Ordering::Relaxed),
                cpu * 100.0
            );
            last = now;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_summed_over_the_cpu_lines_only() {
        let stat = "cpu  9 9 9 9 9 9 9 999 0 0\n\
                    cpu0 1 2 3 4 5 6 7 10 0 0\n\
                    cpu1 1 2 3 4 5 6 7 25 0 0\n\
                    intr 1 2 3\nctxt 5\n";
        assert_eq!(
            parse_steal(stat),
            Some((Duration::from_millis(350), 2)),
            "35 ticks of 10 ms over two CPUs; the summary line is not counted twice"
        );
        assert_eq!(
            parse_steal("cpu0 1 2 3\n"),
            None,
            "a short line is not guessed at"
        );
    }

    #[test]
    fn own_cpu_time_and_rss_are_readable() {
        assert!(cpu_time("self").is_some());
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(cpu_time("999999999").is_none());
    }

    #[test]
    fn several_pids_are_summed_or_none() {
        let me = std::process::id();
        assert!(summed_cpu_time(&[]).is_none());
        let one = summed_cpu_time(&[me]).expect("this process is readable");
        let two = summed_cpu_time(&[me, me]).expect("twice this process");
        // Read a moment apart: the second sum is at least twice the first.
        assert!(two.total() >= one.total() * 2, "{one:?} {two:?}");
        assert!(
            summed_cpu_time(&[me, 999_999_999]).is_none(),
            "a sum missing a process is not given"
        );
    }

    #[test]
    fn latency_percentiles_are_ordered() {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = Latency::of(&h);
        assert!(l.p50_us <= l.p99_us && l.p99_us <= l.p999_us && l.p999_us <= l.max_us);
        assert!((l.p50_us - 5000.0).abs() < 10.0, "{l:?}");
    }
}
