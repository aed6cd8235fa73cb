//! Clients for the tests of proxied connections (`tests/proxy.rs`,
//! `tests/nginx.rs`): a WebSocket over any byte stream (a raw TCP stream that
//! wrote a PROXY header first, TLS, a socket bound to a chosen source
//! address) with extra request headers, and the gateway's view of client
//! addresses. Included with `#[path]` by the crates that use it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use wssgate_client::tls::{ClientTls, ServerTrust};
use wssgate_client::{ClientStream, Io};

use crate::common::{Gateway, WAIT};

/// A TCP connection to `to` from `source` (any port), e.g. 127.0.0.2, so
/// that the client's address differs from a proxy's 127.0.0.1.
pub async fn tcp_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("connect {source} -> {to}: {e}"))
}

/// A TLS client handshake on `stream` for `localhost`, trusting only `ca`.
pub async fn tls_over<S: Io>(stream: S, ca: &Path) -> TlsStream<S> {
    let policy = ClientTls {
        trust: ServerTrust::Ca(ca.to_owned()),
        identity: None,
    };
    let config =
        wssgate_client::tls::client_config(&policy, Arc::new(Mutex::new(None))).expect("CA");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(WAIT, connector.connect(name, stream))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake")
}

/// The WebSocket upgrade of `url` (its scheme and authority only name the
/// request; the bytes go over `stream`) with extra request headers.
pub async fn upgrade<S: Io + 'static>(
    stream: S,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<ClientStream, tungstenite::Error> {
    let mut request = url.into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    let stream: Box<dyn Io> = Box::new(stream);
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("upgrade in time")?;
    Ok(ws)
}

/// The status and body of a refused upgrade.
pub fn refusal(result: Result<ClientStream, tungstenite::Error>) -> (u16, String) {
    match result {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

/// Sends a JSON value as a text frame.
pub async fn send(ws: &mut ClientStream, value: &Value) {
    crate::common::send_json(ws, value).await;
}

/// The next text frame as JSON (pings and pongs skipped).
pub async fn recv(ws: &mut ClientStream) -> Value {
    crate::common::recv_json(ws).await
}

/// A `list` round trip: the names connected now (and proof that the
/// connection works end to end).
pub async fn list_names(ws: &mut ClientStream) -> Vec<String> {
    send(ws, &serde_json::json!({"type": "list"})).await;
    let reply = recv(ws).await;
    assert_eq!(reply["type"], "list", "{reply}");
    serde_json::from_value(reply["names"].clone()).expect("names")
}

/// `from` sends `to` a private message, which arrives as sent with `src`
/// set by the gateway.
pub async fn deliver_to(
    from: &mut ClientStream,
    from_name: &str,
    to: &mut ClientStream,
    to_name: &str,
) {
    let msg = format!("hello {to_name}, from {from_name}");
    send(from, &serde_json::json!({"dst": to_name, "msg": msg})).await;
    assert_eq!(
        recv(to).await,
        serde_json::json!({"dst": to_name, "msg": msg, "src": from_name}),
        "{from_name} -> {to_name}"
    );
}

/// `/clients` as name -> (remote, listener, tls).
pub async fn clients(gw: &Gateway) -> BTreeMap<String, (String, String, bool)> {
    gw.operator()
        .clients()
        .await
        .expect("/clients")
        .into_iter()
        .map(|c| (c.name, (c.remote, c.listener, c.tls)))
        .collect()
}

/// The `remote` that `/clients` shows for `name`.
pub async fn remote_of(gw: &Gateway, name: &str) -> String {
    clients(gw)
        .await
        .remove(name)
        .unwrap_or_else(|| panic!("{name} is not in /clients"))
        .0
}

/// Writes `request` on `stream` and reads the whole answer (the request
/// should say `Connection: close`); returns the status and body.
pub async fn http_over<S: Io>(mut stream: S, request: &str) -> (u16, String) {
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}
