//! What a pipeline consumes from: a Kafka consumer group member, or a group of the in-process
//! queue. Both give records in order per partition, take commits of "next offset" per
//! partition, and rewind to redo a batch; the pipeline does not know which one it has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message as _};
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

    /// Commits `next` offsets synchronously. A failure is logged and counted by the caller's
    /// metric: the next owner re-processes from the previous commit, which roles make idempotent.
    pub async fn commit(&self, next: &Offsets) -> Result<(), QueueError> {
        if next.is_empty() {
            return Ok(());
        }
        match self {
            Source::Kafka(c) => {
                let tpl = to_list(next);
                // A synchronous commit blocks on a broker round trip: keep it off the async threads.
                let consumer = c.clone();
                tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                    .await
                    .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
                    .map_err(QueueError::Commit)
            }
            Source::Memory(c) => {
                for ((topic, _), offset) in next {
                    c.commit(topic, *offset);
                }
                Ok(())
            }
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
