//! Objects and applications to and from their columns, with the checks the CQL store makes.

use std::collections::BTreeSet;

use rusqlite::Row;

use crate::error::Cause;
use crate::model::Application;
use crate::store::index::IndexEntries;
use crate::store::{ObjectRow, ObjectWrite, StoreError};

/// One object write as owned column values, so the blocking task borrows nothing from the caller.
pub(super) struct EncodedObject {
    pub(super) model: String,
    pub(super) id: String,
    pub(super) body: String,
    pub(super) version: i64,
    pub(super) topic: Option<String>,
    pub(super) partition: Option<i32>,
    pub(super) offset: Option<i64>,
    pub(super) deleted: bool,
    /// The links the object holds after the write: none for a tombstone.
    pub(super) links: BTreeSet<(String, String)>,
    /// Its channel index entries; the live ones hold `body`.
    pub(super) index: IndexEntries,
}

/// Checks and encodes one write; an error means the call must write nothing.
pub(super) fn encode_object(app: &str, w: &ObjectWrite, index: IndexEntries) -> Result<EncodedObject, StoreError> {
    let o = &w.row.object;
    let id = o.id();
    if id.is_empty() || w.model.is_empty() {
        return Err(StoreError::Corrupt(format!("object of model {:?} in {app} has no id", w.model).into()));
    }
    let (body, version) = w.body_and_version(app)?;
    let pos = o.last_applied.as_ref();
    let links = if w.row.deleted { BTreeSet::new() } else { w.parents.iter().cloned().collect() };
    Ok(EncodedObject {
        model: w.model.clone(),
        id: id.to_owned(),
        body,
        version,
        topic: pos.map(|p| p.topic.clone()),
        partition: pos.map(|p| p.partition),
        offset: pos.map(|p| p.offset),
        deleted: w.row.deleted,
        links,
        index,
    })
}

/// Decodes the columns of [`super::schema::GET_OBJECT`]; the caller names the row in the error.
pub(super) fn decode_object(row: &Row<'_>) -> Result<ObjectRow, Cause> {
    let column = Cause::of;
    let body: String = row.get(0).map_err(column)?;
    let version: i64 = row.get(1).map_err(column)?;
    let topic: Option<String> = row.get(2).map_err(column)?;
    let partition: Option<i32> = row.get(3).map_err(column)?;
    let offset: Option<i64> = row.get(4).map_err(column)?;
    let deleted: i64 = row.get(5).map_err(column)?;

    let deleted = match deleted {
        0 => false,
        1 => true,
        other => return Err(format!("deleted flag is {other}, not 0 or 1").into()),
    };
    super::super::decode_row(&body, version, (topic, partition, offset), deleted)
}

/// Validates and serialises an application as the CQL store does, so either store reads the
/// other's JSON.
pub(super) fn encode_application(app: &Application) -> Result<String, StoreError> {
    app.validate()
        .map_err(|e| StoreError::Corrupt(Cause::with(format_args!("refusing to store application {}", app.id), e)))?;
    serde_json::to_string(app)
        .map_err(|e| StoreError::Corrupt(Cause::with(format_args!("application {} does not serialize", app.id), e)))
}

pub(super) use crate::store::decode_application;
