//! [`QueueError`]: what went wrong talking to the queue, with the topic or step it was about and
//! the client's error as its source.

use rdkafka::error::KafkaError;

use crate::error::{Cause, ProcessError};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A record could not be enqueued, or its delivery was not acknowledged.
    #[error("producing to {topic}: {source}")]
    Produce {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// The producer was dropped before it reported the delivery.
    #[error("delivery to {topic} was cancelled")]
    DeliveryCancelled { topic: String },
    #[error("receiving: {0}")]
    Receive(#[source] KafkaError),
    #[error("committing offsets: {0}")]
    Commit(#[source] KafkaError),
    /// A step of a transaction (`what`) failed; the batch is aborted and redone.
    #[error("{what}: {source}")]
    Transaction {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("a transaction needs its source and sink on the same queue")]
    MixedQueues,
    #[error("no consumer group metadata for the transaction")]
    NoGroupMetadata,
    /// A blocking client call's task ended without an answer (runtime shutting down, or a panic).
    #[error("{what} task: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A dead-letter envelope keeps only the start of a payload over its bound: nothing to replay.
    #[error("payload of {size} bytes was truncated (sha256 {sha256})")]
    Truncated { size: usize, sha256: String },
    #[error("envelope {field} is not base64: {source}")]
    NotBase64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
}

/// A queue that does not take or acknowledge a message is a dependency failing, never the
/// message's fault: the record is retried.
impl QueueError {
    /// The client can never be used again (librdkafka's fatal errors, e.g. a fenced or
    /// unreleased group instance): retrying would hang the worker, so the role stops and its
    /// orchestrator starts a fresh process.
    pub fn is_fatal(&self) -> bool {
        matches!(self, QueueError::Receive(KafkaError::MessageConsumptionFatal(_)))
    }
}

impl From<QueueError> for ProcessError {
    fn from(e: QueueError) -> Self {
        ProcessError::Transient(Cause::of(e))
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn a_failed_produce_is_transient_and_keeps_the_kafka_error() {
        let e = QueueError::Produce {
            topic: "p.write".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        let text = e.to_string();
        let p = ProcessError::from(e);
        assert!(matches!(p, ProcessError::Transient(_)), "{p:?}");
        assert_eq!(p.to_string(), text);
        assert!(text.starts_with("producing to p.write: "), "{text}");
        let queue = p.source().and_then(|s| s.downcast_ref::<QueueError>()).expect("the queue error is the source");
        let kafka =
            queue.source().and_then(|s| s.downcast_ref::<KafkaError>()).expect("and the Kafka error its source");
        assert_eq!(kafka.rdkafka_error_code(), Some(RDKafkaErrorCode::MessageTimedOut));
    }

    #[test]
    fn only_a_fatal_consumption_error_is_fatal() {
        let fatal = QueueError::Receive(KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::UnreleasedInstanceId));
        assert!(fatal.is_fatal());
        let passing = QueueError::Receive(KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure));
        assert!(!passing.is_fatal());
    }
}
