//! The wire protocol, pure and without I/O: what a client's text frame means
//! (PROTOCOL.md section 2) and the notices the gateway sends (section 3).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::identity::GATEWAY_NAME;

/// Longest room name in bytes, `#` included.
pub const MAX_ROOM_LEN: usize = 128;

/// What a client's text frame asks for.
#[derive(Debug, PartialEq)]
pub enum Request {
    /// A private message to every session named `dst`.
    Private(Envelope),
    /// A message to every member of a room but the sender.
    Room(Envelope),
    /// Join a room.
    Join {
        /// The room, `#` included.
        room: String,
        /// The request's `id`, echoed as `ref` in an error.
        id: Option<Value>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: String,
        /// The request's `id`.
        id: Option<Value>,
    },
    /// The names now connected, or the members of `room`.
    List {
        /// A room to list instead of everyone.
        room: Option<String>,
        /// The request's `id`, echoed as `ref` in the reply.
        id: Option<Value>,
    },
    /// Anything else: a message to the server (the operator).
    ToServer,
    /// A JSON object that tried to be a request but is malformed.
    Invalid {
        /// One-line reason, sent back in an `error` notice.
        reason: String,
        /// The request's `id`.
        id: Option<Value>,
    },
}

/// A private or room message on its way: the sender's JSON object.
#[derive(Debug, PartialEq)]
pub struct Envelope {
    /// The recipient name or room.
    pub dst: String,
    /// The `src` the client claimed (never trusted; used for Qt names).
    pub claimed_src: Option<String>,
    /// The request's `id`, echoed as `ref` when delivery fails.
    pub id: Option<Value>,
    object: Map<String, Value>,
}

impl Envelope {
    /// The frame the receivers get: the sender's object with `src` set to
    /// the sender's real name, other fields untouched.
    pub fn forward(&mut self, src: &str) -> String {
        self.object
            .insert("src".to_owned(), Value::String(src.to_owned()));
        serde_json::to_string(&self.object)
            .unwrap_or_else(|_| unreachable!("a JSON map with string keys always serializes"))
    }
}

/// Classifies one text frame.
pub fn classify(text: &str) -> Request {
    // Plain text is the common case for messages to the server: skip the parser.
    if !text.trim_start().starts_with('{') {
        return Request::ToServer;
    }
    let Ok(object) = serde_json::from_str::<Map<String, Value>>(text) else {
        return Request::ToServer;
    };
    let id = object.get("id").cloned();
    match object.get("type").and_then(Value::as_str) {
        Some(kind @ ("join" | "leave")) => {
            let room = match room_field(&object) {
                Ok(room) => room,
                Err(reason) => return Request::Invalid { reason, id },
            };
            return match kind {
                "join" => Request::Join { room, id },
                _ => Request::Leave { room, id },
            };
        }
        Some("list") => {
            let room = match object.get("room") {
                None | Some(Value::Null) => None,
                Some(_) => match room_field(&object) {
                    Ok(room) => Some(room),
                    Err(reason) => return Request::Invalid { reason, id },
                },
            };
            return Request::List { room, id };
        }
        _ => {}
    }
    let dst = match object.get("dst") {
        None | Some(Value::Null) => return Request::ToServer,
        Some(Value::String(dst)) => dst.clone(),
        Some(_) => {
            return Request::Invalid {
                reason: "invalid message: dst must be a string".into(),
                id,
            };
        }
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
    let claimed_src = object.get("src").and_then(Value::as_str).map(str::to_owned);
    let is_room = dst.starts_with('#');
    if is_room && let Err(reason) = check_room(&dst) {
        return Request::Invalid { reason, id };
    }
    let envelope = Envelope {
        dst,
        claimed_src,
        id,
        object,
    };
    if is_room {
        Request::Room(envelope)
    } else {
        Request::Private(envelope)
    }
}

fn room_field(object: &Map<String, Value>) -> Result<String, String> {
    match object.get("room") {
        Some(Value::String(room)) => check_room(room).map(|()| room.clone()),
        _ => Err("invalid room: \"room\" must be a string such as \"#lobby\"".into()),
    }
}

/// A room is `#` and 1..=127 more bytes without control characters.
pub fn check_room(room: &str) -> Result<(), String> {
    let valid = room.len() > 1
        && room.len() <= MAX_ROOM_LEN
        && room.starts_with('#')
        && !room.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid room: {room:?} (a room is '#' and 1 to {} bytes of text)",
            MAX_ROOM_LEN - 1
        ))
    }
}

/// A gateway notice: `src` is always `@gateway`.
#[derive(Debug, Serialize)]
pub struct Notice<'a> {
    src: &'static str,
    dst: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    msg: String,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    names: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl<'a> Notice<'a> {
    fn new(dst: &'a str, kind: &'static str, msg: String) -> Self {
        Notice {
            src: GATEWAY_NAME,
            dst,
            kind,
            msg,
            reference: None,
            names: None,
            room: None,
            event: None,
            name: None,
        }
    }

    /// An `error` notice for `dst`, with `ref` when the request had an `id`.
    pub fn error(dst: &'a str, msg: impl Into<String>, reference: Option<&'a Value>) -> Self {
        Notice {
            reference,
            ..Notice::new(dst, "error", msg.into())
        }
    }

    /// The reply to `list`.
    pub fn list(
        dst: &'a str,
        names: &'a [String],
        room: Option<&'a str>,
        reference: Option<&'a Value>,
    ) -> Self {
        let msg = match room {
            Some(room) => format!("{} in {room}", names.len()),
            None => format!("{} connected", names.len()),
        };
        Notice {
            names: Some(names),
            room,
            reference,
            ..Notice::new(dst, "list", msg)
        }
    }

    /// A presence event: `name` connected (`join`) or disconnected (`leave`).
    pub fn presence(dst: &'a str, joined: bool, name: &'a str) -> Self {
        let (event, verb) = if joined {
            ("join", "connected")
        } else {
            ("leave", "disconnected")
        };
        Notice {
            event: Some(event),
            name: Some(name),
            ..Notice::new(dst, "presence", format!("{name} {verb}"))
        }
    }

    /// The notice as a JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| unreachable!("a notice holds only strings and JSON values"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(r: Request) -> Envelope {
        match r {
            Request::Private(e) | Request::Room(e) => e,
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn qt_private_message() {
        let r = classify(r#"{"src":"C1","dst":"C2","msg":"hi"}"#);
        assert!(matches!(r, Request::Private(_)));
        let mut e = envelope(r);
        assert_eq!(e.dst, "C2");
        assert_eq!(e.claimed_src.as_deref(), Some("C1"));
        let out: Value = serde_json::from_str(&e.forward("real")).unwrap();
        assert_eq!(out, json!({"src":"real","dst":"C2","msg":"hi"}));
    }

    #[test]
    fn forward_keeps_other_fields_and_adds_src() {
        let mut e = envelope(classify(r#"{"dst":"b","msg":"x","extra":[1,{"k":null}]}"#));
        let out: Value = serde_json::from_str(&e.forward("a")).unwrap();
        assert_eq!(
            out,
            json!({"dst":"b","msg":"x","extra":[1,{"k":null}],"src":"a"})
        );
    }

    #[test]
    fn rooms_and_controls() {
        assert!(matches!(
            classify(r##"{"dst":"#r","msg":"x"}"##),
            Request::Room(_)
        ));
        assert_eq!(
            classify(r##"{"type":"join","room":"#r","id":7}"##),
            Request::Join {
                room: "#r".into(),
                id: Some(json!(7))
            }
        );
        assert_eq!(
            classify(r##"{"type":"leave","room":"#r"}"##),
            Request::Leave {
                room: "#r".into(),
                id: None
            }
        );
        assert_eq!(
            classify(r#"{"type":"list"}"#),
            Request::List {
                room: None,
                id: None
            }
        );
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
            assert_eq!(classify(text), Request::ToServer, "{text}");
        }
    }

    #[test]
    fn wrong_dst_type_is_an_error_with_ref() {
        let r = classify(r#"{"dst":5,"id":"a1"}"#);
        assert_eq!(
            r,
            Request::Invalid {
                reason: "invalid message: dst must be a string".into(),
                id: Some(json!("a1"))
            }
        );
    }

    #[test]
    fn notices() {
        let id = json!(3);
        let n: Value = serde_json::from_str(
            &Notice::error("bob", "recipient not connected: x", Some(&id)).to_json(),
        )
        .unwrap();
        assert_eq!(
            n,
            json!({"src":"@gateway","dst":"bob","type":"error","msg":"recipient not connected: x","ref":3})
        );
        let names = vec!["a".to_owned(), "b".to_owned()];
        let n: Value =
            serde_json::from_str(&Notice::list("a", &names, None, None).to_json()).unwrap();
        assert_eq!(n["names"], json!(["a", "b"]));
        assert_eq!(n["type"], "list");
        let n: Value = serde_json::from_str(&Notice::presence("a", true, "b").to_json()).unwrap();
        assert_eq!(n["event"], "join");
        assert_eq!(n["name"], "b");
    }
}
