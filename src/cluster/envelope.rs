//! What travels between nodes: a one-line JSON header, a newline, and the
//! client frame exactly as the local clients get it. The frame is not
//! escaped into the header, so a message costs its own bytes plus a small
//! header, and a receiving node hands the frame on without rewriting it.
//! Several envelopes for one channel can travel in one PUBLISH, a bundle
//! ([`BUNDLE`]).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What a message between nodes asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// A client's private message to `n` (from `s`, request `i`).
    Msg,
    /// The operator's text to `n`.
    Send,
    /// The operator's kick of `n`, reason in the body.
    Kick,
    /// A room message (room from the channel).
    Room,
    /// The operator's broadcast.
    Bcast,
    /// `n` connected on the origin node.
    Join,
    /// `n` left the origin node (or dead node `d`).
    Leave,
    /// A newer session elsewhere took `n`: close session `id` with 4000.
    Replace,
    /// An error notice for sender `n` (request `i`), text in the body.
    Err,
    /// `n` left the origin node without leaving the cluster (a newer
    /// session elsewhere took it): forget it there, tell nobody.
    Moved,
    /// A Qt provisional name `n` became the full name `t` (no presence
    /// notice, as on one node).
    Renamed,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Msg,
        Kind::Send,
        Kind::Kick,
        Kind::Room,
        Kind::Bcast,
        Kind::Join,
        Kind::Leave,
        Kind::Replace,
        Kind::Err,
        Kind::Moved,
        Kind::Renamed,
    ];

    /// The name in a header, as serde writes it.
    fn as_str(self) -> &'static str {
        match self {
            Kind::Msg => "msg",
            Kind::Send => "send",
            Kind::Kick => "kick",
            Kind::Room => "room",
            Kind::Bcast => "bcast",
            Kind::Join => "join",
            Kind::Leave => "leave",
            Kind::Replace => "replace",
            Kind::Err => "err",
            Kind::Moved => "moved",
            Kind::Renamed => "renamed",
        }
    }
}

/// The header of a message between nodes. Its strings borrow from what it
/// was made of or decoded from (a decoded one is owned only if escaped).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header<'a> {
    /// The node that published it.
    #[serde(borrow)]
    pub(crate) o: Cow<'a, str>,
    /// What it asks for.
    pub(crate) k: Kind,
    /// The name concerned.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) n: Option<Cow<'a, str>>,
    /// A private message's sender (an error goes back to it).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) s: Option<Cow<'a, str>>,
    /// The sender's request `id`, for the `ref` of an error.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) i: Option<&'a RawValue>,
    /// A session id (replacement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<u64>,
    /// The dead node a reaper announces a leave for.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) d: Option<Cow<'a, str>>,
    /// The name the sender wrote, when `n` is its Qt Latin-1 form (only a
    /// provisional session may take it), or a rename's new name.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) t: Option<Cow<'a, str>>,
}

impl<'a> Header<'a> {
    /// A header of `kind` from `origin` about `name`.
    pub(crate) fn new(origin: &'a str, kind: Kind, name: Option<&'a str>) -> Header<'a> {
        Header {
            o: Cow::Borrowed(origin),
            k: kind,
            n: name.map(Cow::Borrowed),
            s: None,
            i: None,
            id: None,
            d: None,
            t: None,
        }
    }

    /// The header, a newline and `body`, ready to publish. Written by hand,
    /// byte for byte what serde writes (the tests check), at a fraction of
    /// its cost: every message between nodes has one.
    pub(crate) fn encode(&self, body: &str) -> String {
        let mut out = String::with_capacity(64 + body.len());
        out.push_str("{\"o\":");
        json_string(&mut out, &self.o);
        out.push_str(",\"k\":\"");
        out.push_str(self.k.as_str());
        out.push('"');
        for (key, value) in [(",\"n\":", &self.n), (",\"s\":", &self.s)] {
            if let Some(value) = value {
                out.push_str(key);
                json_string(&mut out, value);
            }
        }
        if let Some(i) = self.i {
            out.push_str(",\"i\":");
            out.push_str(i.get());
        }
        if let Some(id) = self.id {
            let _ = write!(out, ",\"id\":{id}");
        }
        for (key, value) in [(",\"d\":", &self.d), (",\"t\":", &self.t)] {
            if let Some(value) = value {
                out.push_str(key);
                json_string(&mut out, value);
            }
        }
        out.push_str("}\n");
        out.push_str(body);
        out
    }

    /// Splits a published payload into its header and body; `None` for a
    /// payload no node of this version wrote.
    pub(crate) fn decode(payload: &'a str) -> Option<(Header<'a>, &'a str)> {
        let (header, body) = payload.split_once('\n')?;
        let header = Header::decode_plain(header).or_else(|| serde_json::from_str(header).ok())?;
        Some((header, body))
    }

    /// A header as [`Header::encode`] writes it when none of its strings
    /// needs an escape (nearly always), read without serde; `None` for any
    /// other, which serde reads then.
    fn decode_plain(mut rest: &'a str) -> Option<Header<'a>> {
        rest = rest.strip_prefix("{\"o\":")?;
        let origin = plain_string(&mut rest)?;
        rest = rest.strip_prefix(",\"k\":")?;
        let kind = plain_string(&mut rest)?;
        let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
        let mut header = Header::new(origin, kind, None);
        // The optional fields, in encode's order, each at most once.
        const KEYS: [&str; 6] = ["n", "s", "i", "id", "d", "t"];
        let mut next = 0;
        while rest != "}" {
            rest = rest.strip_prefix(",\"")?;
            let end = rest.find('"')?;
            let key = &rest[..end];
            rest = rest[end + 1..].strip_prefix(':')?;
            next += KEYS[next..].iter().position(|k| *k == key)?;
            match KEYS[next] {
                "n" => header.n = Some(Cow::Borrowed(plain_string(&mut rest)?)),
                "s" => header.s = Some(Cow::Borrowed(plain_string(&mut rest)?)),
                "d" => header.d = Some(Cow::Borrowed(plain_string(&mut rest)?)),
                "t" => header.t = Some(Cow::Borrowed(plain_string(&mut rest)?)),
                "id" => {
                    let end = rest.find([',', '}'])?;
                    header.id = Some(rest[..end].parse().ok()?);
                    rest = &rest[end..];
                }
                _ => {
                    let mut values =
                        serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
                    header.i = Some(values.next()?.ok()?);
                    rest = &rest[values.byte_offset()..];
                }
            }
            next += 1;
        }
        Some(header)
    }
}

/// Appends `s` as a JSON string, escaped as serde escapes it.
fn json_string(out: &mut String, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        let quoted = serde_json::to_string(s).unwrap_or_else(|_| unreachable!("a str serializes"));
        out.push_str(&quoted);
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// A JSON string without escapes at the start of `rest`, moving past it.
fn plain_string<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let inner = rest.strip_prefix('"')?;
    let end = inner.find(['"', '\\'])?;
    if inner.as_bytes()[end] != b'"' {
        return None;
    }
    let (value, after) = inner.split_at(end);
    *rest = &after[1..];
    Some(value)
}

/// The first byte of a bundle: several envelopes for one channel in one
/// PUBLISH (an envelope's header starts with `{`). The publisher bundles
/// messages queued one after the other for the same channel (a client
/// writing several messages to one peer at once): Redis then handles one
/// command, and the other node reads one message, for all of them.
pub(crate) const BUNDLE: u8 = b'#';

/// A bundle's bounds: at most this many bytes in all, its first line
/// included (a subscriber takes twice the message size limit and 64 KiB,
/// whatever that limit) ...
pub(crate) const BUNDLE_BYTES: usize = 64 * 1024;
/// ... and at most this many envelopes.
pub(crate) const BUNDLE_MESSAGES: usize = 64;

/// What an envelope of `length` bytes adds to a bundle: itself, its length
/// in decimal, and the comma or newline after that. A bundle is `#` and
/// this for each of its envelopes.
pub(crate) fn bundle_cost(length: usize) -> usize {
    length + length.checked_ilog10().unwrap_or(0) as usize + 2
}

/// Appends a bundle's first line for envelopes of `lengths` bytes:
/// `#`, the lengths in decimal separated by commas, a newline. The
/// envelopes follow it back to back.
pub(crate) fn bundle_line(out: &mut Vec<u8>, lengths: impl Iterator<Item = usize>) {
    out.push(BUNDLE);
    for (n, length) in lengths.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        // Into the buffer: no string per envelope.
        let _ = write!(out, "{length}");
    }
    out.push(b'\n');
}

/// The envelopes of `payload` in order: itself if it is not a bundle, a
/// bundle's envelopes if it is a well-formed one, `None` if it is a bundle
/// whose lengths do not add up to what follows them, or that no node
/// writes (more than [`BUNDLE_MESSAGES`] envelopes, an empty one).
pub(crate) fn unbundle(payload: &[u8]) -> Option<Envelopes<'_>> {
    if payload.first() != Some(&BUNDLE) {
        return Some(Envelopes {
            lengths: None,
            rest: payload,
            lone: true,
        });
    }
    let end = payload.iter().position(|&b| b == b'\n')?;
    let lengths = std::str::from_utf8(&payload[1..end]).ok()?;
    let rest = &payload[end + 1..];
    let mut total = 0usize;
    for (n, length) in lengths.split(',').enumerate() {
        let length = length.parse::<usize>().ok()?;
        if n == BUNDLE_MESSAGES || length == 0 {
            return None;
        }
        total = total.checked_add(length)?;
    }
    (total == rest.len()).then_some(Envelopes {
        lengths: Some(lengths.split(',')),
        rest,
        lone: false,
    })
}

/// The envelopes of one published payload, see [`unbundle`].
pub(crate) struct Envelopes<'a> {
    /// A bundle's lengths still to take; `None` for a lone envelope.
    lengths: Option<std::str::Split<'a, char>>,
    rest: &'a [u8],
    /// A lone envelope not taken yet.
    lone: bool,
}

impl<'a> Iterator for Envelopes<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let Some(lengths) = self.lengths.as_mut() else {
            return std::mem::take(&mut self.lone).then_some(self.rest);
        };
        // Checked by unbundle: every length parses and they add up.
        let length = lengths.next()?.parse::<usize>().ok()?;
        let (envelope, rest) = self.rest.split_at_checked(length)?;
        self.rest = rest;
        Some(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_gives_back_its_envelopes_and_a_bad_one_nothing() {
        let envelopes = [
            "{\"o\":\"n1\",\"k\":\"msg\"}\nfirst",
            "{}\n",
            "{}\n#,\n\u{e9}",
        ];
        let mut payload = Vec::new();
        bundle_line(&mut payload, envelopes.iter().map(|e| e.len()));
        for envelope in envelopes {
            payload.extend_from_slice(envelope.as_bytes());
        }
        let back: Vec<&[u8]> = unbundle(&payload).unwrap().collect();
        let expected: Vec<&[u8]> = envelopes.iter().map(|e| e.as_bytes()).collect();
        assert_eq!(back, expected);
        // A lone envelope is itself, once, even empty.
        let lone: Vec<&[u8]> = unbundle(b"{}\nx").unwrap().collect();
        assert_eq!(lone, [&b"{}\nx"[..]]);
        assert_eq!(unbundle(b"").unwrap().count(), 1);
        // Lengths that do not add up, or are not numbers: nothing.
        for bad in [
            &b"#3,4\nabcdef"[..],
            b"#3,4\nabcdefgh",
            b"#\n",
            b"#x\nabc",
            b"#3",
            b"#-1\n",
        ] {
            assert!(
                unbundle(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(unbundle(b"#18446744073709551615,1\nx").is_none());
        // Empty envelopes, or more than a node puts in one: nothing.
        assert!(unbundle(b"#0,1\nx").is_none());
        let most = format!(
            "#{}\n{}",
            vec!["1"; BUNDLE_MESSAGES].join(","),
            "x".repeat(BUNDLE_MESSAGES)
        );
        assert_eq!(unbundle(most.as_bytes()).unwrap().count(), BUNDLE_MESSAGES);
        let more = format!(
            "#{}\n{}",
            vec!["1"; BUNDLE_MESSAGES + 1].join(","),
            "x".repeat(BUNDLE_MESSAGES + 1)
        );
        assert!(unbundle(more.as_bytes()).is_none());
        // The cost of an envelope is what it adds to a bundle.
        for lengths in [vec![1], vec![9, 10, 99, 100, 65_535]] {
            let mut line = Vec::new();
            bundle_line(&mut line, lengths.iter().copied());
            let total: usize = lengths.iter().sum();
            assert_eq!(
                1 + lengths.iter().map(|&l| bundle_cost(l)).sum::<usize>(),
                line.len() + total
            );
        }
    }

    #[test]
    fn a_frame_travels_unescaped_and_comes_back_whole() {
        let mut h = Header::new("n1", Kind::Msg, Some("bob"));
        h.s = Some("alice".into());
        let id = serde_json::from_str::<Box<RawValue>>(r#"{"x":[1]}"#).unwrap();
        h.i = Some(&id);
        let frame = "{\"src\":\"alice\",\"dst\":\"bob\",\"msg\":\"a\\nb \\\"q\\\"\"}\nsecond line";
        let payload = h.encode(frame);
        assert!(payload.contains(frame));
        let (back, body) = Header::decode(&payload).unwrap();
        assert_eq!(body, frame);
        assert_eq!((&*back.o, back.k), ("n1", Kind::Msg));
        assert_eq!(back.n.as_deref(), Some("bob"));
        assert_eq!(back.s.as_deref(), Some("alice"));
        assert_eq!(back.i.unwrap().get(), r#"{"x":[1]}"#);
        assert!(Header::decode("no newline").is_none());
        assert!(Header::decode("{\"o\":1}\nx").is_none());
        assert!(Header::decode("{\"o\":\"a\",\"k\":\"nope\"}\nx").is_none());
    }

    #[test]
    fn the_hand_written_header_is_serdes_and_reads_back_without_copies() {
        let id = serde_json::from_str::<Box<RawValue>>(r#"{"a":[1,"}\""],"b":null}"#).unwrap();
        let num = serde_json::from_str::<Box<RawValue>>("17").unwrap();
        let mut headers = Vec::new();
        for kind in Kind::ALL {
            headers.push(Header::new("node-1", kind, None));
            let mut h = Header::new("n\"x", kind, Some("bob \u{1}\\ é"));
            h.s = Some("alice".into());
            h.i = Some(&id);
            h.id = Some(u64::MAX);
            h.d = Some("dead".into());
            h.t = Some("Bob é".into());
            headers.push(h);
            let mut h = Header::new("a", kind, Some("b"));
            h.i = Some(&num);
            h.id = Some(0);
            h.t = Some("t".into());
            headers.push(h);
        }
        for h in &headers {
            let payload = h.encode("body\nmore");
            assert_eq!(payload, serde_json::to_string(h).unwrap() + "\nbody\nmore");
            let (back, body) = Header::decode(&payload).unwrap();
            assert_eq!(body, "body\nmore");
            assert_eq!(
                serde_json::to_string(&back).unwrap(),
                serde_json::to_string(h).unwrap()
            );
            let header = payload.split_once('\n').unwrap().0;
            let plain = Header::decode_plain(header);
            assert_eq!(plain.is_some(), !header.contains('\\'), "{header}");
            if let Some(Header { n: Some(n), .. }) = plain {
                assert!(matches!(n, Cow::Borrowed(_)), "borrowed, not copied");
            }
        }
        // What only serde reads: another order, an unknown field, spaces.
        for other in [
            r#"{"k":"msg","o":"a","n":"b"}"#,
            r#"{"o":"a","k":"msg","x":1,"n":"b"}"#,
            r#"{ "o": "a", "k": "msg", "n": "b" }"#,
            r#"{"o":"a","k":"msg","t":"c","n":"b"}"#,
        ] {
            assert!(Header::decode_plain(other).is_none(), "{other}");
            let payload = format!("{other}\n");
            let (h, _) = Header::decode(&payload).unwrap();
            assert_eq!((&*h.o, h.k, h.n.as_deref()), ("a", Kind::Msg, Some("b")));
        }
        // What neither reads.
        for bad in [
            r#"{"o":"a","k":"msg","n":"b","n":"c"}"#,
            r#"{"o":"a","k":"msg","id":-1}"#,
            r#"{"o":"a","k":"msg","i":}"#,
        ] {
            assert!(Header::decode(&format!("{bad}\n")).is_none(), "{bad}");
        }
    }
}
