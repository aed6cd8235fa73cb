//! Presence that cannot take a client down: joins and leaves go into one
//! bounded log, and each session reads it at its own pace, instead of being
//! sent one queued frame per event.
//!
//! An event costs one log entry and a flag set on every other session's
//! outbox (no frame, no allocation per receiver). A session that wakes with
//! a few unseen events writes them as `presence` notices; one that fell
//! further behind (a storm of joins or leaves) gets one digest frame of who
//! connected and who left, net; one the log has wrapped past gets a `list`
//! of who is connected instead, at most once per [`RESYNC_INTERVAL`].
//! Presence never takes room in the outbound queue, so it can never fill it
//! and be the reason a session is closed; and what a session is sent grows
//! with what changed, not with how many are connected.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use wssgate_wire::ClientName;
use wssgate_wire::notice::Presence;

/// Events kept; a session more than this far behind resyncs with a `list`.
const LOG_CAP: usize = 4096;
/// Unseen events a session is sent one by one; more and it gets a digest.
pub const MAX_NOTICES: u64 = 32;
/// Shortest time between two `list` resyncs of one session: in a storm,
/// what happens meanwhile is folded into the next one.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

struct Entry {
    seq: u64,
    event: Presence,
    name: ClientName,
    /// The session the event is about (not told of its own join).
    session: u64,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<Entry>,
    /// Sequence number of the next event.
    next: u64,
}

/// The log of joins and leaves.
#[derive(Default)]
pub struct Log(Mutex<Inner>);

/// What a session has not seen yet.
#[derive(Debug, PartialEq, Eq)]
pub enum Backlog {
    /// Nothing new.
    Nothing,
    /// A few events, in order, to be sent one by one.
    Events(Vec<(Presence, ClientName)>),
    /// Many events, folded: who connected and who left since the cursor
    /// (a name that came and went, or went and came back, is in neither).
    Digest {
        /// Connected now, not at the cursor.
        joined: Vec<String>,
        /// Connected at the cursor, not now.
        left: Vec<String>,
    },
    /// Some are gone from the log: resync with a `list`.
    Behind,
}

impl Log {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section is a push or a read of whole entries: a
        // panic cannot leave the log inconsistent, so poisoning is ignored.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cursor of a session that has seen everything so far.
    pub fn head(&self) -> u64 {
        self.lock().next
    }

    /// Records an event about `session` named `name`.
    pub fn record(&self, event: Presence, name: ClientName, session: u64) {
        let mut inner = self.lock();
        let seq = inner.next;
        inner.next += 1;
        if inner.entries.len() == LOG_CAP {
            inner.entries.pop_front();
        }
        inner.entries.push_back(Entry {
            seq,
            event,
            name,
            session,
        });
    }

    /// What `session`, whose cursor is `cursor`, has not seen: the events
    /// when they are few, a digest when they are many, the cursor moved past
    /// them; [`Backlog::Behind`], cursor unmoved, when some left the log.
    pub fn since(&self, cursor: &mut u64, session: u64) -> Backlog {
        let inner = self.lock();
        let unseen = inner.next.saturating_sub(*cursor);
        if unseen == 0 {
            return Backlog::Nothing;
        }
        let oldest = inner.entries.front().map_or(inner.next, |e| e.seq);
        if *cursor < oldest {
            return Backlog::Behind;
        }
        // Sequence numbers are consecutive: the cursor's entry is found by
        // arithmetic, and only the unseen entries are read (a scan from the
        // front cost every session the whole log at every event).
        let skip = usize::try_from(*cursor - oldest).unwrap_or(usize::MAX);
        let events = inner
            .entries
            .range(skip.min(inner.entries.len())..)
            .filter(|e| e.session != session);
        let backlog = if unseen <= MAX_NOTICES {
            Backlog::Events(events.map(|e| (e.event, e.name.clone())).collect())
        } else {
            digest(events)
        };
        *cursor = inner.next;
        backlog
    }
}

/// Folds events into who connected and who left: a name whose first and
/// last events differ (came and went, went and came back) is in neither.
fn digest<'e>(events: impl Iterator<Item = &'e Entry>) -> Backlog {
    // name -> (first event, last event), in order of first appearance.
    let mut seen: Vec<(&ClientName, Presence, Presence)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for e in events {
        match index.get(e.name.as_str()) {
            Some(&i) => seen[i].2 = e.event,
            None => {
                index.insert(e.name.as_str(), seen.len());
                seen.push((&e.name, e.event, e.event));
            }
        }
    }
    let (mut joined, mut left) = (Vec::new(), Vec::new());
    for (name, first, last) in seen {
        match (first, last) {
            (Presence::Join, Presence::Join) => joined.push(name.to_string()),
            (Presence::Leave, Presence::Leave) => left.push(name.to_string()),
            _ => {}
        }
    }
    Backlog::Digest { joined, left }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> ClientName {
        ClientName::new(n).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_session_sees_the_others_events_once_and_in_order() {
        let log = Log::default();
        let mut cursor = log.head();
        log.record(Presence::Join, name("a"), 1);
        log.record(Presence::Join, name("me"), 2);
        log.record(Presence::Leave, name("a"), 1);
        assert_eq!(
            log.since(&mut cursor, 2),
            Backlog::Events(vec![
                (Presence::Join, name("a")),
                (Presence::Leave, name("a"))
            ])
        );
        assert_eq!(log.since(&mut cursor, 2), Backlog::Nothing);
    }

    #[test]
    fn a_session_far_behind_gets_a_digest_net_of_comings_and_goings() {
        let log = Log::default();
        let mut cursor = log.head();
        log.record(Presence::Leave, name("old"), 1);
        log.record(Presence::Join, name("flicker"), 2);
        log.record(Presence::Leave, name("flicker"), 2);
        log.record(Presence::Leave, name("back"), 3);
        log.record(Presence::Join, name("back"), 4);
        for i in 0..MAX_NOTICES {
            log.record(Presence::Join, name(&format!("c{i}")), i + 10);
        }
        let Backlog::Digest { joined, left } = log.since(&mut cursor, 99) else {
            panic!("a digest");
        };
        assert_eq!(left, ["old"]);
        assert_eq!(joined.len(), MAX_NOTICES as usize);
        assert_eq!(joined[0], "c0");
        assert_eq!(log.since(&mut cursor, 99), Backlog::Nothing);
        log.record(Presence::Leave, name("c0"), 10);
        assert_eq!(
            log.since(&mut cursor, 99),
            Backlog::Events(vec![(Presence::Leave, name("c0"))])
        );
    }

    #[test]
    fn the_log_is_bounded_and_a_cursor_it_wrapped_past_resyncs() {
        let log = Log::default();
        let mut cursor = log.head();
        for i in 0..(LOG_CAP as u64 + 5) {
            log.record(Presence::Join, name("x"), i);
        }
        assert_eq!(log.lock().entries.len(), LOG_CAP);
        let mut near = log.head() - 1;
        assert_eq!(
            log.since(&mut near, u64::MAX),
            Backlog::Events(vec![(Presence::Join, name("x"))])
        );
        assert_eq!(log.since(&mut cursor, u64::MAX), Backlog::Behind);
    }

    #[test]
    fn a_cursor_in_a_wrapped_log_reads_exactly_what_followed_it() {
        let log = Log::default();
        for i in 0..(LOG_CAP as u64 * 2 + 7) {
            log.record(Presence::Join, name(&format!("n{i}")), i);
        }
        let head = log.head();
        // Three behind: those three, in order, the reader's own left out.
        let mut cursor = head - 3;
        let expect = |from: u64| -> Vec<_> {
            (from..head)
                .filter(|&i| i != head - 2)
                .map(|i| (Presence::Join, name(&format!("n{i}"))))
                .collect()
        };
        assert_eq!(
            log.since(&mut cursor, head - 2),
            Backlog::Events(expect(head - 3))
        );
        assert_eq!(cursor, head);
        // The oldest entry still kept: everything, folded into a digest.
        let mut oldest = head - LOG_CAP as u64;
        let Backlog::Digest { joined, left } = log.since(&mut oldest, u64::MAX) else {
            panic!("a digest");
        };
        assert_eq!(joined.len(), LOG_CAP);
        assert_eq!(joined[0], format!("n{}", head - LOG_CAP as u64));
        assert_eq!(joined[LOG_CAP - 1], format!("n{}", head - 1));
        assert!(left.is_empty());
        // One further back has left the log.
        let mut gone = head - LOG_CAP as u64 - 1;
        assert_eq!(log.since(&mut gone, u64::MAX), Backlog::Behind);
    }
}
