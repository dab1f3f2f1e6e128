//! Our own records between workers: `write` (aggregation → writer) and `transport_manager`
//! (writer, or the API for broadcasts → transport manager).
//!
//! `write` record, Kafka key = object id, one record per object and message:
//!
//! ```json
//! {"application_id":"app1","model":"task","id":"<id>","op":"update",
//!  "patches":[{"op":"increment","path":"task/<id>/votes","value":1,"user_id":"u1"}],
//!  "instant":false,"timestamp":1700000000000001,
//!  "source":{"topic":"aggregation","partition":0,"offset":42},
//!  "merged":[{"patches":[...],"instant":false,"timestamp":1700000000000002,
//!             "source":{"topic":"aggregation","partition":0,"offset":43}}]}
//! ```
//!
//! `op` is `create` (with `object`, id already assigned), `update` (with `patches`) or
//! `delete` (with `user_id` if the API set one). `user_id`s stay on patches here because the
//! writer, which owns the stored object, runs the author check.
//!
//! Coalescing (aggregation's linger) never mixes messages: a later update of the same object is
//! appended to `merged` with its own patches, timestamp and source, and the writer applies the
//! record's own patches and then each `merged` entry as separate all-or-nothing units. A unit
//! that fails (a patch that does not apply, a failed author check) is dead-lettered alone, as a
//! one-message `write` record; the others apply. Versions count applied patches only, so a
//! rejected unit takes no version. A record without `merged` is exactly one message.
//!
//! A cascading delete reaches each child through the child's own partition: the parent's writer
//! produces `{"op":"delete","cascade":{"model":"<parent model>","id":"<parent id>","depth":1},...}`
//! keyed by the child id. Its writer deletes the child only if it is live and still names that
//! parent (so a replayed cascade is a no-op), skips the author check (the parent's delete was
//! checked), and cascades to the child's own children with `depth + 1`.
//!
//! `transport_manager` event, Kafka key = object id:
//!
//! ```json
//! {"application_id":"app1","op":"update","model":"task","id":"<id>",
//!  "before":{...},"after":{...},"patches":[{"op":"increment","path":"task/<id>/votes","value":1}],
//!  "version":7,"timestamp":1700000000000001,"channels":["blg:app1:context:c1:task", ...],
//!  "broadcast":false}
//! ```
//!
//! `before` is absent for a create, `after` for a delete. `version` is the object's version
//! after the change; an update of `n` patches covers versions `version-n+1 ..= version`.
//! `channels` are the unfiltered channels of before and after
//! ([`super::channel::affected_channels_for_change`]); the transport manager adds the filtered
//! variants it knows and tests them on `before`/`after`. `broadcast: true` (context admin
//! operations) means: every device of the application, whatever it subscribed to.
//! `ephemeral: true` (absent otherwise) marks a broadcast's object ([`super::broadcast`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::channel::ChannelKey;
use super::id::object_id_from_position;
use super::message::{AggregatorMessage, ObjectRef, Patch};
use super::object::SourcePosition;

/// What a change does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    Create,
    Update,
    Delete,
}

/// The body of a `write` record, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    Create {
        object: Map<String, Value>,
    },
    Update {
        patches: Vec<Patch>,
        #[serde(default)]
        instant: bool,
        /// Later messages coalesced into this record, in order, each its own unit.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        merged: Vec<MergedUpdate>,
    },
    Delete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        /// Set when the delete is a parent's cascade rather than a message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cascade: Option<Cascade>,
    },
}

/// One further update message carried by a coalesced record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MergedUpdate {
    pub patches: Vec<Patch>,
    #[serde(default)]
    pub instant: bool,
    pub timestamp: u64,
    pub source: SourcePosition,
}

/// The deleted parent a cascading delete comes from, and how deep in the cascade it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cascade {
    pub model: String,
    pub id: String,
    pub depth: u32,
}

/// One message's update of one object: what the writer applies or rejects as a whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateUnit<'a> {
    pub patches: &'a [Patch],
    pub instant: bool,
    pub timestamp: u64,
    pub source: &'a SourcePosition,
}

/// A validated change of one object, on the `write` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WriteRecord {
    pub application_id: String,
    pub model: String,
    pub id: String,
    #[serde(flatten)]
    pub change: Change,
    pub timestamp: u64,
    /// Where the aggregation message was read; creates derive their id from it.
    pub source: SourcePosition,
}

impl WriteRecord {
    /// Splits a decoded message into one record per object (an update may patch several).
    ///
    /// A create without an id gets [`object_id_from_position`] of `source`, which is also
    /// written into `object.id`.
    pub fn from_message(message: AggregatorMessage, source: &SourcePosition) -> Vec<WriteRecord> {
        match message {
            AggregatorMessage::Create(m) => {
                let id = m.id.clone().unwrap_or_else(|| {
                    object_id_from_position(&m.application_id, &source.topic, source.partition, source.offset)
                });
                let mut object = m.object;
                object.insert("id".into(), Value::String(id.clone()));
                vec![WriteRecord {
                    application_id: m.application_id,
                    model: m.model,
                    id,
                    change: Change::Create { object },
                    timestamp: m.timestamp,
                    source: source.clone(),
                }]
            }
            AggregatorMessage::Update(m) => m
                .by_object()
                .into_iter()
                .map(|(ObjectRef { model, id }, patches)| WriteRecord {
                    application_id: m.application_id.clone(),
                    model,
                    id,
                    change: Change::Update { patches, instant: m.instant, merged: Vec::new() },
                    timestamp: m.timestamp,
                    source: source.clone(),
                })
                .collect(),
            AggregatorMessage::Delete(m) => vec![WriteRecord {
                application_id: m.application_id,
                model: m.object.model,
                id: m.object.id,
                change: Change::Delete { user_id: m.user_id, cascade: None },
                timestamp: m.timestamp,
                source: source.clone(),
            }],
        }
    }

    /// The update messages of an update record, in order (empty for creates and deletes).
    pub fn update_units(&self) -> Vec<UpdateUnit<'_>> {
        let Change::Update { patches, instant, merged } = &self.change else { return Vec::new() };
        let first = UpdateUnit { patches, instant: *instant, timestamp: self.timestamp, source: &self.source };
        std::iter::once(first)
            .chain(merged.iter().map(|m| UpdateUnit {
                patches: &m.patches,
                instant: m.instant,
                timestamp: m.timestamp,
                source: &m.source,
            }))
            .collect()
    }

    /// Appends `later`, an update of the same object, as a separate unit. Gives `later` back,
    /// unmerged, if either record is not an update.
    pub fn merge(&mut self, later: WriteRecord) -> Option<WriteRecord> {
        let Change::Update { merged, .. } = &mut self.change else { return Some(later) };
        match later {
            WriteRecord { change: Change::Update { patches, instant, merged: more }, timestamp, source, .. } => {
                merged.push(MergedUpdate { patches, instant, timestamp, source });
                merged.extend(more);
                None
            }
            other => Some(other),
        }
    }

    /// The record one unit would have been alone: what a rejected unit is dead-lettered as, so
    /// that `dead-letter replay` can re-feed exactly that message.
    pub fn single(&self, unit: &UpdateUnit<'_>) -> WriteRecord {
        WriteRecord {
            application_id: self.application_id.clone(),
            model: self.model.clone(),
            id: self.id.clone(),
            change: Change::Update { patches: unit.patches.to_vec(), instant: unit.instant, merged: Vec::new() },
            timestamp: unit.timestamp,
            source: unit.source.clone(),
        }
    }

    /// The cascading delete of a child of `parent`, keyed (by the caller) by the child's id.
    pub fn cascade_delete(&self, child: (&str, &str), parent: (&str, &str), depth: u32) -> WriteRecord {
        WriteRecord {
            application_id: self.application_id.clone(),
            model: child.0.to_owned(),
            id: child.1.to_owned(),
            change: Change::Delete {
                user_id: None,
                cascade: Some(Cascade { model: parent.0.to_owned(), id: parent.1.to_owned(), depth }),
            },
            timestamp: self.timestamp,
            source: self.source.clone(),
        }
    }

    pub fn op(&self) -> ChangeOp {
        match self.change {
            Change::Create { .. } => ChangeOp::Create,
            Change::Update { .. } => ChangeOp::Update,
            Change::Delete { .. } => ChangeOp::Delete,
        }
    }
}

/// An applied change, on the `transport_manager` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChangeEvent {
    pub application_id: String,
    pub op: ChangeOp,
    pub model: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Map<String, Value>>,
    /// The applied patches as clients see them (no `user_id`); empty unless `op` is update.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Patch>,
    pub version: u64,
    pub timestamp: u64,
    pub channels: Vec<ChannelKey>,
    #[serde(default)]
    pub broadcast: bool,
    /// A broadcast's ephemeral object ([`super::broadcast`]): never stored, version 0, its
    /// channels derived by the transport manager, delivered to connected sockets only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}
