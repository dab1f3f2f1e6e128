//! Delivery to devices: the WebSocket server of the sockets transport ([`ws`]), its TLS
//! ([`tls`]) and handshake tokens ([`jwt`]); the push providers APNs and FCM ([`push`]). The
//! roles that drive them live in `src/workers/`.

pub mod jwt;
pub mod push;
pub mod tls;
pub mod ws;
