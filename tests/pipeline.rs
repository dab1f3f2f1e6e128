//! The shared consume loop against the real broker: poison records go to `dead_letter` with the
//! reason and the partition moves on; transient failures are retried on the same record without
//! losing order; offsets are committed exactly up to what was processed.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nexxus_worker::error::ProcessError;
use nexxus_worker::pipeline::{Handler, Pipeline};
use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::queue::kafka;
use nexxus_worker::queue::outbox::Outbox;
use nexxus_worker::queue::outbox::Sink;
use nexxus_worker::queue::Record;
use nexxus_worker::telemetry::Health;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    handled: Vec<String>,
    attempts: HashMap<String, u32>,
}

struct TestHandler(Arc<Mutex<Seen>>);

impl Handler for TestHandler {
    type Input = ();

    async fn handle(&mut self, record: &Record<'_>, _: (), _out: &mut Outbox) -> Result<(), ProcessError> {
        let text = String::from_utf8_lossy(record.payload).to_string();
        let mut seen = self.0.lock().unwrap();
        let n = {
            let a = seen.attempts.entry(text.clone()).or_default();
            *a += 1;
            *a
        };
        if text.starts_with("poison") {
            return Err(ProcessError::poison(format!("cannot use {text}")));
        }
        if text.starts_with("flaky") && n < 3 {
            return Err(ProcessError::Transient("store unavailable".into()));
        }
        seen.handled.push(text);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_is_dead_lettered_transient_is_retried_offsets_committed() {
    let prefix = common::unique_prefix("pipeline");
    let cfg = Arc::new(common::config(&prefix));
    common::create_topics(&cfg, &[("in", 1), ("dead_letter", 1)]).await;
    let producer = common::producer(&cfg);
    let input: Vec<String> = (0..30)
        .map(|i| match i {
            7 | 21 => format!("poison-{i}"),
            12 => format!("flaky-{i}"),
            _ => format!("ok-{i}"),
        })
        .collect();
    for m in &input {
        producer.send(&cfg.topic("in"), Some(b"k"), m.as_bytes(), &[]).await.unwrap();
    }

    let health = Arc::new(Health::new());
    let shutdown = CancellationToken::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pipeline = Pipeline::connect(&cfg, &health, "test-0", "in", &["in"], Sink::Kafka(producer.clone()), &shutdown)
        .await
        .unwrap();
    let mut handler = TestHandler(seen.clone());
    let run = tokio::spawn({
        let s = shutdown.clone();
        async move { pipeline.run(&mut handler, s).await }
    });
    common::wait_until(Duration::from_secs(60), "all records handled", || seen.lock().unwrap().handled.len() == 28)
        .await;
    common::wait_until(Duration::from_secs(10), "readiness", || health.is_ready()).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let seen = seen.lock().unwrap();
    let expected: Vec<String> = input.iter().filter(|m| !m.starts_with("poison")).cloned().collect();
    assert_eq!(seen.handled, expected, "order kept, the flaky record retried in place");
    assert_eq!(seen.attempts["flaky-12"], 3);
    assert_eq!(seen.attempts["poison-7"], 1, "poison is never retried");

    let dead = common::read_all(&cfg, &cfg.topic("dead_letter"), 1);
    let envelopes: Vec<Envelope> = dead.iter().map(|(_, p)| serde_json::from_slice(p).unwrap()).collect();
    assert_eq!(envelopes.len(), 2);
    assert_eq!(envelopes[0].source.offset, 7);
    assert_eq!(envelopes[0].source.topic, cfg.topic("in"));
    assert_eq!(envelopes[0].reason, "cannot use poison-7");
    assert_eq!(envelopes[0].worker, "test-0");
    assert_eq!(envelopes[0].original().unwrap(), (Some(b"k".to_vec()), b"poison-7".to_vec()));
    assert_eq!(envelopes[1].source.offset, 21);

    let committed = kafka::committed_offsets(&cfg, &cfg.topic("in"), &cfg.topic("in"), 1).unwrap();
    assert_eq!(committed, vec![30], "everything processed is committed, nothing more");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_topics_keep_readiness_false_until_created() {
    let prefix = common::unique_prefix("waiting");
    let cfg = Arc::new(common::config(&prefix));
    common::create_topics(&cfg, &[("dead_letter", 1)]).await;
    let health = Arc::new(Health::new());
    let shutdown = CancellationToken::new();
    let producer = common::producer(&cfg);
    let connect = tokio::spawn({
        let (cfg, health, shutdown) = (cfg.clone(), health.clone(), shutdown.clone());
        async move {
            Pipeline::connect(&cfg, &health, "test-0", "late", &["late"], Sink::Kafka(producer), &shutdown)
                .await
                .map(|_| ())
        }
    });
    common::wait_until(Duration::from_secs(20), "a failing kafka condition", || {
        health
            .failing()
            .iter()
            .any(|(c, r)| c.starts_with("kafka:") && r.contains("missing topics") && r.contains("topics apply"))
    })
    .await;
    assert!(!health.is_ready());
    common::create_topics(&cfg, &[("late", 1)]).await;
    tokio::time::timeout(Duration::from_secs(30), connect).await.expect("connect after creation").unwrap().unwrap();
    assert!(!health.failing().iter().any(|(c, _)| c.starts_with("kafka:")), "{:?}", health.failing());
}

/// A handler whose first `end_batch` fails, as an aggregator's would when its outputs cannot be
/// enqueued: the batch must be redone, never committed half-forwarded.
struct FailingEnd {
    seen: Arc<Mutex<Vec<String>>>,
    failures_left: u32,
}

impl Handler for FailingEnd {
    type Input = ();

    async fn handle(&mut self, record: &Record<'_>, _: (), _out: &mut Outbox) -> Result<(), ProcessError> {
        self.seen.lock().unwrap().push(String::from_utf8_lossy(record.payload).to_string());
        Ok(())
    }

    async fn end_batch(&mut self, _out: &mut Outbox) -> Result<(), ProcessError> {
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(ProcessError::Transient("write topic unavailable".into()));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_end_batch_redoes_the_batch() {
    let prefix = common::unique_prefix("endbatch");
    let cfg = Arc::new(common::config(&prefix));
    common::create_topics(&cfg, &[("in", 2), ("dead_letter", 1)]).await;
    let producer = common::producer(&cfg);
    for i in 0..20 {
        let key = format!("k{}", i % 2);
        producer.send(&cfg.topic("in"), Some(key.as_bytes()), format!("m{i}").as_bytes(), &[]).await.unwrap();
    }
    let health = Arc::new(Health::new());
    let shutdown = CancellationToken::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let pipeline =
        Pipeline::connect(&cfg, &health, "test-0", "in", &["in"], Sink::Kafka(producer), &shutdown).await.unwrap();
    let mut handler = FailingEnd { seen: seen.clone(), failures_left: 1 };
    let run = tokio::spawn({
        let s = shutdown.clone();
        async move { pipeline.run(&mut handler, s).await }
    });
    // A partition that never held a record has no commit (a negative sentinel).
    let committed = || kafka::committed_offsets(&cfg, &cfg.topic("in"), &cfg.topic("in"), 2).unwrap();
    common::wait_until(Duration::from_secs(60), "all offsets committed", || {
        committed().iter().map(|o| (*o).max(0)).sum::<i64>() == 20
    })
    .await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap();
    let distinct: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 20, "every record handled");
    assert!(seen.len() > 20, "the failed batch was handled again ({} handlings)", seen.len());
}
