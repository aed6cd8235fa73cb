//! Who a client is: its name, taken once at the handshake from `?name=` or
//! the `Origin` header, validated into a [`ClientName`].
//!
//! Header bytes are UTF-8 when they are valid UTF-8, else Latin-1 (Qt writes
//! its handshake with `toLatin1()`). A name that came from `Origin` and holds
//! `?` may be a Qt name whose characters above U+00FF were replaced: it is
//! *provisional* until the client's own JSON `src` tells the full name
//! (PROTOCOL.md section 1).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Longest name in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 128;
/// The name the gateway uses as `src` of its notices.
pub const GATEWAY_NAME: &str = "@gateway";

/// A validated client name: 1..=128 bytes, no control characters, not `@...`.
/// Cloning is a reference-count bump.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientName(Arc<str>);

/// Why a name was refused (answered with HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Neither `?name=` nor `Origin` was given, or it was empty.
    #[error("missing name: send an Origin header or a ?name= query parameter")]
    Missing,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error("name is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// Contains a control character.
    #[error("name contains a control character")]
    ControlCharacter,
    /// Starts with `@`, which is reserved for the gateway.
    #[error("names starting with '@' are reserved for the gateway")]
    Reserved,
    /// `?name=` was not valid percent-encoded UTF-8.
    #[error("name is not valid percent-encoded UTF-8")]
    BadEncoding,
}

impl ClientName {
    /// Validates a name.
    pub fn new(name: &str) -> Result<ClientName, NameError> {
        if name.is_empty() {
            return Err(NameError::Missing);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        if name.starts_with('@') {
            return Err(NameError::Reserved);
        }
        Ok(ClientName(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for maps keyed by name.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The name a client claimed at the handshake, and whether it is provisional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The validated name.
    pub name: ClientName,
    /// True when the name came from `Origin` and holds `?`: it may be a Qt
    /// name with characters above U+00FF replaced.
    pub provisional: bool,
}

/// Takes the client's name from the request: `?name=` in `query` if present,
/// else the raw `Origin` header bytes.
pub fn claim(query: Option<&str>, origin: Option<&[u8]>) -> Result<Claim, NameError> {
    if let Some(raw) = query.and_then(name_param) {
        // `+` is a space in form encoding, which browsers use for query
        // strings; replaced before decoding, so that `%2B` stays a `+`.
        let raw = raw.replace('+', " ");
        let decoded = percent_encoding::percent_decode(raw.as_bytes())
            .decode_utf8()
            .map_err(|_| NameError::BadEncoding)?;
        return Ok(Claim {
            name: ClientName::new(&decoded)?,
            provisional: false,
        });
    }
    let text = decode_header(origin.ok_or(NameError::Missing)?);
    let name = ClientName::new(&text)?;
    Ok(Claim {
        provisional: text.contains('?'),
        name,
    })
}

/// The raw value of the first `name` parameter of a query string.
fn name_param(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("name="))
        .or_else(|| query.split('&').find(|pair| *pair == "name").map(|_| ""))
}

/// Header bytes as text: UTF-8 when valid, else Latin-1 (each byte one char).
pub fn decode_header(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

/// What Qt's `toLatin1()` makes of a name: each UTF-16 code unit above
/// U+00FF becomes `?` (so a character outside the BMP becomes `??`).
pub fn qt_latin1(name: &str) -> Cow<'_, str> {
    if name.chars().all(|c| u32::from(c) <= 0xFF) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if u32::from(c) <= 0xFF {
            out.push(c);
        } else {
            for _ in 0..c.len_utf16() {
                out.push('?');
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_bytes_utf8_or_latin1() {
        let c = claim(None, Some("C1我是客户端".as_bytes())).unwrap();
        assert_eq!(c.name.as_str(), "C1我是客户端");
        assert!(!c.provisional);
        let c = claim(None, Some(b"Jos\xe9")).unwrap();
        assert_eq!(c.name.as_str(), "José");
        let c = claim(None, Some(b"C1?????")).unwrap();
        assert!(c.provisional);
    }

    #[test]
    fn query_wins_and_is_percent_decoded() {
        let c = claim(Some("x=1&name=C1%E6%88%91"), Some(b"ignored")).unwrap();
        assert_eq!(c.name.as_str(), "C1我");
        assert!(!c.provisional);
        let c = claim(Some("name=a+b%3F"), None).unwrap();
        assert_eq!(c.name.as_str(), "a b?");
        assert!(!c.provisional, "?name= is exact, never provisional");
        let c = claim(Some("name=1%2B1+%3D+2"), None).unwrap();
        assert_eq!(c.name.as_str(), "1+1 = 2", "an encoded plus stays a plus");
    }

    #[test]
    fn refusals() {
        assert_eq!(claim(None, None), Err(NameError::Missing));
        assert_eq!(claim(None, Some(b"")), Err(NameError::Missing));
        assert_eq!(claim(Some("name="), Some(b"x")), Err(NameError::Missing));
        assert_eq!(claim(None, Some(b"@gateway")), Err(NameError::Reserved));
        assert_eq!(claim(None, Some(b"a\tb")), Err(NameError::ControlCharacter));
        assert_eq!(claim(Some("name=%FF"), None), Err(NameError::BadEncoding));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(claim(None, Some(long.as_bytes())), Err(NameError::TooLong));
        let max = "x".repeat(MAX_NAME_LEN);
        assert!(claim(None, Some(max.as_bytes())).is_ok());
    }

    #[test]
    fn qt_substitution() {
        assert_eq!(qt_latin1("C1我是客户端"), "C1?????");
        assert_eq!(qt_latin1("José"), "José");
        assert_eq!(qt_latin1("a😀"), "a??");
    }
}
