//! docs/PROTOCOL.md sections 3 and 4 through real sockets: private messages,
//! rooms, list, messages to the server, notices, and bad input.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[tokio::test]
async fn private_message_as_the_qt_example_sends_it() {
    let gw = start("").await;
    let mut c1 = connect(&gw, "C1").await;
    let mut c2 = connect(&gw, "C2").await;
    // Exactly what the Qt client writes: compact JSON with its origin as src.
    send_text(&mut c1, r#"{"dst":"C2","msg":"hello","src":"C1"}"#).await;
    let got = recv_json(&mut c2).await;
    assert_eq!(got, json!({"dst":"C2","msg":"hello","src":"C1"}));
}

#[tokio::test]
async fn spoofed_src_is_overwritten_and_other_fields_pass_through() {
    let gw = start("").await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;
    send_json(
        &mut alice,
        &json!({"src":"mallory","dst":"bob","msg":"hi","extra":{"n":[1,2]}}),
    )
    .await;
    let got = recv_json(&mut bob).await;
    assert_eq!(
        got,
        json!({"src":"alice","dst":"bob","msg":"hi","extra":{"n":[1,2]}})
    );
}

#[tokio::test]
async fn unknown_recipient_gets_an_error_notice_with_ref() {
    let gw = start("").await;
    let mut alice = connect(&gw, "alice").await;
    send_json(&mut alice, &json!({"dst":"nobody","msg":"x","id":42})).await;
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"src":"@gateway","dst":"alice","type":"error","msg":"recipient not connected: nobody","ref":42})
    );
    // Without an id there is no ref.
    send_json(&mut alice, &json!({"dst":"nobody","msg":"x"})).await;
    let notice = recv_json(&mut alice).await;
    assert_eq!(notice["type"], "error");
    assert!(notice.get("ref").is_none(), "{notice}");
}

#[tokio::test]
async fn rooms_reach_members_but_the_sender() {
    let gw = start("").await;
    let mut a = connect(&gw, "a").await;
    let mut b = connect(&gw, "b").await;
    let mut c = connect(&gw, "c").await;
    let mut outsider = connect(&gw, "outsider").await;
    for ws in [&mut a, &mut b, &mut c] {
        send_json(ws, &json!({"type":"join","room":"#lobby"})).await;
    }
    // A list of the room is the barrier that proves all joins were handled.
    send_json(&mut a, &json!({"type":"list","room":"#lobby"})).await;
    let members = recv_json(&mut a).await;
    assert_eq!(members["names"], json!(["a", "b", "c"]));
    assert_eq!(members["room"], "#lobby");
    // b and c must have handled their joins too before a sends.
    list(&mut b).await;
    list(&mut c).await;

    send_json(&mut a, &json!({"dst":"#lobby","msg":"to all"})).await;
    for ws in [&mut b, &mut c] {
        assert_eq!(
            recv_json(ws).await,
            json!({"dst":"#lobby","msg":"to all","src":"a"})
        );
    }
    // The sender gets nothing back: its next frame is the reply to list.
    assert_eq!(list(&mut a).await, ["a", "b", "c", "outsider"]);

    // Leave: c no longer receives.
    send_json(&mut c, &json!({"type":"leave","room":"#lobby"})).await;
    list(&mut c).await;
    send_json(&mut a, &json!({"dst":"#lobby","msg":"second"})).await;
    assert_eq!(recv_json(&mut b).await["msg"], "second");
    assert_eq!(
        list(&mut c).await.len(),
        4,
        "c got nothing before its list reply"
    );

    // Not a member: an error, not a silent drop.
    send_json(&mut outsider, &json!({"dst":"#lobby","msg":"x","id":"r1"})).await;
    let notice = recv_json(&mut outsider).await;
    assert_eq!(notice["type"], "error");
    assert_eq!(notice["msg"], "not a member of #lobby");
    assert_eq!(notice["ref"], "r1");
}

#[tokio::test]
async fn invalid_room_requests_are_answered() {
    let gw = start("[limits]\nmax_rooms_per_session = 1\n").await;
    let mut a = connect(&gw, "a").await;
    for (request, needle) in [
        (json!({"type":"join","room":"lobby","id":1}), "invalid room"),
        (json!({"type":"join","id":2}), "invalid room"),
        (json!({"type":"join","room":"#","id":3}), "invalid room"),
        (json!({"type":"join","room":7,"id":4}), "invalid room"),
    ] {
        send_json(&mut a, &request).await;
        let notice = recv_json(&mut a).await;
        assert_eq!(notice["type"], "error", "{request}");
        assert!(notice["msg"].as_str().unwrap().contains(needle), "{notice}");
        assert_eq!(notice["ref"], request["id"]);
    }
    send_json(&mut a, &json!({"type":"join","room":"#one"})).await;
    send_json(&mut a, &json!({"type":"join","room":"#two","id":5})).await;
    let notice = recv_json(&mut a).await;
    assert_eq!(notice["msg"], "too many rooms: at most 1 per session");
    assert_eq!(notice["ref"], 5);
}

#[tokio::test]
async fn list_names_everyone_connected() {
    let gw = start("").await;
    let mut a = connect(&gw, "a").await;
    let _b = connect(&gw, "José").await;
    send_json(&mut a, &json!({"type":"list","id":"l1"})).await;
    let reply = recv_json(&mut a).await;
    assert_eq!(reply["src"], "@gateway");
    assert_eq!(reply["dst"], "a");
    assert_eq!(reply["type"], "list");
    assert_eq!(reply["names"], json!(["José", "a"]));
    assert_eq!(reply["ref"], "l1");
    assert!(reply["msg"].is_string());
}

#[tokio::test]
async fn everything_else_goes_to_the_operator() {
    let gw = start("").await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut a = connect(&gw, "a").await;
    let texts = [
        "plain text",
        "{not json",
        "[1,2,3]",
        "\"a string\"",
        r#"{"msg":"no dst"}"#,
        r#"{"dst":"@server","msg":"to the server"}"#,
    ];
    for text in texts {
        send_text(&mut a, text).await;
        let event = await_event(&mut events, |e| e["type"] == "message").await;
        assert_eq!(event["name"], "a");
        assert_eq!(event["text"], text);
        assert!(event["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    a.send(Message::Binary(Bytes::from_static(b"\x00\x01bin")))
        .await
        .unwrap();
    let event = await_event(&mut events, |e| e["type"] == "binary").await;
    assert_eq!(event["base64"], "AAFiaW4=");
    // Nothing came back to the sender for any of them.
    assert_eq!(list(&mut a).await, ["a"]);
}

#[tokio::test]
async fn dst_of_the_wrong_type_is_an_error() {
    let gw = start("").await;
    let mut a = connect(&gw, "a").await;
    let mut b = connect(&gw, "b").await;
    for dst in [json!(5), json!(["b"]), json!({"name":"b"}), json!(true)] {
        send_json(&mut a, &json!({"dst": dst, "msg":"x", "id":"w"})).await;
        let notice = recv_json(&mut a).await;
        assert_eq!(notice["type"], "error", "{dst}");
        assert_eq!(notice["msg"], "invalid message: dst must be a string");
        assert_eq!(notice["ref"], "w");
    }
    // b was unaffected and still reachable.
    send_json(&mut a, &json!({"dst":"b","msg":"still here"})).await;
    assert_eq!(recv_json(&mut b).await["msg"], "still here");
}

#[tokio::test]
async fn presence_notices_when_enabled() {
    let gw = start("[routing]\npresence = true\n").await;
    let mut a = connect(&gw, "a").await;
    let b = connect(&gw, "b").await;
    assert_eq!(
        recv_json(&mut a).await,
        json!({"src":"@gateway","dst":"a","type":"presence","msg":"b connected","event":"join","name":"b"})
    );
    drop(b);
    let notice = recv_json(&mut a).await;
    assert_eq!(notice["event"], "leave");
    assert_eq!(notice["name"], "b");
}

#[tokio::test]
async fn no_presence_by_default() {
    let gw = start("").await;
    let mut a = connect(&gw, "a").await;
    let _b = connect(&gw, "b").await;
    // The first frame a gets is its list reply, not a presence notice.
    assert_eq!(list(&mut a).await, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_gateway_routes_both_ways() {
    // [runtime] busy_poll changes how a worker waits, never what arrives.
    let gw = start("[runtime]\nbusy_poll = \"200us\"\n").await;
    let mut a = connect(&gw, "a").await;
    let mut b = connect(&gw, "b").await;
    for i in 0..100 {
        let (from, to, dst) = if i % 2 == 0 {
            (&mut a, &mut b, "b")
        } else {
            (&mut b, &mut a, "a")
        };
        send_json(from, &json!({"dst": dst, "msg": i})).await;
        assert_eq!(recv_json(to).await["msg"], json!(i));
    }
}
