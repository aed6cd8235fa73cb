//! A session's bounded outbound queue: many routers push without waiting,
//! one session task drains.
//!
//! Not a tokio `mpsc` channel: that allocates a block of 32 slots for every
//! channel up front (about 1.5 KiB per connection, most of an idle
//! connection's budget). This queue allocates nothing until the first frame,
//! grows with bursts, and gives memory back once drained.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// Capacity kept after a burst has been drained; beyond it memory is returned.
const KEEP_CAPACITY: usize = 16;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` frames: the receiver is a slow consumer.
    Full,
    /// The session is gone.
    Closed,
}

/// The queue; shared between the routers (push) and the session (pop).
/// Besides frames it carries one flag, "presence changed": set by any number
/// of joins and leaves, taken once, and never counted against `capacity`.
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
    presence: AtomicBool,
}

/// What the session should write next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// A queued frame.
    Frame(Message),
    /// Presence changed since the session last looked (see `presence.rs`).
    Presence,
}

struct State {
    frames: VecDeque<Message>,
    closed: bool,
}

impl Outbox {
    /// An empty queue holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            capacity,
            presence: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a single push or pop: a panic cannot
        // leave the queue inconsistent, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting.
    pub fn push(&self, frame: Message) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        if state.frames.len() >= self.capacity {
            return Err(PushError::Full);
        }
        let was_empty = state.frames.is_empty();
        state.frames.push_back(frame);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next frame, if one is queued.
    pub fn try_pop(&self) -> Option<Message> {
        let mut state = self.lock();
        let frame = state.frames.pop_front();
        if state.frames.is_empty() && state.frames.capacity() > KEEP_CAPACITY {
            state.frames.shrink_to(KEEP_CAPACITY);
        }
        frame
    }

    /// Flags that presence changed; wakes the session if the flag was clear.
    /// Many calls before the session looks are one.
    pub fn mark_presence(&self) {
        if !self.presence.swap(true, Ordering::AcqRel) {
            self.ready.notify_one();
        }
    }

    /// Waits for what to write next: the presence flag first (so that a
    /// join is told before the newcomer's messages), then queued frames.
    /// Cancel-safe: nothing is taken unless returned. `None` once the queue
    /// is closed and empty.
    pub async fn pop(&self) -> Option<Next> {
        loop {
            if self.presence.swap(false, Ordering::AcqRel) {
                return Some(Next::Presence);
            }
            {
                let mut state = self.lock();
                if let Some(frame) = state.frames.pop_front() {
                    return Some(Next::Frame(frame));
                }
                if state.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Refuses new frames; queued ones can still be popped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_fifo_that_closes() {
        let q = Outbox::new(2);
        assert_eq!(q.push(Message::text("a")), Ok(()));
        assert_eq!(q.push(Message::text("b")), Ok(()));
        assert_eq!(q.push(Message::text("c")), Err(PushError::Full));
        assert_eq!(q.pop().await, Some(Next::Frame(Message::text("a"))));
        assert_eq!(q.try_pop(), Some(Message::text("b")));
        assert_eq!(q.try_pop(), None);
        q.push(Message::text("d")).unwrap();
        q.close();
        assert_eq!(q.push(Message::text("e")), Err(PushError::Closed));
        assert_eq!(q.pop().await, Some(Next::Frame(Message::text("d"))));
        assert_eq!(q.pop().await, None);
    }

    #[tokio::test]
    async fn a_waiting_pop_wakes_on_push() {
        let q = std::sync::Arc::new(Outbox::new(4));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.push(Message::text("x")).unwrap();
        assert_eq!(waiter.await.unwrap(), Some(Next::Frame(Message::text("x"))));
    }

    #[tokio::test]
    async fn presence_is_one_flag_outside_the_capacity_and_comes_first() {
        let q = std::sync::Arc::new(Outbox::new(1));
        q.push(Message::text("a")).unwrap();
        for _ in 0..1000 {
            q.mark_presence();
        }
        assert_eq!(q.push(Message::text("b")), Err(PushError::Full));
        assert_eq!(q.pop().await, Some(Next::Presence));
        assert_eq!(q.pop().await, Some(Next::Frame(Message::text("a"))));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.mark_presence();
        assert_eq!(waiter.await.unwrap(), Some(Next::Presence));
    }

    #[test]
    fn memory_is_given_back_after_a_burst() {
        let q = Outbox::new(1000);
        for _ in 0..500 {
            q.push(Message::text("x")).unwrap();
        }
        while q.try_pop().is_some() {}
        assert!(q.lock().frames.capacity() <= KEEP_CAPACITY);
    }
}
