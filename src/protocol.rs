//! The wire protocol, pure and without I/O: what a client's text frame means
//! (`docs/PROTOCOL.md` section 3); the notices the gateway sends are
//! `wssgate_wire::Notice` (section 4.3).
//!
//! Classification is one pass of serde_json over the frame into borrowed raw
//! values of the five fields that matter (`dst`, `type`, `room`, `id`,
//! `src`); the rest is only validated. Forwarding splices the sender's name
//! into the original text where `src` was, so other fields pass through
//! byte for byte, and a frame whose `src` is already right (what the Qt
//! example sends) is forwarded as is, without a copy.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use wssgate_wire::room::check_room;

/// What a client's text frame asks for. Borrows from the frame.
#[derive(Debug)]
pub enum Request<'a> {
    /// A private message to every session named `dst`.
    Private(Envelope<'a>),
    /// A message to every member of a room but the sender.
    Room(Envelope<'a>),
    /// Join a room.
    Join {
        /// The room, `#` included.
        room: Cow<'a, str>,
        /// The request's `id`, echoed as `ref` in an error.
        id: Option<&'a RawValue>,
    },
    /// Leave a room. A leave is never answered (not even when the session
    /// was not a member), so its `id` is not kept.
    Leave {
        /// The room.
        room: Cow<'a, str>,
    },
    /// The names now connected, or the members of `room`.
    List {
        /// A room to list instead of everyone.
        room: Option<Cow<'a, str>>,
        /// The request's `id`, echoed as `ref` in the reply.
        id: Option<&'a RawValue>,
    },
    /// Anything else: a message to the server (the operator).
    ToServer,
    /// A JSON object that tried to be a request but is malformed.
    Invalid {
        /// One-line reason, sent back in an `error` notice.
        reason: String,
        /// The request's `id`.
        id: Option<&'a RawValue>,
    },
}

impl<'a> Request<'a> {
    /// The request's `id`, if it has one (a `leave` keeps none).
    pub fn id(&self) -> Option<&'a RawValue> {
        match self {
            Request::Private(e) | Request::Room(e) => e.id,
            Request::Join { id, .. } | Request::List { id, .. } | Request::Invalid { id, .. } => {
                *id
            }
            Request::Leave { .. } | Request::ToServer => None,
        }
    }
}

/// A private or room message on its way: the sender's JSON object.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The recipient name or room.
    pub dst: Cow<'a, str>,
    /// The `src` the client claimed (never trusted; used for Qt names).
    pub claimed_src: Option<Cow<'a, str>>,
    /// The request's `id`, echoed as `ref` when delivery fails.
    pub id: Option<&'a RawValue>,
    text: &'a str,
    /// Where the `src` value is in `text`.
    src_span: Option<Range<usize>>,
}

/// The frame receivers get from [`Envelope::forward`].
#[derive(Debug, PartialEq, Eq)]
pub enum Forward {
    /// The frame as the client sent it: its `src` was already the sender's name.
    Unchanged,
    /// The frame with `src` set to the sender's name.
    Rewritten(String),
}

impl Envelope<'_> {
    /// The frame the receivers get: the sender's object with `src` set to
    /// `src` (written where the client had it, else first), other fields
    /// untouched.
    pub fn forward(&self, src: &str) -> Forward {
        if self.claimed_src.as_deref() == Some(src) {
            return Forward::Unchanged;
        }
        let name = json_string(src);
        let mut out = String::with_capacity(self.text.len() + name.len() + 8);
        match &self.src_span {
            Some(span) => {
                out.push_str(&self.text[..span.start]);
                out.push_str(&name);
                out.push_str(&self.text[span.end..]);
            }
            None => {
                // The text is an object with at least `dst`: `{` comes first
                // (after optional whitespace) and a member follows.
                let open = self.text.find('{').unwrap_or(0) + 1;
                out.push_str(&self.text[..open]);
                out.push_str("\"src\":");
                out.push_str(&name);
                out.push(',');
                out.push_str(&self.text[open..]);
            }
        }
        Forward::Rewritten(out)
    }
}

/// A string as a JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| unreachable!("a str always serializes"))
}

/// The fields that decide what a frame is; all others are skipped (but
/// still validated as JSON).
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    dst: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    /// Unlike the others, kept even when `null`: its span is rewritten.
    #[serde(borrow, default)]
    src: Present<'a>,
}

/// A field's raw value whatever it is, `null` included (`Option` would turn
/// `null` into `None` and lose where it was).
#[derive(Default)]
struct Present<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Present<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(|raw| Present(Some(raw)))
    }
}

/// A raw JSON value as a string, if it is one (borrowed unless escaped).
fn string<'a>(raw: &'a RawValue) -> Option<Cow<'a, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Cow<'a, str>>(raw.get()).ok()
}

/// Byte range of a raw value inside the text it was parsed from.
fn span_in(text: &str, raw: &RawValue) -> Option<Range<usize>> {
    let start = (raw.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start + raw.get().len();
    (end <= text.len() && text.get(start..end) == Some(raw.get())).then_some(start..end)
}

/// Classifies one text frame.
pub fn classify(text: &str) -> Request<'_> {
    // Plain text is the common case for messages to the server: skip the parser.
    if !text.trim_start().starts_with('{') {
        return Request::ToServer;
    }
    let probe = match serde_json::from_str::<Probe<'_>>(text) {
        Ok(probe) => probe,
        // A valid object with a repeated field (e.g. two `dst`): malformed.
        Err(e) if e.is_data() => {
            return Request::Invalid {
                reason: format!("invalid message: {e}"),
                id: None,
            };
        }
        // Not JSON (or not an object): a message to the server.
        Err(_) => return Request::ToServer,
    };
    let id = probe.id;
    match probe.kind.and_then(string).as_deref() {
        Some(kind @ ("join" | "leave")) => {
            let room = match room_field(probe.room) {
                Ok(room) => room,
                Err(reason) => return Request::Invalid { reason, id },
            };
            return match kind {
                "join" => Request::Join { room, id },
                _ => Request::Leave { room },
            };
        }
        Some("list") => {
            let room = match probe.room {
                None => None,
                Some(raw) => match room_field(Some(raw)) {
                    Ok(room) => Some(room),
                    Err(reason) => return Request::Invalid { reason, id },
                },
            };
            return Request::List { room, id };
        }
        _ => {}
    }
    let Some(raw_dst) = probe.dst else {
        return Request::ToServer;
    };
    let Some(dst) = string(raw_dst) else {
        return Request::Invalid {
            reason: "invalid message: dst must be a string".into(),
            id,
        };
    };
    if dst.is_empty() {
        return Request::Invalid {
            reason: "invalid message: dst is empty".into(),
            id,
        };
    }
    if dst.starts_with('@') {
        // Addressed to the gateway itself (`@server`, `@gateway`).
        return Request::ToServer;
    }
    let is_room = dst.starts_with('#');
    if is_room && let Err(reason) = check_room(&dst) {
        return Request::Invalid { reason, id };
    }
    let envelope = Envelope {
        dst,
        claimed_src: probe.src.0.and_then(string),
        id,
        text,
        src_span: probe.src.0.and_then(|raw| span_in(text, raw)),
    };
    if is_room {
        Request::Room(envelope)
    } else {
        Request::Private(envelope)
    }
}

fn room_field(room: Option<&RawValue>) -> Result<Cow<'_, str>, String> {
    match room.and_then(string) {
        Some(room) => check_room(&room).map(|()| room),
        None => Err("invalid room: \"room\" must be a string such as \"#lobby\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn envelope(r: Request<'_>) -> Envelope<'_> {
        match r {
            Request::Private(e) | Request::Room(e) => e,
            other => panic!("not a message: {other:?}"),
        }
    }

    /// What receivers get when `src` sends the frame.
    fn forwarded(e: &Envelope<'_>, src: &str) -> Value {
        match e.forward(src) {
            Forward::Unchanged => serde_json::from_str(e.text).unwrap(),
            Forward::Rewritten(text) => serde_json::from_str(&text).unwrap(),
        }
    }

    fn id(r: &Request<'_>) -> Option<String> {
        match r {
            Request::Join { id, .. } | Request::List { id, .. } | Request::Invalid { id, .. } => {
                id.map(|raw| raw.get().to_owned())
            }
            Request::Private(e) | Request::Room(e) => e.id.map(|raw| raw.get().to_owned()),
            Request::Leave { .. } | Request::ToServer => None,
        }
    }

    #[test]
    fn qt_private_message() {
        let r = classify(r#"{"src":"C1","dst":"C2","msg":"hi"}"#);
        assert!(matches!(r, Request::Private(_)));
        let e = envelope(r);
        assert_eq!(e.dst, "C2");
        assert_eq!(e.claimed_src.as_deref(), Some("C1"));
        assert_eq!(
            forwarded(&e, "real"),
            json!({"src":"real","dst":"C2","msg":"hi"})
        );
        // The Qt client's src is its own name: forwarded without a copy.
        assert_eq!(e.forward("C1"), Forward::Unchanged);
    }

    #[test]
    fn rewritten_src_keeps_every_other_byte() {
        let text = r#"{ "dst" : "b", "src":"spoof\u0041", "msg":"x\n" }"#;
        let e = envelope(classify(text));
        assert_eq!(e.claimed_src.as_deref(), Some("spoofA"));
        assert_eq!(
            e.forward("C1我\"q"),
            Forward::Rewritten(r#"{ "dst" : "b", "src":"C1我\"q", "msg":"x\n" }"#.to_owned())
        );
    }

    #[test]
    fn a_src_of_another_type_is_replaced_not_duplicated() {
        for src in ["null", "42", "{\"a\":1}"] {
            let text = format!(r#"{{"src":{src},"dst":"b"}}"#);
            let e = envelope(classify(&text));
            assert_eq!(
                e.forward("me"),
                Forward::Rewritten(r#"{"src":"me","dst":"b"}"#.to_owned()),
                "{src}"
            );
        }
    }

    #[test]
    fn repeated_fields_are_invalid() {
        assert!(matches!(
            classify(r#"{"dst":"a","dst":"b"}"#),
            Request::Invalid { .. }
        ));
    }

    #[test]
    fn forward_keeps_other_fields_and_adds_src() {
        let e = envelope(classify(r#"{"dst":"b","msg":"x","extra":[1,{"k":null}]}"#));
        assert_eq!(
            forwarded(&e, "a"),
            json!({"dst":"b","msg":"x","extra":[1,{"k":null}],"src":"a"})
        );
    }

    #[test]
    fn rooms_and_controls() {
        assert!(matches!(
            classify(r##"{"dst":"#r","msg":"x"}"##),
            Request::Room(_)
        ));
        let join = classify(r##"{"type":"join","room":"#r","id":7}"##);
        assert!(matches!(&join, Request::Join { room, .. } if room == "#r"));
        assert_eq!(id(&join).as_deref(), Some("7"));
        let leave = classify(r##"{"type":"leave","room":"#r"}"##);
        assert!(matches!(&leave, Request::Leave { room } if room == "#r"));
        assert!(matches!(
            classify(r#"{"type":"list"}"#),
            Request::List {
                room: None,
                id: None
            }
        ));
        assert!(matches!(
            classify(r#"{"type":"join","room":"lobby"}"#),
            Request::Invalid { .. }
        ));
        assert!(matches!(
            classify(r##"{"type":"join","room":"#"}"##),
            Request::Invalid { .. }
        ));
    }

    #[test]
    fn everything_else_goes_to_the_server() {
        for text in [
            "hello",
            "",
            "{not json",
            "[1,2]",
            "\"str\"",
            "42",
            r#"{"msg":"no dst"}"#,
            r#"{"dst":null}"#,
            r#"{"dst":"@server","msg":"x"}"#,
            r#"{"type":"other"}"#,
        ] {
            assert!(matches!(classify(text), Request::ToServer), "{text}");
        }
    }

    #[test]
    fn wrong_dst_type_is_an_error_with_ref() {
        let r = classify(r#"{"dst":5,"id":"a1"}"#);
        assert_eq!(id(&r).as_deref(), Some(r#""a1""#));
        assert!(
            matches!(r, Request::Invalid { reason, .. } if reason == "invalid message: dst must be a string")
        );
    }
}
