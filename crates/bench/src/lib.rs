//! The load generator behind `wssgate-bench`: drives any server that speaks
//! `docs/PROTOCOL.md` (names in `Origin`) over ws or wss, and reports throughput,
//! latency, memory per connection and handshake rate, with its own CPU time
//! so that a report shows whether the load generator was the limit.
//!
//! - [`options`]: the flags of every scenario and their limits.
//! - [`conn`]: dialing (source addresses, TLS) and the client side of the
//!   upgrade; with several `--url` (the nodes of a cluster), connection i
//!   goes to URL i mod N ([`conn::url_index`]).
//! - [`frame`]: the hot path's framing: masked frames, parsing, timestamp templates.
//! - [`stats`]: latency summaries, CPU time and RSS from `/proc`, progress, open files.
//! - [`pace`]: the open-loop schedule of `pairs --rate` (sub-millisecond
//!   spacing, on a Linux timerfd; elsewhere `--rate` is refused).
//! - [`pairs`], [`fanout`], [`idle`], [`connect`]: the scenarios.
//! - [`stalled`]: `pairs --stalled`: clients that never read, the feeder
//!   that keeps their queues full, their reconnects, the server's RSS.
//! - [`soak`]: a long mixed run sampled every `--sample`, with a verdict.
//!
//! Every scenario is bounded: it opens at most [`options::MAX_CONNECTIONS`],
//! runs for `--warmup` plus `--duration` (each at most
//! [`options::MAX_DURATION`]), then closes its connections and returns, and
//! it only targets loopback addresses.

pub mod conn;
pub mod connect;
pub mod fanout;
pub mod frame;
pub mod idle;
pub mod options;
#[cfg(target_os = "linux")]
pub mod pace;
#[cfg(not(target_os = "linux"))]
#[path = "pace_elsewhere.rs"]
pub mod pace;
pub mod pairs;
pub mod soak;
pub mod stalled;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use options::{Common, Options, Scenario};
use stats::{CpuTimes, NoFile, Snapshot};

/// Everything a run measured; printed as text, or as one JSON line with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `pairs`, `fanout`, `idle` or `connect`.
    pub scenario: &'static str,
    /// The server's URL (the first, with several `--url`).
    pub url: String,
    /// Every server URL, with several `--url` (connection i on URL i mod
    /// N, [`conn::url_index`]); absent with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// True for wss.
    pub tls: bool,
    /// Runtime worker threads of the load generator.
    pub threads: usize,
    /// Warm-up before the measured window, seconds.
    pub warmup_s: f64,
    /// The measured window, seconds (as it actually ran).
    pub window_s: f64,
    /// The scenario's own figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// Errors seen: failed connections, gateway error notices, lost sockets.
    pub errors: u64,
    /// The first error's text, to say what went wrong.
    pub first_error: Option<String>,
    /// This process's CPU time in the window.
    pub load: Cpu,
    /// The server's CPU time in the window (with `--pid`).
    pub server: Option<ServerCpu>,
    /// Share of all CPUs' time in the window that the hypervisor gave to
    /// other guests (`steal` in `/proc/stat`; 0 on bare metal). A few
    /// percent of steal stalls one side for milliseconds at a time and
    /// shows in the latency tail whatever the server does.
    pub steal_share: Option<f64>,
    /// Open-file limits of this process.
    pub nofile: NoFile,
}

/// The figures of one scenario.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Figures {
    /// See [`pairs::PairsFigures`].
    Pairs(pairs::PairsFigures),
    /// See [`fanout::FanoutFigures`].
    Fanout(fanout::FanoutFigures),
    /// See [`idle::IdleFigures`].
    Idle(idle::IdleFigures),
    /// See [`connect::ConnectFigures`].
    Connect(connect::ConnectFigures),
    /// See [`soak::SoakFigures`].
    Soak(soak::SoakFigures),
}

/// CPU time of a process in the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// User + system seconds.
    pub cpu_s: f64,
    /// User seconds.
    pub user_s: f64,
    /// System seconds.
    pub sys_s: f64,
    /// `cpu_s` over the window: near 1.0 (one core) means that process
    /// may have been the limit.
    pub cpu_share: f64,
    /// Microseconds of CPU per unit of work (message delivered, delivery,
    /// handshake); absent for `idle`.
    pub cpu_us_per_unit: Option<f64>,
}

impl Cpu {
    fn new(times: CpuTimes, window_s: f64, units: Option<u64>) -> Cpu {
        let cpu_s = times.total().as_secs_f64();
        Cpu {
            cpu_s,
            user_s: times.user.as_secs_f64(),
            sys_s: times.sys.as_secs_f64(),
            cpu_share: cpu_s / window_s,
            cpu_us_per_unit: units.filter(|&n| n > 0).map(|n| cpu_s * 1e6 / n as f64),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s (user {:.2}, sys {:.2}; {:.0}% of one core)",
            self.cpu_s,
            self.user_s,
            self.sys_s,
            self.cpu_share * 100.0
        )?;
        if let Some(us) = self.cpu_us_per_unit {
            write!(f, ", {us:.2} us per unit")?;
        }
        Ok(())
    }
}

/// CPU time of the server process in the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCpu {
    /// The server's process id (the first, with several `--pid`).
    pub pid: u32,
    /// Every process id, with several `--pid`: the CPU figures are their
    /// sum; absent with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<Vec<u32>>,
    /// Its CPU time (the sum over `pids`); absent when a `/proc/PID/stat`
    /// could not be read.
    #[serde(flatten)]
    pub cpu: Option<Cpu>,
}

/// What a scenario hands back to [`run`].
pub(crate) struct Outcome {
    figures: Figures,
    /// Snapshots at the start and end of the measured window.
    window: (Snapshot, Snapshot),
    /// Units of work done in the window (for CPU per unit), if it has them.
    units: Option<u64>,
}

/// State shared by every task of a run: the target, the clock, the stop
/// signal and the error count.
pub(crate) struct Run {
    pub common: Common,
    /// One per `--url`, in order: see [`Run::target`].
    pub targets: Vec<conn::Target>,
    /// Client names start with this.
    pub prefix: String,
    /// Time zero of the timestamps carried in messages.
    pub epoch: Instant,
    /// Cancelled when every task should close its connection and return.
    pub stop: CancellationToken,
    /// Everything that went wrong, counted.
    pub errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    /// Work done so far, for the progress line (messages, deliveries,
    /// open connections or handshakes, as the scenario counts).
    pub progress: AtomicU64,
}

impl Run {
    /// Counts an error and keeps the first one's text.
    pub fn error(&self, what: impl FnOnce() -> String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(what);
        }
    }

    /// The first error's text, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Handles a text frame that is not one of the load generator's
    /// messages: a gateway `error` notice counts as an error; anything else
    /// (presence, operator broadcasts, list replies) is ignored.
    pub fn notice(&self, payload: &[u8]) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        if value["type"] == "error" {
            self.error(|| format!("server notice: {}", value["msg"].as_str().unwrap_or("?")));
        }
    }

    /// Nanoseconds since the epoch: the timestamps carried in messages.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A snapshot of CPU times now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::take(&self.common.pids)
    }

    /// Where connection `index` goes: URL `index mod N` ([`conn::url_index`]).
    pub fn target(&self, index: usize) -> &conn::Target {
        &self.targets[conn::url_index(index, self.targets.len())]
    }

    /// Waits for the measured window (nanoseconds since the epoch) and
    /// returns the snapshots at its start and end.
    pub async fn window(&self, (start_ns, end_ns): (u64, u64)) -> (Snapshot, Snapshot) {
        let epoch = tokio::time::Instant::from_std(self.epoch);
        tokio::time::sleep_until(epoch + Duration::from_nanos(start_ns)).await;
        let first = self.snapshot();
        tokio::time::sleep_until(epoch + Duration::from_nanos(end_ns)).await;
        (first, self.snapshot())
    }

    /// The client name of connection `i`.
    pub fn name(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }
}

/// Time the tasks get to return after the stop, before they are aborted.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(5);

/// Waits up to `wait` for every task of `tasks` (told to stop already) to
/// return, then aborts the rest.
pub(crate) async fn join_or_abort(tasks: &mut tokio::task::JoinSet<()>, wait: Duration) {
    let joined = tokio::time::timeout(wait, async { while tasks.join_next().await.is_some() {} });
    if joined.await.is_err() {
        tasks.abort_all();
    }
}

/// Builds the runtime `--threads` asks for: current-thread for 1 (the load
/// generator is meant to be pinned to one core), else multi-thread.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Runs the scenario `opts` names and returns its report.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let mut common = opts.common().clone();
    common.validate(opts.connections())?;
    opts.validate_targets()?;
    let nofile = stats::raise_nofile();
    if !common.quiet {
        eprintln!(
            "open files: soft limit {} -> {}, hard limit {}",
            nofile.soft_before, nofile.soft, nofile.hard
        );
    }
    let needed = opts.connections() as u64 + options::SPARE_FILES;
    anyhow::ensure!(
        needed <= nofile.soft,
        "{} connections need about {needed} open files, but this process may open {} \
         (hard limit {}); run fewer, or split them over two load processes \
         with different --source-base addresses",
        opts.connections(),
        nofile.soft,
        nofile.hard
    );
    let prefix = common
        .prefix
        .clone()
        .unwrap_or_else(|| format!("bench{}-", std::process::id()));
    let mut soak_gateway = None;
    if let Scenario::Soak(args) = &opts.scenario {
        let gateway = soak::gateway::prepare(args, common.url(), common.pid(), &prefix).await?;
        common.urls = vec![gateway.url.clone()];
        common.pids = gateway.pid.into_iter().collect();
        soak_gateway = Some(gateway);
    }
    let mut targets = Vec::with_capacity(common.urls.len());
    for url in &common.urls {
        let target = conn::Target::new(url, &common, opts.resume())
            .await
            .with_context(|| format!("cannot use {url}"))?;
        targets.push(target);
    }
    let tls = targets.first().is_some_and(conn::Target::is_tls);
    anyhow::ensure!(
        targets.iter().all(|t| t.is_tls() == tls),
        "the --url must all be ws:// or all wss://"
    );
    let run = Arc::new(Run {
        common: common.clone(),
        targets,
        prefix,
        epoch: Instant::now(),
        stop: CancellationToken::new(),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
        progress: AtomicU64::new(0),
    });
    // A soak prints a line per sample instead of one a second.
    let progress = (!matches!(opts.scenario, Scenario::Soak(_)))
        .then(|| stats::progress(run.clone(), opts.progress_label()));
    if common.spin {
        // Yielded tasks resume only after the runtime has polled its
        // sockets (without waiting): this loop keeps it from ever sleeping.
        let stop = run.stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                tokio::task::yield_now().await;
            }
        });
    }
    let outcome = match &opts.scenario {
        Scenario::Pairs(args) => pairs::run(&run, args).await,
        Scenario::Fanout(args) => fanout::run(&run, args).await,
        Scenario::Idle(args) => idle::run(&run, args).await,
        Scenario::Connect(args) => connect::run(&run, args).await,
        Scenario::Soak(args) => match soak_gateway.take() {
            Some(gateway) => soak::run(&run, args, gateway).await,
            None => Err(anyhow::anyhow!("soak: no gateway prepared")),
        },
    };
    run.stop.cancel();
    if let Some(progress) = progress {
        progress.abort();
    }
    let outcome = outcome?;
    let (start, end) = &outcome.window;
    let window = end
        .wall
        .duration_since(start.wall)
        .max(Duration::from_micros(1));
    let window_s = window.as_secs_f64();
    let server = common.pid().map(|pid| ServerCpu {
        pid,
        pids: (common.pids.len() > 1).then(|| common.pids.clone()),
        cpu: start
            .server_cpu
            .zip(end.server_cpu)
            .map(|(a, b)| Cpu::new(b.since(&a), window_s, outcome.units)),
    });
    let first_error = run.first_error();
    Ok(Report {
        scenario: opts.scenario.name(),
        url: common.url().to_owned(),
        urls: (common.urls.len() > 1).then(|| common.urls.clone()),
        tls,
        threads: common.threads,
        warmup_s: common.warmup.as_secs_f64(),
        window_s,
        figures: outcome.figures,
        errors: run.errors.load(Ordering::Relaxed),
        first_error,
        load: Cpu::new(end.own_cpu.since(&start.own_cpu), window_s, outcome.units),
        server,
        steal_share: start
            .steal
            .zip(end.steal)
            .filter(|_| end.cpus > 0)
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64() / (window_s * end.cpus as f64)),
        nofile,
    })
}

impl Report {
    /// False when the run's own verdict failed (only `soak` has one).
    pub fn passed(&self) -> bool {
        match &self.figures {
            Figures::Soak(soak) => soak.passed,
            _ => true,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls = match &self.urls {
            Some(urls) => urls.join(" + "),
            None => self.url.clone(),
        };
        writeln!(
            f,
            "{} against {} ({}), {} thread(s), warm-up {:.1} s, window {:.2} s",
            self.scenario,
            urls,
            if self.tls { "wss" } else { "ws" },
            self.threads,
            self.warmup_s,
            self.window_s
        )?;
        match &self.figures {
            Figures::Pairs(p) => write!(f, "{p}")?,
            Figures::Fanout(p) => write!(f, "{p}")?,
            Figures::Idle(p) => write!(f, "{p}")?,
            Figures::Connect(p) => write!(f, "{p}")?,
            Figures::Soak(p) => write!(f, "{p}")?,
        }
        writeln!(f, "load generator CPU: {}", self.load)?;
        if let Some(urls) = &self.urls {
            writeln!(
                f,
                "connection i on URL i mod {}: each pair's clients on different URLs, \
                 fanout's publisher on the first and its members round-robin",
                urls.len()
            )?;
        }
        if let Some(s) = &self.server {
            let pids = match &s.pids {
                Some(pids) => format!(
                    "pids {}",
                    pids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join("+")
                ),
                None => format!("pid {}", s.pid),
            };
            match &s.cpu {
                Some(cpu) => writeln!(f, "server ({pids}) CPU: {cpu}")?,
                None => writeln!(f, "server ({pids}) CPU: not readable")?,
            }
        }
        if let Some(steal) = self.steal_share {
            writeln!(
                f,
                "host steal: {:.1}% of the CPUs' time in the window",
                steal * 100.0
            )?;
        }
        writeln!(
            f,
            "open files: soft {} (was {}), hard {}",
            self.nofile.soft, self.nofile.soft_before, self.nofile.hard
        )?;
        write!(f, "errors: {}", self.errors)?;
        if let Some(e) = &self.first_error {
            write!(f, " (first: {e})")?;
        }
        Ok(())
    }
}
