//! docs/PROTOCOL.md section 8 through real sockets: the operator API (clients,
//! broadcast, send, events, health, metrics), its bearer token, and the
//! config rule that keeps it off the network without one.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wssgate::Config;
use wssgate::operator::{Operator, OperatorError};

const TOKEN: &str = "0123456789abcdef";

/// A plain reqwest client (no proxy: the admin API is on loopback).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

async fn get(gw: &Gateway, path: &str) -> (u16, String) {
    let response = http()
        .get(format!("{}{path}", admin_url(gw)))
        .send()
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn post(gw: &Gateway, path: &str, body: &str) -> (u16, String) {
    let response = http()
        .post(format!("{}{path}", admin_url(gw)))
        .body(body.to_owned())
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The value of one series (`name{labels}`) in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == series).then(|| value.parse().expect("metric value is a number"))
    })
}

async fn metrics(gw: &Gateway) -> String {
    let (status, text) = get(gw, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text
}

// ---------------------------------------------------------------- /clients

#[tokio::test]
async fn clients_lists_every_session_with_its_facts() {
    let gw = start("").await;
    let operator = gw.operator();
    assert!(operator.clients().await.unwrap().is_empty());

    let before = SystemTime::now() - Duration::from_secs(1);
    let alice = connect(&gw, "alice").await;
    let bob = try_connect(&gw.url("/chat?name=bob%20smith"), None)
        .await
        .expect("connect by ?name=");
    let after = SystemTime::now() + Duration::from_secs(1);

    let rows = operator.clients().await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (row, ws, name) in [(&rows[0], &alice, "alice"), (&rows[1], &bob, "bob smith")] {
        assert_eq!(row.name, name);
        assert_eq!(row.remote, local_addr(ws).to_string());
        assert!(row.remote.starts_with("127.0.0.1:"), "{row:?}");
        assert_eq!(row.listener, "ws");
        assert!(!row.tls);
        assert!(!row.provisional);
        let at = humantime::parse_rfc3339(&row.connected_at)
            .unwrap_or_else(|e| panic!("connected_at {:?} is not RFC 3339: {e}", row.connected_at));
        assert!(before <= at && at <= after, "{row:?}");
    }

    // The raw JSON has the documented fields, with their JSON types.
    let (status, body) = get(&gw, "/clients").await;
    assert_eq!(status, 200);
    let raw: Value = serde_json::from_str(&body).unwrap();
    let first = raw[0].as_object().expect("rows are objects");
    for key in ["name", "remote", "listener", "connected_at"] {
        assert!(first[key].is_string(), "{key} in {body}");
    }
    assert_eq!(raw[0]["tls"], json!(false));
    let at = raw[0]["connected_at"].as_str().unwrap();
    // RFC 3339, e.g. 2025-01-31T12:34:56Z.
    assert_eq!(at.len(), 20, "{at}");
    assert_eq!(&at[4..5], "-");
    assert_eq!(&at[10..11], "T");
    assert!(at.ends_with('Z'), "{at}");

    // A session that left is no longer listed: its disconnect event is
    // published after the router forgot it.
    let mut events = subscribe_events(gw.operator()).await;
    drop(bob);
    await_event(&mut events, |e| {
        e["type"] == "disconnect" && e["name"] == "bob smith"
    })
    .await;
    let rows = operator.clients().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].name, "alice");
}

#[tokio::test]
async fn clients_shows_each_listener() {
    let gw = start_config(
        "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"back\"\nbind = \"127.0.0.1:0\"\npath = \"/internal\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n",
    )
    .await;
    let back = gw.listeners[1].1;
    let _a = connect(&gw, "a").await;
    let _b = try_connect(&format!("ws://{back}/internal?name=b"), None)
        .await
        .unwrap();
    let rows = gw.operator().clients().await.unwrap();
    let listeners: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.listener.as_str()))
        .collect();
    assert_eq!(listeners, [("a", "front"), ("b", "back")]);
}

// ---------------------------------------------------------------- /broadcast

#[tokio::test]
async fn broadcast_reaches_everyone_with_the_exact_text() {
    let gw = start("").await;
    let mut clients = vec![
        connect(&gw, "a").await,
        connect(&gw, "b").await,
        connect(&gw, "José").await,
    ];
    // Looks like a private message, has a newline and surrounding spaces:
    // it must still arrive byte for byte, as a plain text frame.
    let text = "  maintenance at 5 \u{1F6A7}\n{\"dst\":\"a\",\"msg\":\"x\"}  ";
    let (status, body) = post(&gw, "/broadcast", text).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"delivered": 3})
    );
    for ws in &mut clients {
        assert_eq!(recv_text(ws).await, text);
    }

    // Through the operator client too, and to nobody once all are gone.
    assert_eq!(gw.operator().broadcast("second").await.unwrap(), 3);
    for ws in &mut clients {
        assert_eq!(recv_text(ws).await, "second");
    }
    // An empty body is an empty text frame.
    assert_eq!(gw.operator().broadcast("").await.unwrap(), 3);
    for ws in &mut clients {
        assert_eq!(recv_text(ws).await, "");
    }
}

#[tokio::test]
async fn broadcast_with_nobody_connected_delivers_zero() {
    let gw = start("").await;
    assert_eq!(gw.operator().broadcast("anyone?").await.unwrap(), 0);
}

// ---------------------------------------------------------------- /send

#[tokio::test]
async fn send_delivers_exactly_the_text_to_one_client() {
    let gw = start("").await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;
    let text = "{\"looks\":\"like json\"} but is \"plain\"\n";
    let (status, body) = post(&gw, "/send/alice", text).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"delivered": 1})
    );
    assert_eq!(recv_text(&mut alice).await, text);
    // Bob got nothing: his first frame is his list reply.
    assert_eq!(list(&mut bob).await, ["alice", "bob"]);

    assert_eq!(gw.operator().send("bob", "hi bob").await.unwrap(), 1);
    assert_eq!(recv_text(&mut bob).await, "hi bob");
}

#[tokio::test]
async fn send_to_an_unknown_name_is_404() {
    let gw = start("").await;
    let mut alice = connect(&gw, "alice").await;
    let (status, body) = post(&gw, "/send/nobody", "x").await;
    assert_eq!(status, 404);
    assert_eq!(body.trim(), "recipient not connected: nobody");
    match gw.operator().send("nobody", "x").await {
        Err(OperatorError::NotConnected(name)) => assert_eq!(name, "nobody"),
        other => panic!("expected NotConnected, got {other:?}"),
    }
    // Names are case-sensitive.
    assert!(matches!(
        gw.operator().send("Alice", "x").await,
        Err(OperatorError::NotConnected(_))
    ));
    // Nothing reached alice.
    assert_eq!(list(&mut alice).await, ["alice"]);
}

#[tokio::test]
async fn kick_closes_every_session_of_the_name_with_4001_and_the_reason() {
    let gw = start("[routing]\non_duplicate = \"allow\"\n").await;
    let mut a1 = connect(&gw, "José").await;
    let mut a2 = connect(&gw, "José").await;
    let mut bob = connect(&gw, "bob").await;
    let mut events = subscribe_events(gw.operator()).await;
    // A frame queued before the kick still arrives, then the close.
    assert_eq!(gw.operator().send("José", "last words").await.unwrap(), 2);
    let response = http()
        .delete(format!(
            "{}/clients/Jos%C3%A9?reason=spam%20%26%20more",
            admin_url(&gw)
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).expect("json");
    assert_eq!(body, json!({"closed": 2}));
    for ws in [&mut a1, &mut a2] {
        let (code, reason, frames) = recv_close(ws).await;
        assert_eq!((code, reason.as_str()), (4001, "kicked: spam & more"));
        assert_eq!(frames, ["last words"]);
    }
    let event = await_event(&mut events, |e| e["type"] == "disconnect").await;
    assert_eq!(
        event["reason"], "closed by gateway: 4001 kicked: spam & more",
        "{event}"
    );
    // Bob is untouched.
    assert_eq!(list(&mut bob).await, ["bob"]);

    // No reason: just `kicked`; through the operator client.
    assert_eq!(gw.operator().kick("bob", None).await.unwrap(), 1);
    let (code, reason, _) = recv_close(&mut bob).await;
    assert_eq!((code, reason.as_str()), (4001, "kicked"));

    // Nobody of that name: 404, as for send.
    let response = http()
        .delete(format!("{}/clients/nobody", admin_url(&gw)))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.text().await.unwrap().trim(),
        "recipient not connected: nobody"
    );
    assert!(matches!(
        gw.operator().kick("nobody", Some("x")).await,
        Err(OperatorError::NotConnected(_))
    ));
}

#[tokio::test]
async fn a_long_kick_reason_is_cut_to_fit_a_close_frame() {
    let gw = start("").await;
    let mut alice = connect(&gw, "alice").await;
    let reason = "ü".repeat(200);
    assert_eq!(gw.operator().kick("alice", Some(&reason)).await.unwrap(), 1);
    let (code, got, _) = recv_close(&mut alice).await;
    assert_eq!(code, 4001);
    assert!(got.len() <= 123, "{} bytes", got.len());
    assert!(got.starts_with("kicked: üü"), "{got}");
}

#[tokio::test]
async fn the_console_is_served_without_a_token_and_holds_no_data() {
    let gw = start_config(&format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ))
    .await;
    let _alice = connect(&gw, "alice").await;
    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/console.js", "text/javascript; charset=utf-8"),
        ("/console.css", "text/css; charset=utf-8"),
    ] {
        let response = http()
            .get(format!("{}{path}", admin_url(&gw)))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), kind, "{path}");
        assert!(
            header("content-security-policy").contains("script-src 'self';"),
            "{path}"
        );
        assert!(
            header("content-security-policy").contains("connect-src 'self';"),
            "{path}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("cache-control"), "no-cache");
        let etag = header("etag");
        let body = response.text().await.unwrap();
        assert!(!body.contains("alice"), "{path} holds no client data");
        // The browser's copy is fresh: 304, no body.
        let again = http()
            .get(format!("{}{path}", admin_url(&gw)))
            .header("If-None-Match", &etag)
            .send()
            .await
            .expect("request");
        assert_eq!(again.status().as_u16(), 304, "{path}");
    }
    // The data stays behind the token.
    assert_eq!(status_with(&gw, "GET", "/clients", None).await, 401);

    // console = false: no page.
    let off = start_config(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\nconsole = false\n",
    )
    .await;
    assert_eq!(get(&off, "/").await.0, 404);
}

#[tokio::test]
async fn send_to_names_that_need_percent_encoding() {
    let gw = start("").await;
    let names = [
        "bob smith",
        "José",
        "C1我",
        "a/b",
        "100% sure?",
        "x#y&z=1+2",
    ];
    let mut clients = Vec::new();
    for name in names {
        let query: String =
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let ws = try_connect(&gw.url(&format!("/?name={query}")), None)
            .await
            .unwrap_or_else(|e| panic!("connect {name:?}: {e}"));
        clients.push(ws);
    }
    // Also the way a browser-less client names itself: raw UTF-8 in Origin.
    let mut origin_client = connect(&gw, "Zoë 漢字").await;

    let operator = gw.operator();
    let mut connected: Vec<String> = operator
        .clients()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    connected.sort();
    let mut expected: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    expected.push("Zoë 漢字".into());
    expected.sort();
    assert_eq!(connected, expected);

    for (name, ws) in names.iter().zip(&mut clients) {
        let text = format!("for {name}");
        let delivered = operator
            .send(name, &text)
            .await
            .unwrap_or_else(|e| panic!("send to {name:?}: {e}"));
        assert_eq!(delivered, 1, "{name:?}");
        assert_eq!(recv_text(ws).await, text);
    }
    assert_eq!(operator.send("Zoë 漢字", "ok").await.unwrap(), 1);
    assert_eq!(recv_text(&mut origin_client).await, "ok");
}

#[tokio::test]
async fn send_reaches_a_provisional_qt_name() {
    let gw = start("").await;
    // Qt writes `C1我是` as `C1??` in its Origin header.
    let mut qt = connect_origin(&gw, b"C1??").await;
    let rows = gw.operator().clients().await.unwrap();
    assert_eq!(rows[0].name, "C1??");
    assert!(rows[0].provisional);
    assert_eq!(gw.operator().send("C1我是", "你好").await.unwrap(), 1);
    assert_eq!(recv_text(&mut qt).await, "你好");
    // Not renamed by this.
    assert_eq!(gw.operator().clients().await.unwrap()[0].name, "C1??");
}

#[tokio::test]
async fn send_reaches_every_session_of_a_name_when_duplicates_are_allowed() {
    let gw = start("[routing]\non_duplicate = \"allow\"\n").await;
    let mut one = connect(&gw, "twin").await;
    let mut two = connect(&gw, "twin").await;
    let (status, body) = post(&gw, "/send/twin", "both").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"delivered": 2})
    );
    assert_eq!(recv_text(&mut one).await, "both");
    assert_eq!(recv_text(&mut two).await, "both");
}

// ---------------------------------------------------------------- /events

#[tokio::test]
async fn events_report_connect_message_error_and_disconnect() {
    let gw = start("").await;
    let mut events = subscribe_events(gw.operator()).await;

    let mut alice = connect(&gw, "alice").await;
    let remote = local_addr(&alice).to_string();
    let event = await_event(&mut events, |_| true).await;
    assert_eq!(
        event,
        json!({"type":"connect","name":"alice","remote":remote,"listener":"ws","tls":false,
               "connected_at":event["connected_at"],"provisional":false})
    );
    let at = event["connected_at"].as_str().unwrap_or_default();
    assert!(humantime::parse_rfc3339(at).is_ok(), "connected_at {at:?}");

    send_text(&mut alice, "hello, operator").await;
    let event = await_event(&mut events, |_| true).await;
    assert_eq!(
        event,
        json!({"type":"message","name":"alice","remote":remote,"text":"hello, operator"})
    );

    send_json(&mut alice, &json!({"dst":"nobody","msg":"x"})).await;
    let event = await_event(&mut events, |_| true).await;
    assert_eq!(
        event,
        json!({"type":"error","name":"alice","remote":remote,"msg":"recipient not connected: nobody"})
    );
    // The client got its notice too.
    assert_eq!(recv_json(&mut alice).await["type"], "error");

    alice.close(None).await.unwrap();
    let event = await_event(&mut events, |_| true).await;
    assert_eq!(event["type"], "disconnect");
    assert_eq!(event["name"], "alice");
    assert_eq!(event["remote"], remote.as_str());
    assert_eq!(event["reason"], "client closed");
    assert_eq!(event.as_object().unwrap().len(), 4, "{event}");
}

#[tokio::test]
async fn events_reach_every_subscriber() {
    let gw = start("").await;
    let mut first = subscribe_events(gw.operator()).await;
    let mut second = subscribe_events(gw.operator()).await;
    let _a = connect(&gw, "a").await;
    for events in [&mut first, &mut second] {
        let event = await_event(events, |_| true).await;
        assert_eq!(event["type"], "connect");
        assert_eq!(event["name"], "a");
    }
}

#[tokio::test]
async fn events_end_when_the_gateway_stops() {
    let gw = start("").await;
    let operator = gw.operator();
    // Subscribe, then check the stream itself ends (not just the channel).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let follower = tokio::spawn(async move {
        operator
            .events(|line| {
                let _ = tx.send(line.to_owned());
            })
            .await
    });
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, r#"{"type":"subscribed"}"#);
    gw.stop().await;
    let result = tokio::time::timeout(WAIT, follower)
        .await
        .expect("event stream ends")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn binary_frames_to_the_server_are_events() {
    let gw = start("").await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut a = connect(&gw, "a").await;
    a.send(Message::binary(vec![0xff, 0x00])).await.unwrap();
    let event = await_event(&mut events, |e| e["type"] == "binary").await;
    assert_eq!(event["name"], "a");
    assert_eq!(event["base64"], "/wA=");
}

// ---------------------------------------------------------------- health, metrics

#[tokio::test]
async fn healthz_is_ok() {
    let gw = start("").await;
    assert_eq!(get(&gw, "/healthz").await, (200, "ok\n".to_owned()));
}

#[tokio::test]
async fn metrics_count_connections_messages_and_errors() {
    let gw = start("").await;
    let text = metrics(&gw).await;
    assert!(text.contains("# TYPE wssgate_connections gauge"), "{text}");
    assert_eq!(
        metric(&text, r#"wssgate_connections{listener="ws"}"#),
        Some(0.0)
    );

    let mut a = connect(&gw, "a").await;
    let mut b = connect(&gw, "b").await;
    // A round trip on each proves both sessions are running (and counted).
    list(&mut a).await;
    list(&mut b).await;
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, r#"wssgate_connections{listener="ws"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"wssgate_connections_accepted_total{listener="ws"}"#
        ),
        Some(2.0),
        "{text}"
    );

    send_json(&mut a, &json!({"dst":"b","msg":"hi"})).await;
    assert_eq!(recv_json(&mut b).await["msg"], "hi");
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, r#"wssgate_messages_routed_total{kind="private"}"#),
        Some(1.0),
        "{text}"
    );

    send_json(&mut a, &json!({"dst":"nobody","msg":"x"})).await;
    assert_eq!(recv_json(&mut a).await["type"], "error");
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, r#"wssgate_errors_total{kind="unknown_recipient"}"#),
        Some(1.0),
        "{text}"
    );

    // Operator traffic is counted by kind as well.
    gw.operator().broadcast("all").await.unwrap();
    gw.operator().send("a", "one").await.unwrap();
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, r#"wssgate_messages_routed_total{kind="broadcast"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"wssgate_messages_routed_total{kind="send"}"#),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let gw = start("").await;
    let response = http()
        .get(format!("{}/metrics", admin_url(&gw)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text")
            || content_type.starts_with("text/plain"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        assert!(series.starts_with("wssgate_"), "{line}");
        value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
    }
}

// ---------------------------------------------------------------- token

/// Every route behind the token, with a request that would succeed.
const GUARDED: [(&str, &str); 6] = [
    ("GET", "/clients"),
    ("DELETE", "/clients/bob"),
    ("POST", "/broadcast"),
    ("POST", "/send/alice"),
    ("GET", "/events"),
    ("GET", "/metrics"),
];

async fn status_with(gw: &Gateway, method: &str, path: &str, auth: Option<&str>) -> u16 {
    let url = format!("{}{path}", admin_url(gw));
    let mut request = match method {
        "GET" => http().get(url),
        "DELETE" => http().delete(url),
        _ => http().post(url).body("x"),
    };
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    if status == 401 {
        let challenge = response
            .headers()
            .get("www-authenticate")
            .expect("401 carries WWW-Authenticate");
        assert_eq!(challenge, "Bearer");
    }
    status
}

#[tokio::test]
async fn token_guards_every_route_but_healthz() {
    let gw = start_config(&format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ))
    .await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    let wrong = [
        None,
        Some("Bearer 0123456789abcdeX".to_owned()),
        Some("Bearer 0123456789abcde".to_owned()),
        Some(format!("Bearer {TOKEN}0")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some("Bearer ".to_owned()),
    ];
    for (method, path) in GUARDED {
        for auth in &wrong {
            assert_eq!(
                status_with(&gw, method, path, auth.as_deref()).await,
                401,
                "{method} {path} with {auth:?}"
            );
        }
    }
    // Nothing got through to alice (nor bob: no kick).
    assert_eq!(list(&mut alice).await, ["alice", "bob"]);

    // healthz needs no token.
    assert_eq!(status_with(&gw, "GET", "/healthz", None).await, 200);

    // With the token every route works (events: only the status is checked here).
    let bearer = format!("Bearer {TOKEN}");
    for (method, path) in GUARDED {
        assert_eq!(
            status_with(&gw, method, path, Some(&bearer)).await,
            200,
            "{method} {path}"
        );
    }
    // The POSTs above reached alice: the broadcast, then the send; the
    // DELETE closed bob.
    assert_eq!(recv_text(&mut alice).await, "x");
    assert_eq!(recv_text(&mut alice).await, "x");
    assert_eq!(recv_close(&mut bob).await.0, 4001);

    // The scheme is case-insensitive (RFC 9110 section 11.1); the token is not.
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} {TOKEN}");
        assert_eq!(
            status_with(&gw, "GET", "/clients", Some(&auth)).await,
            200,
            "{auth}"
        );
    }
    let upper = format!("Bearer {}", TOKEN.to_uppercase());
    assert_eq!(status_with(&gw, "GET", "/clients", Some(&upper)).await, 401);
    // One or more spaces after the scheme (RFC 9110 section 11.4: 1*SP);
    // before, two spaces made the token " TOKEN" and a 401.
    for auth in [format!("Bearer  {TOKEN}"), format!("Bearer \t {TOKEN}")] {
        assert_eq!(
            status_with(&gw, "GET", "/clients", Some(&auth)).await,
            200,
            "{auth:?}"
        );
    }
    for auth in ["Bearer", "Bearer ", "Bearer  "] {
        assert_eq!(
            status_with(&gw, "GET", "/clients", Some(auth)).await,
            401,
            "{auth:?}"
        );
    }
}

#[tokio::test]
async fn operator_with_the_token_works_and_without_it_is_unauthorized() {
    let gw = start_config(&format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ))
    .await;
    let mut alice = connect(&gw, "alice").await;

    for operator in [
        gw.operator(),
        gw.operator_with("0123456789abcdeX"),
        gw.operator_with("wrong"),
    ] {
        assert!(matches!(
            operator.clients().await,
            Err(OperatorError::Unauthorized)
        ));
        assert!(matches!(
            operator.broadcast("x").await,
            Err(OperatorError::Unauthorized)
        ));
        assert!(matches!(
            operator.send("alice", "x").await,
            Err(OperatorError::Unauthorized)
        ));
        // Unauthorized wins over "not connected": nothing leaks about names.
        assert!(matches!(
            operator.send("nobody", "x").await,
            Err(OperatorError::Unauthorized)
        ));
        assert!(matches!(
            operator.events(|_| {}).await,
            Err(OperatorError::Unauthorized)
        ));
    }

    let operator = gw.operator_with(TOKEN);
    let rows = operator.clients().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].name, "alice");
    assert_eq!(operator.send("alice", "one").await.unwrap(), 1);
    assert_eq!(recv_text(&mut alice).await, "one");
    assert_eq!(operator.broadcast("all").await.unwrap(), 1);
    assert_eq!(recv_text(&mut alice).await, "all");
    assert!(matches!(
        operator.send("nobody", "x").await,
        Err(OperatorError::NotConnected(_))
    ));
    let mut events = subscribe_events(gw.operator_with(TOKEN)).await;
    send_text(&mut alice, "to the operator").await;
    let event = await_event(&mut events, |e| e["type"] == "message").await;
    assert_eq!(event["text"], "to the operator");
}

#[tokio::test]
async fn unauthorized_error_tells_how_to_fix_it() {
    let gw = start_config(&format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    ))
    .await;
    let e = Operator::new(&format!("{}/", admin_url(&gw)), None)
        .clients()
        .await
        .unwrap_err();
    assert!(matches!(e, OperatorError::Unauthorized));
    assert!(e.to_string().contains("token"), "{e}");
}

// ---------------------------------------------------------------- config

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("gw.toml")).map_err(|e| e.to_string())
}

#[test]
fn public_admin_bind_without_token_is_refused_with_file_and_line() {
    let text = "# gateway\n[[listener]]\nname = \"ws\"\nbind = \"0.0.0.0:8080\"\n\n[admin]\nbind = \"0.0.0.0:9090\"\n";
    let e = parse(text).expect_err("public admin without token must be refused");
    assert!(e.starts_with("gw.toml:6: "), "{e}");
    assert!(e.contains("0.0.0.0:9090"), "{e}");
    assert!(e.contains("not on loopback"), "{e}");
    assert!(e.contains("token"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");

    // IPv6 unspecified and a LAN address are just as public.
    for bind in ["[::]:9090", "192.168.1.10:9090"] {
        let e = parse(&format!("[admin]\nbind = \"{bind}\"\n")).expect_err(bind);
        assert!(e.starts_with("gw.toml:1: "), "{e}");
        assert!(e.contains("not on loopback"), "{e}");
    }
}

#[test]
fn public_admin_bind_with_a_token_is_accepted() {
    let c = parse(&format!(
        "[admin]\nbind = \"0.0.0.0:9090\"\ntoken = \"{TOKEN}\"\n"
    ))
    .unwrap();
    assert_eq!(c.admin.get_ref().token.as_deref(), Some(TOKEN));
    // Loopback needs none; a disabled admin API needs none either.
    parse("[admin]\nbind = \"127.0.0.1:9090\"\n").unwrap();
    parse("[admin]\nbind = \"[::1]:9090\"\n").unwrap();
    parse("[admin]\nenabled = false\nbind = \"0.0.0.0:9090\"\n").unwrap();
    // A short token is refused.
    let e = parse("[admin]\nbind = \"0.0.0.0:9090\"\ntoken = \"short\"\n").unwrap_err();
    assert!(e.contains("at least 16 characters"), "{e}");
}
