//! Produces of one batch, sent without waiting and settled together before the commit.
//!
//! Awaiting each delivery in turn costs a broker round trip (plus linger) per record: about 150
//! records per second. Instead a handler enqueues its outputs here; the pipeline awaits every
//! acknowledgement once per batch and commits the input offsets only if all succeeded. The
//! idempotent producer keeps per-partition order across its internal retries, so enqueue order
//! is delivery order.

use std::time::Duration;

use std::sync::Arc;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::kafka::{KafkaConsumer, Producer};
use crate::error::WorkerError;
use crate::telemetry;

/// Bound on each transaction call; a broker that does not answer within it fails the batch.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Outbox {
    producer: Producer,
    pending: Vec<(String, DeliveryFuture)>,
}

impl Outbox {
    pub fn new(producer: Producer) -> Self {
        Outbox { producer, pending: Vec::new() }
    }

    /// Enqueues one message for `topic` (full name). Waits only while librdkafka's local queue
    /// is full, which is the producer's backpressure.
    pub async fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), KafkaError> {
        let mut record = super::kafka::record(topic, key, payload, headers);
        loop {
            match self.producer.inner().send_result(record) {
                Ok(delivery) => {
                    self.pending.push((topic.to_string(), delivery));
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Awaits every enqueued delivery. On failure the whole batch must be redone: some of its
    /// outputs may be missing, and the input offsets must not be committed.
    pub async fn settle(&mut self) -> Result<usize, String> {
        let pending = std::mem::take(&mut self.pending);
        let count = pending.len();
        let mut first_error = None;
        for (topic, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => telemetry::produced(&topic),
                Ok(Err((e, _))) => {
                    first_error.get_or_insert_with(|| format!("delivery to {topic} failed: {e}"));
                }
                Err(_) => {
                    first_error.get_or_insert_with(|| format!("delivery to {topic} was cancelled"));
                }
            }
        }
        match first_error {
            None => Ok(count),
            Some(e) => Err(e),
        }
    }
}

/// Transactions (the aggregation role): the batch's outputs and its input offsets commit
/// together or not at all; downstream consumers read `read_committed`.
impl Outbox {
    pub fn begin(&self) -> Result<(), WorkerError> {
        self.producer.inner().begin_transaction().map_err(WorkerError::kafka("beginning a transaction"))
    }

    /// Adds the input offsets to the transaction and commits it. An error means the batch must
    /// be aborted and redone.
    pub async fn commit_transaction(
        &self,
        consumer: &Arc<KafkaConsumer>,
        offsets: TopicPartitionList,
    ) -> Result<(), String> {
        let producer = self.producer.inner().clone();
        let consumer = consumer.clone();
        tokio::task::spawn_blocking(move || {
            if offsets.count() > 0 {
                let group = consumer.group_metadata().ok_or("no consumer group metadata")?;
                producer
                    .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
                    .map_err(|e| format!("adding offsets to the transaction: {e}"))?;
            }
            producer.commit_transaction(TXN_TIMEOUT).map_err(|e| format!("committing the transaction: {e}"))
        })
        .await
        .unwrap_or_else(|e| Err(format!("transaction task: {e}")))
    }

    /// Aborts the open transaction; failing to abort (a fenced or fatal producer) stops the worker.
    pub async fn abort_transaction(&mut self) -> Result<(), WorkerError> {
        self.pending.clear();
        let producer = self.producer.inner().clone();
        tokio::task::spawn_blocking(move || producer.abort_transaction(TXN_TIMEOUT))
            .await
            .map_err(|e| WorkerError::Fatal(format!("abort task: {e}")))?
            .map_err(WorkerError::kafka("aborting a transaction"))
    }
}
