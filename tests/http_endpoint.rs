//! The per-process HTTP endpoint of a running worker: liveness, readiness after assignment,
//! Prometheus metrics with per-topic counters and consumer lag.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::queue::Record;

#[tokio::test(flavor = "multi_thread")]
async fn healthz_readyz_and_metrics() {
    let prefix = common::unique_prefix("http");
    let cfg = common::config(&prefix);
    let port = common::free_port();
    let mut worker = common::Reaper(
        Command::new(common::BIN)
            .args(["dead-letter", "replay"])
            .env_clear()
            .envs(common::env_for(&prefix))
            .env("TP_HTTP_PORT", port.to_string())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // No topics yet: alive but not ready, and /readyz says why.
    let started = Instant::now();
    let (code, body) = loop {
        if let Some((200, _)) = common::http_get(port, "/healthz") {
            if let Some(r) = common::http_get(port, "/readyz") {
                if r.1.contains("missing topics") {
                    break r;
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "endpoint never came up");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 503, "{body}");

    common::create_topics(&cfg, &[("dead_letter", 1), ("out", 1)]).await;
    let started = Instant::now();
    while common::http_get(port, "/readyz").map(|r| r.0) != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready: {:?}", common::http_get(port, "/readyz"));
        std::thread::sleep(Duration::from_millis(200));
    }

    let producer = common::producer(&cfg);
    let out_topic = cfg.topic("out");
    for i in 0..5 {
        let payload = format!("m-{i}");
        let rec = Record {
            topic: &out_topic,
            partition: 0,
            offset: i,
            key: None,
            payload: payload.as_bytes(),
            timestamp_ms: None,
        };
        producer.send(&cfg.topic("dead_letter"), None, &Envelope::new(&rec, "t", "r").to_json(), &[]).await.unwrap();
    }
    let dl = cfg.topic("dead_letter");
    let started = Instant::now();
    loop {
        let (_, metrics) = common::http_get(port, "/metrics").unwrap();
        let consumed = metrics.contains(&format!("nexxus_messages_consumed_total{{topic=\"{dl}\"}} 5"));
        let produced = metrics.contains(&format!("nexxus_messages_produced_total{{topic=\"{out_topic}\"}} 5"));
        let lag = metrics.contains(&format!("nexxus_consumer_lag{{topic=\"{dl}\",partition=\"0\"}} 0"));
        let histogram = metrics.contains("nexxus_processing_seconds_bucket");
        if consumed && produced && lag && histogram {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "metrics incomplete (consumed {consumed}, produced {produced}, lag {lag}, histogram {histogram}):\n{metrics}");
        std::thread::sleep(Duration::from_millis(500));
    }

    assert!(Command::new("kill").args(["-TERM", &worker.0.id().to_string()]).status().unwrap().success());
    assert_eq!(worker.0.wait().unwrap().code(), Some(0));
}
