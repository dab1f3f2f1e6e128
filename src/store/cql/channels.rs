//! The channel index in CQL:
//!
//! ```text
//! channel_objects ((app, channel), id) model text, body text (null: a tombstone), version bigint,
//!                 changed_at bigint (the writer's ms)
//! channel_log     ((app, channel), changed_at, id), every entry write, expiring
//! ```
//!
//! `channel_objects` holds each object's current entry in each channel: a page reads the
//! partition from `after` in id order and steps over tombstones. It cannot answer "what changed
//! since" without reading the whole partition, so every entry write also appends a row to
//! `channel_log`, clustered by time: a catch-up reads the log from `since`, collects the distinct
//! ids, then reads their current entries (`id IN`, a chunk per statement, concurrently). An
//! object written several times has several log rows, so the log read stops either at `limit + 1`
//! distinct ids or at [`LOG_ROWS_PER_CHANGE`] rows per allowed change: both answer `None` (too
//! many changes: take a fresh snapshot), which keeps a catch-up's cost bounded by `limit` even on
//! a channel one object rewrites all day.
//!
//! Expiry is the server's: tombstone entries and every log row are written `USING TTL` the
//! tombstone retention; a live entry is written with no TTL, which also lifts the TTL of the
//! tombstone it replaces (all its columns are written). The log is compacted by time window, so
//! whole expired SSTables are dropped rather than compacted. A catch-up from further back than
//! the retention misses what expired; the resume window is what keeps callers inside it.

use std::collections::HashSet;

use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};

use super::errors::{next_row, pager, rows};
use super::{CqlStore, Planned};
use crate::model::ChannelKey;
use crate::store::index::{corrupt_entry, decode_entry};
use crate::store::{ChannelRow, StoreError};

/// Log rows a catch-up reads per change it may return, beyond [`LOG_ROWS_SLACK`].
pub(super) const LOG_ROWS_PER_CHANGE: usize = 4;
/// Lets a few rewrites of one object pass even when `limit` is tiny.
const LOG_ROWS_SLACK: usize = 16;
/// Ids per `id IN ?` statement of a catch-up.
const IDS_PER_READ: usize = 100;
/// The longest TTL Cassandra accepts (20 years).
const MAX_TTL_SECS: u64 = 630_720_000;

/// `channel_objects` columns in the order the selects name them. Only the key is sure to be
/// set: a partial row (written by hand) is that entry's error, not the store's.
type EntryColumns = (Option<String>, String, Option<String>, Option<i64>, Option<i64>);

/// Statements still to run before the object rows land.
pub(super) type Pending<'a> = Vec<BoxFuture<'a, Result<(), StoreError>>>;

/// The TTL of tombstones and log rows: whole seconds rounded up, so never shorter than asked,
/// and at least one (0 would mean "never expires").
pub(super) fn tombstone_ttl(retention: std::time::Duration) -> i32 {
    let secs = retention.as_secs().saturating_add(u64::from(retention.subsec_nanos() > 0));
    let secs = secs.clamp(1, MAX_TTL_SECS);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn decode(
    app: &str,
    channel: &str,
    (model, id, body, version, changed_at): EntryColumns,
) -> Result<ChannelRow, StoreError> {
    let (Some(model), Some(version), Some(changed_at)) = (model, version, changed_at) else {
        return Err(corrupt_entry(app, channel, &id, "model, version or changed_at is missing"));
    };
    decode_entry(model, id.clone(), body.as_deref(), version, changed_at)
        .map_err(|e| corrupt_entry(app, channel, &id, e))
}

impl CqlStore {
    /// Adds the writes of one object's entries and their log rows to `out`.
    pub(super) fn index_writes<'a>(&'a self, app: &'a str, plan: &'a Planned<'a>, out: &mut Pending<'a>) {
        let (entries, model, ttl) = (plan.index, plan.write.model.as_str(), self.tombstone_ttl);
        let live = entries.live.iter().map(|c| (c, Some(plan.body.as_str()), 0));
        let left = entries.left.iter().map(|c| (c, None, ttl));
        for (channel, body, entry_ttl) in live.chain(left) {
            let entry = (app, channel.as_str(), plan.id, model, body, plan.version, entries.changed_at, entry_ttl);
            out.push(self.write("writing a channel entry", &self.prepared.put_entry, entry).boxed());
            let log = (app, channel.as_str(), entries.changed_at, plan.id, ttl);
            out.push(self.write("logging a channel change", &self.prepared.put_log, log).boxed());
        }
    }

    pub(super) async fn page(
        &self,
        app: &str,
        channel: &ChannelKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChannelRow>, StoreError> {
        let what = "reading a channel page";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut stmt = self.prepared.channel_page.clone();
        // Tombstones may take some of the rows, so a page may take a few fetches; never more
        // rows per fetch than the page needs.
        stmt.set_page_size(stmt.get_page_size().min(i32::try_from(limit).unwrap_or(i32::MAX)));
        // Ids are never empty (`put_objects` refuses them), so `''` stands for "from the start".
        let values = (app, channel.as_str(), after.unwrap_or(""));
        let pager = self.session.execute_iter(stmt, values).await.map_err(pager(what))?;
        let mut stream = pager.rows_stream::<EntryColumns>().map_err(rows(what))?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(columns) = stream.try_next().await.map_err(next_row(what))? else { break };
            if columns.2.is_some() {
                out.push(decode(app, channel.as_str(), columns)?);
            }
        }
        Ok(out)
    }

    pub(super) async fn changes(
        &self,
        app: &str,
        channel: &ChannelKey,
        since: u64,
        limit: usize,
    ) -> Result<Option<Vec<ChannelRow>>, StoreError> {
        let what = "reading a channel's change log";
        // Past the column's range nothing can have changed.
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let max_rows = limit.saturating_mul(LOG_ROWS_PER_CHANGE).saturating_add(LOG_ROWS_SLACK);
        let mut stmt = self.prepared.channel_log.clone();
        let wanted = i32::try_from(max_rows.saturating_add(1)).unwrap_or(i32::MAX);
        stmt.set_page_size(stmt.get_page_size().min(wanted));
        let pager = self.session.execute_iter(stmt, (app, channel.as_str(), since)).await.map_err(pager(what))?;
        let mut stream = pager.rows_stream::<(String,)>().map_err(rows(what))?;
        let (mut ids, mut seen, mut read) = (Vec::new(), HashSet::new(), 0usize);
        while let Some((id,)) = stream.try_next().await.map_err(next_row(what))? {
            read += 1;
            if read > max_rows {
                return Ok(None);
            }
            if seen.insert(id.clone()) {
                ids.push(id);
                if ids.len() > limit {
                    return Ok(None);
                }
            }
        }
        let reads = ids.chunks(IDS_PER_READ).map(|chunk| self.entries(app, channel, chunk)).collect();
        let found: Vec<Vec<ChannelRow>> = self.each(reads).await?;
        // An id whose entry is gone had a tombstone that expired after its log row was read.
        Ok(Some(found.into_iter().flatten().collect()))
    }

    /// The current entries of `ids` in `channel`; missing ones are left out.
    async fn entries(&self, app: &str, channel: &ChannelKey, ids: &[String]) -> Result<Vec<ChannelRow>, StoreError> {
        let what = "reading channel entries";
        let values = (app, channel.as_str(), ids);
        let pager =
            self.session.execute_iter(self.prepared.channel_entries.clone(), values).await.map_err(pager(what))?;
        let stream = pager.rows_stream::<EntryColumns>().map_err(rows(what))?;
        let columns: Vec<EntryColumns> = stream.map_err(next_row(what)).try_collect().await?;
        columns.into_iter().map(|c| decode(app, channel.as_str(), c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn tombstones_always_expire_and_within_what_the_server_accepts() {
        assert_eq!(tombstone_ttl(Duration::ZERO), 1);
        assert_eq!(tombstone_ttl(Duration::from_millis(1500)), 2);
        assert_eq!(tombstone_ttl(crate::store::DEFAULT_TOMBSTONE_RETENTION), 86_460);
        assert_eq!(tombstone_ttl(Duration::from_secs(u64::MAX)), 630_720_000);
    }
}
