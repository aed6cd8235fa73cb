//! Presence that cannot take a client down: joins and leaves go into one
//! bounded log, and each session reads it at its own pace, instead of being
//! sent one queued frame per event.
//!
//! An event costs one log entry and a flag set on every other session's
//! outbox (no frame, no allocation per receiver). A session that wakes with
//! a few unseen events writes them as `presence` notices; one that fell
//! further behind (a storm of joins or leaves, or a log that wrapped past it)
//! gets a single `list` notice of who is connected instead, at most once per
//! [`RESYNC_INTERVAL`]. Presence never takes room in the outbound queue, so
//! it can never fill it and be the reason a session is closed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use wssgate_wire::ClientName;
use wssgate_wire::notice::Presence;

/// Events kept; a session more than this far behind resyncs with a `list`.
const LOG_CAP: usize = 4096;
/// Unseen events a session is sent one by one; more and it gets a `list`.
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
    /// Too many, or some are gone from the log: resync with a `list`.
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

    /// What `session`, whose cursor is `cursor`, has not seen. Events are
    /// returned (and the cursor moved past them) only when they are few and
    /// all still in the log; otherwise [`Backlog::Behind`], cursor unmoved.
    pub fn since(&self, cursor: &mut u64, session: u64) -> Backlog {
        let inner = self.lock();
        let unseen = inner.next.saturating_sub(*cursor);
        if unseen == 0 {
            return Backlog::Nothing;
        }
        let oldest = inner.entries.front().map_or(inner.next, |e| e.seq);
        if *cursor < oldest || unseen > MAX_NOTICES {
            return Backlog::Behind;
        }
        let events = inner
            .entries
            .iter()
            .filter(|e| e.seq >= *cursor && e.session != session)
            .map(|e| (e.event, e.name.clone()))
            .collect();
        *cursor = inner.next;
        Backlog::Events(events)
    }

    /// Moves a cursor to the head, before the `list` that resyncs it is
    /// taken: an event recorded in between is then sent again as a notice
    /// (told twice, never lost).
    pub fn catch_up(&self, cursor: &mut u64) {
        *cursor = self.head();
    }
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
    fn a_session_far_behind_resyncs_instead() {
        let log = Log::default();
        let mut cursor = log.head();
        for i in 0..=MAX_NOTICES {
            log.record(Presence::Join, name(&format!("c{i}")), i + 10);
        }
        assert_eq!(log.since(&mut cursor, 1), Backlog::Behind);
        log.catch_up(&mut cursor);
        assert_eq!(log.since(&mut cursor, 1), Backlog::Nothing);
        log.record(Presence::Leave, name("c0"), 10);
        assert_eq!(
            log.since(&mut cursor, 1),
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
}
