//! The WebSocket side of the sockets transport (CONTRACT section 7).
//!
//! - [`protocol`]: frames and close codes.
//! - [`hub`]: connections by application and device; fan-out of one serialized frame.
//! - [`channels`]: the transport's view of the channels it is sent messages for by channel,
//!   and their resolution to its devices.
//! - [`handshake`]: a connection's opening: upgrade, token, within a deadline.
//! - [`conn`]: one connection's loop, every write bounded; subscribe and unsubscribe.
//! - [`Shared`]: what every connection of a transport shares.
//! - [`limit`]: the per-connection frame budget (`LIMIT_EXCEEDED`, then close 1008).
//! - [`gate`]: snapshots and catch-ups read at once, in all and per application.
//! - `sync`, `pages`: a subscribe's snapshot or catch-up, in bounded frames (`docs/protocol.md`).
//! - [`mailbox`]: a connection's bounded frame queue and close signal, one small allocation.
//! - [`server`]: the accept loop (plain TCP or TLS), the handshake bound and the connection
//!   limit.

pub mod channels;
pub mod conn;
pub mod gate;
pub mod handshake;
pub mod hub;
pub mod limit;
pub mod mailbox;
mod pages;
pub mod protocol;
pub mod server;
mod shared;
mod sync;
mod watch;

pub use shared::Shared;
