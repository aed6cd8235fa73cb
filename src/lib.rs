//! wssgate: a WebSocket gateway that routes messages between named clients.
//!
//! Clients name themselves in the `Origin` header (or `?name=`), and send
//! plain text to the operator or `{"src","dst","msg"}` JSON that the gateway
//! routes privately to the client named `dst` (`docs/PROTOCOL.md`). The modules, in
//! the order a connection meets them:
//!
//! - [`config`]: the TOML config, its defaults and validation.
//! - [`modes`]: the four security modes of a listener.
//! - [`gateway`]: the lifecycle (bind, serve, graceful shutdown) and the accept loops.
//! - `caps`: connection accounting: the connection cap and the cap per address.
//! - `connection`: one connection's handshakes, PROXY to TLS to upgrade, then its session.
//! - [`proxy`]: real client addresses behind proxies (PROXY protocol, forwarding headers).
//! - [`tls`]: each TLS listener's rustls config, and its reload (file change, SIGHUP).
//! - [`handshake`]: the HTTP request head and the upgrade or refusal answer.
//! - `admission`: who is admitted at the upgrade: caps, allowed origins, the name.
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
//! - [`certgen`]: development CA, server and client certificates (`gen-certs`, `dev_certs`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
mod admission;
pub mod busypoll;
mod caps;
pub mod certgen;
pub mod close;
pub mod config;
mod connection;
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
