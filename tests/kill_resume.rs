//! A real worker process (`dead-letter replay`, an ordinary pipeline: consume, produce, commit)
//! killed with SIGKILL mid-stream and restarted resumes from its last commit: nothing is lost,
//! nothing below the commit (made by librdkafka's timer from offsets stored once their outputs
//! were acknowledged) is processed again, and only records past it are. A SIGTERM then stops it
//! cleanly with exit 0, its final offsets committed.
#![allow(clippy::disallowed_methods)] // a test reads its own settings (TEST_WORKER_LOG) from the environment

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexxus_worker::commands::publish;
use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::queue::kafka;
use nexxus_worker::queue::Record;

// Enough that the worker is still busy when its first timed commit (after about a second) lands.
const N: usize = 60_000;
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
async fn sigkill_then_restart_loses_nothing_and_repeats_only_what_follows_the_timed_commit() {
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

    // Where each input lies: the commit is per partition of `dead_letter`.
    let dead_letter = cfg.topic("dead_letter");
    let group = cfg.topic("dead_letter-replay");
    let position: HashMap<Vec<u8>, (i32, i64)> = common::read_records(&cfg, &dead_letter, 3)
        .into_iter()
        .map(|r| (r.key.expect("keyed input"), (r.partition, r.offset)))
        .collect();
    assert_eq!(position.len(), N);

    let mut worker = common::Reaper(start(&prefix));
    // Kill it once the commit timer has committed something (without any shutdown) and it has
    // not finished.
    let started = Instant::now();
    loop {
        let committed: i64 =
            kafka::committed_offsets(&cfg, &group, &dead_letter, 3).unwrap().iter().map(|o| (*o).max(0)).sum();
        if committed > 0 && common::read_all(&cfg, &out_topic, 1).len() >= BATCH * 20 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "worker made no progress or committed nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.0.kill().unwrap(); // SIGKILL: no drain, no final commit.
    worker.0.wait().unwrap();
    let committed_at_kill = kafka::committed_offsets(&cfg, &group, &dead_letter, 3).unwrap();
    let before: std::collections::HashSet<Vec<u8>> =
        common::read_all(&cfg, &out_topic, 1).into_iter().map(|(_, p)| p).collect();
    let before_restart = before.len();
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
    assert!(counts.values().all(|&c| c <= 2), "a message was processed more than twice");
    for i in 0..N {
        assert!(counts.contains_key(format!("m-{i}").as_bytes()), "m-{i} lost");
    }
    // The commit never runs ahead of the outputs (offsets are stored after acknowledgement), and
    // the restart resumes exactly at it: below it, each record was output once, before the kill;
    // what is repeated lies past it.
    let mut repeated = 0;
    for (payload, &(partition, offset)) in &position {
        let below_commit = offset < committed_at_kill[partition as usize];
        if below_commit {
            assert!(before.contains(payload), "offset {offset} of partition {partition} committed but never output");
            assert_eq!(
                counts[payload], 1,
                "offset {offset} of partition {partition} was committed, yet processed again"
            );
        }
        if counts[payload] == 2 {
            assert!(!below_commit && before.contains(payload), "a repeat that did not follow the commit");
            repeated += 1;
        }
    }
    eprintln!("killed after {before_restart} outputs, commit at {committed_at_kill:?}, {repeated} repeated");
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
    let committed: i64 = kafka::committed_offsets(&cfg, &group, &dead_letter, 3).unwrap().iter().sum();
    assert_eq!(committed as usize, N, "every consumed record committed");
}
