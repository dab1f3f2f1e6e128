//! Logs, metrics and the per-process HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
//!
//! Every metric has one row in [`names`] (name, kind, labels, help text) and one function here
//! ([`record`]: the pipeline, the queues and the process; [`roles`]: the roles and transports),
//! re-exported at this module's root: `telemetry::consumed(topic)`. Nothing else names a metric
//! (clippy's `disallowed-macros`), so dashboards, README and tests read one list.

pub mod gate;
pub mod health;
pub mod http;
pub mod metrics;
pub mod names;
pub mod record;
pub mod roles;

pub use health::Health;
pub use record::*;
pub use roles::*;

use crate::config::LogLevel;

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
