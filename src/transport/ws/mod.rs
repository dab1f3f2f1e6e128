//! The WebSocket side of the sockets transport (CONTRACT section 7).
//!
//! - [`protocol`]: frames and close codes.
//! - [`hub`]: connections by application and device; fan-out of one serialized frame.
//! - [`conn`]: one connection's handshake, authentication and loop.
//! - [`server`]: the accept loop (plain TCP or TLS) and the connection limit.

pub mod conn;
pub mod hub;
pub mod protocol;
pub mod server;
