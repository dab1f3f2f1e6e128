//! nexxus-worker: the back-end workers of a real-time data platform, Kafka-native.
//!
//! # Layout (each layer imports only from its own floor and the floors listed after it;
//! `tests/layers.rs` checks it)
//! - [`cli`], [`supervisor`]: the command line of CONTRACT section 1, and `supervise`.
//! - [`process`]: what one process runs for `-t <type>`: a role picked by `match`, the ingress
//!   beside it, or every role (`-t all`).
//! - [`workers`]: the roles, one file each, each a [`runtime::Worker`] and a
//!   [`pipeline::Handler`].
//! - [`ingress`]: the HTTP ingress of `-t all` (and `TP_INGRESS`).
//! - [`commands`]: `topics apply`, `app put`, `publish`, `dead-letter replay`, `token`.
//! - [`transport`]: WebSocket, APNs and FCM delivery, device tokens.
//! - [`runtime`], [`pipeline`], [`apps`]: the role enum, a worker's context and shape; the
//!   consume loop every role and `dead-letter replay` run; the applications every worker sees.
//! - [`queue`], [`store`], [`registry`]: Kafka and the in-process queue, the CQL and SQLite
//!   stores, the Redis (or in-memory) registry.
//! - [`telemetry`], [`error`], [`shutdown`]: logs, metrics, health; errors at module edges; the
//!   process's cancellation token and grace period.
//! - [`model`], [`config`]: pure types and decisions about changes; layered, strict configuration.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)] // a panic is a crashed worker; tests may (clippy.toml)

pub mod apps;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod ingress;
pub mod model;
pub mod pipeline;
pub mod process;
pub mod queue;
pub mod registry;
pub mod runtime;
pub mod shutdown;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod transport;
pub mod workers;
