//! Several gateway nodes over a real Redis (tests/common/redis.rs starts one
//! per test): what PROTOCOL.md promises works the same whether two clients
//! share a node or not, and the failure behaviours of the README's "Several
//! nodes" section, against Redis stopped, restarted, and with only its
//! PUB/SUB connections cut, and a node killed with SIGKILL.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use redis_server::Redis;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use wssgate_bench::soak::gateway::{field, strip_ansi};

/// Lease and heartbeat short enough for a crash test to be quick.
const TIMINGS: &str = "lease = \"1s\"\nheartbeat = \"200ms\"\n";

/// A gateway node `id` on `redis`; `extra` is TOML before `[cluster]`,
/// `cluster` more keys of `[cluster]`.
async fn node(redis: &Redis, id: &str, extra: &str, cluster: &str) -> Gateway {
    start_config(&node_config(redis, id, extra, cluster)).await
}

/// A Redis of its own and two nodes on it, `n1` and `n2`, with `extra`
/// in both configs; `None` when there is no redis-server (see
/// tests/common/redis.rs).
async fn two_nodes(extra: &str) -> Option<(Redis, Gateway, Gateway)> {
    let redis = Redis::start().await?;
    let n1 = node(&redis, "n1", extra, "").await;
    let n2 = node(&redis, "n2", extra, "").await;
    Some((redis, n1, n2))
}

fn node_config(redis: &Redis, id: &str, extra: &str, cluster: &str) -> String {
    format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\n{extra}\n\n\
         [cluster]\nredis = {:?}\nnode_id = \"{id}\"\n{TIMINGS}{cluster}",
        redis.url()
    )
}

/// Waits until `check` holds, checking every 20 ms (each check awaits a
/// real answer: a health check, a delivered message).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health(gw: &Gateway) -> String {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/healthz", gw.admin))
        .send()
        .await
        .expect("healthz");
    response.text().await.unwrap_or_default()
}

/// A private message from `from` to `to`'s name, received by `to`.
async fn private(from: &mut Ws, to: &mut Ws, to_name: &str, text: &str) -> Value {
    send_json(from, &json!({"dst": to_name, "msg": text})).await;
    recv_json(to).await
}

#[tokio::test]
async fn private_messages_cross_nodes_and_unknown_names_are_answered() {
    let Some((_redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut alice = connect(&n1, "alice").await;
    let mut bob = connect(&n2, "bob").await;

    let got = private(&mut alice, &mut bob, "bob", "hi bob").await;
    assert_eq!(got, json!({"src": "alice", "dst": "bob", "msg": "hi bob"}));
    // src is the gateway's, even spoofed, across nodes too.
    send_json(
        &mut bob,
        &json!({"src": "mallory", "dst": "alice", "msg": "hi"}),
    )
    .await;
    assert_eq!(recv_json(&mut alice).await["src"], "bob");

    // Nobody holds the name on any node: the same error as on one node.
    send_json(&mut alice, &json!({"dst": "nobody", "msg": "x", "id": 7})).await;
    let error = recv_json(&mut alice).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["msg"], "recipient not connected: nobody");
    assert_eq!(error["ref"], 7);

    // list is cluster-wide.
    assert_eq!(list(&mut alice).await, ["alice", "bob"]);
    assert_eq!(list(&mut bob).await, ["alice", "bob"]);
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_burst_across_nodes_keeps_its_order_and_a_list_stays_a_barrier() {
    let Some((_redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut alice = connect(&n1, "alice").await;
    let mut carol = connect(&n1, "carol").await;
    let mut bob = connect(&n2, "bob").await;
    // More messages than a session publishes before it waits for their
    // answers, mixed with messages to nobody (answered with their refs)
    // and one to a client of this node, then a list, all without waiting.
    for i in 0..100 {
        send_json(&mut alice, &json!({"dst": "bob", "msg": i})).await;
        if i % 10 == 0 {
            send_json(&mut alice, &json!({"dst": "nobody", "msg": i, "id": i})).await;
        }
    }
    send_json(&mut alice, &json!({"dst": "carol", "msg": "local"})).await;
    send_json(&mut alice, &json!({"type": "list", "id": "L"})).await;
    for i in 0..100 {
        assert_eq!(recv_json(&mut bob).await["msg"], i);
    }
    assert_eq!(recv_json(&mut carol).await["msg"], "local");
    // Every error in order, and all before the list's reply.
    for i in (0..100).step_by(10) {
        let error = recv_json(&mut alice).await;
        assert_eq!(error["msg"], "recipient not connected: nobody", "{error}");
        assert_eq!(error["ref"], i);
    }
    let reply = recv_json(&mut alice).await;
    assert_eq!(
        (&reply["type"], &reply["ref"]),
        (&json!("list"), &json!("L"))
    );
    assert_eq!(reply["names"], json!(["alice", "bob", "carol"]));
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn an_error_from_another_node_reaches_only_the_session_it_is_about() {
    let Some((redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut alice = connect(&n1, "alice").await;
    let mut conn = redis.connection().await;
    // What n2 publishes back when a message from alice found nobody: the
    // first about a message an earlier session named alice sent (its
    // session id is not this one's, so this alice sent nothing it is
    // about), the second without a session id (as from a node that does
    // not send one), which goes by the name.
    for (i, id) in [("earlier", ",\"id\":18446744073709551615"), ("by-name", "")] {
        let payload = format!(
            "{{\"o\":\"n2\",\"k\":\"err\",\"n\":\"alice\",\"i\":\"{i}\"{id}}}\n\
             recipient not connected: bob"
        );
        let taken: i64 = ::redis::cmd("PUBLISH")
            .arg("wsg:node:n1")
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(taken, 1, "n1 listens on its node channel");
    }
    let error = recv_json(&mut alice).await;
    assert_eq!(
        (&error["type"], &error["ref"], &error["msg"]),
        (
            &json!("error"),
            &json!("by-name"),
            &json!("recipient not connected: bob")
        ),
        "{error}"
    );
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn messages_written_at_once_to_one_peer_share_publishes() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let Some((redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut alice = connect(&n1, "alice").await;
    let mut bob = connect(&n2, "bob").await;
    let conn = redis.connection().await;
    let publishes = || {
        let mut conn = conn.clone();
        async move {
            let info: String = ::redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn)
                .await
                .unwrap();
            // cmdstat_publish:calls=N,usec=...
            let line = info
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_publish:calls="));
            line.and_then(|rest| rest.split(',').next())
                .map_or(0, |n| n.parse::<u64>().unwrap())
        }
    };
    let before = publishes().await;
    // One write for all of them: n1 reads them at once and queues them one
    // after the other for bob's channel.
    const N: u64 = 200;
    for i in 0..N {
        let frame = json!({"dst": "bob", "msg": i}).to_string();
        alice.feed(Message::text(frame)).await.unwrap();
    }
    alice.flush().await.unwrap();
    for i in 0..N {
        let got = recv_json(&mut bob).await;
        assert_eq!((&got["src"], &got["msg"]), (&json!("alice"), &json!(i)));
    }
    let used = publishes().await - before;
    assert!(used < N / 2, "{N} messages took {used} PUBLISH commands");
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_bundle_delivers_its_messages_in_order_and_a_broken_one_nothing() {
    let Some((redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut bob = connect(&n2, "bob").await;
    let mut alice = connect(&n1, "alice").await;
    // Bundles as a node publishes them for messages queued one after the
    // other for one channel: `#`, the envelopes' lengths, a newline, the
    // envelopes back to back. The second's lengths do not add up (one byte
    // short): n2 ignores all of it and stays up.
    let envelope = |i: usize| {
        format!(
            "{{\"o\":\"n1\",\"k\":\"msg\",\"n\":\"bob\",\"s\":\"alice\"}}\n\
             {{\"src\":\"alice\",\"dst\":\"bob\",\"msg\":{i}}}"
        )
    };
    let bundle = |envelopes: &[String], short: usize| {
        let lengths: Vec<String> = envelopes.iter().map(|e| e.len().to_string()).collect();
        let mut payload = format!("#{}\n{}", lengths.join(","), envelopes.concat());
        payload.truncate(payload.len() - short);
        payload
    };
    let mut conn = redis.connection().await;
    for payload in [
        bundle(&[envelope(1), envelope(2), envelope(3)], 0),
        bundle(&[envelope(4), envelope(5)], 1),
    ] {
        let taken: i64 = ::redis::cmd("PUBLISH")
            .arg("wsg:to:bob")
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(taken, 1, "n2 listens on bob's channel");
    }
    for i in 1..=3 {
        let got = recv_json(&mut bob).await;
        assert_eq!((&got["src"], &got["msg"]), (&json!("alice"), &json!(i)));
    }
    // Nothing of the broken bundle: bob's next frame is alice's next message.
    assert_eq!(
        private(&mut alice, &mut bob, "bob", "after").await["msg"],
        "after"
    );
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_name_is_no_longer_heard_on_its_node_once_released() {
    let Some((redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let bob = connect(&n1, "bob").await;
    let conn = redis.connection().await;
    // Who holds bob, and how many nodes hear bob's channel, read together
    // (one transaction) again and again while bob's session ends: once the
    // name is free, no node may hear it any more, or a message published
    // then would reach only a node without bob, which stays silent.
    let snapshot = || {
        let mut conn = conn.clone();
        async move {
            let (holder, subscribers): (Option<String>, Vec<(String, i64)>) = ::redis::pipe()
                .atomic()
                .hget("{wsg}:names", "bob")
                .cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("wsg:to:bob")
                .query_async(&mut conn)
                .await
                .unwrap();
            (holder, subscribers[0].1)
        }
    };
    assert!(matches!(snapshot().await, (Some(_), 1)));
    drop(bob);
    // No pause between reads: the first snapshot without a holder is
    // within a round trip of the release.
    let deadline = tokio::time::Instant::now() + WAIT;
    let subscribers = loop {
        let (holder, subscribers) = snapshot().await;
        if holder.is_none() {
            break subscribers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: bob released"
        );
    };
    assert_eq!(
        subscribers, 0,
        "bob's name released while n1 still hears it"
    );
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_publishers_connection_closed_while_idle_costs_no_message() {
    let Some((redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut alice = connect(&n1, "alice").await;
    let mut bob = connect(&n2, "bob").await;
    assert_eq!(
        private(&mut alice, &mut bob, "bob", "before").await["msg"],
        "before"
    );
    // Redis closes both nodes' publishing connections (each published its
    // client's join) as a restart, a timeout on the way or an operator
    // would, while nothing is published: the next message finds its node's
    // closed before writing and goes on a new one.
    assert_eq!(redis.kill_clients_last_running("publish").await, 2);
    for i in 0..3 {
        let text = format!("after {i}");
        assert_eq!(
            private(&mut alice, &mut bob, "bob", &text).await["msg"],
            text
        );
    }
    // No error came to alice: her next frame is her list's answer.
    assert_eq!(list(&mut alice).await, ["alice", "bob"]);
    assert!(health(&n1).await.contains("cluster: up"));
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn rooms_span_nodes_and_a_node_leaves_a_room_it_has_no_member_of() {
    let Some((redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut alice = connect(&n1, "alice").await;
    let mut bob = connect(&n2, "bob").await;
    let mut carol = connect(&n2, "carol").await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        send_json(ws, &json!({"type": "join", "room": "#r"})).await;
        list(ws).await;
    }
    send_json(&mut alice, &json!({"type": "list", "room": "#r", "id": 1})).await;
    assert_eq!(
        recv_json(&mut alice).await["names"],
        json!(["alice", "bob", "carol"])
    );

    send_json(&mut alice, &json!({"dst": "#r", "msg": "to the room"})).await;
    for ws in [&mut bob, &mut carol] {
        let got = recv_json(ws).await;
        assert_eq!(
            (got["src"].as_str(), got["msg"].as_str()),
            (Some("alice"), Some("to the room"))
        );
    }
    send_json(&mut carol, &json!({"dst": "#r", "msg": "from n2"})).await;
    assert_eq!(recv_json(&mut alice).await["msg"], "from n2");
    assert_eq!(recv_json(&mut bob).await["msg"], "from n2");
    // The sender got nothing back: its next frame is its list reply.
    assert_eq!(list(&mut alice).await, ["alice", "bob", "carol"]);
    assert_eq!(list(&mut carol).await, ["alice", "bob", "carol"]);

    assert_eq!(redis.subscribers("wsg:room:#r").await, 2);
    for ws in [&mut bob, &mut carol] {
        send_json(ws, &json!({"type": "leave", "room": "#r"})).await;
        list(ws).await;
    }
    assert_eq!(
        redis.subscribers("wsg:room:#r").await,
        1,
        "n2 has no member left"
    );
    send_json(&mut alice, &json!({"type": "list", "room": "#r", "id": 2})).await;
    assert_eq!(recv_json(&mut alice).await["names"], json!(["alice"]));
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn presence_is_told_across_nodes() {
    let Some((_redis, n1, n2)) = two_nodes("[routing]\npresence = true\n").await else {
        return;
    };
    let mut alice = connect(&n1, "alice").await;
    let bob = connect(&n2, "bob").await;
    let join = recv_json(&mut alice).await;
    assert_eq!(
        (join["event"].as_str(), join["name"].as_str()),
        (Some("join"), Some("bob"))
    );
    drop(bob);
    let leave = recv_json(&mut alice).await;
    assert_eq!(
        (leave["event"].as_str(), leave["name"].as_str()),
        (Some("leave"), Some("bob"))
    );
    assert_eq!(list(&mut alice).await, ["alice"]);
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn duplicate_names_follow_the_policy_across_nodes() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    // reject: 409 on the second node.
    let n1 = node(&redis, "n1", "", "").await;
    let n2 = node(&redis, "n2", "", "").await;
    let _alice = connect(&n1, "alice").await;
    let refused = try_connect(&n2.url("/?name=alice"), None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 409);
        }
        other => panic!("the second alice must get 409: {:?}", other.map(|_| ())),
    }
    tokio::join!(n1.stop(), n2.stop());

    // replace: the older session, on the other node, is closed with 4000.
    let replace = "[routing]\non_duplicate = \"replace\"\npresence = true\n";
    let Some((_redis, n1, n2)) = two_nodes(replace).await else {
        return;
    };
    let mut old = connect(&n1, "alice").await;
    let mut bob = connect(&n1, "bob").await;
    let join = recv_json(&mut old).await;
    assert_eq!(join["name"], "bob");
    let mut new = connect(&n2, "alice").await;
    let (code, reason, _) = recv_close(&mut old).await;
    assert_eq!((code, reason.as_str()), (4000, "replaced"));
    // bob on n1 reaches the new alice on n2, and saw no leave for alice.
    let got = private(&mut bob, &mut new, "alice", "to the new one").await;
    assert_eq!(got["msg"], "to the new one");
    // bob is told of the new alice's join (never of a leave), then his list.
    let join = recv_json(&mut bob).await;
    assert_eq!(
        (join["event"].as_str(), join["name"].as_str()),
        (Some("join"), Some("alice"))
    );
    assert_eq!(list(&mut bob).await, ["alice", "bob"]);
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn unclaimed_names_are_listed_and_reaped_too() {
    let allow = "[routing]\non_duplicate = \"allow\"\npresence = true\n";
    let Some((_redis, n1, n2)) = two_nodes(allow).await else {
        return;
    };
    let mut watcher = connect(&n1, "watcher").await;
    // `allow` and a provisional Qt name are not claimed, yet every node
    // lists them and the operator sees them.
    let _dup1 = connect(&n1, "dup").await;
    let dup2 = connect(&n2, "dup").await;
    let qt = connect_origin(&n2, "C1?????".as_bytes()).await;
    for expected in ["dup", "dup", "C1?????"] {
        let join = recv_json(&mut watcher).await;
        assert_eq!(
            (join["event"].as_str(), join["name"].as_str()),
            (Some("join"), Some(expected))
        );
    }
    assert_eq!(list(&mut watcher).await, ["C1?????", "dup", "watcher"]);
    let rows = n1.operator().clients().await.unwrap();
    let mut seen: Vec<(String, Option<String>, bool)> = rows
        .into_iter()
        .map(|r| (r.name, r.node, r.provisional))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("C1?????".to_owned(), Some("n2".to_owned()), true),
            ("dup".to_owned(), Some("n1".to_owned()), false),
            ("dup".to_owned(), Some("n2".to_owned()), false),
            ("watcher".to_owned(), Some("n1".to_owned()), false),
        ]
    );
    // dup on n2 leaves: dup is still here on n1, so no leave is told.
    drop(dup2);
    drop(qt);
    let leave = recv_json(&mut watcher).await;
    assert_eq!(
        (leave["event"].as_str(), leave["name"].as_str()),
        (Some("leave"), Some("C1?????"))
    );
    assert_eq!(list(&mut watcher).await, ["dup", "watcher"]);
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn the_operator_api_sees_and_reaches_every_node() {
    let Some((_redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut alice = connect(&n1, "alice").await;
    let mut bob = connect(&n2, "bob").await;

    let rows = n1.operator().clients().await.unwrap();
    let nodes: Vec<(String, Option<String>)> = rows
        .iter()
        .map(|r| (r.name.clone(), r.node.clone()))
        .collect();
    assert_eq!(
        nodes,
        [
            ("alice".to_owned(), Some("n1".to_owned())),
            ("bob".to_owned(), Some("n2".to_owned()))
        ]
    );
    let bob_row = rows.iter().find(|r| r.name == "bob").unwrap();
    assert!(bob_row.remote.starts_with("127.0.0.1:"), "{bob_row:?}");

    // send to a client on the other node.
    assert_eq!(
        n1.operator()
            .send("bob", "from n1's operator")
            .await
            .unwrap(),
        1
    );
    assert_eq!(recv_text(&mut bob).await, "from n1's operator");
    // broadcast reaches both nodes.
    n1.operator().broadcast("everyone").await.unwrap();
    assert_eq!(recv_text(&mut alice).await, "everyone");
    assert_eq!(recv_text(&mut bob).await, "everyone");
    // kick on the other node.
    assert_eq!(n1.operator().kick("bob", Some("bye")).await.unwrap(), 1);
    let (code, reason, _) = recv_close(&mut bob).await;
    assert_eq!((code, reason.as_str()), (4001, "kicked: bye"));
    // Unknown everywhere: 404.
    assert!(n1.operator().send("nobody", "x").await.is_err());
    assert!(health(&n1).await.contains("cluster: up"));
    let metrics = metrics(&n1).await;
    assert!(
        metrics
            .contains("wssgate_cluster_messages_total{direction=\"published\",kind=\"operator\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wssgate_cluster_up{node=\"n1\"} 1"),
        "{metrics}"
    );
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn redis_stopped_and_restarted_in_the_middle_of_traffic() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let n1 = node(&redis, "n1", "", "").await;
    let n2 = node(&redis, "n2", "", "").await;
    let mut alice = connect(&n1, "alice").await;
    let mut carol = connect(&n1, "carol").await;
    let mut bob = connect(&n2, "bob").await;
    private(&mut alice, &mut bob, "bob", "before").await;

    redis.stop().await;
    until("n1 sees Redis down", || async {
        health(&n1).await.contains("cluster: down")
    })
    .await;
    // Local traffic goes on.
    let got = private(&mut alice, &mut carol, "carol", "local").await;
    assert_eq!(got["msg"], "local");
    // A message for the other node: a distinct error, not "not connected".
    send_json(&mut alice, &json!({"dst": "bob", "msg": "x", "id": "b1"})).await;
    let error = recv_json(&mut alice).await;
    assert_eq!(
        error["msg"], "cluster unavailable: cannot reach bob",
        "{error}"
    );
    assert_eq!(error["ref"], "b1");
    // New connections: 503 with Retry-After (when_down = "refuse").
    match try_connect(&n1.url("/?name=dave"), None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("503 while Redis is down: {:?}", other.map(|_| ())),
    }

    redis.restart().await;
    until("both nodes see Redis up", || async {
        health(&n1).await.contains("cluster: up") && health(&n2).await.contains("cluster: up")
    })
    .await;
    // Names registered again: a second alice on n2 is refused; cross-node works.
    until("alice's name registered again", || async {
        matches!(
            try_connect(&n2.url("/?name=alice"), None).await,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 409
        )
    })
    .await;
    let got = private(&mut alice, &mut bob, "bob", "after").await;
    assert_eq!(got["msg"], "after");
    let got = private(&mut bob, &mut carol, "carol", "back").await;
    assert_eq!(got["src"], "bob");
    assert_eq!(list(&mut bob).await, ["alice", "bob", "carol"]);
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn only_the_pubsub_connections_dropped() {
    let Some((redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut alice = connect(&n1, "alice").await;
    let mut bob = connect(&n2, "bob").await;
    send_json(&mut bob, &json!({"type": "join", "room": "#r"})).await;
    list(&mut bob).await;
    send_json(&mut alice, &json!({"type": "join", "room": "#r"})).await;
    list(&mut alice).await;

    assert!(redis.kill_pubsub_clients().await >= 2);
    // Subscribed again without anyone's help: names and rooms.
    until("bob's channel subscribed again", || async {
        redis.subscribers("wsg:to:bob").await == 1 && redis.subscribers("wsg:room:#r").await == 2
    })
    .await;
    let got = private(&mut alice, &mut bob, "bob", "after the cut").await;
    assert_eq!(got["msg"], "after the cut");
    send_json(&mut bob, &json!({"dst": "#r", "msg": "room after the cut"})).await;
    assert_eq!(recv_json(&mut alice).await["msg"], "room after the cut");
    tokio::join!(n1.stop(), n2.stop());
}

/// A TCP proxy in front of Redis's Unix socket that can cut the PUB/SUB
/// connections it carries (those that sent SUBSCRIBE) the way a NAT or a
/// proxy that forgot them does: they stay open and carry nothing either
/// way, no FIN, no reset. Connections made after the cut pass.
struct Blackhole {
    addr: SocketAddr,
    /// Connections numbered below this are cut (if they subscribed).
    cut_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
}

impl Blackhole {
    async fn start(socket: std::path::PathBuf) -> Blackhole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let (cut, counter) = (cut_below.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::UnixStream::connect(&socket).await else {
                    continue;
                };
                let subscribed = Arc::new(AtomicBool::new(false));
                let cut = cut.clone();
                let is_cut = {
                    let subscribed = subscribed.clone();
                    move || subscribed.load(Ordering::SeqCst) && id < cut.load(Ordering::SeqCst)
                };
                let (from_client, to_client) = client.into_split();
                let (from_server, to_server) = server.into_split();
                tokio::spawn(pipe(
                    from_client,
                    to_server,
                    is_cut.clone(),
                    Some(subscribed),
                ));
                tokio::spawn(pipe(from_server, to_client, is_cut, None));
            }
        });
        Blackhole {
            addr,
            cut_below,
            next,
        }
    }

    /// Cuts every PUB/SUB connection made so far.
    fn cut_subscribers(&self) {
        self.cut_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends; once `is_cut`, holds both open
/// and copies nothing more. `subscribed` is set when SUBSCRIBE goes by.
async fn pipe(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    is_cut: impl Fn() -> bool,
    subscribed: Option<Arc<AtomicBool>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(flag) = &subscribed
            && buf[..n].windows(9).any(|w| w == b"SUBSCRIBE")
        {
            flag.store(true, Ordering::SeqCst);
        }
        if is_cut() {
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_subscriber_connection_cut_on_the_way_is_found_out_and_made_again() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let hole = Blackhole::start(redis.socket()).await;
    let n1 = node(&redis, "n1", "", "").await;
    let through_hole = node_config(&redis, "n2", "", "").replace(
        &format!("{:?}", redis.url()),
        &format!("\"redis://{}/0\"", hole.addr),
    );
    assert!(through_hole.contains("redis://127.0.0.1"), "{through_hole}");
    let n2 = start_config(&through_hole).await;
    let mut alice = connect(&n1, "alice").await;
    let mut bob = connect(&n2, "bob").await;
    assert_eq!(
        private(&mut alice, &mut bob, "bob", "before").await["msg"],
        "before"
    );
    // n2's subscribed connection now carries nothing, and nothing tells n2
    // so: no FIN, no reset. Redis still counts it as bob's subscriber, so
    // alice is told nothing either. n2 finds out by its PING (after a quiet
    // heartbeat, 200 ms here, then 2 s without an answer), connects again
    // and subscribes bob's channel again: bob is reached again.
    hole.cut_subscribers();
    // Lost: Redis hands it to the cut connection, which carries it nowhere.
    send_json(&mut alice, &json!({"dst": "bob", "msg": "lost"})).await;
    until(
        "n2 subscribes bob's channel again on a new connection",
        || async {
            // The cut connection still counts at Redis's end.
            redis.subscribers("wsg:to:bob").await == 2
        },
    )
    .await;
    // bob's next frame: the first message after, not the lost one.
    assert_eq!(
        private(&mut alice, &mut bob, "bob", "after").await["msg"],
        "after"
    );
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn redis_down_with_when_down_local_admits_and_claims_later() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("wssgate=debug")
        .try_init();
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let n1 = node(&redis, "n1", "", "when_down = \"local\"\n").await;
    let n2 = node(&redis, "n2", "", "when_down = \"local\"\n").await;
    redis.stop().await;
    until("n1 sees Redis down", || async {
        health(&n1).await.contains("cluster: down")
    })
    .await;
    // Admitted on this node only.
    let mut erin = connect(&n1, "erin").await;
    redis.restart().await;
    // (Probing n2 before it is up would admit a local erin there too: the
    // conflict `when_down = "local"` accepts, resolved at recovery.)
    until("both nodes see Redis up", || async {
        health(&n1).await.contains("cluster: up") && health(&n2).await.contains("cluster: up")
    })
    .await;
    until("erin claimed once Redis is back", || async {
        matches!(
            try_connect(&n2.url("/?name=erin"), None).await,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 409
        )
    })
    .await;
    let mut fay = connect(&n2, "fay").await;
    let got = private(&mut fay, &mut erin, "erin", "found you").await;
    assert_eq!(got["src"], "fay");
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_ws_client_on_one_node_and_a_wss_client_on_the_other() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (
        certs.path().join("server.pem"),
        certs.path().join("server-key.pem"),
    );
    let ca = wssgate::certgen::ensure_dev_certs(&cert, &key)
        .unwrap()
        .expect("generated")
        .ca_cert;
    let n1 = node(&redis, "n1", "", "").await;
    let n2 = start_config(&format!(
        "[[listener]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\nmode = \"secure\"\n\
         cert = {cert:?}\nkey = {key:?}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [cluster]\nredis = {:?}\nnode_id = \"n2\"\n{TIMINGS}",
        redis.url()
    ))
    .await;
    let mut plain = connect(&n1, "plain").await;
    let opts = wssgate_client::ConnectOptions {
        url: format!("wss://localhost:{}/", n2.ws.port()),
        name: "secure".into(),
        tls: wssgate_client::ClientTls {
            trust: wssgate_client::ServerTrust::Ca(ca),
            identity: None,
        },
        known_hosts: std::path::PathBuf::new(),
        token: None,
    };
    let (mut secure, _) = wssgate_client::connect(&opts).await.expect("wss client");
    send_json(&mut plain, &json!({"dst": "secure", "msg": "ws to wss"})).await;
    let got = recv_json(&mut secure).await;
    assert_eq!(
        (got["src"].as_str(), got["msg"].as_str()),
        (Some("plain"), Some("ws to wss"))
    );
    for ws in [&mut plain] {
        send_json(ws, &json!({"type": "join", "room": "#mixed"})).await;
        list(ws).await;
    }
    send_json(&mut secure, &json!({"type": "join", "room": "#mixed"})).await;
    list(&mut secure).await;
    send_json(
        &mut secure,
        &json!({"dst": "#mixed", "msg": "wss to the room"}),
    )
    .await;
    let got = recv_json(&mut plain).await;
    assert_eq!(
        (got["src"].as_str(), got["msg"].as_str()),
        (Some("secure"), Some("wss to the room"))
    );
    let rows = n1.operator().clients().await.unwrap();
    let tls: Vec<(String, bool)> = rows.iter().map(|r| (r.name.clone(), r.tls)).collect();
    assert_eq!(
        tls,
        [("plain".to_owned(), false), ("secure".to_owned(), true)]
    );
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_qt_provisional_name_is_reached_by_its_full_name_from_another_node() {
    let Some((_redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    // Qt writes Origin in Latin-1: the name arrives as C1????? (provisional).
    let mut qt = connect_origin(&n2, "C1?????".as_bytes()).await;
    let mut bob = connect(&n1, "bob").await;
    let got = private(&mut bob, &mut qt, "C1我是客户端", "to the full name").await;
    assert_eq!(got["msg"], "to the full name");
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn rediss_with_the_ca_given_and_a_password_from_the_environment() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (
        certs.path().join("server.pem"),
        certs.path().join("server-key.pem"),
    );
    let ca = wssgate::certgen::ensure_dev_certs(&cert, &key)
        .unwrap()
        .expect("generated")
        .ca_cert;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(redis) = Redis::start_tls(port, &cert, &key).await else {
        return;
    };
    let tls = |id: &str| {
        format!(
            "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
             [cluster]\nredis = \"rediss://localhost:{port}/0\"\ntls_ca = {ca:?}\nnode_id = \"{id}\"\n{TIMINGS}"
        )
    };
    let n1 = start_config(&tls("n1")).await;
    let n2 = start_config(&tls("n2")).await;
    let mut a = connect(&n1, "a").await;
    let mut b = connect(&n2, "b").await;
    assert_eq!(
        private(&mut a, &mut b, "b", "over TLS").await["msg"],
        "over TLS"
    );
    // Batches larger than a socket takes at once (three senders, 30 KiB
    // messages, none waited for): every byte of each reaches Redis (TLS
    // holds what the socket did not take until it is flushed), in order.
    let mut senders = Vec::new();
    for s in 0..3 {
        senders.push(connect(&n1, &format!("s{s}")).await);
    }
    let filler = "x".repeat(30 * 1024);
    for i in 0..60 {
        for ws in &mut senders {
            send_json(ws, &json!({"dst": "b", "msg": format!("{i} {filler}")})).await;
        }
    }
    let mut next = [0usize; 3];
    for _ in 0..180 {
        let got = recv_json(&mut b).await;
        let src = got["src"].as_str().expect("src").to_owned();
        let s: usize = src[1..].parse().expect("a sender");
        let msg = got["msg"].as_str().expect("msg");
        assert_eq!(
            msg.split(' ').next(),
            Some(next[s].to_string().as_str()),
            "from {src}"
        );
        next[s] += 1;
    }
    assert_eq!(list(&mut a).await.len(), 5);
    tokio::join!(n1.stop(), n2.stop());
    // Without the CA the system roots do not know the dev CA: refused at start.
    let untrusted = tls("n3").replace(&format!("tls_ca = {ca:?}\n"), "");
    let config = Config::parse(&untrusted, std::path::Path::new("t.toml")).unwrap();
    let error = match wssgate::Server::bind(config).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("connected to Redis without trusting its certificate"),
    };
    assert!(error.contains("cannot reach Redis"), "{error}");
    drop(redis);

    // A password from the environment (never in the config file).
    let Some(redis) =
        Redis::start_args(None, vec!["--requirepass".into(), "s3cret-pw".into()]).await
    else {
        return;
    };
    // SAFETY: the variable is this test's own; no other code reads or
    // writes it.
    unsafe { std::env::set_var("WSSGATE_TEST_CLUSTER_PASSWORD", "s3cret-pw") };
    let with_password = node_config(
        &redis,
        "p1",
        "",
        "password_env = \"WSSGATE_TEST_CLUSTER_PASSWORD\"\n",
    );
    let n = start_config(&with_password).await;
    assert!(health(&n).await.contains("cluster: up"));
    // A message between two nodes: the publisher's and the subscriber's
    // connections sign in with it too.
    let other = start_config(&with_password.replace("\"p1\"", "\"p1b\"")).await;
    let mut a = connect(&n, "a").await;
    let mut b = connect(&other, "b").await;
    assert_eq!(
        private(&mut a, &mut b, "b", "signed in").await["msg"],
        "signed in"
    );
    n.stop().await;
    other.stop().await;
    // Without it: the reason says so, and the password is not printed.
    let config = Config::parse(
        &node_config(&redis, "p2", "", ""),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let error = match wssgate::Server::bind(config).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("connected to Redis without its password"),
    };
    assert!(error.contains("cannot reach Redis"), "{error}");
    assert!(!error.contains("s3cret-pw"), "{error}");
}

/// Sends `list` (of `room`) until the answer names `expected`, every 20 ms.
async fn until_listed(ws: &mut Ws, room: Option<&str>, expected: Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let request = match room {
            Some(room) => json!({"type": "list", "room": room, "id": "u"}),
            None => json!({"type": "list", "id": "u"}),
        };
        send_json(ws, &request).await;
        let got = recv_json(ws).await;
        if got["names"] == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "list stayed {got}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Is `name` free on `gw` (admitted, then closed)?
async fn free_on(gw: &Gateway, name: &str) -> bool {
    try_connect(&gw.url(&format!("/?name={name}")), None)
        .await
        .is_ok()
}

#[tokio::test]
async fn upgrades_cut_off_after_the_claim_leave_no_name_behind() {
    let Some((_redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    // Each sends an upgrade and resets the connection at once: the claim
    // may be made, the 101 may never be written.
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(n1.ws).await.unwrap();
        stream.set_zero_linger().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, &upgrade_request("/?name=ghost", &[]))
            .await
            .unwrap();
        drop(stream);
    }
    until("ghost free on the other node", || free_on(&n2, "ghost")).await;
    let mut probe = connect(&n2, "probe").await;
    until_listed(&mut probe, None, json!(["probe"])).await;
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_latin1_look_alike_that_is_not_provisional_gets_nothing() {
    let Some((_redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    // A name that is C1????? by choice (from ?name=), not a Qt Origin.
    let mut lookalike = try_connect(&n2.url("/?name=C1%3F%3F%3F%3F%3F"), None)
        .await
        .expect("a C1????? of its own choosing");
    let mut bob = connect(&n1, "bob").await;
    send_json(
        &mut bob,
        &json!({"dst": "C1我是客户端", "msg": "private", "id": 9}),
    )
    .await;
    let error = recv_json(&mut bob).await;
    assert_eq!(
        error["msg"], "recipient not connected: C1我是客户端",
        "{error}"
    );
    assert_eq!(error["ref"], 9);
    assert_eq!(
        list(&mut lookalike).await,
        ["C1?????", "bob"],
        "nothing reached it"
    );
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_qt_rename_is_known_to_every_node() {
    let Some((_redis, n1, n2)) = two_nodes("").await else {
        return;
    };
    let mut qt = connect_origin(&n2, "C1?????".as_bytes()).await;
    let mut bob = connect(&n1, "bob").await;
    // Qt sends its full name in src: the session takes it.
    send_json(
        &mut qt,
        &json!({"src": "C1我是客户端", "dst": "bob", "msg": "hi"}),
    )
    .await;
    assert_eq!(recv_json(&mut bob).await["src"], "C1我是客户端");
    list(&mut qt).await;
    // Reached by the full name from the other node, and the name is taken there.
    let got = private(&mut bob, &mut qt, "C1我是客户端", "by the full name").await;
    assert_eq!(got["msg"], "by the full name");
    until("the full name is claimed", || async {
        matches!(
            try_connect(&n1.url("/?name=C1%E6%88%91%E6%98%AF%E5%AE%A2%E6%88%B7%E7%AB%AF"), None).await,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 409
        )
    })
    .await;
    assert_eq!(list(&mut bob).await, ["C1我是客户端", "bob"]);
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_replaced_session_leaves_its_rooms_on_every_node() {
    let replace = "[routing]\non_duplicate = \"replace\"\n";
    let Some((_redis, n1, n2)) = two_nodes(replace).await else {
        return;
    };
    let mut watcher = connect(&n2, "watcher").await;
    let mut old = connect(&n1, "bob").await;
    for ws in [&mut old, &mut watcher] {
        send_json(ws, &json!({"type": "join", "room": "#r"})).await;
        list(ws).await;
    }
    send_json(
        &mut watcher,
        &json!({"type": "list", "room": "#r", "id": 1}),
    )
    .await;
    assert_eq!(
        recv_json(&mut watcher).await["names"],
        json!(["bob", "watcher"])
    );
    let _new = connect(&n2, "bob").await;
    assert_eq!(recv_close(&mut old).await.0, 4000);
    until_listed(&mut watcher, Some("#r"), json!(["watcher"])).await;
    tokio::join!(n1.stop(), n2.stop());
}

#[tokio::test]
async fn a_node_restarted_within_its_lease_under_the_same_id_leaves_no_ghosts() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let config = node_config(&redis, "fixed", "", "lease = \"30s\"\nheartbeat = \"1s\"\n")
        .replace(TIMINGS, "");
    let first = Process::start(&config).await;
    let other = node(&redis, "other", "", "").await;
    let (zed, _) = tokio_tungstenite::connect_async(format!("ws://{}/?name=zed", first.ws))
        .await
        .expect("zed on the first process");
    let mut first = first;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    drop(zed);
    // Restarted at once (a service manager's restart), same node id: the
    // 30 s lease has not run out, so no other node reaped it.
    let second = Process::start(&config).await;
    assert!(
        free_on(&other, "zed").await,
        "zed is not a ghost of the first process"
    );
    let mut probe = connect(&other, "probe").await;
    assert_eq!(list(&mut probe).await, ["probe"]);
    drop(second);
    other.stop().await;
}

/// `wssgate serve` as a process (so that it can be killed with SIGKILL).
struct Process {
    child: tokio::process::Child,
    ws: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl Process {
    async fn start(config: &str) -> Process {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut file, config.as_bytes()).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wssgate"))
            .args(["serve", "--config"])
            .arg(file.path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("wssgate serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ws = loop {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("a log line in time")
                .expect("stdout")
                .expect("wssgate serve ended before listening");
            let line = strip_ansi(&line);
            if line.contains("listening") && field(&line, "listener") == Some("ws") {
                break field(&line, "addr").unwrap().parse().unwrap();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Process {
            child,
            ws,
            _config: file,
        }
    }
}

#[tokio::test]
async fn a_node_killed_without_cleanup_frees_its_names_within_the_lease() {
    let Some(redis) = Redis::start().await else {
        return;
    };
    let presence = "[routing]\npresence = true\n";
    let doomed = Process::start(&node_config(&redis, "doomed", presence, "")).await;
    let survivor = node(&redis, "survivor", presence, "").await;
    let mut bob = connect(&survivor, "bob").await;
    let (mut alice, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/?name=alice", doomed.ws))
            .await
            .expect("alice on the doomed node");
    let join = recv_json(&mut bob).await;
    futures_util::SinkExt::send(
        &mut alice,
        tokio_tungstenite::tungstenite::Message::text(r##"{"type":"join","room":"#r"}"##),
    )
    .await
    .unwrap();
    assert_eq!(
        (join["event"].as_str(), join["name"].as_str()),
        (Some("join"), Some("alice"))
    );
    // While the node lives, the name is taken.
    assert!(
        try_connect(&survivor.url("/?name=alice"), None)
            .await
            .is_err()
    );

    let started = std::time::Instant::now();
    let mut doomed = doomed;
    doomed.child.start_kill().unwrap();
    doomed.child.wait().await.unwrap();
    let _ = futures_util::StreamExt::next(&mut alice).await;
    // The survivor announces alice's leave once the lease ran out...
    let leave = recv_json(&mut bob).await;
    assert_eq!(
        (leave["event"].as_str(), leave["name"].as_str()),
        (Some("leave"), Some("alice"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Her room membership went with her.
    send_json(&mut bob, &json!({"type": "list", "room": "#r", "id": 1})).await;
    assert_eq!(recv_json(&mut bob).await["names"], json!([]));
    // ...and alice may come back there under her name.
    let mut alice = connect(&survivor, "alice").await;
    let got = private(&mut bob, &mut alice, "alice", "welcome back").await;
    assert_eq!(got["msg"], "welcome back");
    survivor.stop().await;
}

#[tokio::test]
async fn redis_unreachable_at_start_refuses_or_waits() {
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    redis.stop().await;
    // refuse (the default): the gateway says why and does not start.
    let config = Config::parse(
        &node_config(&redis, "n1", "", ""),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let error = match wssgate::Server::bind(config).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started without Redis"),
    };
    assert!(error.contains("cannot reach Redis"), "{error}");
    assert!(error.contains("at_start"), "{error}");

    // wait: it starts once Redis answers.
    let config = Config::parse(
        &node_config(&redis, "n1", "", "at_start = \"wait\"\n"),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let bind = tokio::spawn(wssgate::Server::bind(config));
    redis.restart().await;
    let server = tokio::time::timeout(WAIT, bind)
        .await
        .expect("starts once Redis answers")
        .unwrap()
        .expect("binds");
    assert!(server.admin_addr().is_some());
}

use wssgate::Config;
