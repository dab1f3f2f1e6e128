//! What a pipeline consumes from: a Kafka consumer group member, or a group of the in-process
//! queue. Both give records in order per partition, take "next offset" per partition once a
//! batch's side effects are durable, and rewind to redo a batch; the pipeline does not know
//! which one it has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::error::QueueError;
use super::kafka::KafkaConsumer;
use super::{memory, Record};
use crate::error::WorkerError;

/// Next offset (or first offset of a batch) per (topic, partition).
pub type Offsets = BTreeMap<(String, i32), i64>;

pub enum Source {
    Kafka(Arc<KafkaConsumer>),
    Memory(memory::Consumer),
}

/// A received record, borrowed from the consumer (Kafka) or shared with the log (memory).
pub enum Received<'a> {
    Kafka(BorrowedMessage<'a>),
    Memory(Arc<memory::Message>),
}

impl Received<'_> {
    pub fn record(&self) -> Record<'_> {
        match self {
            Received::Kafka(msg) => Record {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key(),
                payload: msg.payload().unwrap_or_default(),
                timestamp_ms: msg.timestamp().to_millis(),
            },
            Received::Memory(m) => Record {
                topic: &m.topic,
                partition: 0,
                offset: m.offset,
                key: m.key.as_deref(),
                payload: &m.payload,
                timestamp_ms: Some(m.timestamp_ms),
            },
        }
    }
}

impl Source {
    /// The next record. Cancel-safe.
    pub async fn recv(&self) -> Result<Received<'_>, QueueError> {
        match self {
            Source::Kafka(c) => c.recv().await.map(Received::Kafka).map_err(QueueError::Receive),
            Source::Memory(c) => Ok(Received::Memory(c.recv().await)),
        }
    }

    /// A record that is already buffered, without waiting.
    pub fn try_recv(&self) -> Option<Result<Received<'_>, QueueError>> {
        match self {
            Source::Kafka(c) => c.recv().now_or_never().map(|r| r.map(Received::Kafka).map_err(QueueError::Receive)),
            Source::Memory(c) => c.poll().map(|m| Ok(Received::Memory(m))),
        }
    }

    /// How many times partitions were revoked from this member so far (never, in-process: one
    /// consumer owns the whole log).
    pub fn revocations(&self) -> u64 {
        match self {
            Source::Kafka(c) => c.context().revocations(),
            Source::Memory(_) => 0,
        }
    }

    /// Marks `next` offsets as done: every side effect of the records before them is durable.
    /// Kafka commits what is marked every `auto.commit.interval.ms` (1 s), when a partition is
    /// revoked and in [`Source::commit_marked`]: one commit request a second instead of one per
    /// batch (BENCHMARKS: the broker's CPU follows its requests). A failure (the partition was
    /// revoked meanwhile) is logged and counted by the caller: the next owner re-processes from
    /// the previous commit, which roles make idempotent.
    pub fn mark_done(&self, next: &Offsets) -> Result<(), QueueError> {
        if next.is_empty() {
            return Ok(());
        }
        match self {
            Source::Kafka(c) => c.store_offsets(&to_list(next)).map_err(QueueError::Commit),
            Source::Memory(c) => {
                for ((topic, _), offset) in next {
                    c.commit(topic, *offset);
                }
                Ok(())
            }
        }
    }

    /// Commits what [`Source::mark_done`] marked and the timer has not committed yet, and waits
    /// for the broker: the last step before the member leaves.
    pub async fn commit_marked(&self) -> Result<(), QueueError> {
        match self {
            Source::Kafka(c) => {
                // A synchronous commit blocks on a broker round trip: keep it off the async threads.
                let consumer = c.clone();
                let committed = tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                    .await
                    .unwrap_or(Err(rdkafka::error::KafkaError::Canceled));
                match committed {
                    // Nothing marked since the last commit.
                    Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => Ok(()),
                    other => other.map_err(QueueError::Commit),
                }
            }
            Source::Memory(_) => Ok(()),
        }
    }

    /// Moves back to the first offsets of a batch that must be redone.
    pub async fn rewind(&self, first: &Offsets) -> Result<(), WorkerError> {
        match self {
            Source::Kafka(c) => {
                let consumer = c.clone();
                let tpl = to_list(first);
                let result =
                    tokio::task::spawn_blocking(move || consumer.seek_partitions(tpl, Duration::from_secs(10)))
                        .await
                        .unwrap_or(Err(rdkafka::error::KafkaError::Canceled));
                // Without the seek the batch would be skipped: stop rather than lose it. The next
                // owner resumes from the last commit.
                result
                    .map(drop)
                    .map_err(|e| WorkerError::Fatal(format!("seek after an unacknowledged batch failed: {e}")))
            }
            Source::Memory(c) => {
                for ((topic, _), offset) in first {
                    c.seek(topic, *offset);
                }
                Ok(())
            }
        }
    }
}

pub(crate) fn to_list(offsets: &Offsets) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for ((t, p), offset) in offsets {
        if let Err(error) = tpl.add_partition_offset(t, *p, Offset::Offset(*offset)) {
            tracing::error!(message = "bad offset", topic = %t, partition = p, %error);
        }
    }
    tpl
}
