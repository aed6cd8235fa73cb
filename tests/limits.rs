//! Limits and abuse through real sockets: oversized and invalid frames,
//! peers that vanish, stall or never read, handshake floods and garbage.
//! Every test checks the exact outcome for the offender and that the other
//! clients were unaffected (bystanders still exchange private messages).
//! Nothing sleeps: each wait is for a frame, a close, EOF or an operator
//! event, bounded by a timeout only to turn a hang into a failure.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// A private message to `dst` whose JSON text is exactly `size` bytes.
fn private_of_size(dst: &str, size: usize) -> String {
    let empty = json!({"dst": dst, "msg": ""}).to_string();
    let text = json!({"dst": dst, "msg": "x".repeat(size - empty.len())}).to_string();
    assert_eq!(text.len(), size);
    text
}

/// An `error` notice exactly as the gateway sends it to `dst`.
fn error_notice(dst: &str, msg: &str) -> Value {
    json!({"src": "@gateway", "dst": dst, "type": "error", "msg": msg})
}

async fn client_names(gw: &Gateway) -> Vec<String> {
    let mut names: Vec<String> = gw
        .operator()
        .clients()
        .await
        .expect("GET /clients")
        .into_iter()
        .map(|c| c.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn abuse_one_mib_text_frame_gets_a_notice_then_1009() {
    assert_eq!(wssgate::config::DEFAULT_MAX_MESSAGE_SIZE, 64 * 1024);
    let gw = start("").await; // default limits
    let mut events = subscribe_events(gw.operator()).await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    // A message of exactly 64 KiB is within the limit and delivered whole.
    let at_limit = private_of_size("bob", 65536);
    send_text(&mut alice, &at_limit).await;
    let mut expected: Value = serde_json::from_str(&at_limit).unwrap();
    expected["src"] = json!("alice");
    assert_eq!(recv_json(&mut bob).await, expected);

    // 1 MiB in one text frame. `feed` queues it without waiting for the
    // write to finish: the gateway stops reading after the frame header.
    let mut big = connect(&gw, "big").await;
    big.feed(Message::text(private_of_size("bob", 1 << 20)))
        .await
        .expect("frame queued");
    let (code, reason, texts) = recv_close(&mut big).await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    let texts: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
    assert_eq!(texts, [error_notice("big", "message too large")]);
    let event = await_event(&mut events, |e| e["type"] == "error").await;
    assert_eq!(
        (&event["name"], &event["msg"]),
        (&json!("big"), &json!("message too large"))
    );
    next_disconnect(&mut events, "big").await;

    // One byte over the limit is refused the same way.
    let mut over = connect(&gw, "over").await;
    send_text(&mut over, &private_of_size("bob", 65537)).await;
    let (code, _, texts) = recv_close(&mut over).await;
    assert_eq!(code, 1009);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&texts[0]).unwrap(),
        error_notice("over", "message too large")
    );
    next_disconnect(&mut events, "over").await;

    // Neither oversized message reached bob; his next frame is from alice.
    exchange(&mut alice, "alice", &mut bob, "bob").await;
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, r#"wssgate_errors_total{kind="too_large"}"#), 2.0);
    assert_eq!(client_names(&gw).await, ["alice", "bob"]);
}

#[tokio::test]
async fn abuse_invalid_utf8_in_text_frames_closes_with_1007() {
    let gw = start("").await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    // A raw text frame through tungstenite, which does not check what it sends.
    let mut bad = connect(&gw, "bad").await;
    let frame = Frame::message(
        Bytes::from_static(b"{\"dst\":\"bob\",\"msg\":\"caf\xc3(\"}"),
        OpCode::Data(Data::Text),
        true,
    );
    bad.send(Message::Frame(frame)).await.expect("send");
    let (code, reason, texts) = recv_close(&mut bad).await;
    assert_eq!(
        (code, reason.as_str()),
        (1007, "invalid UTF-8 in a text frame or close reason")
    );
    assert!(texts.is_empty(), "{texts:?}");
    next_disconnect(&mut events, "bad").await;

    // Raw bytes: a fragmented text message, valid first fragment, then a
    // continuation holding a UTF-16 surrogate (never valid in UTF-8).
    let mut raw = raw_connect(&gw, "raw").await;
    raw.write(&masked_frame(
        OP_TEXT,
        false,
        b"{\"dst\":\"bob\",\"msg\":\"",
    ))
    .await;
    raw.write(&masked_frame(OP_CONTINUATION, true, b"\xed\xa0\x80\"}"))
        .await;
    let (code, reason, before) = raw.read_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1007, "invalid UTF-8 in a text frame or close reason")
    );
    assert!(before.is_empty(), "frames before the close: {before:?}");
    next_disconnect(&mut events, "raw").await;

    // A close frame whose reason is not UTF-8: 1007 too, and the reason
    // no longer blames a text frame that was never sent.
    let mut closer = raw_connect(&gw, "closer").await;
    closer
        .write(&masked_frame(OP_CLOSE, true, b"\x03\xe8bye \xff\xfe"))
        .await;
    let (code, reason, before) = closer.read_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1007, "invalid UTF-8 in a text frame or close reason")
    );
    assert!(before.is_empty(), "frames before the close: {before:?}");
    next_disconnect(&mut events, "closer").await;

    // Nothing reached bob but what alice sends now.
    exchange(&mut alice, "alice", &mut bob, "bob").await;
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, r#"wssgate_errors_total{kind="protocol"}"#), 3.0);
}

#[tokio::test]
async fn abuse_client_vanishing_mid_message_is_removed() {
    let gw = start("").await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    let mut ghost = raw_connect(&gw, "ghost").await;
    let frame = masked_frame(OP_TEXT, true, private_of_size("bob", 1000).as_bytes());
    ghost.write(&frame[..frame.len() / 2]).await;
    drop(ghost);

    let event = next_disconnect(&mut events, "ghost").await;
    assert_eq!(event["reason"], "connection closed without a close frame");
    assert_eq!(client_names(&gw).await, ["alice", "bob"]);
    // Vanishing is not a protocol error, and the half message went nowhere.
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, r#"wssgate_errors_total{kind="protocol"}"#), 0.0);
    exchange(&mut alice, "alice", &mut bob, "bob").await;
}

/// Private messages of this size are blasted at the slow consumer...
const BLAST_PAYLOAD: usize = 32 * 1024;
/// ...this many times: 64 MiB, far beyond any socket buffer on the way.
const BLAST_COUNT: usize = 2000;

#[tokio::test]
async fn abuse_reader_that_never_reads_is_closed_and_the_sender_is_not_blocked() {
    // The close frame of a slow consumer is given the shutdown grace to get
    // through; this one never reads, so the grace is kept short.
    // (No rate limit: the sender's blast is the point.)
    let gw =
        start("[limits]\noutbound_queue = 8\nshutdown_grace = \"1s\"\nmessages_per_second = 0\n")
            .await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    // The slow consumer: a handshake, then never a read. A small receive
    // buffer keeps its side of the bytes in flight small (the gateway's
    // send buffer still takes a few MiB before the queue starts to fill).
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.ws).await.expect("tcp connect");
    let mut slow = raw_handshake(stream, "slow").await;

    // The sender reads everything it is sent in a task of its own, so that
    // only the gateway could block it.
    let (mut sender, mut from_gateway) = connect(&gw, "sender").await.split();
    let (tx, mut replies) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = from_gateway.next().await {
            if let Message::Text(text) = frame {
                let _ = tx.send(serde_json::from_str::<Value>(&text).expect("JSON"));
            }
        }
    });

    let blast = Message::text(private_of_size("slow", BLAST_PAYLOAD));
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..BLAST_COUNT {
            sender.feed(blast.clone()).await.expect("send");
        }
        sender.flush().await.expect("flush");
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "sender blocked: blast not sent after {:?}",
            started.elapsed()
        )
    });

    let error = await_event(&mut events, |e| e["type"] == "error" && e["name"] == "slow").await;
    assert_eq!(error["msg"], "slow consumer: outbound queue full");
    let gone = next_disconnect(&mut events, "slow").await;
    assert_eq!(gone["reason"], "closed by gateway: 1013 slow consumer");
    // The gateway gave up on the slow socket after the shutdown grace: it
    // reads what was in flight, then EOF.
    slow.expect_eof().await;

    // The sender still gets answers; before the list reply come exactly
    // the refusals of what the slow consumer's queue could not take.
    sender
        .send(Message::text(r#"{"type":"list"}"#))
        .await
        .expect("send list");
    // Messages the full queue refused are answered "too slow" until the
    // gateway has removed the slow session, then "not connected".
    let mut refused = 0;
    let mut too_slow = 0;
    let names = loop {
        let reply = tokio::time::timeout(WAIT, replies.recv())
            .await
            .expect("a reply in time")
            .expect("sender still connected");
        match reply["type"].as_str() {
            Some("list") => break reply["names"].clone(),
            _ => {
                if reply == error_notice("sender", "recipient too slow, message dropped: slow") {
                    assert_eq!(refused, too_slow, "\"too slow\" answers come first");
                    too_slow += 1;
                } else {
                    assert_eq!(
                        reply,
                        error_notice("sender", "recipient not connected: slow")
                    );
                }
                refused += 1;
            }
        }
    };
    assert!(
        too_slow >= 1,
        "the message that found the queue full is answered"
    );
    assert_eq!(names, json!(["alice", "bob", "sender"]));

    let m = metrics(&gw).await;
    let queued = metric(&m, r#"wssgate_messages_routed_total{kind="private"}"#);
    assert!(queued >= 8.0, "the queue was filled first: {queued}");
    assert_eq!(
        queued as usize + refused,
        BLAST_COUNT,
        "no message lost unanswered"
    );
    assert!(metric(&m, "wssgate_queue_drops_total") > 0.0, "{m}");
    assert_eq!(
        metric(&m, r#"wssgate_errors_total{kind="slow_consumer"}"#),
        1.0
    );

    // The sender can still reach a bystander, and the bystanders each other.
    sender
        .send(Message::text(r#"{"dst":"alice","msg":"after the flood"}"#))
        .await
        .expect("send");
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"dst":"alice","msg":"after the flood","src":"sender"})
    );
    exchange(&mut alice, "alice", &mut bob, "bob").await;
}

/// Abuse: a reader that does read, but only once it has fallen far behind,
/// is cut off as a slow consumer; what it then reads is whole frames and
/// its 1013 close frame, not a stream that stops in the middle of a frame.
#[tokio::test]
async fn abuse_slow_reader_that_is_cut_off_gets_whole_frames_then_1013() {
    let gw = start("[limits]\noutbound_queue = 8\n").await;
    let mut events = subscribe_events(gw.operator()).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.ws).await.expect("tcp connect");
    let mut slow = raw_handshake(stream, "slow").await;

    let (mut sender, mut from_gateway) = connect(&gw, "sender").await.split();
    tokio::spawn(async move { while let Some(Ok(_)) = from_gateway.next().await {} });
    let blast = Message::text(private_of_size("slow", BLAST_PAYLOAD));
    let blasting = tokio::spawn(async move {
        for _ in 0..BLAST_COUNT {
            if sender.feed(blast.clone()).await.is_err() {
                break;
            }
        }
        let _ = sender.flush().await;
        sender
    });

    // Cut off while a frame is being written; only now does it read.
    let error = await_event(&mut events, |e| e["type"] == "error" && e["name"] == "slow").await;
    assert_eq!(error["msg"], "slow consumer: outbound queue full");
    let (code, reason, before) = slow.read_close().await;
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
    assert!(
        before.iter().all(|&op| op == OP_TEXT),
        "whole text frames before the close: {before:?}"
    );
    let gone = next_disconnect(&mut events, "slow").await;
    assert_eq!(gone["reason"], "closed by gateway: 1013 slow consumer");
    let sender = tokio::time::timeout(Duration::from_secs(60), blasting)
        .await
        .expect("the sender was not blocked")
        .expect("sender task");
    drop(sender);
}

/// A TCP connection from `source`, nothing sent on it yet.
async fn tcp_from(gw: &Gateway, source: [u8; 4]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(source), 0).into())
        .expect("bind a loopback source address");
    socket.connect(gw.ws).await.expect("tcp connect")
}

#[tokio::test]
async fn abuse_one_address_with_silent_sockets_cannot_fill_the_cap() {
    // Before: every socket took a place under the cap at accept, and the
    // address was counted only after a request head that never came.
    let gw = start(
        "[limits]\nmax_connections = 20\nmax_connections_per_address = 5\nhandshake_timeout = \"60s\"\n",
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tcp_from(&gw, [127, 0, 0, 2]).await);
    }
    // Accepted in order, after all twenty: admitted.
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;
    exchange(&mut alice, "alice", &mut bob, "bob").await;
    // A sixth socket of that address is told why when it does speak.
    let mut extra = silent.pop().expect("twenty sockets");
    extra
        .write_all(&upgrade_request("/", &[("Origin", b"mallory")]))
        .await
        .expect("write the upgrade");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, extra.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.ends_with("too many connections from this address: try again later\n"),
        "{text}"
    );
}

#[tokio::test]
async fn abuse_slow_handshakes_over_the_pending_budget_evict_the_oldest() {
    // Before: ten silent sockets held the ten places until handshake_timeout.
    let gw = start(
        "[limits]\nmax_connections = 10\nmax_pending_handshakes = 4\nhandshake_timeout = \"60s\"\n",
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(tcp_from(&gw, [127, 0, 0, 3]).await);
    }
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;
    exchange(&mut alice, "alice", &mut bob, "bob").await;
    // The oldest silent socket was dropped without an answer.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, silent[0].read_to_end(&mut rest))
        .await
        .expect("EOF in time")
        .expect("clean EOF");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // Ten silent, budget four: six evicted by the silent, one by alice;
    // bob found the place alice's finished handshake gave back.
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "wssgate_handshake_evictions_total"), 7.0);
}

#[tokio::test]
async fn abuse_message_flood_is_refused_then_closed_and_bystanders_are_untouched() {
    // One frame a second, five at once; three refusals per 10 s allowed.
    let gw = start("[limits]\nmessages_per_second = 1\nmessage_burst = 5\nmax_rate_refusals = 3\n")
        .await;
    let mut carol = connect(&gw, "carol").await;
    let mut dave = connect(&gw, "dave").await;
    let mut bob = connect(&gw, "bob").await;
    let mut flood = connect(&gw, "flood").await;
    for id in 1..=8 {
        send_json(
            &mut flood,
            &json!({"dst": "bob", "msg": format!("m{id}"), "id": id}),
        )
        .await;
    }
    // The burst went through; the rest was refused, each with its id.
    for id in 1..=5 {
        assert_eq!(recv_json(&mut bob).await["msg"], format!("m{id}"));
    }
    for id in 6..=8 {
        let notice = recv_json(&mut flood).await;
        assert_eq!(
            notice,
            json!({"src": "@gateway", "dst": "flood", "type": "error", "msg": "rate limit exceeded", "ref": id})
        );
    }
    // The bystanders carry on while the flood is held back.
    exchange(&mut carol, "carol", &mut dave, "dave").await;
    // A fourth refusal within 10 s: closed with 1008.
    send_json(&mut flood, &json!({"dst": "bob", "msg": "m9", "id": 9})).await;
    let (code, reason, texts) = recv_close(&mut flood).await;
    assert_eq!((code, reason.as_str()), (1008, "rate limit"));
    assert_eq!(texts.len(), 1, "the last refusal is told too: {texts:?}");
    // Nothing more reached bob: the next frame he gets is carol's.
    deliver(&mut carol, "carol", &mut bob, "bob").await;
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, r#"wssgate_errors_total{kind="rate_limited"}"#),
        4.0
    );
}

#[tokio::test]
async fn abuse_connection_flood_from_one_address_gets_503_with_retry_after() {
    let gw = start("[limits]\nconnection_rate_per_address = 1\nconnection_burst_per_address = 2\n")
        .await;
    let mut first = raw_handshake(tcp_from(&gw, [127, 0, 0, 5]).await, "first").await;
    let _second = raw_handshake(tcp_from(&gw, [127, 0, 0, 5]).await, "second").await;
    let mut third = tcp_from(&gw, [127, 0, 0, 5]).await;
    third
        .write_all(&upgrade_request("/", &[("Origin", b"third")]))
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, third.read_to_end(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
    assert!(
        text.ends_with("too many new connections from this address: try again later\n"),
        "{text}"
    );
    // Another address is not affected, and the admitted ones are served.
    let mut other = connect(&gw, "other").await;
    send_json(&mut other, &json!({"dst": "first", "msg": "hi"})).await;
    let (opcode, payload) = first.read_frame().await.expect("a frame for first");
    assert_eq!(opcode, OP_TEXT);
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["msg"],
        "hi"
    );
    // Refused requests count too: two with a reserved name use up the burst
    // of another address, and its third, valid, request is over the rate.
    let answer = |mut stream: TcpStream, origin: &'static [u8]| async move {
        stream
            .write_all(&upgrade_request("/", &[("Origin", origin)]))
            .await
            .unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
            .await
            .expect("an answer in time")
            .unwrap();
        String::from_utf8_lossy(&response).into_owned()
    };
    for _ in 0..2 {
        let text = answer(tcp_from(&gw, [127, 0, 0, 6]).await, b"@x").await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    }
    let text = answer(tcp_from(&gw, [127, 0, 0, 6]).await, b"good").await;
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, r#"wssgate_errors_total{kind="connection_rate"}"#),
        2.0
    );
}

#[tokio::test]
async fn abuse_slow_loris_handshake_is_dropped_after_handshake_timeout() {
    let gw = start("[limits]\nhandshake_timeout = \"300ms\"\n").await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    let started = Instant::now();
    let mut loris = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(gw.ws).await.expect("tcp connect");
        stream
            .write_all(b"GET /?name=loris HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")
            .await
            .expect("write half a head");
        loris.push(stream);
    }
    // While they hang, the gateway admits and serves others.
    let mut carol = connect(&gw, "carol").await;
    exchange(&mut alice, "alice", &mut carol, "carol").await;

    for mut stream in loris {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("EOF in time")
            .expect("clean EOF");
        assert!(
            rest.is_empty(),
            "no answer to a stalled head: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, r#"wssgate_errors_total{kind="handshake"}"#), 5.0);
    assert_eq!(client_names(&gw).await, ["alice", "bob", "carol"]);
    exchange(&mut alice, "alice", &mut bob, "bob").await;
}

/// A tungstenite client whose frames are read by a task of its own, so
/// that it answers pings at once, like a real client's event loop.
struct Driven {
    sink: SplitSink<Ws, Message>,
    frames: mpsc::UnboundedReceiver<Message>,
    pings: usize,
}

impl Driven {
    async fn connect(gw: &Gateway, name: &str) -> Driven {
        let (sink, mut stream) = connect(gw, name).await.split();
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Reading is what sends the pong tungstenite queued for a ping.
            while let Some(Ok(frame)) = stream.next().await {
                let _ = tx.send(frame);
            }
        });
        Driven {
            sink,
            frames,
            pings: 0,
        }
    }

    async fn next(&mut self) -> Message {
        let frame = tokio::time::timeout(WAIT, self.frames.recv())
            .await
            .expect("a frame in time")
            .expect("still connected");
        if let Message::Ping(_) = frame {
            self.pings += 1;
        }
        frame
    }

    /// Waits until `n` pings have arrived since the connection opened.
    async fn await_pings(&mut self, n: usize) {
        while self.pings < n {
            match self.next().await {
                Message::Ping(_) => {}
                other => panic!("expected a ping, got {other:?}"),
            }
        }
    }

    async fn send(&mut self, value: &Value) {
        self.sink
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    async fn recv_json(&mut self) -> Value {
        loop {
            match self.next().await {
                Message::Ping(_) => {}
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
                other => panic!("expected text, got {other:?}"),
            }
        }
    }
}

async fn driven_deliver(from: &mut Driven, from_name: &str, to: &mut Driven, to_name: &str) {
    from.send(&json!({"dst": to_name, "msg": "still here"}))
        .await;
    assert_eq!(
        to.recv_json().await,
        json!({"dst": to_name, "msg": "still here", "src": from_name})
    );
}

#[tokio::test]
async fn abuse_idle_peer_is_closed_while_a_ponging_client_stays() {
    let gw = start(
        "[limits]\nping_interval = \"100ms\"\nidle_timeout = \"300ms\"\nshutdown_grace = \"200ms\"\n",
    )
    .await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut alice = Driven::connect(&gw, "alice").await;
    let mut bob = Driven::connect(&gw, "bob").await;

    // Never writes a byte after the handshake: no pong, no close reply.
    let mut idle = raw_connect(&gw, "idle").await;
    let (code, reason, before) = idle.read_close().await;
    assert_eq!((code, reason.as_str()), (1000, "idle timeout"));
    assert_eq!(before, [OP_PING, OP_PING], "two pings went unanswered");
    // The gateway waits shutdown_grace for a close reply, then drops it.
    idle.expect_eof().await;
    let gone = next_disconnect(&mut events, "idle").await;
    assert_eq!(gone["reason"], "closed by gateway: 1000 idle timeout");

    // alice answered every ping: five of them span more than idle_timeout.
    alice.await_pings(5).await;
    driven_deliver(&mut alice, "alice", &mut bob, "bob").await;
    driven_deliver(&mut bob, "bob", &mut alice, "alice").await;
    assert_eq!(client_names(&gw).await, ["alice", "bob"]);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, r#"wssgate_errors_total{kind="idle_timeout"}"#),
        1.0
    );
}

/// Connect/disconnect cycles in all.
const BURST_CYCLES: usize = 1000;
/// Cycles run at once.
const BURST_BATCH: usize = 10;

/// One connect/close cycle: the client closes normally and waits for the
/// gateway's close reply and the end of the stream.
async fn connect_and_close(gw: &Gateway, name: &str) {
    let mut ws = connect(gw, name).await;
    ws.close(None).await.expect("close");
    let mut replied = false;
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close reply in time");
        match frame {
            Some(Ok(Message::Close(_))) => replied = true,
            Some(Ok(other)) => panic!("{name}: unexpected {other:?}"),
            Some(Err(e)) => panic!("{name}: {e}"),
            None => break,
        }
    }
    assert!(replied, "{name}: the gateway answered the close");
}

#[tokio::test]
async fn abuse_connect_disconnect_burst_leaves_nothing_behind() {
    let gw = start("").await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    for batch in 0..BURST_CYCLES / BURST_BATCH {
        let names: Vec<String> = (0..BURST_BATCH)
            .map(|i| format!("burst-{}", batch * BURST_BATCH + i))
            .collect();
        futures_util::future::join_all(names.iter().map(|n| connect_and_close(&gw, n))).await;
        // Each batch's disconnects are awaited before the next batch, so
        // the event stream never falls behind.
        let mut pending: HashSet<&str> = names.iter().map(String::as_str).collect();
        while !pending.is_empty() {
            let event = await_event(&mut events, |e| e["type"] == "disconnect").await;
            let name = event["name"].as_str().unwrap();
            assert!(pending.remove(name), "unexpected disconnect: {event}");
            assert_eq!(event["reason"], "client closed", "{event}");
        }
    }

    assert_eq!(client_names(&gw).await, ["alice", "bob"]);
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, r#"wssgate_connections_accepted_total{listener="ws"}"#),
        (BURST_CYCLES + 2) as f64
    );
    exchange(&mut alice, "alice", &mut bob, "bob").await;

    for (mut ws, name) in [(alice, "alice"), (bob, "bob")] {
        ws.close(None).await.expect("close");
        next_disconnect(&mut events, name).await;
    }
    assert!(gw.operator().clients().await.unwrap().is_empty());
    assert!(gw.router.is_empty());

    let mut carol = connect(&gw, "carol").await;
    let mut dave = connect(&gw, "dave").await;
    exchange(&mut carol, "carol", &mut dave, "dave").await;
}

#[tokio::test]
async fn abuse_garbage_bytes_get_400_and_the_gateway_keeps_serving() {
    let gw = start("").await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    let garbage: [&[u8]; 3] = [
        // The start of a TLS ClientHello: a wss client on a ws port.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x11\x5e\x00",
        // Binary noise.
        b"\x00\xff\xfe\x7f\x80garbage\r\n\r\n",
        // Another protocol's greeting.
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ];
    for bytes in garbage {
        let (status, body) = http_raw(gw.ws, bytes).await;
        assert_eq!(status, 400, "{bytes:?}: {body}");
        assert!(body.starts_with("malformed HTTP request"), "{body}");
        assert_eq!(body.lines().count(), 1, "one-line reason: {body:?}");
    }
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, r#"wssgate_handshake_refusals_total{status="400"}"#),
        3.0
    );

    exchange(&mut alice, "alice", &mut bob, "bob").await;
    let mut carol = connect(&gw, "carol").await;
    exchange(&mut carol, "carol", &mut alice, "alice").await;
    assert_eq!(client_names(&gw).await, ["alice", "bob", "carol"]);
}

/// A peer that stops reading while frames are still on their way, and then
/// gets no more: its queue never fills, so only the stalled write shows it.
/// The session must notice within idle_timeout, not wait in the write.
#[tokio::test]
async fn abuse_reader_that_stops_reading_is_closed_even_when_its_queue_never_fills() {
    let gw = start(
        "[limits]\noutbound_queue = 1000\nping_interval = \"100ms\"\nidle_timeout = \"300ms\"\nshutdown_grace = \"200ms\"\n",
    )
    .await;
    let mut events = subscribe_events(gw.operator()).await;
    // Bystanders that keep reading (and so answer pings) throughout.
    let mut alice = Driven::connect(&gw, "alice").await;
    let mut bob = Driven::connect(&gw, "bob").await;
    let mut blaster = connect(&gw, "blaster").await;
    let mut stuck = raw_connect(&gw, "stuck").await;
    // It is not silent: it pings every 50 ms (so the idle timeout never
    // applies), but it never reads.
    let pinger = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            every.tick().await;
            stuck.write(&masked_frame(OP_PING, true, b"")).await;
        }
    });
    // 300 frames of 60 KB: more than loopback's socket buffers hold, fewer
    // than the queue's 1000. (The blaster reads nothing back, so it may end
    // up a slow consumer itself; alice and bob are the bystanders.)
    let payload = "x".repeat(60_000);
    for _ in 0..300 {
        send_json(&mut blaster, &json!({"dst":"stuck","msg":payload})).await;
    }
    // Before, the session waited in that write for good: never closed.
    let gone = next_disconnect(&mut events, "stuck").await;
    assert_eq!(gone["reason"], "closed by gateway: 1013 slow consumer");
    pinger.abort();
    driven_deliver(&mut alice, "alice", &mut bob, "bob").await;
    driven_deliver(&mut bob, "bob", &mut alice, "alice").await;
}
