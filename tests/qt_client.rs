//! The gateway with a real Qt client: tests/qt/main.cpp, built like the
//! QWebSocket chat client of the article the gateway grew from (the client's
//! name is its `origin()`, private messages are `{"src","dst","msg"}` compact
//! JSON). docs/PROTOCOL.md section 2.3 says such a client works unchanged, including
//! the names Qt mangles in the `Origin` header (`C1我是客户端` goes out as
//! `C1?????`); here that is shown with Qt's own bytes on the wire.
//!
//! The client is built with qmake and make into the cargo target dir. Without
//! qmake the tests skip with a message, except under CI (`CI=true`), where a
//! missing Qt is a failure: CI must install it
//! (`apt-get install -y qtbase5-dev libqt5websockets5-dev`).
//!
//! Every wait awaits a line the client prints or an operator event; the
//! timeouts only turn a hang into a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

/// The client's project file.
const PRO_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qt/qt_client.pro");

// ---------------------------------------------------------------------------
// Building the client

/// The built client, or `None` when qmake is missing outside CI.
fn qt_client() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT.get_or_init(build).as_deref()
}

fn build() -> Option<PathBuf> {
    let qmake = std::env::var("QMAKE").unwrap_or_else(|_| "qmake".to_owned());
    let probe = std::process::Command::new(&qmake)
        .args(["-query", "QT_VERSION"])
        .output();
    let version = match probe {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        other => {
            let why = match other {
                Ok(out) => format!(
                    "`{qmake} -query QT_VERSION` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => format!("cannot run `{qmake}`: {e}"),
            };
            let msg = format!(
                "{why}. The Qt client tests need Qt 5 WebSockets: \
                 apt-get install -y qtbase5-dev libqt5websockets5-dev"
            );
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg} (CI=true: not skipping)");
            }
            println!("skipping the Qt client tests: {msg}");
            return None;
        }
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qt_client");
    std::fs::create_dir_all(&dir).expect("create the Qt build directory");
    run(&dir, std::process::Command::new(&qmake).arg(PRO_FILE));
    run(&dir, std::process::Command::new("make").arg("-j2"));
    let bin = dir.join("qt_client");
    assert!(bin.is_file(), "make did not produce {}", bin.display());
    println!("built {} with Qt {version}", bin.display());
    Some(bin)
}

fn run(dir: &Path, command: &mut std::process::Command) {
    let out = command
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Running the client

/// One running Qt client: its stdout lines, its stdin (each line one more
/// click on the article's send button), its stderr kept for failures.
struct QtClient {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
}

/// What the client is asked to do on the command line.
#[derive(Clone, Copy, Default)]
struct Args<'a> {
    /// Sent once connected: (DST, MSG); DST empty means to the server.
    send: Option<(&'a str, &'a str)>,
    /// `--expect N`: close after N messages.
    expect: Option<usize>,
}

impl QtClient {
    /// Starts `qt_client URL NAME [DST MSG] [--expect N]` and waits for its
    /// "connected" line. The gateway admits a session before it answers the
    /// upgrade, so from then on the gateway knows the client.
    async fn connect(bin: &Path, url: &str, name: &str, args: Args<'_>) -> QtClient {
        let mut command = Command::new(bin);
        command.arg(url).arg(name);
        if let Some((dst, msg)) = args.send {
            command.arg(dst).arg(msg);
        }
        if let Some(n) = args.expect {
            command.arg("--expect").arg(n.to_string());
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdout = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut stderr = child.stderr.take().expect("stderr piped");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let mut client = QtClient {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr: Some(stderr),
        };
        let first = client.line().await;
        assert!(
            first.starts_with("connected "),
            "{name}: expected the connected line, got {first:?}"
        );
        client
    }

    /// The next line the client prints (one per received message).
    async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => self.fail("exited instead of printing a line").await,
            Ok(Err(e)) => self.fail(&format!("stdout unreadable: {e}")).await,
            Err(_) => self.fail("printed nothing in time").await,
        }
    }

    /// Types one more message into the client: to `dst` privately, or to the
    /// server when `dst` is empty.
    async fn send(&mut self, dst: &str, msg: &str) {
        let line = if dst.is_empty() {
            format!("{msg}\n")
        } else {
            format!("{dst}\t{msg}\n")
        };
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(line.as_bytes()).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }

    /// Closes stdin: a client without `--expect` then disconnects.
    fn hang_up(&mut self) {
        self.stdin = None;
    }

    /// Waits for the client to exit; returns its status and the lines it
    /// printed that were not read yet.
    async fn exit(mut self) -> (ExitStatus, Vec<String>) {
        let status = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait for the client"),
            Err(_) => self.fail("did not exit in time").await,
        };
        let mut rest = Vec::new();
        while let Some(line) = self.stdout.next_line().await.expect("read stdout") {
            rest.push(line);
        }
        (status, rest)
    }

    /// Waits for a clean exit (status 0) with nothing more printed.
    async fn exits_cleanly(self) {
        let name = self.name.clone();
        let (status, rest) = self.exit().await;
        assert!(status.success(), "{name} exited with {status}");
        assert!(
            rest.is_empty(),
            "{name} printed more than expected: {rest:?}"
        );
    }

    /// Panics with what the client wrote on stderr.
    async fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.start_kill();
        let stderr = match self.stderr.take() {
            Some(task) => tokio::time::timeout(WAIT, task)
                .await
                .map(|r| r.unwrap_or_default())
                .unwrap_or_default(),
            None => String::new(),
        };
        panic!("Qt client {}: {what}; its stderr:\n{stderr}", self.name);
    }
}

// ---------------------------------------------------------------------------
// Operator events (helpers in tests/common)

/// The next connect event; returns the name the gateway gave the session.
async fn connected_as(events: &mut UnboundedReceiver<Value>) -> String {
    let event = await_event(events, |e| e["type"] == "connect").await;
    event["name"].as_str().expect("name").to_owned()
}

// ---------------------------------------------------------------------------
// The tests

/// The article's own example: `new QWebSocket("C1我是客户端", ...)`. Qt sends
/// the names as `C1?????` and `C2?????`; the full names in `src` make the
/// conversation work both ways, and each receiver sees the full sender name.
#[tokio::test]
async fn chinese_names_talk_privately_both_ways() {
    let Some(bin) = qt_client() else { return };
    let gw = start("").await;
    let url = gw.url("/");
    let mut events = subscribe_events(gw.operator()).await;

    let mut c2 = QtClient::connect(bin, &url, "C2我是客户端", Args::default()).await;
    assert_eq!(connected_as(&mut events).await, "C2?????");

    let hello = Args {
        send: Some(("C2我是客户端", "你好, C2")),
        expect: None,
    };
    let mut c1 = QtClient::connect(bin, &url, "C1我是客户端", hello).await;
    assert_eq!(connected_as(&mut events).await, "C1?????");

    // C2 is still provisional: the message reaches it through Qt's
    // substitution of its name, and shows C1's full name.
    assert_eq!(c2.line().await, "from C1我是客户端: 你好, C2");
    let rename = await_event(&mut events, |e| e["type"] == "rename").await;
    assert_eq!(rename["from"], "C1?????");
    assert_eq!(rename["to"], "C1我是客户端");

    // C2 replies (as if typed into the article's widgets).
    c2.send("C1我是客户端", "你好, C1").await;
    assert_eq!(c1.line().await, "from C2我是客户端: 你好, C1");

    // Both sessions now carry their full names.
    let clients = gw.operator().clients().await.expect("GET /clients");
    let mut names: Vec<(String, bool)> = clients
        .iter()
        .map(|c| (c.name.clone(), c.provisional))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("C1我是客户端".to_owned(), false),
            ("C2我是客户端".to_owned(), false)
        ]
    );

    c1.hang_up();
    c1.exits_cleanly().await;
    c2.hang_up();
    c2.exits_cleanly().await;
}

/// A Latin-1 name (one byte 0xE9 in `Origin`) and an ASCII name.
#[tokio::test]
async fn latin1_name_talks_to_an_ascii_name() {
    let Some(bin) = qt_client() else { return };
    let gw = start("").await;
    let url = gw.url("/");
    let mut events = subscribe_events(gw.operator()).await;

    let mut bob = QtClient::connect(bin, &url, "bob", Args::default()).await;
    assert_eq!(connected_as(&mut events).await, "bob");
    let hello = Args {
        send: Some(("bob", "olá, bob")),
        expect: Some(1),
    };
    let mut jose = QtClient::connect(bin, &url, "José", hello).await;
    // Decoded from Latin-1: the full name from the start, not provisional.
    assert_eq!(connected_as(&mut events).await, "José");

    assert_eq!(bob.line().await, "from José: olá, bob");
    bob.send("José", "oi, José").await;
    assert_eq!(jose.line().await, "from bob: oi, José");

    jose.exits_cleanly().await;
    bob.hang_up();
    bob.exits_cleanly().await;
}

/// The operator's messages arrive as plain text, shown as they are; the
/// client's plain text reaches the operator. A Qt name never yet completed
/// by a JSON `src` is still reachable under its full name.
#[tokio::test]
async fn operator_messages_arrive_as_plain_text() {
    let Some(bin) = qt_client() else { return };
    let gw = start("").await;
    let url = gw.url("/");
    let operator = gw.operator();
    let mut events = subscribe_events(gw.operator()).await;

    // Both say something to the server first: no dst, plain text.
    let c1_args = Args {
        send: Some(("", "我在这里")),
        expect: Some(2),
    };
    let mut c1 = QtClient::connect(bin, &url, "C1我是客户端", c1_args).await;
    let said = await_event(&mut events, |e| e["type"] == "message").await;
    // Plain text carries no full name: the operator sees Qt's `Origin`.
    assert_eq!(said["name"], "C1?????");
    assert_eq!(said["text"], "我在这里");

    let jose_args = Args {
        send: Some(("", "bom dia")),
        expect: Some(2),
    };
    let mut jose = QtClient::connect(bin, &url, "José", jose_args).await;
    let said = await_event(&mut events, |e| e["type"] == "message").await;
    assert_eq!(said["name"], "José");
    assert_eq!(said["text"], "bom dia");

    // To one name: C1 has only ever been `C1?????` to the gateway.
    let delivered = operator
        .send("C1我是客户端", "hello C1, this is the operator")
        .await
        .expect("send to C1");
    assert_eq!(delivered, 1);
    assert_eq!(c1.line().await, "hello C1, this is the operator");
    let delivered = operator
        .send("José", "olá José")
        .await
        .expect("send to José");
    assert_eq!(delivered, 1);
    assert_eq!(jose.line().await, "olá José");

    // To everyone.
    let delivered = operator
        .broadcast("大家好, everyone")
        .await
        .expect("broadcast");
    assert_eq!(delivered, 2);
    assert_eq!(c1.line().await, "大家好, everyone");
    assert_eq!(jose.line().await, "大家好, everyone");

    c1.exits_cleanly().await;
    jose.exits_cleanly().await;
}

/// Two Qt names with the same Latin-1 form (`C1?????`) may connect side by
/// side; a message to either full name is ambiguous until its owner has
/// sent JSON with its full `src`.
#[tokio::test]
async fn two_qt_names_with_the_same_latin1_form() {
    let Some(bin) = qt_client() else { return };
    let gw = start("").await;
    let url = gw.url("/");
    let mut events = subscribe_events(gw.operator()).await;

    let mut me = QtClient::connect(bin, &url, "C1我是客户端", Args::default()).await;
    assert_eq!(connected_as(&mut events).await, "C1?????");
    // Not refused as a duplicate: provisional names are exempt.
    let mut you = QtClient::connect(bin, &url, "C1你是客户端", Args::default()).await;
    assert_eq!(connected_as(&mut events).await, "C1?????");

    let ask = Args {
        send: Some(("C1我是客户端", "who is there?")),
        expect: None,
    };
    let mut bob = QtClient::connect(bin, &url, "bob", ask).await;
    // The article's client shows the gateway's notice by its src and msg.
    assert_eq!(
        bob.line().await,
        "from @gateway: recipient not connected: C1我是客户端"
    );

    // Once C1我是客户端 has sent JSON, it has its full name and is reachable.
    me.send("bob", "it is me").await;
    assert_eq!(bob.line().await, "from C1我是客户端: it is me");
    bob.send("C1我是客户端", "hello again").await;
    assert_eq!(me.line().await, "from bob: hello again");
    // The other one is still provisional, and reachable the same way.
    you.send("bob", "and me").await;
    assert_eq!(bob.line().await, "from C1你是客户端: and me");

    for client in [me, you, bob] {
        let mut client = client;
        client.hang_up();
        // Nothing else arrived anywhere (in particular not "hello again" at
        // C1你是客户端).
        client.exits_cleanly().await;
    }
}

/// What Qt really writes in the handshake for these names: its request
/// built with `toLatin1()`. The gateway decodes exactly those bytes into the
/// names the tests above see.
#[tokio::test]
async fn qt_writes_the_origin_with_to_latin1() {
    let Some(bin) = qt_client() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let cases: [(&str, &[u8], &str, bool); 4] = [
        ("C1我是客户端", b"C1?????", "C1?????", true),
        ("José", b"Jos\xe9", "José", false),
        ("a😀b", b"a??b", "a??b", true),
        ("bob", b"bob", "bob", false),
    ];
    for (name, wire, decoded, provisional) in cases {
        let mut child = Command::new(bin)
            .args([url.as_str(), name, "--expect", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Qt client");
        let (mut stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("Qt connects in time")
            .expect("accept");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
                .await
                .expect("request in time")
                .expect("read request");
            assert_eq!(n, 1, "Qt closed before its request was complete");
            head.push(byte[0]);
        }
        let origin = head
            .split(|&b| b == b'\n')
            .filter_map(|line| line.strip_suffix(b"\r"))
            .find_map(|line| line.strip_prefix(b"Origin: "))
            .unwrap_or_else(|| panic!("no Origin in {:?}", String::from_utf8_lossy(&head)));
        assert_eq!(
            origin,
            wire,
            "{name}: Origin is {:?}",
            String::from_utf8_lossy(origin)
        );
        let claim = wssgate::claim(None, Some(origin)).expect("a valid name");
        assert_eq!(claim.name.as_str(), decoded);
        assert_eq!(claim.provisional, provisional, "{name}");
        assert_eq!(wssgate_wire::name::qt_latin1(name), decoded);
        // Refuse the upgrade by hanging up; the client gives up.
        drop(stream);
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("the client exits in time")
            .expect("wait");
        assert!(!status.success(), "{name}: a refused client must fail");
    }
}
