//! A real worker process (`dead-letter replay`, an ordinary pipeline: consume, produce, commit)
//! killed with SIGKILL mid-stream and restarted resumes from its last commit: nothing is lost and
//! at most the two batches in flight (one being committed in the background while the next is
//! processed, see `pipeline`) are processed twice. A SIGTERM then stops it cleanly with exit 0.
#![allow(clippy::disallowed_methods)] // a test reads its own settings (TEST_WORKER_LOG) from the environment

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexxus_worker::commands::publish;
use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::queue::kafka;
use nexxus_worker::queue::Record;

const N: usize = 20_000;
const BATCH: usize = 50;

fn start(prefix: &str) -> Child {
    Command::new(common::BIN)
        .args(["dead-letter", "replay"])
        .env_clear()
        .envs(common::env_for(prefix))
        .env("TP_BATCH_SIZE", BATCH.to_string())
        .env("TP_HTTP_PORT", "0")
        .env("RUST_LOG", std::env::var("TEST_WORKER_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start worker")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_then_restart_loses_nothing_and_repeats_at_most_the_two_batches_in_flight() {
    let prefix = common::unique_prefix("kill");
    let cfg = common::config(&prefix);
    common::create_topics(&cfg, &[("dead_letter", 3), ("out", 1)]).await;
    let producer = common::producer(&cfg);
    let out_topic = cfg.topic("out");
    let lines = (0..N)
        .map(|i| {
            let payload = format!("m-{i}");
            let rec = Record {
                topic: &out_topic,
                partition: 0,
                offset: i as i64,
                key: Some(payload.as_bytes()),
                payload: payload.as_bytes(),
                timestamp_ms: None,
            };
            let env = Envelope::new(&rec, "test-0", "testing");
            (Some(payload.clone()), String::from_utf8(env.to_json()).unwrap())
        })
        .collect();
    publish::publish(&producer, &cfg.topic("dead_letter"), lines).await.unwrap();

    let mut worker = common::Reaper(start(&prefix));
    // Kill it once it has made some progress but (very likely) not finished.
    let started = Instant::now();
    loop {
        let done = common::read_all(&cfg, &out_topic, 1).len();
        if done >= BATCH * 20 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "worker made no progress");
    }
    worker.0.kill().unwrap(); // SIGKILL: no drain, no final commit.
    worker.0.wait().unwrap();
    let before_restart = common::read_all(&cfg, &out_topic, 1).len();
    assert!(before_restart < N, "the worker finished before it could be killed; raise N");

    let mut worker = common::Reaper(start(&prefix));
    let started = Instant::now();
    let out = loop {
        let out = common::read_all(&cfg, &out_topic, 1);
        let distinct: std::collections::HashSet<&Vec<u8>> = out.iter().map(|(_, p)| p).collect();
        if distinct.len() == N {
            break out;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "only {} of {N} replayed after restart", distinct.len());
    };

    let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
    for (_, payload) in &out {
        *counts.entry(payload.clone()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    assert!(counts.values().all(|&c| c <= 2), "a message was processed more than twice");
    // A batch holds at most BATCH records, and at most two are uncommitted at any time: the one
    // finishing in the background and the one being processed.
    assert!(
        duplicates <= 2 * BATCH,
        "{duplicates} duplicates (more than two batches of {BATCH}); killed after {before_restart} outputs"
    );
    for i in 0..N {
        assert!(counts.contains_key(format!("m-{i}").as_bytes()), "m-{i} lost");
    }
    // Original keys are restored verbatim.
    assert!(out.iter().all(|(k, p)| k.as_deref() == Some(p.as_slice())));

    // SIGTERM: drains and exits 0 within the grace period, leaving the end offsets committed.
    let pid = worker.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = worker.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no exit within the grace period");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    let group = cfg.topic("dead_letter-replay");
    let committed: i64 = kafka::committed_offsets(&cfg, &group, &cfg.topic("dead_letter"), 3).unwrap().iter().sum();
    assert_eq!(committed as usize, N, "every consumed record committed");
}
