//! Several nodes, one gateway: names, private and room messages, `list`,
//! presence and the operator's actions reach across gateway nodes through
//! Redis (README "Several nodes"; the design and where it differs from
//! `CLUSTER.md` are in `docs/CLUSTER.md`).
//!
//! - **Registry.** `{P}:names` maps each claimed name to `node|session|`,
//!   and `{P}:node:ID:clients` holds the `/clients` row of every session of
//!   a node (claimed or not: provisional Qt names, `allow`). A node
//!   claims a name at the handshake with a Lua script that applies the
//!   duplicate policy against live owners only; it renews one lease for all
//!   its names (`{P}:nodes`), and any node reaps a node whose lease ran out,
//!   freeing its names and announcing their leave.
//! - **Delivery.** A node subscribes `P:to:NAME` for every name it holds,
//!   `P:room:ROOM` for every room with a member here, `P:all` and its own
//!   `P:node:ID`. A private message for a name not held here is published to
//!   the name's channel: Redis answers with how many nodes took it, so 0 is
//!   `recipient not connected` and an error is `cluster unavailable`.
//!   Delivery is at most once: what Redis cannot carry is answered, never
//!   replayed.
//! - **Recovery.** The subscriber connection is supervised: after any loss
//!   it reconnects with backoff and subscribes again to what the router holds
//!   now (not to what it remembered), then the node claims its names again,
//!   frees stale ones and resyncs its mirror of the other nodes' names.

mod envelope;
mod keys;
mod publisher;
mod resp;
mod scripts;
mod subscriber;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncCommands, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates,
};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wssgate_wire::ClientName;
use wssgate_wire::name::qt_latin1;
use wssgate_wire::notice::{Notice, Presence};

use crate::admin::ClientRow;
use crate::config::{ClusterConfig, ClusterDown, ClusterStart, DuplicatePolicy};
use crate::handshake::Refusal;
use crate::metrics::{ClusterKind, ClusterMetrics, Direction, Metrics};
use crate::router::{Router, SessionHandle};
use envelope::{Header, Kind};
use keys::Keys;
use publisher::Failure;
use scripts::Scripts;

/// Time a Redis command or subscription may take before it counts as failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the mirror of other nodes' names is rebuilt from the registry
/// and the subscriptions checked against the router (events are at most
/// once: this repairs what a lost one left wrong).
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Seconds a client refused while Redis is down is told to wait.
const RETRY_AFTER_DOWN: u64 = 5;

/// Checks `[cluster]` when the config is read.
pub fn check_config(config: &ClusterConfig) -> Result<(), String> {
    let info = connection_info(config)?;
    match info.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(
                "redis: #insecure (no certificate verification) is not accepted; give the server's CA with tls_ca"
                    .into(),
            );
        }
        ConnectionAddr::TcpTls { .. } => {}
        _ if config.tls_ca.is_some() => {
            return Err("tls_ca is set but the redis URL is not rediss://".into());
        }
        _ => {}
    }
    let bad = |c: char| c.is_control() || c.is_whitespace() || "{}|".contains(c);
    if config.prefix.is_empty() || config.prefix.chars().any(bad) {
        return Err(format!(
            "prefix {:?} must be non-empty, without spaces, braces or '|'",
            config.prefix
        ));
    }
    if let Some(id) = &config.node_id
        && (id.is_empty() || id.chars().any(bad) || id.contains(':'))
    {
        return Err(format!(
            "node_id {id:?} must be non-empty, without spaces, braces, ':' or '|'"
        ));
    }
    if config.lease.0 < Duration::from_secs(1) {
        return Err("lease must be at least 1s".into());
    }
    if config.heartbeat.0.is_zero() || config.heartbeat.0 * 2 > config.lease.0 {
        return Err(format!(
            "heartbeat ({:?}) must be more than zero and at most half the lease ({:?})",
            config.heartbeat.0, config.lease.0
        ));
    }
    Ok(())
}

/// The Redis connection settings, the password from `password_env` added.
fn connection_info(config: &ClusterConfig) -> Result<ConnectionInfo, String> {
    // The URL may hold a password: the reason is redis-rs's, the URL is not repeated.
    let info = config.redis.as_str().into_connection_info().map_err(|e| {
        format!(
            "redis: not a Redis URL ({e}); use redis://host:port/db, rediss://... or unix:///path"
        )
    })?;
    let Some(var) = &config.password_env else {
        return Ok(info);
    };
    let password = std::env::var(var)
        .map_err(|_| format!("password_env: the environment variable {var} is not set"))?;
    let settings = info.redis_settings().clone().set_password(password);
    Ok(info.set_redis_settings(settings))
}

/// Why a cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The config is wrong (checked at load; here for a changed environment).
    #[error("[cluster] {0}")]
    Config(String),
    /// Redis did not answer and `at_start = "refuse"`.
    #[error(
        "cannot reach Redis at {addr}: {reason} (set [cluster] at_start = \"wait\" to wait for it)"
    )]
    Unreachable {
        /// Where (without a password).
        addr: String,
        /// Why.
        reason: String,
    },
}

/// The other nodes' names, as their joins and leaves (and the periodic
/// resync) told: what `list` adds to this node's own names.
#[derive(Default)]
struct Mirror {
    names: Mutex<HashMap<String, BTreeSet<Arc<str>>>>,
    /// Bumped by every event: a resync read before an event is not applied
    /// over it.
    epoch: std::sync::atomic::AtomicU64,
}

impl Mirror {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<Arc<str>>>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records `name` on `node`; true when the name is new to the mirror.
    fn add(&self, name: &str, node: &Arc<str>) -> bool {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut map = self.lock();
        let nodes = map.entry(name.to_owned()).or_default();
        let new = nodes.is_empty();
        nodes.insert(node.clone());
        new
    }

    /// Forgets `name` on `node`; true when no node holds it any more.
    fn remove(&self, name: &str, node: &str) -> bool {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut map = self.lock();
        let Some(nodes) = map.get_mut(name) else {
            return false;
        };
        nodes.remove(node);
        if nodes.is_empty() {
            map.remove(name);
            return true;
        }
        false
    }

    fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Replaces the mirror with what was read at `epoch`; returns the names
    /// that appeared and vanished, or `None` (nothing changed) when an
    /// event came in since the read.
    fn replace(
        &self,
        fresh: HashMap<String, BTreeSet<Arc<str>>>,
        epoch: u64,
    ) -> Option<(Vec<String>, Vec<String>)> {
        let mut map = self.lock();
        if self.epoch() != epoch {
            return None;
        }
        let joined = fresh
            .keys()
            .filter(|n| !map.contains_key(*n))
            .cloned()
            .collect();
        let left = map
            .keys()
            .filter(|n| !fresh.contains_key(*n))
            .cloned()
            .collect();
        *map = fresh;
        Some((joined, left))
    }
}

/// One gateway node's part in the cluster.
pub(crate) struct Cluster {
    node: Arc<str>,
    keys: Keys,
    commands: ConnectionManager,
    /// The heartbeat's own connection: never queued behind a burst of
    /// admissions on the command connection.
    beats: ConnectionManager,
    /// PUBLISH in batches, on a connection of its own.
    publisher: publisher::Publisher,
    /// Makes the subscriber's and the publisher's connections.
    connector: Arc<resp::Connector>,
    scripts: Scripts,
    router: Arc<Router>,
    /// The longest message the subscriber takes from Redis: a frame of the
    /// gateway's largest message with its header ([`max_payload`]).
    max_payload: usize,
    metrics: ClusterMetrics,
    policy: DuplicatePolicy,
    when_down: ClusterDown,
    lease: Duration,
    heartbeat: Duration,
    /// Redis answers: the last heartbeat did, and no call since lost its
    /// connection.
    commands_up: AtomicBool,
    pubsub: subscriber::Subscriber,
    mirror: Mirror,
    /// Told by the subscriber after it (re)connected: claim names again,
    /// resync the mirror.
    recover: Notify,
    /// Until when the registry is settling after Redis came back (or lost
    /// this node's lease): every live node claims its names again within a
    /// lease, and no new name is admitted before (by `when_down`).
    settling: Mutex<Option<Instant>>,
}

/// A default node id: host name, process id, and a random suffix, so that
/// a restarted process never inherits its predecessor's lease or names.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut random = [0u8; 4];
    // A failed random source only makes the suffix predictable.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    format!(
        "{host}-{}-{}",
        std::process::id(),
        data_encoding::HEXLOWER.encode(&random)
    )
}

impl Cluster {
    /// Connects to Redis (waiting for it with `at_start = "wait"`),
    /// registers this node's lease and subscribes its own channels, then
    /// starts the subscriber supervisor and the heartbeat.
    pub(crate) async fn start(
        config: &ClusterConfig,
        max_message_size: usize,
        router: Arc<Router>,
        metrics: &Metrics,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let info = connection_info(config).map_err(ClusterError::Config)?;
        let addr = info.addr().to_string();
        // The subscriber's and the publisher's connections, made by hand.
        let connector = resp::Connector::new(info.clone(), config.tls_ca.as_deref())
            .map_err(ClusterError::Config)?;
        let connector = Arc::new(connector);
        let client = match &config.tls_ca {
            None => Client::open(info),
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| {
                    ClusterError::Config(format!("tls_ca {}: cannot read: {e}", ca.display()))
                })?;
                let certificates = TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                Client::build_with_tls(info, certificates)
            }
        }
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut backoff = Duration::from_millis(200);
        let connect = || async {
            let manager = |client: Client| {
                tokio::time::timeout(
                    REDIS_TIMEOUT * 2,
                    ConnectionManager::new_with_config(client, manager_config.clone()),
                )
            };
            let (commands, beats) =
                match (manager(client.clone()).await, manager(client.clone()).await) {
                    (Ok(Ok(commands)), Ok(Ok(beats))) => (commands, beats),
                    (Ok(Err(e)), _) | (_, Ok(Err(e))) => return Err(e.to_string()),
                    _ => return Err("no answer".to_owned()),
                };
            // The publisher's own connection too: what only it would meet
            // (a TLS or AUTH detail) shows now, not at the first message.
            match tokio::time::timeout(REDIS_TIMEOUT * 2, connector.connect()).await {
                Ok(Ok(publishing)) => Ok((commands, beats, publishing)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("no answer".to_owned()),
            }
        };
        let (commands, beats, publishing) = loop {
            let reason = match connect().await {
                Ok(managers) => break managers,
                Err(reason) => reason,
            };
            match config.at_start {
                ClusterStart::Refuse => return Err(ClusterError::Unreachable { addr, reason }),
                ClusterStart::Wait => {
                    tracing::warn!(redis = %addr, %reason, retry_in = ?backoff, "cluster: Redis unreachable at start; waiting for it");
                    tokio::select! {
                        () = shutdown.cancelled() => return Err(ClusterError::Unreachable { addr, reason }),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let node: Arc<str> = config
            .node_id
            .clone()
            .unwrap_or_else(default_node_id)
            .into();
        let cluster = Arc::new(Cluster {
            max_payload: max_payload(max_message_size),
            keys: Keys::new(&config.prefix),
            publisher: publisher::Publisher::start(connector.clone(), publishing, REDIS_TIMEOUT),
            connector,
            commands,
            beats,
            scripts: Scripts::new(),
            metrics: metrics.cluster(&node),
            policy: router.duplicate_policy(),
            router,
            when_down: config.when_down,
            lease: config.lease.0,
            heartbeat: config.heartbeat.0,
            commands_up: AtomicBool::new(true),
            pubsub: subscriber::Subscriber::default(),
            mirror: Mirror::default(),
            recover: Notify::new(),
            settling: Mutex::new(None),
            node,
        });
        cluster
            .beat()
            .await
            .map_err(|reason| ClusterError::Unreachable {
                addr: addr.clone(),
                reason,
            })?;
        // A previous process with this node id (restarted within its lease,
        // so never reaped) may have left names, rows and rooms: forget them
        // and say they left.
        cluster.forget_previous().await;
        // Reachable before serving: the subscriber is up and the mirror
        // filled before the first client is admitted.
        let ready = Arc::new(Notify::new());
        tracker.spawn(subscriber::supervise(
            cluster.clone(),
            shutdown.clone(),
            ready.clone(),
        ));
        tokio::select! {
            () = ready.notified() => {}
            () = tokio::time::sleep(REDIS_TIMEOUT * 2) => {
                tracing::warn!(redis = %addr, "cluster: the subscriber is not connected yet; serving, and retrying in the background");
            }
        }
        cluster.resync_mirror().await;
        tracker.spawn(cluster.clone().heartbeats(shutdown.clone()));
        tracker.spawn(cluster.clone().upkeep(shutdown));
        tracing::info!(node = %cluster.node, redis = %addr, lease = ?cluster.lease, "cluster: joined");
        Ok(cluster)
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Redis answers commands, the subscriber is connected, and the
    /// registry is not settling.
    pub(crate) fn is_up(&self) -> bool {
        self.commands_up.load(Ordering::Acquire) && self.pubsub.is_up() && !self.is_settling()
    }

    /// The registry is settling after Redis came back ([`Cluster::is_up`] is false).
    pub(crate) fn is_settling(&self) -> bool {
        self.settling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Starts (or extends) the settling time: one lease from now.
    fn settle(&self) {
        *self.settling.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + self.lease);
        self.health_changed();
    }

    /// Ends the settling time if it is over; true when it just ended.
    fn settled(&self) -> bool {
        let mut settling = self.settling.lock().unwrap_or_else(|p| p.into_inner());
        if settling.is_some_and(|until| Instant::now() >= until) {
            *settling = None;
            drop(settling);
            self.health_changed();
            return true;
        }
        false
    }

    fn health_changed(&self) {
        self.metrics.up.set(i64::from(self.is_up()));
    }

    fn set_commands_up(&self, up: bool) {
        if self.commands_up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!(node = %self.node, "cluster: Redis answers again");
            } else {
                tracing::warn!(node = %self.node, "cluster: Redis does not answer; local traffic goes on");
            }
            self.health_changed();
        }
    }

    fn conn(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// Fails at once while Redis is known to be unreachable, so that a
    /// session does not wait out a timeout per frame for another node.
    fn reachable(&self) -> Result<(), String> {
        if self.commands_up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("Redis is unreachable".into())
        }
    }

    /// Runs one Redis call with the time limit, noting a lost connection.
    /// An answer does not say Redis is up again: only the heartbeat does,
    /// which decides first whether the registry settles (a recovery that
    /// answered before it, as the subscriber's after a reconnect, would
    /// admit names in between).
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                // An error Redis answered with (a script's, a type) says
                // Redis is there; a lost or refused connection says it is
                // not. A slow answer alone decides nothing: the heartbeat
                // (on its own connection) does.
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.set_commands_up(false);
                }
                Err(format!("{what}: {e}"))
            }
            Err(_) => Err(format!("{what}: no answer within {REDIS_TIMEOUT:?}")),
        }
    }

    /// Publishes `header` + `body` on `channel`; how many nodes took it.
    async fn publish(
        &self,
        channel: &str,
        header: &Header<'_>,
        body: &str,
        kind: ClusterKind,
    ) -> Result<usize, String> {
        self.publish_payload(channel, header.encode(body), kind)
            .await
    }

    /// [`Cluster::publish`] of a payload already encoded.
    async fn publish_payload(
        &self,
        channel: &str,
        payload: String,
        kind: ClusterKind,
    ) -> Result<usize, String> {
        let answer = self.publisher.publish(channel.to_owned(), payload).await;
        self.answered(answer, kind)
    }

    /// Notes Redis's answer to a published message: how many nodes took it
    /// (up again or not: the heartbeat says, see [`Cluster::call`]).
    fn answered(&self, answer: Result<usize, Failure>, kind: ClusterKind) -> Result<usize, String> {
        match answer {
            Ok(count) => {
                // An answer says Redis is there (one load while it was).
                if !self.commands_up.load(Ordering::Acquire) {
                    self.set_commands_up(true);
                }
                self.metrics.message(Direction::published, kind);
                Ok(count)
            }
            Err((why, unreachable)) => {
                if unreachable {
                    self.set_commands_up(false);
                }
                Err(why)
            }
        }
    }

    /// Resolves once every message published (or queued) before was
    /// answered, and what those answers say was done.
    pub(crate) async fn fence(&self) {
        self.publisher.fence().await;
    }

    // ------------------------------------------------------------ sessions

    /// The cluster's part of admitting `handle` (already admitted on this
    /// node): subscribe its name, then claim the name cluster-wide by the
    /// duplicate policy, and tell the other nodes. A refusal here means the
    /// caller removes the session and calls [`Cluster::forget`].
    pub(crate) async fn admit(&self, handle: &SessionHandle) -> Result<(), Refusal> {
        let name = handle.name();
        if !self.is_up() {
            return self.down_admission(&name);
        }
        if let Err(e) = self
            .pubsub
            .subscribe(vec![self.keys.to(name.as_str())])
            .await
        {
            tracing::warn!(client = %name, error = %e, "cluster: cannot subscribe a name");
            return self.down_admission(&name);
        }
        if let Err(e) = self.record_client(handle).await {
            tracing::warn!(client = %name, error = %e, "cluster: cannot record a client");
            return self.down_admission(&name);
        }
        // Provisional Qt names are exempt from the policy among themselves,
        // and `allow` is not exclusive: neither is claimed.
        if !handle.is_provisional() && self.policy != DuplicatePolicy::Allow {
            let mode = match self.policy {
                DuplicatePolicy::Replace => "replace",
                _ => "reject",
            };
            match self.claim(handle, mode).await {
                Ok(Claimed::Ok { previous }) => {
                    if let Some((owner, id)) = previous
                        && owner != *self.node
                    {
                        let mut header =
                            Header::new(&self.node, Kind::Replace, Some(name.as_str()));
                        header.id = Some(id);
                        let _ = self
                            .publish(&self.keys.node(&owner), &header, "", ClusterKind::control)
                            .await;
                    }
                }
                Ok(Claimed::Taken { node }) => {
                    tracing::info!(client = %name, holder = %node, "cluster: name held on another node");
                    self.unrecord_client(handle).await;
                    return Err(Refusal::new(409, format!("name already connected: {name}")));
                }
                Err(e) => {
                    tracing::warn!(client = %name, error = %e, "cluster: cannot claim a name");
                    self.unrecord_client(handle).await;
                    return self.down_admission(&name);
                }
            }
        }
        let header = Header::new(&self.node, Kind::Join, Some(name.as_str()));
        let _ = self
            .publish(&self.keys.all(), &header, "", ClusterKind::presence)
            .await;
        Ok(())
    }

    /// Records the `/clients` row of a session here, for the other nodes.
    async fn record_client(&self, handle: &SessionHandle) -> Result<(), String> {
        let row = serde_json::to_string(&ClientRow::of(handle, None)).unwrap_or_default();
        let mut conn = self.conn();
        self.call(
            "HSET",
            conn.hset::<_, _, _, ()>(self.keys.node_clients(&self.node), handle.id(), row),
        )
        .await
    }

    /// Forgets the row of a session here.
    async fn unrecord_client(&self, handle: &SessionHandle) {
        let mut conn = self.conn();
        let _: Result<(), String> = self
            .call(
                "HDEL",
                conn.hdel(self.keys.node_clients(&self.node), handle.id()),
            )
            .await;
    }

    /// What a client gets while Redis is down, by `when_down`.
    fn down_admission(&self, name: &ClientName) -> Result<(), Refusal> {
        match self.when_down {
            ClusterDown::Refuse => Err(Refusal::new(
                503,
                "cluster unavailable: the name registry (Redis) is unreachable",
            )
            .retry_after(RETRY_AFTER_DOWN)),
            ClusterDown::Local => {
                tracing::info!(client = %name, "cluster: Redis unreachable; admitted on this node only, claimed when Redis is back");
                Ok(())
            }
        }
    }

    /// Claims the name of `handle`; `mode` is `reject`, `replace` or
    /// `reclaim` (take it only if free or already this node's).
    async fn claim(&self, handle: &SessionHandle, mode: &str) -> Result<Claimed, String> {
        let name = handle.name();
        let entry = self.entry(handle);
        for _ in 0..3 {
            let mut conn = self.conn();
            let current: Option<String> = self
                .call("HGET", conn.hget(self.keys.names(), name.as_str()))
                .await?;
            let current = current.unwrap_or_default();
            let owner = current.split('|').next().unwrap_or_default();
            let owner_names = if owner.is_empty() {
                self.keys.node_names(&self.node)
            } else {
                self.keys.node_names(owner)
            };
            let mut invocation = self.scripts.claim.key(self.keys.names());
            invocation
                .key(self.keys.nodes())
                .key(self.keys.node_names(&self.node))
                .key(owner_names)
                .arg(name.as_str())
                .arg(&*self.node)
                .arg(&entry)
                .arg(mode)
                .arg(&current);
            let (verdict, previous): (String, String) = self
                .call("claim", invocation.invoke_async(&mut conn))
                .await?;
            match verdict.as_str() {
                "ok" => {
                    let mut parts = previous.splitn(3, '|');
                    let previous = match (parts.next(), parts.next()) {
                        (Some(node), Some(id)) if !node.is_empty() => {
                            id.parse().ok().map(|id| (node.to_owned(), id))
                        }
                        _ => None,
                    };
                    return Ok(Claimed::Ok { previous });
                }
                "taken" => {
                    let node = previous.split('|').next().unwrap_or_default().to_owned();
                    return Ok(Claimed::Taken { node });
                }
                _ => continue,
            }
        }
        Err("the name's entry kept changing".into())
    }

    /// The registry entry of a claimed name: `node|session|`.
    fn entry(&self, handle: &SessionHandle) -> String {
        format!("{}|{}|", self.node, handle.id())
    }

    /// Whether the registry says another node holds `name`.
    async fn held_elsewhere(&self, name: &str) -> bool {
        let mut conn = self.conn();
        let entry: Result<Option<String>, String> =
            self.call("HGET", conn.hget(self.keys.names(), name)).await;
        entry.ok().flatten().is_some_and(|entry| {
            entry
                .split('|')
                .next()
                .is_some_and(|node| node != &*self.node)
        })
    }

    /// After a refused admission (the session already removed here): stop
    /// listening for the name unless another session here holds it.
    pub(crate) async fn forget(&self, name: &str) {
        if !self.router.holds(name) {
            let _ = self.pubsub.unsubscribe(vec![self.keys.to(name)]).await;
        }
    }

    /// The cluster's part of a session's end (already removed from the
    /// router): release its rooms and its name, tell the other nodes.
    pub(crate) async fn session_ended(&self, handle: &SessionHandle, mut rooms: Vec<Arc<str>>) {
        let name = handle.name();
        // Whether another session here holds the name as this one ends, read
        // before any wait: a session of the name admitted here meanwhile,
        // still waiting for its claim, announces itself if it gets the name,
        // and must not keep this one's leave from being told.
        let others_here = self.router.holds(name.as_str());
        let replaced = handle.close_order() == Some(crate::close::Close::Replaced);
        if replaced {
            // Its rooms went with the replacement: read them back.
            rooms = self.recorded_rooms(name.as_str()).await;
        }
        for room in rooms {
            self.left(&room, name.as_str()).await;
        }
        // Stop listening before the name is released: once it is, another
        // node may claim it, and a message meanwhile published for it would
        // reach only this node, which cannot tell whether the new holder got
        // it and stays silent. Unsubscribed first, such a message reaches
        // nobody until the new holder subscribes (before its claim), and its
        // sender is told `recipient not connected`.
        self.forget(name.as_str()).await;
        let released = if handle.is_provisional() || self.policy == DuplicatePolicy::Allow {
            true
        } else {
            let mut conn = self.conn();
            let mut invocation = self.scripts.release.key(self.keys.names());
            invocation
                .key(self.keys.node_names(&self.node))
                .arg(name.as_str())
                .arg(format!("{}|{}|", self.node, handle.id()));
            // A failed release is repaired when Redis is back (stale names
            // are released by the recovery).
            self.call("release", invocation.invoke_async::<i64>(&mut conn))
                .await
                .is_ok_and(|n| n == 1)
        };
        self.unrecord_client(handle).await;
        if !others_here {
            // Released: it left. Replaced: it lives on elsewhere, and the
            // other nodes only forget it was here.
            let kind = if released {
                Some(Kind::Leave)
            } else if replaced {
                Some(Kind::Moved)
            } else {
                None
            };
            if let Some(kind) = kind {
                let header = Header::new(&self.node, kind, Some(name.as_str()));
                let _ = self
                    .publish(&self.keys.all(), &header, "", ClusterKind::presence)
                    .await;
            }
        }
    }

    /// The rooms this node recorded `name` in.
    async fn recorded_rooms(&self, name: &str) -> Vec<Arc<str>> {
        let mut conn = self.conn();
        let pairs: Vec<String> = self
            .call("SMEMBERS", conn.smembers(self.keys.node_rooms(&self.node)))
            .await
            .unwrap_or_default();
        pairs
            .iter()
            .filter_map(|pair| pair.split_once('\n'))
            .filter(|(_, member)| *member == name)
            .map(|(room, _)| Arc::from(room))
            .collect()
    }

    /// A provisional Qt name here became its full name (`handle`'s name
    /// now): listen for the new name, claim it, update the row, and tell
    /// the other nodes (no presence notice, as on one node).
    pub(crate) async fn renamed(&self, handle: &SessionHandle, old: &str) {
        let name = handle.name();
        if self.reachable().is_err() {
            return; // claimed with the rest when Redis is back
        }
        let _ = self
            .pubsub
            .subscribe(vec![self.keys.to(name.as_str())])
            .await;
        let _ = self.record_client(handle).await;
        if self.policy != DuplicatePolicy::Allow
            && let Ok(Claimed::Taken { node }) = self.claim(handle, "reject").await
        {
            // The rename was decided here; the name is held elsewhere too.
            tracing::warn!(client = %name, holder = %node, "cluster: a Qt client took its full name, which another node holds too");
        }
        let mut header = Header::new(&self.node, Kind::Renamed, Some(old));
        header.t = Some(name.as_str().into());
        let _ = self
            .publish(&self.keys.all(), &header, "", ClusterKind::presence)
            .await;
        self.forget(old).await;
    }

    /// A private message for `dst` from session `session` named `from`,
    /// held on no session here: published to the node(s) holding it.
    /// Ok(0): nobody holds it; Err: Redis failed.
    pub(crate) async fn private(
        &self,
        (from, session): (&str, u64),
        dst: &str,
        frame: &str,
        id: Option<&RawValue>,
    ) -> Result<usize, String> {
        self.reachable()?;
        let mut header = private_header(&self.node, (from, session), dst, id);
        let reached = self
            .publish(&self.keys.to(dst), &header, frame, ClusterKind::private)
            .await?;
        if reached > 0 {
            return Ok(reached);
        }
        // Qt's Latin-1 Origin: the full name may be held as a provisional one.
        let latin1 = qt_latin1(dst);
        if latin1 != dst {
            // Only a node's one provisional session of that name takes it.
            header.n = Some(latin1.clone());
            header.t = Some(dst.into());
            return self
                .publish(&self.keys.to(&latin1), &header, frame, ClusterKind::private)
                .await;
        }
        Ok(0)
    }

    /// [`Cluster::private`] without waiting: the message is queued for the
    /// publisher now, and its answer, which says what `private`'s would,
    /// goes to the function given to [`Queued::then`]. Messages queued (or
    /// published) one after the other are published and answered in that
    /// order. `None`: not queued (Redis is known to be unreachable, the
    /// name needs a second try under its Latin-1 form, or the queue is
    /// full): use [`Cluster::private`].
    pub(crate) fn private_queued<'a>(
        self: &'a Arc<Self>,
        from: (&str, u64),
        dst: &str,
        frame: &str,
        id: Option<&RawValue>,
    ) -> Option<Queued<'a>> {
        if self.reachable().is_err() || qt_latin1(dst) != dst {
            return None;
        }
        let slot = self.publisher.slot()?;
        let header = private_header(&self.node, from, dst, id);
        Some(Queued {
            cluster: self,
            slot,
            channel: self.keys.to(dst),
            payload: header.encode(frame),
        })
    }

    /// A room message, already delivered to the members here: published to
    /// the other nodes with members.
    pub(crate) async fn room(&self, room: &str, frame: &str) -> Result<(), String> {
        self.reachable()?;
        let header = Header::new(&self.node, Kind::Room, None);
        self.publish(&self.keys.room(room), &header, frame, ClusterKind::room)
            .await
            .map(drop)
    }

    /// `name` joined `room` here: listen to the room, record the member.
    pub(crate) async fn joined(&self, room: &str, name: &str) -> Result<(), String> {
        self.reachable()?;
        self.pubsub.subscribe(vec![self.keys.room(room)]).await?;
        let mut pipe = redis::pipe();
        pipe.sadd(self.keys.room_members(room), name)
            .ignore()
            .sadd(self.keys.node_rooms(&self.node), format!("{room}\n{name}"))
            .ignore();
        let mut conn = self.conn();
        self.call("SADD", pipe.query_async::<()>(&mut conn)).await
    }

    /// `name` left `room` here: stop listening when no member is left here.
    pub(crate) async fn left(&self, room: &str, name: &str) {
        if self.reachable().is_err() {
            return; // recorded again (or reaped) when Redis is back
        }
        if !self.router.has_members(room) {
            let _ = self.pubsub.unsubscribe(vec![self.keys.room(room)]).await;
        }
        if self.router.names(Some(room)).iter().any(|n| n == name) {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.srem(self.keys.room_members(room), name)
            .ignore()
            .srem(self.keys.node_rooms(&self.node), format!("{room}\n{name}"))
            .ignore();
        let mut conn = self.conn();
        let _ = self.call("SREM", pipe.query_async::<()>(&mut conn)).await;
    }

    /// Everyone connected: the names here and on the other nodes.
    pub(crate) fn names(&self, mut local: Vec<String>) -> Vec<String> {
        local.extend(self.mirror.names());
        local.sort_unstable();
        local.dedup();
        local
    }

    /// The members of `room` on every node.
    pub(crate) async fn room_names(&self, room: &str) -> Result<Vec<String>, String> {
        self.reachable()?;
        let mut conn = self.conn();
        let mut names: Vec<String> = self
            .call("SMEMBERS", conn.smembers(self.keys.room_members(room)))
            .await?;
        names.extend(self.router.names(Some(room)));
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    // ------------------------------------------------------------ operator

    /// The other nodes' clients, each with its node, oldest first.
    pub(crate) async fn remote_clients(&self) -> Result<Vec<ClientRow>, String> {
        let mut rows = self.other_nodes_clients().await?;
        rows.sort_by(|a, b| {
            a.connected_at
                .cmp(&b.connected_at)
                .then(a.name.cmp(&b.name))
        });
        Ok(rows)
    }

    /// Every other node's recorded clients (one round trip for the node
    /// list, one pipelined for their rows).
    async fn other_nodes_clients(&self) -> Result<Vec<ClientRow>, String> {
        let mut conn = self.conn();
        let nodes: Vec<String> = self
            .call("ZRANGE", conn.zrange(self.keys.nodes(), 0, -1))
            .await?;
        let others: Vec<String> = nodes.into_iter().filter(|n| n != &*self.node).collect();
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for node in &others {
            pipe.hvals(self.keys.node_clients(node));
        }
        let per_node: Vec<Vec<String>> = self.call("HVALS", pipe.query_async(&mut conn)).await?;
        Ok(others
            .iter()
            .zip(per_node)
            .flat_map(|(node, rows)| {
                rows.into_iter().filter_map(move |row| {
                    let mut row: ClientRow = serde_json::from_str(&row).ok()?;
                    row.node = Some(node.clone());
                    Some(row)
                })
            })
            .collect())
    }

    /// The operator's text for `name` on the other nodes: how many took it.
    pub(crate) async fn send(&self, name: &str, text: &str) -> Result<usize, String> {
        let header = Header::new(&self.node, Kind::Send, Some(name));
        self.publish(&self.keys.to(name), &header, text, ClusterKind::operator)
            .await
    }

    /// The operator's broadcast to the other nodes: how many took it.
    pub(crate) async fn broadcast(&self, text: &str) -> Result<usize, String> {
        let header = Header::new(&self.node, Kind::Bcast, None);
        let reached = self
            .publish(&self.keys.all(), &header, text, ClusterKind::operator)
            .await?;
        // Every node listens to the channel, this one too.
        Ok(reached.saturating_sub(1))
    }

    /// The operator's kick of `name` on the other nodes: how many nodes took it.
    pub(crate) async fn kick(&self, name: &str, reason: Option<&str>) -> Result<usize, String> {
        let header = Header::new(&self.node, Kind::Kick, Some(name));
        self.publish(
            &self.keys.to(name),
            &header,
            reason.unwrap_or(""),
            ClusterKind::operator,
        )
        .await
    }

    // ------------------------------------------------------------ inbound

    /// Acts on one message from Redis: each envelope of a bundle in order,
    /// or the lone envelope it is.
    fn dispatch(self: &Arc<Self>, channel: &str, payload: &[u8]) {
        let Some(envelopes) = envelope::unbundle(payload) else {
            tracing::warn!(%channel, "cluster: a malformed bundle (lengths that do not add up, an empty envelope, too many); ignored");
            return;
        };
        for envelope in envelopes {
            self.dispatch_one(channel, envelope);
        }
    }

    /// Acts on one envelope from Redis. Never waits: deliveries go into
    /// sessions' queues, and the rare publish back runs as its own task.
    fn dispatch_one(self: &Arc<Self>, channel: &str, payload: &[u8]) {
        let Some((header, body)) = std::str::from_utf8(payload).ok().and_then(Header::decode)
        else {
            tracing::warn!(%channel, "cluster: a message no node of this version wrote; ignored");
            return;
        };
        let Some(on) = self.keys.classify(channel) else {
            return;
        };
        let ours = *header.o == *self.node;
        let router = &self.router;
        let received = |kind| self.metrics.message(Direction::received, kind);
        match (on, header.k) {
            (keys::Channel::To(name), Kind::Msg) => {
                received(ClusterKind::private);
                // Through the Qt fallback only a provisional session takes
                // it, as on one node.
                let delivery = if header.t.is_some() {
                    router.send_to_provisional(name, || Message::text(body))
                } else {
                    router.send_to_name(name, || Message::text(body))
                };
                let why = if delivery.targets == 0 {
                    wssgate_wire::notice::NOT_CONNECTED
                } else if delivery.queued == 0 {
                    wssgate_wire::notice::TOO_SLOW
                } else {
                    return;
                };
                // Told back, never dropped in silence: the name left (or its
                // queue is full) between the sender's publish and here.
                let Some(sender) = header.s else { return };
                let mut back = Header::new(&self.node, Kind::Err, Some(&sender));
                back.i = header.i;
                back.id = header.id;
                let text = format!("{why}: {}", header.t.as_deref().unwrap_or(name));
                // Encoded here: the header borrows the message.
                let payload = back.encode(&text);
                let cluster = self.clone();
                let to = self.keys.node(&header.o);
                let name = name.to_owned();
                let full = delivery.targets > 0;
                tokio::spawn(async move {
                    // A stale subscription here (a name that moved, this
                    // node's own included) must not answer for the node
                    // that delivered it.
                    if !full && cluster.held_elsewhere(&name).await {
                        cluster.forget(&name).await;
                        return;
                    }
                    if ours {
                        if let Some((back, text)) = Header::decode(&payload) {
                            cluster.tell_sender(&back, text);
                        }
                    } else {
                        let _ = cluster
                            .publish_payload(&to, payload, ClusterKind::control)
                            .await;
                    }
                });
            }
            (keys::Channel::To(name), Kind::Send) => {
                received(ClusterKind::operator);
                router.send_to_name(name, || Message::text(body));
            }
            (keys::Channel::To(name), Kind::Kick) => {
                received(ClusterKind::operator);
                let reason = Some(body).filter(|r| !r.is_empty());
                router.kick(name, reason);
            }
            (keys::Channel::Room(room), Kind::Room) => {
                received(ClusterKind::room);
                if !ours {
                    router.deliver_to_room(room, || Message::text(body));
                }
            }
            (keys::Channel::All, Kind::Bcast) => {
                received(ClusterKind::operator);
                if !ours {
                    router.broadcast(Message::text(body));
                }
            }
            (keys::Channel::All, Kind::Join) => {
                received(ClusterKind::presence);
                let node: Arc<str> = (*header.o).into();
                if let Some(name) = header.n.filter(|_| !ours)
                    && self.mirror.add(&name, &node)
                    && let Ok(name) = ClientName::new(&name)
                {
                    router.announce_remote(Presence::Join, name);
                }
            }
            (keys::Channel::All, Kind::Leave) => {
                received(ClusterKind::presence);
                let node = header.d.as_deref().unwrap_or(&header.o);
                if node == &*self.node {
                    return;
                }
                if let Some(name) = header.n
                    && self.mirror.remove(&name, node)
                    && !router.holds(&name)
                    && let Ok(name) = ClientName::new(&name)
                {
                    router.announce_remote(Presence::Leave, name);
                }
            }
            (keys::Channel::Node, Kind::Replace) => {
                received(ClusterKind::control);
                if let (Some(name), Some(id)) = (header.n, header.id) {
                    router.replaced_elsewhere(&name, id);
                }
            }
            (keys::Channel::Node, Kind::Err) => {
                received(ClusterKind::control);
                self.tell_sender(&header, body);
            }
            (keys::Channel::All, Kind::Moved) => {
                received(ClusterKind::presence);
                if let Some(name) = header.n.filter(|_| !ours) {
                    self.mirror.remove(&name, &header.o);
                }
            }
            (keys::Channel::All, Kind::Renamed) => {
                received(ClusterKind::presence);
                if let (Some(old), Some(new)) = (header.n, header.t)
                    && !ours
                {
                    let node: Arc<str> = (*header.o).into();
                    self.mirror.remove(&old, &node);
                    self.mirror.add(&new, &node);
                }
            }
            _ => {}
        }
    }

    /// An `error` notice for the sender named in `header` (its request's
    /// `ref` from `i`), on this node.
    fn tell_sender(&self, header: &Header, text: &str) {
        let Some(sender) = header.n.as_deref() else {
            return;
        };
        let notice = || Message::text(Notice::error(sender, text, header.i).to_json());
        match header.id {
            // The session that sent it, if it is still here: a later
            // session of the same name sent nothing this is about.
            Some(session) => self.router.send_to_session(sender, session, notice),
            None => self.router.send_to_name(sender, notice),
        };
    }

    // ------------------------------------------------------------ upkeep

    /// Renews this node's lease. Ok(false): the lease had run out (this
    /// node may have been reaped), so its names must be claimed again.
    async fn beat(&self) -> Result<bool, String> {
        let started = Instant::now();
        let mut conn = self.beats.clone();
        let mut invocation = self.scripts.heartbeat.key(self.keys.nodes());
        invocation
            .arg(&*self.node)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX));
        let held: i64 =
            match tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut conn)).await {
                Ok(Ok(held)) => held,
                Ok(Err(e)) => {
                    self.set_commands_up(false);
                    return Err(format!("heartbeat: {e}"));
                }
                Err(_) => {
                    self.set_commands_up(false);
                    return Err(format!("heartbeat: no answer within {REDIS_TIMEOUT:?}"));
                }
            };
        self.set_commands_up(true);
        self.metrics.rtt.set(started.elapsed().as_secs_f64());
        tracing::debug!(node = %self.node, held, "cluster: lease renewed");
        Ok(held == 1)
    }

    /// The heartbeat: renews the lease, on its own connection and task, so
    /// that no other work (a burst of admissions, a recovery of thousands
    /// of names) can delay it past the lease. When Redis comes back, or the
    /// lease had run out, it starts the settling time and asks the upkeep
    /// task to recover.
    async fn heartbeats(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_up = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.beat().await {
                Ok(held) => {
                    if !held || !was_up {
                        // Redis came back (maybe empty) or this node was
                        // reaped: claim again, and admit no new name until
                        // every live node had a lease to do the same.
                        tracing::info!(node = %self.node, settle = ?self.lease, "cluster: Redis is back; the name registry settles for one lease");
                        self.settle();
                        self.recover.notify_one();
                    }
                    was_up = true;
                }
                Err(e) => {
                    if was_up {
                        tracing::warn!(node = %self.node, error = %e, "cluster: heartbeat failed");
                    }
                    was_up = false;
                }
            }
        }
        // A clean stop: the lease ends now. The sessions closing release
        // their names; whatever they could not, the next reaper frees and
        // announces.
        let mut conn = self.beats.clone();
        let _: Result<(), String> = self
            .call("ZADD", conn.zadd(self.keys.nodes(), &*self.node, 0))
            .await;
    }

    /// The upkeep: reap dead nodes every heartbeat, recover when asked (the
    /// subscriber reconnected, Redis came back) and when the settling time
    /// ends, and every [`RESYNC_INTERVAL`] rebuild the mirror and check the
    /// subscriptions.
    async fn upkeep(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_resync = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.recover.notified() => {
                    self.recovered().await;
                    last_resync = Instant::now();
                    continue;
                }
                _ = tick.tick() => {}
            }
            if self.reachable().is_err() {
                continue;
            }
            if self.settled() {
                // Names admitted on this node meanwhile (when_down = "local").
                self.recovered().await;
                tracing::info!(node = %self.node, "cluster: the name registry settled");
            }
            self.reap().await;
            if last_resync.elapsed() >= RESYNC_INTERVAL {
                last_resync = Instant::now();
                self.resync_mirror().await;
                self.pubsub.reconcile(&self).await;
            }
        }
    }

    /// Forgets what a previous process with this node's id left behind,
    /// and tells the other nodes its clients left.
    async fn forget_previous(&self) {
        let mut conn = self.conn();
        let mut invocation = self.scripts.forget.key(self.keys.names());
        invocation
            .arg(&*self.node)
            .arg(self.keys.node_prefix())
            .arg(self.keys.room_prefix());
        let Ok(names) = self
            .call("forget", invocation.invoke_async::<Vec<String>>(&mut conn))
            .await
        else {
            return;
        };
        if !names.is_empty() {
            tracing::info!(node = %self.node, names = names.len(), "cluster: a previous process with this node id left clients behind; they are gone");
        }
        for name in names {
            let header = Header::new(&self.node, Kind::Leave, Some(&name));
            let _ = self
                .publish(&self.keys.all(), &header, "", ClusterKind::presence)
                .await;
        }
    }

    /// Frees the names of nodes whose lease ran out and announces them gone.
    async fn reap(&self) {
        let mut conn = self.conn();
        let mut invocation = self.scripts.reap.key(self.keys.nodes());
        invocation
            .key(self.keys.names())
            .arg(self.keys.node_prefix())
            .arg(self.keys.room_prefix());
        let Ok(dead) = self
            .call(
                "reap",
                invocation.invoke_async::<Vec<(String, Vec<String>, i64)>>(&mut conn),
            )
            .await
        else {
            return;
        };
        for (node, names, late_ms) in dead {
            self.metrics.reaped.inc();
            if late_ms < 0 {
                tracing::info!(node = %self.node, stopped = %node, names = names.len(), "cluster: a node stopped; what it left is free");
            } else {
                tracing::warn!(node = %self.node, dead = %node, names = names.len(), late_ms, "cluster: a node's lease ran out; its names are free");
            }
            for name in names {
                let mut header = Header::new(&self.node, Kind::Leave, Some(&name));
                header.d = Some(node.as_str().into());
                let _ = self
                    .publish(&self.keys.all(), &header, "", ClusterKind::presence)
                    .await;
            }
        }
    }

    /// After Redis came back (or this node's lease had run out): claim this
    /// node's names again (a name another live node took meanwhile closes
    /// the session here with 4000), record its clients and rooms again,
    /// listen for them, release what it no longer holds, resync the mirror.
    /// In batches: a round trip per few hundred sessions, not per session.
    async fn recovered(&self) {
        tracing::info!(node = %self.node, "cluster: claiming this node's names again");
        const CHUNK: usize = 256;
        let sessions = self.router.sessions();
        for chunk in sessions.chunks(CHUNK) {
            let claimed: Vec<&Arc<SessionHandle>> = chunk
                .iter()
                .filter(|h| !h.is_provisional() && self.policy != DuplicatePolicy::Allow)
                .collect();
            if !claimed.is_empty() {
                let mut conn = self.conn();
                let mut invocation = self.scripts.reclaim.key(self.keys.names());
                invocation
                    .key(self.keys.nodes())
                    .key(self.keys.node_names(&self.node))
                    .arg(&*self.node)
                    .arg(self.keys.node_prefix());
                for handle in &claimed {
                    invocation
                        .arg(handle.name().as_str())
                        .arg(self.entry(handle));
                }
                let (taken, fresh): (Vec<String>, Vec<String>) = match self
                    .call("reclaim", invocation.invoke_async(&mut conn))
                    .await
                {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: recovery stopped; retried when Redis answers");
                        return;
                    }
                };
                for name in &taken {
                    for handle in claimed.iter().filter(|h| h.name().as_str() == name) {
                        tracing::info!(client = %name, "cluster: the name was taken on another node meanwhile; replaced");
                        self.router.replaced_elsewhere(name, handle.id());
                    }
                }
                // Freed meanwhile (reaped): the others announced a leave.
                for name in fresh {
                    let header = Header::new(&self.node, Kind::Join, Some(&name));
                    let _ = self
                        .publish(&self.keys.all(), &header, "", ClusterKind::presence)
                        .await;
                }
            }
            let mut pipe = redis::pipe();
            for handle in chunk {
                let row = serde_json::to_string(&ClientRow::of(handle, None)).unwrap_or_default();
                pipe.hset(self.keys.node_clients(&self.node), handle.id(), row)
                    .ignore();
                let name = handle.name();
                for room in self.router.rooms_of(handle) {
                    pipe.sadd(self.keys.room_members(&room), name.as_str())
                        .ignore()
                        .sadd(self.keys.node_rooms(&self.node), format!("{room}\n{name}"))
                        .ignore();
                }
            }
            let mut conn = self.conn();
            let _: Result<(), String> = self.call("record", pipe.query_async(&mut conn)).await;
        }
        self.pubsub.reconcile(self).await;
        self.release_stale().await;
        self.resync_mirror().await;
    }

    /// Releases names the registry says a session of this node holds that
    /// is not here any more, and forgets such sessions' rows (a release that
    /// failed while Redis was down). By session id, so a session admitted
    /// meanwhile is never taken for a stale one.
    async fn release_stale(&self) {
        let mut conn = self.conn();
        let live = |router: &Router| -> std::collections::HashSet<u64> {
            router.sessions().iter().map(|s| s.id()).collect()
        };
        if let Ok(recorded) = self
            .call(
                "HKEYS",
                conn.hkeys::<_, Vec<u64>>(self.keys.node_clients(&self.node)),
            )
            .await
        {
            // Read after the keys: a session admitted since is not in them.
            let live = live(&self.router);
            let gone: Vec<u64> = recorded
                .into_iter()
                .filter(|id| !live.contains(id))
                .collect();
            if !gone.is_empty() {
                let _: Result<(), String> = self
                    .call("HDEL", conn.hdel(self.keys.node_clients(&self.node), gone))
                    .await;
            }
        }
        let Ok(held) = self
            .call(
                "SMEMBERS",
                conn.smembers::<_, Vec<String>>(self.keys.node_names(&self.node)),
            )
            .await
        else {
            return;
        };
        let mut pipe = redis::pipe();
        for name in &held {
            pipe.hget(self.keys.names(), name);
        }
        let Ok(entries) = self
            .call("HGET", pipe.query_async::<Vec<Option<String>>>(&mut conn))
            .await
        else {
            return;
        };
        let live = live(&self.router);
        for (name, entry) in held.iter().zip(entries) {
            let Some(entry) = entry else { continue };
            let mut parts = entry.split('|');
            let (Some(node), Some(id)) = (parts.next(), parts.next()) else {
                continue;
            };
            if node != &*self.node || id.parse().is_ok_and(|id: u64| live.contains(&id)) {
                continue;
            }
            let mut invocation = self.scripts.release.key(self.keys.names());
            invocation
                .key(self.keys.node_names(&self.node))
                .arg(name)
                .arg(format!("{node}|{id}|"));
            if self
                .call("release", invocation.invoke_async::<i64>(&mut conn))
                .await
                .is_ok_and(|n| n == 1)
                && !self.router.holds(name)
            {
                let header = Header::new(&self.node, Kind::Leave, Some(name));
                let _ = self
                    .publish(&self.keys.all(), &header, "", ClusterKind::presence)
                    .await;
            }
        }
    }

    /// Rebuilds the mirror of the other nodes' names from their recorded
    /// clients and announces what changed (events are at most once).
    async fn resync_mirror(&self) {
        let epoch = self.mirror.epoch();
        let Ok(rows) = self.other_nodes_clients().await else {
            return;
        };
        let mut fresh: HashMap<String, BTreeSet<Arc<str>>> = HashMap::new();
        for row in rows {
            if let Some(node) = row.node {
                fresh.entry(row.name).or_default().insert(node.into());
            }
        }
        let Some((joined, left)) = self.mirror.replace(fresh, epoch) else {
            return; // an event came in meanwhile: the next resync
        };
        for (event, names) in [(Presence::Join, joined), (Presence::Leave, left)] {
            for name in names {
                if !self.router.holds(&name)
                    && let Ok(name) = ClientName::new(&name)
                {
                    self.router.announce_remote(event, name);
                }
            }
        }
    }

    /// The channels this node must listen to now: its own, every name it
    /// holds, every room with a member here.
    fn wanted(&self) -> Vec<String> {
        let mut channels = vec![self.keys.all(), self.keys.node(&self.node)];
        channels.extend(self.router.local_names().iter().map(|n| self.keys.to(n)));
        channels.extend(self.router.local_rooms().iter().map(|r| self.keys.room(r)));
        channels
    }
}

/// The longest message published between nodes for a gateway whose
/// clients send at most `max_message_size` bytes: the frame as delivered
/// (the gateway's `src` and escaping can add to a client's frame, never
/// double it) and its header line (names are short). Anything longer on a
/// subscribed channel was not sent by a node: the subscriber refuses it
/// before buffering it and reconnects.
fn max_payload(max_message_size: usize) -> usize {
    max_message_size.saturating_mul(2).saturating_add(64 * 1024)
}

/// A private message with room in the publisher's queue
/// ([`Cluster::private_queued`]), queued once told where its answer goes.
pub(crate) struct Queued<'a> {
    cluster: &'a Arc<Cluster>,
    slot: publisher::Slot<'a>,
    channel: String,
    payload: String,
}

impl Queued<'_> {
    /// Queues the message; `answered` gets what Redis's answer means (how
    /// many nodes took it; Err: Redis failed), on the publisher's task.
    pub(crate) fn then(self, answered: impl FnOnce(Result<usize, String>) + Send + 'static) {
        let cluster = self.cluster.clone();
        let reply = publisher::Reply::Call(publisher::Callback::new(move |answer| {
            answered(cluster.answered(answer, ClusterKind::private));
        }));
        self.slot.send(self.channel, self.payload, reply);
    }
}

/// The header of a private message from session `session` named `from`
/// to `dst` (request `id`). The session's id comes back with an error
/// about it, so that the error reaches that session, not a later one of
/// the same name.
fn private_header<'a>(
    node: &'a str,
    (from, session): (&'a str, u64),
    dst: &'a str,
    id: Option<&'a RawValue>,
) -> Header<'a> {
    let mut header = Header::new(node, Kind::Msg, Some(dst));
    header.s = Some(from.into());
    header.i = id;
    header.id = Some(session);
    header
}

/// The outcome of a claim.
enum Claimed {
    /// The name is this session's; `previous` is the holder it replaced
    /// (node, session), if any.
    Ok { previous: Option<(String, u64)> },
    /// A live session on `node` holds it.
    Taken { node: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn config(redis: &str) -> ClusterConfig {
        ClusterConfig {
            redis: redis.into(),
            password_env: None,
            node_id: None,
            prefix: "wsg".into(),
            tls_ca: None,
            lease: ConfigDuration(Duration::from_secs(5)),
            heartbeat: ConfigDuration(Duration::from_secs(1)),
            at_start: ClusterStart::Refuse,
            when_down: ClusterDown::Refuse,
        }
    }

    #[test]
    fn config_rules() {
        assert!(check_config(&config("redis://127.0.0.1:6379/0")).is_ok());
        assert!(check_config(&config("unix:///tmp/r.sock")).is_ok());
        assert!(check_config(&config("rediss://h:6380/")).is_ok());
        let err = check_config(&config("http://x")).unwrap_err();
        assert!(err.contains("not a Redis URL"), "{err}");
        let err = check_config(&config("rediss://h:6380/#insecure")).unwrap_err();
        assert!(err.contains("#insecure"), "{err}");
        let mut c = config("redis://h/");
        c.tls_ca = Some("/ca.pem".into());
        assert!(check_config(&c).unwrap_err().contains("not rediss://"));
        let mut c = config("redis://h/");
        c.prefix = "a{b}".into();
        assert!(check_config(&c).unwrap_err().contains("prefix"));
        let mut c = config("redis://h/");
        c.node_id = Some("a|b".into());
        assert!(check_config(&c).unwrap_err().contains("node_id"));
        let mut c = config("redis://h/");
        c.heartbeat = ConfigDuration(Duration::from_secs(3));
        assert!(check_config(&c).unwrap_err().contains("half the lease"));
        let mut c = config("redis://h/");
        c.password_env = Some("WSSGATE_TEST_SURELY_UNSET_VARIABLE".into());
        assert!(check_config(&c).unwrap_err().contains("is not set"));
    }

    #[test]
    fn default_node_ids_differ_between_starts() {
        let (a, b) = (default_node_id(), default_node_id());
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
        assert!(!a.contains('|') && !a.contains(':') && !a.contains('{'));
    }

    #[test]
    fn the_mirror_counts_nodes_per_name() {
        let m = Mirror::default();
        let (n1, n2): (Arc<str>, Arc<str>) = ("n1".into(), "n2".into());
        assert!(m.add("a", &n1));
        assert!(!m.add("a", &n2));
        assert!(!m.remove("a", "n1"));
        assert!(m.remove("a", "n2"));
        assert!(m.names().is_empty());
        m.add("b", &n1);
        let fresh = HashMap::from([("c".to_owned(), BTreeSet::from([n2.clone()]))]);
        let epoch = m.epoch();
        let (joined, left) = m.replace(fresh.clone(), epoch).unwrap();
        assert_eq!((joined, left), (vec!["c".to_owned()], vec!["b".to_owned()]));
        // An event after the read wins over the read.
        let epoch = m.epoch();
        m.add("d", &n1);
        assert!(m.replace(fresh, epoch).is_none());
        assert!(m.names().contains(&"d".to_owned()));
    }
}
