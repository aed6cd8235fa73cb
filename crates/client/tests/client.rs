//! The real `wssgate-client` binary against an in-process gateway: scripted
//! sends, JSON output, line mode, refusals, exit codes, reconnects, and the
//! certificate policies it is most often run with (--ca, --accept-all, --pin,
//! --verify-none). Every wait awaits a line the client prints or a socket
//! event; nothing sleeps.

// The gateway's own test helpers: a real gateway on port 0, raw clients.
#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio_tungstenite::tungstenite::Message;
use wssgate::certgen::{Ca, KeyType, Leaf, Pem};
use wssgate_client::connect::{ClientStream, ConnectOptions};
use wssgate_client::tls::{ClientTls, ServerTrust};

const BIN: &str = env!("CARGO_BIN_EXE_wssgate-client");

/// A running client process; its stdout and stderr are read line by line.
struct Run {
    child: Child,
    stdin: Option<ChildStdin>,
    out: UnboundedReceiver<String>,
    err: UnboundedReceiver<String>,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

/// How a run ended.
#[derive(Debug)]
struct Finished {
    code: i32,
    stdout: Vec<String>,
    stderr: String,
}

fn lines_of(reader: impl AsyncRead + Unpin + Send + 'static) -> UnboundedReceiver<String> {
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts the client with `args`; stdin is a pipe when `stdin`, else empty.
fn spawn(args: &[&str], stdin: bool) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .spawn()
        .expect("client binary starts");
    let out = lines_of(child.stdout.take().expect("piped stdout"));
    let err = lines_of(child.stderr.take().expect("piped stderr"));
    Run {
        stdin: child.stdin.take(),
        child,
        out,
        err,
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}

/// Runs the client to its end.
async fn run(args: &[&str]) -> Finished {
    spawn(args, false).finish().await
}

impl Run {
    /// Waits for a stderr line containing `needle`.
    async fn stderr_line(&mut self, needle: &str) -> String {
        loop {
            let line = tokio::time::timeout(WAIT, self.err.recv())
                .await
                .unwrap_or_else(|_| panic!("no stderr line with {needle:?}; got {:?}", self.stderr))
                .unwrap_or_else(|| panic!("stderr ended before {needle:?}; got {:?}", self.stderr));
            self.stderr.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for a stdout line equal to `expected`.
    async fn stdout_line(&mut self, expected: &str) {
        loop {
            let line = tokio::time::timeout(WAIT, self.out.recv())
                .await
                .unwrap_or_else(|_| panic!("no stdout line {expected:?}; got {:?}", self.stdout))
                .unwrap_or_else(|| {
                    panic!("stdout ended before {expected:?}; got {:?}", self.stdout)
                });
            self.stdout.push(line.clone());
            if line == expected {
                return;
            }
        }
    }

    /// Waits until the client printed that it is connected.
    async fn connected(&mut self) {
        self.stderr_line("connected to ").await;
    }

    async fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the client's stdin");
    }

    /// Waits for the process to exit and collects the rest of its output.
    async fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("client exits in time; stderr so far: {:?}", self.stderr))
            .expect("wait for the client");
        for (rx, seen) in [
            (&mut self.out, &mut self.stdout),
            (&mut self.err, &mut self.stderr),
        ] {
            while let Some(line) = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("output ends with the process")
            {
                seen.push(line);
            }
        }
        Finished {
            code: status.code().expect("exited, not killed by a signal"),
            stdout: self.stdout,
            stderr: self.stderr.join("\n"),
        }
    }
}

#[tokio::test]
async fn send_to_a_name_delivers_a_private_message_as_qt_writes_it() {
    let gw = start("").await;
    let mut bob = connect(&gw, "bob").await;
    let done = run(&[
        &gw.url("/"),
        "--name",
        "alice",
        "--send",
        "hello bob",
        "--to",
        "bob",
    ])
    .await;
    assert_eq!(done.code, 0, "{done:?}");
    // Byte for byte what the Qt example writes, src set by the gateway.
    assert_eq!(
        recv_text(&mut bob).await,
        r#"{"dst":"bob","msg":"hello bob","src":"alice"}"#
    );
    assert!(
        done.stderr.contains("disconnected: 1000"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.is_empty(), "{done:?}");
}

#[tokio::test]
async fn send_to_nobody_exits_3_with_the_gateway_error() {
    let gw = start("").await;
    let done = run(&[
        &gw.url("/"),
        "--name",
        "alice",
        "--send",
        "x",
        "--to",
        "nobody",
    ])
    .await;
    assert_eq!(done.code, 3, "{done:?}");
    assert!(
        done.stderr.contains("recipient not connected: nobody"),
        "{}",
        done.stderr
    );
    // Even a refused send ends with a normal close.
    assert!(
        done.stderr.contains("disconnected: 1000"),
        "{}",
        done.stderr
    );
}

#[tokio::test]
async fn send_to_a_room_joins_it_and_plain_text_goes_to_the_operator() {
    let gw = start("").await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut bob = connect(&gw, "bob").await;
    send_json(&mut bob, &json!({"type":"join","room":"#ops"})).await;
    list(&mut bob).await;

    let done = run(&[
        &gw.url("/"),
        "--name",
        "bot",
        "--send",
        "deployed",
        "--to",
        "#ops",
    ])
    .await;
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(
        recv_json(&mut bob).await,
        json!({"dst":"#ops","msg":"deployed","src":"bot"})
    );

    let done = run(&[&gw.url("/"), "--name", "bot", "--send", "status: ok"]).await;
    assert_eq!(done.code, 0, "{done:?}");
    let event = await_event(&mut events, |e| e["type"] == "message").await;
    assert_eq!(event["name"], "bot");
    assert_eq!(event["text"], "status: ok");
}

#[tokio::test]
async fn json_wait_prints_a_broadcast_and_a_private_message() {
    let gw = start("").await;
    let mut client = spawn(
        &[&gw.url("/"), "--name", "cli", "--json", "--wait", "2"],
        false,
    );
    client.connected().await;
    let delivered = gw
        .operator()
        .broadcast("hello all")
        .await
        .expect("broadcast");
    assert_eq!(delivered, 1);
    let mut bob = connect(&gw, "bob").await;
    send_json(&mut bob, &json!({"dst":"cli","msg":"hi"})).await;
    let done = client.finish().await;
    assert_eq!(done.code, 0, "{done:?}");
    let frames: Vec<Value> = done
        .stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        frames,
        [
            json!({"text":"hello all"}),
            json!({"dst":"cli","msg":"hi","src":"bob"})
        ]
    );
}

#[tokio::test]
async fn line_mode_from_a_pipe() {
    let gw = start("").await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut bob = connect(&gw, "bob").await;
    send_json(&mut bob, &json!({"type":"join","room":"#r"})).await;
    list(&mut bob).await;

    let mut carol = spawn(&[&gw.url("/"), "--name", "carol"], true);
    for line in [
        "hello server",
        "@bob hi bob",
        "/join #r",
        "#r to the room",
        "/list",
        "/bogus",
    ] {
        carol.write_line(line).await;
    }
    assert_eq!(
        await_event(&mut events, |e| e["type"] == "message").await["text"],
        "hello server"
    );
    assert_eq!(
        recv_json(&mut bob).await,
        json!({"dst":"bob","msg":"hi bob","src":"carol"})
    );
    assert_eq!(
        recv_json(&mut bob).await,
        json!({"dst":"#r","msg":"to the room","src":"carol"})
    );
    carol.stdout_line("2 connected: bob, carol").await;
    carol.stderr_line("unknown command /bogus").await;

    // What carol receives, shown as the Qt example shows it.
    send_json(&mut bob, &json!({"dst":"#r","msg":"back"})).await;
    carol.stdout_line("[#r] from bob: back").await;
    send_json(&mut bob, &json!({"dst":"carol","msg":"psst"})).await;
    carol.stdout_line("from bob: psst").await;
    gw.operator()
        .send("carol", "from the operator")
        .await
        .expect("send");
    carol.stdout_line("server: from the operator").await;

    // An error for the last line still shows before the exit at EOF.
    carol.write_line("@nobody x").await;
    let done = carol.finish().await;
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(
        done.stdout.last().map(String::as_str),
        Some("error: recipient not connected: nobody"),
        "{done:?}"
    );
    assert!(
        done.stderr.contains("disconnected: 1000"),
        "{}",
        done.stderr
    );
    let event = await_event(&mut events, |e| e["type"] == "disconnect").await;
    assert_eq!(event["reason"], "client closed");
}

#[tokio::test]
async fn a_refused_name_exits_2_with_the_reason() {
    let gw = start("").await;
    let _alice = connect(&gw, "alice").await;
    let done = run(&[&gw.url("/"), "--name", "alice", "--send", "x"]).await;
    assert_eq!(done.code, 2, "{done:?}");
    assert!(done.stderr.contains("409"), "{}", done.stderr);
    assert!(
        done.stderr.contains("name already connected: alice"),
        "{}",
        done.stderr
    );
}

#[tokio::test]
async fn reconnect_against_a_closed_port_exits_2_after_retrying() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("ws://127.0.0.1:{port}/");
    let done = run(&[&url, "--name", "x", "--reconnect", "--max-retries", "2"]).await;
    assert_eq!(done.code, 2, "{done:?}");
    assert!(done.stderr.contains("attempt 1 of 2"), "{}", done.stderr);
    assert!(done.stderr.contains("attempt 2 of 2"), "{}", done.stderr);
    assert!(!done.stderr.contains("attempt 3"), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("giving up after 2 reconnect attempt(s)"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains("cannot connect"), "{}", done.stderr);
}

#[tokio::test]
async fn a_lost_connection_exits_4() {
    let gw = start("").await;
    let mut client = spawn(
        &[&gw.url("/"), "--name", "cli", "--json", "--wait", "5"],
        false,
    );
    client.connected().await;
    gw.stop().await;
    let done = client.finish().await;
    assert_eq!(done.code, 4, "{done:?}");
    assert!(done.stderr.contains("1001"), "{}", done.stderr);
}

#[tokio::test]
async fn reconnect_does_not_fight_a_session_that_replaced_it() {
    let gw = start("[routing]\non_duplicate = \"replace\"\n").await;
    let mut client = spawn(
        &[
            &gw.url("/"),
            "--name",
            "dup",
            "--json",
            "--wait",
            "5",
            "--reconnect",
        ],
        false,
    );
    client.connected().await;
    let _newer = connect(&gw, "dup").await;
    let done = client.finish().await;
    assert_eq!(done.code, 4, "{done:?}");
    assert!(done.stderr.contains("4000"), "{}", done.stderr);
    assert!(!done.stderr.contains("reconnecting"), "{}", done.stderr);
}

#[tokio::test]
async fn usage_errors_exit_1() {
    let pin = format!("sha256:{}", "0".repeat(64));
    for args in [
        vec![
            "wss://127.0.0.1:1/",
            "--name",
            "a",
            "--ca",
            "ca.pem",
            "--verify-none",
        ],
        vec![
            "wss://127.0.0.1:1/",
            "--name",
            "a",
            "--accept-all",
            "--pin",
            pin.as_str(),
        ],
        vec!["wss://127.0.0.1:1/", "--name", "a", "--accept-new"],
        vec!["wss://127.0.0.1:1/", "--name", "a", "--pin", "sha256:abc"],
        vec!["wss://127.0.0.1:1/", "--name", "a", "--cert", "c.pem"],
        vec!["ws://127.0.0.1:1/", "--name", "a", "--wait", "2"],
        vec![
            "ws://127.0.0.1:1/",
            "--name",
            "a",
            "--send",
            "x",
            "--to",
            "#",
        ],
        vec!["http://127.0.0.1:1/", "--name", "a", "--send", "x"],
        vec!["ws://127.0.0.1:1/"],
    ] {
        let done = run(&args).await;
        assert_eq!(done.code, 1, "{args:?}: {done:?}");
        assert!(!done.stderr.is_empty(), "{args:?}");
    }
    // Unreadable certificate files are reported before connecting (port 1
    // is closed: reaching it would be exit 2).
    let missing = std::env::temp_dir().join("wssgate-client-test-no-such-file.pem");
    let missing = missing.to_str().expect("utf-8 temp dir");
    let done = run(&[
        "wss://127.0.0.1:1/",
        "--name",
        "a",
        "--cert",
        missing,
        "--key",
        missing,
    ])
    .await;
    assert_eq!(done.code, 1, "{done:?}");
    assert!(done.stderr.contains(missing), "{}", done.stderr);
    let done = run(&["wss://127.0.0.1:1/", "--name", "a", "--ca", missing]).await;
    assert_eq!(done.code, 1, "{done:?}");
    assert!(done.stderr.contains(missing), "{}", done.stderr);
}

#[tokio::test]
async fn help_documents_the_exit_codes_and_the_danger() {
    let done = run(&["--help"]).await;
    assert_eq!(done.code, 0);
    let help = done.stdout.join("\n");
    for needle in [
        "Exit codes:",
        "4  connection lost",
        "DANGEROUS",
        "--accept-new",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from --help");
    }
}

// --- TLS ---------------------------------------------------------------

/// A fresh temporary directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wssgate-client-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).expect("write test file");
    path.to_str().expect("utf-8 temp path").to_owned()
}

/// A CA (written to `dir/ca.pem`) and a server certificate for 127.0.0.1 and localhost.
fn server_cert(dir: &Path, tag: &str) -> (String, Pem) {
    let ca = Ca::generate(&format!("test CA {tag}"), KeyType::EcdsaP256).expect("CA");
    let ca_path = write(&dir.join(format!("ca-{tag}.pem")), &ca.pem.cert);
    let leaf = ca
        .issue(&Leaf::server(&["127.0.0.1".into(), "localhost".into()]))
        .expect("server certificate");
    (ca_path, leaf)
}

/// A gateway with one `secure` (TLS) listener serving `leaf`.
async fn start_tls(dir: &Path, tag: &str, leaf: &Pem) -> Gateway {
    let cert = write(&dir.join(format!("server-{tag}.pem")), &leaf.cert);
    let key = write(&dir.join(format!("server-{tag}-key.pem")), &leaf.key);
    start_config(&format!(
        "[[listener]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\nmode = \"secure\"\ncert = {cert:?}\nkey = {key:?}\n\n[admin]\nbind = \"127.0.0.1:0\"\n"
    ))
    .await
}

fn wss_url(gw: &Gateway) -> String {
    format!("wss://{}/", gw.ws)
}

/// A harness client over wss through the library, trusting `ca`.
async fn connect_wss(gw: &Gateway, name: &str, ca: &str) -> ClientStream {
    let opts = ConnectOptions {
        url: wss_url(gw),
        name: name.to_owned(),
        tls: ClientTls {
            trust: ServerTrust::Ca(PathBuf::from(ca)),
            identity: None,
        },
        known_hosts: PathBuf::from("unused"),
        token: None,
    };
    let (ws, _) = tokio::time::timeout(WAIT, wssgate_client::connect::connect(&opts))
        .await
        .expect("connect in time")
        .expect("wss connect");
    ws
}

async fn recv_wss(ws: &mut ClientStream) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame ok")
        {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn wss_with_ca_trusts_the_gateway_and_system_roots_do_not() {
    let dir = temp_dir("ca");
    let (ca, leaf) = server_cert(&dir, "a");
    let gw = start_tls(&dir, "a", &leaf).await;
    let url = wss_url(&gw);
    let mut bob = connect_wss(&gw, "bob", &ca).await;

    let done = run(&[
        &url, "--name", "alice", "--ca", &ca, "--send", "over tls", "--to", "bob",
    ])
    .await;
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(
        recv_wss(&mut bob).await,
        r#"{"dst":"bob","msg":"over tls","src":"alice"}"#
    );

    // Without --ca the dev CA is unknown; the message names the flags to use.
    let done = run(&[&url, "--name", "alice", "--send", "x"]).await;
    assert_eq!(done.code, 2, "{done:?}");
    assert!(done.stderr.contains("unknown issuer"), "{}", done.stderr);
    assert!(done.stderr.contains("--ca FILE"), "{}", done.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn accept_all_trusts_on_first_use_and_refuses_a_changed_certificate() {
    let dir = temp_dir("tofu");
    let known_hosts = dir.join("state").join("known_hosts");
    let known = known_hosts.to_str().expect("utf-8 path");
    let (_, leaf_a) = server_cert(&dir, "a");
    let (_, leaf_b) = server_cert(&dir, "b");
    let fp_a = wssgate_pki::fingerprint(&leaf_a.der);
    let fp_b = wssgate_pki::fingerprint(&leaf_b.der);
    let gw_a = start_tls(&dir, "a", &leaf_a).await;
    let gw_b = start_tls(&dir, "b", &leaf_b).await;
    let tofu = |url: &str, extra: &[&str]| {
        let mut args = vec![
            url.to_owned(),
            "--name".into(),
            "t".into(),
            "--accept-all".into(),
            "--known-hosts".into(),
            known.to_owned(),
            "--send".into(),
            "hi".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let run_args = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args).await
    };

    // First use: trusted, stored, said so on stderr.
    let first = run_args(tofu(&wss_url(&gw_a), &[])).await;
    assert_eq!(first.code, 0, "{first:?}");
    let addr_a = gw_a.ws.to_string();
    for needle in ["on first use", addr_a.as_str(), fp_a.as_str(), known] {
        assert!(
            first.stderr.contains(needle),
            "{needle:?} in {}",
            first.stderr
        );
    }
    let stored = std::fs::read_to_string(&known_hosts).expect("known-hosts written");
    assert_eq!(stored, format!("{addr_a} {fp_a}\n"));

    // Second run: the same certificate, nothing new to say.
    let second = run_args(tofu(&wss_url(&gw_a), &[])).await;
    assert_eq!(second.code, 0, "{second:?}");
    assert!(!second.stderr.contains("first use"), "{}", second.stderr);

    // The server at gw_b's address once presented certificate A; now it
    // presents B: refused, and the message says how to accept the change.
    let addr_b = gw_b.ws.to_string();
    std::fs::write(&known_hosts, format!("{stored}{addr_b} {fp_a}\n")).expect("write");
    let changed = run_args(tofu(&wss_url(&gw_b), &[])).await;
    assert_eq!(changed.code, 2, "{changed:?}");
    assert!(
        changed.stderr.contains("--accept-new"),
        "{}",
        changed.stderr
    );
    assert!(changed.stderr.contains(&fp_b), "{}", changed.stderr);

    // --accept-new takes it and replaces only that host's line.
    let accepted = run_args(tofu(&wss_url(&gw_b), &["--accept-new"])).await;
    assert_eq!(accepted.code, 0, "{accepted:?}");
    assert!(accepted.stderr.contains("changed"), "{}", accepted.stderr);
    assert_eq!(
        std::fs::read_to_string(&known_hosts).expect("known-hosts"),
        format!("{addr_a} {fp_a}\n{addr_b} {fp_b}\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn pin_and_verify_none() {
    let dir = temp_dir("pin");
    let (_, leaf) = server_cert(&dir, "a");
    let gw = start_tls(&dir, "a", &leaf).await;
    let url = wss_url(&gw);
    let fp = wssgate_pki::fingerprint(&leaf.der);

    let done = run(&[
        &url,
        "--name",
        "p",
        "--pin",
        &fp.to_uppercase().replace("SHA256", "sha256"),
        "--send",
        "x",
    ])
    .await;
    assert_eq!(done.code, 0, "{done:?}");

    let wrong = format!("sha256:{}", "ab".repeat(32));
    let done = run(&[&url, "--name", "p", "--pin", &wrong, "--send", "x"]).await;
    assert_eq!(done.code, 2, "{done:?}");
    assert!(done.stderr.contains("check --pin"), "{}", done.stderr);

    let done = run(&[&url, "--name", "p", "--verify-none", "--send", "x"]).await;
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stderr.contains("WARNING: --verify-none"),
        "{}",
        done.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The binary over mutual TLS, as `gen-certs` leaves the files: bob waits
/// for one frame (`--json --wait 1`), alice sends it (`--send --to`); each
/// presents its certificate, which is what names it on this listener.
#[tokio::test]
async fn mutual_tls_with_cert_and_key_delivers_a_private_message() {
    let dir = temp_dir("mtls");
    let ca = Ca::generate("test CA mtls", KeyType::EcdsaP256).expect("CA");
    let ca_path = write(&dir.join("ca.pem"), &ca.pem.cert);
    let server = ca
        .issue(&Leaf::server(&["127.0.0.1".into(), "localhost".into()]))
        .expect("server certificate");
    let cert = write(&dir.join("server.pem"), &server.cert);
    let key = write(&dir.join("server-key.pem"), &server.key);
    let client_files = |name: &str| {
        let pem = ca.issue(&Leaf::client(name)).expect("client certificate");
        (
            write(&dir.join(format!("client-{name}.pem")), &pem.cert),
            write(&dir.join(format!("client-{name}-key.pem")), &pem.key),
        )
    };
    let (alice_cert, alice_key) = client_files("alice");
    let (bob_cert, bob_key) = client_files("bob");
    let gw = start_config(&format!(
        "[[listener]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\nmode = \"secure\"\ncert = {cert:?}\nkey = {key:?}\n\
         client_auth = \"required\"\nclient_ca = {ca_path:?}\nidentity = \"certificate\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n"
    ))
    .await;
    let url = wss_url(&gw);

    let mut bob = spawn(
        &[
            &url, "--name", "bob", "--ca", &ca_path, "--cert", &bob_cert, "--key", &bob_key,
            "--json", "--wait", "1",
        ],
        false,
    );
    bob.connected().await;
    let alice = run(&[
        &url,
        "--name",
        "alice",
        "--ca",
        &ca_path,
        "--cert",
        &alice_cert,
        "--key",
        &alice_key,
        "--send",
        "over mutual TLS",
        "--to",
        "bob",
    ])
    .await;
    assert_eq!(alice.code, 0, "{alice:?}");
    let bob = bob.finish().await;
    assert_eq!(bob.code, 0, "{bob:?}");
    let frames: Vec<Value> = bob
        .stdout
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        frames,
        [json!({"dst":"bob","msg":"over mutual TLS","src":"alice"})]
    );
}
