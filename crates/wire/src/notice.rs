//! What the gateway itself sends a client: a notice, `src` `@gateway`, one
//! variant per `type`, each with its own fields (`docs/PROTOCOL.md`,
//! "Notices").

use serde::Serialize;
use serde_json::value::RawValue;

use crate::name::GATEWAY_NAME;

/// The `msg` of the `error` notice for a private message to a name nobody
/// holds: this text, `": "`, and the name.
pub const NOT_CONNECTED: &str = "recipient not connected";
/// The `msg` of the `error` notice for a private message dropped because
/// the recipient's queue was full: this text, `": "`, and the name.
pub const TOO_SLOW: &str = "recipient too slow, message dropped";
/// The `error` notice text for a frame dropped for the sender's rate limit.
pub const RATE_LIMITED: &str = "rate limit exceeded";

/// A gateway notice for the client `dst`. Serializes as
/// `{"src":"@gateway","dst":...,"type":...,...}`.
#[derive(Debug, Serialize)]
pub struct Notice<'a> {
    src: &'static str,
    dst: &'a str,
    #[serde(flatten)]
    body: Body<'a>,
}

/// The `type` of a notice and the fields that go with it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body<'a> {
    /// A request the gateway could not honour.
    Error {
        /// What went wrong, for a person.
        msg: String,
        /// The request's `id`, when it had one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
    /// The reply to `list`: the names connected, or in a room.
    List {
        /// `N connected` or `N in #room`.
        msg: String,
        /// The request's `id`, when it had one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
        /// The names, sorted.
        names: &'a [String],
        /// The room listed, for a room's list.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
    },
    /// Many clients connected or disconnected since the client was last
    /// told (`[routing] presence`, in a storm): one frame instead of one
    /// per event. Serialized with `type` `presence` and `event` `digest`.
    #[serde(rename = "presence")]
    PresenceDigest {
        /// `N connected, M disconnected`.
        msg: String,
        /// Always `digest`.
        event: Digest,
        /// Who connected, in order (and is still connected).
        joined: &'a [String],
        /// Who disconnected, in order (and is still gone).
        left: &'a [String],
    },
    /// A client connected or disconnected (`[routing] presence`).
    Presence {
        /// `NAME connected` or `NAME disconnected`.
        msg: String,
        /// Which of the two.
        event: Presence,
        /// The client concerned.
        name: &'a str,
    },
}

/// The `event` of a presence notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// The client connected.
    Join,
    /// The client disconnected.
    Leave,
}

/// The `event` of a presence digest: always `digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Digest {
    /// Several clients connected or disconnected.
    Digest,
}

impl<'a> Notice<'a> {
    fn new(dst: &'a str, body: Body<'a>) -> Self {
        Notice {
            src: GATEWAY_NAME,
            dst,
            body,
        }
    }

    /// An `error` notice for `dst`, with `ref` when the request had an `id`.
    pub fn error(dst: &'a str, msg: impl Into<String>, reference: Option<&'a RawValue>) -> Self {
        let msg = msg.into();
        Notice::new(dst, Body::Error { msg, reference })
    }

    /// The reply to `list`.
    pub fn list(
        dst: &'a str,
        names: &'a [String],
        room: Option<&'a str>,
        reference: Option<&'a RawValue>,
    ) -> Self {
        let msg = match room {
            Some(room) => format!("{} in {room}", names.len()),
            None => format!("{} connected", names.len()),
        };
        let body = Body::List {
            msg,
            reference,
            names,
            room,
        };
        Notice::new(dst, body)
    }

    /// A presence notice: `name` connected ([`Presence::Join`]) or
    /// disconnected ([`Presence::Leave`]).
    pub fn presence(dst: &'a str, event: Presence, name: &'a str) -> Self {
        let verb = match event {
            Presence::Join => "connected",
            Presence::Leave => "disconnected",
        };
        let msg = format!("{name} {verb}");
        Notice::new(dst, Body::Presence { msg, event, name })
    }

    /// A presence digest: who connected and who disconnected since the
    /// client was last told, net of each other.
    pub fn presence_digest(dst: &'a str, joined: &'a [String], left: &'a [String]) -> Self {
        let msg = format!("{} connected, {} disconnected", joined.len(), left.len());
        let body = Body::PresenceDigest {
            msg,
            event: Digest::Digest,
            joined,
            left,
        };
        Notice::new(dst, body)
    }

    /// The notice as a JSON text.
    pub fn to_json(&self) -> String {
        // Serializing strings, string slices and already-valid raw JSON into
        // a String cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|_| unreachable!("a notice holds only strings and JSON values"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse(n: &Notice<'_>) -> Value {
        serde_json::from_str(&n.to_json()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn each_type_has_its_own_fields() {
        let id = RawValue::from_string("3".into()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parse(&Notice::error(
                "bob",
                "recipient not connected: x",
                Some(&id)
            )),
            json!({"src":"@gateway","dst":"bob","type":"error","msg":"recipient not connected: x","ref":3})
        );
        assert_eq!(
            parse(&Notice::error("a", "no", None)),
            json!({"src":"@gateway","dst":"a","type":"error","msg":"no"})
        );
        let names = ["a".to_owned(), "b".to_owned()];
        assert_eq!(
            parse(&Notice::list("a", &names, None, None)),
            json!({"src":"@gateway","dst":"a","type":"list","msg":"2 connected","names":["a","b"]})
        );
        assert_eq!(
            parse(&Notice::list("a", &names, Some("#r"), None)),
            json!({"src":"@gateway","dst":"a","type":"list","msg":"2 in #r","names":["a","b"],"room":"#r"})
        );
        assert_eq!(
            parse(&Notice::presence("a", Presence::Join, "b")),
            json!({"src":"@gateway","dst":"a","type":"presence","msg":"b connected","event":"join","name":"b"})
        );
        assert_eq!(
            parse(&Notice::presence("a", Presence::Leave, "b")),
            json!({"src":"@gateway","dst":"a","type":"presence","msg":"b disconnected","event":"leave","name":"b"})
        );
    }

    #[test]
    fn a_digest_is_a_presence_notice_with_both_lists() {
        let joined = ["a".to_owned()];
        let left = ["b".to_owned(), "c".to_owned()];
        assert_eq!(
            parse(&Notice::presence_digest("me", &joined, &left)),
            json!({"src":"@gateway","dst":"me","type":"presence","msg":"1 connected, 2 disconnected",
                   "event":"digest","joined":["a"],"left":["b","c"]})
        );
    }

    #[test]
    fn the_wire_order_starts_with_src_dst_type() {
        let text = Notice::presence("a", Presence::Join, "b").to_json();
        assert!(
            text.starts_with(r#"{"src":"@gateway","dst":"a","type":"presence","#),
            "{text}"
        );
    }
}
