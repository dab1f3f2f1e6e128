//! A channel's objects read from the main store for one subscription: the snapshot, page by
//! page, and the compacted catch-up since a time (`docs/protocol.md`). Shared by the sockets
//! transport (`subscribe` with `snapshot` or `resume`) and the ingress's `GET /objects`.
//!
//! A `{model, id}` channel is its object's row; every other channel is read from the store's
//! channel index, which the writer keeps (`store::ChannelIndexWrite`). The subscription's
//! filter is applied here, on the stored state.

use serde_json::{Map, Value};

use crate::model::snapshot::{entry_for, Entry, STORE_PAGE};
use crate::model::{Channel, ChannelKey, Filter};
use crate::store::{MainStore, ObjectId, Store, StoreError};

/// What a subscription reads: its application, channel and filter.
pub struct ChannelRead<'a> {
    pub store: &'a MainStore,
    pub app: &'a str,
    pub channel: &'a Channel,
    pub filter: Option<&'a Filter>,
}

impl ChannelRead<'_> {
    /// The unfiltered key the index holds the channel under.
    fn base(&self) -> Result<ChannelKey, StoreError> {
        self.channel
            .key(self.app, None)
            .map_err(|e| StoreError::Corrupt(crate::error::Cause::with("channel key of an authorized channel", e)))
    }

    /// The object of a `{model, id}` channel as it is stored (live or tombstone), if any.
    async fn own_row(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        let key: ObjectId = (self.channel.model.clone(), id.to_owned());
        let mut rows = self.store.get_objects(self.app, std::slice::from_ref(&key)).await?;
        Ok(rows.remove(&key).map(|row| {
            let body = (!row.deleted).then_some(row.object.object);
            entry_for(id, &self.channel.model, body, row.object.version, self.filter)
        }))
    }

    /// Every object of the channel that changed at or after `since` (milliseconds), once, as it is
    /// now to this subscription; `None` beyond `limit` objects (the client takes a snapshot).
    /// A `{model, id}` channel answers with its object's current state, changed or not.
    pub async fn changes(&self, since: u64, limit: usize) -> Result<Option<Vec<Entry>>, StoreError> {
        if let Some(id) = &self.channel.id {
            return Ok(Some(self.own_row(id).await?.into_iter().collect()));
        }
        let Some(rows) = self.store.channel_changes(self.app, &self.base()?, since, limit).await? else {
            return Ok(None);
        };
        let mut entries: Vec<Entry> =
            rows.into_iter().map(|r| entry_for(&r.id, &r.model, r.body, r.version, self.filter)).collect();
        // Gone first: a client applying a page in order never holds an object twice when one
        // replaced another (the order is otherwise the store's).
        entries.sort_by_key(|e| matches!(e, Entry::State { .. }));
        Ok(Some(entries))
    }

    /// The channel's live objects page by page: see [`Snapshot::next`].
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { after: None, done: false }
    }
}

/// A snapshot's object: its state, version, and when its entry last changed (if known).
pub type Item = (Map<String, Value>, u64, Option<u64>);

/// A snapshot in progress: where the last store page ended.
pub struct Snapshot {
    after: Option<String>,
    done: bool,
}

impl Snapshot {
    /// The next store page's objects that match the filter, with their versions and when their
    /// entries last changed (`None` for a `{model, id}` channel's object: its row says not),
    /// possibly none while more pages remain; `None` once the channel is read.
    pub async fn next(&mut self, read: &ChannelRead<'_>) -> Result<Option<Vec<Item>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        if let Some(id) = &read.channel.id {
            self.done = true;
            let found = read.own_row(id).await?;
            return Ok(Some(match found {
                Some(Entry::State { object, version }) => vec![(object, version, None)],
                _ => Vec::new(),
            }));
        }
        let rows = read.store.channel_page(read.app, &read.base()?, self.after.as_deref(), STORE_PAGE).await?;
        self.done = rows.len() < STORE_PAGE;
        self.after = rows.last().map(|r| r.id.clone());
        Ok(Some(
            rows.into_iter()
                .filter_map(|r| match entry_for(&r.id, &r.model, r.body, r.version, read.filter) {
                    Entry::State { object, version } => Some((object, version, Some(r.changed_at))),
                    Entry::Gone { .. } => None,
                })
                .collect(),
        ))
    }
}
