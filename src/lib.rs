//! nexxus-worker: the back-end workers of a real-time data platform, Kafka-native.
//!
//! # Layout (each layer imports only from the layers listed after it)
//! - [`cli`], [`supervisor`]: the command line of CONTRACT section 1, and `supervise`.
//! - [`workers`]: the roles (`Role`), one file each, and `-t all`.
//! - [`ingress`]: the HTTP ingress of `-t all` (and `TP_INGRESS`).
//! - [`commands`]: `topics apply`, `app put`, `publish`, `dead-letter replay`, `token`.
//! - [`pipeline`]: the consume loop every role and `dead-letter replay` run.
//! - [`apps`]: the applications every worker sees, loaded from and following `system`.
//! - [`transport`]: WebSocket, APNs and FCM delivery, device tokens.
//! - [`queue`], [`store`], [`registry`]: Kafka and the in-process queue, the CQL and SQLite
//!   stores, the Redis (or in-memory) registry.
//! - [`telemetry`], [`error`], [`shutdown`]: logs, metrics, health; errors at module edges; the
//!   process's cancellation token and grace period.
//! - [`model`], [`config`]: pure types and decisions about changes; layered, strict configuration.
#![forbid(unsafe_code)]

pub mod apps;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod ingress;
pub mod model;
pub mod pipeline;
pub mod queue;
pub mod registry;
pub mod shutdown;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod transport;
pub mod workers;
