//! The write role: `write` records applied to the main store, and one [`ChangeEvent`] per applied
//! change on `transport_manager` (before- and after-image, version, affected channels).
//!
//! Order of effects per batch, chosen so a crash at any point is harmless:
//!
//! 1. compute each change from the object as it was before the batch (read once, then kept in
//!    the writer's cache) and enqueue its event;
//! 2. wait until every event is acknowledged;
//! 3. persist every touched object with the `write` position of its last change;
//! 4. commit the input offsets.
//!
//! Steps 2-4 of a batch run while the next batch does step 1 (see `pipeline`): the cache is what
//! makes that sound. It holds every object this writer read or changed, as it is after the
//! batches processed so far, stored or not, and it is authoritative while the writer owns the
//! object's partition: nobody else writes the object then. It is dropped whole when a batch must
//! be redone (it may hold the state of a batch whose events were lost) and when a partition is
//! revoked (its next owner changes the objects); bounded by [`CACHE_OBJECTS`], it sheds only
//! objects whose writes are certainly stored.
//!
//! A crash before 3 re-computes the same events from the same stored state (timestamps come from
//! the messages, ids from log positions): the duplicates carry the same `version` and bytes,
//! which the transports drop. A crash after 3 finds each object's stored position at or past the
//! replayed record and skips it. Nothing is applied twice, no event is lost, and no outbox table
//! is needed.
//!
//! One writer per object: this role only ever changes objects of the `write` partitions it owns.
//! An update record may carry several coalesced messages; each is applied or rejected on its own
//! ([`crate::model::UpdateUnit`], dead-lettered alone in `units.rs`). A delete reaches the
//! children of its object through their own partitions (`cascade.rs`), never directly.

mod cascade;
mod units;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::{Cause, ProcessError, WorkerError};
use crate::model::{
    affected_channels_for_change, micros_to_secs, validate_author, AclKind, Application, Change, ChangeEvent, ChangeOp,
    SourcePosition, StoredObject, WriteRecord,
};
use crate::queue::outbox::Outbox;
use crate::queue::{topic, Record};
use crate::store::{MainStore, ObjectRow, ObjectWrite, Store};

use crate::apps::Apps;
use crate::pipeline::{Handler, Persist, Pipeline};
use crate::runtime::{Worker, WorkerContext};
use crate::telemetry;

type Key = (String, String, String); // (application, model, id)

pub struct Write<S = MainStore> {
    store: Arc<S>,
    apps: Apps,
    /// `<type>-<index>`, named in the dead letters this role writes itself.
    worker: String,
    events_topic: String,
    /// Cascading deletes go back to `write`, keyed by the child.
    write_topic: String,
    dead_letter_topic: String,
    /// Objects read or changed since the cache was last dropped; `None` = known not to exist.
    cache: BTreeMap<Key, Option<ObjectRow>>,
    /// Keys whose cached state must be persisted at the end of the batch.
    dirty: HashSet<Key>,
    /// Keys written by the last two sealed batches: their writes may still be in flight, so a
    /// bounded cache keeps them (a read from the store could miss them).
    unsettled: [HashSet<Key>; 2],
    /// The links each object's row holds once this writer's writes so far are stored (known for
    /// the objects it wrote itself), so the store need not read them back to find stale ones.
    links: HashMap<Key, Vec<(String, String)>>,
}

/// Bound of the writer's cache, in objects. Beyond it, at the end of a batch, every object whose
/// write is certainly stored is shed (read again from the store when next touched).
pub const CACHE_OBJECTS: usize = 50_000;

impl Worker for Write {
    async fn connect(
        ctx: &WorkerContext,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(Self, Pipeline), WorkerError> {
        let store = ctx.store(shutdown).await?;
        let (apps, pipeline) = ctx.pipeline(topic::WRITE, shutdown).await?;
        Ok((Write::new(Arc::new(store), apps, &ctx.config, &ctx.name()), pipeline))
    }
}

fn poison(e: impl std::fmt::Display) -> ProcessError {
    ProcessError::poison(e.to_string())
}

impl<S: Store> Write<S> {
    /// A writer of `cfg`'s topics (`transport_manager` for events, `write` for cascades,
    /// `dead_letter`), naming itself `worker` in dead letters.
    pub fn new(store: Arc<S>, apps: Apps, cfg: &Config, worker: &str) -> Self {
        Write {
            store,
            apps,
            worker: worker.to_string(),
            events_topic: cfg.topic(&cfg.kafka.outputs.write),
            write_topic: cfg.topic(topic::WRITE),
            dead_letter_topic: cfg.topic(topic::DEAD_LETTER),
            cache: BTreeMap::new(),
            dirty: HashSet::new(),
            unsettled: Default::default(),
            links: HashMap::new(),
        }
    }

    async fn load(&mut self, key: &Key) -> Result<Option<ObjectRow>, ProcessError> {
        if let Some(row) = self.cache.get(key) {
            return Ok(row.clone());
        }
        let id = (key.1.clone(), key.2.clone());
        let mut rows = self.store.get_objects(&key.0, std::slice::from_ref(&id)).await.map_err(ProcessError::from)?;
        let row = rows.remove(&id);
        self.cache.insert(key.clone(), row.clone());
        Ok(row)
    }

    fn stage(&mut self, key: Key, row: ObjectRow) {
        self.cache.insert(key.clone(), Some(row));
        self.dirty.insert(key);
    }

    async fn emit(&self, out: &mut Outbox, event: &ChangeEvent) -> Result<(), ProcessError> {
        // Cannot fail on any input (string-keyed JSON maps, strings, integers): only a bug in our
        // types could make it, and no retry or dead letter cures that: stop.
        let bytes = serde_json::to_vec(event).map_err(|e| ProcessError::Fatal(Cause::with("encoding an event", e)))?;
        out.send(&self.events_topic, Some(event.partition_key()), &bytes, &[]).await.map_err(ProcessError::from)
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        app: &Application,
        key: &Key,
        op: ChangeOp,
        before: Option<Map<String, Value>>,
        after: Option<Map<String, Value>>,
        patches: Vec<crate::model::Patch>,
        version: u64,
        timestamp: u64,
    ) -> Result<ChangeEvent, ProcessError> {
        let channels =
            affected_channels_for_change(&app.id, before.as_ref(), after.as_ref(), &app.schema).map_err(poison)?;
        Ok(ChangeEvent {
            application_id: app.id.clone(),
            op,
            model: key.1.clone(),
            id: key.2.clone(),
            before,
            after,
            patches,
            version,
            timestamp,
            channels,
            broadcast: false,
            ephemeral: false,
        })
    }

    async fn apply(
        &mut self,
        rec: WriteRecord,
        position: SourcePosition,
        out: &mut Outbox,
    ) -> Result<(), ProcessError> {
        let app = self.apps.require_model(&rec.application_id, &rec.model)?;
        let key = (rec.application_id.clone(), rec.model.clone(), rec.id.clone());
        let current = self.load(&key).await?;
        if current.as_ref().is_some_and(|r| r.object.already_applied(&position)) {
            telemetry::write_replay_skipped();
            return Ok(());
        }
        let live = current.as_ref().filter(|r| !r.deleted);
        match &rec.change {
            Change::Create { object } => {
                if live.is_some() {
                    return Err(poison(format!("{} `{}` already exists", rec.model, rec.id)));
                }
                let secs = micros_to_secs(rec.timestamp);
                let mut object = object.clone();
                object.insert("id".into(), Value::String(rec.id.clone()));
                object.insert("type".into(), Value::String(rec.model.clone()));
                object.insert("created".into(), Value::from(secs));
                object.insert("modified".into(), Value::from(secs));
                // A re-created id continues the versions of its tombstone, so clients never see
                // a version go backwards.
                let version = current.as_ref().map_or(0, |r| r.object.version).saturating_add(1);
                let stored = StoredObject { object, version, last_applied: Some(position) };
                let after = Some(stored.object.clone());
                let event =
                    self.event(&app, &key, ChangeOp::Create, None, after, Vec::new(), version, rec.timestamp)?;
                self.emit(out, &event).await?;
                self.stage(key, ObjectRow { object: stored, deleted: false });
            }
            Change::Update { .. } => {
                let row = live.ok_or_else(|| poison(format!("update of missing {} `{}`", rec.model, rec.id)))?.clone();
                self.apply_units(&app, key, row, &rec, position, out).await?;
            }
            Change::Delete { user_id, cascade } => {
                let Some(row) = live.cloned() else {
                    // A cascade finding its child already gone is a replay or a race it lost to
                    // the child's own delete: nothing to do, nothing to reject.
                    if cascade.is_some() {
                        return Ok(());
                    }
                    return Err(poison(format!("delete of missing {} `{}`", rec.model, rec.id)));
                };
                match cascade {
                    // The parent's delete passed its author check; Telepat cascaded regardless.
                    Some(c) => {
                        if !self.parents(&app.id, &rec.model, &row).contains(&(c.model.clone(), c.id.clone())) {
                            return Ok(());
                        }
                    }
                    None => {
                        validate_author(&app.schema, &rec.model, &row.object.object, AclKind::Write, user_id.as_deref())
                            .map_err(poison)?
                    }
                }
                self.delete(&app, key, row, &rec, position, out).await?;
            }
        }
        Ok(())
    }

    /// `(parent_model, parent_id)` links of an object, from its schema's `belongsTo`.
    fn parents(&self, app: &str, model: &str, row: &ObjectRow) -> Vec<(String, String)> {
        let Some(schema) = self.apps.get(app) else { return Vec::new() };
        let Some(ms) = schema.model(model) else { return Vec::new() };
        ms.belongs_to
            .iter()
            .filter_map(|b| {
                row.object
                    .object
                    .get(&b.parent_field())
                    .and_then(Value::as_str)
                    .map(|id| (b.parent_model.clone(), id.to_string()))
            })
            .collect()
    }
}

impl<S: Store> Handler for Write<S> {
    type Input = WriteRecord;

    /// Reads every object the batch touches in one concurrent round instead of one round trip
    /// per record (the writer's main cost). Failures are left to `handle`, which classifies them.
    async fn prepare(&mut self, batch: &[&WriteRecord]) {
        let mut wanted: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for rec in batch {
            let key = (rec.application_id.clone(), rec.model.clone(), rec.id.clone());
            if !self.cache.contains_key(&key) {
                let ids = wanted.entry(key.0).or_default();
                if !ids.contains(&(key.1.clone(), key.2.clone())) {
                    ids.push((key.1, key.2));
                }
            }
        }
        for (app, ids) in wanted {
            if let Ok(mut rows) = self.store.get_objects(&app, &ids).await {
                for id in ids {
                    let row = rows.remove(&id);
                    self.cache.insert((app.clone(), id.0, id.1), row);
                }
            }
        }
    }

    async fn handle(&mut self, record: &Record<'_>, rec: WriteRecord, out: &mut Outbox) -> Result<(), ProcessError> {
        self.apply(rec, record.position(), out).await
    }

    /// The batch's touched objects, as they are now, for the store; the cache keeps them for
    /// the next batch, which is processed while they are written.
    fn seal(&mut self) -> Option<Persist> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut by_app: BTreeMap<String, Vec<ObjectWrite>> = BTreeMap::new();
        for key in &dirty {
            if let Some(Some(row)) = self.cache.get(key) {
                let parents = if row.deleted { Vec::new() } else { self.parents(&key.0, &key.1, row) };
                // A tombstone's row keeps no links once written.
                let recorded = self.links.insert(key.clone(), parents.clone());
                by_app.entry(key.0.clone()).or_default().push(ObjectWrite {
                    model: key.1.clone(),
                    row: row.clone(),
                    parents,
                    recorded,
                    index: Default::default(),
                });
            }
        }
        let [_, last] = std::mem::take(&mut self.unsettled);
        self.unsettled = [last, dirty];
        if self.cache.len() > CACHE_OBJECTS {
            let [a, b] = &self.unsettled;
            self.cache.retain(|key, _| a.contains(key) || b.contains(key));
            self.links.retain(|key, _| a.contains(key) || b.contains(key));
        }
        if by_app.is_empty() {
            return None;
        }
        let (store, writes) = (self.store.clone(), Arc::new(by_app));
        Some(Box::new(move || {
            let (store, writes) = (store.clone(), writes.clone());
            Box::pin(async move {
                for (app, writes) in writes.iter() {
                    store.put_objects(app, writes).await.map_err(ProcessError::from)?;
                }
                Ok(())
            })
        }))
    }

    fn revoked(&mut self) {
        // The pipeline has finished every sealed batch before it calls this: all of the cache
        // is stored, and some of it may belong to partitions that are no longer ours.
        self.abort_batch();
    }

    fn abort_batch(&mut self) {
        self.cache.clear();
        self.dirty.clear();
        self.unsettled = Default::default();
        self.links.clear();
    }
}
