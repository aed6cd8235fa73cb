//! Presence under load, with thousands of real clients: a storm of joins or
//! leaves must never be the reason a reading client is closed, and a
//! shutdown closes every client with 1001 whatever presence does.
//!
//! Every reader reads everything until its close frame; the gateway is then
//! shut down, and each reader reports the close code it got. Abuse cases
//! (bursts of leaves, TCP drops, a thundering herd of joins) are named as such.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

/// Reading clients kept connected through the storms: 2,000, or
/// `WSSGATE_PRESENCE_CLIENTS` for a larger run by hand (one test at a
/// time: `cargo test --release --test presence -- --test-threads 1`).
fn readers() -> usize {
    std::env::var("WSSGATE_PRESENCE_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}
/// Clients per burst of leaves.
const BURST: usize = 500;

/// Presence on. The runs are long for a debug build on two cores, and idle
/// timeouts are not what these tests are about: pings are spaced out.
const PRESENCE: &str =
    "[routing]\npresence = true\n\n[limits]\nping_interval = \"5m\"\nidle_timeout = \"10m\"\n";
/// Time a handshake may take while thousands are under way.
const HANDSHAKE: Duration = Duration::from_secs(60);

/// How a reader's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// A close frame with this code.
    Closed(u16, String),
    /// The stream ended or failed without a close frame.
    Lost(String),
}

/// A client that reads every frame until the gateway closes it, and
/// reports how it ended and how many frames it read.
async fn reader(mut ws: Ws) -> (Ended, usize) {
    let mut frames = 0;
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                // Answer the close, as a well-behaved client does.
                let _ = ws.close(None).await;
                return (Ended::Closed(code, reason), frames);
            }
            Some(Ok(_)) => frames += 1,
            Some(Err(e)) => return (Ended::Lost(e.to_string()), frames),
            None => return (Ended::Lost("end of stream".into()), frames),
        }
    }
}

/// Raises this process's open-file limit to its hard limit: each test
/// holds thousands of sockets on both ends (`clients` of them).
fn enough_files(clients: usize) {
    let needed = 2 * clients as u64 + 1_024;
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit");
    assert!(
        limit >= needed,
        "these tests need {needed} open files, the hard limit is {limit}: raise it (ulimit -Hn)"
    );
}

/// Connects as `name`, allowing [`HANDSHAKE`] for it.
async fn connect_slowly(url: &str, name: &str) -> Ws {
    try_connect_within(url, Some(name.as_bytes()), HANDSHAKE)
        .await
        .unwrap_or_else(|e| panic!("connect {name}: {e}"))
}

/// The names connected, from a `list` (presence notices on the way are skipped).
async fn list_all(ws: &mut Ws) -> Vec<String> {
    send_text(ws, r#"{"type":"list"}"#).await;
    loop {
        let reply = recv_json(ws).await;
        if reply["type"] == "presence" {
            continue;
        }
        assert_eq!(reply["type"], "list", "{reply}");
        return reply["names"]
            .as_array()
            .expect("names")
            .iter()
            .map(|n| n.as_str().expect("name").to_owned())
            .collect();
    }
}

/// Connects `n` clients named `{prefix}{i}`, `parallel` handshakes at a time.
async fn connect_many(gw: &Gateway, prefix: &str, n: usize, parallel: usize) -> Vec<Ws> {
    let mut out = Vec::with_capacity(n);
    let url = gw.url("/");
    for chunk in (0..n).collect::<Vec<_>>().chunks(parallel.max(1)) {
        let mut set = JoinSet::new();
        for &i in chunk {
            let url = url.clone();
            let name = format!("{prefix}{i}");
            set.spawn(async move { (i, connect_slowly(&url, &name).await) });
        }
        let mut batch: Vec<(usize, Ws)> = Vec::with_capacity(chunk.len());
        while let Some(joined) = set.join_next().await {
            batch.push(joined.expect("connect task"));
        }
        batch.sort_by_key(|(i, _)| *i);
        out.extend(batch.into_iter().map(|(_, ws)| ws));
    }
    out
}

/// Shuts the gateway down and checks that every reader got 1001 and
/// nothing else; returns the frames the readers read in all.
async fn shutdown_and_check(gw: Gateway, readers: JoinSet<(Ended, usize)>) -> usize {
    gw.begin_shutdown();
    let results = tokio::time::timeout(Duration::from_secs(60), readers.join_all())
        .await
        .expect("every reader ends after the shutdown");
    gw.wait_stopped().await;
    let mut unexpected: Vec<&Ended> = results
        .iter()
        .map(|(ended, _)| ended)
        .filter(|ended| !matches!(ended, Ended::Closed(1001, _)))
        .collect();
    let count = unexpected.len();
    unexpected.truncate(5);
    assert_eq!(
        count,
        0,
        "{count} of {} reading clients did not end with 1001 at the shutdown, e.g. {unexpected:?}",
        results.len()
    );
    results.iter().map(|(_, frames)| frames).sum()
}

fn spawn_readers(clients: Vec<Ws>) -> JoinSet<(Ended, usize)> {
    let mut set = JoinSet::new();
    for ws in clients {
        set.spawn(reader(ws));
    }
    set
}

/// Abuse: 1,000 clients (half the readers) leave in bursts of 500, half with a clean close and
/// half by dropping their TCP connection, while 2,000 clients read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_leaves_close_no_reading_client() {
    let (readers, leavers) = (readers(), readers() / 2);
    enough_files(readers + leavers);
    let gw = start(PRESENCE).await;
    let reading = spawn_readers(connect_many(&gw, "reader", readers, 50).await);
    let mut leaving = connect_many(&gw, "leaver", leavers, 50).await;
    let mut events = subscribe_events(gw.operator()).await;

    while !leaving.is_empty() {
        let burst: Vec<Ws> = leaving.drain(..BURST.min(leaving.len())).collect();
        let n = burst.len();
        for (i, mut ws) in burst.into_iter().enumerate() {
            if i % 2 == 0 {
                let _ = ws.close(None).await;
            } else {
                drop(ws);
            }
        }
        // The burst is over when the gateway has seen every one of them go:
        // awaited through the disconnect events (a reader among them fails
        // the test), with the roster as the judge should a lagging events
        // stream have skipped some.
        let remaining = readers + leaving.len();
        while gw.router.names(None).len() > remaining {
            let event = match tokio::time::timeout(HANDSHAKE, events.recv()).await {
                Ok(event) => event.expect("events stream open"),
                Err(_) => break,
            };
            if event["type"] == "disconnect" {
                let name = event["name"].as_str().unwrap_or_default();
                assert!(
                    name.starts_with("leaver"),
                    "a reader was disconnected: {event}"
                );
            }
        }
        assert_eq!(
            gw.router.names(None).len(),
            remaining,
            "the burst of {n} leaves was not over in time"
        );
    }
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, r#"wssgate_errors_total{kind="slow_consumer"}"#),
        0.0,
        "presence closed a slow consumer"
    );
    let frames = shutdown_and_check(gw, reading).await;
    assert!(frames > 0, "the readers were told about the leaves");
}

/// Abuse: 2,000 clients open at once (a thundering herd after an outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_joins_closes_no_one_while_it_opens() {
    let readers = readers();
    enough_files(readers);
    let gw = start(PRESENCE).await;
    let mut reading = JoinSet::new();
    let url = gw.url("/");
    let mut connecting = JoinSet::new();
    for i in 0..readers {
        let url = url.clone();
        connecting.spawn(async move { connect_slowly(&url, &format!("herd{i}")).await });
    }
    // Each client starts reading as soon as it is connected.
    while let Some(ws) = connecting.join_next().await {
        reading.spawn(reader(ws.expect("connect task")));
    }
    // Every client is in: the last one to join lists them all.
    let mut last = connect(&gw, "last").await;
    let names = list_all(&mut last).await;
    assert_eq!(names.len(), readers + 1, "every client stayed connected");
    reading.spawn(reader(last));
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, r#"wssgate_errors_total{kind="slow_consumer"}"#),
        0.0,
        "presence closed a slow consumer"
    );
    shutdown_and_check(gw, reading).await;
}

/// A shutdown with 2,000 clients connected and presence on: each gets 1001
/// (the shutdown's own disconnects are not announced to the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_client_with_1001() {
    let readers = readers();
    enough_files(readers);
    let gw = start(PRESENCE).await;
    let reading = spawn_readers(connect_many(&gw, "c", readers, 50).await);
    let mut probe = connect(&gw, "probe").await;
    assert_eq!(list_all(&mut probe).await.len(), readers + 1);
    probe
        .send(Message::Close(None))
        .await
        .expect("probe closes");
    shutdown_and_check(gw, reading).await;
}
