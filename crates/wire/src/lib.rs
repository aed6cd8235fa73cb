//! wssgate-wire: what the gateway, its client and its load generator agree
//! on, with no I/O. The contract these types implement is
//! `docs/PROTOCOL.md` in the repository.
//!
//! - [`name`]: client names and their rules, the Qt Latin-1 substitution.
//! - [`room`]: room names and their rules.
//! - [`frame`]: WebSocket frame kinds (RFC 6455 opcodes).
//! - [`notice`]: what the gateway itself sends a client (`src` `@gateway`).
//! - [`close`]: the close codes the gateway uses, and what each means.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod close;
pub mod frame;
pub mod name;
pub mod notice;
pub mod room;

pub use close::CloseCode;
pub use name::{ClientName, GATEWAY_NAME, MAX_NAME_LEN, NameError};
pub use notice::Notice;
pub use room::{MAX_ROOM_LEN, check_room};

/// The largest message a gateway accepts by default (`[limits]
/// max_message_size`); a load generator sizes its largest feed by it.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
