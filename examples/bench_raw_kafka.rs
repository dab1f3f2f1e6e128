//! What Kafka alone does on this machine, with the workers' own clients: a produce → consume
//! round trip at a fixed offered rate, timed from the produce stamp in each payload to the
//! moment the batch holding it is received.
//!
//! Same clients as the roles: the producer of `kafka::Producer` (idempotent, `acks=all`,
//! linger 5 ms, lz4), consumers of `kafka::consumer` (group member, `read_committed`,
//! cooperative-sticky), batches of up to `TP_BATCH_SIZE` as the pipeline takes them (one record
//! plus whatever is buffered), and the pipeline's own `Outbox` and `Source` calls:
//!
//! - `--mode plain`: produce to `write`; a consumer takes batches and marks each one done
//!   (`Source::mark_done`, committed every second), like every non-transactional role.
//! - `--mode txn`: produce to `aggregation`; a transform stage consumes it and, per batch, begins
//!   a transaction, produces every record to `write`, settles, and commits the transaction with
//!   the input offsets (`Outbox::commit_transaction`), like the aggregation role; a consumer of
//!   `write` receives and commits as in plain mode. This is one transactional hop.
//!
//! Fresh topics under a unique prefix from the real `topics/` files (12 partitions), deleted at
//! the end. Prints one JSON line: latency, throughput, CPU of this process and of `--kafka-pid`.
//!
//!     cargo run --release --example bench_raw_kafka -- --mode txn --rate 5000 --seconds 15
#![allow(clippy::disallowed_methods)] // a benchmark harness, not the worker: it reads its settings from the environment

#[path = "support/limits.rs"]
mod limits;
#[path = "support/proc.rs"]
#[allow(dead_code)]
mod proc;
#[path = "support/raw_kafka.rs"]
mod raw_kafka;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nexxus_worker::config::{Config, Overrides, ProcessEnv};
use nexxus_worker::queue::kafka::{self, Producer};
use nexxus_worker::queue::outbox::{Outbox, Sink};
use nexxus_worker::queue::source::Source;
use nexxus_worker::queue::{topic, topics};
use nexxus_worker::telemetry::Health;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use raw_kafka::{Counters, Load};

/// Messages sent (stamp 0, not measured) until every stage has joined its group and served.
const WARM_UP: u64 = 240;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mode = limits::arg_text("--mode").unwrap_or_else(|| "plain".into());
    let transactional = match mode.as_str() {
        "plain" => false,
        "txn" => true,
        other => anyhow::bail!("--mode is plain or txn, not {other}"),
    };
    let load = Load {
        rate: limits::arg("--rate", 1000),
        duration: Duration::from_secs(limits::arg("--seconds", 15)),
        size: limits::arg("--size", 300) as usize,
        keys: limits::arg("--keys", 1000).max(1),
    };
    let kafka_pid = limits::arg("--kafka-pid", 0) as u32;

    let mut cfg = Config::load(&Overrides::default(), &ProcessEnv)?;
    cfg.kafka.topic_prefix = format!("limits{}.", limits::unique());
    let files: Vec<_> =
        topics::load(None)?.into_iter().filter(|f| f.name == topic::AGGREGATION || f.name == topic::WRITE).collect();
    topics::apply(&cfg, &files, false).await?;
    let (input, output) = (cfg.topic(topic::AGGREGATION), cfg.topic(topic::WRITE));
    let health = Arc::new(Health::new());
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());

    // The measured consumer: of `write` in both modes (fed directly, or by the transform).
    let group = cfg.topic("limits-sink");
    let sink_consumer = kafka::consumer(&cfg, &health, "limits-sink", &group, std::slice::from_ref(&output), true)?;
    let sink =
        tokio::spawn(raw_kafka::sink(Source::Kafka(sink_consumer), cfg.batch_size, counters.clone(), stop.clone()));
    let (produce_to, transform) = if transactional {
        let group = cfg.topic("limits-transform");
        let consumer = kafka::consumer(&cfg, &health, "limits-transform", &group, std::slice::from_ref(&input), true)?;
        let txn_id = format!("{}limits-transform-0", cfg.kafka.topic_prefix);
        let outbox = Outbox::new(Sink::Kafka(Producer::transactional(&cfg, &health, &txn_id).await?));
        let task = raw_kafka::transform(Source::Kafka(consumer), outbox, output.clone(), cfg.batch_size, stop.clone());
        (input.clone(), Some(tokio::spawn(task)))
    } else {
        (output.clone(), None)
    };
    let producer = Producer::new(&cfg, &health, "limits-producer")?;

    // Warm-up: group joins and first fetches are not what is measured.
    raw_kafka::warm_up(&producer, &produce_to, WARM_UP, &load, &counters).await?;

    let load_before = limits::load_average();
    let cpu = limits::CpuWindow::start(&[("bench", std::process::id()), ("kafka", kafka_pid)]);
    let started = Instant::now();
    let generated = raw_kafka::generate(&producer, &produce_to, &load).await;
    raw_kafka::drain(&counters, generated.sent, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    let cpu = cpu.cores();
    stop.cancel();
    let received = sink.await??;
    let transactions = match transform {
        Some(t) => Some(t.await??),
        None => None,
    };

    let admin: AdminClient<DefaultClientContext> = kafka::base_config(&cfg, "limits-admin").create()?;
    admin.delete_topics(&[input.as_str(), output.as_str()], &AdminOptions::new()).await?;

    let report = json!({
        "bench": "raw_kafka",
        "mode": mode,
        "offered_rate": load.rate,
        "seconds": load.duration.as_secs(),
        "message_bytes": load.size,
        "keys": load.keys,
        "partitions": files.first().map(|f| f.partitions),
        "batch_size": cfg.batch_size,
        "sent": generated.sent,
        "send_errors": generated.errors,
        "sent_per_s": (generated.sent as f64 / generated.elapsed.as_secs_f64()).round(),
        "received": received.count,
        "lost": generated.sent.saturating_sub(received.count),
        "duplicates": received.duplicates,
        "received_per_s": (received.count as f64 / elapsed.as_secs_f64()).round(),
        "latency": limits::summary(&received.latency),
        "batches": received.batches,
        "mean_batch": (received.count as f64 / received.batches.max(1) as f64).round(),
        "commit": limits::summary(&received.commit),
        "transaction": transactions.as_ref().map(|t| limits::summary(&t.transaction)),
        "transactions": transactions.as_ref().map(|t| t.batches),
        "cpu_cores": cpu,
        "load_average_before": load_before,
    });
    println!("{report}");
    Ok(())
}
