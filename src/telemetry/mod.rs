//! Logs, metrics and the per-process HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
//!
//! Metric names live in [`names`] so dashboards and tests read one list. Events that both log
//! and count are small functions here, so a log line and its counter cannot drift apart.

pub mod gate;
pub mod health;
pub mod http;
pub mod metrics;

pub use health::Health;

use crate::config::LogLevel;

/// Metric names (Prometheus): one place, documented in README.
pub mod names {
    pub const CONSUMED: &str = "nexxus_messages_consumed_total";
    pub const PRODUCED: &str = "nexxus_messages_produced_total";
    pub const FAILED: &str = "nexxus_messages_failed_total";
    pub const DEAD_LETTERED: &str = "nexxus_dead_letter_total";
    pub const PROCESSING_SECONDS: &str = "nexxus_processing_seconds";
    pub const BATCH_SIZE: &str = "nexxus_batch_messages";
    /// Seconds per phase of a batch: process, end_batch, settle, commit_transaction, persist, commit.
    pub const BATCH_PHASE_SECONDS: &str = "nexxus_batch_phase_seconds";
    pub const CONSUMER_LAG: &str = "nexxus_consumer_lag";
    pub const REBALANCES: &str = "nexxus_rebalances_total";
    pub const RETRIES: &str = "nexxus_retries_total";
    pub const COMMIT_FAILURES: &str = "nexxus_commit_failures_total";
    /// `-t all`: records dropped from an in-process topic nobody consumes (`dead_letter`).
    pub const MEMORY_QUEUE_DROPPED: &str = "nexxus_memory_queue_dropped_total";
}

/// Installs the global `tracing` subscriber. `RUST_LOG` may refine the level for debugging
/// (e.g. `RUST_LOG=nexxus_worker=trace,rdkafka=debug`).
pub fn init_logging(level: LogLevel) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level.as_filter()));
    // Colours only on a terminal: `kubectl logs`, journald and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(ansi)
        .try_init();
}

/// A message consumed from `topic`.
pub fn consumed(topic: &str) {
    ::metrics::counter!(names::CONSUMED, "topic" => topic.to_string()).increment(1);
}

/// A message produced to `topic` and acknowledged by the broker.
pub fn produced(topic: &str) {
    ::metrics::counter!(names::PRODUCED, "topic" => topic.to_string()).increment(1);
}

/// A message that failed processing; `class` is `poison`, `transient` or `fatal`.
pub fn failed(topic: &str, class: &'static str) {
    ::metrics::counter!(names::FAILED, "topic" => topic.to_string(), "class" => class).increment(1);
}
