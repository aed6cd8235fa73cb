//! The load generator end to end: each scenario runs briefly, with few
//! connections, against an in-process gateway, and reports sane figures.

// The gateway's own test helpers: start a real gateway on port 0, read its
// metrics.
#[path = "../../../tests/common/mod.rs"]
mod common;

use clap::Parser;
use wssgate::certgen::{GenCerts, KeyType, files, gen_certs};
use wssgate_bench::pairs::PairsFigures;
use wssgate_bench::{self as bench, Figures, Options, Report};

/// A load generator sends far more than a chat client: the gateway's
/// per-session rate limit (100 frames a second by default) is off here.
const UNLIMITED: &str = "[limits]\nmessages_per_second = 0\n";

/// Runs `wssgate-bench ARGS` in this test's runtime: one second measured,
/// a short warm-up, no progress line.
async fn bench(args: &[&str]) -> Report {
    bench_for(args, "1s").await
}

/// [`bench`] with `duration` measured.
async fn bench_for(args: &[&str], duration: &str) -> Report {
    let mut argv = vec!["wssgate-bench"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--duration", duration, "--warmup", "200ms", "--quiet"]);
    let opts = Options::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let report = bench::run(&opts).await.expect("the run succeeds");
    // Whatever it measured, the JSON line must be there for scripts.
    let json = serde_json::to_value(&report).expect("a report serializes");
    assert_eq!(json["scenario"], opts.scenario.name());
    assert!(
        report.load.cpu_s >= 0.0 && report.window_s > 0.9,
        "{report}"
    );
    report
}

/// The figures of a `pairs` report.
fn pairs(report: &Report) -> &PairsFigures {
    match &report.figures {
        Figures::Pairs(p) => p,
        _ => panic!("not a pairs report: {report}"),
    }
}

fn assert_ordered(l: &bench::stats::Latency, report: &Report) {
    assert!(l.count > 0, "{report}");
    assert!(
        0.0 < l.p50_us && l.p50_us <= l.p99_us && l.p99_us <= l.p999_us && l.p999_us <= l.max_us,
        "{report}"
    );
}

#[tokio::test]
async fn pairs_delivers_and_orders_latencies() {
    let gw = common::start(UNLIMITED).await;
    let url = gw.url("/");
    let pid = std::process::id().to_string();
    for framing in ["raw", "tungstenite"] {
        let report = bench(&[
            "pairs",
            "--url",
            &url,
            "-n",
            "4",
            "-k",
            "2",
            "--pid",
            &pid,
            "--framing",
            framing,
        ])
        .await;
        let p = pairs(&report);
        assert!(p.messages > 0 && p.msgs_per_s > 0.0, "{report}");
        assert_eq!(p.frame_bytes, 80);
        assert_ordered(&p.latency, &report);
        assert_eq!(report.errors, 0, "{report}");
        assert_eq!(p.in_flight, Some(2));
        // Without --stalled, no stalled figures, not even as nulls.
        assert!(p.stalled.is_none(), "{report}");
        let json = serde_json::to_value(&report).expect("a report serializes");
        assert!(json.get("stalled").is_none(), "{json}");
        let server = report.server.as_ref().expect("--pid given");
        assert!(
            server
                .cpu
                .as_ref()
                .is_some_and(|c| c.cpu_us_per_unit.is_some()),
            "{report}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_control_client_reads_everything_and_stays() {
    // The control of the slow-consumer run: the same client and feed, but
    // it reads; it answers pings, so even a short idle timeout keeps it.
    let gw = common::start(
        "[limits]\nmessages_per_second = 0\nping_interval = \"200ms\"\nidle_timeout = \"1s\"\n",
    )
    .await;
    let args = [
        "pairs",
        "--url",
        &gw.url("/"),
        "-n",
        "4",
        "-k",
        "2",
        "--stalled",
        "1",
        "--stalled-reading",
    ];
    let report = bench_for(&args, "2s").await;
    let p = pairs(&report);
    assert_eq!(report.errors, 0, "{report}");
    let s = p.stalled.as_ref().expect("--stalled 1 reports its figures");
    assert!(s.reading && s.feeder_sent > 0, "{report}");
    assert_eq!(
        (s.closed_by_server, s.not_connected, s.too_slow),
        (0, 0, 0),
        "a client that reads is neither closed nor too slow: {report}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn pairs_with_a_client_that_never_reads() {
    // A small queue: the stalled client's queue fills (after the socket
    // buffers) within the run, the gateway closes it with 1013, the load
    // generator sees that and reconnects it under the same name.
    let gw = common::start("[limits]\nmessages_per_second = 0\noutbound_queue = 4\n").await;
    let pid = std::process::id().to_string();
    let report = bench_for(
        &[
            "pairs",
            "--url",
            &gw.url("/"),
            "-n",
            "4",
            "-k",
            "2",
            "--stalled",
            "1",
            "--stalled-rate",
            "500",
            "--pid",
            &pid,
        ],
        "2s",
    )
    .await;
    let p = pairs(&report);
    assert!(p.messages > 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    let s = p.stalled.as_ref().expect("--stalled 1 reports its figures");
    assert_eq!((s.clients, s.frame_bytes), (1, 60_000), "{report}");
    assert!(s.feeder_sent > 0, "{report}");
    assert!(s.closed_by_server >= 1, "{report}");
    assert!(s.reconnects >= 1, "{report}");
    assert!(
        s.not_connected >= 1 && s.notices >= s.not_connected,
        "{report}"
    );
    let rss = s.server_rss.as_ref().expect("--pid given");
    assert!(
        rss.samples >= 2 && rss.first > 0 && rss.max >= rss.last,
        "{report}"
    );
    let json = serde_json::to_value(&report).expect("a report serializes");
    assert_eq!(json["stalled"]["closed_by_server"], s.closed_by_server);
    assert!(json["stalled"]["server_rss"]["max"].is_u64());
    // Every close the load generator saw was the gateway's full-queue close.
    let m = common::metrics(&gw).await;
    let slow = common::metric(&m, r#"wssgate_errors_total{kind="slow_consumer"}"#);
    assert!(slow >= s.closed_by_server as f64, "{slow}: {report}");
    gw.stop().await;
}

#[tokio::test]
async fn a_spinning_load_generator_still_measures_and_stops() {
    let gw = common::start(UNLIMITED).await;
    let report = bench(&[
        "pairs",
        "--url",
        &gw.url("/"),
        "-n",
        "2",
        "-k",
        "1",
        "--spin",
    ])
    .await;
    let p = pairs(&report);
    assert!(p.messages > 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    // The spinner ended with the run: the gateway still stops at once.
    gw.stop().await;
}

#[tokio::test]
async fn pairs_at_a_fixed_rate() {
    let gw = common::start(UNLIMITED).await;
    let url = gw.url("/");
    // One message per write, then bursts of 8 (500 bursts a second).
    for (rate, burst) in [(400.0, 1), (4000.0, 8)] {
        let (r, b) = (rate.to_string(), burst.to_string());
        let args = [
            "pairs", "--url", &url, "-n", "4", "--rate", &r, "--burst", &b,
        ];
        let report = bench(&args).await;
        let p = pairs(&report);
        assert_eq!(
            (p.rate, p.burst, p.in_flight),
            (Some(rate), Some(burst), None)
        );
        // Open loop: about the asked rate, not whatever the server can take.
        assert!(
            (0.75 * rate..=1.25 * rate).contains(&p.msgs_per_s),
            "{report}"
        );
        assert_ordered(&p.latency, &report);
        assert_eq!(report.errors, 0, "{report}");
        let steal = report.steal_share.expect("/proc/stat is readable here");
        assert!((0.0..=1.0).contains(&steal), "{report}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn fanout_reaches_every_member() {
    let gw = common::start(UNLIMITED).await;
    let report = bench(&["fanout", "--url", &gw.url("/"), "-n", "5", "--rate", "50"]).await;
    let Figures::Fanout(f) = &report.figures else {
        panic!("{report}")
    };
    assert!(f.published > 0 && f.complete > 0, "{report}");
    assert!(f.deliveries > 0 && f.deliveries_per_s > 0.0, "{report}");
    assert_ordered(&f.reach_all, &report);
    assert!(f.reach_all.p50_us <= f.reach_all.p95_us, "{report}");
    assert_ordered(&f.delivery, &report);
    assert_eq!(report.errors, 0, "{report}");
    gw.stop().await;
}

#[tokio::test]
async fn idle_reports_memory_per_connection() {
    let gw = common::start(UNLIMITED).await;
    let pid = std::process::id().to_string();
    let report = bench(&[
        "idle",
        "--url",
        &gw.url("/"),
        "-n",
        "50",
        "--settle",
        "100ms",
        "--pid",
        &pid,
    ])
    .await;
    let Figures::Idle(i) = &report.figures else {
        panic!("{report}")
    };
    assert_eq!(i.open, 50, "{report}");
    assert_eq!(i.dropped, 0, "{report}");
    assert!(i.rss_before.is_some() && i.rss_after.is_some(), "{report}");
    // Both ends live in this process, so the figure is not the gateway's
    // alone; it must be there and finite.
    assert!(i.bytes_per_conn.is_some_and(f64::is_finite), "{report}");
    assert!(report.nofile.soft >= report.nofile.soft_before);
    assert!(report.nofile.soft <= report.nofile.hard);
    gw.stop().await;
}

#[tokio::test]
async fn connect_completes_handshakes() {
    let gw = common::start(UNLIMITED).await;
    let report = bench(&["connect", "--url", &gw.url("/"), "-c", "2"]).await;
    let Figures::Connect(c) = &report.figures else {
        panic!("{report}")
    };
    assert!(c.handshakes > 0 && c.handshakes_per_s > 0.0, "{report}");
    assert_ordered(&c.latency, &report);
    assert_eq!(report.errors, 0, "{report}");
    gw.stop().await;
}

#[tokio::test]
async fn wss_pairs_and_connect_with_a_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    gen_certs(&GenCerts {
        out: dir.path().to_owned(),
        extra_sans: vec![],
        clients: vec![],
        force: false,
        key_type: KeyType::EcdsaP256,
    })
    .expect("development certificates");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let gw = common::start_config(&format!(
        "[[listener]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\nmode = \"secure\"\n\
         cert = {:?}\nkey = {:?}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n{UNLIMITED}",
        file(files::SERVER_CERT),
        file(files::SERVER_KEY)
    ))
    .await;
    let url = format!("wss://localhost:{}/", gw.ws.port());
    let ca = file(files::CA_CERT);
    let report = bench(&["pairs", "--url", &url, "--ca", &ca, "-n", "2"]).await;
    assert!(report.tls);
    let p = pairs(&report);
    assert!(p.messages > 0, "{report}");
    let report = bench(&["connect", "--url", &url, "--ca", &ca, "-c", "1"]).await;
    let Figures::Connect(c) = &report.figures else {
        panic!("{report}")
    };
    assert!(c.handshakes > 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    gw.stop().await;
}

/// A `redis-server` (Debian package `redis-server`) on a Unix socket in a
/// temporary directory, for the two-node runs; killed when dropped.
struct Redis {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one and waits for its "ready" line; `None` (the test is
    /// skipped) without the program, except under CI.
    async fn start() -> Option<Redis> {
        use tokio::io::AsyncBufReadExt;
        let found = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|dir| dir.join("redis-server"))
                .find(|p| p.is_file())
        });
        let Some(binary) = found else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not installed; CI needs it (.ci/run installs it)"
            );
            eprintln!(
                "skipped: redis-server is not installed (Debian: apt-get install redis-server)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir for Redis");
        let socket = dir.path().join("redis.sock").display().to_string();
        let mut child = tokio::process::Command::new(binary)
            .args([
                "--port",
                "0",
                "--unixsocket",
                &socket,
                "--unixsocketperm",
                "700",
            ])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.expect("redis-server's output") {
                if line
                    .to_ascii_lowercase()
                    .contains("ready to accept connections")
                {
                    return;
                }
            }
            panic!("redis-server exited before it was ready");
        })
        .await
        .expect("redis-server ready in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Some(Redis { _child: child, dir })
    }

    /// A gateway node `id` on this Redis.
    async fn node(&self, id: &str) -> common::Gateway {
        let socket = self.dir.path().join("redis.sock");
        common::start_config(&format!(
            "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
             [admin]\nbind = \"127.0.0.1:0\"\n\n{UNLIMITED}\n\
             [cluster]\nredis = \"unix://{}\"\nnode_id = \"{id}\"\n",
            socket.display()
        ))
        .await
    }
}

/// `wssgate_cluster_messages_total{direction="published",kind=KIND}` of a node.
async fn published(gw: &common::Gateway, kind: &str) -> f64 {
    let text = common::metrics(gw).await;
    common::metric(
        &text,
        &format!("wssgate_cluster_messages_total{{direction=\"published\",kind=\"{kind}\"}}"),
    )
}

#[tokio::test]
async fn two_nodes_pairs_across_and_fanout_round_robin() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let (a, b) = (redis.node("a").await, redis.node("b").await);
    let (url_a, url_b) = (a.url("/"), b.url("/"));
    let pid = std::process::id().to_string();
    let two = [
        "--url", &url_a, "--url", &url_b, "--pid", &pid, "--pid", &pid,
    ];

    // Closed loop, then open loop: each pair's clients on different nodes,
    // so every message crosses Redis both ways.
    for flags in [&["-k", "2"][..], &["--rate", "400"]] {
        let mut args = vec!["pairs", "-n", "4"];
        args.extend(two);
        args.extend(flags);
        let report = bench(&args).await;
        let p = pairs(&report);
        assert!(p.messages > 0, "{report}");
        assert_ordered(&p.latency, &report);
        assert_eq!(report.errors, 0, "{report}");
        assert_eq!(report.url, url_a);
        assert_eq!(
            report.urls.as_deref(),
            Some(&[url_a.clone(), url_b.clone()][..])
        );
        let server = report.server.as_ref().expect("--pid given");
        assert_eq!(server.pids.as_deref(), Some(&[std::process::id(); 2][..]));
        assert!(server.cpu.is_some(), "{report}");
        let json = serde_json::to_value(&report).expect("a report serializes");
        assert_eq!(json["urls"][1], url_b.as_str(), "{json}");
        assert!(report.to_string().contains(" + "), "{report}");
    }
    // Both nodes published private messages: the pairs spanned them.
    assert!(published(&a, "private").await > 0.0);
    assert!(published(&b, "private").await > 0.0);

    // Fanout: the publisher on the first node, members on both; every
    // message reaches all of them.
    let mut args = vec!["fanout", "-n", "5", "--rate", "50"];
    args.extend(two);
    let report = bench(&args).await;
    let Figures::Fanout(f) = &report.figures else {
        panic!("{report}")
    };
    assert!(f.published > 0 && f.complete > 0, "{report}");
    assert_eq!(f.incomplete, 0, "{report}");
    assert_ordered(&f.reach_all, &report);
    assert_eq!(report.errors, 0, "{report}");
    assert!(
        published(&a, "room").await > 0.0,
        "the publisher's node published"
    );

    a.stop().await;
    b.stop().await;
}

/// One `--url` keeps the report as it was: no `urls`, no `pids`.
#[tokio::test]
async fn one_url_reports_as_before() {
    let gw = common::start(UNLIMITED).await;
    let pid = std::process::id().to_string();
    let report = bench(&["pairs", "--url", &gw.url("/"), "-n", "2", "--pid", &pid]).await;
    assert!(report.urls.is_none(), "{report}");
    let json = serde_json::to_value(&report).expect("a report serializes");
    assert!(json.get("urls").is_none(), "{json}");
    assert!(json["server"].get("pids").is_none(), "{json}");
    assert!(!report.to_string().contains(" + "), "{report}");
    assert!(
        report
            .to_string()
            .contains(&format!("server (pid {pid}) CPU")),
        "{report}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn refuses_what_it_cannot_bound_or_reach() {
    for args in [
        &["pairs", "-n", "3"][..],
        &["pairs", "-n", "200000"],
        &["pairs", "--url", "ws://192.0.2.1:80/"],
        &["pairs", "--url", "http://127.0.0.1:80/"],
        &["pairs", "--size", "20"],
        &["idle", "--duration", "2h"],
        &["fanout", "--room", "nohash"],
        &["pairs", "--stalled", "1", "--stalled-size", "70000"],
        &["pairs", "--stalled", "1", "--stalled-size", "40"],
        &["pairs", "--stalled", "1", "--stalled-rate", "0"],
        &["pairs", "--stalled", "5000"],
        &[
            "pairs",
            "--url",
            "ws://127.0.0.1:1/",
            "--url",
            "wss://127.0.0.1:2/",
        ],
        &[
            "pairs",
            "--url",
            "ws://127.0.0.1:1/",
            "--url",
            "ws://192.0.2.1:80/",
        ],
        &[
            "soak",
            "--url",
            "ws://127.0.0.1:1/",
            "--url",
            "ws://127.0.0.1:2/",
        ],
        &["idle", "--pid", "1", "--pid", "2"],
        &["pairs", "--stalled", "1", "--pid", "1", "--pid", "2"],
    ] {
        let mut argv = vec!["wssgate-bench"];
        argv.extend_from_slice(args);
        argv.push("--quiet");
        let opts = Options::try_parse_from(&argv).expect("flags parse");
        let err = bench::run(&opts)
            .await
            .expect_err(&format!("{args:?} is refused"));
        assert!(!err.to_string().is_empty());
    }
}
