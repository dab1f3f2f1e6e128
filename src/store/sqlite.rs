//! [`Store`] in one SQLite file inside the process (rusqlite, SQLite compiled in): a store that
//! needs no server, for the single-process mode and for anyone without a Cassandra to hand.
//!
//! Tables (schema version in `PRAGMA user_version`, migrated forward at open; STRICT typing):
//!
//! ```text
//! objects      (app, model, id) → body TEXT (JSON object map), version INTEGER,
//!              last_topic TEXT, last_partition INTEGER, last_offset INTEGER (all or none),
//!              deleted INTEGER (0 or 1)
//! links        (app, child_model, child_id, parent_model, parent_id), the child → objects;
//!              index links_by_parent (app, parent_model, parent_id, child_model, child_id)
//! applications (id) → body TEXT (Application JSON, as the CQL store writes it), updated_at INTEGER (ms)
//! channel_objects (app, channel, id) → each object's entry in each channel's index (`channels.rs`)
//! ```
//!
//! The semantics are the CQL store's: tombstones stay readable, a write replaces the object's
//! links with the ones it names, a tombstone drops them all, `children` lists live children only,
//! and the last write of an object within a call wins. One thing is stronger: each `put_objects`
//! call is one transaction, so it lands whole or not at all (the CQL store needs links written
//! before objects to stay safe when a call fails halfway; here nothing lands halfway).
//!
//! Durability: WAL journal, `synchronous=FULL` (why, in `schema::connect`): once a call returns
//! Ok its data survives a process crash, and also an OS crash or power loss.
//!
//! Concurrency: SQLite has one writer at a time, so there is one write connection behind a mutex;
//! reads take a connection from a small pool and, thanks to WAL, run alongside the writer, each
//! seeing the last committed transaction. Every call runs on tokio's blocking pool, never on a
//! runtime worker thread.

mod channels;
mod errors;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{ChannelRow, ObjectId, ObjectRow, ObjectWrite, Store, StoreError, DEFAULT_TOMBSTONE_RETENTION};
use crate::error::Cause;
use crate::model::{clock, Application, ChannelKey};
use errors::sql;
use rows::{decode_application, decode_object, encode_application, encode_object, EncodedObject};

/// How long a statement waits for a lock another process holds before the call is
/// [`StoreError::Unavailable`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle read connections kept for reuse; more may be open while many reads run at once.
const IDLE_READERS: usize = 4;

/// The SQLite store. Cheap to share behind an `Arc`; every method may be called concurrently.
pub struct SqliteStore {
    inner: Arc<Inner>,
    tombstone_retention: Duration,
}

struct Inner {
    path: PathBuf,
    busy_timeout: Duration,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    purged: channels::PurgeClock,
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`: creates missing parent directories, turns WAL on
    /// and brings the schema to this build's version. Blocks on file I/O: call it at start-up, or
    /// from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, BUSY_TIMEOUT)
    }

    fn open_with(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| errors::io(format!("creating {}", dir.display()), e))?;
        }
        let mut writer = schema::connect(path, busy_timeout, true)?;
        schema::prepare(&mut writer, path)?;
        let inner = Inner {
            path: path.to_owned(),
            busy_timeout,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            purged: channels::PurgeClock::default(),
        };
        Ok(SqliteStore { inner: Arc::new(inner), tombstone_retention: DEFAULT_TOMBSTONE_RETENTION })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool, so SQLite's waits (disk, locks, fsync) never hold a runtime
    /// thread. A caller that stops waiting does not stop `f`; every call is idempotent, so a
    /// retry after that is harmless.
    async fn blocking<T, F>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| errors::joined(what, e))?
    }
}

impl Inner {
    /// Runs `f` on a read connection from the pool, or a new one.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let idle = self.readers.lock().map_err(|_| errors::poisoned("taking a read connection"))?.pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = schema::connect(&self.path, self.busy_timeout, false)?;
                // A reader that tried to write would be a bug; make it an error instead.
                conn.pragma_update(None, "query_only", true).map_err(|e| sql("opening a read connection", e))?;
                conn
            }
        };
        let out = f(&conn);
        // A connection that failed is dropped: whatever went wrong may have been about it.
        if out.is_ok() {
            let mut idle = self.readers.lock().map_err(|_| errors::poisoned("returning a read connection"))?;
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
        }
        out
    }

    /// Runs `f` inside one IMMEDIATE transaction on the write connection, committing if it
    /// returns Ok. IMMEDIATE takes the write lock up front: a deferred transaction that read
    /// first could find another process's commit in between and fail without waiting.
    fn write<T>(
        &self,
        what: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().map_err(|_| errors::poisoned(what))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| sql(what, e))?;
        // On an error the transaction is dropped, which rolls it back.
        let out = f(&tx)?;
        tx.commit().map_err(|e| sql(format!("{what}: committing"), e))?;
        Ok(out)
    }
}

fn put_object(tx: &rusqlite::Transaction<'_>, app: &str, o: &EncodedObject, expires_at: i64) -> Result<(), StoreError> {
    let what = |step: &str| format!("{step} of object {app}/{}/{}", o.model, o.id);
    // Inside one transaction the order of the rows is invisible to readers; the CQL store's
    // order (entries, then the row) is kept all the same.
    channels::put_entries(tx, app, o, expires_at)?;
    let mut clear = tx.prepare_cached(schema::CLEAR_LINKS).map_err(|e| sql(what("clearing the links"), e))?;
    clear.execute(params![app, o.model, o.id]).map_err(|e| sql(what("clearing the links"), e))?;
    // The row before its links: the foreign key checks each link against it.
    let mut put = tx.prepare_cached(schema::PUT_OBJECT).map_err(|e| sql(what("writing the row"), e))?;
    let values = params![app, o.model, o.id, o.body, o.version, o.topic, o.partition, o.offset, i64::from(o.deleted)];
    put.execute(values).map_err(|e| sql(what("writing the row"), e))?;
    let mut link = tx.prepare_cached(schema::PUT_LINK).map_err(|e| sql(what("writing a link"), e))?;
    for (parent_model, parent_id) in &o.links {
        link.execute(params![app, o.model, o.id, parent_model, parent_id])
            .map_err(|e| sql(what("writing a link"), e))?;
    }
    Ok(())
}

impl Store for SqliteStore {
    async fn get_objects(&self, app: &str, ids: &[ObjectId]) -> Result<HashMap<ObjectId, ObjectRow>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (app, ids) = (app.to_owned(), ids.to_vec());
        self.blocking("reading objects", move |inner| {
            inner.read(|conn| {
                // One read transaction: every object from the same snapshot.
                let tx = conn.unchecked_transaction().map_err(|e| sql("reading objects", e))?;
                let mut stmt = tx.prepare_cached(schema::GET_OBJECT).map_err(|e| sql("reading objects", e))?;
                let mut found = HashMap::with_capacity(ids.len());
                for key in ids {
                    let (model, id) = (&key.0, &key.1);
                    let row = stmt
                        .query_row(params![app, model, id], |row| Ok(decode_object(row)))
                        .optional()
                        .map_err(|e| sql(format!("reading object {app}/{model}/{id}"), e))?;
                    if let Some(row) = row {
                        let row = row.map_err(|e| {
                            StoreError::CorruptRow(Cause::with(format_args!("object {app}/{model}/{id}"), e))
                        })?;
                        found.insert(key, row);
                    }
                }
                Ok(found)
            })
        })
        .await
    }

    async fn put_objects(&self, app: &str, writes: &[ObjectWrite]) -> Result<(), StoreError> {
        // Check and encode every write before the transaction, so a bad call writes nothing.
        let encoded: Vec<EncodedObject> = super::index::last_writes(app, writes)?
            .into_iter()
            .map(|(w, index)| encode_object(app, w, index))
            .collect::<Result<_, _>>()?;
        if encoded.is_empty() {
            return Ok(());
        }
        let (app, retention) = (app.to_owned(), self.tombstone_retention);
        self.blocking("writing objects", move |inner| {
            inner.write("writing objects", |tx| {
                let expires_at = channels::tombstone_expiry(retention);
                encoded.iter().try_for_each(|o| put_object(tx, &app, o, expires_at))?;
                channels::purge_if_due(tx, &inner.purged, retention)
            })
        })
        .await
    }

    async fn channel_page(
        &self,
        app: &str,
        channel: &ChannelKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChannelRow>, StoreError> {
        self.page(app, channel, after, limit).await
    }

    async fn channel_changes(
        &self,
        app: &str,
        channel: &ChannelKey,
        since: u64,
        limit: usize,
    ) -> Result<Option<Vec<ChannelRow>>, StoreError> {
        self.changes(app, channel, since, limit).await
    }

    async fn children(&self, app: &str, parent_model: &str, parent_id: &str) -> Result<Vec<ObjectId>, StoreError> {
        let (app, parent_model, parent_id) = (app.to_owned(), parent_model.to_owned(), parent_id.to_owned());
        self.blocking("listing children", move |inner| {
            inner.read(|conn| {
                let what = || format!("listing children of {app}/{parent_model}/{parent_id}");
                let mut stmt = conn.prepare_cached(schema::CHILDREN).map_err(|e| sql(what(), e))?;
                let rows = stmt
                    .query_map(params![app, parent_model, parent_id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .map_err(|e| sql(what(), e))?;
                rows.collect::<Result<Vec<ObjectId>, _>>().map_err(|e| sql(what(), e))
            })
        })
        .await
    }

    async fn put_application(&self, app: &Application) -> Result<(), StoreError> {
        let body = encode_application(app)?;
        let id = app.id.clone();
        let updated_at = clock::now_millis();
        self.blocking("writing an application", move |inner| {
            let what = format!("writing application {id}");
            inner.write(&what, |tx| {
                let mut stmt = tx.prepare_cached(schema::PUT_APP).map_err(|e| sql(&what, e))?;
                stmt.execute(params![id, body, updated_at]).map_err(|e| sql(&what, e))?;
                Ok(())
            })
        })
        .await
    }

    async fn get_application(&self, id: &str) -> Result<Option<Application>, StoreError> {
        let id = id.to_owned();
        self.blocking("reading an application", move |inner| {
            inner.read(|conn| {
                let what = || format!("reading application {id}");
                let mut stmt = conn.prepare_cached(schema::GET_APP).map_err(|e| sql(what(), e))?;
                let row: Option<(String, String)> = stmt
                    .query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
                    .map_err(|e| sql(what(), e))?;
                row.map(|(id, body)| decode_application(&id, &body)).transpose()
            })
        })
        .await
    }

    async fn list_applications(&self) -> Result<Vec<Application>, StoreError> {
        self.blocking("listing applications", |inner| {
            inner.read(|conn| {
                let what = "listing applications";
                let mut stmt = conn.prepare_cached(schema::LIST_APPS).map_err(|e| sql(what, e))?;
                let rows = stmt
                    .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
                    .map_err(|e| sql(what, e))?;
                let mut apps = Vec::new();
                for row in rows {
                    let (id, body) = row.map_err(|e| sql(what, e))?;
                    apps.extend(super::keep_valid_application(decode_application(&id, &body)));
                }
                Ok(apps)
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking("ping", |inner| {
            inner.read(|conn| conn.query_row(schema::PING, [], |_| Ok(())).map_err(|e| sql("ping", e)))
        })
        .await
    }
}
