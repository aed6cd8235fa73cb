//! Real client addresses behind proxies: the PROXY protocol (v1 and v2,
//! parsed by the `ppp` crate) in front of a listener, and the
//! `Forwarded` / `X-Forwarded-For` / `X-Real-IP` headers, honoured only when
//! the TCP peer is a trusted proxy.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult, v1, v2};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Longest PROXY header read: v1 is at most 107 bytes; v2 is 16 bytes plus
/// addresses and TLVs, which a proxy keeps small.
pub const MAX_PROXY_HEADER: usize = 4096;

/// A list of trusted proxy networks, e.g. `["127.0.0.1/32", "10.0.0.0/8"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct TrustedProxies(Vec<IpNet>);

impl TryFrom<Vec<String>> for TrustedProxies {
    type Error = String;

    fn try_from(list: Vec<String>) -> Result<Self, String> {
        list.iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "invalid network {s:?}: write an address or CIDR such as \"10.0.0.0/8\""
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    /// True when `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// True when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Which forwarding header a listener reads the client's address from
/// (`forwarded_header`), when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `Forwarded` if present, else `X-Forwarded-For`, else `X-Real-IP`:
    /// the proxy must drop the headers it does not set itself.
    #[default]
    Auto,
    /// RFC 7239 `Forwarded` only.
    Forwarded,
    /// `X-Forwarded-For` only (what the shipped nginx files set).
    XForwardedFor,
    /// `X-Real-IP` only.
    XRealIp,
}

/// The forwarding headers of a request, raw.
#[derive(Debug, Clone, Default)]
pub struct ForwardedHeaders {
    /// Every `Forwarded` header value, in order.
    pub forwarded: Vec<String>,
    /// Every `X-Forwarded-For` header value, in order.
    pub x_forwarded_for: Vec<String>,
    /// The `X-Real-IP` header.
    pub x_real_ip: Option<String>,
}

impl ForwardedHeaders {
    /// True when the request carries none of them.
    pub fn is_empty(&self) -> bool {
        self.forwarded.is_empty() && self.x_forwarded_for.is_empty() && self.x_real_ip.is_none()
    }
}

/// The client's address: `peer` itself, unless `peer` is a trusted proxy;
/// then the rightmost untrusted address of the chain in the header `which`
/// names (with [`ForwardedHeader::Auto`]: `Forwarded` first, else
/// `X-Forwarded-For`, else `X-Real-IP`). A hop without a port gets port 0.
pub fn client_addr(
    peer: SocketAddr,
    headers: &ForwardedHeaders,
    trusted: &TrustedProxies,
    which: ForwardedHeader,
) -> SocketAddr {
    if !trusted.contains(peer.ip()) || headers.is_empty() {
        return peer;
    }
    // `auto` picks the first header present; a named one is the only one read.
    let which = match which {
        ForwardedHeader::Auto if !headers.forwarded.is_empty() => ForwardedHeader::Forwarded,
        ForwardedHeader::Auto if !headers.x_forwarded_for.is_empty() => {
            ForwardedHeader::XForwardedFor
        }
        ForwardedHeader::Auto => ForwardedHeader::XRealIp,
        named => named,
    };
    let chain: Vec<SocketAddr> = match which {
        ForwardedHeader::Forwarded => headers
            .forwarded
            .iter()
            .flat_map(|h| h.split(','))
            .filter_map(forwarded_for)
            .collect(),
        ForwardedHeader::XForwardedFor => headers
            .x_forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .filter_map(parse_hop)
            .collect(),
        ForwardedHeader::XRealIp | ForwardedHeader::Auto => headers
            .x_real_ip
            .as_deref()
            .and_then(parse_hop)
            .into_iter()
            .collect(),
    };
    chain
        .iter()
        .rev()
        .find(|hop| !trusted.contains(hop.ip()))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// The `for=` node of one `Forwarded` element (RFC 7239), if it is an address.
fn forwarded_for(element: &str) -> Option<SocketAddr> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        parse_hop(value.trim().trim_matches('"'))
    })
}

/// `1.2.3.4`, `1.2.3.4:56`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:56`.
fn parse_hop(hop: &str) -> Option<SocketAddr> {
    let hop = hop.trim();
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = hop.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The stream does not start with a PROXY header.
    #[error("expected a PROXY protocol header: {0}")]
    Missing(String),
    /// The peer closed or failed before the header was complete.
    #[error("connection ended inside the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Reads a PROXY v1 or v2 header. Returns the client address it carries
/// (`None` for `LOCAL`/`UNKNOWN`, e.g. a load balancer's own health check)
/// and the stream with any bytes read past the header put back in front.
pub async fn read_header<S: AsyncRead + Unpin>(
    mut stream: S,
) -> Result<(Option<SocketAddr>, Prefixed<S>), ProxyError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        if buf.len() >= MAX_PROXY_HEADER {
            return Err(ProxyError::Missing("header too long".into()));
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(ProxyError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let (addr, used) = match HeaderResult::parse(&buf) {
            HeaderResult::V1(Ok(header)) => (v1_source(&header.addresses), header.header.len()),
            HeaderResult::V2(Ok(header)) => (v2_source(&header), header.len()),
            HeaderResult::V1(result) if result.is_incomplete() => continue,
            HeaderResult::V2(result) if result.is_incomplete() => continue,
            HeaderResult::V1(Err(e)) => return Err(ProxyError::Missing(e.to_string())),
            HeaderResult::V2(Err(e)) => return Err(ProxyError::Missing(e.to_string())),
        };
        let rest = buf.split_off(used);
        return Ok((addr, Prefixed::new(rest, stream)));
    }
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

/// A stream with some already-read bytes put back in front.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is read before `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                // Give the memory back: the prefix is never read again.
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_addr_auto(peer: SocketAddr, h: &ForwardedHeaders, t: &TrustedProxies) -> SocketAddr {
        client_addr(peer, h, t, ForwardedHeader::Auto)
    }

    #[test]
    fn a_chosen_header_is_the_only_one_believed() {
        let t = trusted(&["127.0.0.0/8"]);
        // nginx sets X-Forwarded-For; the client forged Forwarded and X-Real-IP.
        let h = ForwardedHeaders {
            forwarded: vec!["for=203.0.113.66".into()],
            x_forwarded_for: vec!["198.51.100.1".into()],
            x_real_ip: Some("203.0.113.77".into()),
        };
        let peer = addr("127.0.0.1:1");
        let pick = |which| client_addr(peer, &h, &t, which);
        assert_eq!(
            pick(ForwardedHeader::Auto),
            addr("203.0.113.66:0"),
            "auto: Forwarded first"
        );
        assert_eq!(pick(ForwardedHeader::XForwardedFor), addr("198.51.100.1:0"));
        assert_eq!(pick(ForwardedHeader::Forwarded), addr("203.0.113.66:0"));
        assert_eq!(pick(ForwardedHeader::XRealIp), addr("203.0.113.77:0"));
        // The chosen header missing: the proxy's own address, not another header's.
        let h = ForwardedHeaders {
            forwarded: vec!["for=203.0.113.66".into()],
            ..Default::default()
        };
        assert_eq!(
            client_addr(peer, &h, &t, ForwardedHeader::XForwardedFor),
            peer
        );
    }

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::try_from(list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_only_from_trusted_peers_rightmost_untrusted_wins() {
        let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        let xff = |v: &str| ForwardedHeaders {
            x_forwarded_for: vec![v.to_owned()],
            ..Default::default()
        };
        // Untrusted peer: headers ignored.
        assert_eq!(
            client_addr_auto(addr("192.0.2.1:5"), &xff("203.0.113.9"), &t),
            addr("192.0.2.1:5")
        );
        // Trusted peer: the rightmost untrusted hop (a spoofed leftmost entry is skipped).
        assert_eq!(
            client_addr_auto(
                addr("127.0.0.1:5"),
                &xff("6.6.6.6, 203.0.113.9, 10.1.2.3"),
                &t
            ),
            addr("203.0.113.9:0")
        );
        // All hops trusted: the leftmost.
        assert_eq!(
            client_addr_auto(addr("127.0.0.1:5"), &xff("10.0.0.1, 10.0.0.2"), &t),
            addr("10.0.0.1:0")
        );
        // Nothing trusted by default.
        assert_eq!(
            client_addr_auto(
                addr("127.0.0.1:5"),
                &xff("203.0.113.9"),
                &TrustedProxies::default()
            ),
            addr("127.0.0.1:5")
        );
    }

    #[test]
    fn forwarded_rfc7239_and_x_real_ip() {
        let t = trusted(&["127.0.0.0/8"]);
        let h = ForwardedHeaders {
            forwarded: vec![r#"for="[2001:db8:cafe::17]:4711";proto=https, for=127.0.0.5"#.into()],
            x_forwarded_for: vec!["198.51.100.1".into()],
            ..Default::default()
        };
        assert_eq!(
            client_addr_auto(addr("127.0.0.1:1"), &h, &t),
            addr("[2001:db8:cafe::17]:4711")
        );
        let h = ForwardedHeaders {
            x_real_ip: Some("198.51.100.7".into()),
            ..Default::default()
        };
        assert_eq!(
            client_addr_auto(addr("127.0.0.1:1"), &h, &t),
            addr("198.51.100.7:0")
        );
        // Obfuscated or unknown nodes are not addresses.
        let h = ForwardedHeaders {
            forwarded: vec!["for=unknown, for=_hidden".into()],
            ..Default::default()
        };
        assert_eq!(
            client_addr_auto(addr("127.0.0.1:1"), &h, &t),
            addr("127.0.0.1:1")
        );
    }

    #[test]
    fn bad_networks_are_refused() {
        assert!(TrustedProxies::try_from(vec!["10.0.0.0/33".to_owned()]).is_err());
        assert!(TrustedProxies::try_from(vec!["proxy.local".to_owned()]).is_err());
        // IPv4-mapped IPv6 peers are matched as IPv4.
        assert!(trusted(&["1.2.3.4"]).contains("::ffff:1.2.3.4".parse().unwrap()));
    }

    #[tokio::test]
    async fn proxy_v1_and_v2_headers_and_leftover_bytes() {
        let mut input = &b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n"[..];
        let (src, mut rest) = read_header(&mut input).await.unwrap();
        assert_eq!(src, Some(addr("203.0.113.9:51000")));
        let mut after = String::new();
        rest.read_to_string(&mut after).await.unwrap();
        assert_eq!(after, "GET / HTTP/1.1\r\n");

        let mut v2 = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
        ];
        v2.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]); // v2 PROXY, TCP over IPv4, 12 bytes
        v2.extend_from_slice(&[198, 51, 100, 7, 10, 0, 0, 1, 0xC3, 0x50, 0x01, 0xBB]);
        v2.extend_from_slice(b"\x16\x03\x01");
        let mut input = &v2[..];
        let (src, mut rest) = read_header(&mut input).await.unwrap();
        assert_eq!(src, Some(addr("198.51.100.7:50000")));
        let mut after = Vec::new();
        rest.read_to_end(&mut after).await.unwrap();
        assert_eq!(after, b"\x16\x03\x01");

        let mut input = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyError::Missing(_))
        ));
        let mut input = &b"PROXY UNKNOWN\r\n"[..];
        assert_eq!(read_header(&mut input).await.unwrap().0, None);
    }
}
