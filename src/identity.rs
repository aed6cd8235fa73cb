//! Who a client is: its name, taken once at the handshake from `?name=` or
//! the `Origin` header, validated into a [`ClientName`].
//!
//! Header bytes are UTF-8 when they are valid UTF-8, else Latin-1 (Qt writes
//! its handshake with `toLatin1()`). A name that came from `Origin` and holds
//! `?` may be a Qt name whose characters above U+00FF were replaced: it is
//! *provisional* until the client's own JSON `src` tells the full name
//! (`docs/PROTOCOL.md` section 2.3).

use std::borrow::Cow;

pub use wssgate_wire::name::{ClientName, MAX_NAME_LEN, NameError, qt_latin1};

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
        // strings; it is replaced before decoding, so that `%2B` stays `+`.
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
        let c = claim(Some("name=C%2B%2B+x"), None).unwrap();
        assert_eq!(c.name.as_str(), "C++ x", "%2B is a plus, + a space");
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
}
