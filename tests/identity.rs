//! docs/PROTOCOL.md section 2 through real sockets: names from `Origin` (UTF-8 or
//! Latin-1) and `?name=`, handshake refusals with their status and reason,
//! the duplicate policies, Qt's provisional names, the connection limit and
//! several listeners feeding one router.

mod common;

use common::*;
use futures_util::StreamExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wssgate::operator::OperatorError;

/// `C1我是客户端` as Qt's `toLatin1()` writes it in the `Origin` header.
const C1_QT: &[u8] = b"C1?????";
/// `C2我是客户端` as Qt writes it.
const C2_QT: &[u8] = b"C2?????";

/// `to` gets a private message from `from`, with `src` set to `from_name`:
/// the check that a client was unaffected by whatever happened before.
async fn assert_private(from: &mut Ws, from_name: &str, to: &mut Ws, to_name: &str) {
    let msg = format!("{from_name} to {to_name}");
    send_json(from, &json!({"dst": to_name, "msg": msg})).await;
    assert_eq!(
        recv_json(to).await,
        json!({"src": from_name, "dst": to_name, "msg": msg})
    );
}

/// Connects with `?name=` (percent-encoded here) and an optional `Origin`.
async fn connect_query(gw: &Gateway, name: &str, origin: Option<&[u8]>) -> Ws {
    let url = gw.url(&format!(
        "/?name={}",
        utf8_percent_encode(name, NON_ALPHANUMERIC)
    ));
    try_connect(&url, origin)
        .await
        .unwrap_or_else(|e| panic!("connect with ?name={name}: {e}"))
}

/// A WebSocket client's handshake that must be refused: status and body.
async fn refused(url: &str, origin: Option<&[u8]>) -> (u16, String) {
    match try_connect(url, origin).await {
        Ok(_) => panic!("{url} was admitted"),
        Err(WsError::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            (
                response.status().as_u16(),
                String::from_utf8(body).expect("body is UTF-8"),
            )
        }
        Err(e) => panic!("{url}: expected an HTTP refusal, got {e}"),
    }
}

/// Closes the client side and waits until the gateway has dropped the
/// connection (its close reply, then EOF on the socket): by then the
/// session is gone from the router and its connection slot is free.
async fn leave(mut ws: Ws) {
    ws.close(None).await.expect("send close");
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close reply in time")
        {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => continue,
        }
    }
    let MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        panic!("tests use plain ws");
    };
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("EOF in time")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

// ---------------------------------------------------------------- names

#[tokio::test]
async fn names_from_origin_utf8_latin1_and_query() {
    let gw = start("").await;
    // Raw UTF-8 Origin bytes are taken as UTF-8.
    let mut c1 = connect(&gw, "C1我是客户端").await;
    // A byte that is not UTF-8 is Latin-1: 0xE9 is é.
    let mut jose = connect_origin(&gw, b"Jos\xE9").await;
    // ?name= (percent-encoded UTF-8) wins over Origin.
    let mut c2 = connect_query(&gw, "C2我是客户端", Some(b"ignored-origin")).await;
    // Form encoding: `+` is a space, `%2B` a plus.
    let url = gw.url("/?x=1&name=a+b%2Bc&y=2");
    let mut plus = try_connect(&url, None).await.expect("connect a b+c");

    let expected = ["C1我是客户端", "C2我是客户端", "José", "a b+c"];
    assert_eq!(list(&mut c1).await, expected);
    assert_eq!(list(&mut plus).await, expected);

    // src is the name the gateway knows, in every direction.
    assert_private(&mut jose, "José", &mut c1, "C1我是客户端").await;
    assert_private(&mut c1, "C1我是客户端", &mut jose, "José").await;
    assert_private(&mut c2, "C2我是客户端", &mut plus, "a b+c").await;
    assert_private(&mut plus, "a b+c", &mut c2, "C2我是客户端").await;

    // Raw UTF-8 and ?name= names are exact, never provisional.
    let rows = gw.operator().clients().await.expect("clients");
    let mut names: Vec<(String, bool)> =
        rows.into_iter().map(|r| (r.name, r.provisional)).collect();
    names.sort();
    let expected: Vec<(String, bool)> = expected.iter().map(|n| (n.to_string(), false)).collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn name_length_is_counted_in_utf8_bytes() {
    let gw = start("").await;
    let ascii = "x".repeat(128);
    let accented = "é".repeat(64); // 128 bytes of UTF-8
    let mut a = connect(&gw, &ascii).await;
    let mut b = connect_query(&gw, &accented, None).await;
    assert_private(&mut a, &ascii, &mut b, &accented).await;

    let too_long = "x".repeat(129);
    let too_long_utf8 = format!("{accented}y");
    let mut failures = Failures::new();
    for (case, origin) in [
        ("Origin of 129 ASCII bytes", too_long.as_bytes()),
        (
            "Origin of 64 é and a y (129 UTF-8 bytes)",
            too_long_utf8.as_bytes(),
        ),
    ] {
        let request = upgrade_request("/", &[("Origin", origin)]);
        if let Some((status, body)) = failures.catch(case, http_raw(gw.ws, &request)).await {
            failures.check_eq(
                case,
                (status, body.as_str()),
                (400, "name is longer than 128 bytes\n"),
                "",
            );
        }
    }
    failures.assert_none();
    assert_eq!(
        refused(&gw.url(&format!("/?name={too_long}")), None).await,
        (400, "name is longer than 128 bytes\n".to_owned())
    );
    assert_eq!(list(&mut b).await, [ascii.as_str(), accented.as_str()]);
}

// ------------------------------------------------------------ refusals

#[tokio::test]
async fn handshake_refusals_have_a_status_and_a_one_line_reason() {
    let gw = start("").await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    const MISSING: &str = "missing name: send an Origin header or a ?name= query parameter\n";
    const RESERVED: &str = "names starting with '@' are reserved for the gateway\n";
    const CONTROL: &str = "name contains a control character\n";
    const ENCODING: &str = "name is not valid percent-encoded UTF-8\n";
    const BLANK: &str =
        "name starts or ends with whitespace, or holds whitespace other than a plain space\n";
    const NOT_WS: &str = "this is a WebSocket endpoint: connect with a WebSocket client\n";
    let wrong_version = String::from_utf8(upgrade_request("/", &[("Origin", b"v")]))
        .unwrap()
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "no Origin, no ?name=",
            upgrade_request("/", &[]),
            400,
            MISSING,
        ),
        (
            "no name in the query",
            upgrade_request("/?x=1", &[]),
            400,
            MISSING,
        ),
        (
            "empty Origin",
            upgrade_request("/", &[("Origin", b"")]),
            400,
            MISSING,
        ),
        (
            "empty ?name= beats Origin",
            upgrade_request("/?name=", &[("Origin", b"x")]),
            400,
            MISSING,
        ),
        (
            "@gateway",
            upgrade_request("/", &[("Origin", b"@gateway")]),
            400,
            RESERVED,
        ),
        (
            "@x",
            upgrade_request("/", &[("Origin", b"@x")]),
            400,
            RESERVED,
        ),
        (
            "?name=%40server",
            upgrade_request("/?name=%40server", &[]),
            400,
            RESERVED,
        ),
        (
            "tab in Origin",
            upgrade_request("/", &[("Origin", b"a\tb")]),
            400,
            CONTROL,
        ),
        (
            "BEL in ?name=",
            upgrade_request("/?name=a%07b", &[]),
            400,
            CONTROL,
        ),
        (
            "Latin-1 C1 control (NEL) in Origin",
            upgrade_request("/", &[("Origin", b"Jos\x85")]),
            400,
            CONTROL,
        ),
        (
            "?name=%FF",
            upgrade_request("/?name=%FF", &[("Origin", b"x")]),
            400,
            ENCODING,
        ),
        (
            "?name=+@gateway (a leading space)",
            upgrade_request("/?name=+@gateway", &[]),
            400,
            BLANK,
        ),
        (
            // (In Origin, HTTP drops the space: it is not part of the value.)
            "trailing space in ?name=",
            upgrade_request("/?name=alice%20", &[]),
            400,
            BLANK,
        ),
        (
            "no-break space inside",
            upgrade_request("/?name=ali%C2%A0ce", &[]),
            400,
            BLANK,
        ),
        (
            "zero-width space beside alice",
            upgrade_request("/?name=ali%E2%80%8Bce", &[]),
            400,
            "name contains the invisible formatting character U+200B\n",
        ),
        (
            "right-to-left override",
            upgrade_request("/?name=%E2%80%AEecila", &[]),
            400,
            "name contains the invisible formatting character U+202E\n",
        ),
        (
            "a room's name",
            upgrade_request("/?name=%23general", &[]),
            400,
            "names starting with '#' are taken for rooms\n",
        ),
        (
            "plain GET",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nOrigin: x\r\n\r\n".to_vec(),
            426,
            NOT_WS,
        ),
        (
            "health check on the ws listener",
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            200,
            "ok\n",
        ),
        (
            "POST",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
            "only GET is served here\n",
        ),
        (
            "POST with upgrade headers",
            String::from_utf8(upgrade_request("/", &[("Origin", b"p")]))
                .unwrap()
                .replacen("GET", "POST", 1)
                .into_bytes(),
            405,
            "only GET is served here\n",
        ),
        (
            "Sec-WebSocket-Version: 8",
            wrong_version.into_bytes(),
            426,
            "unsupported WebSocket version: use 13\n",
        ),
    ];
    let mut failures = Failures::new();
    for (what, request, status, body) in cases {
        if let Some(got) = failures.catch(what, http_raw(gw.ws, &request)).await {
            failures.check_eq(what, got, (status, body.to_owned()), "");
        }
    }
    failures.assert_none();

    // A real WebSocket client sees the same answer.
    assert_eq!(refused(&gw.url("/"), None).await, (400, MISSING.to_owned()));
    assert_eq!(
        refused(&gw.url("/"), Some(b"@gateway")).await,
        (400, RESERVED.to_owned())
    );

    // Nobody was admitted by any of it, and the others were unaffected.
    assert_private(&mut alice, "alice", &mut bob, "bob").await;
    assert_eq!(list(&mut bob).await, ["alice", "bob"]);
}

#[tokio::test]
async fn path_prefix_of_the_listener() {
    let gw = start_config(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\npath = \"/chat\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
    )
    .await;
    // The prefix itself and anything under it.
    let mut a = try_connect(&gw.url("/chat"), Some(b"a"))
        .await
        .expect("/chat");
    let mut b = try_connect(&gw.url("/chat/sub"), Some(b"b"))
        .await
        .expect("/chat/sub");
    let mut c = try_connect(&gw.url("/chat/?name=c"), None)
        .await
        .expect("/chat/?name=c");

    let mut failures = Failures::new();
    for path in ["/", "/other", "/chatter", "/cha", "/other?name=x"] {
        let request = upgrade_request(path, &[("Origin", b"z")]);
        let Some((status, body)) = failures.catch(path, http_raw(gw.ws, &request)).await else {
            continue;
        };
        let shown = path.split('?').next().unwrap();
        failures.check_eq(path, status, 404, "status");
        failures.check_eq(
            path,
            body,
            format!("no WebSocket endpoint at {shown} (this listener serves /chat)\n"),
            "body",
        );
    }
    failures.assert_none();
    assert_eq!(
        refused(&gw.url("/elsewhere"), Some(b"z")).await,
        (
            404,
            "no WebSocket endpoint at /elsewhere (this listener serves /chat)\n".to_owned()
        )
    );
    // The health check answers whatever the prefix.
    assert_eq!(
        http_raw(gw.ws, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await,
        (200, "ok\n".to_owned())
    );

    assert_private(&mut a, "a", &mut b, "b").await;
    assert_private(&mut b, "b", &mut c, "c").await;
    assert_eq!(list(&mut a).await, ["a", "b", "c"]);
}

// ---------------------------------------------------------- duplicates

#[tokio::test]
async fn duplicate_is_rejected_by_default() {
    let gw = start("").await;
    let mut first = connect(&gw, "dup").await;
    let mut other = connect(&gw, "other").await;

    let (status, body) = http_raw(gw.ws, &upgrade_request("/", &[("Origin", b"dup")])).await;
    assert_eq!(
        (status, body.as_str()),
        (409, "name already connected: dup\n")
    );
    assert_eq!(
        refused(&gw.url("/?name=dup"), None).await,
        (409, "name already connected: dup\n".to_owned())
    );

    // Latin-1 and UTF-8 spellings of one name are one name.
    let mut jose = connect_origin(&gw, b"Jos\xE9").await;
    assert_eq!(
        refused(&gw.url("/"), Some("José".as_bytes())).await,
        (409, "name already connected: José\n".to_owned())
    );

    // The first sessions are unaffected.
    assert_private(&mut other, "other", &mut first, "dup").await;
    assert_private(&mut other, "other", &mut jose, "José").await;
    assert_eq!(list(&mut first).await, ["José", "dup", "other"]);

    // Once the first has gone, the name is free again.
    leave(first).await;
    let mut second = connect(&gw, "dup").await;
    assert_private(&mut other, "other", &mut second, "dup").await;
}

#[tokio::test]
async fn duplicate_replaces_the_old_session() {
    let gw = start("[routing]\non_duplicate = \"replace\"\n").await;
    let mut old = connect(&gw, "dup").await;
    let mut other = connect(&gw, "other").await;
    let mut new = connect(&gw, "dup").await;

    let (code, reason, texts) = recv_close(&mut old).await;
    assert_eq!((code, reason.as_str()), (4000, "replaced"));
    assert!(texts.is_empty(), "{texts:?}");

    assert_private(&mut other, "other", &mut new, "dup").await;
    assert_private(&mut new, "dup", &mut other, "other").await;
    assert_eq!(list(&mut other).await, ["dup", "other"]);
    let rows = gw.operator().clients().await.expect("clients");
    assert_eq!(rows.len(), 2, "{rows:?}");
}

#[tokio::test]
async fn duplicate_allowed_reaches_every_session_of_the_name() {
    let gw = start("[routing]\non_duplicate = \"allow\"\n").await;
    let mut d1 = connect(&gw, "dup").await;
    let mut d2 = connect(&gw, "dup").await;
    let mut sender = connect(&gw, "sender").await;

    send_json(&mut sender, &json!({"dst":"dup","msg":"to both"})).await;
    for d in [&mut d1, &mut d2] {
        assert_eq!(
            recv_json(d).await,
            json!({"src":"sender","dst":"dup","msg":"to both"})
        );
    }
    assert_eq!(gw.operator().send("dup", "operator").await.unwrap(), 2);
    for d in [&mut d1, &mut d2] {
        assert_eq!(recv_text(d).await, "operator");
    }
    // The name is listed once, though two sessions carry it.
    assert_eq!(list(&mut sender).await, ["dup", "sender"]);
    let rows = gw.operator().clients().await.expect("clients");
    assert_eq!(rows.iter().filter(|r| r.name == "dup").count(), 2);
    // Either session speaks as "dup".
    assert_private(&mut d2, "dup", &mut sender, "sender").await;
}

// ------------------------------------------------- Qt provisional names

#[tokio::test]
async fn qt_clients_with_chinese_names_talk_privately() {
    let gw = start("").await;
    let mut c1 = connect_origin(&gw, C1_QT).await;
    let mut c2 = connect_origin(&gw, C2_QT).await;
    assert_eq!(list(&mut c1).await, ["C1?????", "C2?????"]);
    let rows = gw.operator().clients().await.expect("clients");
    assert!(rows.iter().all(|r| r.provisional), "{rows:?}");

    // Exactly what the Qt client writes: its full name in src.
    send_text(
        &mut c1,
        r#"{"src":"C1我是客户端","dst":"C2我是客户端","msg":"你好"}"#,
    )
    .await;
    // C1 took its full name; the message reached C2 through the provisional rule.
    assert_eq!(
        recv_json(&mut c2).await,
        json!({"src":"C1我是客户端","dst":"C2我是客户端","msg":"你好"})
    );
    assert_eq!(list(&mut c2).await, ["C1我是客户端", "C2?????"]);

    send_text(
        &mut c2,
        r#"{"src":"C2我是客户端","dst":"C1我是客户端","msg":"hi"}"#,
    )
    .await;
    assert_eq!(
        recv_json(&mut c1).await,
        json!({"src":"C2我是客户端","dst":"C1我是客户端","msg":"hi"})
    );
    assert_eq!(list(&mut c1).await, ["C1我是客户端", "C2我是客户端"]);

    let rows = gw.operator().clients().await.expect("clients");
    let mut names: Vec<(String, bool)> =
        rows.into_iter().map(|r| (r.name, r.provisional)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("C1我是客户端".to_owned(), false),
            ("C2我是客户端".to_owned(), false)
        ]
    );

    // A full name is taken once: another name with the same substitution
    // does not rename again.
    send_text(
        &mut c1,
        r#"{"src":"C1另一个名字","dst":"C2我是客户端","msg":"again"}"#,
    )
    .await;
    assert_eq!(recv_json(&mut c2).await["src"], "C1我是客户端");
    assert_eq!(list(&mut c1).await, ["C1我是客户端", "C2我是客户端"]);
}

#[tokio::test]
async fn same_provisional_name_twice_is_admitted() {
    let gw = start("").await;
    let mut a = connect_origin(&gw, b"C3?????").await;
    let mut b = connect_origin(&gw, b"C3?????").await;
    let mut bob = connect(&gw, "bob").await;
    assert_eq!(list(&mut bob).await, ["C3?????", "bob"]);

    // Two provisional matches: the full name reaches nobody.
    send_json(&mut bob, &json!({"dst":"C3我是客户端","msg":"which?"})).await;
    let notice = recv_json(&mut bob).await;
    assert_eq!(notice["type"], "error");
    assert_eq!(notice["msg"], "recipient not connected: C3我是客户端");
    assert!(matches!(
        gw.operator().send("C3我是客户端", "which?").await,
        Err(OperatorError::NotConnected(_))
    ));
    // The provisional name itself reaches both.
    send_json(&mut bob, &json!({"dst":"C3?????","msg":"both"})).await;
    for ws in [&mut a, &mut b] {
        assert_eq!(recv_json(ws).await["msg"], "both");
    }

    // The first to speak takes the full name; the other cannot.
    send_text(&mut a, r#"{"src":"C3我是客户端","dst":"bob","msg":"1"}"#).await;
    assert_eq!(recv_json(&mut bob).await["src"], "C3我是客户端");
    send_text(&mut b, r#"{"src":"C3我是客户端","dst":"bob","msg":"2"}"#).await;
    assert_eq!(recv_json(&mut bob).await["src"], "C3?????");
    assert_eq!(list(&mut bob).await, ["C3?????", "C3我是客户端", "bob"]);
    // Now the full name reaches exactly the session that took it.
    assert_private(&mut bob, "bob", &mut a, "C3我是客户端").await;
    assert_private(&mut bob, "bob", &mut b, "C3?????").await;
}

#[tokio::test]
async fn src_that_does_not_match_the_substitution_does_not_rename() {
    let gw = start("").await;
    let mut c4 = connect_origin(&gw, b"C4?????").await;
    let mut bob = connect(&gw, "bob").await;
    let mut failures = Failures::new();
    for src in [
        json!("someone-else"),
        json!("C4?????"),
        json!("C4我是客户"),    // one character short
        json!("C4我是客户端!"), // one too many
        json!("c4我是客户端"),  // Latin-1 part differs
        json!("C4éééééé"),      // é is Latin-1: Qt would not write ?
        json!(42),
        json!(null),
    ] {
        let case = format!("src {src}");
        let delivered = failures
            .catch(&case, async {
                send_json(&mut c4, &json!({"src": src, "dst":"bob","msg":"x"})).await;
                recv_json(&mut bob).await
            })
            .await;
        if let Some(got) = delivered {
            failures.check_eq(&case, &got["src"], "C4?????", "src as delivered");
        }
    }
    failures.assert_none();
    send_json(&mut c4, &json!({"dst":"bob","msg":"no src"})).await;
    assert_eq!(recv_json(&mut bob).await["src"], "C4?????");
    assert_eq!(list(&mut bob).await, ["C4?????", "bob"]);
    // Still provisional: the right full name is still taken.
    send_text(&mut c4, r#"{"src":"C4我是客户端","dst":"bob","msg":"y"}"#).await;
    assert_eq!(recv_json(&mut bob).await["src"], "C4我是客户端");
}

#[tokio::test]
async fn characters_outside_the_bmp_are_two_question_marks() {
    let gw = start("").await;
    let mut emoji = connect_origin(&gw, b"C5??").await;
    let mut bob = connect(&gw, "bob").await;
    // One emoji is one `?` short of the provisional name: no rename.
    send_text(&mut emoji, r#"{"src":"C5😀😀","dst":"bob","msg":"x"}"#).await;
    assert_eq!(recv_json(&mut bob).await["src"], "C5??");
    send_text(&mut emoji, r#"{"src":"C5😀","dst":"bob","msg":"y"}"#).await;
    assert_eq!(recv_json(&mut bob).await["src"], "C5😀");
    assert_eq!(list(&mut bob).await, ["C5😀", "bob"]);
}

#[tokio::test]
async fn provisional_name_does_not_take_a_connected_full_name() {
    let gw = start("").await;
    let mut exact = connect_query(&gw, "C6我是客户端", None).await;
    let mut qt = connect_origin(&gw, b"C6?????").await;
    let mut bob = connect(&gw, "bob").await;
    send_text(&mut qt, r#"{"src":"C6我是客户端","dst":"bob","msg":"x"}"#).await;
    assert_eq!(recv_json(&mut bob).await["src"], "C6?????");
    assert_eq!(list(&mut bob).await, ["C6?????", "C6我是客户端", "bob"]);
    // The full name reaches the exact session only.
    assert_private(&mut bob, "bob", &mut exact, "C6我是客户端").await;
    assert_private(&mut bob, "bob", &mut qt, "C6?????").await;

    // The duplicate policy still holds between a provisional claim and an
    // exact session of the same name.
    let _exact_marks = connect_query(&gw, "C8?????", None).await;
    assert_eq!(
        refused(&gw.url("/"), Some(b"C8?????")).await,
        (409, "name already connected: C8?????\n".to_owned())
    );
}

#[tokio::test]
async fn operator_reaches_a_still_provisional_session_by_its_full_name() {
    let gw = start("").await;
    let mut c7 = connect_origin(&gw, b"C7?????").await;
    let operator = gw.operator();
    assert_eq!(
        operator
            .send("C7我是客户端", "from the operator")
            .await
            .unwrap(),
        1
    );
    assert_eq!(recv_text(&mut c7).await, "from the operator");
    // Not renamed by this.
    assert_eq!(list(&mut c7).await, ["C7?????"]);
    // A full name with no provisional match is not connected.
    assert!(matches!(
        operator.send("C9我是客户端", "nobody").await,
        Err(OperatorError::NotConnected(_))
    ));
}

// --------------------------------------------------------------- limits

#[tokio::test]
async fn over_max_connections_is_503_until_a_slot_frees() {
    let gw = start("[limits]\nmax_connections = 2\n").await;
    let mut a = connect(&gw, "a").await;
    let b = connect(&gw, "b").await;

    let (status, body) = http_raw(gw.ws, &upgrade_request("/", &[("Origin", b"c")])).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "too many connections: try again later\n")
    );
    assert_eq!(
        refused(&gw.url("/"), Some(b"c")).await,
        (503, "too many connections: try again later\n".to_owned())
    );

    leave(b).await;
    let mut c = connect(&gw, "c").await;
    assert_private(&mut a, "a", &mut c, "c").await;
    assert_private(&mut c, "c", &mut a, "a").await;
    assert_eq!(list(&mut a).await, ["a", "c"]);
}

/// A load balancer's health check must see a full listener as unhealthy.
#[tokio::test]
async fn health_check_of_a_full_listener_is_503() {
    let gw = start("[limits]\nmax_connections = 1\n").await;
    let health = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n";
    assert_eq!(http_raw(gw.ws, health).await, (200, "ok\n".to_owned()));
    let a = connect(&gw, "a").await;
    assert_eq!(
        http_raw(gw.ws, health).await,
        (503, "too many connections: try again later\n".to_owned())
    );
    leave(a).await;
    assert_eq!(http_raw(gw.ws, health).await, (200, "ok\n".to_owned()));
}

// ------------------------------------------------------------ listeners

#[tokio::test]
async fn several_listeners_feed_one_router() {
    let gw = start_config(
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
    )
    .await;
    let names: Vec<&str> = gw.listeners.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let (addr_a, addr_b) = (gw.listeners[0].1, gw.listeners[1].1);
    assert_ne!(addr_a, addr_b);

    let mut on_a = try_connect(&format!("ws://{addr_a}/"), Some(b"on-a"))
        .await
        .expect("connect to a");
    let mut on_b = try_connect(&format!("ws://{addr_b}/"), Some(b"on-b"))
        .await
        .expect("connect to b");
    assert_private(&mut on_a, "on-a", &mut on_b, "on-b").await;
    assert_private(&mut on_b, "on-b", &mut on_a, "on-a").await;

    // One name space across listeners.
    assert_eq!(
        refused(&format!("ws://{addr_b}/"), Some(b"on-a")).await,
        (409, "name already connected: on-a\n".to_owned())
    );

    let mut rows: Vec<(String, String, bool)> = gw
        .operator()
        .clients()
        .await
        .expect("clients")
        .into_iter()
        .map(|r| {
            assert!(r.remote.starts_with("127.0.0.1:"), "{r:?}");
            (r.name, r.listener, r.tls)
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("on-a".to_owned(), "a".to_owned(), false),
            ("on-b".to_owned(), "b".to_owned(), false)
        ]
    );
}
