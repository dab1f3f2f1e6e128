//! The message queue adapters. Roles see [`Record`]s and a producer; whether the bytes came from
//! Kafka or (with `-t all`) an in-process queue is the adapter's business.
//!
//! - [`kafka`]: client builders shared by every role (consumer groups, offsets, statistics).
//! - [`topics`]: the declarative topic files and `topics apply`.
//! - [`dead_letter`]: the envelope every rejected message is wrapped in.
//! - [`outbox`]: a batch's produces, sent at once and settled before the commit.
//! - [`memory`]: the in-process queue of `-t all`; [`source`]: what a pipeline consumes from.
//! - [`error`]: [`QueueError`], what every queue call fails with.

pub mod dead_letter;
pub mod error;
pub mod kafka;
pub mod memory;
pub mod outbox;
pub mod source;
pub mod topics;

pub use error::QueueError;

/// The topics of CONTRACT section 3, before `TP_TOPIC_PREFIX`.
pub mod topic {
    pub const AGGREGATION: &str = "aggregation";
    pub const WRITE: &str = "write";
    pub const TRANSPORT_MANAGER: &str = "transport_manager";
    pub const TRACK: &str = "track";
    pub const ANDROID_TRANSPORT: &str = "android_transport";
    pub const IOS_TRANSPORT: &str = "ios_transport";
    pub const SOCKETS_BROADCAST: &str = "sockets_transport";
    pub const DEAD_LETTER: &str = "dead_letter";
    pub const SYSTEM: &str = "system";

    /// The topic owned by sockets transport `index`.
    pub fn sockets(index: u32) -> String {
        format!("sockets_transport-{index}")
    }
}

/// One consumed message, borrowed from the adapter for the time it is processed.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// Broker or producer timestamp in milliseconds, when known.
    pub timestamp_ms: Option<i64>,
}

impl Record<'_> {
    /// Where this record stands in its topic, as a stored object remembers it.
    pub fn position(&self) -> crate::model::SourcePosition {
        crate::model::SourcePosition { topic: self.topic.to_owned(), partition: self.partition, offset: self.offset }
    }
}

/// The queue a process's roles exchange messages over.
#[derive(Clone)]
pub enum Queue {
    Kafka,
    /// `-t all` with `TP_MSG_QUE=memory`: every role of the process shares one broker.
    Memory(memory::Broker),
}

impl Queue {
    /// Where a role's outputs go: a Kafka producer, or the shared broker.
    pub fn sink(
        &self,
        cfg: &crate::config::Config,
        health: &std::sync::Arc<crate::telemetry::Health>,
        client_id: &str,
    ) -> Result<outbox::Sink, crate::error::WorkerError> {
        match self {
            Queue::Kafka => Ok(outbox::Sink::Kafka(kafka::Producer::new(cfg, health, client_id)?)),
            Queue::Memory(b) => Ok(outbox::Sink::Memory(b.clone())),
        }
    }

    /// A sink whose batches commit as transactions with their input offsets (`transactional_id`
    /// stable per worker instance, so a restarted instance fences its previous life).
    pub async fn transactional_sink(
        &self,
        cfg: &crate::config::Config,
        health: &std::sync::Arc<crate::telemetry::Health>,
        transactional_id: &str,
    ) -> Result<outbox::Sink, crate::error::WorkerError> {
        match self {
            Queue::Kafka => {
                Ok(outbox::Sink::Kafka(kafka::Producer::transactional(cfg, health, transactional_id).await?))
            }
            Queue::Memory(b) => Ok(outbox::Sink::Memory(b.clone())),
        }
    }
}
