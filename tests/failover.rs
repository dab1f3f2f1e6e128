//! Joins and failover of a real worker process (`dead-letter replay`, an ordinary pipeline) on
//! fresh topics: readiness stays false until the member owns its partitions, and after a SIGKILL
//! while records flow, a member restarted 2 s later takes the partitions back and loses nothing.
//! The timings (first record, idle gap) are printed for BENCHMARKS, never asserted: the machines
//! that run the tests are shared and noisy.
#![allow(clippy::disallowed_methods)] // a test reads its own settings (TEST_WORKER_LOG) from the environment

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexxus_worker::commands::publish;
use nexxus_worker::config::Config;
use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::queue::kafka;
use nexxus_worker::queue::Record;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;
/// Records per second fed while the worker is killed and restarted.
const RATE: usize = 500;

fn start(prefix: &str, http: u16) -> common::Reaper {
    common::Reaper(
        Command::new(common::BIN)
            .args(["dead-letter", "replay"])
            .env_clear()
            .envs(common::env_for(prefix))
            .env("TP_BATCH_SIZE", "50")
            .env("TP_HTTP_PORT", http.to_string())
            .env("RUST_LOG", std::env::var("TEST_WORKER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start worker"),
    )
}

/// Dead-letter envelopes of `m-<i>` for `range`, keyed so they spread over the partitions.
fn envelopes(out_topic: &str, range: std::ops::Range<usize>) -> Vec<(Option<String>, String)> {
    range
        .map(|i| {
            let payload = format!("m-{i}");
            let rec = Record {
                topic: out_topic,
                partition: 0,
                offset: i as i64,
                key: Some(payload.as_bytes()),
                payload: payload.as_bytes(),
                timestamp_ms: None,
            };
            (Some(payload.clone()), String::from_utf8(Envelope::new(&rec, "test-0", "testing").to_json()).unwrap())
        })
        .collect()
}

/// Every record of `topic` (one partition) with its timestamp in milliseconds.
fn read_timed(cfg: &Config, topic: &str) -> Vec<(Vec<u8>, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("reader-{}", common::unique_prefix("r")))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let (_, end) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    while (out.len() as i64) < end {
        assert!(started.elapsed() < Duration::from_secs(60), "reading {topic} did not reach its end");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push((m.payload().unwrap_or_default().to_vec(), m.timestamp().to_millis().unwrap_or(0)));
        }
    }
    out
}

/// Polls `/readyz` until 200 and returns every body seen before it, with how long it took.
async fn wait_ready(http: u16, since: Instant) -> (Vec<String>, Duration) {
    let mut not_ready = Vec::new();
    loop {
        match common::http_get(http, "/readyz") {
            Some((200, _)) => return (not_ready, since.elapsed()),
            Some((_, body)) => not_ready.push(body),
            None => {}
        }
        assert!(since.elapsed() < Duration::from_secs(90), "never ready: {:?}", not_ready.last());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The member said "not ready" for its group membership (no assignment yet, or assigned and
/// not caught up) before it said ready. Which of the two the first poll sees is a race: the
/// assignment can arrive before the HTTP endpoint first answers (the unit tests of
/// `queue/kafka/context.rs` show no assignment is never ready).
fn assert_waited_for_assignment(not_ready: &[String], which: &str) {
    assert!(
        not_ready.iter().any(|b| b.contains("\"condition\":\"assigned:") || b.contains("\"condition\":\"caught_up:")),
        "{which}: /readyz never reported the member's assignment or catch-up before turning ready: {not_ready:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_join_and_sigkill_failover_lose_nothing() {
    let prefix = common::unique_prefix("failover");
    let cfg = common::config(&prefix);
    common::create_topics(&cfg, &[("dead_letter", PARTITIONS), ("out", 1)]).await;
    let producer = common::producer(&cfg);
    let out_topic = cfg.topic("out");
    let input = cfg.topic("dead_letter");

    // (a) A fresh role on fresh topics and a fresh group: one record waits for it.
    publish::publish(&producer, &input, envelopes(&out_topic, 0..1)).await.unwrap();
    let http = common::free_port();
    let spawned = Instant::now();
    let spawned_ms = unix_ms();
    let mut worker = start(&prefix, http);
    let (not_ready, ready_after) = wait_ready(http, spawned).await;
    assert_waited_for_assignment(&not_ready, "fresh member");
    let mut first = Vec::new();
    common::wait_until(Duration::from_secs(60), "the first record", || {
        first = read_timed(&cfg, &out_topic);
        !first.is_empty()
    })
    .await;
    // When the worker produced it, not when this test happened to look.
    let first_record = first[0].1 - spawned_ms;

    // (b) Records flow at RATE/s; the member is SIGKILLed, and restarted 2 s later.
    let total = RATE * 12;
    let feeder = {
        let producer = producer.clone();
        let (input, out_topic) = (input.clone(), out_topic.clone());
        tokio::spawn(async move {
            let step = RATE / 20;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for start in (1..total).step_by(step) {
                tick.tick().await;
                let end = (start + step).min(total);
                publish::publish(&producer, &input, envelopes(&out_topic, start..end)).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    worker.0.kill().unwrap(); // SIGKILL: no drain, no commit, no leave.
    worker.0.wait().unwrap();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = common::free_port();
    let restarted = Instant::now();
    let mut worker = start(&prefix, http);
    let (not_ready, ready_again) = wait_ready(http, restarted).await;
    assert_waited_for_assignment(&not_ready, "restarted member");
    feeder.await.unwrap();

    // Nothing lost: every record reaches the output, and the restarted member (the only one)
    // serves every partition again.
    let mut out = Vec::new();
    common::wait_until(Duration::from_secs(120), "every record replayed", || {
        out = read_timed(&cfg, &out_topic);
        out.iter().map(|(p, _)| p.clone()).collect::<HashSet<_>>().len() == total
    })
    .await;
    for i in 0..total {
        assert!(out.iter().any(|(p, _)| p == format!("m-{i}").as_bytes()), "m-{i} lost");
    }
    let pid = worker.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(wait_exit(&mut worker.0).code(), Some(0));
    let group = cfg.topic("dead_letter-replay");
    let committed = kafka::committed_offsets(&cfg, &group, &input, PARTITIONS).unwrap();
    assert!(committed.iter().all(|&c| c > 0), "a partition was never resumed: committed {committed:?}");
    assert_eq!(committed.iter().sum::<i64>() as usize, total, "every consumed record committed");

    // The longest pause between two outputs is the time the partitions sat idle.
    let mut stamps: Vec<i64> = out.iter().map(|(_, t)| *t).collect();
    stamps.sort_unstable();
    let idle = stamps.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let duplicates = out.len() - total;
    eprintln!(
        "FAILOVER fresh: ready {ready_after:?}, first record produced {first_record} ms after the spawn; after SIGKILL + 2 s restart: \
         ready {ready_again:?} after restart ({:?} after the kill), longest output gap {idle} ms, \
         {duplicates} duplicates",
        restarted.duration_since(killed) + ready_again
    );
}

fn unix_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(now.as_millis()).unwrap()
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no exit within the grace period");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// More members than partitions is healthy: the member that owns nothing is ready too, once
/// the group told it so.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_owning_no_partition_becomes_ready() {
    let prefix = common::unique_prefix("idle-member");
    let cfg = common::config(&prefix);
    common::create_topics(&cfg, &[("dead_letter", 1), ("out", 1)]).await;
    let (first_http, second_http) = (common::free_port(), common::free_port());
    let since = Instant::now();
    let _first = start(&prefix, first_http);
    let (not_ready, _) = wait_ready(first_http, since).await;
    assert_waited_for_assignment(&not_ready, "first member");
    let since = Instant::now();
    let _second = start(&prefix, second_http);
    let (not_ready, _) = wait_ready(second_http, since).await;
    assert_waited_for_assignment(&not_ready, "second member");
    assert_eq!(common::http_get(first_http, "/readyz").map(|r| r.0), Some(200), "the first member stays ready");
}
