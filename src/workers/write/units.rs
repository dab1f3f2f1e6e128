//! Applying an update record message by message. A coalesced record carries several messages
//! (units); each is all or nothing on its own, so one client's bad patch or failed author check
//! never sinks another's: the failing unit is dead-lettered alone and the rest apply.
//!
//! Versions count applied patches (CONTRACT section 7: one per applied change), so the record's
//! one event lists only the applied units' patches and its `version` is the last of theirs; a
//! rejected unit takes no version and leaves no gap a client could see.

use crate::error::ProcessError;
use crate::model::event::UpdateUnit;
use crate::model::{micros_to_secs, validate_author, AclKind, Application, ChangeOp, Patch, SourcePosition};
use crate::model::{StoredObject, WriteRecord};
use crate::queue::dead_letter;
use crate::queue::outbox::Outbox;
use crate::queue::Record;
use crate::store::{ObjectRow, Store};
use crate::telemetry;

use super::{poison, Key, Write};

impl<S: Store> Write<S> {
    /// Applies each unit of `rec` to the live `row` in order. A record of one message that fails
    /// is returned as poison (the pipeline dead-letters it); in a record of several, each failing
    /// unit is dead-lettered here and the record still succeeds.
    pub(super) async fn apply_units(
        &mut self,
        app: &Application,
        key: Key,
        row: ObjectRow,
        rec: &WriteRecord,
        position: SourcePosition,
        out: &mut Outbox,
    ) -> Result<(), ProcessError> {
        let units = rec.update_units();
        let mut state = row.object.clone();
        let mut applied: Vec<Patch> = Vec::new();
        let mut timestamp = None;
        let mut rejected: Vec<(UpdateUnit<'_>, String)> = Vec::new();
        for unit in &units {
            match Self::try_unit(app, &rec.model, &state, unit) {
                Ok(next) => {
                    state = next;
                    applied.extend(unit.patches.iter().map(Patch::for_clients));
                    timestamp = Some(unit.timestamp);
                }
                Err(reason) => rejected.push((*unit, reason)),
            }
        }
        if units.len() == 1 {
            if let Some((_, reason)) = rejected.pop() {
                return Err(poison(reason));
            }
        }
        // The event is built before any dead letter goes out: if it fails the whole record is
        // rejected once, not partly twice.
        let event = match timestamp {
            Some(timestamp) => {
                let (before, after) = (Some(row.object.object.clone()), Some(state.object.clone()));
                Some(self.event(app, &key, ChangeOp::Update, before, after, applied, state.version, timestamp)?)
            }
            None => None,
        };
        for (unit, reason) in &rejected {
            self.dead_letter_unit(rec, unit, &position, reason, out).await?;
        }
        let Some(event) = event else { return Ok(()) };
        self.emit(out, &event).await?;
        state.last_applied = Some(position);
        self.stage(key, ObjectRow { object: state, deleted: false });
        Ok(())
    }

    /// One message's patches on `state`: the author check of each patch, then all of them or none.
    fn try_unit(
        app: &Application,
        model: &str,
        state: &StoredObject,
        unit: &UpdateUnit<'_>,
    ) -> Result<StoredObject, String> {
        for p in unit.patches {
            validate_author(&app.schema, model, &state.object, AclKind::Write, p.user_id.as_deref())
                .map_err(|e| e.to_string())?;
        }
        state.apply(unit.patches, micros_to_secs(unit.timestamp), None).map_err(|e| e.to_string())
    }

    /// Dead-letters one unit as the one-message record it would have been alone, so
    /// `dead-letter replay` re-feeds exactly that message to `write`.
    async fn dead_letter_unit(
        &self,
        rec: &WriteRecord,
        unit: &UpdateUnit<'_>,
        position: &SourcePosition,
        reason: &str,
        out: &mut Outbox,
    ) -> Result<(), ProcessError> {
        let bytes = serde_json::to_vec(&rec.single(unit)).map_err(poison)?;
        let record = Record {
            topic: &position.topic,
            partition: position.partition,
            offset: position.offset,
            key: Some(rec.partition_key()),
            payload: &bytes,
            timestamp_ms: None,
        };
        dead_letter::send(out, &self.dead_letter_topic, &record, &self.worker, reason).await?;
        telemetry::failed(&position.topic, "poison");
        Ok(())
    }
}
