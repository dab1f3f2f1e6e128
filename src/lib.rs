//! nexxus-worker: the back-end workers of a real-time data platform, Kafka-native.
//!
//! # Layout
//! - [`cli`]: the command line of CONTRACT section 1.
//! - [`config`]: layered configuration (defaults < config.json < TP_* < flags), strict parsing.
//! - [`error`]: errors at module edges, each with the class the run loop acts on.
//! - [`shutdown`]: one cancellation token per process, signals, the grace period.
//! - [`workers`]: the roles (`Role`), one file each, and the shared consume [`workers::pipeline`].
//! - [`queue`]: Kafka adapters (consumer/producer builders, topic files, dead-letter envelope).
//! - [`model`]: pure types and decisions about changes (messages, patches, channels, filters).
//! - [`commands`]: `topics apply`, `publish`, `dead-letter replay`.
//! - [`telemetry`]: logs, Prometheus metrics, `/healthz` `/readyz` `/metrics`.
//! - `store`, `registry`, `transport`: the CQL/SQLite store, the Redis registry and the client
//!   transports, arriving with the issues that need them.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod ingress;
pub mod model;
pub mod queue;
pub mod registry;
pub mod shutdown;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod transport;
pub mod workers;
