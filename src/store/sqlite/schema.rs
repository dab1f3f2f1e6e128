//! The file's settings, its tables, and the statements on them.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::errors::sql;
use crate::store::StoreError;

/// `MIGRATIONS[v]` takes a file from schema version `v` (`PRAGMA user_version`, 0 for a new file) to
/// `v + 1`. Later layouts append a step; a file is never migrated downwards.
const MIGRATIONS: &[&str] = &[
    // STRICT: a value of the wrong type is refused when written, not discovered when read.
    // WITHOUT ROWID: every lookup is by primary key, so the key is the row.
    "CREATE TABLE IF NOT EXISTS objects (
         app TEXT NOT NULL, model TEXT NOT NULL, id TEXT NOT NULL,
         body TEXT NOT NULL, version INTEGER NOT NULL,
         last_topic TEXT, last_partition INTEGER, last_offset INTEGER,
         deleted INTEGER NOT NULL,
         PRIMARY KEY (app, model, id)
     ) STRICT, WITHOUT ROWID;
     -- Keyed by the child, so a write finds and replaces the links its object recorded; no link
     -- outlives or predates its object's row.
     CREATE TABLE IF NOT EXISTS links (
         app TEXT NOT NULL, child_model TEXT NOT NULL, child_id TEXT NOT NULL,
         parent_model TEXT NOT NULL, parent_id TEXT NOT NULL,
         PRIMARY KEY (app, child_model, child_id, parent_model, parent_id),
         FOREIGN KEY (app, child_model, child_id) REFERENCES objects (app, model, id)
     ) STRICT, WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS links_by_parent ON links (app, parent_model, parent_id, child_model, child_id);
     CREATE TABLE IF NOT EXISTS applications (
         id TEXT NOT NULL PRIMARY KEY, body TEXT NOT NULL, updated_at INTEGER NOT NULL
     ) STRICT, WITHOUT ROWID;",
    // The channel index (`channels.rs`). An existing file gets it empty: objects stored before
    // are indexed by their next write.
    "CREATE TABLE IF NOT EXISTS channel_objects (
         app TEXT NOT NULL, channel TEXT NOT NULL, id TEXT NOT NULL,
         model TEXT NOT NULL, body TEXT, version INTEGER NOT NULL, changed_at INTEGER NOT NULL,
         expires_at INTEGER,
         PRIMARY KEY (app, channel, id)
     ) STRICT, WITHOUT ROWID;
     -- Catch-ups read the entries changed since a time without walking the whole channel.
     CREATE INDEX IF NOT EXISTS channel_objects_by_time ON channel_objects (app, channel, changed_at);
     -- Only tombstones expire: the purge finds the due ones without reading a live entry.
     CREATE INDEX IF NOT EXISTS channel_tombstones_by_expiry ON channel_objects (expires_at)
         WHERE expires_at IS NOT NULL;",
];

/// The schema version this build writes and reads.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) const GET_OBJECT: &str = "SELECT body, version, last_topic, last_partition, last_offset, deleted \
     FROM objects WHERE app = ?1 AND model = ?2 AND id = ?3";
pub(super) const PUT_OBJECT: &str = "INSERT INTO objects \
     (app, model, id, body, version, last_topic, last_partition, last_offset, deleted) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (app, model, id) DO UPDATE SET body = excluded.body, version = excluded.version, \
     last_topic = excluded.last_topic, last_partition = excluded.last_partition, \
     last_offset = excluded.last_offset, deleted = excluded.deleted";
pub(super) const CLEAR_LINKS: &str = "DELETE FROM links WHERE app = ?1 AND child_model = ?2 AND child_id = ?3";
pub(super) const PUT_LINK: &str = "INSERT OR IGNORE INTO links (app, child_model, child_id, parent_model, parent_id) \
     VALUES (?1, ?2, ?3, ?4, ?5)";
/// The join repeats what tombstones already guarantee (they drop their links), so `children`
/// answers "live children" even if a link were ever left behind.
pub(super) const CHILDREN: &str = "SELECT l.child_model, l.child_id FROM links l \
     JOIN objects o ON o.app = l.app AND o.model = l.child_model AND o.id = l.child_id \
     WHERE l.app = ?1 AND l.parent_model = ?2 AND l.parent_id = ?3 AND o.deleted = 0 \
     ORDER BY l.child_model, l.child_id";
pub(super) const PUT_APP: &str = "INSERT INTO applications (id, body, updated_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at";
pub(super) const GET_APP: &str = "SELECT id, body FROM applications WHERE id = ?1";
pub(super) const LIST_APPS: &str = "SELECT id, body FROM applications ORDER BY id";
/// Reads a table, not just the library: proves the file is open, readable and holds the schema.
pub(super) const PING: &str = "SELECT count(*) FROM (SELECT 1 FROM applications LIMIT 1)";

/// Opens one connection with the settings every connection needs (they are per connection).
/// Only the first connection `create`s the file: a reader finding it gone must fail, not start an
/// empty store.
pub(super) fn connect(path: &Path, busy_timeout: Duration, create: bool) -> Result<Connection, StoreError> {
    let what = format!("opening {}", path.display());
    // No SQLITE_OPEN_URI: a configured path is a path, even one that starts with `file:`.
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| sql(&what, e))?;
    // Another process on the same file (a second worker, an operator's sqlite3 shell) holds the
    // write lock for a moment: wait that long instead of failing at once.
    conn.busy_timeout(busy_timeout).map_err(|e| sql(&what, e))?;
    // Durability: FULL fsyncs the WAL at every commit. NORMAL would already survive a process
    // crash (a commit has reached the OS), but a power loss or kernel crash could roll back the
    // last commits before a checkpoint. The file would stay consistent, yet the writer commits its
    // Kafka input offsets right after `put_objects` returns, so those rolled-back objects would
    // never be replayed: silent loss. FULL costs one fsync per commit, and the writer commits one
    // `put_objects` per batch. Power loss then loses nothing that was acknowledged.
    conn.pragma_update(None, "synchronous", "FULL").map_err(|e| sql(&what, e))?;
    // Checks the links → objects key, which only the code guarantees otherwise.
    conn.pragma_update(None, "foreign_keys", true).map_err(|e| sql(&what, e))?;
    Ok(conn)
}

/// Turns WAL on (a property of the file, kept across opens) and brings the schema to
/// [`SCHEMA_VERSION`]. Idempotent; concurrent openers of one file are serialised by the write lock.
pub(super) fn prepare(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let what = format!("preparing {}", path.display());
    // WAL: readers never block the writer nor the writer them, and a commit appends to one file.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(|e| sql(&what, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // E.g. a file system without shared memory: refuse rather than run with other guarantees.
        return Err(StoreError::Corrupt(
            format!("sqlite: {what}: journal_mode is {mode}, WAL could not be enabled").into(),
        ));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| sql(&what, e))?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(|e| sql(&what, e))?;
    let from = usize::try_from(version).ok().filter(|&v| v <= MIGRATIONS.len()).ok_or_else(|| {
        StoreError::Corrupt(
            format!("sqlite: {what}: schema version {version} is not one this build knows (up to {SCHEMA_VERSION})")
                .into(),
        )
    })?;
    for (step, ddl) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.execute_batch(ddl).map_err(|e| sql(format!("{what}: migrating to schema version {}", step + 1), e))?;
        // Version 2 added the channel index: a file that already held objects gets them indexed.
        if step == 1 && from == 1 {
            let entries = super::channels::backfill(&tx)?;
            tracing::info!(message = "channel index built for the objects already stored", entries);
        }
    }
    if from < MIGRATIONS.len() {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| sql(&what, e))?;
    }
    tx.commit().map_err(|e| sql(&what, e))
}
