//! The chat's text: the input line syntax (`@name text`, `#room text`,
//! `/join`...) turned into frames, and received frames turned into chat
//! lines or JSON lines. Pure, no I/O.

use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

use wssgate_wire::GATEWAY_NAME;
use wssgate_wire::check_room;

/// The `id` of the `list` request used as a barrier: the gateway handles a
/// session's frames in order, so its reply proves every earlier frame was
/// handled, and any `error` notice for them came before it.
pub const SYNC_ID: &str = "wssgate-client:sync";

/// The interactive commands, for `/help`.
pub const HELP: &str = "\
commands:
  text              plain text to the server (the operator)
  @name text        private message to name
  #room text        message to a room you joined
  /join #room       join a room
  /leave #room      leave a room
  /list [#room]     names connected (or members of a room)
  /raw TEXT         send TEXT as is (e.g. JSON, or text starting with @ or #)
  //text            plain text starting with /
  /help             this help
  /quit             close the connection and exit (also Ctrl-D, Ctrl-C)";

/// What one input line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send this text frame.
    Frame(String),
    /// Close and exit.
    Quit,
    /// Show [`HELP`].
    Help,
    /// An empty line: nothing.
    Nothing,
    /// A mistake, explained for the user; nothing is sent.
    Invalid(String),
}

/// A private or room message, as the Qt example writes it: compact JSON with
/// the keys in `QJsonObject` order (`dst`, `msg`, `src`).
pub fn message(src: &str, dst: &str, msg: &str) -> String {
    json!({"dst": dst, "msg": msg, "src": src}).to_string()
}

/// A `join`, `leave` or `list` request.
pub(crate) fn request(kind: &str, room: Option<&str>) -> String {
    match room {
        Some(room) => json!({"type": kind, "room": room}).to_string(),
        None => json!({"type": kind}).to_string(),
    }
}

/// The barrier request (see [`SYNC_ID`]).
pub(crate) fn sync_request() -> String {
    json!({"type": "list", "id": SYNC_ID}).to_string()
}

/// Turns one input line (without its line break) into a command; `name` is
/// the `src` of messages.
pub fn parse_line(line: &str, name: &str) -> Command {
    if line.trim().is_empty() {
        return Command::Nothing;
    }
    if let Some(rest) = line.strip_prefix("//") {
        return Command::Frame(format!("/{rest}"));
    }
    if let Some(command) = line.strip_prefix('/') {
        let (verb, rest) = split_word(command);
        let args: Vec<&str> = rest.split_whitespace().collect();
        return match (verb, args.as_slice()) {
            ("quit" | "exit", []) => Command::Quit,
            ("help", _) => Command::Help,
            ("raw", _) if !rest.is_empty() => Command::Frame(rest.to_owned()),
            ("join" | "leave", [room]) => match room_arg(room) {
                Ok(room) => Command::Frame(request(verb, Some(&room))),
                Err(e) => Command::Invalid(e),
            },
            ("list", []) => Command::Frame(request("list", None)),
            ("list", [room]) => match room_arg(room) {
                Ok(room) => Command::Frame(request("list", Some(&room))),
                Err(e) => Command::Invalid(e),
            },
            ("join" | "leave", _) => Command::Invalid(format!("usage: /{verb} #room")),
            ("list", _) => Command::Invalid("usage: /list [#room]".into()),
            ("raw", _) => Command::Invalid("usage: /raw TEXT".into()),
            ("quit" | "exit", _) => Command::Invalid(format!("usage: /{verb}")),
            _ => Command::Invalid(format!(
                "unknown command /{verb} (/help lists the commands; //text sends text starting with /)"
            )),
        };
    }
    if let Some(to) = line.strip_prefix('@') {
        let (dst, text) = split_word(to);
        if dst.is_empty() || text.is_empty() {
            return Command::Invalid("usage: @name text".into());
        }
        return Command::Frame(message(name, dst, text));
    }
    if line.starts_with('#') {
        let (room, text) = split_word(line);
        if let Err(e) = check_room(room) {
            return Command::Invalid(e);
        }
        if text.is_empty() {
            return Command::Invalid("usage: #room text".into());
        }
        return Command::Frame(message(name, room, text));
    }
    Command::Frame(line.to_owned())
}

/// The first word and the rest with its leading blanks removed.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (s, ""),
    }
}

/// A room argument; the `#` may be left out.
fn room_arg(room: &str) -> Result<String, String> {
    let room = if room.starts_with('#') {
        room.to_owned()
    } else {
        format!("#{room}")
    };
    check_room(&room).map(|()| room)
}

/// The frame `--send TEXT [--to DST]` sends.
pub fn send_frame(name: &str, text: &str, to: Option<&str>) -> String {
    match to {
        Some(dst) => message(name, dst, text),
        None => text.to_owned(),
    }
}

/// A received frame as a chat line, the way the Qt example shows it;
/// `None` for control frames.
pub fn display(frame: &Message) -> Option<String> {
    match frame {
        Message::Text(text) => Some(display_text(text)),
        Message::Binary(data) => Some(format!(
            "server: (binary message, {} bytes; --json shows it in base64)",
            data.len()
        )),
        _ => None,
    }
}

fn display_text(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => display_object(&object, text),
        _ => format!("server: {}", clean(text)),
    }
}

fn display_object(object: &Map<String, Value>, raw: &str) -> String {
    let field = |key: &str| object.get(key).and_then(Value::as_str);
    let msg = object.get("msg").map(value_text);
    let names = |key: &str| -> Vec<String> {
        object
            .get(key)
            .and_then(Value::as_array)
            .map(|names| names.iter().map(value_text).collect())
            .unwrap_or_default()
    };
    match (field("src"), field("type")) {
        (Some(GATEWAY_NAME), Some(kind)) => {
            let msg = msg.unwrap_or_default();
            match kind {
                "error" => format!("error: {msg}"),
                "list" => format!("{msg}: {}", names("names").join(", ")),
                "presence" => match (field("name"), field("event")) {
                    (Some(name), Some("join")) => format!("{} connected", clean(name)),
                    (Some(name), Some("leave")) => format!("{} disconnected", clean(name)),
                    (None, Some("digest")) => {
                        let mut parts = Vec::new();
                        let (joined, left) = (names("joined"), names("left"));
                        if !joined.is_empty() {
                            parts.push(format!("connected: {}", joined.join(", ")));
                        }
                        if !left.is_empty() {
                            parts.push(format!("disconnected: {}", left.join(", ")));
                        }
                        parts.join("; ")
                    }
                    _ => msg,
                },
                _ => format!("gateway: {msg}"),
            }
        }
        (Some(src), _) => {
            let msg = msg.unwrap_or_else(|| clean(raw));
            match field("dst").filter(|dst| dst.starts_with('#')) {
                Some(room) => format!("[{}] from {}: {msg}", clean(room), clean(src)),
                None => format!("from {}: {msg}", clean(src)),
            }
        }
        (None, _) => format!("server: {}", clean(raw)),
    }
}

/// A JSON value as display text: strings bare, anything else as JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

/// Peer text made safe for a terminal: control characters (escape
/// sequences, line breaks) are shown escaped instead of acting.
pub(crate) fn clean(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A received frame as one JSON line for `--json`: a text frame holding a
/// JSON object as is, other text as `{"text": ...}`, binary as
/// `{"binary_base64": ...}`; `None` for control frames.
pub fn json_line(frame: &Message) -> Option<String> {
    match frame {
        Message::Text(text) => Some(match serde_json::from_str::<Value>(text) {
            // A pretty-printed object is re-serialized to stay on one line
            // (serde_json keeps the key order).
            Ok(value @ Value::Object(_)) if text.contains(['\n', '\r']) => value.to_string(),
            Ok(Value::Object(_)) => text.trim().to_owned(),
            _ => json!({"text": text.as_str()}).to_string(),
        }),
        Message::Binary(data) => {
            Some(json!({"binary_base64": data_encoding::BASE64.encode(data)}).to_string())
        }
        _ => None,
    }
}

/// A gateway notice of this `type` (`error`, `list`...), parsed.
fn notice(frame: &Message, kind: &str) -> Option<Map<String, Value>> {
    let Message::Text(text) = frame else {
        return None;
    };
    let object = serde_json::from_str::<Map<String, Value>>(text).ok()?;
    let is = object.get("src").and_then(Value::as_str) == Some(GATEWAY_NAME)
        && object.get("type").and_then(Value::as_str) == Some(kind);
    is.then_some(object)
}

/// True for the reply to our barrier request.
pub(crate) fn is_sync_reply(frame: &Message) -> bool {
    notice(frame, "list").is_some_and(|n| n.get("ref").and_then(Value::as_str) == Some(SYNC_ID))
}

/// The text of an error notice.
pub(crate) fn error_notice(frame: &Message) -> Option<String> {
    notice(frame, "error").map(|n| n.get("msg").map(value_text).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

    fn frame(text: &str) -> Command {
        Command::Frame(text.to_owned())
    }

    #[test]
    fn lines_become_frames() {
        let me = "alice";
        for (line, expected) in [
            ("hello server", frame("hello server")),
            ("  spaced ", frame("  spaced ")),
            (
                "@bob hi there",
                frame(r#"{"dst":"bob","msg":"hi there","src":"alice"}"#),
            ),
            (
                "#lobby hi all",
                frame(r##"{"dst":"#lobby","msg":"hi all","src":"alice"}"##),
            ),
            (
                "/join #lobby",
                frame(r##"{"type":"join","room":"#lobby"}"##),
            ),
            ("/join lobby", frame(r##"{"type":"join","room":"#lobby"}"##)),
            (
                "/leave #lobby",
                frame(r##"{"type":"leave","room":"#lobby"}"##),
            ),
            ("/list", frame(r#"{"type":"list"}"#)),
            ("/list #r", frame(r##"{"type":"list","room":"#r"}"##)),
            ("//etc/motd", frame("/etc/motd")),
            ("/raw @not a message", frame("@not a message")),
            ("/quit", Command::Quit),
            ("/help", Command::Help),
            ("", Command::Nothing),
            ("   ", Command::Nothing),
        ] {
            assert_eq!(parse_line(line, me), expected, "{line:?}");
        }
    }

    #[test]
    fn mistakes_are_explained_not_sent() {
        for line in [
            "@bob",
            "@ hi",
            "#lobby",
            "#",
            "/join",
            "/join #a #b",
            "/list #a #b",
            "/frobnicate",
            "/quit now",
            "/raw",
        ] {
            assert!(
                matches!(parse_line(line, "me"), Command::Invalid(_)),
                "{line:?}"
            );
        }
    }

    #[test]
    fn unicode_names_and_quotes_are_escaped_json() {
        let Command::Frame(text) = parse_line("@C1我是客户端 say \"hi\"", "José") else {
            panic!("not a frame");
        };
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({"dst":"C1我是客户端","msg":"say \"hi\"","src":"José"})
        );
    }

    #[test]
    fn send_frames() {
        assert_eq!(send_frame("a", "x", None), "x");
        assert_eq!(
            send_frame("a", "x", Some("b")),
            r#"{"dst":"b","msg":"x","src":"a"}"#
        );
        assert_eq!(
            send_frame("a", "x", Some("#r")),
            r##"{"dst":"#r","msg":"x","src":"a"}"##
        );
    }

    fn shown(text: &str) -> String {
        display(&Message::Text(Utf8Bytes::from(text.to_owned()))).unwrap()
    }

    #[test]
    fn frames_are_shown_as_the_qt_example_does() {
        for (text, expected) in [
            (r#"{"dst":"me","msg":"hi","src":"bob"}"#, "from bob: hi"),
            (
                r##"{"dst":"#r","msg":"hi","src":"bob"}"##,
                "[#r] from bob: hi",
            ),
            (r#"{"src":"bob","msg":{"n":1}}"#, r#"from bob: {"n":1}"#),
            (r#"{"src":"bob","x":1}"#, r#"from bob: {"src":"bob","x":1}"#),
            (
                r#"{"src":"@gateway","dst":"me","type":"error","msg":"recipient not connected: x"}"#,
                "error: recipient not connected: x",
            ),
            (
                r#"{"src":"@gateway","dst":"me","type":"list","msg":"2 connected","names":["a","b"]}"#,
                "2 connected: a, b",
            ),
            (
                r#"{"src":"@gateway","dst":"me","type":"presence","msg":"bob connected","event":"join","name":"bob"}"#,
                "bob connected",
            ),
            (
                r#"{"src":"@gateway","dst":"me","type":"presence","msg":"x","event":"leave","name":"bob"}"#,
                "bob disconnected",
            ),
            (
                r#"{"src":"@gateway","dst":"me","type":"presence","msg":"2 connected, 1 disconnected","event":"digest","joined":["a","b"],"left":["c"]}"#,
                "connected: a, b; disconnected: c",
            ),
            (
                r#"{"src":"@gateway","type":"future","msg":"m"}"#,
                "gateway: m",
            ),
            ("hello all", "server: hello all"),
            ("[1,2]", "server: [1,2]"),
            (r#"{"msg":"no src"}"#, r#"server: {"msg":"no src"}"#),
        ] {
            assert_eq!(shown(text), expected, "{text}");
        }
    }

    #[test]
    fn abuse_terminal_escapes_are_defused() {
        let line = shown("{\"src\":\"e\\u001b[2Jvil\",\"msg\":\"a\\nb\\u0007\"}");
        assert_eq!(line, "from e\\u{1b}[2Jvil: a\\nb\\u{7}");
        assert!(!line.chars().any(char::is_control));
        assert_eq!(
            shown("x\u{1b}]0;title\u{7}"),
            "server: x\\u{1b}]0;title\\u{7}"
        );
    }

    #[test]
    fn binary_and_control_frames() {
        let bin = Message::Binary(Bytes::from_static(b"\x00\x01bin"));
        assert!(display(&bin).unwrap().contains("5 bytes"));
        assert_eq!(json_line(&bin).unwrap(), r#"{"binary_base64":"AAFiaW4="}"#);
        assert_eq!(display(&Message::Ping(Bytes::new())), None);
        assert_eq!(json_line(&Message::Pong(Bytes::new())), None);
    }

    #[test]
    fn json_lines() {
        let line = |t: &str| json_line(&Message::Text(Utf8Bytes::from(t.to_owned()))).unwrap();
        assert_eq!(
            line(r#"{"dst":"me","msg":"hi","src":"bob"}"#),
            r#"{"dst":"me","msg":"hi","src":"bob"}"#
        );
        assert_eq!(line("{\n  \"b\": 1,\n  \"a\": 2\n}"), r#"{"b":1,"a":2}"#);
        assert_eq!(line("hello"), r#"{"text":"hello"}"#);
        assert_eq!(line("42"), r#"{"text":"42"}"#);
        assert_eq!(line("a\nb"), r#"{"text":"a\nb"}"#);
    }

    #[test]
    fn sync_reply_and_errors_are_recognized() {
        let text = |t: String| Message::Text(Utf8Bytes::from(t));
        let reply = text(
            json!({"src":"@gateway","dst":"a","type":"list","msg":"1 connected","names":["a"],"ref":SYNC_ID})
                .to_string(),
        );
        assert!(is_sync_reply(&reply));
        let user_list = text(json!({"src":"@gateway","type":"list","names":[]}).to_string());
        assert!(!is_sync_reply(&user_list));
        let spoof = text(json!({"src":"bob","type":"list","ref":SYNC_ID}).to_string());
        assert!(!is_sync_reply(&spoof));
        let error = text(json!({"src":"@gateway","type":"error","msg":"nope"}).to_string());
        assert_eq!(error_notice(&error).as_deref(), Some("nope"));
        assert_eq!(error_notice(&user_list), None);
    }
}
