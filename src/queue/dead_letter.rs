//! The `dead_letter` envelope. It keeps the original bytes exactly (base64) and, when they are
//! UTF-8, readably as text, with where they came from, which worker gave up and why. An operator
//! can fix the cause and replay it with `nexxus-worker dead-letter replay`.
//!
//! Bounded: an envelope must fit one Kafka record (the producer's `message.max.bytes`, 1,000,000
//! bytes by default), or its produce fails, is retried as transient, and the partition stalls
//! behind a message that was only ever meant to be set aside. So the text copy is kept only for
//! payloads up to [`TEXT_COPY_MAX`], the reason is cut at [`REASON_MAX`], and a payload over
//! [`PAYLOAD_MAX`] keeps its first bytes, its size and its SHA-256 (`truncated`), which replay
//! refuses rather than re-produce a different message.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::QueueError;
use super::outbox::Outbox;
use super::Record;
use crate::error::ProcessError;
use crate::model::clock;
use crate::telemetry;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    pub source: Source,
    /// `<type>-<index>` of the worker that rejected it.
    pub worker: String,
    pub reason: String,
    /// The original key, base64, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// The original bytes, base64: exact even when they are not UTF-8.
    pub payload_base64: String,
    /// The same bytes as text when they are valid UTF-8, for people reading the topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// When it was dead-lettered, milliseconds since the epoch.
    pub rejected_at_ms: i64,
    /// Set when `payload_base64` holds only the first [`PAYLOAD_MAX`] bytes of the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncated>,
}

/// What is kept of a payload too large to set aside whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Truncated {
    /// The original payload's size in bytes.
    pub size: usize,
    /// Hex SHA-256 of the original payload.
    pub sha256: String,
}

/// Payloads up to this size also get a text copy.
pub const TEXT_COPY_MAX: usize = 64 * 1024;
/// Payload bytes kept in an envelope (base64 makes 4/3 of it, well under 1,000,000 bytes).
pub const PAYLOAD_MAX: usize = 512 * 1024;
/// Longest reason kept, in bytes; reasons can quote the input they refuse.
pub const REASON_MAX: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Envelope {
    pub fn new(record: &Record<'_>, worker: &str, reason: &str) -> Self {
        let payload = record.payload;
        let (kept, truncated) = if payload.len() > PAYLOAD_MAX {
            let sha256 = Sha256::digest(payload).iter().map(|b| format!("{b:02x}")).collect();
            (&payload[..PAYLOAD_MAX], Some(Truncated { size: payload.len(), sha256 }))
        } else {
            (payload, None)
        };
        Envelope {
            source: Source { topic: record.topic.to_string(), partition: record.partition, offset: record.offset },
            worker: worker.to_string(),
            reason: cut(reason, REASON_MAX),
            // A key is an id: bounded by the producers (an oversize one is cut like the payload).
            key_base64: bounded_key(record.key).map(|k| B64.encode(k)),
            payload_base64: B64.encode(kept),
            payload: (payload.len() <= TEXT_COPY_MAX)
                .then(|| std::str::from_utf8(payload).ok())
                .flatten()
                .map(str::to_string),
            rejected_at_ms: clock::now_millis(),
            truncated,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The original (key, payload) bytes; an error for a truncated envelope, whose original is
    /// not here to replay.
    pub fn original(&self) -> Result<(Option<Vec<u8>>, Vec<u8>), QueueError> {
        if let Some(t) = &self.truncated {
            return Err(QueueError::Truncated { size: t.size, sha256: t.sha256.clone() });
        }
        let key = self
            .key_base64
            .as_deref()
            .map(|k| B64.decode(k))
            .transpose()
            .map_err(|source| QueueError::NotBase64 { field: "key_base64", source })?;
        let payload = B64
            .decode(&self.payload_base64)
            .map_err(|source| QueueError::NotBase64 { field: "payload_base64", source })?;
        Ok((key, payload))
    }
}

/// Sets `record` aside on `topic` (the full `dead_letter` name) with `reason`, through the
/// batch's outbox. A failed enqueue is transient: the record is retried rather than skipped, so
/// nothing is lost. Hostile input can be dead-lettered thousands of times a second, so the log
/// line is written once a second with the count of the others (every one is counted).
pub async fn send(
    out: &mut Outbox,
    topic: &str,
    record: &Record<'_>,
    worker: &str,
    reason: &str,
) -> Result<(), ProcessError> {
    let envelope = Envelope::new(record, worker, reason);
    if let Some(suppressed) = telemetry::gate::allow("dead_letter") {
        tracing::warn!(
            message = "message dead-lettered",
            topic = record.topic,
            partition = record.partition,
            offset = record.offset,
            reason = %envelope.reason,
            suppressed
        );
    }
    out.send(topic, bounded_key(record.key), &envelope.to_json(), &[("nexxus-reason", envelope.reason.as_bytes())])
        .await?;
    telemetry::dead_lettered(record.topic);
    Ok(())
}

/// The key a dead letter is produced with: the original's, cut at [`REASON_MAX`] bytes (a key
/// only spreads dead letters over partitions; the envelope keeps what it can of the original).
pub fn bounded_key(key: Option<&[u8]>) -> Option<&[u8]> {
    key.map(|k| &k[..k.len().min(REASON_MAX)])
}

/// `text` cut to at most `max` bytes, on a character boundary, marked when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_exact_bytes_and_readable_text() {
        let bytes = [0xff, 0x00, b'x'];
        let rec = Record {
            topic: "aggregation",
            partition: 3,
            offset: 42,
            key: Some(b"k1"),
            payload: &bytes,
            timestamp_ms: None,
        };
        let env = Envelope::new(&rec, "aggregation-0", "not JSON");
        assert_eq!(env.payload, None, "invalid UTF-8 has no text form");
        let back: Envelope = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(back.source, Source { topic: "aggregation".into(), partition: 3, offset: 42 });
        assert_eq!(back.original().unwrap(), (Some(b"k1".to_vec()), bytes.to_vec()));

        let rec = Record { payload: br#"{"op":"nope"}"#, key: None, ..rec };
        let env = Envelope::new(&rec, "aggregation-0", "unknown op");
        assert_eq!(env.payload.as_deref(), Some(r#"{"op":"nope"}"#));
        assert_eq!(env.key_base64, None);
    }

    #[test]
    fn an_envelope_always_fits_one_kafka_record() {
        let huge = vec![b'x'; 1 << 20];
        let reason = "é".repeat(100_000);
        let rec = Record {
            topic: "aggregation",
            partition: 0,
            offset: 1,
            key: Some(&huge),
            payload: &huge,
            timestamp_ms: None,
        };
        let env = Envelope::new(&rec, "aggregation-0", &reason);
        assert!(env.to_json().len() < 1_000_000, "{} bytes", env.to_json().len());
        assert!(env.reason.len() < REASON_MAX + 32 && env.reason.ends_with("(200000 bytes)"));
        assert_eq!(env.payload, None, "no text copy of a large payload");
        assert_eq!(env.truncated.as_ref().map(|t| t.size), Some(1 << 20));
        assert!(env.original().is_err(), "a truncated payload is not replayed");
        let back: Envelope = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(back, env);
    }
}
