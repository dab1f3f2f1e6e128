//! `nexxus-enrich-example`: a custom worker outside `nexxus-worker`, the runnable example of
//! docs/custom-workers.md. It sits between the writer and the transport manager: the writer
//! sends its change events to `enrich` (`TP_WRITE_OUTPUT=enrich`), this worker adds a field to
//! each event's after-image and produces the event to `transport_manager`, keyed as it came.
//!
//! It knows the records only by their documented JSON (docs/schemas/), not by this crate's
//! types, as a worker in another language would. At least once: an input offset is stored only
//! after its output was acknowledged, so a crash repeats records, which the transports drop as
//! exact repeats and clients by `version`.
//!
//! Settings (environment): `TP_KFK_BROKERS` (default 127.0.0.1:9092), `TP_TOPIC_PREFIX`,
//! `ENRICH_INPUT` (default `enrich`), `ENRICH_OUTPUT` (default `transport_manager`),
//! `ENRICH_GROUP` (default `enrich`).
#![allow(clippy::disallowed_methods)] // an example program outside the worker: it reads its own environment

use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

/// The enrichment: an event whose after-image has a string `title` gets `title_words`.
/// Anything else passes unchanged (a worker must not drop what it does not understand).
fn enrich(payload: &[u8]) -> Option<Vec<u8>> {
    let mut event: Value = serde_json::from_slice(payload).ok()?;
    let after = event.get_mut("after")?.as_object_mut()?;
    let words = after.get("title")?.as_str()?.split_whitespace().count();
    after.insert("title_words".into(), words.into());
    serde_json::to_vec(&event).ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let brokers = setting("TP_KFK_BROKERS", "127.0.0.1:9092");
    let prefix = setting("TP_TOPIC_PREFIX", "");
    let input = format!("{prefix}{}", setting("ENRICH_INPUT", "enrich"));
    let output = format!("{prefix}{}", setting("ENRICH_OUTPUT", "transport_manager"));
    let group = format!("{prefix}{}", setting("ENRICH_GROUP", "enrich"));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating the consumer")?;
    consumer.subscribe(&[input.as_str()]).context("subscribing")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .create()
        .context("creating the producer")?;
    eprintln!("enrich: {input} -> {output} (group {group})");

    let mut stop = Box::pin(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        anyhow::Ok(())
    });
    loop {
        let record = tokio::select! {
            stopped = &mut stop => { stopped?; break; }
            record = consumer.recv() => record.context("consuming")?,
        };
        let payload = record.payload().unwrap_or_default();
        let enriched = enrich(payload);
        let mut out = FutureRecord::to(&output).payload(enriched.as_deref().unwrap_or(payload));
        if let Some(key) = record.key() {
            out = out.key(key);
        }
        producer.send(out, Duration::from_secs(30)).await.map_err(|(e, _)| e).context("producing")?;
        consumer.store_offset_from_message(&record).context("storing the offset")?;
    }
    consumer.commit_consumer_state(CommitMode::Sync).context("committing")?;
    eprintln!("enrich: stopped");
    Ok(())
}
