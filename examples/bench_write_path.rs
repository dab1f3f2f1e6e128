//! Load generator for the write path: aggregation → write → transport_manager.
//!
//! Expects running `aggregation` and `write` workers and an application `bench` (see
//! `deploy/local/bench-write-path.sh`, which sets everything up). Creates `--objects` objects,
//! then sends `--count` single-patch updates (at `--rate` per second, 0 = as fast as the
//! producer accepts). Each patch carries its send time (`replace task/<id>/sent`), so latency
//! is measured per patch even when the aggregator coalesced several into one event.
//!
//!     cargo run --release --example bench_write_path -- --count 50000 --rate 0

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nexxus_worker::config::{Config, Overrides, ProcessEnv};
use nexxus_worker::model::ChangeEvent;
use nexxus_worker::queue::kafka::{base_config, Producer};
use nexxus_worker::telemetry::Health;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (count, rate, objects) = (arg("--count", 50_000), arg("--rate", 0), arg("--objects", 1000));
    let cfg = Config::load(&Overrides::default(), &ProcessEnv)?;
    let producer = Producer::new(&cfg, &Arc::new(Health::new()), "bench-producer")?;
    let events_topic = cfg.topic("transport_manager");
    let consumer: StreamConsumer = base_config(&cfg, "bench-reader")
        .set("group.id", format!("bench-{}", now_micros()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let md = consumer.fetch_metadata(Some(&events_topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(&events_topic, p.id(), Offset::End)?;
        }
    }
    consumer.assign(&tpl)?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let topic = cfg.topic("aggregation");
    let ids: Vec<String> = (0..objects).map(|i| format!("b{}-{i}", now_micros())).collect();
    for id in &ids {
        let m = json!({"op":"create","object":{"id":id,"type":"task","context_id":"c1","application_id":"bench","votes":0},
            "application_id":"bench","timestamp":now_micros()});
        producer.send(&topic, Some(id.as_bytes()), m.to_string().as_bytes(), &[]).await?;
    }
    let mut created = 0;
    while created < ids.len() {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        let e: ChangeEvent = serde_json::from_slice(m.payload().unwrap_or_default())?;
        if e.op == nexxus_worker::model::ChangeOp::Create {
            created += 1;
        }
    }
    eprintln!(
        "{created} objects created; sending {count} updates at {}",
        if rate == 0 { "full speed".to_string() } else { format!("{rate}/s") }
    );

    let sender = {
        let (producer, topic, ids) = (producer.clone(), topic.clone(), ids.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut inflight = Vec::new();
            for n in 0..count {
                if rate > 0 {
                    let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let id = &ids[(n % ids.len() as u64) as usize];
                let m = json!({"op":"update","patches":[{"op":"replace","path":format!("task/{id}/sent"),"value":now_micros()}],
                    "application_id":"bench","timestamp":now_micros()});
                let (p, t, id) = (producer.clone(), topic.clone(), id.clone());
                inflight.push(tokio::spawn(async move {
                    p.send(&t, Some(id.as_bytes()), m.to_string().as_bytes(), &[]).await
                }));
                if inflight.len() >= 2000 {
                    for h in inflight.drain(..) {
                        let _ = h.await;
                    }
                }
            }
            for h in inflight {
                let _ = h.await;
            }
            started.elapsed()
        })
    };

    let first_send = now_micros();
    let mut latencies = Vec::with_capacity(count as usize);
    let mut events = 0u64;
    let mut per_event: HashMap<usize, u64> = HashMap::new();
    let mut last = first_send;
    while (latencies.len() as u64) < count {
        let m = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => break,
        };
        let e: ChangeEvent = serde_json::from_slice(m.payload().unwrap_or_default())?;
        if e.op != nexxus_worker::model::ChangeOp::Update {
            continue;
        }
        let now = now_micros();
        events += 1;
        *per_event.entry(e.patches.len()).or_default() += 1;
        for p in &e.patches {
            if let Some(sent) = p.value.as_u64() {
                latencies.push(now.saturating_sub(sent));
            }
        }
        last = now;
    }
    let send_time = sender.await?;
    latencies.sort_unstable();
    let elapsed = (last - first_send) as f64 / 1e6;
    let delivered = latencies.len();
    println!(
        "| {count} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {delivered} | {events} |",
        if rate == 0 { "max".to_string() } else { rate.to_string() },
        count as f64 / send_time.as_secs_f64(),
        delivered as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().map_or(f64::NAN, |&l| l as f64 / 1000.0),
    );
    eprintln!("patches per event: {per_event:?}");
    Ok(())
}
