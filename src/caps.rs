//! Connection accounting: the gateway-wide cap (`max_connections`), the
//! cap per client address (`max_connections_per_address`) and the budget
//! of connections still in their handshakes (`max_pending_handshakes`).
//! Each place taken is a value that gives it back when dropped, so no path
//! can leak one.
//!
//! Counting is all this module does; what a connection over a cap is told
//! is the admission module's call.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Connections over the cap that may wait for their 503 at once; beyond
/// this, excess connections are dropped without an answer.
pub(crate) const MAX_REFUSING: usize = 1024;

/// Sessions plus handshakes in progress, under `max_connections`.
pub(crate) struct ConnectionCap {
    permits: Arc<Semaphore>,
    /// Connections over the cap still being answered (at most [`MAX_REFUSING`]).
    refusing: Arc<AtomicUsize>,
}

/// A connection's place under [`ConnectionCap`], taken before its task
/// starts, so that nothing in the accept loop waits. Held, never read:
/// dropping it gives the place back.
pub(crate) enum Place {
    /// Under the cap: the permit is held until the session ends.
    Admitted { _permit: OwnedSemaphorePermit },
    /// Over the cap, but with room to be told so (503).
    Refusing { _slot: RefusingSlot },
}

/// One of the [`MAX_REFUSING`] places of connections waiting for their 503.
pub(crate) struct RefusingSlot(Arc<AtomicUsize>);

impl ConnectionCap {
    pub(crate) fn new(max_connections: usize) -> ConnectionCap {
        ConnectionCap {
            permits: Arc::new(Semaphore::new(max_connections)),
            refusing: Arc::default(),
        }
    }

    /// A place for a new connection; `None` when it is over the cap and
    /// too many are already waiting for their refusal.
    pub(crate) fn enter(&self) -> Option<Place> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(Place::Admitted { _permit: permit });
        }
        self.refuse()
    }

    /// A place to be refused in (a connection from an address already at
    /// its limit): never a permit, so such connections cannot take the
    /// places of others; `None` when too many are waiting for their refusal.
    pub(crate) fn refuse(&self) -> Option<Place> {
        if self.refusing.fetch_add(1, Ordering::Relaxed) < MAX_REFUSING {
            let _slot = RefusingSlot(self.refusing.clone());
            return Some(Place::Refusing { _slot });
        }
        self.refusing.fetch_sub(1, Ordering::Relaxed);
        None
    }
}

/// Connections under the cap that have not finished their handshakes
/// (PROXY header, TLS, upgrade). At most `budget` at once: a new one beyond
/// it evicts the one that has waited longest, so that silent or slow
/// handshakes can hold at most `budget` of the cap, and a client that
/// completes its handshake promptly always finds a place.
pub(crate) struct PendingHandshakes {
    budget: usize,
    queue: Mutex<PendingQueue>,
}

#[derive(Default)]
struct PendingQueue {
    next_id: u64,
    /// Oldest first; ids ascend.
    waiting: VecDeque<(u64, CancellationToken)>,
}

/// One connection's place among the pending handshakes; dropping it (the
/// handshake ended, one way or the other) gives the place back.
pub(crate) struct PendingSlot {
    pending: Arc<PendingHandshakes>,
    id: u64,
    /// Cancelled when the connection is evicted (and at shutdown).
    pub(crate) stop: CancellationToken,
}

impl PendingHandshakes {
    pub(crate) fn new(budget: usize) -> Self {
        PendingHandshakes {
            budget: budget.max(1),
            queue: Mutex::default(),
        }
    }

    /// A place for a new handshake whose `stop` is a child of `shutdown`,
    /// and how many older handshakes it evicted to get it.
    pub(crate) fn enter(self: &Arc<Self>, shutdown: &CancellationToken) -> (PendingSlot, usize) {
        let stop = shutdown.child_token();
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = 0;
        while queue.waiting.len() >= self.budget {
            match queue.waiting.pop_front() {
                Some((_, oldest)) => {
                    oldest.cancel();
                    evicted += 1;
                }
                None => break,
            }
        }
        let id = queue.next_id;
        queue.next_id += 1;
        queue.waiting.push_back((id, stop.clone()));
        let slot = PendingSlot {
            pending: self.clone(),
            id,
            stop,
        };
        (slot, evicted)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .len()
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut queue = self.pending.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(at) = queue.waiting.binary_search_by_key(&self.id, |(id, _)| *id) {
            queue.waiting.remove(at);
        }
    }
}

impl Place {
    /// True under the cap.
    pub(crate) fn is_admitted(&self) -> bool {
        matches!(self, Place::Admitted { .. })
    }
}

impl Drop for RefusingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sessions per client address, under `max_connections_per_address`.
pub(crate) struct AddressLimit {
    limit: Option<NonZeroUsize>,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One session's place in its address's count; released on drop.
pub(crate) struct AddressSlot {
    limits: Arc<AddressLimit>,
    ip: IpAddr,
}

impl AddressLimit {
    pub(crate) fn new(limit: Option<NonZeroUsize>) -> Self {
        AddressLimit {
            limit,
            counts: Mutex::default(),
        }
    }

    /// A slot for `ip` (`Some(None)` when there is no limit to count
    /// under), or `None` when it has its limit of sessions.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Option<AddressSlot>> {
        let Some(limit) = self.limit else {
            return Some(None);
        };
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit.get() {
            return None;
        }
        *count += 1;
        Some(Some(AddressSlot {
            limits: self.clone(),
            ip,
        }))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_cap_a_bounded_number_wait_for_their_refusal() {
        let cap = ConnectionCap::new(1);
        let admitted = cap.enter().expect("a place under the cap");
        assert!(admitted.is_admitted());
        let refusing: Vec<Place> = (0..MAX_REFUSING).map_while(|_| cap.enter()).collect();
        assert_eq!(refusing.len(), MAX_REFUSING);
        assert!(refusing.iter().all(|p| !p.is_admitted()));
        assert!(cap.enter().is_none(), "no room left to refuse");
        drop(refusing);
        assert!(cap.enter().is_some_and(|p| !p.is_admitted()));
        drop(admitted);
        assert!(cap.enter().is_some_and(|p| p.is_admitted()));
    }

    #[test]
    fn over_the_budget_the_oldest_handshake_is_evicted() {
        let pending = Arc::new(PendingHandshakes::new(2));
        let shutdown = CancellationToken::new();
        let (first, none) = pending.enter(&shutdown);
        let (second, _) = pending.enter(&shutdown);
        assert_eq!(none, 0);
        let (third, evicted) = pending.enter(&shutdown);
        assert_eq!(evicted, 1);
        assert!(first.stop.is_cancelled(), "the oldest went");
        assert!(!second.stop.is_cancelled() && !third.stop.is_cancelled());
        drop(first);
        assert_eq!(pending.len(), 2, "an evicted slot was already out");
        drop(second);
        assert_eq!(pending.len(), 1);
        let (_fourth, evicted) = pending.enter(&shutdown);
        assert_eq!(evicted, 0, "room after a handshake ended");
        shutdown.cancel();
        assert!(third.stop.is_cancelled(), "shutdown stops every handshake");
    }

    #[test]
    fn refusing_places_hold_no_permit() {
        let cap = ConnectionCap::new(1);
        let refused = cap.refuse().expect("room to refuse");
        assert!(!refused.is_admitted());
        assert!(
            cap.enter().is_some_and(|p| p.is_admitted()),
            "the permit is still free"
        );
    }

    #[test]
    fn an_address_gets_its_slots_back_on_drop() {
        let limit = Arc::new(AddressLimit::new(NonZeroUsize::new(2)));
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = limit.acquire(a).expect("first slot");
        let second = limit.acquire(a).expect("second slot");
        assert!(limit.acquire(a).is_none(), "a is at its limit");
        assert!(limit.acquire(b).is_some(), "b counts apart");
        drop(first);
        assert!(limit.acquire(a).is_some());
        drop(second);
        assert!(
            limit.counts.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }

    #[test]
    fn without_a_limit_nothing_is_counted() {
        let limit = Arc::new(AddressLimit::new(None));
        assert!(matches!(limit.acquire([10, 0, 0, 1].into()), Some(None)));
    }
}
