//! The gateway under a soak: one the soak starts itself (`--gateway`), or
//! one it is pointed at (`--url`, `--pid`, `--admin`, `--log`). What the
//! soak reads from it: its `/metrics`, its open files, and its log lines.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::options::SoakArgs;

/// The soak's own config for `--gateway`: one ws listener and the admin API
/// on free loopback ports, presence on, every limit at its default (the
/// shipped config's values) but the frame rate (see inside).
const SOAK_CONFIG: &str = r#"# written by wssgate-bench soak
[[listener]]
name = "ws"
bind = "127.0.0.1:0"
mode = "non-secure"

[admin]
enabled = true
bind = "127.0.0.1:0"

[routing]
presence = true

[limits]
# The slow-consumer feeder sends hundreds of 16 KiB messages within a
# second on purpose: the frame rate limit is raised above that (the shipped
# default is 100 a second, burst 200) and still checks every frame.
messages_per_second = 1000
message_burst = 2000

[log]
level = "info"
"#;

/// Time the started gateway gets to announce its listeners.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Time the started gateway gets to stop after SIGTERM.
pub const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Time a `/metrics` request may take.
const SCRAPE_LIMIT: Duration = Duration::from_secs(5);
/// Largest `/metrics` response read.
const MAX_SCRAPE: u64 = 4 << 20;
/// WARN and ERROR lines kept for the report (all are counted).
pub const KEPT_LINES: usize = 50;

/// The WARN and ERROR lines the gateway logged, split into those the soak
/// caused on purpose and the rest.
#[derive(Debug, Default)]
pub struct LogScan {
    /// Log lines read.
    pub lines: u64,
    /// WARN/ERROR lines that the soak's slow-consumer episodes explain.
    pub expected: u64,
    /// Every other WARN/ERROR line, counted.
    pub unexpected: u64,
    /// The first [`KEPT_LINES`] of them.
    pub kept: Vec<String>,
}

impl LogScan {
    /// Looks at one log line (ANSI colours stripped first). A WARN line
    /// about closing a slow consumer whose name starts with `slow_prefix`
    /// is expected; every other WARN or ERROR line is not.
    pub fn line(&mut self, raw: &str, slow_prefix: &str) {
        self.lines += 1;
        let line = strip_ansi(raw);
        let level = line.split_whitespace().nth(1).unwrap_or("");
        if level != "WARN" && level != "ERROR" {
            return;
        }
        let slow_close = level == "WARN"
            && line.contains("closing slow consumer")
            && line.split_whitespace().any(|w| {
                w.strip_prefix("client=")
                    .is_some_and(|n| n.starts_with(slow_prefix))
            });
        if slow_close {
            self.expected += 1;
        } else {
            self.unexpected += 1;
            if self.kept.len() < KEPT_LINES {
                self.kept.push(line);
            }
        }
    }
}

/// Shared between the task that reads the log and the soak.
pub type SharedScan = Arc<Mutex<LogScan>>;

/// Where the soak reads the gateway's log from.
pub enum LogSource {
    /// The started gateway's stdout and stderr, read as they come.
    Piped(SharedScan),
    /// A file, read from the length it had at the start.
    File { path: PathBuf, from: u64 },
    /// Nothing: the log is not checked.
    None,
}

/// The gateway under the soak.
pub struct Gateway {
    /// Its WebSocket URL.
    pub url: String,
    /// Its process id, when known.
    pub pid: Option<u32>,
    /// Its admin API, when known.
    pub admin: Option<SocketAddr>,
    /// The admin API's bearer token.
    pub admin_token: Option<String>,
    /// Its log.
    pub log: LogSource,
    /// The process, when the soak started it.
    child: Option<Child>,
    /// The config file the soak wrote, removed at the end.
    written_config: Option<PathBuf>,
}

/// Starts `args.gateway` (see [`SoakArgs::gateway`]) or describes the
/// gateway at `url`; `prefix` starts the run's client names.
pub async fn prepare(
    args: &SoakArgs,
    url: &str,
    pid: Option<u32>,
    prefix: &str,
) -> anyhow::Result<Gateway> {
    let admin_token = args.admin_token.clone();
    let Some(bin) = &args.gateway else {
        let admin = match &args.admin {
            Some(a) => Some(
                tokio::net::lookup_host(a.as_str())
                    .await
                    .with_context(|| format!("cannot resolve --admin {a}"))?
                    .find(|a| a.ip().is_loopback())
                    .with_context(|| format!("--admin {a} is not a loopback address"))?,
            ),
            None => None,
        };
        let log = match &args.log {
            Some(path) => LogSource::File {
                path: path.clone(),
                from: std::fs::metadata(path)
                    .with_context(|| format!("cannot read --log {}", path.display()))?
                    .len(),
            },
            None => LogSource::None,
        };
        return Ok(Gateway {
            url: url.to_owned(),
            pid,
            admin,
            admin_token,
            log,
            child: None,
            written_config: None,
        });
    };
    let (config, written_config) = match &args.gateway_config {
        Some(path) => (path.clone(), None),
        None => {
            let path = std::env::temp_dir().join(format!(
                "wssgate-soak-{}-{}.toml",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            std::fs::write(&path, SOAK_CONFIG)
                .with_context(|| format!("cannot write {}", path.display()))?;
            (path.clone(), Some(path))
        }
    };
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut ws = None;
    let started = tokio::time::timeout(START_LIMIT, async {
        loop {
            let Some(line) = lines.next_line().await? else {
                anyhow::bail!(
                    "{} serve ended before its admin API was listening",
                    bin.display()
                );
            };
            let line = strip_ansi(&line);
            if !line.contains("listening") {
                continue;
            }
            let Some(addr) = field(&line, "addr").and_then(|a| a.parse::<SocketAddr>().ok()) else {
                continue;
            };
            if line.contains("admin API listening") {
                return Ok(addr);
            }
            ws.get_or_insert(addr);
        }
    })
    .await;
    let admin = match started {
        Ok(Ok(admin)) => admin,
        Ok(Err(e)) => {
            let mut err = String::new();
            let mut stderr = stderr;
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut err)).await;
            return Err(e.context(err.trim().to_owned()));
        }
        Err(_) => anyhow::bail!(
            "{} serve did not listen within {START_LIMIT:?}",
            bin.display()
        ),
    };
    let ws = ws.context("the gateway has no ws listener")?;
    let scan = SharedScan::default();
    let slow_prefix = super::slow_prefix(prefix);
    spawn_reader(lines, scan.clone(), slow_prefix.clone());
    spawn_reader(BufReader::new(stderr).lines(), scan.clone(), slow_prefix);
    Ok(Gateway {
        url: format!("ws://{ws}/"),
        pid,
        admin: Some(admin),
        admin_token,
        log: LogSource::Piped(scan),
        child: Some(child),
        written_config,
    })
}

/// Reads log lines until the pipe closes (so that it never fills).
fn spawn_reader<R: tokio::io::AsyncBufRead + Unpin + Send + 'static>(
    mut lines: tokio::io::Lines<R>,
    scan: SharedScan,
    slow_prefix: String,
) {
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            scan.lock()
                .unwrap_or_else(|p| p.into_inner())
                .line(&line, &slow_prefix);
        }
    });
}

impl Gateway {
    /// True when the soak started this gateway.
    pub fn started(&self) -> bool {
        self.child.is_some()
    }

    /// Stops a gateway the soak started (SIGTERM, then a kill after
    /// [`STOP_LIMIT`]) and says how it ended; `None` for one it did not start.
    pub async fn stop(&mut self) -> Option<anyhow::Result<std::process::ExitStatus>> {
        let child = self.child.as_mut()?;
        if let Some(pid) = child.id() {
            terminate(pid);
        }
        Some(match tokio::time::timeout(STOP_LIMIT, child.wait()).await {
            Ok(status) => status.context("cannot wait for the gateway"),
            Err(_) => {
                let _ = child.kill().await;
                Err(anyhow::anyhow!(
                    "the gateway did not stop within {STOP_LIMIT:?} of SIGTERM; killed"
                ))
            }
        })
    }

    /// The WARN/ERROR lines logged so far (for a log file: since the start).
    pub fn log_scan(&self, slow_prefix: &str) -> Option<LogScan> {
        match &self.log {
            LogSource::Piped(scan) => {
                let scan = scan.lock().unwrap_or_else(|p| p.into_inner());
                Some(LogScan {
                    lines: scan.lines,
                    expected: scan.expected,
                    unexpected: scan.unexpected,
                    kept: scan.kept.clone(),
                })
            }
            LogSource::File { path, from } => Some(scan_file(path, *from, slow_prefix)),
            LogSource::None => None,
        }
    }

    /// The gateway's metrics, when its admin API is known.
    pub async fn metrics(&self) -> Option<anyhow::Result<Metrics>> {
        let admin = self.admin?;
        Some(
            tokio::time::timeout(SCRAPE_LIMIT, scrape(admin, self.admin_token.as_deref()))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("/metrics took over {SCRAPE_LIMIT:?}"))),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(path) = &self.written_config {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(target_os = "linux")]
fn terminate(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

#[cfg(not(target_os = "linux"))]
fn terminate(_pid: u32) {
    // Elsewhere the stop falls back to the kill after STOP_LIMIT.
}

/// The lines appended to `path` since it was `from` bytes long.
fn scan_file(path: &Path, from: u64, slow_prefix: &str) -> LogScan {
    let mut scan = LogScan::default();
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|mut f| {
        f.seek(std::io::SeekFrom::Start(from))?;
        f.read_to_string(&mut text)
    });
    if let Err(e) = read {
        scan.unexpected += 1;
        scan.kept
            .push(format!("cannot read the log {}: {e}", path.display()));
    }
    for line in text.lines() {
        scan.line(line, slow_prefix);
    }
    scan
}

/// A scrape of `/metrics`: every series' value, and the sum of each family.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    series: BTreeMap<String, f64>,
}

impl Metrics {
    /// Parses the Prometheus text format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                Some((key.to_owned(), value.trim().parse().ok()?))
            })
            .collect();
        Metrics { series }
    }

    /// The sum over every label set of `family` (0 when absent).
    pub fn sum(&self, family: &str) -> f64 {
        self.series
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(family)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// One series by its exact key, e.g. `wssgate_errors_total{kind="protocol"}`.
    pub fn get(&self, key: &str) -> f64 {
        self.series.get(key).copied().unwrap_or(0.0)
    }
}

/// `GET /metrics` over HTTP/1.1.
async fn scrape(admin: SocketAddr, token: Option<&str>) -> anyhow::Result<Metrics> {
    let mut tcp = TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot connect to the admin API at {admin}"))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    tcp.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    tcp.take(MAX_SCRAPE).read_to_end(&mut response).await?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut head = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = head.parse(&response)? else {
        anyhow::bail!("incomplete /metrics response");
    };
    anyhow::ensure!(
        head.code == Some(200),
        "/metrics answered {}",
        head.code.unwrap_or(0)
    );
    let chunked = head.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value).contains("chunked")
    });
    let body = &response[head_len..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Metrics::parse(&String::from_utf8_lossy(&body)))
}

/// Joins the chunks of a chunked body.
fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(body.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Open files of process `pid` (entries of `/proc/PID/fd`).
pub fn open_files(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The value of `key=` in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// `line` without ANSI colour sequences.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_consumer_warnings_of_the_soak_are_expected_and_others_are_not() {
        let mut scan = LogScan::default();
        scan.line(
            "2026-11-30T05:00:00.1Z  INFO wssgate::session: connected client=a remote=1",
            "s-slow",
        );
        scan.line(
            "2026-11-30T05:00:00.2Z  WARN wssgate::router: outbound queue full, closing slow consumer client=s-slow3 remote=x",
            "s-slow",
        );
        scan.line(
            "\u{1b}[2m2026-11-30T05:00:00.3Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m wssgate::router: outbound queue full, closing slow consumer client=s-7 remote=x",
            "s-slow",
        );
        scan.line(
            "2026-11-30T05:00:00.4Z ERROR wssgate::admin: admin API stopped",
            "s-slow",
        );
        assert_eq!((scan.lines, scan.expected, scan.unexpected), (4, 1, 2));
        assert!(scan.kept[0].contains("client=s-7"), "{:?}", scan.kept);
        assert!(!scan.kept[0].contains('\u{1b}'));
    }

    #[test]
    fn metrics_sum_families_over_labels() {
        let m = Metrics::parse(
            "# HELP wssgate_connections x\nwssgate_connections{listener=\"ws\"} 3\n\
             wssgate_connections{listener=\"wss\"} 2\nwssgate_connections_accepted_total{listener=\"ws\"} 9\n\
             wssgate_queue_drops_total 4\n",
        );
        assert_eq!(m.sum("wssgate_connections"), 5.0);
        assert_eq!(m.sum("wssgate_queue_drops_total"), 4.0);
        assert_eq!(m.get("wssgate_connections{listener=\"wss\"}"), 2.0);
        assert_eq!(m.sum("wssgate_absent"), 0.0);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\nabcd\r\n3;x=1\r\nefg\r\n0\r\n\r\n").unwrap(),
            b"abcdefg"
        );
        assert!(dechunk(b"9\r\nabc").is_err());
    }
}
