//! The main store: objects (with their last applied log position), parent → child links for
//! cascading deletes, and applications.
//!
//! The writer is the only role that writes objects, one consumer per object at a time (keying by
//! object id end to end), so the store needs no compare-and-set: every write is an idempotent
//! upsert, and replays are recognised by the position kept in [`StoredObject::last_applied`].
//!
//! ```text
//! writer:  get_objects(app, ids) ─▶ skip already applied ─▶ apply patches ─▶ put_objects(app, writes)
//! delete:  children(app, model, id) ─▶ a cascading delete on `write` per child (its own writer tombstones it)
//! system:  put_application / get_application / list_applications
//! readyz:  ping
//! ```
//!
//! | module   | what |
//! |----------|------|
//! | `cql`    | [`CqlStore`]: Cassandra / ScyllaDB through the `scylla` driver |
//! | `sqlite` | [`SqliteStore`]: one embedded SQLite file (WAL), no server needed |
//! | `index`  | the channel index entries a `put_objects` call writes, alike in both stores |

pub mod cql;
mod index;
pub mod sqlite;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::error::{Cause, ProcessError};
use crate::model::{Application, ChannelKey, StoredObject};

pub use cql::{CqlOptions, CqlStore};
pub use sqlite::SqliteStore;

/// Each variant's [`Cause`] names what was being done and keeps the driver's error as its source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or timed out: retry later ([`ProcessError::Transient`]).
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// A row could not be decoded, or the store rejected a request as invalid (a dropped table,
    /// missing permissions, a statement the server does not accept): a bug, an operator change or
    /// manual tampering, none of which a retry of the same request fixes (treat as fatal).
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[source] Cause),
    /// One object's row does not decode: the message that needs it cannot be applied (its state
    /// and version are unknown), but the rest of the stream can ([`ProcessError::Poison`]).
    #[error("stored object is corrupt: {0}")]
    CorruptRow(#[source] Cause),
}

/// A store failure blames the message only when it is about that message's own object (a row
/// that does not decode: dead-lettered with the reason, the object left as it is). Otherwise it
/// is retried, or, for a store that refuses every request (a dropped table), stops the worker
/// rather than dead-letter the whole stream.
impl From<StoreError> for ProcessError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ProcessError::Transient(Cause::of(e)),
            StoreError::CorruptRow(_) => ProcessError::Poison(Cause::of(e)),
            StoreError::Corrupt(_) => ProcessError::Fatal(Cause::of(e)),
        }
    }
}

/// An application row: its JSON must decode, validate, and name the row's id.
pub(crate) fn decode_application(id: &str, body: &str) -> Result<Application, StoreError> {
    let app = Application::from_json(body.as_bytes())
        .map_err(|e| StoreError::Corrupt(Cause::with(format_args!("application {id}"), e)))?;
    if app.id != id {
        return Err(StoreError::Corrupt(format!("application row {id} holds application {}", app.id).into()));
    }
    Ok(app)
}

/// The applications of a listing that still decode and validate: one bad row (tampering, or an
/// application stored before a rule it now breaks, such as a reserved model name) is logged and
/// left out rather than stop every role at start.
pub(crate) fn keep_valid_application(decoded: Result<Application, StoreError>) -> Option<Application> {
    match decoded {
        Ok(app) => Some(app),
        Err(error) => {
            tracing::error!(message = "stored application skipped: it does not decode or validate; put it again", %error);
            None
        }
    }
}

/// (model, id) of an object within one application.
pub type ObjectId = (String, String);

/// A stored object, or a tombstone left by a delete (kept so a replayed create or patch of a
/// deleted object is recognised as already applied and not resurrected).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    pub object: StoredObject,
    pub deleted: bool,
}

/// One object write. `parents` are (parent_model, parent_id) links to index for cascading deletes
/// (the writer derives them from the schema's belongsTo: field `<parentModel>_id`).
///
/// `parents` is the object's whole set of links after the write: the store records it with the
/// object and removes links it no longer names (a changed `<parentModel>_id`). A tombstone holds no
/// links: every recorded one is removed, plus any it names, so its `parents` may be left empty.
///
/// `recorded` is the set of links the stored row holds before this write, when the caller knows
/// it (the writer does, for an object it wrote itself): a store that would otherwise read it back
/// to find the links to remove (CQL) then skips that read. `None`: the store reads it.
///
/// `index` keeps the channel index ([`Store::channel_page`], [`Store::channel_changes`]) current:
/// the channels the object is on after the write, and those it left.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectWrite {
    pub model: String,
    pub row: ObjectRow,
    pub parents: Vec<(String, String)>,
    pub recorded: Option<Vec<(String, String)>>,
    pub index: ChannelIndexWrite,
}

/// An object write's effect on the channel index, computed by the writer from the schema.
///
/// `channels`: the unfiltered channels (never a `{model, id}` one: an object's own channel is
/// its row) the object is on after the write; each gets a live entry with the object's body and
/// version. Empty for a tombstone. `left`: channels the object was on before the write and is
/// no longer (a delete: all of them; an update that moved it to another parent: the old one);
/// each gets a tombstone entry, kept for the resume window. `changed_at`: the writer's clock
/// (milliseconds since the epoch) when it sealed the write, the time catch-ups select by.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChannelIndexWrite {
    pub channels: Vec<ChannelKey>,
    pub left: Vec<ChannelKey>,
    pub changed_at: u64,
}

/// One object's entry in a channel's index. `body` is `None` for a tombstone (the object was
/// deleted, or left the channel, at `version`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRow {
    pub model: String,
    pub id: String,
    pub body: Option<serde_json::Map<String, serde_json::Value>>,
    pub version: u64,
    pub changed_at: u64,
}

/// How long channel tombstones are kept: the resume window plus the catch-up overlap. A store
/// keeps them at least this long and may drop them after.
pub const DEFAULT_TOMBSTONE_RETENTION: std::time::Duration = std::time::Duration::from_secs(24 * 3600 + 60);

impl ObjectWrite {
    /// The (model, id) this write targets.
    pub fn key(&self) -> ObjectId {
        (self.model.clone(), self.row.object.id().to_owned())
    }

    /// The object's fields as the JSON text both stores keep, and its version as the signed
    /// integer their columns hold; either failing is a write neither store may make.
    pub fn body_and_version(&self, app: &str) -> Result<(String, i64), StoreError> {
        let (o, model) = (&self.row.object, &self.model);
        let id = o.id();
        let body = serde_json::to_string(&o.object).map_err(|e| {
            StoreError::Corrupt(Cause::with(format_args!("object {app}/{model}/{id} does not serialize"), e))
        })?;
        let version = i64::try_from(o.version).map_err(|_| {
            StoreError::Corrupt(format!("object {app}/{model}/{id}: version {} too large", o.version).into())
        })?;
        Ok((body, version))
    }
}

/// The main store, as the workers use it. Implementations are cheap to share (`Arc`) and safe to
/// call concurrently.
///
/// Every method is idempotent, so a caller that got [`StoreError::Unavailable`] retries the whole
/// call; a partial failure never leaves a state that the retry cannot complete.
pub trait Store: Send + Sync + 'static {
    /// Reads many objects of one application at once (concurrently, prepared statement); missing
    /// ones are absent from the map.
    fn get_objects(
        &self,
        app: &str,
        ids: &[ObjectId],
    ) -> impl Future<Output = Result<HashMap<ObjectId, ObjectRow>, StoreError>> + Send;

    /// Upserts objects (body JSON, version, last_applied position, deleted flag), their parent
    /// links and their channel index entries ([`ObjectWrite::index`]). Idempotent. A tombstone
    /// (deleted=true) also removes the object's own parent links.
    ///
    /// Reads each object's recorded links first, then writes the links and index entries, then
    /// the objects: the writer skips a record whose position an object already holds, so an
    /// object row must never land without its links and entries. If the same object appears
    /// twice, the last write wins (and channels only an earlier write put it on are left).
    fn put_objects(&self, app: &str, writes: &[ObjectWrite]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A page of a channel's live objects, ordered by id, starting after `after` (an id), at most
    /// `limit` entries. `channel` is an unfiltered key other than a `{model, id}` one.
    fn channel_page(
        &self,
        app: &str,
        channel: &ChannelKey,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ChannelRow>, StoreError>> + Send;

    /// The current entry (live or tombstone) of every object of `channel` whose entry changed at
    /// or after `since` (milliseconds, the writers' clocks), each object once, in any order; `None`
    /// if more than `limit` objects changed (the caller then asks for a fresh snapshot). Reads are
    /// bounded by the changes since `since`, not by the channel's size; to stay bounded, a store
    /// that reads a log of writes (CQL) also answers `None` when a few objects were rewritten far
    /// more often than `limit`. `since` is expected within the tombstone retention: older
    /// deletions may have expired, and with them what a store knew about them.
    fn channel_changes(
        &self,
        app: &str,
        channel: &ChannelKey,
        since: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Option<Vec<ChannelRow>>, StoreError>> + Send;

    /// The (child_model, child_id) of every live object linked to this parent, all pages.
    fn children(
        &self,
        app: &str,
        parent_model: &str,
        parent_id: &str,
    ) -> impl Future<Output = Result<Vec<ObjectId>, StoreError>> + Send;

    fn put_application(&self, app: &Application) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn get_application(&self, id: &str) -> impl Future<Output = Result<Option<Application>, StoreError>> + Send;

    /// Every application, all pages.
    fn list_applications(&self) -> impl Future<Output = Result<Vec<Application>, StoreError>> + Send;

    /// A cheap round trip for readiness.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// An object row from a store's columns: body JSON, version, last applied position (all three
/// parts or none), deleted flag. The error names what is wrong; the caller names the row.
pub(crate) fn decode_row(
    body: &str,
    version: i64,
    (topic, partition, offset): (Option<String>, Option<i32>, Option<i64>),
    deleted: bool,
) -> Result<ObjectRow, Cause> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(body).map_err(|e| Cause::with("body is not a JSON object", e))?;
    let version = u64::try_from(version).map_err(|_| format!("negative version {version}"))?;
    let last_applied = match (topic, partition, offset) {
        (Some(topic), Some(partition), Some(offset)) => Some(crate::model::SourcePosition { topic, partition, offset }),
        (None, None, None) => None,
        _ => return Err("last_topic, last_partition and last_offset are not all set or all null".into()),
    };
    Ok(ObjectRow { object: StoredObject { object, version, last_applied }, deleted })
}

/// Keeps the last write of each object, in first-seen order, so concurrent statements within one
/// call never race on the same row.
pub(crate) fn last_write_per_object(writes: &[ObjectWrite]) -> Vec<&ObjectWrite> {
    let mut index: HashMap<ObjectId, usize> = HashMap::new();
    let mut out: Vec<&ObjectWrite> = Vec::with_capacity(writes.len());
    for w in writes {
        match index.get(&w.key()) {
            Some(&i) => out[i] = w,
            None => {
                index.insert(w.key(), out.len());
                out.push(w);
            }
        }
    }
    out
}

/// The store `TP_MAIN_DB` picked, as one type the roles and the ingress can share.
#[derive(Clone)]
pub enum MainStore {
    Cql(Arc<CqlStore>),
    Sqlite(Arc<SqliteStore>),
}

impl MainStore {
    /// The store `TP_MAIN_DB` names, in one attempt (commands; workers retry around it), keeping
    /// channel tombstones as long as the configured resume window needs them.
    pub async fn connect(cfg: &crate::config::Config) -> Result<MainStore, StoreError> {
        match cfg.main_db {
            crate::config::StoreKind::Scylla => CqlStore::connect(cfg).await.map(|s| MainStore::Cql(Arc::new(s))),
            crate::config::StoreKind::Sqlite => {
                MainStore::open_sqlite_with(&cfg.sqlite_path, cfg.sockets.resume.tombstone_retention()).await
            }
        }
    }

    /// Opens (creating it if needed) the SQLite file, off the async threads, with the default
    /// [`DEFAULT_TOMBSTONE_RETENTION`].
    pub async fn open_sqlite(path: &std::path::Path) -> Result<MainStore, StoreError> {
        MainStore::open_sqlite_with(path, DEFAULT_TOMBSTONE_RETENTION).await
    }

    /// [`MainStore::open_sqlite`], keeping channel tombstones for `tombstone_retention`.
    pub async fn open_sqlite_with(
        path: &std::path::Path,
        tombstone_retention: std::time::Duration,
    ) -> Result<MainStore, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .map_err(|e| StoreError::Unavailable(Cause::with("opening the SQLite store", e)))?
            .map(|s| MainStore::Sqlite(Arc::new(s.with_tombstone_retention(tombstone_retention))))
    }
}

impl MainStore {
    /// `index rebuild`: the channel entries of every live object that has none (a store written
    /// before the index existed), safe beside running writers; the number written. The CQL store
    /// indexes the objects of `apps`; the SQLite file uses its own applications.
    pub async fn rebuild_index(&self, apps: &HashMap<String, Application>) -> Result<u64, StoreError> {
        match self {
            MainStore::Cql(s) => s.rebuild_index(apps).await,
            MainStore::Sqlite(s) => s.rebuild_index().await.map(|n| n as u64),
        }
    }
}

macro_rules! each_store {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            MainStore::Cql($s) => $call.await,
            MainStore::Sqlite($s) => $call.await,
        }
    };
}

impl Store for MainStore {
    async fn get_objects(&self, app: &str, ids: &[ObjectId]) -> Result<HashMap<ObjectId, ObjectRow>, StoreError> {
        each_store!(self, s => s.get_objects(app, ids))
    }

    async fn put_objects(&self, app: &str, writes: &[ObjectWrite]) -> Result<(), StoreError> {
        each_store!(self, s => s.put_objects(app, writes))
    }

    async fn channel_page(
        &self,
        app: &str,
        channel: &ChannelKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChannelRow>, StoreError> {
        each_store!(self, s => s.channel_page(app, channel, after, limit))
    }

    async fn channel_changes(
        &self,
        app: &str,
        channel: &ChannelKey,
        since: u64,
        limit: usize,
    ) -> Result<Option<Vec<ChannelRow>>, StoreError> {
        each_store!(self, s => s.channel_changes(app, channel, since, limit))
    }

    async fn children(&self, app: &str, parent_model: &str, parent_id: &str) -> Result<Vec<ObjectId>, StoreError> {
        each_store!(self, s => s.children(app, parent_model, parent_id))
    }

    async fn put_application(&self, app: &Application) -> Result<(), StoreError> {
        each_store!(self, s => s.put_application(app))
    }

    async fn get_application(&self, id: &str) -> Result<Option<Application>, StoreError> {
        each_store!(self, s => s.get_application(id))
    }

    async fn list_applications(&self) -> Result<Vec<Application>, StoreError> {
        each_store!(self, s => s.list_applications())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        each_store!(self, s => s.ping())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::in_chain;

    #[test]
    fn a_row_that_does_not_decode_is_poison_and_keeps_the_json_error() {
        let Err(cause) = decode_row("[1]", 1, (None, None, None), false) else { panic!("an array is not an object") };
        let store = StoreError::CorruptRow(Cause::with("object a/m/1", cause));
        assert!(store.to_string().starts_with("stored object is corrupt: object a/m/1: body is not a JSON object: "));
        let process = ProcessError::from(store);
        assert!(matches!(process, ProcessError::Poison(_)), "{process:?}");
        assert!(in_chain::<serde_json::Error>(&process).is_some(), "the JSON error is in the chain");
        let Err(cause) = decode_row("{}", -1, (None, None, None), false) else { panic!("a negative version") };
        assert_eq!(cause.to_string(), "negative version -1");
    }
}
