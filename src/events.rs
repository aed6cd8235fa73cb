//! Operator events: messages to the server, connects, disconnects and errors,
//! fanned out to `GET /events` subscribers as JSON lines.
//!
//! An event is serialized once, and only when someone is listening. What
//! travels to subscribers is that JSON plus the little a subscriber must act
//! on ([`Published::last`]), so no subscriber parses JSON to decide anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;

/// Events buffered for a subscriber that falls behind; older ones are skipped.
pub const EVENT_BUFFER: usize = 1024;

/// Something the operator may want to see.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event<'a> {
    /// A session was admitted.
    Connect {
        /// Client name.
        name: &'a str,
        /// Client address.
        remote: SocketAddr,
        /// Listener name.
        listener: &'a str,
        /// Whether it came over TLS.
        tls: bool,
        /// When the handshake completed (RFC 3339, to the second).
        #[serde(serialize_with = "rfc3339")]
        connected_at: SystemTime,
        /// Whether the name is a provisional Qt name.
        provisional: bool,
    },
    /// A session ended.
    Disconnect {
        /// Client name.
        name: &'a str,
        /// Client address.
        remote: SocketAddr,
        /// Why it ended.
        reason: &'a str,
    },
    /// A provisional (Qt) name was replaced by the full one.
    Rename {
        /// The name the session had.
        from: &'a str,
        /// The full name it took.
        to: &'a str,
    },
    /// A text message to the server.
    Message {
        /// Sender.
        name: &'a str,
        /// Sender address.
        remote: SocketAddr,
        /// The text, exactly as sent.
        text: &'a str,
    },
    /// A binary message to the server.
    Binary {
        /// Sender.
        name: &'a str,
        /// Sender address.
        remote: SocketAddr,
        /// The payload, base64.
        base64: String,
    },
    /// A TLS listener's certificate files were reloaded (or failed to).
    TlsReload {
        /// Listener name.
        listener: &'a str,
        /// Why the reload failed (the old certificate stays in use).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    },
    /// The token keys (`[auth] public_keys`) were reloaded (or failed to).
    TokenKeysReload {
        /// Why the reload failed (the old keys stay in use).
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    },
    /// The gateway is shutting down: the last event of every `/events`
    /// stream (sessions are then closed with 1001; those disconnects are not
    /// streamed).
    Shutdown,
    /// A client error the gateway answered (unknown recipient, slow consumer...).
    Error {
        /// The client concerned.
        name: &'a str,
        /// Its address.
        remote: SocketAddr,
        /// What went wrong.
        msg: &'a str,
    },
}

/// A time as `GET /clients` writes it: RFC 3339 in UTC, to the second.
fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_seconds(*time))
}

impl Event<'_> {
    /// True for the event after which a stream has nothing more to say
    /// ([`Event::Shutdown`]).
    pub fn is_last(&self) -> bool {
        matches!(self, Event::Shutdown)
    }
}

/// An event as every subscriber receives it; cheap to clone (the JSON is shared).
#[derive(Debug, Clone)]
pub struct Published {
    /// The event, serialized once for all subscribers.
    pub json: Arc<str>,
    /// The last event of a stream ([`Event::is_last`]): a subscriber ends
    /// its stream after forwarding it.
    pub last: bool,
}

/// The fan-out point; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Published>,
}

impl Events {
    /// A hub with no subscribers.
    pub fn new() -> Events {
        Events {
            tx: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    /// Publishes an event; free when nobody subscribes.
    pub fn publish(&self, event: &Event<'_>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        if let Ok(json) = serde_json::to_string(event) {
            let published = Published {
                json: json.into(),
                last: event.is_last(),
            };
            // An error here only means every subscriber left meanwhile.
            let _ = self.tx.send(published);
        }
    }

    /// A new subscriber, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.tx.subscribe()
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shutdown_event_is_last() {
        let events = Events::new();
        let mut rx = events.subscribe();
        let remote: SocketAddr = ([127, 0, 0, 1], 9).into();
        events.publish(&Event::Connect {
            name: "a",
            remote,
            listener: "ws",
            tls: false,
            connected_at: std::time::UNIX_EPOCH,
            provisional: false,
        });
        events.publish(&Event::Shutdown);
        let connect = rx.try_recv().expect("the connect event");
        assert!(!connect.last);
        assert_eq!(
            &*connect.json,
            r#"{"type":"connect","name":"a","remote":"127.0.0.1:9","listener":"ws","tls":false,"connected_at":"1970-01-01T00:00:00Z","provisional":false}"#
        );
        let shutdown = rx.try_recv().expect("the shutdown event");
        assert!(shutdown.last);
        assert_eq!(&*shutdown.json, r#"{"type":"shutdown"}"#);
    }
}
