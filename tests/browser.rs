//! The chat page and the operator console in a real headless Chromium
//! (Debian's `chromium`; `.ci/run` installs it, and with `CI=true` a
//! missing browser fails these tests). The browser is driven over the
//! DevTools protocol (tests/common/browser.rs): it types, clicks, and the
//! tests read what the pages show.
//!
//! Screenshots of both pages are taken at 1280x800 into
//! `$WSSGATE_SCREENSHOTS` (the README's are made with
//! `WSSGATE_SCREENSHOTS=docs/screenshots cargo test --test browser`), else
//! into the test's temporary target directory.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::path::{Path, PathBuf};

use browser::{Browser, Page, chromium_binary};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wssgate_client::{ClientStream, ClientTls, ConnectOptions, ServerTrust, connect};

const ADMIN_TOKEN: &str = "console-test-token-0123456789";

/// A gateway whose ws listener serves the chat page, plus `extra` TOML.
async fn chat_gateway(extra: &str) -> Gateway {
    start_config(&format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\nweb = true\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n{extra}"
    ))
    .await
}

fn screenshot_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("WSSGATE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
    dir.join(name)
}

/// Types `name` into the chat page, connects, and waits for the page to
/// say it is connected.
async fn join_chat(page: &Page<'_>, name: &str) {
    page.fill("#name", name).await;
    page.click("#connect").await;
    page.wait_for(
        "document.querySelector('#status').dataset.state === 'open'",
        &format!("{name} connected"),
    )
    .await;
    let status = page.text("#status").await;
    assert!(status.contains(&format!("connected as {name}")), "{status}");
}

/// Sends a `/list #room` from the page and waits for its answer to name
/// `count` members: the page's earlier requests (a join) were handled.
async fn room_barrier(page: &Page<'_>, room: &str, count: usize) {
    page.enter("#input", &format!("/list {room}")).await;
    page.wait_for_text("#log li[data-kind=notice]", &format!("{count} in {room}"))
        .await;
}

/// A selector for log entries of `kind` from `from`.
fn entries(kind: &str, from: &str) -> String {
    format!("#log li[data-kind={kind}][data-from={}]", json!(from))
}

async fn assert_no_csp_violations(page: &Page<'_>, what: &str) {
    let violations = page.csp_violations().await;
    assert!(
        violations.is_empty(),
        "{what}: CSP violations {violations:?}"
    );
}

/// A `wssgate-client` connection (the library the binary is made of).
async fn client(url: String, name: &str, trust: ServerTrust) -> ClientStream {
    let opts = ConnectOptions {
        url,
        name: name.to_owned(),
        tls: ClientTls {
            trust,
            identity: None,
        },
        known_hosts: PathBuf::new(),
        token: None,
    };
    let (ws, _) = tokio::time::timeout(WAIT, connect(&opts))
        .await
        .expect("connect in time")
        .expect("client connects");
    ws
}

/// The next text frame a client receives, as JSON.
async fn next_json(ws: &mut ClientStream) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame ok");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap_or(Value::String(text.to_string()));
        }
    }
}

#[tokio::test]
async fn two_chat_pages_talk_privately_and_in_a_room() {
    let Some(chromium) = chromium_binary() else {
        return;
    };
    let gw = chat_gateway("[routing]\npresence = true\n").await;
    let browser = Browser::launch(&chromium, |_| {}).await;
    let url = format!("http://{}/", gw.ws);
    let alice = browser.open(&url).await;
    let bob = browser.open(&url).await;
    join_chat(&alice, "alice").await;
    join_chat(&bob, "bob").await;
    // Presence fills the list of who is connected.
    alice
        .wait_for(
            "document.querySelector('#who li[data-name=\"bob\"]')",
            "bob listed",
        )
        .await;

    alice.enter("#input", "@bob hello bob").await;
    let got = bob
        .wait_for_text(&entries("private", "alice"), "hello bob")
        .await;
    assert!(got.contains("alice"), "{got}");
    alice
        .wait_for_text("#log li[data-kind=sent]", "hello bob")
        .await;

    alice.enter("#input", "/join #lobby").await;
    room_barrier(&alice, "#lobby", 1).await;
    bob.enter("#input", "/join lobby").await;
    room_barrier(&bob, "#lobby", 2).await;
    for page in [&alice, &bob] {
        page.wait_for(
            "document.querySelector('#rooms li[data-room=\"#lobby\"]')",
            "#lobby listed",
        )
        .await;
    }
    alice.enter("#input", "#lobby hi room").await;
    let got = bob
        .wait_for_text(
            "#log li[data-kind=room][data-from=alice][data-room=\"#lobby\"]",
            "hi room",
        )
        .await;
    assert!(got.contains("#lobby"), "{got}");
    bob.enter("#input", "#lobby hi alice").await;
    alice
        .wait_for_text("#log li[data-kind=room][data-from=bob]", "hi alice")
        .await;

    // An unknown recipient: the error notice is shown as one.
    bob.enter("#input", "@nobody are you there").await;
    let error = bob
        .wait_for_text(
            "#log li[data-kind=error]",
            "recipient not connected: nobody",
        )
        .await;
    assert!(!error.is_empty());

    bob.screenshot(&screenshot_path("chat.png")).await;
    assert_no_csp_violations(&alice, "alice").await;
    assert_no_csp_violations(&bob, "bob").await;
    browser.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn a_chat_page_and_a_wssgate_client_talk_and_markup_stays_text() {
    let Some(chromium) = chromium_binary() else {
        return;
    };
    let gw = chat_gateway("").await;
    let browser = Browser::launch(&chromium, |_| {}).await;
    let page = browser.open(&format!("http://{}/", gw.ws)).await;
    let name = "我是客户端";
    join_chat(&page, name).await;
    let mut cli = client(gw.url("/"), "cli", ServerTrust::SystemRoots).await;

    page.enter("#input", "@cli 你好 from the page").await;
    let got = next_json(&mut cli).await;
    assert_eq!(got["src"], name, "{got}");
    assert_eq!(got["msg"], "你好 from the page", "{got}");

    let markup = r#"<img src=x onerror="window.__xss=1"><b>bold</b>"#;
    cli.send(Message::text(
        json!({"dst": name, "msg": markup}).to_string(),
    ))
    .await
    .expect("client sends");
    let shown = page.wait_for_text(&entries("private", "cli"), markup).await;
    assert!(shown.contains(markup), "{shown}");
    assert_eq!(
        page.eval("document.querySelectorAll('#log img, #log b').length")
            .await,
        0
    );
    assert_eq!(page.eval("typeof window.__xss").await, "undefined");

    // A non-ASCII name round-trips through the operator's view too.
    let names: Vec<String> = gw
        .operator()
        .clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(names.contains(&name.to_owned()), "{names:?}");
    assert_no_csp_violations(&page, "page").await;
    browser.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn the_console_logs_in_shows_clients_live_sends_broadcasts_and_kicks() {
    let Some(chromium) = chromium_binary() else {
        return;
    };
    let gw = chat_gateway(&format!("token = \"{ADMIN_TOKEN}\"\n")).await;
    let browser = Browser::launch(&chromium, |_| {}).await;
    let console = browser.open(&format!("http://{}/", gw.admin)).await;

    // Without the token: the login form and nothing else.
    console
        .wait_for("!document.querySelector('#login').hidden", "the login form")
        .await;
    assert_eq!(
        console
            .eval("document.querySelector('#console').hidden")
            .await,
        true
    );
    console.fill("#admin-token", "wrong-token-0123456789").await;
    console.click("#login-button").await;
    console
        .wait_for(
            "document.querySelector('#login-error').textContent.trim() !== ''",
            "a login error",
        )
        .await;
    assert_eq!(
        console
            .eval("document.querySelector('#console').hidden")
            .await,
        true
    );
    console.fill("#admin-token", ADMIN_TOKEN).await;
    console.click("#login-button").await;
    console
        .wait_for(
            "document.querySelector('#stream-state').dataset.state === 'live'",
            "the live event stream",
        )
        .await;
    assert_eq!(
        console
            .eval("document.querySelector('#login').hidden")
            .await,
        true
    );
    // The token is this tab's, never in the address.
    let href = console.eval("location.href").await;
    assert!(
        !href.as_str().unwrap_or_default().contains(ADMIN_TOKEN),
        "{href}"
    );

    // A client appears live.
    let chat = browser.open(&format!("http://{}/", gw.ws)).await;
    join_chat(&chat, "carol").await;
    console
        .wait_for(
            "document.querySelector('#clients tr[data-name=\"carol\"]')",
            "carol's row",
        )
        .await;
    let row = console.text("#clients tr[data-name=\"carol\"]").await;
    assert!(row.contains("ws") && row.contains("127.0.0.1"), "{row}");
    console
        .wait_for(
            "document.querySelector('[data-counter=clients]').textContent.trim() === '1'",
            "1 client counted",
        )
        .await;
    // No error yet: counted as 0 (the family is absent from /metrics).
    console
        .wait_for(
            "document.querySelector('[data-counter=errors]').textContent.trim() === '0'",
            "0 errors counted",
        )
        .await;

    // What the client says to the server reaches the console's log.
    chat.enter("#input", "hello operator").await;
    console
        .wait_for_text("#events li[data-type=message]", "hello operator")
        .await;

    // Send to one, broadcast.
    console
        .click("#clients tr[data-name=\"carol\"] button.message")
        .await;
    assert_eq!(
        console
            .eval("document.querySelector('#send-name').value")
            .await,
        "carol"
    );
    console.fill("#send-text", "from the console").await;
    console.click("#send-button").await;
    chat.wait_for_text("#log li[data-kind=server]", "from the console")
        .await;
    console.wait_for_text("#result", "1").await;
    console.fill("#broadcast-text", "to everyone").await;
    console.click("#broadcast-button").await;
    chat.wait_for_text("#log li[data-kind=server]", "to everyone")
        .await;

    console.screenshot(&screenshot_path("console.png")).await;

    // Kick: the page shows the code and the operator's reason, and the row goes.
    console
        .click("#clients tr[data-name=\"carol\"] button.kick")
        .await;
    assert_eq!(
        console
            .eval("document.querySelector('#kick-name').value")
            .await,
        "carol"
    );
    console.fill("#kick-reason", "bye now").await;
    console.click("#kick-button").await;
    let status = chat.wait_for_text("#status", "kicked: bye now").await;
    assert!(status.contains("4001"), "{status}");
    chat.wait_for_text("#log li[data-kind=close]", "kicked: bye now")
        .await;
    console
        .wait_for(
            "!document.querySelector('#clients tr[data-name=\"carol\"]')",
            "carol's row removed",
        )
        .await;
    console
        .wait_for_text("#events li[data-type=disconnect]", "4001 kicked: bye now")
        .await;
    // A kicked page does not reconnect by itself.
    assert!(
        gw.operator_with(ADMIN_TOKEN)
            .clients()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        chat.eval("document.querySelector('#status').dataset.state")
            .await,
        "closed"
    );

    assert_no_csp_violations(&console, "console").await;
    assert_no_csp_violations(&chat, "chat").await;
    browser.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn the_chat_page_reconnects_after_the_gateway_comes_back() {
    let Some(chromium) = chromium_binary() else {
        return;
    };
    let first = chat_gateway("").await;
    let addr = first.ws;
    let browser = Browser::launch(&chromium, |_| {}).await;
    let page = browser.open(&format!("http://{addr}/")).await;
    join_chat(&page, "fay").await;
    page.enter("#input", "/join #back").await;
    room_barrier(&page, "#back", 1).await;

    first.stop().await;
    let status = page
        .wait_for_text("#status", "1001 gateway shutting down")
        .await;
    page.wait_for(
        "document.querySelector('#status').dataset.state === 'reconnecting'",
        "the page to wait before reconnecting",
    )
    .await;
    assert!(status.contains("reconnecting"), "{status}");

    // The same address again: the page comes back by itself, rooms too.
    let second = start_config(&format!(
        "[[listener]]\nname = \"ws\"\nbind = \"{addr}\"\nweb = true\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n"
    ))
    .await;
    page.wait_for(
        "document.querySelector('#status').dataset.state === 'open'",
        "the page to reconnect",
    )
    .await;
    let mut probe = common::connect(&second, "probe").await;
    send_json(
        &mut probe,
        &json!({"type": "list", "room": "#back", "id": 1}),
    )
    .await;
    let reply = recv_json(&mut probe).await;
    assert_eq!(reply["names"], json!(["fay"]), "{reply}");
    browser.close().await;
    second.stop().await;
}

#[tokio::test]
async fn the_console_of_a_cluster_node_shows_every_nodes_clients_and_their_node() {
    let Some(chromium) = chromium_binary() else {
        return;
    };
    let Some(redis) = redis_server::Redis::start().await else {
        return;
    };
    let node = |id: &str| {
        format!(
            "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
             [cluster]\nredis = {:?}\nnode_id = \"{id}\"\n",
            redis.url()
        )
    };
    let n1 = start_config(&node("n1")).await;
    let n2 = start_config(&node("n2")).await;
    let browser = Browser::launch(&chromium, |_| {}).await;
    let console = browser.open(&format!("http://{}/", n1.admin)).await;
    console
        .wait_for(
            "document.querySelector('#stream-state').dataset.state === 'live'",
            "the live event stream",
        )
        .await;
    let _here = common::connect(&n1, "here").await;
    let _there = common::connect(&n2, "there").await;
    // The client on the other node shows up (the table of a cluster is
    // reloaded), each with its node.
    let node_of = |name: &str| {
        format!(
            "(document.querySelector('#clients tr[data-name=\"{name}\"] td.node') || {{}}).textContent"
        )
    };
    console
        .wait_for(&format!("{} === 'n2'", node_of("there")), "there on n2")
        .await;
    console
        .wait_for(&format!("{} === 'n1'", node_of("here")), "here on n1")
        .await;
    let shown = console
        .eval("getComputedStyle(document.querySelector('#clients th.node-col')).display")
        .await;
    assert_ne!(shown, "none", "the node column shows for a cluster");
    browser.close().await;
    n1.stop().await;
    n2.stop().await;
}

/// The NSS tool that puts a CA into a user's certificate database, or
/// `None` outside CI when it is missing.
fn certutil() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|dir| dir.join("certutil"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "certutil is not installed; CI needs it (.ci/run installs libnss3-tools)"
        );
        eprintln!("skipped: certutil is not installed (Debian: apt-get install libnss3-tools)");
    }
    found
}

/// Trusts `ca` in the NSS database under `home`, as a user does with
/// `certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n NAME -i ca.pem`.
fn trust_in_nss(certutil: &Path, home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb directory");
    let db = format!("sql:{}", db.display());
    for args in [
        vec!["-N", "-d", &db, "--empty-password"],
        vec![
            "-A",
            "-d",
            &db,
            "-t",
            "C,,",
            "-n",
            "wssgate development CA",
            "-i",
            ca.to_str().expect("utf-8 path"),
        ],
    ] {
        let status = std::process::Command::new(certutil)
            .args(&args)
            .status()
            .expect("certutil runs");
        assert!(status.success(), "certutil {args:?}");
    }
}

#[tokio::test]
async fn the_chat_page_works_over_wss_with_the_dev_ca_trusted_in_nss() {
    let Some(chromium) = chromium_binary() else {
        return;
    };
    let Some(certutil) = certutil() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join("server.pem"),
        dir.path().join("server-key.pem"),
    );
    let ca = wssgate::certgen::ensure_dev_certs(&cert, &key)
        .unwrap()
        .expect("generated")
        .ca_cert;
    let gw = start_config(&format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listener]]\nname = \"wss\"\nbind = \"127.0.0.1:0\"\nmode = \"secure\"\n\
         cert = {cert:?}\nkey = {key:?}\nweb = true\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n"
    ))
    .await;
    let wss = gw.listeners.iter().find(|(n, _)| n == "wss").unwrap().1;
    let url = format!("https://localhost:{}/", wss.port());

    // Without the CA the browser refuses the page: trust is what changes.
    let untrusting = Browser::launch(&chromium, |_| {}).await;
    let tab = untrusting.open("about:blank").await;
    let error = tab.try_goto(&url).await;
    assert!(
        error.as_deref().is_some_and(|e| e.contains("CERT")),
        "an untrusted certificate must fail: {error:?}"
    );
    untrusting.close().await;

    let browser = Browser::launch(&chromium, |home| trust_in_nss(&certutil, home, &ca)).await;
    let page = browser.open(&url).await;
    assert_eq!(page.eval("location.protocol").await, "https:");
    join_chat(&page, "dana").await;
    // A ws client on the plain listener and the page on wss talk.
    let mut eve = client(gw.url("/"), "eve", ServerTrust::SystemRoots).await;
    page.enter("#input", "@eve over wss").await;
    let got = next_json(&mut eve).await;
    assert_eq!(
        (got["src"].as_str(), got["msg"].as_str()),
        (Some("dana"), Some("over wss"))
    );
    eve.send(Message::text(
        json!({"dst": "dana", "msg": "over ws"}).to_string(),
    ))
    .await
    .unwrap();
    page.wait_for_text(&entries("private", "eve"), "over ws")
        .await;
    let tls: Vec<bool> = gw
        .operator()
        .clients()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.name == "dana")
        .map(|c| c.tls)
        .collect();
    assert_eq!(tls, [true], "the page connected over wss");
    assert_no_csp_violations(&page, "wss page").await;
    browser.close().await;
    gw.stop().await;
}
