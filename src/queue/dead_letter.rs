//! The `dead_letter` envelope. It keeps the original bytes exactly (base64) and, when they are
//! UTF-8, readably as text, with where they came from, which worker gave up and why. An operator
//! can fix the cause and replay it with `nexxus-worker dead-letter replay`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::Record;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Envelope {
    pub fn new(record: &Record<'_>, worker: &str, reason: &str) -> Self {
        Envelope {
            source: Source { topic: record.topic.to_string(), partition: record.partition, offset: record.offset },
            worker: worker.to_string(),
            reason: reason.to_string(),
            key_base64: record.key.map(|k| B64.encode(k)),
            payload_base64: B64.encode(record.payload),
            payload: std::str::from_utf8(record.payload).ok().map(str::to_string),
            rejected_at_ms: now_ms(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The original (key, payload) bytes.
    pub fn original(&self) -> Result<(Option<Vec<u8>>, Vec<u8>), base64::DecodeError> {
        let key = self.key_base64.as_deref().map(|k| B64.decode(k)).transpose()?;
        Ok((key, B64.decode(&self.payload_base64)?))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
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
}
