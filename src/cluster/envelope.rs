//! What travels between nodes: a one-line JSON header, a newline, and the
//! client frame exactly as the local clients get it. The frame is not
//! escaped into the header, so a message costs its own bytes plus a small
//! header, and a receiving node hands the frame on without rewriting it.

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

/// The header of a message between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    /// The node that published it.
    pub(crate) o: String,
    /// What it asks for.
    pub(crate) k: Kind,
    /// The name concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) n: Option<String>,
    /// A private message's sender (an error goes back to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) s: Option<String>,
    /// The sender's request `id`, for the `ref` of an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) i: Option<Box<RawValue>>,
    /// A session id (replacement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<u64>,
    /// The dead node a reaper announces a leave for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) d: Option<String>,
    /// The name the sender wrote, when `n` is its Qt Latin-1 form (only a
    /// provisional session may take it), or a rename's new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) t: Option<String>,
}

impl Header {
    /// A header of `kind` from `origin` about `name`.
    pub(crate) fn new(origin: &str, kind: Kind, name: Option<&str>) -> Header {
        Header {
            o: origin.to_owned(),
            k: kind,
            n: name.map(str::to_owned),
            s: None,
            i: None,
            id: None,
            d: None,
            t: None,
        }
    }

    /// The header, a newline and `body`, ready to publish.
    pub(crate) fn encode(&self, body: &str) -> String {
        // A header holds strings and valid raw JSON only: it serializes.
        let header = serde_json::to_string(self)
            .unwrap_or_else(|_| unreachable!("a header holds only strings and JSON values"));
        let mut out = String::with_capacity(header.len() + 1 + body.len());
        out.push_str(&header);
        out.push('\n');
        out.push_str(body);
        out
    }

    /// Splits a published payload into its header and body; `None` for a
    /// payload no node of this version wrote.
    pub(crate) fn decode(payload: &str) -> Option<(Header, &str)> {
        let (header, body) = payload.split_once('\n')?;
        Some((serde_json::from_str(header).ok()?, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_travels_unescaped_and_comes_back_whole() {
        let mut h = Header::new("n1", Kind::Msg, Some("bob"));
        h.s = Some("alice".into());
        h.i = serde_json::from_str::<Box<RawValue>>(r#"{"x":[1]}"#).ok();
        let frame = "{\"src\":\"alice\",\"dst\":\"bob\",\"msg\":\"a\\nb \\\"q\\\"\"}\nsecond line";
        let payload = h.encode(frame);
        assert!(payload.contains(frame));
        let (back, body) = Header::decode(&payload).unwrap();
        assert_eq!(body, frame);
        assert_eq!((back.o.as_str(), back.k), ("n1", Kind::Msg));
        assert_eq!(back.n.as_deref(), Some("bob"));
        assert_eq!(back.s.as_deref(), Some("alice"));
        assert_eq!(back.i.unwrap().get(), r#"{"x":[1]}"#);
        assert!(Header::decode("no newline").is_none());
        assert!(Header::decode("{\"o\":1}\nx").is_none());
    }
}
