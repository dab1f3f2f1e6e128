//! Partition keys: records that must stay in order share a key, so a partition, from the first
//! hop on. Everything about one object is keyed by the object's id: the aggregation message,
//! the write records made of it (a cascading delete by its child's id), the change events and
//! the transport messages. A track command is keyed by its device's id.

use serde_json::Value;

use super::event::{ChangeEvent, WriteRecord};
use super::transport_message::TransportMessage;

impl WriteRecord {
    pub fn partition_key(&self) -> &[u8] {
        self.id.as_bytes()
    }
}

impl ChangeEvent {
    pub fn partition_key(&self) -> &[u8] {
        self.id.as_bytes()
    }
}

impl TransportMessage {
    pub fn partition_key(&self) -> &[u8] {
        self.object_id.as_bytes()
    }
}

/// The key of a message for `aggregation` or `track`, read from its JSON before it is decoded
/// (`publish` keys any line, valid or not): the object id of an aggregation message
/// (`object.id`, or the id in the first patch path `model/id/field`), else the device id of a
/// track command.
pub fn message_key(msg: &Value) -> Option<String> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    text(msg.pointer("/object/id"))
        .or_else(|| {
            msg.pointer("/patches/0/path")
                .and_then(Value::as_str)
                .and_then(|p| p.split('/').nth(1))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
        .or_else(|| text(msg.get("device_id")))
        .or_else(|| text(msg.pointer("/device/id")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_follow_the_object_or_device() {
        assert_eq!(message_key(&json!({"op":"create","object":{"id":"o1","type":"task"}})), Some("o1".into()));
        assert_eq!(message_key(&json!({"op":"create","object":{"type":"task"}})), None);
        assert_eq!(
            message_key(&json!({"op":"update","patches":[{"op":"replace","path":"task/t9/title","value":"x"}]})),
            Some("t9".into())
        );
        assert_eq!(message_key(&json!({"op":"delete","object":{"model":"task","id":"t2"}})), Some("t2".into()));
        assert_eq!(message_key(&json!({"op":"subscribe","device_id":"d1"})), Some("d1".into()));
        assert_eq!(message_key(&json!({"op":"device_register","device":{"id":"d2"}})), Some("d2".into()));
        assert_eq!(message_key(&json!({"op":"update","patches":"nonsense"})), None);
    }

    #[test]
    fn a_message_and_its_write_records_share_the_key() {
        let position = crate::model::SourcePosition { topic: "aggregation".into(), partition: 0, offset: 9 };
        for msg in [
            json!({"op":"create","object":{"id":"o1","type":"task"},"application_id":"a","timestamp":1}),
            json!({"op":"update","patches":[{"op":"increment","path":"task/t9/votes","value":1}],"application_id":"a","timestamp":1}),
            json!({"op":"delete","object":{"model":"task","id":"t2"},"application_id":"a","timestamp":1}),
        ] {
            let decoded = crate::model::AggregatorMessage::decode(msg.to_string().as_bytes()).unwrap();
            let records = WriteRecord::from_message(decoded, &position);
            let key = message_key(&msg).unwrap();
            assert!(records.iter().all(|r| r.partition_key() == key.as_bytes()), "{msg}");
        }
    }
}
