//! wssgate: a WebSocket gateway that routes messages between named clients.
//!
//! Clients name themselves in the `Origin` header (or `?name=`), and send
//! plain text to the operator or `{"src","dst","msg"}` JSON that the gateway
//! routes privately to the client named `dst` (PROTOCOL.md). The modules, in
//! the order a connection meets them:
//!
//! - [`config`]: the TOML config, its defaults and validation.
//! - [`modes`]: the four security modes of a listener.
//! - [`gateway`]: listeners, the upgrade with identity and limits, lifecycle.
//! - [`proxy`]: real client addresses behind proxies (PROXY protocol, forwarding headers).
//! - [`tls`]: rustls server and client configs, PEM loading, reload;
//!   `tls::danger` holds the verifiers that skip chain validation.
//! - [`handshake`]: the HTTP request head and the upgrade or refusal answer.
//! - [`identity`]: client names from `?name=` or `Origin`, the Qt name rules.
//! - [`session`]: one connection's task: read, route, batch-write, ping, close.
//! - [`protocol`]: what a client frame means; the gateway's notices (pure).
//! - [`outbox`]: a session's bounded outbound queue (no allocation while idle).
//! - [`busypoll`]: opt-in polling after traffic instead of sleeping (`[runtime] busy_poll`).
//! - [`router`]: the origin-keyed routing core: names, rooms, policies (no sockets).
//! - [`events`]: operator events fanned out to `GET /events`.
//! - [`metrics`]: Prometheus metrics.
//! - [`admin`]: the operator HTTP API.
//! - [`operator`]: the client of that API behind `wssgate admin`.
//! - [`certgen`]: development CA, server and client certificates (`gen-certs`).
//! - [`client`]: connect to ws/wss under a certificate policy, explain failures.
//! - [`chat`]: the `wssgate-client` session: input lines to frames, received
//!   frames to lines, scripted sends, reconnects (on top of [`client`]).
//! - [`bench`](mod@bench): the load generator behind `wssgate-bench` (pairs, fanout,
//!   idle, connect) for any server that speaks PROTOCOL.md.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod bench;
pub mod busypoll;
pub mod certgen;
pub mod chat;
pub mod client;
pub mod config;
pub mod events;
pub mod gateway;
pub mod handshake;
pub mod identity;
pub mod metrics;
pub mod modes;
pub mod operator;
pub mod outbox;
pub mod protocol;
pub mod proxy;
pub mod router;
pub mod session;
pub mod tls;

pub use config::Config;
pub use gateway::{Server, StartError, serve};
