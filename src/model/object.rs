//! The stored object: fields, version, and the last log position applied to it.
//!
//! `version` starts at 1 on create and grows by one per applied patch, so a client that holds
//! version `n` knows the next delta must carry `n + 1` (CONTRACT section 7). `last_applied`
//! is what makes a replay harmless: the writer passes the position of the record it applies
//! (the `write` topic position: all changes of one object pass through one `write` partition,
//! in order), and skips the store write for positions at or before it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ModelError;
use super::message::{CreateMessage, Patch};
use super::patch::apply_patch;

/// A record's place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl SourcePosition {
    /// True if `self` is on the same partition as `other` and not after it.
    pub fn is_at_or_before(&self, other: &SourcePosition) -> bool {
        self.topic == other.topic && self.partition == other.partition && self.offset <= other.offset
    }
}

/// Converts a message timestamp (integer microseconds) to the seconds of `created`/`modified`.
pub fn micros_to_secs(micros: u64) -> u64 {
    micros / 1_000_000
}

/// An object as the writer stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    pub object: Map<String, Value>,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<SourcePosition>,
}

impl StoredObject {
    /// Builds version 1 of a created object: `id`, `created` and `modified` are set.
    ///
    /// `now_secs` should be [`micros_to_secs`] of the message timestamp rather than the wall
    /// clock, so that replaying the create writes byte-identical data.
    pub fn create(message: &CreateMessage, id: &str, now_secs: u64, position: Option<SourcePosition>) -> Self {
        let mut object = message.object.clone();
        object.insert("id".into(), Value::String(id.to_owned()));
        object.insert("created".into(), Value::from(now_secs));
        object.insert("modified".into(), Value::from(now_secs));
        StoredObject { object, version: 1, last_applied: position }
    }

    pub fn id(&self) -> &str {
        self.object.get("id").and_then(Value::as_str).unwrap_or("")
    }

    pub fn model(&self) -> &str {
        self.object.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// True if the record at `position` was already applied to this object.
    pub fn already_applied(&self, position: &SourcePosition) -> bool {
        self.last_applied.as_ref().is_some_and(|last| position.is_at_or_before(last))
    }

    /// Applies `patches` in order and returns the new state; all or nothing.
    ///
    /// Every patch must target this object (`<model>/<id>/...`). The version grows by the
    /// number of patches and `modified` is set to `now_secs`.
    pub fn apply(
        &self,
        patches: &[Patch],
        now_secs: u64,
        position: Option<SourcePosition>,
    ) -> Result<StoredObject, ModelError> {
        let mut object = self.object.clone();
        for p in patches {
            if p.path.id != self.id() || p.path.model != self.model() {
                return Err(ModelError::PatchTargetMismatch {
                    path: p.path.to_string(),
                    model: self.model().to_owned(),
                    id: self.id().to_owned(),
                });
            }
            apply_patch(&mut object, p)?;
        }
        object.insert("modified".into(), Value::from(now_secs));
        Ok(StoredObject {
            object,
            version: self.version.saturating_add(patches.len() as u64),
            last_applied: position.or_else(|| self.last_applied.clone()),
        })
    }
}
