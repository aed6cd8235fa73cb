//! Shared test harness: a real gateway on port 0, real WebSocket clients,
//! raw HTTP for handshake refusals. Every wait awaits a socket event; the
//! timeouts here only turn a hang into a failure.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wssgate::operator::Operator;
use wssgate::{Config, Server};

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Any WebSocket client stream: the harness's [`Ws`], a library
/// `ClientStream`, one over a PROXY-prefixed socket...
pub trait WsStream:
    futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
    + futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
    + Unpin
{
}

impl<T> WsStream for T where
    T: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin
{
}

/// A running gateway.
pub struct Gateway {
    /// The first WebSocket listener.
    pub ws: SocketAddr,
    /// Every WebSocket listener, by name.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The admin API.
    pub admin: SocketAddr,
    /// The routing core, to look inside.
    pub router: wssgate::Roster,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// A gateway with one ws listener and admin on port 0, plus `extra` TOML
/// (e.g. `[routing]` or `[limits]` tables).
pub async fn start(extra: &str) -> Gateway {
    let text = format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n{extra}"
    );
    start_config(&text).await
}

/// A gateway from complete config text (binds should use port 0).
pub async fn start_config(text: &str) -> Gateway {
    let config = Config::parse(text, Path::new("test.toml")).expect("test config is valid");
    let server = Server::bind(config).await.expect("gateway binds");
    let listeners = server.listener_addrs();
    let admin = server.admin_addr().expect("admin enabled");
    let router = server.roster();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(server.run(async move { token.cancelled().await }));
    Gateway {
        ws: listeners[0].1,
        listeners,
        admin,
        router,
        shutdown,
        task: Some(task),
    }
}

impl Gateway {
    /// `ws://` URL of the first listener with `path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.ws)
    }

    /// An operator API client.
    pub fn operator(&self) -> Operator {
        Operator::new(&format!("http://{}", self.admin), None)
    }

    /// An operator API client with a bearer token.
    pub fn operator_with(&self, token: &str) -> Operator {
        Operator::new(&format!("http://{}", self.admin), Some(token.to_owned()))
    }

    /// Starts the graceful shutdown and waits for the server to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("gateway stops in time")
                .expect("gateway task did not panic");
        }
    }

    /// Starts the shutdown without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the server task to return after `begin_shutdown`.
    pub async fn wait_stopped(mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("gateway stops in time")
                .expect("gateway task did not panic");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Connects with raw `Origin` bytes (Latin-1 bytes allowed, as Qt sends them).
pub async fn connect_origin(gw: &Gateway, origin: &[u8]) -> Ws {
    try_connect(&gw.url("/"), Some(origin))
        .await
        .unwrap_or_else(|e| panic!("connect as {:?}: {e}", String::from_utf8_lossy(origin)))
}

/// Connects named `name` through `Origin`.
pub async fn connect(gw: &Gateway, name: &str) -> Ws {
    connect_origin(gw, name.as_bytes()).await
}

/// Connects to `url` with an optional raw `Origin`.
pub async fn try_connect(
    url: &str,
    origin: Option<&[u8]>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    try_connect_within(url, origin, WAIT).await
}

/// [`try_connect`], allowing `within` for the handshake (thousands under
/// way at once take longer than one).
pub async fn try_connect_within(
    url: &str,
    origin: Option<&[u8]>,
    within: Duration,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request()?;
    if let Some(origin) = origin {
        request.headers_mut().insert(
            "Origin",
            HeaderValue::from_bytes(origin).expect("test origin is a valid header value"),
        );
    }
    let (ws, _) = tokio::time::timeout(within, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")?;
    Ok(ws)
}

/// The next text frame (pings and pongs skipped).
pub async fn recv_text<S: WsStream>(ws: &mut S) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame ok");
        match frame {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The next text frame, parsed as JSON.
pub async fn recv_json<S: WsStream>(ws: &mut S) -> Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Sends a text frame.
pub async fn send_text<S: WsStream>(ws: &mut S, text: &str) {
    ws.send(Message::Text(Utf8Bytes::from(text)))
        .await
        .expect("send");
}

/// Sends a JSON value as a text frame.
pub async fn send_json<S: WsStream>(ws: &mut S, value: &Value) {
    send_text(ws, &value.to_string()).await;
}

/// Waits for the gateway's close frame; returns its code and reason.
/// Text frames before it are returned too.
pub async fn recv_close(ws: &mut Ws) -> (u16, String, Vec<String>) {
    let mut texts = Vec::new();
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time");
        match frame {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string(), texts);
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new(), texts),
            Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Close code as a number.
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// A `list` round trip: the names connected now. Because a session handles
/// its frames in order, this also proves every earlier frame was handled.
pub async fn list<S: WsStream>(ws: &mut S) -> Vec<String> {
    send_text(ws, r#"{"type":"list"}"#).await;
    let reply = recv_json(ws).await;
    assert_eq!(reply["type"], "list", "{reply}");
    reply["names"]
        .as_array()
        .expect("names")
        .iter()
        .map(|n| n.as_str().expect("name").to_owned())
        .collect()
}

/// Sends raw bytes as an HTTP request and returns the status and body.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    stream.write_all(request).await.expect("write request");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    parse_response(&response)
}

/// A WebSocket upgrade request with the given path and extra header lines.
pub fn upgrade_request(path: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    .into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------
// Operator events (`GET /events`)
// ---------------------------------------------------------------------------

/// Waits for the `disconnect` event of `name` and returns it.
pub async fn next_disconnect(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    name: &str,
) -> Value {
    await_event(events, |e| e["type"] == "disconnect" && e["name"] == name).await
}

// ---------------------------------------------------------------------------
// Metrics (`GET /metrics`)
// ---------------------------------------------------------------------------

/// The Prometheus text of `/metrics`.
pub async fn metrics(gw: &Gateway) -> String {
    let (status, body) = http_raw(
        gw.admin,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series (`name` or `name{labels}`, exactly as exposed),
/// 0 when the series is absent (a counter never incremented).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == series).then(|| value.parse().expect("metric value is a number"))
        })
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Bystanders
// ---------------------------------------------------------------------------

/// Two clients exchange a private message each way, exactly as sent (with
/// `src` set by the gateway): proof that the gateway still serves them.
pub async fn exchange(a: &mut Ws, a_name: &str, b: &mut Ws, b_name: &str) {
    deliver(a, a_name, b, b_name).await;
    deliver(b, b_name, a, a_name).await;
}

/// `from` sends `to` a private message, which arrives exactly as sent
/// with `src` set by the gateway.
pub async fn deliver(from: &mut Ws, from_name: &str, to: &mut Ws, to_name: &str) {
    let msg = format!("hello {to_name}, from {from_name}");
    send_json(from, &serde_json::json!({"dst": to_name, "msg": msg})).await;
    assert_eq!(
        recv_json(to).await,
        serde_json::json!({"dst": to_name, "msg": msg, "src": from_name}),
        "{from_name} -> {to_name}"
    );
}

// ---------------------------------------------------------------------------
// Raw WebSocket clients: a real handshake on a TcpStream, then bytes
// written and read by hand (to misbehave in ways a library will not).
// ---------------------------------------------------------------------------

/// Opcodes of RFC 6455 frames (the load generator's, which has them too).
/// Each test crate uses some of them, as with the rest of this module.
#[allow(unused_imports)]
pub use wssgate_wire::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// A WebSocket client on a raw TCP stream, after a completed handshake.
pub struct RawClient {
    pub stream: TcpStream,
    /// Bytes read but not yet consumed as frames.
    buf: Vec<u8>,
}

/// Connects and completes the handshake as `name` (through `Origin`).
pub async fn raw_connect(gw: &Gateway, name: &str) -> RawClient {
    let stream = TcpStream::connect(gw.ws).await.expect("tcp connect");
    raw_handshake(stream, name).await
}

/// Completes the handshake on `stream` as `name` and checks the `101`.
pub async fn raw_handshake(mut stream: TcpStream, name: &str) -> RawClient {
    stream
        .write_all(&upgrade_request("/", &[("Origin", name.as_bytes())]))
        .await
        .expect("write upgrade request");
    let mut buf = Vec::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(WAIT, stream.read_buf(&mut buf))
            .await
            .expect("upgrade response in time")
            .expect("read upgrade response");
        assert!(n > 0, "EOF during the upgrade response: {buf:?}");
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "not upgraded: {head}");
    buf.drain(..end);
    RawClient { stream, buf }
}

/// A masked client frame (mask key fixed: masking is about framing, not secrecy).
pub fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    out
}

impl RawClient {
    /// Writes raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    /// The next (unmasked, server) frame as opcode and payload; `None` at
    /// EOF or when the gateway reset the connection.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, len, header)) = parse_header(&self.buf)
                && self.buf.len() >= header + len
            {
                let payload = self.buf[header..header + len].to_vec();
                self.buf.drain(..header + len);
                return Some((opcode, payload));
            }
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("a frame or EOF in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads frames until the close frame; returns its code and reason and
    /// the opcodes of the frames before it. Panics at EOF before a close.
    pub async fn read_close(&mut self) -> (u16, String, Vec<u8>) {
        let mut before = Vec::new();
        loop {
            match self.read_frame().await {
                Some((OP_CLOSE, payload)) => {
                    assert!(payload.len() >= 2, "close frame without a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let reason = String::from_utf8(payload[2..].to_vec()).expect("UTF-8 reason");
                    return (code, reason, before);
                }
                Some((opcode, _)) => before.push(opcode),
                None => panic!("EOF before a close frame (after opcodes {before:?})"),
            }
        }
    }

    /// Reads (and discards) until EOF; panics if it does not come in time.
    pub async fn expect_eof(&mut self) {
        while self.read_frame().await.is_some() {}
    }
}

/// Opcode, payload length and header length of the frame at the start of `buf`.
fn parse_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    let (len, header) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    Some((b0 & 0x0f, len, header))
}

/// The client's own address, as the gateway sees it as `remote`.
pub fn local_addr(ws: &Ws) -> SocketAddr {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().expect("local address"),
        _ => panic!("test clients are plain TCP"),
    }
}

/// `http://` base URL of the admin API.
pub fn admin_url(gw: &Gateway) -> String {
    format!("http://{}", gw.admin)
}

/// Follows `/events` through `operator`; returns a receiver of event JSON
/// lines once the `subscribed` event proved the subscription is live.
pub async fn subscribe_events(operator: Operator) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _ = operator
            .events(|line| {
                let event = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("event is not JSON ({e}): {line}"));
                let _ = tx.send(event);
            })
            .await;
    });
    let first = await_event(&mut rx, |_| true).await;
    assert_eq!(first, serde_json::json!({"type": "subscribed"}));
    rx
}

/// The next event that satisfies `pred` (others are skipped).
pub async fn await_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("event in time")
            .expect("event stream open");
        if pred(&event) {
            return event;
        }
    }
}

/// Reads frames until the stream ends (which also flushes tungstenite's
/// reply to a close frame); returns the texts seen.
pub async fn drain(ws: &mut Ws) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("stream ends in time")
        {
            Some(Ok(Message::Text(t))) => texts.push(t.to_string()),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return texts,
        }
    }
}

// ---------------------------------------------------------------------------
// Case tables: run every case, then fail once with every failing case listed.
// ---------------------------------------------------------------------------

/// The failures of a table of cases. A check that does not hold is recorded
/// (with its case) instead of panicking, so every case runs; `assert_none`
/// then fails once, listing every failure. Dropping it with failures not
/// yet asserted panics, so none is lost.
#[derive(Default)]
pub struct Failures {
    /// Every case name checked so far, in order, once each.
    cases: Vec<String>,
    /// (case, what went wrong), in order.
    failed: Vec<(String, String)>,
    asserted: bool,
}

impl Failures {
    pub fn new() -> Failures {
        Failures::default()
    }

    fn seen(&mut self, case: String) -> String {
        if !self.cases.contains(&case) {
            self.cases.push(case.clone());
        }
        case
    }

    /// Records `msg` as a failure of `case` unless `cond` holds; returns `cond`.
    pub fn check(
        &mut self,
        case: impl std::fmt::Display,
        cond: bool,
        msg: impl std::fmt::Display,
    ) -> bool {
        let case = self.seen(case.to_string());
        if !cond {
            self.failed.push((case, msg.to_string()));
        }
        cond
    }

    /// `check` that `got == expected` (`what` names the value; may be empty).
    pub fn check_eq<G, E>(
        &mut self,
        case: impl std::fmt::Display,
        got: G,
        expected: E,
        what: impl std::fmt::Display,
    ) -> bool
    where
        G: PartialEq<E> + std::fmt::Debug,
        E: std::fmt::Debug,
    {
        let what = what.to_string();
        let what = if what.is_empty() {
            what
        } else {
            format!("{what}: ")
        };
        let holds = got == expected;
        self.check(
            case,
            holds,
            format_args!("{what}expected {expected:?}, got {got:?}"),
        )
    }

    /// Records `msg` as a failure of `case`.
    pub fn fail(&mut self, case: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.check(case, false, msg);
    }

    /// Runs `step` of `case` (a setup, or a helper that panics on a timeout
    /// or a bad frame); a panic in it is recorded as a failure of `case`
    /// and gives `None`, so the table goes on with its next case.
    pub async fn catch<T>(
        &mut self,
        case: impl std::fmt::Display,
        step: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        use futures_util::FutureExt;
        match std::panic::AssertUnwindSafe(step).catch_unwind().await {
            Ok(value) => Some(value),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                self.fail(case, format_args!("panicked: {text}"));
                None
            }
        }
    }

    /// Fails once if any check failed, listing every failure with its case.
    pub fn assert_none(mut self) {
        self.asserted = true;
        if self.failed.is_empty() {
            return;
        }
        let mut failing: Vec<&str> = Vec::new();
        for (case, _) in &self.failed {
            if !failing.contains(&case.as_str()) {
                failing.push(case);
            }
        }
        let list: Vec<String> = self
            .failed
            .iter()
            .map(|(case, msg)| format!("  - {case}: {msg}"))
            .collect();
        panic!(
            "{} of {} cases failed:\n{}",
            failing.len(),
            self.cases.len(),
            list.join("\n")
        );
    }
}

impl Drop for Failures {
    fn drop(&mut self) {
        if !self.asserted && !self.failed.is_empty() && !std::thread::panicking() {
            panic!(
                "{} case failure(s) recorded but never asserted (call assert_none)",
                self.failed.len()
            );
        }
    }
}
