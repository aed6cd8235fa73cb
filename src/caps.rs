//! Connection accounting: the gateway-wide cap (`max_connections`) and the
//! cap per client address (`max_connections_per_address`). Each place taken
//! is a value that gives it back when dropped, so no path can leak one.
//!
//! Counting is all this module does; what a connection over a cap is told
//! is the admission module's call.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
        if self.refusing.fetch_add(1, Ordering::Relaxed) < MAX_REFUSING {
            let _slot = RefusingSlot(self.refusing.clone());
            return Some(Place::Refusing { _slot });
        }
        self.refusing.fetch_sub(1, Ordering::Relaxed);
        None
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
