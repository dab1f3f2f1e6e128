//! The channel index in SQLite:
//!
//! ```text
//! channel_objects (app, channel, id) → model TEXT, body TEXT (the object's JSON; NULL for a
//!                 tombstone), version INTEGER, changed_at INTEGER (the writer's ms),
//!                 expires_at INTEGER (this store's ms; tombstones only)
//!                 index channel_objects_by_time (app, channel, changed_at)
//!                 partial index channel_tombstones_by_expiry (expires_at) WHERE expires_at IS NOT NULL
//! ```
//!
//! One row per (channel, object), replaced by every write that names the channel, so the row is
//! both the object's current entry and its last change: no separate change log is needed. A
//! page walks the primary key from `after`, stepping over tombstones. A catch-up walks
//! `channel_objects_by_time` from `since` (its rows end with the key, so they come ordered by
//! time, then id), reading only what changed and one row past `limit` to tell an overflow.
//!
//! Tombstones only need to outlive the resume window. Each is written with the time it may go,
//! the retention from when it was written (as a CQL TTL counts, and whatever the writer's clock
//! said), and a `put_objects` transaction deletes those due, at most once per [`PURGE_EVERY`]
//! (or per retention, if shorter), through the partial index, so a purge with nothing to do is
//! one index probe. A live write clears the time, so a re-entered channel's entry stays.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, Transaction};

use super::errors::sql;
use super::rows::EncodedObject;
use super::{SqliteStore, StoreError};
use crate::model::{clock, ChannelKey};
use crate::store::index::{corrupt_entry, decode_entry};
use crate::store::ChannelRow;

/// The longest a tombstone past its retention stays, while objects are being written.
pub(super) const PURGE_EVERY: Duration = Duration::from_secs(60);

pub(super) const PUT_ENTRY: &str = "INSERT INTO channel_objects \
     (app, channel, id, model, body, version, changed_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (app, channel, id) DO UPDATE SET model = excluded.model, body = excluded.body, \
     version = excluded.version, changed_at = excluded.changed_at, expires_at = excluded.expires_at";
/// The entry a rebuild writes, unless a writer's is there.
pub(super) const PUT_ENTRY_IF_NONE: &str = "INSERT OR IGNORE INTO channel_objects \
     (app, channel, id, model, body, version, changed_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
/// Ids are never empty (`put_objects` refuses them), so `''` stands for "from the start".
pub(super) const PAGE: &str = "SELECT model, id, body, version, changed_at FROM channel_objects \
     WHERE app = ?1 AND channel = ?2 AND id > ?3 AND body IS NOT NULL ORDER BY id LIMIT ?4";
pub(super) const CHANGES: &str = "SELECT model, id, body, version, changed_at FROM channel_objects \
     WHERE app = ?1 AND channel = ?2 AND changed_at >= ?3 ORDER BY changed_at, id LIMIT ?4";
pub(super) const PURGE: &str = "DELETE FROM channel_objects WHERE expires_at IS NOT NULL AND expires_at < ?1";

/// When this process last purged tombstones; `None` until the first write.
#[derive(Default)]
pub(super) struct PurgeClock(Mutex<Option<Instant>>);

/// When a tombstone written now may go.
pub(super) fn tombstone_expiry(retention: Duration) -> i64 {
    clock::now_millis().saturating_add(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX))
}

/// Writes one object's entries, tombstones to expire at `expires_at`; the caller writes its row
/// after them.
pub(super) fn put_entries(
    tx: &Transaction<'_>,
    app: &str,
    o: &EncodedObject,
    expires_at: i64,
) -> Result<(), StoreError> {
    if o.index.is_empty() {
        return Ok(());
    }
    let what = || format!("indexing object {app}/{}/{} in its channels", o.model, o.id);
    let mut put = tx.prepare_cached(PUT_ENTRY).map_err(|e| sql(what(), e))?;
    let changed_at = o.index.changed_at;
    // `live` and `left` are disjoint, so the order of the two loops decides nothing.
    for channel in &o.index.left {
        let values = params![app, channel, o.id, o.model, None::<&str>, o.version, changed_at, expires_at];
        put.execute(values).map_err(|e| sql(what(), e))?;
    }
    for channel in &o.index.live {
        let values = params![app, channel, o.id, o.model, Some(o.body.as_str()), o.version, changed_at, None::<i64>];
        put.execute(values).map_err(|e| sql(what(), e))?;
    }
    Ok(())
}

/// Deletes the tombstones due, unless a purge ran less than a period ago.
pub(super) fn purge_if_due(tx: &Transaction<'_>, purged: &PurgeClock, retention: Duration) -> Result<(), StoreError> {
    // Only a time is guarded: a panic elsewhere cannot have left it half written.
    let mut last = purged.0.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_some_and(|at| at.elapsed() < retention.min(PURGE_EVERY)) {
        return Ok(());
    }
    let now = clock::now_millis();
    let what = "purging expired channel tombstones";
    let mut purge = tx.prepare_cached(PURGE).map_err(|e| sql(what, e))?;
    let count = purge.execute(params![now]).map_err(|e| sql(what, e))?;
    if count > 0 {
        tracing::debug!(message = "expired channel tombstones purged", count);
    }
    // Counted from the attempt: if the transaction rolls back, the next purge is a period later.
    *last = Some(Instant::now());
    Ok(())
}

/// Indexes every live object of a file written before the channel index existed (schema
/// version 1, in the migration's transaction; or on `index rebuild`): the channels each is on
/// under its application's schema as stored, at `changed_at` = now. Without it, an upgraded
/// file's snapshots would miss every object until its next write. An entry already there was
/// written by a writer and is kept. An application or object that does not decode is left out
/// (it is reported where it is read).
pub(super) fn backfill(tx: &Transaction<'_>) -> Result<usize, StoreError> {
    let what = "indexing the objects of a file from before the channel index";
    let mut apps = std::collections::HashMap::new();
    {
        let mut stmt = tx.prepare(super::schema::LIST_APPS).map_err(|e| sql(what, e))?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(|e| sql(what, e))?;
        for row in rows {
            let (id, body) = row.map_err(|e| sql(what, e))?;
            if let Ok(app) = crate::model::Application::from_json(body.as_bytes()) {
                apps.insert(id, app);
            }
        }
    }
    let now = clock::now_millis();
    let mut stmt =
        tx.prepare("SELECT app, model, id, body, version FROM objects WHERE deleted = 0").map_err(|e| sql(what, e))?;
    let mut put = tx.prepare_cached(PUT_ENTRY_IF_NONE).map_err(|e| sql(what, e))?;
    let mut rows = stmt.query([]).map_err(|e| sql(what, e))?;
    let mut indexed = 0;
    while let Some(row) = rows.next().map_err(|e| sql(what, e))? {
        let (app, model, id, body, version): (String, String, String, String, i64) = (
            row.get(0).map_err(|e| sql(what, e))?,
            row.get(1).map_err(|e| sql(what, e))?,
            row.get(2).map_err(|e| sql(what, e))?,
            row.get(3).map_err(|e| sql(what, e))?,
            row.get(4).map_err(|e| sql(what, e))?,
        );
        let (Some(schema), Ok(object)) =
            (apps.get(&app), serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&body))
        else {
            continue;
        };
        for channel in crate::model::snapshot::indexed_channels(&app, &model, &object, &schema.schema) {
            let values = params![app, channel.as_str(), id, model, Some(body.as_str()), version, now, None::<i64>];
            indexed += put.execute(values).map_err(|e| sql(what, e))?;
        }
    }
    Ok(indexed)
}

/// Runs one of the entry selects and decodes its rows.
fn select(
    conn: &Connection,
    statement: &str,
    (app, channel): (&str, &str),
    (from, limit): (rusqlite::types::Value, usize),
    what: &str,
) -> Result<Vec<ChannelRow>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(statement).map_err(|e| sql(what, e))?;
    let rows = stmt
        .query_map(params![app, channel, from, limit], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get::<_, Option<String>>(2)?, row.get(3)?, row.get(4)?))
        })
        .map_err(|e| sql(what, e))?;
    let mut out = Vec::new();
    for row in rows {
        // STRICT columns hold their declared types: a mismatch here is the file, not one entry.
        let (model, id, body, version, changed_at): (String, String, _, _, _) = row.map_err(|e| sql(what, e))?;
        let entry = decode_entry(model, id.clone(), body.as_deref(), version, changed_at)
            .map_err(|e| corrupt_entry(app, channel, &id, e))?;
        out.push(entry);
    }
    Ok(out)
}

impl SqliteStore {
    /// `index rebuild`: the entries of every live object that has none (see [`backfill`]), in
    /// one transaction; the number written.
    pub async fn rebuild_index(&self) -> Result<usize, StoreError> {
        let what = "rebuilding the channel index";
        self.blocking(what, move |inner| inner.write(what, backfill)).await
    }

    /// Keeps channel tombstones for `retention` (at least; see the module doc) instead of
    /// [`crate::store::DEFAULT_TOMBSTONE_RETENTION`].
    pub fn with_tombstone_retention(mut self, retention: Duration) -> SqliteStore {
        self.tombstone_retention = retention;
        self
    }

    pub(super) async fn page(
        &self,
        app: &str,
        channel: &ChannelKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChannelRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (app, channel) = (app.to_owned(), channel.as_str().to_owned());
        let after = after.unwrap_or("").to_owned();
        self.blocking("reading a channel page", move |inner| {
            inner.read(|conn| {
                let what = format!("reading a page of channel {channel}");
                select(conn, PAGE, (&app, &channel), (after.into(), limit), &what)
            })
        })
        .await
    }

    pub(super) async fn changes(
        &self,
        app: &str,
        channel: &ChannelKey,
        since: u64,
        limit: usize,
    ) -> Result<Option<Vec<ChannelRow>>, StoreError> {
        let (app, channel) = (app.to_owned(), channel.as_str().to_owned());
        // Past the column's range nothing can have changed.
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        self.blocking("reading channel changes", move |inner| {
            inner.read(|conn| {
                let what = format!("reading the changes of channel {channel}");
                let rows = select(conn, CHANGES, (&app, &channel), (since.into(), limit.saturating_add(1)), &what)?;
                Ok((rows.len() <= limit).then_some(rows))
            })
        })
        .await
    }
}
