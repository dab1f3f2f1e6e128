//! Messages on the `aggregation` topic (CONTRACT section 4), decoded and validated.
//!
//! Decoding goes through a `serde_json::Value` first and then checks each field by hand: the
//! point is one precise [`ModelError`] per defect (`patches[2].path`, not "data did not match
//! any variant"), because that text becomes the `dead_letter` reason. Unknown fields are
//! ignored so that newer producers do not break older workers.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::error::ModelError;
use super::id::validate_ident;
use super::json::{opt_str, req_obj, req_str};

/// Default bound on the size of one input message (1 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Most patches one `update` message may carry; beyond, the message is rejected whole (one dead
/// letter), before any part of it reaches a writer.
pub const MAX_PATCHES_PER_MESSAGE: usize = 1_000;
const TOO_MANY_PATCHES: &str = "an array of at most 1000 patches";

/// Most distinct objects one `update` message may patch. Each object's part is applied (or
/// rejected) on its own by the object's writer, so this bounds the dead letters one message can
/// cause.
pub const MAX_OBJECTS_PER_MESSAGE: usize = 100;
const TOO_MANY_OBJECTS: &str = "patches of at most 100 distinct objects";

/// Object fields no patch may touch (Telepat's `Delta.processObject` list).
pub const IMMUTABLE_FIELDS: [&str; 6] = ["id", "type", "created", "modified", "application_id", "context_id"];

/// A patch operation of Telepat's dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatchOp {
    Replace,
    Increment,
    Append,
    Remove,
}

impl PatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            PatchOp::Replace => "replace",
            PatchOp::Increment => "increment",
            PatchOp::Append => "append",
            PatchOp::Remove => "remove",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "replace" => PatchOp::Replace,
            "increment" => PatchOp::Increment,
            "append" => PatchOp::Append,
            "remove" => PatchOp::Remove,
            _ => return None,
        })
    }
}

/// Identifies one object of an application: its model and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub model: String,
    pub id: String,
}

/// A patch path `<model>/<objectId>/<field>`; serialized as that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatchPath {
    pub model: String,
    pub id: String,
    pub field: String,
}

impl PatchPath {
    /// Parses and validates `<model>/<id>/<field>`; the field may not be immutable.
    pub fn parse(path: &str) -> Result<Self, ModelError> {
        let bad = |reason| ModelError::InvalidPath { path: path.to_owned(), reason };
        let mut parts = path.split('/');
        let (Some(model), Some(id), Some(field), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("it needs exactly three `/`-separated segments"));
        };
        if validate_ident("model", model).is_err() {
            return Err(bad("the model segment is not a valid identifier"));
        }
        if validate_ident("id", id).is_err() {
            return Err(bad("the id segment is not a valid identifier"));
        }
        if validate_ident("field", field).is_err() {
            return Err(bad("the field segment is not a valid identifier"));
        }
        if IMMUTABLE_FIELDS.contains(&field) {
            return Err(ModelError::ImmutableField { field: field.to_owned() });
        }
        Ok(PatchPath { model: model.to_owned(), id: id.to_owned(), field: field.to_owned() })
    }

    pub fn object(&self) -> ObjectRef {
        ObjectRef { model: self.model.clone(), id: self.id.clone() }
    }
}

impl std::fmt::Display for PatchPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.model, self.id, self.field)
    }
}

impl Serialize for PatchPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for PatchPath {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PatchPath".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[^/]+/[^/]+/[^/]+$",
            "description": "`<model>/<object id>/<field>`; the field is not one of the immutable ones"
        })
    }
}

impl<'de> Deserialize<'de> for PatchPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PatchPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One patch: `{"op","path","value","user_id"?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Patch {
    pub op: PatchOp,
    pub path: PatchPath,
    pub value: Value,
    /// The author to check against the model's author ACL; never forwarded to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl Patch {
    /// Returns the patch as clients see it, without `user_id` (Telepat removed it too).
    pub fn for_clients(&self) -> Patch {
        Patch { user_id: None, ..self.clone() }
    }

    fn decode(value: &Value, at: &str, fallback_user: Option<&str>) -> Result<Self, ModelError> {
        let Value::Object(map) = value else {
            return Err(ModelError::wrong_type(at, "an object"));
        };
        let op_s = req_str(map, "op", &format!("{at}.op"))?;
        let op = PatchOp::parse(op_s)
            .ok_or_else(|| ModelError::UnknownOp { op: op_s.to_owned(), topic: "aggregation (patch)" })?;
        let path = PatchPath::parse(req_str(map, "path", &format!("{at}.path"))?)?;
        let value = map.get("value").cloned().ok_or_else(|| ModelError::missing(format!("{at}.value")))?;
        if op == PatchOp::Increment && !value.is_number() {
            return Err(ModelError::wrong_type(format!("{at}.value"), "a number"));
        }
        let user_id = match opt_str(map, "user_id", &format!("{at}.user_id"))? {
            Some(u) => Some(u),
            None => fallback_user,
        };
        if let Some(u) = user_id {
            validate_ident(&format!("{at}.user_id"), u)?;
        }
        Ok(Patch { op, path, value, user_id: user_id.map(str::to_owned) })
    }
}

/// `{"op":"create",...}`: a new object, with or without an id.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateMessage {
    pub application_id: String,
    pub timestamp: u64,
    /// `object.type`.
    pub model: String,
    /// `object.id` when the producer chose one; otherwise see [`super::id::object_id_from_position`].
    pub id: Option<String>,
    /// The whole object, with `application_id` filled in.
    pub object: Map<String, Value>,
}

/// `{"op":"update","patches":[...]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateMessage {
    pub application_id: String,
    pub timestamp: u64,
    /// Never empty. Patches may target several objects; see [`UpdateMessage::by_object`].
    pub patches: Vec<Patch>,
    /// Telepat's admin "already applied" flag; carried, not acted upon here.
    pub instant: bool,
}

impl UpdateMessage {
    /// Groups patches by target object, in order of first appearance, keeping patch order.
    pub fn by_object(&self) -> Vec<(ObjectRef, Vec<Patch>)> {
        let mut groups: Vec<(ObjectRef, Vec<Patch>)> = Vec::new();
        let mut index: std::collections::HashMap<ObjectRef, usize> = std::collections::HashMap::new();
        for p in &self.patches {
            let i = *index.entry(p.path.object()).or_insert_with(|| {
                groups.push((p.path.object(), Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(p.clone());
        }
        groups
    }
}

/// `{"op":"delete","object":{"model","id"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteMessage {
    pub application_id: String,
    pub timestamp: u64,
    pub object: ObjectRef,
    pub user_id: Option<String>,
}

/// A validated message from the `aggregation` topic.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregatorMessage {
    Create(CreateMessage),
    Update(UpdateMessage),
    Delete(DeleteMessage),
}

impl AggregatorMessage {
    /// Decodes with the default size bound.
    pub fn decode(bytes: &[u8]) -> Result<Self, ModelError> {
        decode_aggregation(bytes, DEFAULT_MAX_MESSAGE_BYTES)
    }

    pub fn application_id(&self) -> &str {
        match self {
            AggregatorMessage::Create(m) => &m.application_id,
            AggregatorMessage::Update(m) => &m.application_id,
            AggregatorMessage::Delete(m) => &m.application_id,
        }
    }

    pub fn timestamp(&self) -> u64 {
        match self {
            AggregatorMessage::Create(m) => m.timestamp,
            AggregatorMessage::Update(m) => m.timestamp,
            AggregatorMessage::Delete(m) => m.timestamp,
        }
    }

    pub fn op(&self) -> &'static str {
        match self {
            AggregatorMessage::Create(_) => "create",
            AggregatorMessage::Update(_) => "update",
            AggregatorMessage::Delete(_) => "delete",
        }
    }
}

/// Parses `bytes` as JSON after checking the size bound.
pub(crate) fn parse_json_object(bytes: &[u8], max_bytes: usize) -> Result<Map<String, Value>, ModelError> {
    if bytes.len() > max_bytes {
        return Err(ModelError::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ModelError::wrong_type("message", "a JSON object")),
        Err(e) => Err(ModelError::InvalidJson(e.to_string())),
    }
}

/// Reads `application_id`, required on every input message.
pub(crate) fn application_id(map: &Map<String, Value>) -> Result<String, ModelError> {
    let app = req_str(map, "application_id", "application_id")?;
    validate_ident("application_id", app)?;
    Ok(app.to_owned())
}

fn timestamp(map: &Map<String, Value>) -> Result<u64, ModelError> {
    match map.get("timestamp") {
        None | Some(Value::Null) => Err(ModelError::missing("timestamp")),
        Some(Value::Number(n)) => {
            n.as_u64().ok_or_else(|| ModelError::wrong_type("timestamp", "a non-negative integer (microseconds)"))
        }
        Some(_) => Err(ModelError::wrong_type("timestamp", "a non-negative integer (microseconds)")),
    }
}

fn opt_ident(map: &Map<String, Value>, key: &str, field: &str) -> Result<(), ModelError> {
    if let Some(v) = opt_str(map, key, field)? {
        validate_ident(field, v)?;
    }
    Ok(())
}

/// Decodes and validates one `aggregation` message of at most `max_bytes` bytes.
pub fn decode_aggregation(bytes: &[u8], max_bytes: usize) -> Result<AggregatorMessage, ModelError> {
    decode_aggregation_object(&parse_json_object(bytes, max_bytes)?)
}

/// Validates one `aggregation` message its caller parsed (and bounded in size) itself: the HTTP
/// ingress, which produces the bytes it parsed rather than a re-serialisation.
pub fn decode_aggregation_object(map: &Map<String, Value>) -> Result<AggregatorMessage, ModelError> {
    let op = req_str(map, "op", "op")?;
    let application_id = application_id(map)?;
    let timestamp = timestamp(map)?;
    let user_id = opt_str(map, "user_id", "user_id")?;
    if let Some(u) = user_id {
        validate_ident("user_id", u)?;
    }

    match op {
        "create" => {
            let mut object = req_obj(map, "object", "object")?.clone();
            let model = req_str(&object, "type", "object.type")?.to_owned();
            validate_ident("object.type", &model)?;
            let id = opt_str(&object, "id", "object.id")?.map(str::to_owned);
            if let Some(id) = &id {
                validate_ident("object.id", id)?;
            }
            opt_ident(&object, "context_id", "object.context_id")?;
            opt_ident(&object, "user_id", "object.user_id")?;
            match opt_str(&object, "application_id", "object.application_id")? {
                Some(found) if found != application_id => {
                    return Err(ModelError::ApplicationMismatch {
                        field: "object.application_id".into(),
                        expected: application_id,
                        found: found.to_owned(),
                    })
                }
                Some(_) => {}
                None => {
                    object.insert("application_id".into(), Value::String(application_id.clone()));
                }
            }
            Ok(AggregatorMessage::Create(CreateMessage { application_id, timestamp, model, id, object }))
        }
        "update" => {
            let patches = match map.get("patches") {
                None | Some(Value::Null) => return Err(ModelError::missing("patches")),
                Some(Value::Array(items)) => items,
                Some(_) => return Err(ModelError::wrong_type("patches", "an array")),
            };
            if patches.is_empty() {
                return Err(ModelError::EmptyPatches);
            }
            // Checked before decoding any patch: a huge list costs no more than a bad one.
            if patches.len() > MAX_PATCHES_PER_MESSAGE {
                return Err(ModelError::wrong_type("patches", TOO_MANY_PATCHES));
            }
            let patches = patches
                .iter()
                .enumerate()
                .map(|(i, p)| Patch::decode(p, &format!("patches[{i}]"), user_id))
                .collect::<Result<Vec<_>, _>>()?;
            let objects: std::collections::HashSet<(&str, &str)> =
                patches.iter().map(|p| (p.path.model.as_str(), p.path.id.as_str())).collect();
            if objects.len() > MAX_OBJECTS_PER_MESSAGE {
                return Err(ModelError::wrong_type("patches", TOO_MANY_OBJECTS));
            }
            let instant = match map.get("instant") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ModelError::wrong_type("instant", "a boolean")),
            };
            Ok(AggregatorMessage::Update(UpdateMessage { application_id, timestamp, patches, instant }))
        }
        "delete" => {
            let object = req_obj(map, "object", "object")?;
            let model = req_str(object, "model", "object.model")?;
            validate_ident("object.model", model)?;
            let id = req_str(object, "id", "object.id")?;
            validate_ident("object.id", id)?;
            Ok(AggregatorMessage::Delete(DeleteMessage {
                application_id,
                timestamp,
                object: ObjectRef { model: model.to_owned(), id: id.to_owned() },
                user_id: user_id.map(str::to_owned),
            }))
        }
        other => Err(ModelError::UnknownOp { op: other.to_owned(), topic: "aggregation" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(patches: impl Iterator<Item = String>) -> Vec<u8> {
        let patches: Vec<String> = patches.collect();
        format!(r#"{{"op":"update","patches":[{}],"application_id":"a","timestamp":1}}"#, patches.join(","))
            .into_bytes()
    }

    fn inc(id: usize) -> String {
        format!(r#"{{"op":"increment","path":"task/t{id}/votes","value":1}}"#)
    }

    #[test]
    fn patch_and_object_counts_are_bounded_with_a_reason() {
        let at_limit = update((0..MAX_PATCHES_PER_MESSAGE).map(|i| inc(i % MAX_OBJECTS_PER_MESSAGE)));
        assert!(decode_aggregation(&at_limit, DEFAULT_MAX_MESSAGE_BYTES).is_ok());
        let over = update((0..=MAX_PATCHES_PER_MESSAGE).map(|_| inc(0)));
        let err = decode_aggregation(&over, DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_PATCHES_PER_MESSAGE} patches")), "{err}");
        let spread = update((0..=MAX_OBJECTS_PER_MESSAGE).map(inc));
        let err = decode_aggregation(&spread, DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_OBJECTS_PER_MESSAGE} distinct objects")), "{err}");
    }
}
