//! The soak in the test suite: `wssgate-bench soak` for 60 seconds against
//! the real `wssgate` binary it starts itself, at a size a debug build and
//! a CI machine carry (the 30-minute run at full size is in
//! `bench/RESULTS.md`). Idle readers, paced pairs, churn that leaves with
//! close frames, FINs and resets, two slow-consumer episodes, presence on;
//! the soak's own verdict must pass: memory and open files without growth,
//! the clients gauge back to zero, no unexpected WARN or ERROR in the
//! gateway's log, latency without a trend, a clean stop on SIGTERM.

use clap::Parser as _;
use wssgate_bench::{Figures, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_mixed_load_leaves_nothing_behind() {
    let opts = Options::try_parse_from([
        "wssgate-bench",
        "soak",
        "--gateway",
        env!("CARGO_BIN_EXE_wssgate"),
        "--duration",
        "60s",
        "--sample",
        "5s",
        "--idle",
        "500",
        "--pairs",
        "20",
        "--rate",
        "200",
        "--churn",
        "10",
        "--slow-every",
        "20s",
        // A minute is short for a slope: one allocator step of 1 MiB reads
        // as 60 MiB/h. 256 MiB/h still catches a leak of 4 MiB a minute.
        "--max-growth",
        "256",
        "--quiet",
    ])
    .expect("soak flags parse");
    let report = wssgate_bench::run(&opts).await.expect("the soak ran");
    let Figures::Soak(soak) = &report.figures else {
        panic!("not a soak report: {report}");
    };
    assert!(report.passed(), "the soak's verdict failed:\n{report}");
    // The verdict passed on a run that did what it says.
    assert_eq!(soak.samples.len(), 13, "{report}");
    assert_eq!(soak.episodes.len(), 2, "{report}");
    assert!(
        soak.churned.iter().all(|&n| n >= 150),
        "each way of leaving churned: {:?}",
        soak.churned
    );
    let peak = soak
        .samples
        .iter()
        .filter_map(|s| s.clients)
        .fold(0.0, f64::max);
    assert!(
        peak >= 521.0,
        "idle, pairs and feeder were all on the gateway: {peak}"
    );
    assert_eq!(soak.clients_after, Some(0.0));
}
