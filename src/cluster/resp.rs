//! Just enough of the Redis protocol (RESP2) for the cluster's two busy
//! connections, the subscriber and the publisher: commands written straight
//! into one buffer, and replies read in place from the receive buffer, with
//! no allocation per message (redis-rs's general parser and its task per
//! connection cost more than the rest of a cross-node message).

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use redis::{ConnectionAddr, ConnectionInfo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// A connection to Redis, whatever carries it.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One value of a reply; an array holds at most [`MAX_ITEMS`] of them
/// (pub/sub frames hold three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    /// `+OK`
    Simple(&'a [u8]),
    /// `-ERR ...`
    Error(&'a [u8]),
    /// `:3`
    Int(i64),
    /// `$5 hello`, or `$-1` (`None`).
    Bulk(Option<&'a [u8]>),
}

/// The longest bulk string an answer to AUTH may hold (it holds none).
const AUTH_REPLY: usize = 0;

/// Items an array may hold here.
pub(crate) const MAX_ITEMS: usize = 3;

/// One reply: an item, or an array of items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    Item(Item<'a>),
    Array([Item<'a>; MAX_ITEMS], usize),
}

/// Parses one frame at the start of `buf`: the frame and the bytes it took;
/// `Ok(None)` while it is incomplete. A bulk string longer than `max_bulk`
/// is an error at once, before its bytes are waited for: what a connection
/// buffers stays bounded whatever the other end sends.
pub(crate) fn parse(buf: &[u8], max_bulk: usize) -> Result<Option<(Frame<'_>, usize)>, String> {
    if buf.first() != Some(&b'*') {
        return Ok(item(buf, max_bulk)?.map(|(i, n)| (Frame::Item(i), n)));
    }
    let Some((len, mut at)) = line(buf, 1)? else {
        return Ok(None);
    };
    let len = number(len)?;
    let len = usize::try_from(len).map_err(|_| format!("array of {len}"))?;
    if len > MAX_ITEMS {
        return Err(format!("an array of {len} items"));
    }
    let mut items = [Item::Bulk(None); MAX_ITEMS];
    for slot in items.iter_mut().take(len) {
        let Some((i, n)) = item(&buf[at..], max_bulk)? else {
            return Ok(None);
        };
        *slot = i;
        at += n;
    }
    Ok(Some((Frame::Array(items, len), at)))
}

/// One item at the start of `buf`.
fn item(buf: &[u8], max_bulk: usize) -> Result<Option<(Item<'_>, usize)>, String> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some((text, end)) = line(buf, 1)? else {
        return Ok(None);
    };
    let item = match kind {
        b'+' => Item::Simple(text),
        b'-' => Item::Error(text),
        b':' => Item::Int(number(text)?),
        b'$' => {
            let len = number(text)?;
            if len < 0 {
                return Ok(Some((Item::Bulk(None), end)));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= max_bulk)
                .ok_or_else(|| format!("a bulk string of {len} bytes (at most {max_bulk} here)"))?;
            let Some(data) = end.checked_add(len + 2).and_then(|stop| buf.get(end..stop)) else {
                return Ok(None);
            };
            if !data.ends_with(b"\r\n") {
                return Err("a bulk string without its CRLF".into());
            }
            return Ok(Some((Item::Bulk(Some(&data[..len])), end + len + 2)));
        }
        other => return Err(format!("unexpected reply type {:?}", char::from(other))),
    };
    Ok(Some((item, end)))
}

/// The line from `from` to the next CRLF, and the index after it.
fn line(buf: &[u8], from: usize) -> Result<Option<(&[u8], usize)>, String> {
    let Some(rest) = buf.get(from..) else {
        return Ok(None);
    };
    match memchr(b'\r', rest) {
        Some(i) if rest.get(i + 1) == Some(&b'\n') => Ok(Some((&rest[..i], from + i + 2))),
        Some(i) if i + 1 < rest.len() => Err("a CR without LF".into()),
        _ if rest.len() > 64 * 1024 => Err("a line longer than 64 KiB".into()),
        _ => Ok(None),
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

fn number(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("not a number: {:?}", String::from_utf8_lossy(text)))
}

/// Appends the command `args` to `out`.
pub(crate) fn command<'a>(out: &mut Vec<u8>, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    out.push(b'*');
    push_number(out, args.len());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        push_number(out, arg.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends the command whose arguments are `args`, each written as the
/// concatenation of its parts (a bundle's envelopes, copied once).
pub(crate) fn command_of_parts(out: &mut Vec<u8>, args: &[&[&[u8]]]) {
    out.push(b'*');
    push_number(out, args.len());
    out.extend_from_slice(b"\r\n");
    for parts in args {
        out.push(b'$');
        push_number(out, parts.iter().map(|p| p.len()).sum());
        out.extend_from_slice(b"\r\n");
        for part in *parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn push_number(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Opens connections of its own to the Redis that redis-rs's client is
/// configured for: TCP, TLS (trusting `tls_ca`, or else the system's roots,
/// as redis-rs does) or a Unix socket, then `AUTH` when a password is set.
/// Pub/sub ignores the database number, so there is no `SELECT`.
pub(crate) struct Connector {
    info: ConnectionInfo,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Connector {
    /// A connector for `info`; `ca`: the `tls_ca` file, for `rediss://`.
    pub(crate) fn new(info: ConnectionInfo, ca: Option<&Path>) -> Result<Connector, String> {
        let tls = match info.addr() {
            ConnectionAddr::TcpTls { host, .. } => {
                let roots = match ca {
                    Some(ca) => wssgate_pki::load_roots(ca).map_err(|e| format!("tls_ca: {e}"))?,
                    None => {
                        // The system's roots, as redis-rs reads them; none
                        // at all is an error, not a connection that can
                        // never verify.
                        let found = rustls_native_certs::load_native_certs();
                        let mut roots = RootCertStore::empty();
                        roots.add_parsable_certificates(found.certs);
                        if roots.is_empty() {
                            let why = found
                                .errors
                                .first()
                                .map_or_else(|| "none found".to_owned(), ToString::to_string);
                            return Err(format!(
                                "rediss:// without tls_ca needs the system's CA certificates: {why}"
                            ));
                        }
                        roots
                    }
                };
                let config = ClientConfig::builder_with_provider(wssgate_pki::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| format!("redis host {host:?}: {e}"))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            _ => None,
        };
        Ok(Connector { info, tls })
    }

    /// A new connection, authenticated.
    pub(crate) async fn connect(&self) -> Result<Pin<Box<dyn Stream>>, String> {
        let mut stream: Pin<Box<dyn Stream>> = match (self.info.addr(), &self.tls) {
            (ConnectionAddr::Tcp(host, port), _) => Box::pin(tcp(host, *port).await?),
            (ConnectionAddr::TcpTls { host, port, .. }, Some((tls, name))) => {
                let tcp = tcp(host, *port).await?;
                Box::pin(
                    tls.connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?,
                )
            }
            #[cfg(unix)]
            (ConnectionAddr::Unix(path), _) => Box::pin(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| format!("connect {}: {e}", path.display()))?,
            ),
            (addr, _) => return Err(format!("cannot connect to {addr}")),
        };
        let settings = self.info.redis_settings();
        if let Some(password) = settings.password() {
            let mut out = Vec::new();
            match settings.username() {
                Some(user) => command(
                    &mut out,
                    [&b"AUTH"[..], user.as_bytes(), password.as_bytes()].into_iter(),
                ),
                None => command(&mut out, [&b"AUTH"[..], password.as_bytes()].into_iter()),
            }
            stream
                .write_all(&out)
                .await
                .map_err(|e| format!("AUTH: {e}"))?;
            let mut buf = Vec::with_capacity(256);
            loop {
                if stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| format!("AUTH: {e}"))?
                    == 0
                {
                    return Err("AUTH: connection closed".into());
                }
                match parse(&buf, AUTH_REPLY)? {
                    None => continue,
                    Some((Frame::Item(Item::Simple(_)), _)) => break,
                    // Redis's reason, never the password.
                    Some((Frame::Item(Item::Error(e)), _)) => {
                        return Err(format!("AUTH: {}", String::from_utf8_lossy(e)));
                    }
                    Some(_) => return Err("AUTH: unexpected answer".into()),
                }
            }
        }
        Ok(stream)
    }
}

async fn tcp(host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    // Batches are written whole: nothing to wait for.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_of_parts_is_the_command_of_their_concatenations() {
        let mut whole = Vec::new();
        command(
            &mut whole,
            [&b"PUBLISH"[..], b"ch", b"#1,2\nabc"].into_iter(),
        );
        let mut parts = Vec::new();
        command_of_parts(
            &mut parts,
            &[&[b"PUBLISH"], &[b"ch"], &[b"#1,2\n", b"a", b"", b"bc"]],
        );
        assert_eq!(parts, whole);
        assert_eq!(parse(&parts, 64).unwrap().unwrap().1, parts.len());
    }

    #[test]
    fn frames_parse_in_place_and_wait_for_the_rest() {
        let msg = b"*3\r\n$7\r\nmessage\r\n$4\r\nwsg:\r\n$5\r\nhe\r\nl\r\n:2\r\n";
        let (frame, n) = parse(msg, 64).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::Array(
                [
                    Item::Bulk(Some(b"message")),
                    Item::Bulk(Some(b"wsg:")),
                    Item::Bulk(Some(b"he\r\nl"))
                ],
                3
            )
        );
        assert_eq!(
            parse(&msg[n..], 64).unwrap().unwrap().0,
            Frame::Item(Item::Int(2))
        );
        for cut in 0..n {
            assert_eq!(parse(&msg[..cut], 64).unwrap(), None, "{cut}");
        }
        assert_eq!(
            parse(b"-ERR x\r\n", 64).unwrap().unwrap().0,
            Frame::Item(Item::Error(b"ERR x"))
        );
        assert_eq!(
            parse(b"$-1\r\n", 64).unwrap().unwrap().0,
            Frame::Item(Item::Bulk(None))
        );
        assert!(parse(b"*9\r\n", 64).is_err());
        assert!(parse(b"?\r\n", 64).is_err());
        // Over the limit: refused before its bytes come, not buffered.
        assert!(parse(b"$65\r\n", 64).is_err());
        assert!(parse(b"*3\r\n$7\r\nmessage\r\n$9223372036854775807\r\n", 64).is_err());
        assert!(parse(b"$64\r\n", 64).unwrap().is_none());
        let mut out = Vec::new();
        command(&mut out, [&b"PUBLISH"[..], b"c", b""].into_iter());
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$0\r\n\r\n");
    }
}
