//! The consume loop every role runs: take a batch, process each record, commit, repeat.
//!
//! ```text
//! loop {
//!     batch  = recv() + whatever else is already buffered (up to TP_BATCH_SIZE)
//!     for record in batch:
//!         handler.handle(record)  -> Ok          : next
//!                                 -> Poison      : dead_letter(record, reason), next
//!                                 -> Transient   : readiness false, back off, retry the SAME record
//!                                 -> Fatal       : commit what was done, stop the process
//!     commit(last offset + 1 per partition)     // only after the side effects
//! }
//! ```
//! A crash therefore re-delivers at most the batch that was in flight, and a poison message
//! never stops its partition.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{ProcessError, WorkerError};
use crate::queue::dead_letter::Envelope;
use crate::queue::kafka::{self, KafkaConsumer, Producer};
use crate::queue::{topic, Record};
use crate::telemetry::{self, names, Health};


const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// A role's processing of one record. Side effects must be done (or safely idempotent) when it
/// returns `Ok`, because the offset is committed right after.
pub trait Handler {
    fn handle(&mut self, record: &Record<'_>) -> impl Future<Output = Result<(), ProcessError>> + Send;
}

/// A connected consumer with its dead-letter producer.
pub struct Pipeline {
    worker: String,
    consumer: Arc<KafkaConsumer>,
    producer: Producer,
    health: Arc<Health>,
    dead_letter_topic: String,
    batch_size: usize,
    /// Readiness condition held false while a dependency is failing.
    processing_condition: String,
}

enum Outcome {
    Done,
    Interrupted,
}

impl Pipeline {
    /// Creates the consumer for `group` on `topics` (before the prefix) and waits until the
    /// cluster answers and the topics exist.
    pub async fn connect(
        cfg: &Config,
        health: &Arc<Health>,
        worker: &str,
        group: &str,
        topics: &[&str],
        producer: Producer,
        shutdown: &CancellationToken,
    ) -> Result<Self, WorkerError> {
        let worker = worker.to_string();
        let full: Vec<String> = topics.iter().map(|t| cfg.topic(t)).collect();
        let group = cfg.topic(group);
        let client_id = format!("{worker}-{group}");
        let consumer = kafka::consumer(cfg, health, &client_id, &group, &full, true)?;
        kafka::wait_for_topics(&consumer, health, &client_id, &full, shutdown).await?;
        Ok(Pipeline {
            processing_condition: format!("processing:{client_id}"),
            worker,
            consumer,
            producer,
            health: health.clone(),
            dead_letter_topic: cfg.topic(topic::DEAD_LETTER),
            batch_size: cfg.batch_size,
        })
    }

    /// Consumes until `shutdown`, then commits and leaves the group.
    pub async fn run<H: Handler>(self, handler: &mut H, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let consumer = self.consumer.clone();
        let mut last_batch = BTreeMap::new();
        let result = loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                m = consumer.recv() => m,
            };
            let mut batch = Vec::with_capacity(self.batch_size.min(1024));
            match first {
                Ok(m) => batch.push(m),
                Err(error) => {
                    tracing::warn!(message = "kafka receive error", %error);
                    continue;
                }
            }
            // Take what librdkafka already buffered without waiting: bigger batches under load,
            // no added latency when idle. `recv` is cancel-safe, so dropping it loses nothing.
            while batch.len() < self.batch_size {
                match consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(error)) => tracing::warn!(message = "kafka receive error", %error),
                    None => break,
                }
            }
            metrics::histogram!(names::BATCH_SIZE).record(batch.len() as f64);
            let (offsets, outcome) = self.process_batch(handler, &batch, &shutdown).await;
            self.commit(&offsets, CommitMode::Async);
            last_batch = offsets;
            match outcome {
                Ok(Outcome::Done) => {}
                Ok(Outcome::Interrupted) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // The async commit of the last batch may still be queued; make it durable before leaving.
        self.commit(&last_batch, CommitMode::Sync);
        self.health.remove(&self.processing_condition);
        result
    }

    /// Processes records in order; returns the next offsets of what completed, and why it stopped.
    async fn process_batch<H: Handler>(
        &self,
        handler: &mut H,
        batch: &[BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) -> (BTreeMap<(String, i32), i64>, Result<Outcome, WorkerError>) {
        let mut offsets = BTreeMap::new();
        for msg in batch {
            let record = Record {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key(),
                payload: msg.payload().unwrap_or_default(),
                timestamp_ms: msg.timestamp().to_millis(),
            };
            telemetry::consumed(record.topic);
            let started = Instant::now();
            match self.process(handler, &record, shutdown).await {
                Ok(Outcome::Done) => {}
                other => return (offsets, other),
            }
            metrics::histogram!(names::PROCESSING_SECONDS, "topic" => record.topic.to_string())
                .record(started.elapsed().as_secs_f64());
            offsets.insert((record.topic.to_string(), record.partition), record.offset + 1);
        }
        (offsets, Ok(Outcome::Done))
    }

    /// One record, retried on transient failures until it succeeds or the process stops.
    async fn process<H: Handler>(&self, handler: &mut H, record: &Record<'_>, shutdown: &CancellationToken) -> Result<Outcome, WorkerError> {
        let mut delay = RETRY_START;
        let mut failing = false;
        loop {
            let result = match handler.handle(record).await {
                Err(ProcessError::Poison(reason)) => {
                    telemetry::failed(record.topic, "poison");
                    self.dead_letter(record, &reason).await
                }
                other => other,
            };
            match result {
                Ok(()) => {
                    if failing {
                        self.health.ok(&self.processing_condition);
                    }
                    return Ok(Outcome::Done);
                }
                Err(ProcessError::Fatal(reason)) => {
                    telemetry::failed(record.topic, "fatal");
                    return Err(WorkerError::Fatal(format!("{}/{}@{}: {reason}", record.topic, record.partition, record.offset)));
                }
                Err(ProcessError::Transient(reason) | ProcessError::Poison(reason)) => {
                    telemetry::failed(record.topic, "transient");
                    metrics::counter!(names::RETRIES, "topic" => record.topic.to_string()).increment(1);
                    failing = true;
                    self.health.fail(&self.processing_condition, reason.clone());
                    tracing::warn!(message = "processing failed, retrying", topic = record.topic, partition = record.partition,
                        offset = record.offset, reason, retry_in_ms = delay.as_millis() as u64);
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(Outcome::Interrupted),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_CAP);
                }
            }
        }
    }

    /// Wraps the record in the dead-letter envelope. A failed produce is transient: the record
    /// is retried rather than skipped, so nothing is lost.
    async fn dead_letter(&self, record: &Record<'_>, reason: &str) -> Result<(), ProcessError> {
        let envelope = Envelope::new(record, &self.worker, reason);
        tracing::warn!(message = "message dead-lettered", topic = record.topic, partition = record.partition, offset = record.offset, reason);
        self.producer
            .send(&self.dead_letter_topic, record.key, &envelope.to_json(), &[("nexxus-reason", reason.as_bytes())])
            .await
            .map_err(|e| ProcessError::Transient(format!("dead_letter produce failed: {e}")))?;
        metrics::counter!(names::DEAD_LETTERED, "topic" => record.topic.to_string()).increment(1);
        Ok(())
    }

    fn commit(&self, offsets: &BTreeMap<(String, i32), i64>, mode: CommitMode) {
        if offsets.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for ((t, p), next) in offsets {
            if let Err(error) = tpl.add_partition_offset(t, *p, Offset::Offset(*next)) {
                tracing::error!(message = "bad offset to commit", topic = %t, partition = p, %error);
            }
        }
        // A commit can fail after a rebalance moved the partition away; the new owner resumes
        // from the previous commit and re-processes, which the roles make idempotent.
        if let Err(error) = self.consumer.commit(&tpl, mode) {
            metrics::counter!(names::COMMIT_FAILURES).increment(1);
            tracing::warn!(message = "offset commit failed", %error);
        }
    }
}
