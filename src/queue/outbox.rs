//! Produces of one batch, sent without waiting and settled together before the commit.
//!
//! Awaiting each delivery in turn costs a broker round trip (plus linger) per record: about 150
//! records per second. Instead a handler enqueues its outputs here; the pipeline awaits every
//! acknowledgement once per batch and commits the input offsets only if all succeeded. The
//! idempotent producer keeps per-partition order across its internal retries, so enqueue order
//! is delivery order. With the in-process queue (`-t all`) the same calls append to its logs.

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

use super::error::QueueError;
use super::kafka::Producer;
use super::memory::Broker;
use super::source::{to_list, Offsets, Source};
use crate::error::WorkerError;
use crate::telemetry;

/// Bound on each transaction call; a broker that does not answer within it fails the batch.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a batch's outputs go.
#[derive(Clone)]
pub enum Sink {
    Kafka(Producer),
    Memory(Broker),
}

enum Pending {
    Kafka(String, DeliveryFuture),
    /// In-process records are appended when the batch settles (or its transaction commits), so
    /// an aborted batch leaves nothing behind, as with Kafka.
    Memory {
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
}

pub struct Outbox {
    sink: Sink,
    pending: Vec<Pending>,
    in_transaction: bool,
}

impl Outbox {
    pub fn new(sink: Sink) -> Self {
        Outbox { sink, pending: Vec::new(), in_transaction: false }
    }

    /// Enqueues one message for `topic` (full name). Waits only while librdkafka's local queue
    /// is full, which is the producer's backpressure. Headers are Kafka's only: the in-process
    /// queue has no reader for them.
    pub async fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), QueueError> {
        let producer = match &self.sink {
            Sink::Kafka(p) => p,
            Sink::Memory(_) => {
                let (key, payload) = (key.map(<[u8]>::to_vec), payload.to_vec());
                self.pending.push(Pending::Memory { topic: topic.to_string(), key, payload });
                return Ok(());
            }
        };
        let mut record = super::kafka::record(topic, key, payload, headers);
        loop {
            match producer.inner().send_result(record) {
                Ok(delivery) => {
                    self.pending.push(Pending::Kafka(topic.to_string(), delivery));
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((source, _)) => return Err(QueueError::Produce { topic: topic.to_string(), source }),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Awaits every enqueued delivery. On failure the whole batch must be redone: some of its
    /// outputs may be missing, and the input offsets must not be committed.
    pub async fn settle(&mut self) -> Result<usize, QueueError> {
        if self.in_transaction && matches!(self.sink, Sink::Memory(_)) {
            // Appended by `commit_transaction`.
            return Ok(self.pending.len());
        }
        self.take().settle().await
    }

    /// The deliveries enqueued so far, to be settled elsewhere (the pipeline settles a batch in
    /// the background while it processes the next one). Not within a transaction: those settle
    /// with their commit.
    pub fn take(&mut self) -> Deliveries {
        Deliveries { sink: self.sink.clone(), pending: std::mem::take(&mut self.pending) }
    }

    /// [`Outbox::settle`] for a producer that answers a client (the HTTP ingress) and so cannot
    /// wait without bound: an in-process append that finds its topic full for `wait` stops
    /// there. On failure: how many records are certainly in, and why the rest may not be. Kafka
    /// deliveries are concurrent, so a failure there counts none in, though some may be.
    pub async fn settle_within(&mut self, wait: Duration) -> Result<usize, (usize, String)> {
        let Sink::Memory(broker) = &self.sink else {
            return self.settle().await.map_err(|e| (0, format!("{e} (some may have been accepted)")));
        };
        let pending = std::mem::take(&mut self.pending);
        let count = pending.len();
        for (i, p) in pending.into_iter().enumerate() {
            if let Pending::Memory { topic, key, payload } = p {
                if tokio::time::timeout(wait, broker.append(&topic, key, payload)).await.is_err() {
                    return Err((i, format!("the in-process queue stayed full for {wait:?}")));
                }
            }
        }
        Ok(count)
    }

    /// A `Pending::Memory` record into the broker (only a memory sink has them).
    async fn append(&self, topic: &str, key: Option<Vec<u8>>, payload: Vec<u8>) {
        if let Sink::Memory(broker) = &self.sink {
            broker.append(topic, key, payload).await;
        }
    }
}

/// One batch's enqueued outputs, taken out of the [`Outbox`]: Kafka deliveries in flight, or
/// in-process records not appended yet. Dropping it does not recall what Kafka already has.
pub struct Deliveries {
    sink: Sink,
    pending: Vec<Pending>,
}

impl Deliveries {
    /// Awaits every delivery (appends the in-process records, in order). On failure the batch
    /// must be redone: some of its outputs may be missing.
    pub async fn settle(self) -> Result<usize, QueueError> {
        let count = self.pending.len();
        let mut first_error = None;
        for p in self.pending {
            match p {
                Pending::Kafka(topic, delivery) => match delivery.await {
                    Ok(Ok(_)) => telemetry::produced(&topic),
                    Ok(Err((source, _))) => {
                        first_error.get_or_insert(QueueError::Produce { topic, source });
                    }
                    Err(_) => {
                        first_error.get_or_insert(QueueError::DeliveryCancelled { topic });
                    }
                },
                Pending::Memory { topic, key, payload } => {
                    if let Sink::Memory(broker) = &self.sink {
                        broker.append(&topic, key, payload).await;
                    }
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
    pub fn begin(&mut self) -> Result<(), WorkerError> {
        self.in_transaction = true;
        match &self.sink {
            Sink::Kafka(p) => p.inner().begin_transaction().map_err(WorkerError::kafka("beginning a transaction")),
            Sink::Memory(_) => Ok(()),
        }
    }

    /// Adds the input offsets to the transaction and commits it. An error means the batch must
    /// be aborted and redone.
    pub async fn commit_transaction(&mut self, source: &Source, offsets: &Offsets) -> Result<(), QueueError> {
        self.in_transaction = false;
        let (producer, consumer) = match (&self.sink, source) {
            (Sink::Kafka(p), Source::Kafka(c)) => (p.inner().clone(), c.clone()),
            (Sink::Memory(_), Source::Memory(_)) => {
                for p in std::mem::take(&mut self.pending) {
                    if let Pending::Memory { topic, key, payload } = p {
                        self.append(&topic, key, payload).await;
                    }
                }
                return source.mark_done(offsets);
            }
            _ => return Err(QueueError::MixedQueues),
        };
        let offsets = to_list(offsets);
        tokio::task::spawn_blocking(move || {
            if offsets.count() > 0 {
                let group = consumer.group_metadata().ok_or(QueueError::NoGroupMetadata)?;
                producer
                    .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
                    .map_err(|source| QueueError::Transaction { what: "adding offsets to the transaction", source })?;
            }
            producer
                .commit_transaction(TXN_TIMEOUT)
                .map_err(|source| QueueError::Transaction { what: "committing the transaction", source })
        })
        .await
        .unwrap_or_else(|source| Err(QueueError::Task { what: "transaction", source }))
    }

    /// Commits the open transaction, which carries no input offsets (a producer that answers a
    /// client: the ingress). The commit flushes every record of it: one that fails makes the
    /// commit fail, and the transaction must be aborted.
    pub async fn commit_alone(&mut self) -> Result<(), QueueError> {
        self.in_transaction = false;
        let producer = match &self.sink {
            Sink::Kafka(p) => p.inner().clone(),
            Sink::Memory(_) => {
                for p in std::mem::take(&mut self.pending) {
                    if let Pending::Memory { topic, key, payload } = p {
                        self.append(&topic, key, payload).await;
                    }
                }
                return Ok(());
            }
        };
        // The commit awaits the deliveries itself; their futures are not needed.
        self.pending.clear();
        tokio::task::spawn_blocking(move || {
            producer
                .commit_transaction(TXN_TIMEOUT)
                .map_err(|source| QueueError::Transaction { what: "committing the transaction", source })
        })
        .await
        .unwrap_or_else(|source| Err(QueueError::Task { what: "transaction", source }))
    }

    /// Aborts the open transaction; failing to abort (a fenced or fatal producer) stops the worker.
    pub async fn abort_transaction(&mut self) -> Result<(), WorkerError> {
        self.pending.clear();
        self.in_transaction = false;
        let producer = match &self.sink {
            Sink::Kafka(p) => p.inner().clone(),
            Sink::Memory(_) => return Ok(()),
        };
        tokio::task::spawn_blocking(move || producer.abort_transaction(TXN_TIMEOUT))
            .await
            .map_err(|e| WorkerError::Fatal(format!("abort task: {e}")))?
            .map_err(WorkerError::kafka("aborting a transaction"))
    }
}
