//! The HTTP side of a connection, before it becomes a WebSocket: read the
//! request head (bounded in size; the caller bounds it in time), decide
//! between upgrade, health check, the chat page's files and refusal, and
//! write the response.
//!
//! Doing this ourselves, with `httparse`, rather than inside tungstenite's
//! handshake lets every refusal carry its own status and one-line reason, lets
//! a plain HTTP request get 426 and `/healthz` answer 200, and keeps the raw
//! `Origin` bytes (Latin-1 from Qt) that the name is made of.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::PathPrefix;
use crate::proxy::ForwardedHeaders;
use crate::web::{Asset, Site};

/// Headers read from one request at most.
const MAX_HEADERS: usize = 64;
/// Path answered with 200 for load-balancer health checks.
pub const HEALTH_PATH: &str = "/healthz";

/// A WebSocket upgrade request, as far as the gateway cares.
#[derive(Debug)]
pub struct Upgrade {
    /// The query string, without `?`.
    pub query: Option<String>,
    /// The raw `Origin` header bytes.
    pub origin: Option<Vec<u8>>,
    /// `Sec-WebSocket-Key`.
    key: Vec<u8>,
    /// `Forwarded`, `X-Forwarded-For`, `X-Real-IP` (used only from trusted proxies).
    pub forwarded: ForwardedHeaders,
    /// The raw `Authorization` header (a token for `identity = "token"`).
    pub authorization: Option<Vec<u8>>,
    /// Bytes read past the request head (early frames); handed to the WebSocket.
    pub leftover: Vec<u8>,
}

/// What a request head asks for.
#[derive(Debug)]
pub enum Head {
    /// A valid WebSocket upgrade under the listener's path.
    Upgrade(Upgrade),
    /// A request to answer with this status and one-line text, then close.
    Respond(Refusal),
    /// A file of the listener's page (`web = true`).
    Page(Page),
    /// The page's directory asked for without its `/`: where to go instead
    /// (so that the page's relative links resolve under it).
    Redirect(String),
}

/// A file of a listener's page, as asked for.
#[derive(Debug)]
pub struct Page {
    /// The page and its policy.
    pub site: &'static Site,
    /// The file.
    pub asset: &'static Asset,
    /// The browser already holds these bytes (`If-None-Match`): answer 304.
    pub fresh: bool,
}

/// An HTTP answer that ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code.
    pub status: u16,
    /// One-line plain-text reason.
    pub reason: String,
    /// Seconds for a `Retry-After` header, if any.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal with a status and reason.
    pub fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// The same refusal, telling the client to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Refusal {
        self.retry_after = Some(seconds);
        self
    }
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed or the socket failed before a full head arrived.
    #[error("connection closed before the request was complete: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed without sending anything (a port probe).
    #[error("connection closed without a request")]
    Empty,
}

/// Reads one request head (at most `max_head` bytes) and classifies it;
/// `web` is the page served under `prefix` to requests without an upgrade.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_head: usize,
    prefix: &PathPrefix,
    web: Option<&'static Site>,
) -> Result<Head, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= max_head {
            return Ok(Head::Respond(Refusal::new(
                431,
                "request header fields too large",
            )));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(max_head - buf.len()));
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Empty
            } else {
                ReadError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                let head = classify(&request, prefix, web);
                return Ok(match head {
                    Head::Upgrade(mut upgrade) => {
                        upgrade.leftover = buf.split_off(len);
                        Head::Upgrade(upgrade)
                    }
                    refusal => refusal,
                });
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Ok(Head::Respond(Refusal::new(431, "too many header fields")));
            }
            Err(e) => {
                return Ok(Head::Respond(Refusal::new(
                    400,
                    format!("malformed HTTP request: {e}"),
                )));
            }
        }
    }
}

fn classify(
    request: &httparse::Request<'_, '_>,
    prefix: &PathPrefix,
    web: Option<&'static Site>,
) -> Head {
    let target = request.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|v| v.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    let wants_upgrade = has_token("upgrade", "websocket");
    if request.method != Some("GET") {
        return Head::Respond(Refusal::new(405, "only GET is served here"));
    }
    if !wants_upgrade && path == HEALTH_PATH {
        return Head::Respond(Refusal::new(200, "ok"));
    }
    if !prefix.matches(path) {
        return Head::Respond(Refusal::new(
            404,
            format!(
                "no WebSocket endpoint at {path} (this listener serves {})",
                prefix.as_str()
            ),
        ));
    }
    if !wants_upgrade && let Some(site) = web {
        let rest = prefix.rest(path);
        if rest.is_empty() {
            let query = query.map(|q| format!("?{q}")).unwrap_or_default();
            return Head::Redirect(format!("{path}/{query}"));
        }
        if let Some(asset) = rest.strip_prefix('/').and_then(|file| site.find(file)) {
            let fresh = header("if-none-match").is_some_and(|tags| asset.is_fresh(tags));
            return Head::Page(Page { site, asset, fresh });
        }
    }
    if !wants_upgrade || !has_token("connection", "upgrade") {
        return Head::Respond(Refusal::new(
            426,
            "this is a WebSocket endpoint: connect with a WebSocket client",
        ));
    }
    // RFC 6455 section 4.2.1, as strictly as clients in the wild allow.
    if request.version != Some(1) {
        return Head::Respond(Refusal::new(400, "a WebSocket upgrade needs HTTP/1.1"));
    }
    let count = |name: &str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    match count("host") {
        1 => {}
        0 => return Head::Respond(Refusal::new(400, "missing Host header")),
        _ => return Head::Respond(Refusal::new(400, "more than one Host header")),
    }
    // An upgrade has no body; a length or a transfer coding on it can
    // only make the peer and a proxy in front disagree on where it ends.
    if count("transfer-encoding") > 0 {
        return Head::Respond(Refusal::new(
            400,
            "Transfer-Encoding is not allowed on an upgrade request (it has no body)",
        ));
    }
    let lengths = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
    if lengths.into_iter().any(|h| h.value.trim_ascii() != b"0") {
        return Head::Respond(Refusal::new(
            400,
            "Content-Length is not allowed on an upgrade request (it has no body)",
        ));
    }
    if header("sec-websocket-version") != Some(b"13") {
        return Head::Respond(Refusal::new(426, "unsupported WebSocket version: use 13"));
    }
    let Some(key) = header("sec-websocket-key").filter(|k| !k.is_empty()) else {
        return Head::Respond(Refusal::new(400, "missing Sec-WebSocket-Key"));
    };
    if count("sec-websocket-key") > 1 || !is_websocket_key(key) {
        return Head::Respond(Refusal::new(
            400,
            "Sec-WebSocket-Key must be one base64-encoded 16-byte value",
        ));
    }
    Head::Upgrade(Upgrade {
        query: query.map(str::to_owned),
        origin: header("origin").map(<[u8]>::to_vec),
        key: key.to_vec(),
        forwarded: forwarded_headers(request.headers),
        authorization: header("authorization").map(<[u8]>::to_vec),
        leftover: Vec::new(),
    })
}

/// True for a canonical base64 encoding of 16 bytes (24 characters).
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && data_encoding::BASE64
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16)
}

fn forwarded_headers(headers: &[httparse::Header<'_>]) -> ForwardedHeaders {
    let mut out = ForwardedHeaders::default();
    for h in headers {
        let Ok(value) = std::str::from_utf8(h.value) else {
            continue;
        };
        if h.name.eq_ignore_ascii_case("forwarded") {
            out.forwarded.push(value.to_owned());
        } else if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            out.x_forwarded_for.push(value.to_owned());
        } else if h.name.eq_ignore_ascii_case("x-real-ip") {
            out.x_real_ip = Some(value.to_owned());
        }
    }
    out
}

/// Writes a complete plain-text HTTP response and shuts the write side.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    refusal: &Refusal,
) -> std::io::Result<()> {
    let body = format!("{}\n", refusal.reason);
    let mut extra = match refusal.status {
        426 => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n".to_owned(),
        _ => String::new(),
    };
    if let Some(seconds) = refusal.retry_after {
        extra.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    let response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        refusal.status,
        status_text(refusal.status),
        body.len(),
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Writes a file of the listener's page (or `304` when the browser's copy
/// is fresh) and shuts the write side.
pub async fn respond_page<S: AsyncWrite + Unpin>(
    stream: &mut S,
    page: &Page,
) -> std::io::Result<()> {
    let (status, body) = if page.fresh {
        ("304 Not Modified", &[][..])
    } else {
        ("200 OK", page.asset.body)
    };
    let mut response = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in page.site.headers(page.asset) {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    if !page.fresh {
        response.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    response.push_str("Connection: close\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// Sends the browser on to `location` (`308`) and shuts the write side.
pub async fn redirect<S: AsyncWrite + Unpin>(
    stream: &mut S,
    location: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 308 Permanent Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Writes the `101 Switching Protocols` answer to an upgrade.
pub async fn accept<S: AsyncWrite + Unpin>(
    stream: &mut S,
    upgrade: &Upgrade,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(&upgrade.key)
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn head(raw: &str, prefix: &str) -> Head {
        let mut input = raw.as_bytes();
        read_head(&mut input, 8192, &prefix.parse().unwrap(), None)
            .await
            .unwrap()
    }

    async fn web_head(raw: &str, prefix: &str) -> Head {
        let mut input = raw.as_bytes();
        let web = Some(&*crate::web::CHAT);
        read_head(&mut input, 8192, &prefix.parse().unwrap(), web)
            .await
            .unwrap()
    }

    fn status(h: Head) -> u16 {
        match h {
            Head::Respond(r) => r.status,
            Head::Upgrade(_) => 101,
            Head::Page(p) if p.fresh => 304,
            Head::Page(_) => 200,
            Head::Redirect(_) => 308,
        }
    }

    const UPGRADE: &str = "Host: gw\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[tokio::test]
    async fn decisions() {
        let cases = [
            (
                format!("GET /chat/x?name=a HTTP/1.1\r\n{UPGRADE}\r\n"),
                "/chat",
                101,
            ),
            (
                format!("GET /other HTTP/1.1\r\n{UPGRADE}\r\n"),
                "/chat",
                404,
            ),
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(), "/", 426),
            ("GET /healthz HTTP/1.1\r\n\r\n".to_owned(), "/chat", 200),
            ("POST / HTTP/1.1\r\n\r\n".to_owned(), "/", 405),
            ("GARBAGE\r\n\r\n".to_owned(), "/", 400),
            (
                format!("GET / HTTP/1.1\r\n{}\r\n", UPGRADE.replace("13", "8")),
                "/",
                426,
            ),
        ];
        for (raw, prefix, expected) in cases {
            assert_eq!(status(head(&raw, prefix).await), expected, "{raw}");
        }
    }

    /// With `web`, a browser's GET under the prefix gets the page's files;
    /// upgrades, other paths and the health check are as without it.
    #[tokio::test]
    async fn the_chat_page_is_served_beside_the_endpoint() {
        let etag = crate::web::CHAT.find("chat.js").map(|a| a.etag()).unwrap();
        let cases = [
            ("GET / HTTP/1.1\r\n\r\n".to_owned(), "/", 200),
            ("GET /index.html HTTP/1.1\r\n\r\n".to_owned(), "/", 200),
            ("GET /chat.js HTTP/1.1\r\n\r\n".to_owned(), "/", 200),
            (
                "GET /chat/chat.css HTTP/1.1\r\n\r\n".to_owned(),
                "/chat",
                200,
            ),
            ("GET /chat/ HTTP/1.1\r\n\r\n".to_owned(), "/chat", 200),
            ("GET /chat HTTP/1.1\r\n\r\n".to_owned(), "/chat", 308),
            ("GET /chat.js HTTP/1.1\r\n\r\n".to_owned(), "/chat", 404),
            ("GET /nothing.js HTTP/1.1\r\n\r\n".to_owned(), "/", 426),
            ("GET /healthz HTTP/1.1\r\n\r\n".to_owned(), "/", 200),
            (
                format!("GET /chat.js HTTP/1.1\r\nIf-None-Match: {etag}\r\n\r\n"),
                "/",
                304,
            ),
            (
                "GET /chat.js HTTP/1.1\r\nIf-None-Match: \"old\"\r\n\r\n".to_owned(),
                "/",
                200,
            ),
            (format!("GET /?name=a HTTP/1.1\r\n{UPGRADE}\r\n"), "/", 101),
            ("POST / HTTP/1.1\r\n\r\n".to_owned(), "/", 405),
        ];
        for (raw, prefix, expected) in cases {
            assert_eq!(status(web_head(&raw, prefix).await), expected, "{raw}");
        }
        let Head::Redirect(to) = web_head("GET /chat?x=1 HTTP/1.1\r\n\r\n", "/chat").await else {
            panic!("no redirect")
        };
        assert_eq!(to, "/chat/?x=1");
        let Head::Page(page) = web_head("GET /chat/ HTTP/1.1\r\n\r\n", "/chat/").await else {
            panic!("no page")
        };
        assert_eq!(page.asset.file, "index.html");
    }

    #[tokio::test]
    async fn a_page_answer_has_its_type_policy_and_tag() {
        let Head::Page(page) = web_head("GET /chat.js HTTP/1.1\r\n\r\n", "/").await else {
            panic!("no page")
        };
        let mut out = Vec::new();
        respond_page(&mut out, &page).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/javascript; charset=utf-8\r\n"));
        assert!(head.contains(&format!("ETag: {}\r\n", page.asset.etag())));
        assert!(head.contains("Content-Security-Policy: default-src 'none'; script-src 'self';"));
        assert!(head.contains("X-Content-Type-Options: nosniff\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", page.asset.body.len())));
        assert_eq!(body.as_bytes(), page.asset.body);

        let fresh = format!(
            "GET /chat.js HTTP/1.1\r\nIf-None-Match: {}\r\n\r\n",
            page.asset.etag()
        );
        let Head::Page(page) = web_head(&fresh, "/").await else {
            panic!("no page")
        };
        let mut out = Vec::new();
        respond_page(&mut out, &page).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "a 304 has no body");
    }

    /// RFC 6455 section 4.2.1 and no body: each refused with 400 and why.
    #[tokio::test]
    async fn lenient_upgrades_are_refused_with_a_reason() {
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
        let cases = [
            (
                format!("GET / HTTP/1.0\r\n{UPGRADE}\r\n"),
                "a WebSocket upgrade needs HTTP/1.1",
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\n{}\r\n",
                    UPGRADE.replace("Host: gw\r\n", "")
                ),
                "missing Host header",
            ),
            (
                format!("GET / HTTP/1.1\r\nHost: a\r\n{UPGRADE}\r\n"),
                "more than one Host header",
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\n{}\r\n",
                    UPGRADE.replace(key, "Sec-WebSocket-Key: c2hvcnQ=")
                ),
                "Sec-WebSocket-Key must be one base64-encoded 16-byte value",
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\n{}\r\n",
                    UPGRADE.replace(key, "Sec-WebSocket-Key: not base64 at all, 24 ch")
                ),
                "Sec-WebSocket-Key must be one base64-encoded 16-byte value",
            ),
            (
                format!("GET / HTTP/1.1\r\n{UPGRADE}{key}\r\n\r\n"),
                "Sec-WebSocket-Key must be one base64-encoded 16-byte value",
            ),
            (
                format!("GET / HTTP/1.1\r\n{UPGRADE}Content-Length: 5\r\n\r\nhello"),
                "Content-Length is not allowed on an upgrade request (it has no body)",
            ),
            (
                format!("GET / HTTP/1.1\r\n{UPGRADE}Transfer-Encoding: chunked\r\n\r\n"),
                "Transfer-Encoding is not allowed on an upgrade request (it has no body)",
            ),
        ];
        for (raw, reason) in cases {
            match head(&raw, "/").await {
                Head::Respond(r) => {
                    assert_eq!((r.status, r.reason.as_str()), (400, reason), "{raw}")
                }
                other => panic!("not refused ({}): {raw}", status(other)),
            }
        }
        // What is still fine: Content-Length: 0, and HTTP/1.0 outside upgrades.
        let zero = format!("GET / HTTP/1.1\r\n{UPGRADE}Content-Length: 0\r\n\r\n");
        assert_eq!(status(head(&zero, "/").await), 101);
        assert_eq!(
            status(head("GET /healthz HTTP/1.0\r\n\r\n", "/").await),
            200
        );
    }

    #[tokio::test]
    async fn keeps_raw_origin_and_early_bytes() {
        let mut raw = format!("GET / HTTP/1.1\r\n{UPGRADE}Origin: Jos").into_bytes();
        raw.extend_from_slice(b"\xe9\r\n\r\nEARLY");
        let mut input = &raw[..];
        let Head::Upgrade(u) = read_head(&mut input, 8192, &PathPrefix::default(), None)
            .await
            .unwrap()
        else {
            panic!("not an upgrade")
        };
        assert_eq!(u.origin.as_deref(), Some(&b"Jos\xe9"[..]));
        assert_eq!(u.leftover, b"EARLY");
    }

    #[tokio::test]
    async fn oversized_head_is_refused() {
        let raw = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        assert_eq!(status(head(&raw, "/").await), 431);
    }
}
