//! Connections of the load generator: the target (a loopback ws/wss URL),
//! dialing from a chosen source address, TLS, and the client side of the
//! WebSocket upgrade with the name in `Origin`. The upgrade is written by
//! hand so that bytes the server sends right after its `101` stay in the
//! connection's [`Reader`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::http::Uri;

use super::frame::Reader;
use super::options::Common;
use wssgate_client::tls::{self, ClientTls, ServerTrust};

/// Time allowed for TCP connect, TLS and the upgrade together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest upgrade response accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A connection's byte stream, plain or TLS.
pub enum Stream {
    /// ws.
    Plain(TcpStream),
    /// wss.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection under the stream.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// Where the load goes, resolved once.
pub struct Target {
    addr: SocketAddr,
    /// `Host` header value.
    host_header: String,
    /// Path and query of the upgrade request.
    path: String,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    per_source: usize,
    source_base: Option<Ipv4Addr>,
}

impl Target {
    /// Parses and resolves `url` (one `--url`, loopback only), and builds
    /// the TLS connector for wss. `resume` lets TLS resume sessions.
    pub async fn new(url: &str, common: &Common, resume: bool) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().context("not a URL")?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => anyhow::bail!("the scheme must be ws:// or wss://"),
        };
        let host = uri.host().context("no host in the URL")?;
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let addr = tokio::net::lookup_host((bare_host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {bare_host}"))?
            .find(|a| a.ip().is_loopback())
            .with_context(|| {
                format!(
                    "{bare_host} is not a loopback address: wssgate-bench only loads \
                     servers on this machine (127.0.0.0/8, ::1)"
                )
            })?;
        let tls = if secure {
            let policy = ClientTls {
                trust: common
                    .ca
                    .clone()
                    .map_or(ServerTrust::SystemRoots, ServerTrust::Ca),
                identity: common.cert.clone().zip(common.key.clone()),
            };
            let mut config = tls::client_config(&policy, Arc::new(Mutex::new(None)))?;
            if !resume {
                // Every handshake a full one: what a crowd of new clients costs.
                config.resumption = rustls::client::Resumption::disabled();
            }
            let name = rustls::pki_types::ServerName::try_from(bare_host.clone())
                .with_context(|| format!("{bare_host} is not a valid TLS server name"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        anyhow::ensure!(
            addr.is_ipv4() || common.source_base.is_none(),
            "--source-base needs an IPv4 target"
        );
        Ok(Target {
            addr,
            host_header: uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or(host.to_owned()),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".to_owned()),
            tls,
            per_source: common.per_source,
            source_base: common.source_base,
        })
    }

    /// True for wss.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The source address of connection `index`: none (the kernel picks)
    /// for the first `per_source` connections unless `--source-base` is set,
    /// then the next loopback address every `per_source` connections.
    pub fn source_for(&self, index: usize) -> Option<IpAddr> {
        let block = (index / self.per_source) as u32;
        match (self.source_base, self.addr) {
            (Some(base), _) => Some(IpAddr::V4(Ipv4Addr::from(u32::from(base) + block))),
            (None, SocketAddr::V4(_)) if block > 0 => Some(IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(127, 0, 0, 1)) + block,
            ))),
            _ => None,
        }
    }

    /// Opens connection `index` as `name`: TCP (from its source address),
    /// TLS for wss, then the upgrade. Bytes after the `101` stay in `reader`.
    pub async fn open(
        &self,
        index: usize,
        name: &str,
        reader: &mut Reader,
    ) -> anyhow::Result<Stream> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.open_inner(index, name, reader))
            .await
            .map_err(|_| anyhow::anyhow!("handshake timed out after {HANDSHAKE_TIMEOUT:?}"))?
    }

    async fn open_inner(
        &self,
        index: usize,
        name: &str,
        reader: &mut Reader,
    ) -> anyhow::Result<Stream> {
        let source = self.source_for(index);
        let tcp = match source {
            None => TcpStream::connect(self.addr).await,
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .with_context(|| format!("cannot bind source address {ip}"))?;
                socket.connect(self.addr).await
            }
        }
        .with_context(|| format!("cannot connect to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let mut stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, server_name)) => {
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "TLS handshake failed: {}",
                            tls::explain_client_error(&e).unwrap_or_else(|| e.to_string())
                        )
                    })?;
                Stream::Tls(Box::new(tls))
            }
        };
        self.upgrade(&mut stream, index, name, reader).await?;
        Ok(stream)
    }

    async fn upgrade(
        &self,
        stream: &mut Stream,
        index: usize,
        name: &str,
        reader: &mut Reader,
    ) -> anyhow::Result<()> {
        // A distinct key per connection; the server's answer must match it.
        let key = data_encoding::BASE64
            .encode(&((index as u128) << 64 | 0x5753_5347_4154_4521).to_le_bytes());
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nOrigin: {name}\r\n\r\n",
            self.path, self.host_header
        );
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let head_len = loop {
            if let Some(end) = reader.pending().windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            anyhow::ensure!(
                reader.pending().len() < MAX_RESPONSE_HEAD,
                "the upgrade response head is over {MAX_RESPONSE_HEAD} bytes"
            );
            if reader.fill(stream).await? == 0 {
                anyhow::bail!("the server closed the connection during the upgrade");
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        response
            .parse(&reader.pending()[..head_len])
            .context("invalid upgrade response")?;
        let status = response.code.unwrap_or(0);
        if status != 101 {
            let body = String::from_utf8_lossy(&reader.pending()[head_len..]);
            anyhow::bail!("upgrade refused: {status} {}", body.trim());
        }
        let expected = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|h| h.value);
        anyhow::ensure!(
            accept == Some(expected.as_bytes()),
            "the upgrade response has a wrong Sec-WebSocket-Accept"
        );
        reader.consume(head_len);
        Ok(())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Which of `urls` server URLs connection `index` goes to: `index mod
/// urls`. Every scenario numbers its connections so that this spreads them
/// as a cluster run wants: `pairs` partners are `i` and `i ^ 1`, adjacent
/// numbers, so they land on different URLs whenever there are two or more;
/// `fanout`'s publisher is connection 0, on the first URL, and its members
/// 1..=N go round-robin over all of them.
pub fn url_index(index: usize, urls: usize) -> usize {
    index % urls.max(1)
}

/// Writes `bytes` and flushes (one TLS record for a batch of frames).
pub async fn send(stream: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Closes politely: a close frame (1000), then reads until the server's
/// close and EOF, for at most `wait`. Errors are ignored: the run is over.
pub async fn close(stream: &mut Stream, reader: &mut Reader, mask: [u8; 4], wait: Duration) {
    let mut out = Vec::with_capacity(16);
    super::frame::append_frame(
        &mut out,
        super::frame::OP_CLOSE,
        &1000u16.to_be_bytes(),
        mask,
    );
    let _ = tokio::time::timeout(wait, async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        loop {
            reader.consume(reader.pending().len());
            if reader.fill(stream).await? == 0 {
                return Ok::<_, io::Error>(());
            }
        }
    })
    .await;
}

/// Opens connections `indices` (names from `run`), `--open-concurrency` at
/// a time, within [`OPEN_PHASE_LIMIT`]; failures are counted as errors and
/// left out. Each success bumps the progress counter when `count_progress`.
pub(crate) async fn open_all(
    run: &super::Run,
    indices: std::ops::Range<usize>,
    reader_capacity: usize,
    count_progress: bool,
) -> Vec<(usize, Stream, Reader)> {
    use futures_util::StreamExt;
    let attempts = futures_util::stream::iter(indices)
        .map(|i| async move {
            let mut reader = Reader::new(reader_capacity);
            let name = run.name(i);
            match run.target(i).open(i, &name, &mut reader).await {
                Ok(stream) => {
                    if count_progress {
                        run.progress
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some((i, stream, reader))
                }
                Err(e) => {
                    run.error(|| format!("connection {name}: {e:#}"));
                    None
                }
            }
        })
        .buffer_unordered(run.common.open_concurrency);
    let mut open = Vec::new();
    let mut attempts = std::pin::pin!(attempts.take_until(tokio::time::sleep(OPEN_PHASE_LIMIT)));
    while let Some(result) = attempts.next().await {
        open.extend(result);
    }
    open.sort_by_key(|(i, _, _)| *i);
    open
}

/// Longest time opening a scenario's connections may take.
pub const OPEN_PHASE_LIMIT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::url_index;

    #[test]
    fn one_url_takes_every_connection() {
        assert!((0..1000).all(|i| url_index(i, 1) == 0));
    }

    #[test]
    fn the_two_clients_of_a_pair_are_on_different_urls() {
        for urls in 2..=5 {
            for i in (0..200).step_by(2) {
                let (a, b) = (url_index(i, urls), url_index(i ^ 1, urls));
                assert_ne!(a, b, "pair {i}/{} with {urls} URLs", i ^ 1);
                assert!(a < urls && b < urls);
            }
        }
        // Two nodes: every pair spans both, half the clients on each.
        let on_first = (0..100).filter(|&i| url_index(i, 2) == 0).count();
        assert_eq!(on_first, 50);
        assert!(
            (0..100)
                .step_by(2)
                .all(|i| url_index(i, 2) == 0 && url_index(i + 1, 2) == 1)
        );
    }

    #[test]
    fn fanout_members_go_round_robin_and_the_publisher_on_the_first() {
        for urls in 1..=4 {
            // Connection 0 publishes.
            assert_eq!(url_index(0, urls), 0);
            for members in [1, 7, 100, 10_001] {
                let mut per_url = vec![0usize; urls];
                for i in 1..=members {
                    per_url[url_index(i, urls)] += 1;
                }
                let (min, max) = (per_url.iter().min(), per_url.iter().max());
                assert!(
                    max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                    "{members} members over {urls} URLs: {per_url:?}"
                );
                assert_eq!(per_url.iter().sum::<usize>(), members);
            }
            // Consecutive members never share a URL when there are several.
            if urls > 1 {
                assert!((1..50).all(|i| url_index(i, urls) != url_index(i + 1, urls)));
            }
        }
    }
}
