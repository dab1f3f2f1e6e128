//! Deletes and their cascades. A writer owns only the objects of its `write` partitions, so a
//! deleted parent's children (which live on any partition) are never touched here: each gets a
//! cascading delete record on `write`, keyed by its id, and its own writer applies it in order
//! with the child's other changes. Per-object ordering and versions stay exact.
//!
//! Replays are harmless: a replayed parent delete produces the same cascade records again, and a
//! child's writer ignores a cascade for a child that is already deleted or no longer names the
//! parent. A cascade is not author-checked (the parent's delete was) and carries its depth: a
//! chain deeper than [`MAX_CASCADE_DEPTH`] (a cycle in bad data) stops there, logged.

use std::collections::{BTreeSet, HashSet};

use crate::error::ProcessError;
use crate::model::{Application, Change, ChangeOp, SourcePosition, StoredObject, WriteRecord};
use crate::queue::outbox::Outbox;
use crate::store::{ObjectId, ObjectRow, Store};
use crate::telemetry;

use super::{poison, Key, Write};

/// Levels of descendants one delete reaches.
pub const MAX_CASCADE_DEPTH: u32 = 16;

impl<S: Store> Write<S> {
    /// Tombstones the live `row`, emits its delete event, and sends a cascading delete to each
    /// of its children's partitions.
    pub(super) async fn delete(
        &mut self,
        app: &Application,
        key: Key,
        row: ObjectRow,
        rec: &WriteRecord,
        position: SourcePosition,
        out: &mut Outbox,
    ) -> Result<(), ProcessError> {
        let depth = match &rec.change {
            Change::Delete { cascade: Some(c), .. } => c.depth,
            _ => 0,
        };
        // The one fallible read comes first, and the tombstone is staged last: a retry of this
        // record must still find the object live.
        let children = self.children(app, &key).await?;
        let before = row.object.object.clone();
        let tomb = StoredObject {
            object: row.object.object,
            version: row.object.version.saturating_add(1),
            last_applied: Some(position),
        };
        let event =
            self.event(app, &key, ChangeOp::Delete, Some(before), None, Vec::new(), tomb.version, rec.timestamp)?;
        self.emit(out, &event).await?;
        if depth >= MAX_CASCADE_DEPTH && !children.is_empty() {
            if let Some(suppressed) = telemetry::gate::allow("cascade_depth") {
                tracing::error!(
                    message = "cascade depth limit reached, children left in place",
                    app = %app.id, model = key.1, id = key.2, children = children.len(), suppressed
                );
            }
        } else {
            for (model, id) in &children {
                let cascade = rec.cascade_delete((model, id), (&key.1, &key.2), depth + 1);
                let bytes = serde_json::to_vec(&cascade).map_err(poison)?;
                out.send(&self.write_topic, Some(cascade.partition_key()), &bytes, &[]).await?;
            }
            telemetry::cascade_deletes(children.len());
        }
        self.stage(key, ObjectRow { object: tomb, deleted: true });
        Ok(())
    }

    /// The children of `parent`: the store's links, plus objects linked by writes not stored
    /// yet (this batch's and the sealed ones in flight), minus those such writes took away.
    async fn children(&mut self, app: &Application, parent: &Key) -> Result<Vec<ObjectId>, ProcessError> {
        let indexed = self.store.children(&app.id, &parent.1, &parent.2).await.map_err(ProcessError::from)?;
        let link = (parent.1.clone(), parent.2.clone());
        // Only this writer changes these objects, and every other cached object is as stored
        // (its links indexed): the unstored writes are all the index can be missing.
        let mut known_not = HashSet::new();
        let mut children = Vec::new();
        let unstored: BTreeSet<&Key> = self.dirty.iter().chain(self.unsettled.iter().flatten()).collect();
        for key in unstored {
            let (a, m, i) = key;
            if *a != app.id {
                continue;
            }
            let row = self.cache.get(key).and_then(Option::as_ref);
            let names_parent = row.is_some_and(|r| !r.deleted && self.parents(a, m, r).contains(&link));
            if names_parent {
                children.push((m.clone(), i.clone()));
            } else {
                known_not.insert((m.clone(), i.clone()));
            }
        }
        let mut seen: HashSet<ObjectId> = children.iter().cloned().collect();
        for child in indexed {
            if !known_not.contains(&child) && seen.insert(child.clone()) {
                children.push(child);
            }
        }
        Ok(children)
    }
}
