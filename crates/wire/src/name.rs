//! Client names: the rules a name must pass, validated once into a
//! [`ClientName`], and what Qt's Latin-1 handshake makes of a name.

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
    // Inlined across the crate boundary: the router reads names on every
    // message.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for maps keyed by name.
    #[inline]
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
    fn rules() {
        assert_eq!(ClientName::new(""), Err(NameError::Missing));
        assert_eq!(ClientName::new("@gateway"), Err(NameError::Reserved));
        assert_eq!(ClientName::new("a\tb"), Err(NameError::ControlCharacter));
        assert_eq!(
            ClientName::new(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong)
        );
        assert!(ClientName::new(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert_eq!(
            ClientName::new("C1我是客户端").map(|n| n.to_string()),
            Ok("C1我是客户端".into())
        );
    }

    #[test]
    fn qt_substitution() {
        assert_eq!(qt_latin1("C1我是客户端"), "C1?????");
        assert_eq!(qt_latin1("José"), "José");
        assert_eq!(qt_latin1("a😀"), "a??");
    }
}
