//! The flags of `wssgate-bench`: one subcommand per scenario, each with the
//! common flags, and the hard limits that keep every run bounded.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// No run opens more connections than this, whatever the flags say.
pub const MAX_CONNECTIONS: usize = 100_000;
/// No warm-up or measured window is longer than this.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Files this process needs besides its connections (stdio, epoll, /proc reads).
pub const SPARE_FILES: u64 = 32;
/// Most `--url` one run spreads its connections over.
pub const MAX_URLS: usize = 64;
/// Connections per source address before the next one (127.0.0.2, ...) is
/// used: below the ~28k ephemeral ports one address has towards one server.
pub const DEFAULT_PER_SOURCE: usize = 20_000;

/// Load generator for wssgate and any server that speaks its protocol
/// (names in `Origin`, private JSON `{"src","dst","msg"}`, rooms).
#[derive(Debug, Clone, Parser)]
#[command(name = "wssgate-bench", version)]
pub struct Options {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N connections in N/2 pairs, each keeping K private messages in flight
    /// to its partner: delivered msgs/s and latency percentiles.
    Pairs(PairsArgs),
    /// N room members and one publisher at a fixed rate: deliveries/s and
    /// the time for one message to reach every member.
    Fanout(FanoutArgs),
    /// N connections held open: the server's RSS per connection (`--pid`).
    Idle(IdleArgs),
    /// Full handshakes (TCP, TLS with wss, WebSocket upgrade) per second,
    /// each connection closed after its upgrade.
    Connect(ConnectArgs),
    /// A long mixed run (idle readers, paced pairs, connect/disconnect
    /// churn, slow-consumer episodes) that samples the server every
    /// `--sample` and ends with a verdict: memory and open files without
    /// growth, gauges back to zero, no unexpected warnings, latency without
    /// a trend. Exits 1 when the verdict fails.
    Soak(SoakArgs),
}

/// Flags every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server URL, ws:// or wss:// (loopback addresses only). Repeat it to
    /// spread the connections over several servers (e.g. the nodes of a
    /// cluster): connection i goes to URL i mod N, so the two clients of a
    /// pair (i and i^1) are on different URLs and fanout's publisher
    /// (connection 0) is on the first while the members go round-robin.
    /// Not with `soak`.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "ws://127.0.0.1:8080/"
    )]
    pub urls: Vec<String>,
    /// Length of the measured window (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Run before the measured window; excluded from every figure.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Runtime worker threads (1: a current-thread runtime, for a load
    /// generator pinned to one core with taskset).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Never sleep: poll the sockets in a loop (the load generator's core
    /// then reads 100% busy). On loopback a sender pays for waking a
    /// sleeping receiver; a spinning load generator charges the server what
    /// remote clients would, nothing for their wake-ups.
    #[arg(long)]
    pub spin: bool,
    /// Print one JSON line with every figure instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// The server's process id: its CPU time in the window (all scenarios)
    /// and its RSS (idle, and pairs with --stalled), read from /proc.
    /// Repeat it for a server of several processes (the nodes of a cluster
    /// and their Redis): the CPU figures are then the sum over them (not
    /// with idle, soak or --stalled, whose RSS figures read one process).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trust only this CA for wss (e.g. certs/ca.pem from `wssgate gen-certs`);
    /// default: the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (with --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key for mutual TLS (with --cert).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Client names are PREFIX0, PREFIX1, ...; default: `bench<pid>-`.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Handshakes in flight while the connections are being opened.
    #[arg(long, default_value_t = 64)]
    pub open_concurrency: usize,
    /// Connections per source address; beyond that 127.0.0.2, 127.0.0.3, ...
    /// are bound before connecting (IPv4 loopback targets only).
    #[arg(long, default_value_t = DEFAULT_PER_SOURCE)]
    pub per_source: usize,
    /// First source address to bind (default: none bound for the first
    /// --per-source connections, then 127.0.0.2, ...). A second load
    /// process should start elsewhere, e.g. 127.0.1.1.
    #[arg(long)]
    pub source_base: Option<Ipv4Addr>,
}

/// Flags of `pairs`.
#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    /// Connections (an even number: N/2 pairs).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub connections: usize,
    /// Messages each connection keeps in flight to its partner.
    #[arg(long, short = 'k', default_value_t = 4)]
    pub in_flight: usize,
    /// Frame size in bytes, header included (the msg field is padded to it).
    #[arg(long, default_value_t = 80)]
    pub size: usize,
    /// Open loop: send this many messages a second in total, evenly spaced
    /// and dealt round-robin to the connections, instead of keeping -k in
    /// flight; for latency at a chosen load, e.g. half of a server's maximum.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: messages a connection sends together (one write), the
    /// bursts still evenly spaced; like -k, it lets both ends batch.
    #[arg(long, default_value_t = 1)]
    pub burst: u64,
    /// Framing of the hot path: the hand-rolled one, or tungstenite's
    /// WebSocketStream with feed + flush (kept to compare the two).
    #[arg(long, value_enum, default_value = "raw")]
    pub framing: Framing,
    /// Slow consumers alongside the pairs: this many more clients complete
    /// the upgrade and never read a byte, and one feeder connection sends
    /// them private messages; a stalled client the server closes reconnects
    /// under its name and stalls again (0: none).
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Bytes per feeder frame, header included (at most 65536, the
    /// gateway's default max_message_size).
    #[arg(long, default_value_t = 60_000)]
    pub stalled_size: usize,
    /// Messages a second the feeder sends in total, round-robin over the
    /// stalled clients.
    #[arg(long, default_value_t = 200.0)]
    pub stalled_rate: f64,
    /// The control for --stalled: the same clients and feed, but the
    /// clients read (and drop) everything, so that comparing the two runs
    /// shows what a consumer's slowness costs the others, apart from the
    /// work of the feed itself.
    #[arg(long)]
    pub stalled_reading: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// How `pairs` writes and reads frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// Frames built and parsed by hand (the default: leaner).
    Raw,
    /// tungstenite's WebSocketStream, one flush per read.
    Tungstenite,
}

/// Flags of `fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Room members (the publisher comes on top).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub connections: usize,
    /// Messages the publisher sends per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Frame size in bytes, header included.
    #[arg(long, default_value_t = 80)]
    pub size: usize,
    /// The room (starts with '#').
    #[arg(long, default_value = "#bench")]
    pub room: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Flags of `idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Connections to open and hold.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Wait after the last connection opened before reading the RSS.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Flags of `connect`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Handshakes in flight at once.
    #[arg(long, short = 'c', default_value_t = 8)]
    pub concurrency: usize,
    /// Let TLS resume sessions (default: every handshake is a full one).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Flags of `soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Start this gateway binary (`wssgate serve`) on a config of the
    /// soak's own (ws and admin listeners on free loopback ports,
    /// `presence = true`, every limit at its default but the frame rate,
    /// raised to 1,000/s for the slow-consumer feeder), read its log, and
    /// stop it with SIGTERM at the end; `--url` and `--pid` are then its.
    #[arg(long, value_name = "BIN")]
    pub gateway: Option<PathBuf>,
    /// With --gateway: this config instead of the soak's own (it needs a
    /// ws listener and the admin API; ports may be 0).
    #[arg(long, value_name = "FILE", requires = "gateway")]
    pub gateway_config: Option<PathBuf>,
    /// The admin API (host:port) whose /metrics is sampled, for a gateway
    /// the soak did not start.
    #[arg(long, value_name = "ADDR", conflicts_with = "gateway")]
    pub admin: Option<String>,
    /// Bearer token of the admin API.
    #[arg(long, env = "WSSGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The log file of a gateway the soak did not start: lines written to
    /// it during the run are checked for WARN and ERROR.
    #[arg(long, value_name = "FILE", conflicts_with = "gateway")]
    pub log: Option<PathBuf>,
    /// Idle connections held open for the whole run, reading everything
    /// (presence notices) and answering pings.
    #[arg(long, default_value_t = 5000)]
    pub idle: usize,
    /// Connections in pairs, each sending to its partner at a fixed pace.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Messages a second the pairs send in total.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// New short-lived connections a second; each stays `--churn-hold`
    /// and then leaves in turn with a close frame, a FIN (no close frame)
    /// or a reset.
    #[arg(long, default_value_t = 20.0)]
    pub churn: f64,
    /// How long a churn connection stays.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub churn_hold: Duration,
    /// A slow-consumer episode this often: a client that stops reading is
    /// sent large messages until the server cuts it off (1013).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub slow_every: Duration,
    /// Sample the server (RSS, open files, metrics) and close a latency
    /// window this often.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub sample: Duration,
    /// Verdict: most RSS growth allowed, MiB per hour (robust slope over
    /// the samples).
    #[arg(long, default_value_t = 64.0)]
    pub max_growth: f64,
    /// Verdict: most the median p50 and p99 of the last third of the
    /// windows may exceed those of the first third, as a ratio.
    #[arg(long, default_value_t = 3.0)]
    pub max_latency_ratio: f64,
    /// Verdict: a last third whose median latency is under this passes
    /// whatever the ratio (scheduling noise moves small figures most).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub latency_floor: Duration,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

impl Options {
    /// The common flags of the chosen scenario.
    pub fn common(&self) -> &Common {
        match &self.scenario {
            Scenario::Pairs(a) => &a.common,
            Scenario::Fanout(a) => &a.common,
            Scenario::Idle(a) => &a.common,
            Scenario::Connect(a) => &a.common,
            Scenario::Soak(a) => &a.common,
        }
    }

    /// The common flags of the chosen scenario, to change (`soak --gateway`
    /// sets the URL and pid of the gateway it started).
    pub fn common_mut(&mut self) -> &mut Common {
        match &mut self.scenario {
            Scenario::Pairs(a) => &mut a.common,
            Scenario::Fanout(a) => &mut a.common,
            Scenario::Idle(a) => &mut a.common,
            Scenario::Connect(a) => &mut a.common,
            Scenario::Soak(a) => &mut a.common,
        }
    }

    /// Connections open at once at most.
    pub fn connections(&self) -> usize {
        match &self.scenario {
            Scenario::Pairs(a) => a
                .connections
                .saturating_add(super::stalled::extra_connections(a.stalled)),
            Scenario::Fanout(a) => a.connections + 1,
            Scenario::Idle(a) => a.connections,
            Scenario::Connect(a) => a.concurrency,
            Scenario::Soak(a) => a
                .idle
                .saturating_add(a.pairs)
                .saturating_add(super::soak::EXTRA_CONNECTIONS),
        }
    }

    /// What the progress line counts.
    pub(crate) fn progress_label(&self) -> super::stats::Label {
        use super::stats::Label;
        match &self.scenario {
            Scenario::Pairs(_) => Label::Rate("msgs/s"),
            Scenario::Fanout(_) => Label::Rate("deliveries/s"),
            Scenario::Idle(_) => Label::Level("open"),
            Scenario::Connect(_) => Label::Rate("handshakes/s"),
            Scenario::Soak(_) => Label::Level("open"),
        }
    }

    /// Refuses several `--url` or `--pid` where the scenario cannot use
    /// them: `soak` drives one gateway; RSS figures (idle, soak, pairs
    /// with --stalled) read one process.
    pub fn validate_targets(&self) -> anyhow::Result<()> {
        let common = self.common();
        let name = self.scenario.name();
        anyhow::ensure!(
            common.urls.len() <= 1 || !matches!(self.scenario, Scenario::Soak(_)),
            "{name} takes one --url"
        );
        let reads_rss = match &self.scenario {
            Scenario::Pairs(a) => a.stalled > 0,
            Scenario::Idle(_) | Scenario::Soak(_) => true,
            Scenario::Fanout(_) | Scenario::Connect(_) => false,
        };
        anyhow::ensure!(
            common.pids.len() <= 1 || !reads_rss,
            "{name}{} takes one --pid: its RSS figures read one process",
            if matches!(self.scenario, Scenario::Pairs(_)) {
                " --stalled"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// TLS session resumption allowed (only `connect --resume`).
    pub fn resume(&self) -> bool {
        matches!(&self.scenario, Scenario::Connect(a) if a.resume)
    }
}

impl Scenario {
    /// The scenario's name, as in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Pairs(_) => "pairs",
            Scenario::Fanout(_) => "fanout",
            Scenario::Idle(_) => "idle",
            Scenario::Connect(_) => "connect",
            Scenario::Soak(_) => "soak",
        }
    }
}

impl Common {
    /// The first (with one `--url`, the only) server URL.
    pub fn url(&self) -> &str {
        self.urls.first().map_or("", String::as_str)
    }

    /// The first (with one `--pid`, the only) server process id.
    pub fn pid(&self) -> Option<u32> {
        self.pids.first().copied()
    }

    /// Refuses flags that would make an unbounded or meaningless run.
    pub fn validate(&self, connections: usize) -> anyhow::Result<()> {
        anyhow::ensure!(connections > 0, "at least one connection is needed");
        anyhow::ensure!(!self.urls.is_empty(), "--url is needed");
        anyhow::ensure!(
            self.urls.len() <= MAX_URLS,
            "at most {MAX_URLS} --url are taken"
        );
        anyhow::ensure!(
            connections <= MAX_CONNECTIONS,
            "{connections} connections is over the cap of {MAX_CONNECTIONS}"
        );
        anyhow::ensure!(
            self.duration > Duration::ZERO && self.duration <= MAX_DURATION,
            "--duration must be above zero and at most {}",
            humantime::format_duration(MAX_DURATION)
        );
        anyhow::ensure!(
            self.warmup <= MAX_DURATION,
            "--warmup must be at most {}",
            humantime::format_duration(MAX_DURATION)
        );
        anyhow::ensure!((1..=64).contains(&self.threads), "--threads must be 1..=64");
        anyhow::ensure!(
            self.open_concurrency > 0,
            "--open-concurrency must be above 0"
        );
        anyhow::ensure!(self.per_source > 0, "--per-source must be above 0");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Options;

    fn parse(args: &[&str]) -> Options {
        let mut argv = vec!["wssgate-bench"];
        argv.extend_from_slice(args);
        Options::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    #[test]
    fn one_url_by_default_and_as_given() {
        let opts = parse(&["pairs"]);
        assert_eq!(opts.common().urls, ["ws://127.0.0.1:8080/"]);
        assert_eq!(opts.common().url(), "ws://127.0.0.1:8080/");
        assert!(opts.common().pids.is_empty() && opts.common().pid().is_none());
        let opts = parse(&["pairs", "--url", "ws://127.0.0.1:1/", "--pid", "7"]);
        assert_eq!(opts.common().urls, ["ws://127.0.0.1:1/"]);
        assert_eq!(opts.common().pid(), Some(7));
    }

    #[test]
    fn urls_and_pids_repeat_in_order() {
        let opts = parse(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:1/",
            "--pid",
            "7",
            "--url=ws://127.0.0.1:2/",
            "--pid",
            "8",
            "--pid",
            "9",
        ]);
        let common = opts.common();
        assert_eq!(common.urls, ["ws://127.0.0.1:1/", "ws://127.0.0.1:2/"]);
        assert_eq!(common.url(), "ws://127.0.0.1:1/");
        assert_eq!(common.pids, [7, 8, 9]);
        assert_eq!(common.pid(), Some(7));
        assert!(opts.validate_targets().is_ok());
    }

    #[test]
    fn several_urls_or_pids_only_where_they_are_used() {
        let two_urls = ["--url", "ws://127.0.0.1:1/", "--url", "ws://127.0.0.1:2/"];
        let two_pids = ["--pid", "7", "--pid", "8"];
        for scenario in ["pairs", "fanout", "idle", "connect"] {
            let mut args = vec![scenario];
            args.extend(two_urls);
            assert!(parse(&args).validate_targets().is_ok(), "{args:?}");
        }
        let mut soak = vec!["soak"];
        soak.extend(two_urls);
        assert!(parse(&soak).validate_targets().is_err());
        for args in [&["pairs"][..], &["fanout"], &["connect"]] {
            let mut args = args.to_vec();
            args.extend(two_pids);
            assert!(parse(&args).validate_targets().is_ok(), "{args:?}");
        }
        for args in [&["idle"][..], &["soak"], &["pairs", "--stalled", "1"]] {
            let mut args = args.to_vec();
            args.extend(two_pids);
            let err = parse(&args).validate_targets().expect_err("refused");
            assert!(err.to_string().contains("one --pid"), "{err}");
            // One pid is fine there.
            args.truncate(args.len() - 2);
            assert!(parse(&args).validate_targets().is_ok(), "{args:?}");
        }
    }
}
