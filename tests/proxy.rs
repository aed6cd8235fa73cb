//! wssgate behind a proxy, without one: real sockets play the proxy. The
//! forwarding headers (`X-Forwarded-For`, `X-Real-IP`, `Forwarded`) are
//! believed only from a trusted peer and the rightmost untrusted hop wins;
//! PROXY protocol v1 and v2 headers written by hand, in front of HTTP and of
//! TLS, and refused where they do not belong; `allowed_origins`; and
//! `max_connections_per_address` counted per real address.
//!
//! Covered elsewhere, not repeated here: the listener's `path` prefix
//! (`/chat/x` accepted, `/other` 404) is `path_prefix_of_the_listener`, and a
//! plain GET (426) and `GET /healthz` (200) on a ws listener are in
//! `handshake_refusals_have_a_status_and_a_one_line_reason`, both in
//! `tests/identity.rs`. `tests/nginx.rs` runs the same paths through a real
//! nginx.

mod common;
#[path = "common/proxied.rs"]
mod proxied;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use proxied::*;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Config text: one listener named "ws" on port 0 with `listener` keys, an
/// admin API, and `extra` tables.
fn config(listener: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"ws\"\nbind = \"127.0.0.1:0\"\n{listener}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n{extra}"
    )
}

/// A WebSocket client named `name` (by `?name=`) on a plain TCP connection
/// that first wrote `before` (e.g. a PROXY header), with extra headers.
async fn ws_after(
    gw: &Gateway,
    before: &[u8],
    name: &str,
    headers: &[(&str, &str)],
) -> (wssgate_client::connect::ClientStream, SocketAddr) {
    let mut tcp = TcpStream::connect(gw.ws).await.expect("connect");
    let local = tcp.local_addr().expect("local address");
    tcp.write_all(before).await.expect("write PROXY header");
    let url = format!("ws://{}/?name={name}", gw.ws);
    let ws = upgrade(tcp, &url, headers)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (ws, local)
}

/// A WebSocket client named `name` with extra headers.
async fn ws_with(
    gw: &Gateway,
    name: &str,
    headers: &[(&str, &str)],
) -> (wssgate_client::connect::ClientStream, SocketAddr) {
    ws_after(gw, b"", name, headers).await
}

// ------------------------------------------------------ forwarding headers

/// A client's name, its request headers, and the `remote` the gateway
/// should show (empty: the client's own socket address).
type Case = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_a_trusted_peer() {
    let cases: [Case; 4] = [
        (
            "xff",
            &[("X-Forwarded-For", "203.0.113.7")],
            "203.0.113.7:0",
        ),
        ("xri", &[("X-Real-IP", "198.51.100.8")], "198.51.100.8:0"),
        (
            "fwd",
            &[("Forwarded", r#"for="[2001:db8::9]:4711";proto=https"#)],
            "[2001:db8::9]:4711",
        ),
        ("plain", &[], ""),
    ];

    // The TCP peer (127.0.0.1) is trusted: each header names the client.
    let gw = start_config(&config("trusted_proxies = [\"127.0.0.1/32\"]", "")).await;
    let mut events = subscribe_events(gw.operator()).await;
    let mut open = Vec::new();
    for (name, headers, expected) in cases {
        let (mut ws, local) = ws_with(&gw, name, headers).await;
        assert!(list_names(&mut ws).await.contains(&name.to_owned()));
        let expected = if expected.is_empty() {
            local.to_string()
        } else {
            expected.to_owned()
        };
        assert_eq!(remote_of(&gw, name).await, expected, "{name}");
        // The operator's event (and the log line beside it) say the same.
        let event = await_event(&mut events, |e| e["type"] == "connect" && e["name"] == name).await;
        assert_eq!(event["remote"], expected.as_str(), "{event}");
        open.push(ws);
    }

    // Trusting other networks only, or nobody (the default): the headers
    // are ignored and the client is the TCP peer.
    for trusted in ["trusted_proxies = [\"10.0.0.0/8\"]", ""] {
        let gw = start_config(&config(trusted, "")).await;
        for (name, headers, _) in cases {
            let (mut ws, local) = ws_with(&gw, name, headers).await;
            list_names(&mut ws).await;
            assert_eq!(
                remote_of(&gw, name).await,
                local.to_string(),
                "{trusted:?} {name}"
            );
        }
    }
}

#[tokio::test]
async fn a_listener_naming_its_header_ignores_the_others() {
    // nginx sets X-Forwarded-For; a client forged Forwarded and X-Real-IP,
    // and this proxy passes them on. With the header named, they are ignored.
    let gw = start_config(&config(
        "trusted_proxies = [\"127.0.0.1/32\"]\nforwarded_header = \"x-forwarded-for\"",
        "",
    ))
    .await;
    let forged = [
        ("Forwarded", "for=6.6.6.6"),
        ("X-Real-IP", "6.6.6.7"),
        ("X-Forwarded-For", "203.0.113.21"),
    ];
    let (mut ws, _) = ws_with(&gw, "named", &forged).await;
    list_names(&mut ws).await;
    assert_eq!(remote_of(&gw, "named").await, "203.0.113.21:0");
    // Without X-Forwarded-For the client is the proxy itself, not a forged header.
    let (mut ws2, local) = ws_with(&gw, "none", &forged[..2]).await;
    list_names(&mut ws2).await;
    assert_eq!(remote_of(&gw, "none").await, local.to_string());
    drop((ws, ws2));
    gw.stop().await;
}

#[tokio::test]
async fn the_rightmost_untrusted_hop_is_the_client() {
    let gw = start_config(&config(
        "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]",
        "",
    ))
    .await;
    let cases: [Case; 5] = [
        // The client wrote the leftmost entry; our proxies appended the rest.
        (
            "spoofed",
            &[("X-Forwarded-For", "6.6.6.6, 203.0.113.9, 10.1.2.3")],
            "203.0.113.9:0",
        ),
        // Two header lines are one list.
        (
            "two-lines",
            &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-For", "203.0.113.10"),
            ],
            "203.0.113.10:0",
        ),
        (
            "forwarded",
            &[(
                "Forwarded",
                "for=6.6.6.6, for=198.51.100.3;proto=https, for=10.0.0.5",
            )],
            "198.51.100.3:0",
        ),
        // Only trusted hops: the leftmost is as far as anyone can tell.
        (
            "all-trusted",
            &[("X-Forwarded-For", "10.0.0.1, 10.0.0.2")],
            "10.0.0.1:0",
        ),
        // Garbage hops are skipped, not believed.
        (
            "garbage",
            &[("X-Forwarded-For", "not-an-address, 203.0.113.11, unknown")],
            "203.0.113.11:0",
        ),
    ];
    let mut open = Vec::new();
    for (name, headers, expected) in cases {
        let (mut ws, _) = ws_with(&gw, name, headers).await;
        list_names(&mut ws).await;
        assert_eq!(remote_of(&gw, name).await, expected, "{name}");
        open.push(ws);
    }
}

// ------------------------------------------------------------ PROXY protocol

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY v2 header written by hand: `PROXY` with TCP addresses, or `LOCAL`
/// (`None`) with none.
fn proxy_v2(addresses: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    let Some((src, dst)) = addresses else {
        out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]); // v2 LOCAL, unspecified, 0 bytes
        return out;
    };
    let mut body = Vec::new();
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x11 // TCP over IPv4
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x21 // TCP over IPv6
        }
        _ => panic!("one family"),
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&[0x21, family]); // v2 PROXY
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const PP_LISTENER: &str = "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]";

/// Reads until the gateway closes; returns what it sent (nothing, when it
/// refused without an answer). A reset counts as closed.
async fn read_until_closed(mut tcp: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("the gateway closes in time");
    got
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client() {
    let gw = start_config(&config(PP_LISTENER, "")).await;
    let v1_tcp4 = b"PROXY TCP4 203.0.113.20 127.0.0.1 40001 8080\r\n".to_vec();
    let v1_tcp6 = b"PROXY TCP6 2001:db8::20 ::1 40002 8080\r\n".to_vec();
    let v2_tcp4 = proxy_v2(Some((addr("198.51.100.21:40003"), addr("127.0.0.1:8080"))));
    let v2_tcp6 = proxy_v2(Some((addr("[2001:db8::21]:40004"), addr("[::1]:8080"))));
    let cases: [(&str, &[u8], Option<&str>); 6] = [
        ("v1-tcp4", &v1_tcp4, Some("203.0.113.20:40001")),
        ("v1-tcp6", &v1_tcp6, Some("[2001:db8::20]:40002")),
        ("v2-tcp4", &v2_tcp4, Some("198.51.100.21:40003")),
        ("v2-tcp6", &v2_tcp6, Some("[2001:db8::21]:40004")),
        // A proxy's own connection (a health check): the peer itself.
        ("v2-local", &proxy_v2(None), None),
        ("v1-unknown", b"PROXY UNKNOWN\r\n", None),
    ];
    let mut open = Vec::new();
    for (name, header, expected) in cases {
        let (mut ws, local) = ws_after(&gw, header, name, &[]).await;
        list_names(&mut ws).await;
        let expected = expected.map_or_else(|| local.to_string(), str::to_owned);
        assert_eq!(remote_of(&gw, name).await, expected, "{name}");
        open.push(ws);
    }

    // The header and the request in separate writes: the gateway reads the
    // header alone, then the upgrade.
    let mut tcp = TcpStream::connect(gw.ws).await.unwrap();
    tcp.write_all(&v2_tcp4[..10]).await.unwrap();
    tcp.flush().await.unwrap();
    tcp.write_all(&v2_tcp4[10..]).await.unwrap();
    let mut ws = upgrade(tcp, &format!("ws://{}/?name=split", gw.ws), &[])
        .await
        .expect("split header");
    list_names(&mut ws).await;
    assert_eq!(remote_of(&gw, "split").await, "198.51.100.21:40003");
    open.push(ws);

    // Forwarding headers from the client the PROXY header names (not a
    // trusted proxy) are ignored.
    let (mut ws, _) = ws_after(&gw, &v1_tcp4, "xff", &[("X-Forwarded-For", "6.6.6.6")]).await;
    list_names(&mut ws).await;
    assert_eq!(remote_of(&gw, "xff").await, "203.0.113.20:40001");
}

#[tokio::test]
async fn a_proxy_protocol_listener_refuses_connections_without_a_valid_header() {
    let gw = start_config(&config(PP_LISTENER, "")).await;
    let upgrade = upgrade_request("/?name=direct", &[]);
    let mut garbage = b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n".to_vec();
    garbage.extend_from_slice(&upgrade);
    for (what, bytes) in [
        ("an upgrade without a header", upgrade.clone()),
        ("a malformed v1 header", garbage),
        (
            "a health check without a header",
            b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(),
        ),
    ] {
        let mut tcp = TcpStream::connect(gw.ws).await.unwrap();
        tcp.write_all(&bytes).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&read_until_closed(tcp).await),
            "",
            "{what}: closed without an answer"
        );
    }
    // A peer that closes inside the header.
    let mut tcp = TcpStream::connect(gw.ws).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.1").await.unwrap();
    tcp.shutdown().await.unwrap();
    assert!(read_until_closed(tcp).await.is_empty());
    assert!(clients(&gw).await.is_empty(), "no session was admitted");

    // A PROXY header from a peer outside trusted_proxies is not believed.
    let gw = start_config(&config(
        "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]",
        "",
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.ws).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.20 127.0.0.1 40001 8080\r\n")
        .await
        .unwrap();
    tcp.write_all(&upgrade_request("/?name=untrusted", &[]))
        .await
        .unwrap();
    assert!(read_until_closed(tcp).await.is_empty());
    assert!(clients(&gw).await.is_empty());
}

#[tokio::test]
async fn a_listener_without_proxy_protocol_is_not_fooled_by_a_forged_header() {
    let gw = start_config(&config("trusted_proxies = [\"127.0.0.1/32\"]", "")).await;
    let mut v1 = b"PROXY TCP4 203.0.113.66 127.0.0.1 40066 8080\r\n".to_vec();
    v1.extend_from_slice(&upgrade_request("/?name=forger", &[]));
    let (status, body) = http_raw(gw.ws, &v1).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("malformed HTTP request"), "{body}");

    let mut v2 = proxy_v2(Some((addr("203.0.113.67:40067"), addr("127.0.0.1:8080"))));
    v2.extend_from_slice(&upgrade_request("/?name=forger2", &[]));
    let (status, body) = http_raw(gw.ws, &v2).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("malformed HTTP request"), "{body}");
    assert!(clients(&gw).await.is_empty(), "no session was admitted");
}

/// A throwaway development CA and server certificate (as `dev_certs`
/// makes them): returns (dir, cert, key, ca).
fn dev_certs() -> (TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = TempDir::new().unwrap();
    let (cert, key) = (
        dir.path().join("server.pem"),
        dir.path().join("server-key.pem"),
    );
    let report = wssgate::certgen::ensure_dev_certs(&cert, &key)
        .unwrap()
        .expect("generated");
    (dir, cert, key, report.ca_cert)
}

#[tokio::test]
async fn proxy_protocol_in_front_of_tls() {
    let (_dir, cert, key, ca) = dev_certs();
    let gw = start_config(&config(
        &format!("mode = \"secure\"\ncert = {cert:?}\nkey = {key:?}\n{PP_LISTENER}"),
        "",
    ))
    .await;
    let headers: [(&str, Vec<u8>, &str); 2] = [
        (
            "v1",
            b"PROXY TCP4 203.0.113.40 127.0.0.1 40040 443\r\n".to_vec(),
            "203.0.113.40:40040",
        ),
        (
            "v2",
            proxy_v2(Some((addr("[2001:db8::41]:40041"), addr("[::1]:443")))),
            "[2001:db8::41]:40041",
        ),
    ];
    let mut open = Vec::new();
    for (name, header, expected) in headers {
        let mut tcp = TcpStream::connect(gw.ws).await.unwrap();
        tcp.write_all(&header).await.unwrap();
        let tls = tls_over(tcp, &ca).await;
        let url = format!("wss://localhost:{}/?name={name}", gw.ws.port());
        let mut ws = upgrade(tls, &url, &[]).await.expect("wss after PROXY");
        list_names(&mut ws).await;
        let (remote, listener, tls) = clients(&gw).await.remove(name).expect(name);
        assert_eq!(
            (remote.as_str(), listener.as_str(), tls),
            (expected, "ws", true)
        );
        open.push(ws);
    }
    // TLS straight away, without the header: refused before any handshake.
    let tcp = TcpStream::connect(gw.ws).await.unwrap();
    let tls_connect = {
        let policy = wssgate_client::tls::ClientTls {
            trust: wssgate_client::tls::ServerTrust::Ca(ca.clone()),
            identity: None,
        };
        let config = wssgate_client::tls::client_config(&policy, Default::default()).unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
    };
    assert!(
        tokio::time::timeout(WAIT, tls_connect)
            .await
            .expect("refused in time")
            .is_err()
    );
}

// ------------------------------------------------------------ allowed_origins

#[tokio::test]
async fn allowed_origins_check_browser_origins_and_names_come_from_the_query() {
    let gw = start_config(&config(
        "allowed_origins = [\"https://chat.example.com\", \"http://localhost:3000\"]",
        "",
    ))
    .await;
    let url = |query: &str| format!("ws://{}/{query}", gw.ws);
    let connect = |query: &str, origin: Option<&str>| {
        let url = url(query);
        let origin = origin.map(str::to_owned);
        async move {
            let tcp = TcpStream::connect(gw.ws).await.unwrap();
            let headers: Vec<(&str, &str)> = origin
                .as_deref()
                .map(|o| ("Origin", o))
                .into_iter()
                .collect();
            upgrade(tcp, &url, &headers).await
        }
    };

    // A listed origin, the name from ?name= (Origin is never the name).
    let mut alice = connect("?name=alice", Some("https://chat.example.com"))
        .await
        .expect("listed origin");
    // Origins compare without regard to ASCII case.
    let mut bob = connect("?name=bob", Some("HTTP://LOCALHOST:3000"))
        .await
        .expect("listed origin, other case");
    // A non-browser client sends no Origin: ?name= admits it.
    let mut bot = connect("?name=bot", None).await.expect("no Origin");
    assert_eq!(list_names(&mut bot).await, ["alice", "bob", "bot"]);
    deliver_to(&mut alice, "alice", &mut bob, "bob").await;

    let not_allowed = |o: &str| (403, format!("origin not allowed: {o}\n"));
    let missing = (
        400,
        "missing name: add ?name= to the URL (on this listener Origin is checked against allowed_origins, never a name)\n".to_owned(),
    );
    let cases = [
        // Cross-site hijacking: another site's page.
        (
            "?name=mallory",
            Some("https://evil.example"),
            not_allowed("https://evil.example"),
        ),
        // A Qt-style client naming itself in Origin is refused here.
        ("", Some("carol"), not_allowed("carol")),
        ("?name=carol", Some("carol"), not_allowed("carol")),
        // A listed origin is not a name: without ?name= there is none.
        ("", Some("https://chat.example.com"), missing.clone()),
        ("", None, missing),
    ];
    for (query, origin, expected) in cases {
        let got = refusal(connect(query, origin).await);
        assert_eq!(got, expected, "{query} {origin:?}");
    }
    assert_eq!(list_names(&mut alice).await, ["alice", "bob", "bot"]);
}

// ---------------------------------------------- max_connections_per_address

#[tokio::test]
async fn max_connections_per_address_counts_real_addresses() {
    let gw = start_config(&config(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        "[limits]\nmax_connections_per_address = 2\n",
    ))
    .await;
    let mut events = subscribe_events(gw.operator()).await;
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    // Through one trusted proxy (127.0.0.1), two clients' addresses: each
    // has its own budget of two.
    let (mut a1, _) = ws_with(&gw, "a1", &xff("203.0.113.1")).await;
    let (a2, _) = ws_with(&gw, "a2", &xff("203.0.113.1")).await;
    let (b1, _) = ws_with(&gw, "b1", &xff("203.0.113.2")).await;
    let (b2, _) = ws_with(&gw, "b2", &xff("203.0.113.2")).await;
    assert_eq!(list_names(&mut a1).await, ["a1", "a2", "b1", "b2"]);

    // The third from one address is refused.
    let tcp = TcpStream::connect(gw.ws).await.unwrap();
    let third = upgrade(
        tcp,
        &format!("ws://{}/?name=a3", gw.ws),
        &xff("203.0.113.1"),
    )
    .await;
    assert_eq!(
        refusal(third),
        (
            503,
            "too many connections from this address: try again later\n".to_owned()
        )
    );
    // The proxy's own address (no header) has a budget of its own.
    let (c1, _) = ws_with(&gw, "c1", &[]).await;
    let (c2, _) = ws_with(&gw, "c2", &[]).await;
    let tcp = TcpStream::connect(gw.ws).await.unwrap();
    assert_eq!(
        refusal(upgrade(tcp, &format!("ws://{}/?name=c3", gw.ws), &[]).await).0,
        503
    );

    // A slot frees when its session ends.
    drop(a2);
    next_disconnect(&mut events, "a2").await;
    let (mut a3, _) = ws_with(&gw, "a3", &xff("203.0.113.1")).await;
    assert_eq!(
        list_names(&mut a3).await,
        ["a1", "a3", "b1", "b2", "c1", "c2"]
    );
    assert_eq!(remote_of(&gw, "a3").await, "203.0.113.1:0");
    drop((b1, b2, c1, c2));
}
