//! `wssgate-bench`: parses flags, runs one load scenario, prints the report
//! (text, or one JSON line with `--json`); exits 1 when it fails, or when
//! a soak's verdict does.

use std::process::ExitCode;

use clap::Parser;
use wssgate_bench::{self as bench, Options};

fn main() -> ExitCode {
    let opts = Options::parse();
    let runtime = match bench::runtime(opts.common().threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wssgate-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(&opts)) {
        Ok(report) => {
            if opts.common().json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("a report serializes")
                );
            } else {
                println!("{report}");
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                // A soak whose verdict failed.
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("wssgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
