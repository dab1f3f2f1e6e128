//! The records of the transport topics (`ios_transport`, `android_transport`,
//! `sockets_transport-<i>`, `sockets_transport`), in the three forms their two sides need.
//!
//! - [`TransportMessage`]: fully decoded, for the push transports, which split the delivery
//!   into provider payloads.
//! - [`EncodedBatch`] + [`encode_transport_message`]: the transport manager's side. A delivery
//!   is serialised once, however many devices (and so messages of at most a bounded number of
//!   devices) receive it; each message only wraps those bytes.
//! - [`RawTransportMessage`]: the sockets transport's side. The delivery stays the slice of
//!   the record it arrived in, checked for shape but not decoded, and becomes the socket frame
//!   by wrapping (see `transport::ws::protocol::message`).
//!
//! All three serialise byte for byte alike: `EncodedBatch` is `serde_json`'s compact output of
//! the same [`DeliveryBatch`], and the raw value of a record is what the transport manager
//! wrote.
//!
//! A message to a sockets transport addresses its devices in one of two ways: by `devices`, a
//! list (every push message, and small socket audiences), or by `channels`, the channel keys
//! whose members on that transport receive it, each with a [`MembersDigest`] of those members
//! as the transport manager read them; the transport resolves them to its own connections
//! (see `transport::ws::channels`).

use schemars::JsonSchema;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

pub use super::members::MembersDigest;

use super::broadcast::BroadcastDelivery;
use super::delivery::{DeliveryBatch, DeltaOp};

/// One recipient of a [`TransportMessage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Recipient {
    pub device_id: String,
    /// Push token (ios/android) or socket token (sockets).
    pub token: String,
}

/// What the transport manager sends to `ios_transport`, `android_transport`,
/// `sockets_transport-<i>` and `sockets_transport` (broadcasts), keyed by object id:
///
/// ```json
/// {"application_id":"app1","object_id":"<id>","version":7,"timestamp":1700000000000001,
///  "devices":[{"device_id":"d1","token":"..."}],
///  "message":{"new":[Delta],"updated":[Delta],"deleted":[Delta]}}
/// ```
///
/// Every device listed receives exactly `message` (devices whose deltas differ, because they
/// hold different channels or filters, are in different messages). At most a bounded number of
/// devices per message; a broadcast has `devices` empty and `broadcast: true`: every connected
/// device of the application.
///
/// Addressed by channel (sockets transports only; the field is absent otherwise, so such
/// records are byte for byte what they were before it existed):
///
/// ```json
/// {"application_id":"app1","object_id":"<id>","version":7,"timestamp":1700000000000001,
///  "devices":[],"channels":[{"key":"blg:app1:context:c1:task","members":"<32 hex digits>"}],
///  "broadcast":false,"message":{"new":[Delta],"updated":[Delta],"deleted":[Delta]}}
/// ```
///
/// `message` is then the delivery for a device holding every channel listed; each of the
/// transport's devices on at least one of them receives it narrowed to the channels it holds
/// ([`crate::model::Delta::narrowed`]), once, whatever the number of its channels. `members`
/// is the [`MembersDigest`] of the channel's members on that transport when the transport
/// manager read them, so the transport knows whether its own view of the channel is that one.
/// A sockets transport older than this field ignores it and delivers such a message to no
/// one: upgrade the sockets transports before the transport manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TransportMessage {
    pub application_id: String,
    pub object_id: String,
    pub version: u64,
    pub timestamp: u64,
    #[serde(default)]
    pub devices: Vec<Recipient>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelRef>,
    #[serde(default)]
    pub broadcast: bool,
    pub message: DeliveryBatch,
}

/// A channel a message is addressed to, with a digest of its members on the destination
/// transport as the transport manager read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChannelRef {
    pub key: String,
    pub members: MembersDigest,
}

/// A [`DeliveryBatch`] serialised once, to be wrapped by every message that carries it.
#[derive(Debug, Clone)]
pub struct EncodedBatch(Box<RawValue>);

impl EncodedBatch {
    /// Fails only on a bug in our types (they hold string-keyed maps, strings and integers).
    pub fn encode(batch: &DeliveryBatch) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(batch).map(EncodedBatch)
    }

    /// A broadcast's delivery, carried by a message with `ephemeral: true`.
    pub fn encode_broadcast(delivery: &BroadcastDelivery) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(delivery).map(EncodedBatch)
    }

    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

/// The header fields of a [`TransportMessage`]: the change it delivers.
#[derive(Debug, Clone, Copy)]
pub struct TransportHeader<'a> {
    pub application_id: &'a str,
    pub object_id: &'a str,
    pub version: u64,
    pub timestamp: u64,
    /// A broadcast's delivery ([`BroadcastDelivery`]) rather than a [`DeliveryBatch`].
    pub ephemeral: bool,
}

/// Whom a [`TransportMessage`] addresses: `devices`, `channels` (sockets only) or, with
/// both empty and `broadcast`, every connected device of the application.
#[derive(Debug, Clone, Copy)]
pub struct Addressed<'a> {
    pub devices: &'a [Recipient],
    pub channels: &'a [ChannelRef],
    pub broadcast: bool,
}

/// The bytes of the [`TransportMessage`] `header` + `to` + `batch`.
pub fn encode_transport_message(
    header: &TransportHeader<'_>,
    to: Addressed<'_>,
    batch: &EncodedBatch,
) -> Result<Vec<u8>, serde_json::Error> {
    // The field order of `TransportMessage`, so the bytes are the ones its derive writes.
    #[derive(Serialize)]
    struct Wire<'a> {
        application_id: &'a str,
        object_id: &'a str,
        version: u64,
        timestamp: u64,
        devices: &'a [Recipient],
        #[serde(skip_serializing_if = "<[ChannelRef]>::is_empty")]
        channels: &'a [ChannelRef],
        broadcast: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
        message: &'a RawValue,
    }
    serde_json::to_vec(&Wire {
        application_id: header.application_id,
        object_id: header.object_id,
        version: header.version,
        timestamp: header.timestamp,
        devices: to.devices,
        channels: to.channels,
        broadcast: to.broadcast,
        ephemeral: header.ephemeral,
        message: batch.as_raw(),
    })
}

/// A [`TransportMessage`] whose `message` is left as the record's own bytes.
#[derive(Debug, Deserialize)]
pub struct RawTransportMessage<'a> {
    pub application_id: String,
    pub object_id: String,
    pub version: u64,
    pub timestamp: u64,
    #[serde(default)]
    pub devices: Vec<Recipient>,
    #[serde(default)]
    pub channels: Vec<ChannelRef>,
    #[serde(default)]
    pub broadcast: bool,
    /// `message` is a [`BroadcastDelivery`], framed as `broadcast` (sockets transports only).
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(borrow)]
    pub message: &'a RawValue,
}

impl<'a> RawTransportMessage<'a> {
    /// Decodes the header and checks that `message` has a delivery's shape (the required
    /// fields of every delta, of the right types) without building it: what is refused here
    /// is what a full decode would refuse, short of the insides of objects and patches.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        let msg: RawTransportMessage<'a> = serde_json::from_slice(bytes)?;
        match msg.ephemeral {
            false => serde_json::from_str::<BatchShape>(msg.message.get()).map(drop)?,
            true => serde_json::from_str::<BroadcastShape>(msg.message.get()).map(drop)?,
        }
        Ok(msg)
    }
}

/// [`BroadcastDelivery`] read for its shape only.
#[derive(Deserialize)]
struct BroadcastShape {
    #[serde(rename = "object")]
    _object: AnyObject,
    #[serde(rename = "subscriptions")]
    _subscriptions: Vec<AnyString>,
    #[serde(rename = "application_id")]
    _application_id: AnyString,
    #[serde(rename = "timestamp")]
    _timestamp: u64,
}

/// [`DeliveryBatch`] read for its shape only: nothing is allocated for objects or patches.
#[derive(Deserialize)]
struct BatchShape {
    #[serde(rename = "new")]
    _new: Vec<DeltaShape>,
    #[serde(rename = "updated")]
    _updated: Vec<DeltaShape>,
    #[serde(rename = "deleted")]
    _deleted: Vec<DeltaShape>,
}

#[derive(Deserialize)]
struct DeltaShape {
    #[serde(rename = "op")]
    _op: DeltaOp,
    #[serde(rename = "object", default)]
    _object: Option<AnyObject>,
    #[serde(rename = "patch", default)]
    _patch: Option<AnyObject>,
    #[serde(rename = "subscriptions")]
    _subscriptions: Vec<AnyString>,
    #[serde(rename = "application_id")]
    _application_id: AnyString,
    #[serde(rename = "timestamp")]
    _timestamp: u64,
    #[serde(rename = "version")]
    _version: u64,
}

/// A JSON string, not kept.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AnyString;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object, not kept.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::*;
    use crate::model::delivery::Delta;
    use crate::model::ChannelKey;

    fn batch() -> DeliveryBatch {
        let object: Map<String, Value> =
            serde_json::from_value(json!({"id":"t1","type":"task","title":"é \"quoted\"","n":1.5,"z":0,"a":[1]}))
                .unwrap_or_default();
        [DeltaOp::Create, DeltaOp::Delete]
            .into_iter()
            .map(|op| Delta {
                op,
                object: Some(object.clone()),
                patch: None,
                subscriptions: vec![ChannelKey::from_stored("blg:app1:context:c1:task".into())],
                application_id: "app1".into(),
                timestamp: 1_700_000_000_000_001,
                version: 7,
            })
            .collect()
    }

    #[test]
    fn an_encoded_message_is_the_bytes_of_the_decoded_one() {
        let batch = batch();
        let devices = vec![Recipient { device_id: "d1".into(), token: "t\u{1}".into() }];
        let typed = TransportMessage {
            application_id: "app1".into(),
            object_id: "t1".into(),
            version: 7,
            timestamp: 9,
            devices: devices.clone(),
            channels: Vec::new(),
            broadcast: false,
            message: batch.clone(),
        };
        let header =
            TransportHeader { application_id: "app1", object_id: "t1", version: 7, timestamp: 9, ephemeral: false };
        let encoded = EncodedBatch::encode(&batch).map_err(|e| e.to_string());
        let bytes = encoded.and_then(|b| {
            encode_transport_message(&header, Addressed { devices: &devices, channels: &[], broadcast: false }, &b)
                .map_err(|e| e.to_string())
        });
        assert_eq!(bytes, serde_json::to_vec(&typed).map_err(|e| e.to_string()));

        let bytes = bytes.unwrap_or_default();
        let raw = RawTransportMessage::decode(&bytes).map_err(|e| e.to_string());
        let message = raw.map(|m| m.message.get().to_owned());
        assert_eq!(message, serde_json::to_string(&batch).map_err(|e| e.to_string()), "the delivery's own bytes");
    }

    #[test]
    fn a_channel_addressed_message_is_the_bytes_of_the_decoded_one_and_old_records_still_decode() {
        let batch = batch();
        let channels = vec![ChannelRef {
            key: "blg:app1:context:c1:task".into(),
            members: MembersDigest::of(["sockets_transport-0|d1|life|app1", "sockets_transport-0|d2|life|app1"]),
        }];
        let typed = TransportMessage {
            application_id: "app1".into(),
            object_id: "t1".into(),
            version: 7,
            timestamp: 9,
            devices: Vec::new(),
            channels: channels.clone(),
            broadcast: false,
            message: batch.clone(),
        };
        let header =
            TransportHeader { application_id: "app1", object_id: "t1", version: 7, timestamp: 9, ephemeral: false };
        let to = Addressed { devices: &[], channels: &channels, broadcast: false };
        let bytes = EncodedBatch::encode(&batch)
            .and_then(|b| encode_transport_message(&header, to, &b))
            .map_err(|e| e.to_string());
        assert_eq!(bytes, serde_json::to_vec(&typed).map_err(|e| e.to_string()));
        let bytes = bytes.unwrap_or_default();
        let raw = RawTransportMessage::decode(&bytes).map_err(|e| e.to_string());
        assert_eq!(raw.map(|m| m.channels), Ok(channels));

        // A record written before `channels` existed: no such field, addressed by devices.
        let old = r#"{"application_id":"a","object_id":"o","version":1,"timestamp":1,"devices":[],"broadcast":true,
            "message":{"new":[],"updated":[],"deleted":[]}}"#;
        let decoded = serde_json::from_str::<TransportMessage>(old).map_err(|e| e.to_string());
        assert_eq!(decoded.map(|m| (m.channels.is_empty(), m.broadcast)), Ok((true, true)));
    }

    #[test]
    fn a_delivery_of_the_wrong_shape_is_refused_as_a_full_decode_would() {
        let good = json!({"op":"create","object":{"id":"t1"},"subscriptions":[],"application_id":"a",
            "timestamp":1,"version":1});
        let wrap = |message: Value| {
            json!({"application_id":"a","object_id":"o","version":1,"timestamp":1,"message":message}).to_string()
        };
        let ok = wrap(json!({"new":[good],"updated":[],"deleted":[]}));
        assert!(RawTransportMessage::decode(ok.as_bytes()).is_ok());
        for bad in [
            json!([]),
            json!({"new":[],"updated":[]}),
            json!({"new":[{"op":"create"}],"updated":[],"deleted":[]}),
            json!({"new":[{"op":"move","subscriptions":[],"application_id":"a","timestamp":1,"version":1}],
                   "updated":[],"deleted":[]}),
            json!({"new":[],"updated":[{"op":"update","subscriptions":[],"application_id":"a",
                   "timestamp":-1,"version":1}],"deleted":[]}),
            json!({"new":[],"updated":[],"deleted":[{"op":"delete","subscriptions":[1],"application_id":"a",
                   "timestamp":1,"version":1}]}),
            json!({"new":[{"op":"create","object":[],"subscriptions":[],"application_id":"a",
                   "timestamp":1,"version":1}],"updated":[],"deleted":[]}),
        ] {
            let text = wrap(bad.clone());
            assert!(RawTransportMessage::decode(text.as_bytes()).is_err(), "{bad}");
            assert!(serde_json::from_str::<TransportMessage>(&text).is_err(), "a full decode refuses {bad} too");
        }
    }
}
