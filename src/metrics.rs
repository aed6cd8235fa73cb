//! Prometheus metrics (through `prometheus-client`, the Prometheus project's
//! own Rust client). Every counter on the message path is created once at
//! start, so counting a message is one atomic add and never a map lookup.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Kinds of routed messages, a label of `wssgate_messages_routed_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RouteKind {
    /// Client to client.
    private,
    /// Client to a room.
    room,
    /// Client to the operator.
    to_server,
    /// Operator to everyone.
    broadcast,
    /// Operator to one name.
    send,
}

/// Kinds of errors, a label of `wssgate_errors_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ErrorKind {
    /// A message to a name that is not connected.
    unknown_recipient,
    /// A malformed request (bad `dst`, bad room).
    invalid_request,
    /// A message over `max_message_size`.
    too_large,
    /// A WebSocket protocol violation or bad UTF-8.
    protocol,
    /// A receiver closed with 1013 because its queue was full.
    slow_consumer,
    /// A message dropped because its only recipients were slow consumers.
    slow_recipient,
    /// A peer silent for longer than `idle_timeout`.
    idle_timeout,
    /// A handshake refused or failed.
    handshake,
    /// A TLS handshake failed (bad or missing certificate, wrong protocol).
    tls_handshake,
    /// A frame dropped for its session's rate limit.
    rate_limited,
    /// A connection refused for its address's connection rate (503).
    connection_rate,
    /// A request its token does not allow (a room, the operator).
    forbidden,
    /// A message for another node that Redis could not carry.
    cluster_unavailable,
}

/// What travels between cluster nodes, a label of
/// `wssgate_cluster_messages_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ClusterKind {
    /// A private message.
    private,
    /// A room message.
    room,
    /// The operator's send, broadcast or kick.
    operator,
    /// A join or leave (presence, the names mirror).
    presence,
    /// Node to node: a replacement, an error for a sender.
    control,
}

/// Direction, a label of `wssgate_cluster_messages_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// Published to Redis by this node.
    published,
    /// Received from Redis by this node (its own included).
    received,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    kind: RouteKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    kind: ErrorKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    direction: Direction,
    kind: ClusterKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

/// The cluster's handles (their series appear once a cluster uses them).
#[derive(Clone)]
pub struct ClusterMetrics {
    messages: Family<ClusterLabel, Counter>,
    /// The private messages' two series (published, received), looked up
    /// once: a label lookup per message is a lock and a hash. On first use,
    /// so that /metrics shows no series before its first message.
    private: [std::sync::OnceLock<Counter>; 2],
    /// 1 while Redis answers commands and the subscriber is connected.
    pub up: Gauge,
    /// The last heartbeat's round trip to Redis, in seconds.
    pub rtt: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Times the subscriber connection was (re)established.
    pub reconnects: Counter,
    /// Dead nodes this node reaped.
    pub reaped: Counter,
}

impl ClusterMetrics {
    /// Counts one message published or received.
    pub fn message(&self, direction: Direction, kind: ClusterKind) {
        let label = ClusterLabel { direction, kind };
        if kind == ClusterKind::private {
            let series = &self.private[usize::from(direction == Direction::received)];
            series
                .get_or_init(|| self.messages.get_or_create_owned(&label))
                .inc();
        } else {
            self.messages.get_or_create(&label).inc();
        }
    }
}

/// The gateway's metrics; one per gateway, shared by reference.
pub struct Metrics {
    registry: Registry,
    connections: Family<ListenerLabel, Gauge>,
    connections_total: Family<ListenerLabel, Counter>,
    routed: Family<RouteLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    refusals: Family<StatusLabel, Counter>,
    queue_drops: Counter,
    presence_resyncs: Counter,
    memory_trims: Counter,
    handshake_evictions: Counter,
    cluster_messages: Family<ClusterLabel, Counter>,
    cluster_up: Family<NodeLabel, Gauge>,
    cluster_rtt: Family<NodeLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    cluster_reconnects: Family<NodeLabel, Counter>,
    cluster_reaped: Family<NodeLabel, Counter>,
}

/// Per-listener handles, created once per listener.
#[derive(Clone)]
pub struct ListenerMetrics {
    /// Open sessions on the listener.
    pub open: Gauge,
    /// Sessions ever admitted on the listener.
    pub total: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("wssgate"),
            connections: Family::default(),
            connections_total: Family::default(),
            routed: Family::default(),
            errors: Family::default(),
            refusals: Family::default(),
            queue_drops: Counter::default(),
            presence_resyncs: Counter::default(),
            memory_trims: Counter::default(),
            handshake_evictions: Counter::default(),
            cluster_messages: Family::default(),
            cluster_up: Family::default(),
            cluster_rtt: Family::default(),
            cluster_reconnects: Family::default(),
            cluster_reaped: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "connections",
            "Open WebSocket sessions by listener",
            m.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "WebSocket sessions admitted by listener",
            m.connections_total.clone(),
        );
        r.register(
            "messages_routed",
            "Messages routed by kind",
            m.routed.clone(),
        );
        r.register("errors", "Errors by kind", m.errors.clone());
        r.register(
            "handshake_refusals",
            "Handshakes refused, by HTTP status",
            m.refusals.clone(),
        );
        r.register(
            "queue_drops",
            "Frames dropped because a receiver's outbound queue was full",
            m.queue_drops.clone(),
        );
        r.register(
            "presence_resyncs",
            "Clients sent a list of who is connected instead of the presence events they fell behind on",
            m.presence_resyncs.clone(),
        );
        r.register(
            "memory_trims",
            "Times free memory was given back to the system after a burst of clients left",
            m.memory_trims.clone(),
        );
        r.register(
            "handshake_evictions",
            "Connections dropped in their handshakes because max_pending_handshakes were waiting and a new one came",
            m.handshake_evictions.clone(),
        );
        r.register(
            "cluster_messages",
            "Messages between cluster nodes through Redis, by direction and kind",
            m.cluster_messages.clone(),
        );
        r.register(
            "cluster_up",
            "1 while Redis answers and the cluster subscriber is connected, by node",
            m.cluster_up.clone(),
        );
        r.register(
            "cluster_redis_rtt_seconds",
            "Round trip of the last heartbeat to Redis, by node",
            m.cluster_rtt.clone(),
        );
        r.register(
            "cluster_subscriber_connects",
            "Times the cluster subscriber connection was established, by node",
            m.cluster_reconnects.clone(),
        );
        r.register(
            "cluster_nodes_reaped",
            "Dead nodes whose names this node freed, by node",
            m.cluster_reaped.clone(),
        );
        m
    }

    /// The cluster's handles for `node` (their series appear from now on).
    pub fn cluster(&self, node: &str) -> ClusterMetrics {
        let label = NodeLabel {
            node: node.to_owned(),
        };
        ClusterMetrics {
            messages: self.cluster_messages.clone(),
            private: Default::default(),
            up: self.cluster_up.get_or_create_owned(&label),
            rtt: self.cluster_rtt.get_or_create_owned(&label),
            reconnects: self.cluster_reconnects.get_or_create_owned(&label),
            reaped: self.cluster_reaped.get_or_create_owned(&label),
        }
    }

    /// Handles for one listener.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let label = ListenerLabel {
            listener: name.to_owned(),
        };
        ListenerMetrics {
            open: self.connections.get_or_create_owned(&label),
            total: self.connections_total.get_or_create_owned(&label),
        }
    }

    /// The counter for one kind of routed message (clone it once, add often).
    pub fn routed(&self, kind: RouteKind) -> Counter {
        self.routed.get_or_create_owned(&RouteLabel { kind })
    }

    /// Counts one error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&ErrorLabel { kind }).inc();
    }

    /// Counts one refused handshake.
    pub fn refusal(&self, status: u16) {
        self.refusals.get_or_create(&StatusLabel { status }).inc();
        self.error(ErrorKind::handshake);
    }

    /// Counts one presence resync (a `list` instead of missed events).
    pub fn presence_resync(&self) {
        self.presence_resyncs.inc();
    }

    /// Counts one memory trim after a burst.
    pub fn memory_trim(&self) {
        self.memory_trims.inc();
    }

    /// Counts handshakes evicted from a full pending budget.
    pub fn handshake_evictions(&self, n: usize) {
        self.handshake_evictions.inc_by(n as u64);
    }

    /// Counts one frame dropped at a full queue.
    pub fn queue_drop(&self) {
        self.queue_drops.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .unwrap_or_else(|_| unreachable!("writing to a String cannot fail"));
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
