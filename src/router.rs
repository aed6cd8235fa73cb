//! The origin-keyed routing core: names to sessions, rooms, the duplicate
//! policy and the Qt provisional-name rule. It knows no sockets: a session is
//! a [`SessionHandle`], and delivery is `try_send` on its bounded queue.
//!
//! Routing never waits for a receiver. A receiver whose queue is full is the
//! slow consumer: it is closed with 1013 and the sender carries on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::SystemTime;

use crate::outbox::{Outbox, PushError};
use crate::presence::{self, Backlog};
use indexmap::IndexMap;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::close::{Close, CloseOrder};
use crate::config::DuplicatePolicy;
use crate::events::{Event, Events};
use crate::identity::{Claim, ClientName, MAX_NAME_LEN, qt_latin1};
use crate::metrics::{ErrorKind, Metrics};
use wssgate_wire::notice::Presence;

/// Facts about a session shown to the operator.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The listener it came through.
    pub listener: Arc<str>,
    /// True when it came over TLS.
    pub tls: bool,
    /// When the handshake completed.
    pub connected_at: SystemTime,
}

/// The router's view of one session: where to put its outbound frames and
/// how to close it.
pub struct SessionHandle {
    id: u64,
    name: Mutex<ClientName>,
    provisional: AtomicBool,
    outbox: Arc<Outbox>,
    close: CancellationToken,
    close_order: CloseOrder,
    /// The presence events this session has been told of (see `presence.rs`).
    presence_cursor: AtomicU64,
    /// Its private messages for other nodes whose answers from Redis did
    /// not come yet (see `session.rs`, `text_frame`).
    unanswered: AtomicU32,
    /// Operator-facing facts.
    pub info: ClientInfo,
}

/// What a delivery reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Sessions the message was for.
    pub targets: usize,
    /// Sessions whose queue took it (the others were full: slow consumers).
    pub queued: usize,
}

/// Why a session could not be admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The name is connected and the policy is `reject`.
    #[error("name already connected: {0}")]
    Duplicate(String),
}

/// Why a room request failed; the text goes back in an `error` notice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// Sending to a room the sender has not joined.
    #[error("not a member of {0}")]
    NotMember(String),
    /// Over `max_rooms_per_session`.
    #[error("too many rooms: at most {0} per session")]
    TooMany(usize),
}

impl SessionHandle {
    /// Counts a private message for another node published; returns how
    /// many have no answer yet, this one included.
    pub(crate) fn published(&self) -> u32 {
        self.unanswered.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Counts the answer to one such message handled (its error, if any,
    /// queued for the session first).
    pub(crate) fn answered(&self) {
        self.unanswered.fetch_sub(1, Ordering::AcqRel);
    }

    /// Private messages for other nodes whose answers did not come yet.
    pub(crate) fn unanswered(&self) -> u32 {
        self.unanswered.load(Ordering::Acquire)
    }

    /// The session's id, unique in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The session's current name.
    pub fn name(&self) -> ClientName {
        lock(&self.name).clone()
    }

    /// True while the name may still be replaced by a Qt client's full name.
    pub fn is_provisional(&self) -> bool {
        self.provisional.load(Ordering::Relaxed)
    }

    /// Resolves when the session has been told to close.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.close.cancelled()
    }

    /// The close ordered, if any (none when the shutdown closed it).
    pub fn close_order(&self) -> Option<Close> {
        self.close_order.get()
    }

    /// Asks the session to close for `close`; the first order wins.
    /// Returns true if this call was the first.
    pub fn close_with(&self, close: Close) -> bool {
        let first = self.close_order.set(close);
        self.close.cancel();
        first
    }

    /// Asks the session to close with 4001 (the operator's kick), with the
    /// operator's `reason` after `kicked: `; the first order wins.
    pub fn kick(&self, reason: Option<&str>) -> bool {
        let first = self.close_order.set_with(Close::Kicked, reason);
        self.close.cancel();
        first
    }

    /// The reason text to close with for `close`: the cause's own words,
    /// plus the operator's for a kick.
    pub fn close_reason(&self, close: Close) -> std::borrow::Cow<'static, str> {
        self.close_order.reason(close)
    }

    /// Queues a frame without waiting. A full queue closes the session as a
    /// slow consumer. Returns true when the frame was queued.
    fn deliver(&self, frame: Message, router: &Router) -> bool {
        match self.outbox.push(frame) {
            Ok(()) => true,
            Err(PushError::Full) => {
                router.metrics.queue_drop();
                if self.close_with(Close::SlowConsumer) {
                    router.metrics.error(ErrorKind::slow_consumer);
                    let name = self.name();
                    tracing::warn!(client = %name, remote = %self.info.remote, "outbound queue full, closing slow consumer");
                    router.events.publish(&Event::Error {
                        name: name.as_str(),
                        remote: self.info.remote,
                        msg: "slow consumer: outbound queue full",
                    });
                }
                false
            }
            Err(PushError::Closed) => false,
        }
    }
}

/// Most private destinations one session remembers.
const CACHED_NAMES: usize = 8;
/// Most rooms one session remembers.
const CACHED_ROOMS: usize = 4;
/// Largest room a session remembers. A bigger room's message takes the read
/// lock (one lock for that many deliveries); remembering it would cost a
/// pointer per member in every sender's cache, a square in a busy room.
const CACHED_ROOM_MEMBERS: usize = 64;

/// A remembered destination (a name or a room) and the sessions it reached.
type Route = (Box<str>, Box<[Weak<SessionHandle>]>);

/// Where one session's recent messages went, so that the hot path takes no
/// lock: a message to a remembered name or room is delivered from here while
/// the router's generation is the one the entry was filled at. The router
/// bumps its generation with every change of the table (admit, remove,
/// rename, join, leave), under its write lock, so an entry is never looked
/// up across a change. Unlike the locked path (which holds the read lock
/// while it queues), a message whose lookup raced a change may be queued
/// just after the change (a member that has just left may get it); a
/// session that has ended gets nothing. Sessions are held weakly: a cache never
/// keeps a gone session's queue alive. Owned by the session task; empty (no
/// allocation) until the session sends, and bounded: names up to
/// [`MAX_NAME_LEN`] that reached someone, rooms up to
/// 64 members (`CACHED_ROOM_MEMBERS`).
#[derive(Default)]
pub struct RouteCache {
    generation: u64,
    names: Vec<Route>,
    rooms: Vec<Route>,
}

impl RouteCache {
    /// Names and rooms remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.names.len() + self.rooms.len()
    }

    /// Forgets everything if the routing table changed since it was filled.
    fn check(&mut self, generation: u64) {
        if self.generation != generation {
            self.names.clear();
            self.rooms.clear();
            self.generation = generation;
        }
    }

    fn find<'c>(entries: &'c [Route], key: &str) -> Option<&'c [Weak<SessionHandle>]> {
        entries
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, targets)| &**targets)
    }

    /// Adds an entry, dropping the oldest when `limit` are held.
    fn remember<'s>(
        entries: &mut Vec<Route>,
        limit: usize,
        key: &str,
        targets: impl Iterator<Item = &'s Arc<SessionHandle>>,
    ) {
        if entries.len() >= limit {
            entries.remove(0);
        }
        entries.push((key.into(), targets.map(Arc::downgrade).collect()));
    }
}

/// Policies the router applies.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Duplicate-name policy.
    pub on_duplicate: DuplicatePolicy,
    /// Presence notices to everyone on connect and disconnect.
    pub presence: bool,
    /// Rooms one session may join.
    pub max_rooms_per_session: usize,
}

type Members = IndexMap<u64, Arc<SessionHandle>>;

/// The session id presence events from other nodes are recorded under:
/// no session here has it, so every session here is told.
const REMOTE_SESSION: u64 = u64::MAX;

#[derive(Default)]
struct State {
    names: HashMap<Arc<str>, Vec<Arc<SessionHandle>>>,
    rooms: HashMap<Arc<str>, Members>,
    memberships: HashMap<u64, Vec<Arc<str>>>,
    sessions: usize,
}

/// The routing core. One per gateway, shared by every listener.
pub struct Router {
    config: RouterConfig,
    /// Joins and leaves, when `presence` is on.
    presence: Option<presence::Log>,
    /// Set when the gateway shuts down: no more presence, every session's
    /// close is the shutdown's.
    shutting_down: AtomicBool,
    state: RwLock<State>,
    /// Bumped on every write lock: see [`RouteCache`].
    generation: AtomicU64,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    events: Events,
}

impl Router {
    /// An empty router.
    pub fn new(config: RouterConfig, metrics: Arc<Metrics>, events: Events) -> Router {
        Router {
            presence: config.presence.then(presence::Log::default),
            shutting_down: AtomicBool::new(false),
            config,
            state: RwLock::default(),
            generation: AtomicU64::new(1),
            next_id: AtomicU64::new(1),
            metrics,
            events,
        }
    }

    /// The duplicate-name policy.
    pub fn duplicate_policy(&self) -> DuplicatePolicy {
        self.config.on_duplicate
    }

    /// The metrics the router counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The operator event hub.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Admits a session under the duplicate policy. `close` is the session's
    /// own cancellation token (a child of the shutdown token).
    pub fn admit(
        &self,
        claim: Claim,
        info: ClientInfo,
        outbox: Arc<Outbox>,
        close: CancellationToken,
    ) -> Result<Arc<SessionHandle>, AdmitError> {
        self.admit_announced(claim, info, outbox, close, true)
    }

    /// [`Router::admit`] without the presence `join`, for a session that
    /// must pass another check first (a cluster's name registry): then
    /// [`Router::announce_join`], or [`Router::withdraw`] if it failed.
    pub fn admit_unannounced(
        &self,
        claim: Claim,
        info: ClientInfo,
        outbox: Arc<Outbox>,
        close: CancellationToken,
    ) -> Result<Arc<SessionHandle>, AdmitError> {
        self.admit_announced(claim, info, outbox, close, false)
    }

    /// Announces the join of a session admitted unannounced.
    pub fn announce_join(&self, handle: &SessionHandle) {
        let state = self.read();
        self.announce(&state, handle, Presence::Join);
    }

    /// Removes a session admitted unannounced that failed its other check:
    /// nobody was told it came, so nobody is told it left.
    pub fn withdraw(&self, handle: &Arc<SessionHandle>) {
        let mut state = self.write();
        if state.remove(handle) {
            self.changed(&state);
        }
    }

    fn admit_announced(
        &self,
        claim: Claim,
        info: ClientInfo,
        outbox: Arc<Outbox>,
        close: CancellationToken,
        announce: bool,
    ) -> Result<Arc<SessionHandle>, AdmitError> {
        let handle = Arc::new(SessionHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name: Mutex::new(claim.name.clone()),
            provisional: AtomicBool::new(claim.provisional),
            outbox,
            close,
            close_order: CloseOrder::default(),
            presence_cursor: AtomicU64::new(0),
            unanswered: AtomicU32::new(0),
            info,
        });
        let mut state = self.write();
        if let Some(existing) = state.names.get(claim.name.as_str()) {
            // Provisional names are exempt from the policy among themselves.
            let conflicts: Vec<Arc<SessionHandle>> = existing
                .iter()
                .filter(|s| !(claim.provisional && s.is_provisional()))
                .cloned()
                .collect();
            if !conflicts.is_empty() {
                match self.config.on_duplicate {
                    DuplicatePolicy::Reject => {
                        return Err(AdmitError::Duplicate(claim.name.to_string()));
                    }
                    DuplicatePolicy::Allow => {}
                    DuplicatePolicy::Replace => {
                        for old in conflicts {
                            tracing::info!(client = %claim.name, remote = %old.info.remote, "replaced by a newer session");
                            old.close_with(Close::Replaced);
                            state.remove(&old);
                        }
                    }
                }
            }
        }
        state
            .names
            .entry(claim.name.as_arc().clone())
            .or_default()
            .push(handle.clone());
        state.sessions += 1;
        self.changed(&state);
        if announce {
            self.announce(&state, &handle, Presence::Join);
        }
        if let Some(log) = &self.presence {
            // Told of what happens from now on, not of its own join.
            handle.presence_cursor.store(log.head(), Ordering::Relaxed);
        }
        Ok(handle)
    }

    /// Removes a session (from its name and every room). Idempotent.
    pub fn remove(&self, handle: &Arc<SessionHandle>) {
        let mut state = self.write();
        if state.remove(handle) {
            self.changed(&state);
            self.announce(&state, handle, Presence::Leave);
        }
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.read().sessions
    }

    /// True when no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Qt rule: a provisional session whose JSON `src` is its full name
    /// (the name turns into the provisional one under Qt's substitution) takes
    /// that name, once, if it is free. Returns the new name when it changed.
    pub fn claim_full_name(&self, handle: &Arc<SessionHandle>, src: &str) -> Option<ClientName> {
        if !handle.is_provisional() {
            return None;
        }
        let old = handle.name();
        if src == old.as_str() || qt_latin1(src) != old.as_str() {
            return None;
        }
        let full = ClientName::new(src).ok()?;
        let mut state = self.write();
        if state.names.contains_key(full.as_str()) || !state.remove_name(handle, &old) {
            return None;
        }
        state
            .names
            .entry(full.as_arc().clone())
            .or_default()
            .push(handle.clone());
        *lock(&handle.name) = full.clone();
        handle.provisional.store(false, Ordering::Relaxed);
        self.changed(&state);
        drop(state);
        tracing::info!(client = %full, provisional = %old, remote = %handle.info.remote, "provisional name replaced by full name");
        self.events.publish(&Event::Rename {
            from: old.as_str(),
            to: full.as_str(),
        });
        Some(full)
    }

    /// Delivers a frame to every session named `dst` (or to the one
    /// provisional session whose name `dst` turns into under Qt's
    /// substitution). The frame is built only when there is someone to get it.
    pub fn send_to_name(&self, dst: &str, frame: impl FnOnce() -> Message) -> Delivery {
        let state = self.read();
        self.deliver_all(state.lookup(dst).iter(), frame)
    }

    /// Delivers to the session here named `name` whose id is `session`;
    /// nobody if it is gone (a reply about what that session sent).
    pub fn send_to_session(
        &self,
        name: &str,
        session: u64,
        frame: impl FnOnce() -> Message,
    ) -> Delivery {
        let state = self.read();
        let target = state
            .names
            .get(name)
            .and_then(|sessions| sessions.iter().find(|s| s.id == session));
        self.deliver_all(target.into_iter(), frame)
    }

    /// [`Router::send_to_name`] through the sender's [`RouteCache`]: no lock
    /// when `dst` is remembered and nothing changed since.
    pub fn send_to_name_cached(
        &self,
        cache: &mut RouteCache,
        dst: &str,
        frame: impl FnOnce() -> Message,
    ) -> Delivery {
        cache.check(self.generation.load(Ordering::Acquire));
        if let Some(targets) = RouteCache::find(&cache.names, dst) {
            return self.deliver_weak(targets, frame);
        }
        let state = self.read();
        cache.check(self.generation.load(Ordering::Acquire));
        let targets = state.lookup(dst);
        // Only real names that reach someone: a client sending to made-up
        // or overlong names must not make its cache hold them.
        if !targets.is_empty() && dst.len() <= MAX_NAME_LEN {
            RouteCache::remember(&mut cache.names, CACHED_NAMES, dst, targets.iter());
        }
        self.deliver_all(targets.iter(), frame)
    }

    /// Delivers a frame to every member of `room` but `from`, through the
    /// sender's [`RouteCache`] (no lock while the cache is valid).
    pub fn send_to_room_cached(
        &self,
        cache: &mut RouteCache,
        from: &SessionHandle,
        room: &str,
        frame: impl FnOnce() -> Message,
    ) -> Result<Delivery, RoomError> {
        cache.check(self.generation.load(Ordering::Acquire));
        if let Some(targets) = RouteCache::find(&cache.rooms, room) {
            return Ok(self.deliver_weak(targets, frame));
        }
        let state = self.read();
        cache.check(self.generation.load(Ordering::Acquire));
        let members = state.members(from, room)?;
        let others = || members.values().filter(|m| m.id != from.id);
        if members.len() <= CACHED_ROOM_MEMBERS {
            RouteCache::remember(&mut cache.rooms, CACHED_ROOMS, room, others());
        }
        Ok(self.deliver_all(others(), frame))
    }

    /// Delivers to remembered sessions; one already gone (it ended after
    /// the generation was read) is not counted as a target.
    fn deliver_weak(
        &self,
        targets: &[Weak<SessionHandle>],
        frame: impl FnOnce() -> Message,
    ) -> Delivery {
        self.deliver_all(targets.iter().filter_map(Weak::upgrade), frame)
    }

    /// Delivers a frame to every member of `room` but `from`, under the
    /// router's lock: the path sessions took before [`RouteCache`], kept as
    /// the baseline of the routing micro-benchmarks and in unit tests.
    #[cfg(any(test, feature = "bench-internals"))]
    pub fn send_to_room(
        &self,
        from: &SessionHandle,
        room: &str,
        frame: impl FnOnce() -> Message,
    ) -> Result<Delivery, RoomError> {
        let state = self.read();
        let members = state.members(from, room)?;
        Ok(self.deliver_all(members.values().filter(|m| m.id != from.id), frame))
    }

    fn deliver_all<T: AsRef<SessionHandle>>(
        &self,
        targets: impl Iterator<Item = T>,
        frame: impl FnOnce() -> Message,
    ) -> Delivery {
        let mut targets = targets.peekable();
        let mut delivery = Delivery::default();
        if targets.peek().is_none() {
            return delivery;
        }
        let frame = frame();
        for target in targets {
            delivery.targets += 1;
            delivery.queued += usize::from(target.as_ref().deliver(frame.clone(), self));
        }
        delivery
    }

    /// Adds `handle` to `room` (joining twice is harmless).
    pub fn join(&self, handle: &Arc<SessionHandle>, room: &str) -> Result<(), RoomError> {
        let mut state = self.write();
        let joined = state.memberships.entry(handle.id).or_default();
        if joined.iter().any(|r| &**r == room) {
            return Ok(());
        }
        if joined.len() >= self.config.max_rooms_per_session {
            return Err(RoomError::TooMany(self.config.max_rooms_per_session));
        }
        let room: Arc<str> = room.into();
        joined.push(room.clone());
        state
            .rooms
            .entry(room)
            .or_default()
            .insert(handle.id, handle.clone());
        self.changed(&state);
        Ok(())
    }

    /// Removes `handle` from `room` (leaving a room not joined is harmless).
    pub fn leave(&self, handle: &SessionHandle, room: &str) {
        let mut state = self.write();
        if let Some(joined) = state.memberships.get_mut(&handle.id) {
            joined.retain(|r| &**r != room);
        }
        if state.leave_room(handle.id, room) {
            self.changed(&state);
        }
    }

    /// Sorted, distinct names of the connected sessions, or of a room's members.
    pub fn names(&self, room: Option<&str>) -> Vec<String> {
        let state = self.read();
        let mut names: Vec<String> = match room {
            None => state.names.keys().map(|n| n.to_string()).collect(),
            Some(room) => state
                .rooms
                .get(room)
                .map(|m| m.values().map(|s| s.name().to_string()).collect())
                .unwrap_or_default(),
        };
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Every open session, for the operator.
    pub fn sessions(&self) -> Vec<Arc<SessionHandle>> {
        let state = self.read();
        let mut all: Vec<Arc<SessionHandle>> = state.names.values().flatten().cloned().collect();
        all.sort_unstable_by_key(|s| s.id);
        all
    }

    /// The names of this node's sessions, each once (what a cluster node
    /// holds and subscribes for).
    pub fn local_names(&self) -> Vec<Arc<str>> {
        self.read().names.keys().cloned().collect()
    }

    /// The rooms with a member on this node.
    pub fn local_rooms(&self) -> Vec<Arc<str>> {
        self.read().rooms.keys().cloned().collect()
    }

    /// The rooms `handle` is a member of.
    pub fn rooms_of(&self, handle: &SessionHandle) -> Vec<Arc<str>> {
        self.read()
            .memberships
            .get(&handle.id)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `room` has a member on this node.
    pub fn has_members(&self, room: &str) -> bool {
        self.read().rooms.contains_key(room)
    }

    /// Whether a session on this node holds `name` (exactly).
    pub fn holds(&self, name: &str) -> bool {
        self.read().names.contains_key(name)
    }

    /// Delivers to the one provisional session named exactly `name` (the
    /// Qt rule of a full name's Latin-1 form, for a message from another
    /// node); nobody if there are none or several.
    pub fn send_to_provisional(&self, name: &str, frame: impl FnOnce() -> Message) -> Delivery {
        let state = self.read();
        let provisional: Vec<&Arc<SessionHandle>> = state
            .names
            .get(name)
            .map(|sessions| sessions.iter().filter(|s| s.is_provisional()).collect())
            .unwrap_or_default();
        match provisional.as_slice() {
            [one] => self.deliver_all(std::iter::once(*one), frame),
            _ => Delivery::default(),
        }
    }

    /// Delivers a room message from another node to every member here.
    pub fn deliver_to_room(&self, room: &str, frame: impl FnOnce() -> Message) -> Delivery {
        let state = self.read();
        match state.rooms.get(room) {
            Some(members) => self.deliver_all(members.values(), frame),
            None => Delivery::default(),
        }
    }

    /// Records a join or leave that happened on another node, for this
    /// node's sessions to be told (with presence on).
    pub fn announce_remote(&self, event: Presence, name: ClientName) {
        let Some(log) = &self.presence else { return };
        if self.shutting_down.load(Ordering::Acquire) {
            return;
        }
        log.record(event, name, REMOTE_SESSION);
        for session in self.read().names.values().flatten() {
            session.outbox.mark_presence();
        }
    }

    /// A newer session on another node took `name`: the session here with
    /// that name and `id` is closed with 4000, and leaves without a
    /// presence `leave` (the name never left). False if it is gone already.
    pub fn replaced_elsewhere(&self, name: &str, id: u64) -> bool {
        let mut state = self.write();
        let Some(old) = state
            .names
            .get(name)
            .and_then(|sessions| sessions.iter().find(|s| s.id == id).cloned())
        else {
            return false;
        };
        tracing::info!(client = %name, remote = %old.info.remote, "replaced by a newer session on another node");
        old.close_with(Close::Replaced);
        state.remove(&old);
        self.changed(&state);
        true
    }

    /// Closes every session named exactly `name` with 4001 and the
    /// operator's `reason`; how many were told to close.
    pub fn kick(&self, name: &str, reason: Option<&str>) -> usize {
        let targets: Vec<Arc<SessionHandle>> = {
            let state = self.read();
            state
                .names
                .get(name)
                .map(|v| v.to_vec())
                .unwrap_or_default()
        };
        targets.iter().filter(|s| s.kick(reason)).count()
    }

    /// Sends `frame` to every session.
    pub fn broadcast(&self, frame: Message) -> Delivery {
        let state = self.read();
        self.deliver_all(state.names.values().flatten(), || frame)
    }

    /// Queues a frame for one session (a reply to its own request).
    pub fn reply(&self, handle: &SessionHandle, frame: Message) -> bool {
        handle.deliver(frame, self)
    }

    /// Records a join or leave and flags every other session's outbox; the
    /// sessions write the notices themselves ([`Router::presence_backlog`]).
    /// Nothing while shutting down: those leaves are the shutdown's.
    fn announce(&self, state: &State, subject: &SessionHandle, event: Presence) {
        let Some(log) = &self.presence else { return };
        if self.shutting_down.load(Ordering::Acquire) {
            return;
        }
        log.record(event, subject.name(), subject.id);
        for session in state.names.values().flatten() {
            if session.id != subject.id {
                session.outbox.mark_presence();
            }
        }
    }

    /// The presence events `handle` has not been told of.
    pub fn presence_backlog(&self, handle: &SessionHandle) -> Backlog {
        let Some(log) = &self.presence else {
            return Backlog::Nothing;
        };
        let mut cursor = handle.presence_cursor.load(Ordering::Relaxed);
        let backlog = log.since(&mut cursor, handle.id);
        handle.presence_cursor.store(cursor, Ordering::Relaxed);
        backlog
    }

    /// Resyncs a session that fell behind: its cursor moves to now, then it
    /// gets the names connected. An event recorded in between is sent again
    /// as a notice: told twice, never lost.
    pub fn presence_resync(&self, handle: &SessionHandle) -> Vec<String> {
        if let Some(log) = &self.presence {
            handle.presence_cursor.store(log.head(), Ordering::Relaxed);
        }
        self.names(None)
    }

    /// The gateway is shutting down: presence stops, and every session is
    /// told to close for that reason before anything else can order a close
    /// (a full queue while the others leave would otherwise win with 1013).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let state = self.read();
        for session in state.names.values().flatten() {
            session.close_with(Close::ShuttingDown);
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent
        // (every update is a single insert or remove), so poisoning is ignored.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Invalidates every [`RouteCache`]: called by each change of the table
    /// while its write lock is held (the guard proves it), so the generation
    /// moves while no reader can look and a cache filled under the read
    /// lock always carries the generation of what it saw. A request that
    /// changes nothing (joining twice, a refused rename) leaves caches be.
    fn changed(&self, _held: &RwLockWriteGuard<'_, State>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl State {
    /// The members of `room`, if `from` is one of them.
    fn members(&self, from: &SessionHandle, room: &str) -> Result<&Members, RoomError> {
        self.rooms
            .get(room)
            .filter(|m| m.contains_key(&from.id))
            .ok_or_else(|| RoomError::NotMember(room.to_owned()))
    }

    /// The sessions a message to `dst` reaches.
    fn lookup(&self, dst: &str) -> &[Arc<SessionHandle>] {
        if let Some(sessions) = self.names.get(dst) {
            return sessions;
        }
        let substituted = qt_latin1(dst);
        if substituted == dst {
            return &[];
        }
        match self.names.get(&*substituted) {
            Some(sessions) => {
                let mut provisional = sessions.iter().filter(|s| s.is_provisional());
                match (provisional.next(), provisional.next()) {
                    (Some(one), None) => std::slice::from_ref(one),
                    _ => &[],
                }
            }
            None => &[],
        }
    }

    /// Removes a session everywhere; false if it was already gone.
    fn remove(&mut self, handle: &SessionHandle) -> bool {
        let name = handle.name();
        if !self.remove_name(handle, &name) {
            return false;
        }
        self.sessions -= 1;
        for room in self.memberships.remove(&handle.id).unwrap_or_default() {
            self.leave_room(handle.id, &room);
        }
        true
    }

    fn remove_name(&mut self, handle: &SessionHandle, name: &ClientName) -> bool {
        let Some(sessions) = self.names.get_mut(name.as_str()) else {
            return false;
        };
        let before = sessions.len();
        sessions.retain(|s| s.id != handle.id);
        let removed = sessions.len() != before;
        if sessions.is_empty() {
            self.names.remove(name.as_str());
        }
        removed
    }

    /// Takes `id` out of `room`; true if it was a member.
    fn leave_room(&mut self, id: u64, room: &str) -> bool {
        let Some(members) = self.rooms.get_mut(room) else {
            return false;
        };
        let was = members.swap_remove(&id).is_some();
        if members.is_empty() {
            self.rooms.remove(room);
        }
        was
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are replaced whole, so a poisoned lock is still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::claim;

    struct Client {
        handle: Arc<SessionHandle>,
        rx: Arc<Outbox>,
    }

    impl Client {
        fn texts(&mut self) -> Vec<String> {
            let mut out = Vec::new();
            while let Some(m) = self.rx.try_pop() {
                out.push(m.into_text().unwrap().to_string());
            }
            out
        }
    }

    fn router(policy: DuplicatePolicy) -> Router {
        Router::new(
            RouterConfig {
                on_duplicate: policy,
                presence: false,
                max_rooms_per_session: 2,
            },
            Arc::new(Metrics::new()),
            Events::new(),
        )
    }

    fn connect(r: &Router, origin: &str, queue: usize) -> Result<Client, AdmitError> {
        let rx = Arc::new(Outbox::new(queue));
        let tx = rx.clone();
        let info = ClientInfo {
            remote: "127.0.0.1:1".parse().unwrap(),
            listener: "ws".into(),
            tls: false,
            connected_at: SystemTime::now(),
        };
        let c = claim(None, Some(origin.as_bytes())).unwrap();
        let handle = r.admit(c, info, tx, CancellationToken::new())?;
        Ok(Client { handle, rx })
    }

    #[test]
    fn duplicate_policies() {
        let r = router(DuplicatePolicy::Reject);
        let _a = connect(&r, "a", 8).unwrap();
        assert_eq!(
            connect(&r, "a", 8).err(),
            Some(AdmitError::Duplicate("a".into()))
        );

        let r = router(DuplicatePolicy::Replace);
        let a1 = connect(&r, "a", 8).unwrap();
        let _a2 = connect(&r, "a", 8).unwrap();
        assert_eq!(a1.handle.close_order(), Some(Close::Replaced));
        assert_eq!(r.len(), 1);
        r.remove(&a1.handle);
        assert_eq!(
            r.len(),
            1,
            "removing the replaced session keeps the new one"
        );

        let r = router(DuplicatePolicy::Allow);
        let mut a1 = connect(&r, "a", 8).unwrap();
        let mut a2 = connect(&r, "a", 8).unwrap();
        assert_eq!(r.send_to_name("a", || Message::text("x")).queued, 2);
        assert_eq!(a1.texts(), ["x"]);
        assert_eq!(a2.texts(), ["x"]);
        assert_eq!(r.names(None), ["a"]);
    }

    #[test]
    fn route_cache_follows_every_change_of_the_table() {
        let r = router(DuplicatePolicy::Reject);
        let mut cache = RouteCache::default();
        let a = connect(&r, "a", 8).unwrap();
        let mut send = |dst: &str| r.send_to_name_cached(&mut cache, dst, || Message::text("x"));
        assert_eq!(send("b").targets, 0, "unknown before b connects");
        let mut b = connect(&r, "b", 8).unwrap();
        assert_eq!(
            send("b").queued,
            1,
            "admitting b invalidates the cached miss"
        );
        assert_eq!(send("b").queued, 1, "served from the cache");
        assert_eq!(b.texts(), ["x", "x"]);
        let strong = Arc::strong_count(&b.handle);
        r.remove(&b.handle);
        assert_eq!(send("b").targets, 0, "removal invalidates the cached hit");
        let mut b2 = connect(&r, "b", 8).unwrap();
        assert_eq!(send("b").queued, 1);
        assert_eq!(b2.texts(), ["x"]);
        assert!(b.texts().is_empty(), "the old session gets nothing");
        assert!(
            Arc::strong_count(&b.handle) < strong,
            "caches hold sessions weakly"
        );

        // Rooms: a join, a leave and a member that ends are all seen.
        let mut c = connect(&r, "c", 8).unwrap();
        r.join(&a.handle, "#r").unwrap();
        let room = |cache: &mut RouteCache| {
            r.send_to_room_cached(cache, &a.handle, "#r", || Message::text("y"))
        };
        assert_eq!(room(&mut cache).map(|d| d.targets), Ok(0));
        r.join(&c.handle, "#r").unwrap();
        assert_eq!(room(&mut cache).map(|d| d.queued), Ok(1));
        assert_eq!(room(&mut cache).map(|d| d.queued), Ok(1));
        assert_eq!(c.texts(), ["y", "y"]);
        r.leave(&c.handle, "#r");
        assert_eq!(room(&mut cache).map(|d| d.targets), Ok(0));
        r.leave(&a.handle, "#r");
        assert_eq!(room(&mut cache), Err(RoomError::NotMember("#r".into())));
        assert!(c.texts().is_empty());
    }

    #[test]
    fn route_cache_stays_small_and_only_real_changes_invalidate_it() {
        let r = router(DuplicatePolicy::Reject);
        let mut cache = RouteCache::default();
        let a = connect(&r, "a", 8).unwrap();
        let mut b = connect(&r, "b", 8).unwrap();
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for dst in ["nobody", long.as_str()] {
            r.send_to_name_cached(&mut cache, dst, || Message::text("x"));
        }
        assert_eq!(cache.len(), 0, "misses and overlong names are not kept");
        r.send_to_name_cached(&mut cache, "b", || Message::text("x"));
        assert_eq!(cache.len(), 1);
        let generation = r.generation.load(Ordering::Acquire);
        r.join(&a.handle, "#r").unwrap();
        r.join(&a.handle, "#r").unwrap();
        r.leave(&b.handle, "#r");
        assert_eq!(
            r.generation.load(Ordering::Acquire),
            generation + 1,
            "joining twice and leaving a room not joined change nothing"
        );
        // A room larger than CACHED_ROOM_MEMBERS goes through the lock.
        let crowd: Vec<Client> = (0..CACHED_ROOM_MEMBERS)
            .map(|i| connect(&r, &format!("m{i}"), 8).unwrap())
            .collect();
        for m in &crowd {
            r.join(&m.handle, "#big").unwrap();
        }
        r.join(&b.handle, "#big").unwrap();
        let mut cache = RouteCache::default();
        let sent = r.send_to_room_cached(&mut cache, &b.handle, "#big", || Message::text("y"));
        assert_eq!(sent.map(|d| d.queued), Ok(CACHED_ROOM_MEMBERS));
        assert_eq!(cache.len(), 0, "a big room is not remembered");
        assert!(b.texts().len() == 1, "b got the first message only");
    }

    #[test]
    fn route_cache_sees_a_provisional_name_replaced() {
        let r = router(DuplicatePolicy::Reject);
        let mut cache = RouteCache::default();
        let _a = connect(&r, "a", 8).unwrap();
        // A Qt client named "C我" shows up as "C?" until its JSON says more.
        let mut c = connect(&r, "C?", 8).unwrap();
        let mut send = |dst: &str| r.send_to_name_cached(&mut cache, dst, || Message::text("x"));
        assert_eq!(send("C?").queued, 1, "the provisional name, cached");
        assert_eq!(send("C我").queued, 1, "the provisional session is reached");
        assert_eq!(
            r.claim_full_name(&c.handle, "C我")
                .as_ref()
                .map(|n| n.as_str()),
            Some("C我")
        );
        assert_eq!(send("C?").targets, 0, "the provisional name is gone");
        assert_eq!(send("C我").queued, 1);
        assert_eq!(c.texts(), ["x", "x", "x"]);
    }

    #[test]
    fn slow_consumer_is_closed_and_sender_unaffected() {
        let r = router(DuplicatePolicy::Reject);
        let slow = connect(&r, "slow", 2).unwrap();
        let mut fast = connect(&r, "fast", 8).unwrap();
        for _ in 0..2 {
            assert_eq!(r.send_to_name("slow", || Message::text("x")).queued, 1);
        }
        assert_eq!(
            r.send_to_name("slow", || Message::text("x")),
            Delivery {
                targets: 1,
                queued: 0
            }
        );
        assert_eq!(slow.handle.close_order(), Some(Close::SlowConsumer));
        assert_eq!(r.send_to_name("fast", || Message::text("y")).queued, 1);
        assert_eq!(fast.texts(), ["y"]);
    }

    #[test]
    fn rooms() {
        let r = router(DuplicatePolicy::Reject);
        let a = connect(&r, "a", 8).unwrap();
        let mut b = connect(&r, "b", 8).unwrap();
        let mut c = connect(&r, "c", 8).unwrap();
        assert_eq!(
            r.send_to_room(&a.handle, "#r", || Message::text("x")),
            Err(RoomError::NotMember("#r".into()))
        );
        r.join(&a.handle, "#r").unwrap();
        r.join(&b.handle, "#r").unwrap();
        r.join(&a.handle, "#r").unwrap();
        assert_eq!(
            r.send_to_room(&a.handle, "#r", || Message::text("x")),
            Ok(Delivery {
                targets: 1,
                queued: 1
            })
        );
        assert_eq!(b.texts(), ["x"]);
        assert!(c.texts().is_empty());
        assert_eq!(r.names(Some("#r")), ["a", "b"]);
        r.join(&a.handle, "#s").unwrap();
        assert_eq!(r.join(&a.handle, "#t"), Err(RoomError::TooMany(2)));
        r.leave(&b.handle, "#r");
        assert_eq!(r.names(Some("#r")), ["a"]);
        r.remove(&a.handle);
        assert!(r.names(Some("#r")).is_empty());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn provisional_qt_names() {
        let r = router(DuplicatePolicy::Reject);
        let c1 = connect(&r, "C1?????", 8).unwrap();
        let mut c2 = connect(&r, "C2?????", 8).unwrap();
        // Two provisional sessions of one name may wait side by side.
        let other = connect(&r, "C2?????", 8).unwrap();
        r.remove(&other.handle);
        // Before C2 spoke, a message to its full name reaches the one provisional match.
        assert_eq!(
            r.send_to_name("C2我是客户端", || Message::text("early"))
                .queued,
            1
        );
        assert_eq!(c2.texts(), ["early"]);
        // C1 takes its full name from its JSON src.
        assert_eq!(r.claim_full_name(&c1.handle, "C1wrong"), None);
        let full = r.claim_full_name(&c1.handle, "C1我是客户端").unwrap();
        assert_eq!(full.as_str(), "C1我是客户端");
        assert!(!c1.handle.is_provisional());
        assert_eq!(r.claim_full_name(&c1.handle, "C1我是客户端"), None, "once");
        assert_eq!(r.names(None), ["C1我是客户端", "C2?????"]);
    }

    #[test]
    fn provisional_fallback_needs_exactly_one_match() {
        let r = router(DuplicatePolicy::Reject);
        let _a = connect(&r, "C?", 8).unwrap();
        let _b = connect(&r, "C?", 8).unwrap();
        assert_eq!(r.send_to_name("C我", || Message::text("x")).targets, 0);
    }
}
