//! Graceful shutdown, in process: sessions are closed with 1001 after what
//! was queued for them, the server returns, and nobody new gets in.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn every_client_gets_1001_and_the_server_returns() {
    let gw = start("").await;
    let mut clients = vec![
        connect(&gw, "a").await,
        connect(&gw, "b").await,
        connect(&gw, "c").await,
    ];
    // Every session is running before the shutdown starts.
    for ws in &mut clients {
        list(ws).await;
    }
    gw.begin_shutdown();
    for ws in &mut clients {
        let (code, reason, texts) = recv_close(ws).await;
        assert_eq!(code, 1001);
        assert_eq!(reason, "gateway shutting down");
        assert!(texts.is_empty(), "{texts:?}");
        // Our close reply goes out; then the gateway ends the connection.
        assert!(drain(ws).await.is_empty());
    }
    gw.wait_stopped().await;
}

#[tokio::test]
async fn event_streams_end_with_a_shutdown_event() {
    let gw = start("").await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut a = connect(&gw, "a").await;
    list(&mut a).await;
    await_event(&mut events, |e| e["type"] == "connect").await;
    gw.begin_shutdown();
    // The last event says why the stream ends; then it ends.
    let last = await_event(&mut events, |e| e["type"] != "disconnect").await;
    assert_eq!(last, json!({"type": "shutdown"}));
    let end = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
    assert_eq!(
        end.expect("the stream ends in time"),
        None,
        "nothing after shutdown"
    );
    let (code, _, _) = recv_close(&mut a).await;
    assert_eq!(code, 1001);
    assert!(drain(&mut a).await.is_empty());
    gw.wait_stopped().await;
}

#[tokio::test]
async fn stop_with_nobody_connected_returns() {
    let gw = start("").await;
    let admin = gw.admin;
    let ws = gw.ws;
    gw.stop().await;
    // Both listeners are gone.
    assert!(tokio::net::TcpStream::connect(ws).await.is_err());
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

#[tokio::test]
async fn a_broadcast_just_before_shutdown_arrives_before_the_close() {
    let gw = start("").await;
    let mut a = connect(&gw, "a").await;
    let mut b = connect(&gw, "b").await;
    let operator = gw.operator();
    assert_eq!(operator.broadcast("going down in 0s").await.unwrap(), 2);
    assert_eq!(operator.send("b", "just for b").await.unwrap(), 1);
    gw.begin_shutdown();

    let (code, _, texts) = recv_close(&mut a).await;
    assert_eq!(code, 1001);
    assert_eq!(texts, ["going down in 0s"]);
    let (code, _, texts) = recv_close(&mut b).await;
    assert_eq!(code, 1001);
    assert_eq!(texts, ["going down in 0s", "just for b"]);
    drain(&mut a).await;
    drain(&mut b).await;
    gw.wait_stopped().await;
}

#[tokio::test]
async fn a_full_queue_drains_in_order_before_the_close() {
    // More frames than one write batch, fewer than the queue holds.
    const N: usize = 200;
    let gw = start("").await;
    let mut a = connect(&gw, "a").await;
    let mut b = connect(&gw, "b").await;
    for i in 0..N {
        send_json(&mut a, &json!({"dst":"b","msg":i})).await;
    }
    // The list reply proves a's session routed all N frames to b's queue.
    list(&mut a).await;
    gw.begin_shutdown();

    let (code, _, texts) = recv_close(&mut b).await;
    assert_eq!(code, 1001);
    let received: Vec<u64> = texts
        .iter()
        .map(|t| {
            let v: serde_json::Value = serde_json::from_str(t).unwrap();
            assert_eq!(v["src"], "a");
            v["msg"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(received, (0..N as u64).collect::<Vec<_>>());
    let (code, _, _) = recv_close(&mut a).await;
    assert_eq!(code, 1001);
    drain(&mut a).await;
    drain(&mut b).await;
    gw.wait_stopped().await;
}

#[tokio::test]
async fn new_connections_are_refused_once_shutdown_begins() {
    // A long grace, and a client that has not answered its close frame yet,
    // keep the shutdown in progress while we knock.
    let gw = start("[limits]\nshutdown_grace = \"30s\"\n").await;
    let mut holder = connect(&gw, "holder").await;
    list(&mut holder).await;
    gw.begin_shutdown();
    let (code, _, _) = recv_close(&mut holder).await;
    assert_eq!(code, 1001);

    // The gateway is still shutting down (holder's close reply is unsent),
    // and no one new gets in, neither over WebSocket nor to the admin API.
    let refused = try_connect(&gw.url("/?name=late"), None).await;
    assert!(refused.is_err(), "a late client was admitted");
    assert!(
        tokio::net::TcpStream::connect(gw.admin).await.is_err(),
        "the admin API still accepts connections"
    );
    assert!(gw.router.names(None).iter().all(|n| n != "late"));

    // The close reply lets the shutdown finish.
    drain(&mut holder).await;
    gw.wait_stopped().await;
}

#[tokio::test]
async fn a_client_that_never_answers_cannot_hold_the_shutdown() {
    let gw = start("[limits]\nshutdown_grace = \"300ms\"\n").await;
    // Connected, but never read from again: it never answers the close.
    let mut silent = connect(&gw, "silent").await;
    list(&mut silent).await;
    let started = Instant::now();
    gw.stop().await;
    let took = started.elapsed();
    // The grace (plus the server's one-second margin) bounds the wait.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    // The gateway closed with 1001 and then dropped the connection.
    let (code, _, _) = recv_close(&mut silent).await;
    assert_eq!(code, 1001);
    drain(&mut silent).await;
}

/// Connects named `name` with a small receive buffer, so that little of
/// what the gateway writes fits in flight and its writes soon wait.
async fn connect_slow_reader(gw: &Gateway, name: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(gw.ws).await.expect("tcp connect");
    let url = gw.url(&format!("/?name={name}"));
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    ws
}

#[tokio::test]
async fn a_backed_up_socket_still_gets_every_queued_frame_before_the_close() {
    // b reads slowly: the gateway's writes to it wait on a full socket, with
    // many frames still queued, when the shutdown begins. Nothing queued
    // before the shutdown may be lost, and the order must hold.
    const N: usize = 48;
    const READ_FIRST: usize = 4;
    let gw = start("[limits]\nmax_message_size = 1048576\n").await;
    let mut a = connect(&gw, "a").await;
    let mut b = connect_slow_reader(&gw, "b").await;
    let pad = "x".repeat(200_000);
    for i in 0..N {
        send_json(&mut a, &json!({"dst":"b","msg":i,"pad":pad})).await;
    }
    // Every frame is queued for b (or written) once a's list reply is back.
    list(&mut a).await;
    let mut received = Vec::new();
    for _ in 0..READ_FIRST {
        received.push(recv_json(&mut b).await["msg"].as_u64().unwrap());
    }
    gw.begin_shutdown();

    let (code, _, texts) = recv_close(&mut b).await;
    assert_eq!(code, 1001);
    received.extend(texts.iter().map(|t| {
        serde_json::from_str::<serde_json::Value>(t).unwrap()["msg"]
            .as_u64()
            .unwrap()
    }));
    let missing: Vec<u64> = (0..N as u64).filter(|i| !received.contains(i)).collect();
    assert!(missing.is_empty(), "lost at shutdown: {missing:?}");
    assert_eq!(received, (0..N as u64).collect::<Vec<_>>());
    drain(&mut a).await;
    drain(&mut b).await;
    gw.wait_stopped().await;
}
