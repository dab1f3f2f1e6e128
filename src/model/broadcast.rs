//! Broadcasts: ephemeral objects routed like a create but never stored (`POST /broadcast`,
//! `publish --broadcast`).
//!
//! A request names an application and an object with its model in `type`:
//!
//! ```json
//! {"application_id":"app1","object":{"type":"cursor","context_id":"c1","user_id":"u1","x":3}}
//! {"application_id":"app1","to":"application","object":{"type":"notice","text":"restart at 5"}}
//! ```
//!
//! It becomes a [`ChangeEvent`] with `ephemeral: true` on the `transport_manager` topic: a
//! create of that object at version 0, whose channels the transport manager derives from the
//! object as for a stored create (context, parent, user-scoped and id channels; filtered
//! variants whose filter the object matches), under the same read ACL. With
//! `"to":"application"` it reaches every connected device of the application instead, and only
//! for a model every device may read. Connected sockets only: nothing is stored, so a device
//! that is not connected misses it, and no push provider is woken for it.
//!
//! What a device receives (CONTRACT section 7 frames, a new event name):
//!
//! ```json
//! {"event":"broadcast","data":{"object":{...},"subscriptions":["blg:app1:context:c1:cursor"],
//!  "application_id":"app1","timestamp":1700000000000000}}
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::acl::{read_access, ReadAccess};
use super::channel::{affected_channels, ChannelKey};
use super::delivery::Delta;
use super::error::ModelError;
use super::event::{ChangeEvent, ChangeOp};
use super::schema::Application;

/// Who a broadcast reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The subscribers of the channels a create of the object would reach.
    Channels,
    /// Every connected device of the application.
    Application,
}

/// A decoded broadcast request.
#[derive(Debug, Clone, PartialEq)]
pub struct BroadcastRequest {
    pub application_id: String,
    pub object: Map<String, Value>,
    pub to: Audience,
}

/// Decodes a request (shape only; [`check_broadcast`] checks it against its application).
pub fn decode_broadcast_object(map: &Map<String, Value>) -> Result<BroadcastRequest, ModelError> {
    let application_id = match map.get("application_id") {
        Some(Value::String(a)) if !a.is_empty() => a.clone(),
        Some(_) => return Err(ModelError::wrong_type("application_id", "a non-empty string")),
        None => return Err(ModelError::missing("application_id")),
    };
    let object = match map.get("object") {
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(ModelError::wrong_type("object", "an object")),
        None => return Err(ModelError::missing("object")),
    };
    match object.get("type") {
        Some(Value::String(_)) => {}
        Some(_) => return Err(ModelError::wrong_type("object.type", "a string")),
        None => return Err(ModelError::missing("object.type")),
    }
    if let Some(found) = object.get("application_id") {
        if found.as_str() != Some(application_id.as_str()) {
            return Err(ModelError::ApplicationMismatch {
                field: "object.application_id".into(),
                expected: application_id,
                found: found.to_string(),
            });
        }
    }
    let to = match map.get("to").map(|v| v.as_str()) {
        None | Some(Some("channels")) => Audience::Channels,
        Some(Some("application")) => Audience::Application,
        Some(_) => return Err(ModelError::wrong_type("to", "\"channels\" or \"application\"")),
    };
    Ok(BroadcastRequest { application_id, object, to })
}

impl BroadcastRequest {
    pub fn model(&self) -> &str {
        self.object.get("type").and_then(Value::as_str).unwrap_or_default()
    }

    /// The `transport_manager` record: `id` names this broadcast (unique, see [`broadcast_id`]),
    /// `timestamp` is when it was accepted (µs). Channels are left for the transport manager.
    pub fn into_event(self, id: String, timestamp: u64) -> ChangeEvent {
        ChangeEvent {
            application_id: self.application_id,
            op: ChangeOp::Create,
            model: self.object.get("type").and_then(Value::as_str).unwrap_or_default().to_owned(),
            id,
            before: None,
            after: Some(self.object),
            patches: Vec::new(),
            version: 0,
            timestamp,
            channels: Vec::new(),
            broadcast: self.to == Audience::Application,
            ephemeral: true,
        }
    }

    /// Accepted now: its key and its `transport_manager` event, under a fresh [`broadcast_id`]
    /// and the current time (the ingress and `publish --broadcast` both call this).
    pub fn accept(self) -> (String, ChangeEvent) {
        let id = broadcast_id(super::clock::now_nanos());
        let key = self.partition_key(&id).to_owned();
        (key, self.into_event(id, super::clock::now_micros()))
    }

    /// The partition key: the object's id when it names one (broadcasts about one object stay
    /// in order), else the broadcast's own id.
    pub fn partition_key<'a>(&'a self, id: &'a str) -> &'a str {
        self.object.get("id").and_then(Value::as_str).unwrap_or(id)
    }
}

/// The channels a broadcast of `object` reaches: those of a create of it. The one rule for the
/// ingress (to refuse what would reach no model) and the transport manager (to route).
pub fn broadcast_channels(app: &Application, object: &Map<String, Value>) -> Result<Vec<ChannelKey>, ModelError> {
    affected_channels(&app.id, object, &app.schema)
}

/// Checks a request against its application: a model the schema declares (or a built-in one),
/// an object on at least one channel, and for the whole application, a model every device may
/// read.
pub fn check_broadcast(request: &BroadcastRequest, app: &Application) -> Result<(), ModelError> {
    let channels = broadcast_channels(app, &request.object)?;
    if request.to == Audience::Channels && channels.is_empty() {
        return Err(ModelError::InvalidChannel {
            reason: "the object names no channel (no id, context_id, user_id or parent id): nobody could receive it",
        });
    }
    if request.to == Audience::Application && read_access(&app.schema, request.model(), true) != ReadAccess::All {
        return Err(ModelError::InvalidApplication {
            reason: format!(
                "a broadcast to the whole application needs a model every device may read; `{}` has a read_acl",
                request.model()
            ),
        });
    }
    Ok(())
}

/// A unique id for a broadcast accepted by this process: the time, the process and a sequence.
pub fn broadcast_id(now_nanos: u128) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("b{now_nanos:x}{:x}{seq:x}", std::process::id())
}

/// What a device receives for a broadcast: the `data` of its `broadcast` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BroadcastDelivery {
    pub object: Map<String, Value>,
    pub subscriptions: Vec<ChannelKey>,
    pub application_id: String,
    pub timestamp: u64,
}

impl BroadcastDelivery {
    /// From the create delta a broadcast plans into (the object, and the channels it holds).
    pub fn of(delta: &Delta) -> BroadcastDelivery {
        BroadcastDelivery {
            object: delta.object.clone().unwrap_or_default(),
            subscriptions: delta.subscriptions.clone(),
            application_id: delta.application_id.clone(),
            timestamp: delta.timestamp,
        }
    }

    /// The same, keeping only the channels `holds` accepts, or `None` if none is left.
    pub fn narrowed(&self, holds: impl Fn(&ChannelKey) -> bool) -> Option<BroadcastDelivery> {
        let subscriptions: Vec<ChannelKey> = self.subscriptions.iter().filter(|k| holds(k)).cloned().collect();
        (!subscriptions.is_empty()).then(|| BroadcastDelivery { subscriptions, ..self.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn requests_decode_or_name_what_is_wrong() {
        let ok =
            decode_broadcast_object(&map(json!({"application_id": "a", "object": {"type": "cursor", "id": "o1"}})));
        let ok = ok.expect("valid");
        assert_eq!((ok.to, ok.model(), ok.partition_key("b1")), (Audience::Channels, "cursor", "o1"));
        let all = json!({"application_id": "a", "to": "application", "object": {"type": "notice"}});
        let all = decode_broadcast_object(&map(all)).expect("valid");
        assert_eq!((all.to, all.partition_key("b1")), (Audience::Application, "b1"));
        for (bad, reason) in [
            (json!({"object": {"type": "t"}}), "`application_id` is missing"),
            (json!({"application_id": "a"}), "`object` is missing"),
            (json!({"application_id": "a", "object": []}), "`object` must be an object"),
            (json!({"application_id": "a", "object": {}}), "`object.type` is missing"),
            (json!({"application_id": "a", "object": {"type": "t"}, "to": "all"}), "`to` must be"),
            (json!({"application_id": "a", "object": {"type": "t", "application_id": "b"}}), "says application"),
        ] {
            let err = decode_broadcast_object(&map(bad)).expect_err(reason).to_string();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn an_event_is_an_unstored_create_and_ids_never_repeat() {
        let req = decode_broadcast_object(&map(json!({"application_id": "a", "object": {"type": "cursor", "x": 1}})));
        let event = req.expect("valid").into_event("b1".into(), 7);
        assert!(event.ephemeral && !event.broadcast && event.channels.is_empty());
        assert_eq!(
            (event.op, event.version, event.model.as_str(), event.timestamp),
            (ChangeOp::Create, 0, "cursor", 7)
        );
        let encoded = serde_json::to_value(&event).unwrap_or_default();
        assert_eq!(encoded["ephemeral"], true);
        assert_ne!(broadcast_id(1), broadcast_id(1));
    }
}
