//! The client side of the sockets transport: WebSockets (CONTRACT section 7) and server-sent
//! events on the same port (`docs/sse.md`).
//!
//! - [`protocol`]: frames and close codes.
//! - [`hub`]: connections by application and device; fan-out of one serialized frame.
//! - [`channels`]: the transport's view of the channels it is sent messages for by channel,
//!   and their resolution to its devices.
//! - [`head`]: the request head, read first: `GET /sse` or a WebSocket upgrade.
//! - [`handshake`]: a WebSocket's opening: upgrade, token, within a deadline.
//! - `sse`: an event stream's request, answer and loop, on the same hub and sessions.
//! - `wire`: where a connection's frames go (a WebSocket or an event stream).
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
pub mod head;
pub mod hub;
pub mod limit;
pub mod mailbox;
mod pages;
pub mod protocol;
pub mod server;
mod shared;
mod sse;
mod sync;
mod watch;
mod wire;

pub use shared::Shared;
