//! wssgate: a WebSocket gateway that routes messages between named clients.
//!
//! Clients name themselves in the `Origin` header (or `?name=`), and send
//! plain text to the operator or `{"src","dst","msg"}` JSON that the gateway
//! routes privately to the client named `dst` (`docs/PROTOCOL.md`). The modules, in
//! the order a connection meets them (private unless marked *public*):
//!
//! - [`config`] (*public*): the TOML config, its defaults and validation.
//! - `modes`: the four security modes of a listener.
//! - `gateway`: the lifecycle (bind, serve, graceful shutdown) and the accept loops.
//! - `caps`: connection accounting: the connection cap and the cap per address.
//! - `connection`: one connection's handshakes, PROXY to TLS to upgrade, then its session.
//! - `proxy`: real client addresses behind proxies (PROXY protocol, forwarding headers).
//! - `tls`: each TLS listener's rustls config.
//! - `reload`: what is reloaded in place, and when (file change, [`Reload`] requests: SIGHUP).
//! - `handshake`: the HTTP request head and the upgrade or refusal answer.
//! - `admission`: who is admitted at the upgrade: caps, allowed origins, the name.
//! - `identity`: client names from `?name=` or `Origin`, the Qt name rules.
//! - [`token`] (*public*): client tokens (JWT) for `identity = "token"`, and minting them.
//! - `session`: one connection's task: read, route, batch-write, ping, close.
//! - `ratelimit`: frames per session and connections per address (governor).
//! - `close`: why the gateway closes a session: code, reason, drain policy.
//! - `protocol`: what a client frame means (pure; the notices are `wssgate_wire`'s).
//! - `outbox`: a session's bounded outbound queue (no allocation while idle).
//! - `busypoll`: opt-in polling after traffic instead of sleeping (`[runtime] busy_poll`).
//! - `trim`: memory given back to the system after a burst of clients leaves.
//! - `presence`: joins and leaves in a bounded log that sessions read at their pace.
//! - `router`: the origin-keyed routing core: names, rooms, policies (no sockets).
//! - `events`: operator events fanned out to `GET /events`.
//! - `metrics`: Prometheus metrics.
//! - `admin`: the operator HTTP API.
//! - [`operator`] (*public*): the client of that API behind `wssgate admin`.
//! - [`certgen`] (*public*): development CA, server and client certificates (`gen-certs`, `dev_certs`).

// One call needs unsafe: glibc's malloc_trim, in `trim` (measured there).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod admission;
mod busypoll;
mod caps;
pub mod certgen;
mod close;
mod cluster;
pub mod config;
mod connection;
mod events;
mod gateway;
mod handshake;
mod identity;
mod metrics;
mod modes;
pub mod operator;
mod outbox;
mod presence;
#[cfg(test)]
mod proptests;
mod protocol;
mod proxy;
mod ratelimit;
mod reload;
mod router;
mod session;
mod tls;
pub mod token;
mod trim;
mod web;

pub use cluster::ClusterError;
pub use config::Config;
pub use gateway::{Roster, Server, StartError, serve};
pub use identity::{Claim, claim};
pub use reload::Reload;

/// What `benches/routing.rs` measures: the routing core and its parts,
/// re-exported for the micro-benchmarks only, behind the
/// `bench-internals` feature so that ordinary builds keep these modules
/// private (and rustc reports what in them is unused). Not an API.
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod bench_support {
    pub use crate::config::DuplicatePolicy;
    pub use crate::events::Events;
    pub use crate::metrics::Metrics;
    pub use crate::outbox::Outbox;
    pub use crate::protocol::{Request, classify};
    pub use crate::router::{ClientInfo, RouteCache, Router, RouterConfig, SessionHandle};
}
