//! wssgate-client: the client library behind the `wssgate-client` command,
//! usable by any Rust program that talks to a wssgate gateway.
//!
//! - [`tls`]: how a client verifies the server (system roots, a CA file,
//!   trust on first use, a pin, or DANGEROUSLY nothing) and what a failed
//!   handshake means, naming the flag that would change it.
//! - [`mod@connect`]: connect to a `ws://` or `wss://` URL under such a policy,
//!   with the name in `Origin` as the Qt example does.
//! - [`chat`]: the interactive session: input lines to frames, received
//!   frames to lines, scripted sends, reconnects with backoff.
//!
//! The wire contract is `docs/PROTOCOL.md` in the repository; the types it
//! shares with the gateway are in `wssgate-wire`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chat;
pub mod connect;
pub mod tls;

pub use connect::{ClientStream, ConnectError, ConnectInfo, ConnectOptions, Io, connect};
pub use tls::{ClientTls, ServerTrust, client_config};
pub use wssgate_pki::danger::Expect;
