//! The real `wssgate` binary, black box: `serve` with a temp config, the
//! `admin` subcommands against it, SIGTERM, and `check-config`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wssgate::Config;
use wssgate_bench::soak::gateway::{field, strip_ansi};
use wssgate_client::tls::{ClientTls, ServerTrust};
use wssgate_client::{ClientStream, ConnectError, ConnectOptions, connect};

const BIN: &str = env!("CARGO_BIN_EXE_wssgate");
const TOKEN: &str = "0123456789abcdef";

/// A config file under the temp dir with a unique name; removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(tag: &str, text: &str) -> TempConfig {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "wssgate-cli-{}-{tag}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("write temp config");
        TempConfig(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A `wssgate` command with a predictable environment: plain logs at info,
/// no admin settings and no tokio worker count inherited, run outside the
/// repository (so no `config/gateway.toml` is picked up by accident).
fn wssgate(args: &[&str]) -> Command {
    launched(&[], args)
}

/// [`wssgate`] started by `launcher` (a program and its arguments, the
/// binary and `args` after them), e.g. `taskset -c 0`.
fn launched(launcher: &[&str], args: &[&str]) -> Command {
    let mut command = match launcher {
        [program, launcher_args @ ..] => {
            let mut command = Command::new(program);
            command.args(launcher_args).arg(BIN);
            command
        }
        [] => Command::new(BIN),
    };
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("TOKIO_WORKER_THREADS")
        .env_remove("WSSGATE_ADMIN_URL")
        .env_remove("WSSGATE_ADMIN_TOKEN")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs a short-lived `wssgate` command to its end.
async fn run(mut command: Command) -> Output {
    tokio::time::timeout(WAIT, command.output())
        .await
        .expect("command finishes in time")
        .expect("command runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running `wssgate serve`.
struct Served {
    child: Child,
    /// WebSocket listeners by name, from the `listening` log lines.
    listeners: Vec<(String, SocketAddr)>,
    admin: SocketAddr,
    /// The `admin API listening` log line.
    admin_line: String,
    /// The log lines before the first `listening` one, ANSI stripped.
    startup: Vec<String>,
    /// Every log line since the listeners were up, ANSI stripped.
    log: mpsc::UnboundedReceiver<String>,
    _config: TempConfig,
}

impl Served {
    async fn start(config_text: &str) -> Served {
        Served::start_via(config_text, &[]).await
    }

    /// Starts `wssgate serve` through `launcher` (a program and its
    /// arguments, given the binary and its arguments after them).
    async fn start_via(config_text: &str, launcher: &[&str]) -> Served {
        let config = TempConfig::new("serve", config_text);
        let config_arg = config.arg();
        let args = ["serve", "--config", config_arg.as_str()];
        let mut child = launched(launcher, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wssgate serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut listeners = Vec::new();
        let mut startup = Vec::new();
        let (admin, admin_line) = loop {
            let line = next_line(&mut lines).await.unwrap_or_else(|| {
                panic!("wssgate serve ended before listening (see stderr above)")
            });
            let line = strip_ansi(&line);
            if !line.contains("listening") {
                if listeners.is_empty() {
                    startup.push(line);
                }
                continue;
            }
            let addr: SocketAddr = field(&line, "addr")
                .unwrap_or_else(|| panic!("no addr= in {line:?}"))
                .parse()
                .unwrap_or_else(|e| panic!("bad addr in {line:?}: {e}"));
            if line.contains("admin API listening") {
                // The admin listener is announced after every ws listener.
                break (addr, line);
            }
            let name = field(&line, "listener").unwrap_or_else(|| panic!("{line:?}"));
            listeners.push((name.to_owned(), addr));
        };
        // Keep reading stdout, so the pipe never fills, and keep the lines.
        let (tx, log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(line) = next_line(&mut lines).await {
                let _ = tx.send(strip_ansi(&line));
            }
        });
        Served {
            child,
            listeners,
            admin,
            admin_line,
            startup,
            log,
            _config: config,
        }
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.listeners[0].1)
    }

    fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `wssgate admin --url ADMIN args...`.
    async fn admin(&self, args: &[&str]) -> Output {
        let url = self.admin_url();
        let mut all = vec!["admin", "--url", url.as_str()];
        all.extend_from_slice(args);
        run(wssgate(&all)).await
    }

    /// Sends a signal with `kill`, as an init system would.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Waits for the process to exit; returns its status.
    async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("wssgate exits in time")
            .expect("wait")
    }

    /// The next log line containing `needle`.
    async fn log_line(&mut self, needle: &str) -> String {
        loop {
            let line = tokio::time::timeout(WAIT, self.log.recv())
                .await
                .unwrap_or_else(|_| panic!("no log line with {needle:?} in time"))
                .unwrap_or_else(|| panic!("log ended before a line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<String> {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a log line in time")
        .expect("read stdout")
}

fn simple_config(extra_admin: &str) -> String {
    format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n{extra_admin}\n"
    )
}

// ---------------------------------------------------------------- serve + admin

#[tokio::test]
async fn serve_admin_commands_and_sigterm() {
    let mut gw = Served::start(&simple_config("")).await;
    assert_eq!(gw.listeners.len(), 1);
    assert_eq!(gw.listeners[0].0, "ws");
    assert!(gw.admin.ip().is_loopback());

    let mut alice = try_connect(&gw.ws_url("/"), Some(b"alice"))
        .await
        .expect("connect to the real binary");
    let mut bob = try_connect(&gw.ws_url("/?name=bob%20b"), None)
        .await
        .expect("connect by ?name=");
    let alice_addr = local_addr(&alice).to_string();
    gw.log_line("client=alice").await;

    // clients: a table, one row per client, and a count.
    let out = gw.admin(&["clients"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("NAME"), "{text}");
    let mut failures = Failures::new();
    for word in ["REMOTE", "LISTENER", "TLS", "CONNECTED"] {
        failures.check(
            format_args!("column {word}"),
            lines[0].contains(word),
            format_args!("not in the header line of {text:?}"),
        );
    }
    failures.assert_none();
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..4],
        ["alice", alice_addr.as_str(), "ws", "false"],
        "{text}"
    );
    assert!(humantime::parse_rfc3339(row[4]).is_ok(), "{text}");
    assert!(lines[2].starts_with("bob b "), "{text}");
    assert_eq!(lines[3], "2 connected");

    // clients --json: one JSON object per line.
    let out = gw.admin(&["clients", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "alice");
    assert_eq!(rows[0]["remote"], alice_addr.as_str());
    assert_eq!(rows[0]["listener"], "ws");
    assert_eq!(rows[0]["tls"], false);
    assert_eq!(rows[1]["name"], "bob b");

    // send: exactly the text, to that client only.
    let out = gw.admin(&["send", "alice", "hello from the CLI"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "delivered to 1 session(s) of alice\n");
    assert_eq!(recv_text(&mut alice).await, "hello from the CLI");
    let out = gw.admin(&["send", "bob b", "dear bob"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(recv_text(&mut bob).await, "dear bob");

    // send to nobody: an error on stderr, a failing exit status.
    let out = gw.admin(&["send", "nobody", "x"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("recipient not connected: nobody"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());

    // broadcast: everyone.
    let out = gw.admin(&["broadcast", "everyone, listen"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "delivered to 2 session(s)\n");
    assert_eq!(recv_text(&mut alice).await, "everyone, listen");
    assert_eq!(recv_text(&mut bob).await, "everyone, listen");

    // SIGTERM: every client is closed with 1001 and the process exits 0.
    gw.signal("-TERM");
    for ws in [&mut alice, &mut bob] {
        let (code, reason, texts) = recv_close(ws).await;
        assert_eq!(code, 1001);
        assert_eq!(reason, "gateway shutting down");
        assert!(texts.is_empty(), "{texts:?}");
        drain(ws).await;
    }
    let status = gw.wait().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    gw.log_line("SIGTERM received").await;
    gw.log_line("stopped").await;
}

#[tokio::test]
async fn one_cpu_gets_the_single_threaded_scheduler_and_serves() {
    // Pinned to one CPU (as a container limited to one, or taskset): the
    // current-thread scheduler; with every CPU of this machine, the
    // multi-threaded one unless the machine has one. Either way it routes.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The first CPU this process may use (not necessarily CPU 0).
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list");
    let first = allowed
        .trim()
        .split([',', '-'])
        .next()
        .expect("a CPU")
        .to_owned();
    let taskset = std::process::Command::new("taskset").arg("-V").output();
    if taskset.is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "taskset is missing; CI needs it (Debian package util-linux)"
        );
        eprintln!("skipped: taskset is not installed (Debian package util-linux)");
        return;
    }
    for (launcher, expected) in [
        (&["taskset", "-c", first.as_str()][..], "current-thread"),
        (
            &[][..],
            if cpus == 1 {
                "current-thread"
            } else {
                "multi-thread"
            },
        ),
    ] {
        let mut gw = Served::start_via(&simple_config(""), launcher).await;
        let line = gw
            .startup
            .iter()
            .find(|l| l.contains("async runtime"))
            .unwrap_or_else(|| panic!("no runtime line in {:?}", gw.startup));
        assert_eq!(
            field(line, "scheduler"),
            Some(expected),
            "{launcher:?}: {line}"
        );
        let mut alice = try_connect(&gw.ws_url("/"), Some(b"alice"))
            .await
            .expect("alice");
        let mut bob = try_connect(&gw.ws_url("/"), Some(b"bob"))
            .await
            .expect("bob");
        for i in 0..50 {
            send_json(&mut alice, &serde_json::json!({"dst": "bob", "msg": i})).await;
        }
        for i in 0..50 {
            assert_eq!(recv_json(&mut bob).await["msg"], i);
        }
        drop((alice, bob));
        gw.signal("-TERM");
        assert!(gw.wait().await.success());
    }
}

/// `systemctl reload` sends SIGHUP; a gateway without a TLS listener (the
/// nginx TLS-termination setup) used to die of it, dropping every client.
#[tokio::test]
async fn sighup_without_a_tls_listener_keeps_serving() {
    let mut gw = Served::start(&simple_config("")).await;
    let mut alice = try_connect(&gw.ws_url("/"), Some(b"alice"))
        .await
        .expect("connect to the real binary");
    gw.log_line("client=alice").await;
    for _ in 0..2 {
        gw.signal("-HUP");
        gw.log_line("SIGHUP received").await;
        gw.log_line("no TLS listener and no token keys, nothing to reload")
            .await;
    }
    let out = gw.admin(&["send", "alice", "still here"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(recv_text(&mut alice).await, "still here");
    gw.signal("-TERM");
    assert!(gw.wait().await.success());
}

/// `wssgate token` mints a token that a token listener admits, and no log
/// line ever holds a token, whether it was admitted or refused.
#[tokio::test]
async fn minted_tokens_are_admitted_and_never_logged() {
    let text = "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\nidentity = \"token\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\n\
         [auth]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\nalgorithms = [\"HS256\"]\n";
    let config = TempConfig::new("token", text);
    let out = run(wssgate(&[
        "token",
        "--name",
        "alice",
        "--ttl",
        "10m",
        "--config",
        &config.arg(),
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let mut gw = Served::start(text).await;
    let mut alice = try_connect(&gw.ws_url(&format!("/?token={token}")), None)
        .await
        .expect("admitted by the minted token");
    assert_eq!(list(&mut alice).await, ["alice"]);
    // A refused one: its signature part altered.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let refused = try_connect(&gw.ws_url(&format!("/?token={forged}")), None).await;
    assert!(refused.is_err());
    gw.log_line("handshake refused").await;
    gw.signal("-TERM");
    assert!(gw.wait().await.success());
    let signature = token.rsplit('.').next().unwrap_or_default();
    let mut lines = 0;
    while let Ok(line) = gw.log.try_recv() {
        lines += 1;
        assert!(!line.contains(signature), "a token in the log: {line}");
    }
    assert!(lines > 0);
}

#[tokio::test]
async fn sigint_stops_gracefully_too() {
    let mut gw = Served::start(&simple_config("")).await;
    let mut c = try_connect(&gw.ws_url("/?name=c"), None).await.unwrap();
    list(&mut c).await;
    gw.signal("-INT");
    let (code, _, _) = recv_close(&mut c).await;
    assert_eq!(code, 1001);
    drain(&mut c).await;
    assert_eq!(gw.wait().await.code(), Some(0));
    gw.log_line("SIGINT received").await;
}

#[tokio::test]
async fn sigterm_right_after_the_first_listening_line_still_stops_gracefully() {
    // The second listener's `listening` line is longer than a pipe holds, so
    // while this test does not read, the gateway is stuck writing it, right
    // after announcing the first listener. A SIGTERM sent then (as an init
    // system may, at once) must still be a graceful stop with status 0.
    let long = "l".repeat(200_000);
    let config = TempConfig::new(
        "early-term",
        &format!(
            "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
             [[listener]]\nname = \"{long}\"\nbind = \"127.0.0.1:0\"\n\n\
             [admin]\nbind = \"127.0.0.1:0\"\n"
        ),
    );
    let mut child = wssgate(&["serve", "--config", &config.arg()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn wssgate serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = strip_ansi(&next_line(&mut lines).await.expect("a listening line"));
        if line.contains("listening") && field(&line, "listener") == Some("ws") {
            break;
        }
    }
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    // Now let it write its log, and see how it ends.
    let mut log = Vec::new();
    while let Some(line) = next_line(&mut lines).await {
        log.push(strip_ansi(&line));
    }
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}: killed by the signal?");
    assert!(log.iter().any(|l| l.contains("SIGTERM received")));
}

#[tokio::test]
async fn admin_commands_with_a_token() {
    let text = simple_config(&format!("token = \"{TOKEN}\""));
    let mut gw = Served::start(&text).await;
    assert!(gw.admin_line.contains("auth=true"), "{}", gw.admin_line);
    assert!(!gw.admin_line.contains(TOKEN), "{}", gw.admin_line);
    let mut c = try_connect(&gw.ws_url("/?name=c"), None).await.unwrap();
    list(&mut c).await;

    // No token: refused, with a hint.
    let out = gw.admin(&["clients"]).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("401"), "{err}");
    assert!(err.contains("--token"), "{err}");
    // A wrong token.
    let out = gw.admin(&["--token", "0123456789abcdeX", "clients"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));

    // The right token, by flag, by environment, and from the config.
    let out = gw.admin(&["--token", TOKEN, "send", "c", "by flag"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(recv_text(&mut c).await, "by flag");

    let url = gw.admin_url();
    let mut by_env = wssgate(&["admin", "--url", &url, "send", "c", "by env"]);
    by_env.env("WSSGATE_ADMIN_TOKEN", TOKEN);
    let out = run(by_env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(recv_text(&mut c).await, "by env");

    let config = TempConfig::new("token", &text);
    let out = gw
        .admin(&["--config", &config.arg(), "broadcast", "by config"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(recv_text(&mut c).await, "by config");

    // Kick, with a reason the client is told.
    let mut k = try_connect(&gw.ws_url("/?name=k"), None).await.unwrap();
    list(&mut k).await;
    let out = gw
        .admin(&["--token", TOKEN, "kick", "k", "--reason", "enough"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "closed 1 session(s) of k");
    let (code, reason, _) = recv_close(&mut k).await;
    assert_eq!((code, reason.as_str()), (4001, "kicked: enough"));
    let out = gw.admin(&["--token", TOKEN, "kick", "nobody"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("recipient not connected: nobody"),
        "{}",
        stderr(&out)
    );

    gw.signal("-TERM");
    assert_eq!(recv_close(&mut c).await.0, 1001);
    drain(&mut c).await;
    assert_eq!(gw.wait().await.code(), Some(0));
}

#[tokio::test]
async fn admin_without_a_gateway_fails_cleanly() {
    // A port nobody listens on: bind one, note it, release it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = run(wssgate(&[
        "admin",
        "--url",
        &format!("http://{addr}"),
        "clients",
    ]))
    .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot reach the admin API"), "{err}");
}

#[tokio::test]
async fn serve_with_a_bad_config_exits_with_file_and_line() {
    let config = TempConfig::new(
        "bad-serve",
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"0.0.0.0:0\"\n",
    );
    let out = run(wssgate(&["serve", "--config", &config.arg()])).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:5: ", config.arg())),
        "expected FILE:LINE in {err:?}"
    );
    assert!(err.contains("not on loopback"), "{err}");
}

#[tokio::test]
async fn serve_on_a_busy_port_exits_non_zero() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let config = TempConfig::new(
        "busy",
        &format!(
            "[[listener]]\nname = \"ws\"\nbind = \"{addr}\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n"
        ),
    );
    let out = run(wssgate(&["serve", "--config", &config.arg()])).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot bind {addr}")), "{err}");
    drop(busy);
}

// ---------------------------------------------------------------- check-config

#[tokio::test]
async fn check_config_reports_file_line_and_reason() {
    let cases = [
        (
            "[[listener]]\nname = \"ws\"\nbind = \"nowhere\"\n",
            3,
            "invalid socket address",
        ),
        (
            "# ok\n\n[limits]\nping_intervall = \"5s\"\n",
            4,
            "unknown field",
        ),
        ("[admin]\nbind = \"0.0.0.0:9090\"\n", 1, "not on loopback"),
        (
            "[admin]\ntoken = \"                \"\n",
            1,
            "token must be printable ASCII without spaces",
        ),
        (
            "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\nidentity = \"token\"\n",
            1,
            "[auth] algorithms must list the accepted algorithms",
        ),
        (
            "# tokens\n[auth]\nalgorithms = [\"none\"]\nhmac_secret = \"0123456789abcdef0123456789abcdef\"\n",
            2,
            "unknown algorithm \"none\"",
        ),
        (
            "[limits]\nidle_timeout = \"never\"\n",
            2,
            "invalid duration",
        ),
        ("[[listener]\n", 1, ""),
    ];
    let mut failures = Failures::new();
    for (text, line, reason) in cases {
        let case = format!("{text:?}");
        let config = TempConfig::new("bad", text);
        let ran = failures
            .catch(&case, run(wssgate(&["check-config", &config.arg()])))
            .await;
        let Some(out) = ran else { continue };
        let err = stderr(&out);
        failures.check(
            &case,
            !out.status.success(),
            format_args!("accepted ({})", out.status),
        );
        failures.check(
            &case,
            out.status.code() != Some(0),
            format_args!(
                "exit code {:?}, expected it not to be Some(0)",
                out.status.code()
            ),
        );
        let located = format!("{}:{line}: ", config.arg());
        failures.check(
            &case,
            err.contains(&located),
            format_args!("expected {located:?} in {err:?}"),
        );
        failures.check(
            &case,
            err.contains(reason),
            format_args!("expected {reason:?} in {err:?}"),
        );
        failures.check_eq(
            &case,
            err.trim_end().lines().count(),
            1,
            format_args!("lines of stderr {err:?}"),
        );
        let out = stdout(&out);
        failures.check(
            &case,
            out.is_empty(),
            format_args!("expected nothing on stdout, got {out:?}"),
        );
    }
    failures.assert_none();
}

#[tokio::test]
async fn check_config_on_a_missing_file_fails() {
    let path =
        std::env::temp_dir().join(format!("wssgate-cli-{}-missing.toml", std::process::id()));
    let out = run(wssgate(&["check-config", &path.display().to_string()])).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[tokio::test]
async fn check_config_accepts_a_good_file() {
    let config = TempConfig::new(
        "good",
        &format!(
            "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n\n\
             [[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\npath = \"/chat\"\n\n\
             [admin]\nbind = \"0.0.0.0:0\"\ntoken = \"{TOKEN}\"\n\n\
             [limits]\nshutdown_grace = \"500ms\"\n\n[routing]\non_duplicate = \"replace\"\n"
        ),
    );
    let out = run(wssgate(&["check-config", &config.arg()])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{}: ok (2 listener(s))\n", config.arg())
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[tokio::test]
async fn check_config_passes_the_shipped_config() {
    let mut command = wssgate(&["check-config", "config/gateway.toml"]);
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = run(command).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("config/gateway.toml: ok"),
        "{}",
        stdout(&out)
    );
    // Without an argument it checks the same default file.
    let mut command = wssgate(&["check-config"]);
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = run(command).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Every `*.toml` under `dir`, recursively.
fn tomls(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            tomls(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

#[test]
fn every_shipped_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut found = Vec::new();
    tomls(&dir, &mut found);
    assert!(!found.is_empty(), "no *.toml under {}", dir.display());
    let mut failures = Failures::new();
    for path in &found {
        let error = Config::load(path).err().map(|e| e.to_string());
        failures.check(path.display(), error.is_none(), error.unwrap_or_default());
    }
    failures.assert_none();
}

// ------------------------------------------------- gen-certs, wss, SIGHUP reload

/// `name`, a client of the listener at `url` with a CA file and a client
/// certificate.
async fn mtls_client(
    url: &str,
    name: &str,
    ca: &str,
    (cert, key): (&str, &str),
) -> Result<ClientStream, ConnectError> {
    let opts = ConnectOptions {
        url: url.to_owned(),
        name: name.to_owned(),
        tls: ClientTls {
            trust: ServerTrust::Ca(ca.into()),
            identity: Some((cert.into(), key.into())),
        },
        known_hosts: PathBuf::new(),
        token: None,
    };
    let (ws, _) = tokio::time::timeout(WAIT, connect(&opts))
        .await
        .expect("the handshake ends in time")?;
    Ok(ws)
}

/// `gen-certs` output serves mutual TLS as is; a SIGHUP makes new handshakes
/// use replaced files (the poll interval is an hour, so only the signal can).
#[tokio::test]
async fn gen_certs_output_serves_mutual_tls_and_sighup_reloads() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = dir.path().join("certs");
    let out_s = out.to_str().unwrap();
    let generated = run(wssgate(&[
        "gen-certs",
        "--out",
        out_s,
        "--client",
        "alice",
        "--client",
        "bob",
    ]))
    .await;
    assert!(generated.status.success(), "{}", stderr(&generated));
    let text = stdout(&generated);
    let mut failures = Failures::new();
    for file in [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "client-alice.pem",
        "client-bob-key.pem",
    ] {
        let wrote = format!("wrote {}", out.join(file).display());
        failures.check(
            file,
            text.contains(&wrote),
            format_args!("expected {wrote:?} in {text:?}"),
        );
    }
    failures.assert_none();
    assert!(text.contains("CA fingerprint: sha256:"), "{text}");
    assert!(
        text.contains("wssgate-client -- wss://localhost:8443/ --name alice"),
        "{text}"
    );
    let again = run(wssgate(&["gen-certs", "--out", out_s])).await;
    assert!(
        stdout(&again).contains("kept  "),
        "never overwritten without --force"
    );

    let f = |name: &str| out.join(name).display().to_string();
    let config = format!(
        "[[listener]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\nmode = \"secure\"\ncert = {:?}\nkey = {:?}\n\
         client_auth = \"required\"\nclient_ca = {:?}\nidentity = \"certificate\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\n[tls]\nreload_interval = \"1h\"\n",
        f("server.pem"),
        f("server-key.pem"),
        f("ca.pem")
    );
    let mut gw = Served::start(&config).await;
    let url = format!("wss://localhost:{}/", gw.listeners[0].1.port());
    let (ca, bob_cert, bob_key) = (f("ca.pem"), f("client-bob.pem"), f("client-bob-key.pem"));
    let (alice_cert, alice_key) = (f("client-alice.pem"), f("client-alice-key.pem"));

    // bob is connected before alice sends.
    let mut bob = mtls_client(&url, "bob", &ca, (&bob_cert, &bob_key))
        .await
        .expect("bob connects");
    let mut alice = mtls_client(&url, "alice", &ca, (&alice_cert, &alice_key))
        .await
        .expect("alice connects");
    let private = serde_json::json!({"dst":"bob","msg":"over mutual TLS","src":"alice"});
    alice
        .send(Message::text(private.to_string()))
        .await
        .expect("alice sends");
    let frame = tokio::time::timeout(WAIT, bob.next())
        .await
        .expect("bob receives in time")
        .expect("a frame")
        .expect("a frame, not an error");
    let frame: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(
        frame,
        serde_json::json!({"dst":"bob","msg":"over mutual TLS","src":"alice"})
    );

    // Both leave (the gateway logs each once the name is free), so that
    // alice can connect again below.
    alice.close(None).await.expect("alice closes");
    bob.close(None).await.expect("bob closes");
    gw.log_line("disconnected").await;
    gw.log_line("disconnected").await;

    // A new server certificate from another CA, then SIGHUP.
    let other = dir.path().join("other");
    let other_s = other.to_str().unwrap();
    assert!(
        run(wssgate(&["gen-certs", "--out", other_s]))
            .await
            .status
            .success()
    );
    for file in ["server.pem", "server-key.pem"] {
        std::fs::copy(other.join(file), out.join(file)).unwrap();
    }
    gw.signal("-HUP");
    gw.log_line("certificate reloaded").await;
    let new_ca = other.join("ca.pem").display().to_string();
    let alice_files = (alice_cert.as_str(), alice_key.as_str());
    let with_new = mtls_client(&url, "alice", &new_ca, alice_files).await;
    assert!(with_new.is_ok(), "{:?}", with_new.err());
    drop(with_new);
    let with_old = mtls_client(&url, "alice", &ca, alice_files).await;
    let error = with_old
        .err()
        .expect("the old CA no longer verifies")
        .to_string();
    assert!(error.contains("unknown issuer"), "{error}");
    gw.signal("-TERM");
    assert!(gw.wait().await.success());
}
