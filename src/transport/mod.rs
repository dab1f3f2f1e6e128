//! Delivery to devices: the WebSocket server of the sockets transport ([`ws`]), its TLS
//! ([`tls`]), handshake tokens ([`jwt`]) and what a device may read ([`auth`]); the push providers APNs and FCM ([`push`]); the
//! filter every transport drops upstream replays with ([`replay`]); a channel's objects read for a
//! subscription's snapshot or catch-up ([`snapshot`]). The roles that drive them
//! live in `src/workers/`.

pub mod auth;
pub mod jwt;
pub mod push;
pub mod replay;
pub mod snapshot;
pub mod tls;
pub mod ws;
