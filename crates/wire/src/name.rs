//! Client names: the rules a name must pass, validated once into a
//! [`ClientName`], and what Qt's Latin-1 handshake makes of a name.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Longest name in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 128;
/// The name the gateway uses as `src` of its notices.
pub const GATEWAY_NAME: &str = "@gateway";

/// A validated client name (`docs/PROTOCOL.md` section 2.3): 1..=128 bytes
/// of UTF-8; no control characters; no invisible formatting characters
/// (zero-width, bidirectional controls: [`is_format_character`]); no
/// whitespace but the plain space, and none at either end; not starting
/// with `@` (the gateway's) or `#` (rooms'). So two names that look alike
/// on a screen are the same bytes, and every name can receive a private
/// message. Cloning is a reference-count bump.
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
    /// Starts with `#`, which marks a room as `dst`: such a name could
    /// never receive a private message.
    #[error("names starting with '#' are taken for rooms")]
    RoomPrefix,
    /// Starts or ends with whitespace, or holds whitespace other than a
    /// plain space (U+0020).
    #[error("name starts or ends with whitespace, or holds whitespace other than a plain space")]
    Whitespace,
    /// Holds an invisible formatting character, e.g. U+200B ZERO WIDTH
    /// SPACE or U+202E RIGHT-TO-LEFT OVERRIDE.
    #[error("name contains the invisible formatting character U+{0:04X}")]
    FormatCharacter(u32),
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
        if let Some(c) = name.chars().find(|&c| is_format_character(c)) {
            return Err(NameError::FormatCharacter(u32::from(c)));
        }
        let ends_blank =
            name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace);
        if ends_blank || name.chars().any(|c| c.is_whitespace() && c != ' ') {
            return Err(NameError::Whitespace);
        }
        if name.starts_with('@') {
            return Err(NameError::Reserved);
        }
        if name.starts_with('#') {
            return Err(NameError::RoomPrefix);
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

/// True for the characters of Unicode's general category Cf (format:
/// invisible, they change how the text around them is shown) and the
/// other invisible fillers that make a name look like another one (U+034F,
/// U+115F, U+1160, U+3164, U+FFA0). Variation selectors stay allowed (an
/// emoji needs them).
pub fn is_format_character(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0x3164
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
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
    fn names_that_look_like_others_are_refused() {
        let cases = [
            (" @gateway", NameError::Whitespace),
            ("alice ", NameError::Whitespace),
            ("ali\u{a0}ce", NameError::Whitespace),
            ("ali\u{3000}ce", NameError::Whitespace),
            ("ali\u{200b}ce", NameError::FormatCharacter(0x200B)),
            ("\u{202e}ecila", NameError::FormatCharacter(0x202E)),
            ("alice\u{feff}", NameError::FormatCharacter(0xFEFF)),
            ("al\u{ad}ice", NameError::FormatCharacter(0xAD)),
            ("#general", NameError::RoomPrefix),
            ("@x", NameError::Reserved),
        ];
        for (name, error) in cases {
            assert_eq!(ClientName::new(name), Err(error), "{name:?}");
        }
        for ok in ["bob b", "José", "❤\u{fe0f}", "a#b", "a@b"] {
            assert!(ClientName::new(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(
            NameError::FormatCharacter(0x200B).to_string(),
            "name contains the invisible formatting character U+200B"
        );
    }

    #[test]
    fn qt_substitution() {
        assert_eq!(qt_latin1("C1我是客户端"), "C1?????");
        assert_eq!(qt_latin1("José"), "José");
        assert_eq!(qt_latin1("a😀"), "a??");
    }
}
