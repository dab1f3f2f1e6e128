//! The Prometheus recorder. One per process (the `metrics` facade is global); histograms get
//! real buckets because the exporter would otherwise render summaries, which cannot be
//! aggregated across pods.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{KeyName, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::names::{self, Kind};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets from 100 µs to 10 s: the pipeline's targets sit around milliseconds.
const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the recorder on first call and returns its handle; later calls return the same one.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (a test harness); the handle
            // still renders what this recorder sees, so keep going.
            let _ = metrics::set_global_recorder(recorder);
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// The recorder, with the bucket list and every metric's help text.
fn recorder() -> PrometheusRecorder {
    let builder = PrometheusBuilder::new().set_buckets(SECONDS_BUCKETS).unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    describe(&recorder);
    recorder
}

/// Gives every metric of [`names::ALL`] its help text (`# HELP` in `/metrics`). Told to the
/// recorder itself, not through the global facade, so the text is there even when a test harness
/// installed another global recorder first.
fn describe(recorder: &PrometheusRecorder) {
    for m in names::ALL {
        let (name, help) = (KeyName::from_const_str(m.name), SharedString::const_str(m.help));
        match m.kind {
            Kind::Counter => recorder.describe_counter(name, None, help),
            Kind::Gauge => recorder.describe_gauge(name, None, help),
            Kind::Histogram => recorder.describe_histogram(name, None, help),
        }
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::telemetry as t;

    /// Records every metric once through its function, as the roles do.
    fn record_each() {
        t::consumed("a");
        t::produced("a");
        t::failed("a", "poison");
        t::dead_lettered("a");
        t::processing_time("a", Duration::from_millis(1));
        t::retried("a");
        t::persist_retried();
        t::commit_failed();
        t::batch_size(3);
        t::batch_phase("process", Duration::from_millis(1));
        t::consumer_lag("a", 0, 7);
        t::kafka_requests("write-0", "Produce", 12);
        t::rebalanced();
        t::partition_stalled("no_position");
        t::memory_queue_dropped("dead_letter");
        t::supervisor_event("write", "started");
        t::ingress_refused("busy");
        t::registry_corrupt("replaced");
        t::registry_limit_exceeded();
        t::registry_round_trips(2);
        t::change_routed();
        t::acl_channels_withheld(1);
        t::filter_evaluated();
        t::devices_per_change(4);
        t::track_command();
        t::write_replay_skipped();
        t::cascade_deletes(2);
        t::aggregation_forwarded(5);
        t::socket_opened();
        t::event_stream_opened();
        t::sockets_frames_out(1);
        t::sockets_bytes_out(100);
        t::sockets_queue_drops(0);
        t::sockets_snapshot(3);
        t::sockets_catchup(2);
        t::sockets_absent_recipients(0);
        t::sockets_replay_suppressed();
        t::sockets_channel_reads(1);
        t::transport_channel_message();
        t::sockets_delivery_latency(Duration::from_millis(3));
        t::sockets_refused();
        t::sockets_handshake_timeout();
        t::sockets_auth_failure("no_token");
        t::sockets_write_timeout();
        t::sockets_dead_peer();
        t::sockets_policy_close();
        t::push_sent("apns", "delivered", 1);
        t::push_retried("apns");
        t::push_invalid_token("apns");
        t::push_replay_suppressed("apns");
    }

    #[test]
    fn every_metric_of_the_table_is_recorded_under_its_name_labels_and_help() {
        let recorder = recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, record_each);
        let text = handle.render();
        for m in names::ALL {
            assert!(text.contains(&format!("# HELP {} {}\n", m.name, m.help)), "no help for {}:\n{text}", m.name);
            let series = match m.kind {
                Kind::Histogram => format!("{}_bucket", m.name),
                Kind::Counter | Kind::Gauge => m.name.to_string(),
            };
            let line = text
                .lines()
                .find(|l| l.strip_prefix(series.as_str()).is_some_and(|rest| rest.starts_with(['{', ' '])))
                .unwrap_or_else(|| panic!("{} not recorded:\n{text}", m.name));
            for label in m.labels {
                assert!(line.contains(&format!("{label}=\"")), "{} lacks label {label}: {line}", m.name);
            }
        }
    }
}
