//! The Prometheus recorder. One per process (the `metrics` facade is global); histograms get
//! real buckets because the exporter would otherwise render summaries, which cannot be
//! aggregated across pods.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets from 100 µs to 10 s: the pipeline's targets sit around milliseconds.
const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the recorder on first call and returns its handle; later calls return the same one.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder =
                PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS).unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (a test harness); the handle
            // still renders what this recorder sees, so keep going.
            let _ = metrics::set_global_recorder(recorder);
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// Histograms need periodic upkeep when the exporter's own HTTP listener is not used.
fn spawn_upkeep(handle: PrometheusHandle) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
}
