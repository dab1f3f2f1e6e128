//! `index rebuild` on CQL: the channel entries of every live object, for a keyspace written
//! before the channel index existed (the writer keeps the index from then on).
//!
//! It runs beside live writers without a lock: every entry is written `USING TIMESTAMP 1`, so
//! any entry a writer wrote (with the current time) wins over it, whichever lands first. An
//! object read here at an old version and changed meanwhile keeps the writer's entries; an entry
//! nobody wrote gets the object as it was read. No `channel_log` rows are written: no cursor
//! predates the index, so no catch-up asks for these.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};

use super::errors::{execution, next_row, pager, rows};
use super::CqlStore;
use crate::model::snapshot::indexed_channels;
use crate::model::Application;
use crate::store::StoreError;

/// `objects` columns read: app, model, id, body, version, deleted.
type Columns = (String, String, String, Option<String>, Option<i64>, Option<bool>);

/// The write timestamp of rebuilt entries: older than any write a writer makes.
const REBUILT_AT: i64 = 1;

impl CqlStore {
    /// Writes the channel entries of every live object of a known application; the number of
    /// entries written. Idempotent, and safe while writers run (see the module doc).
    pub async fn rebuild_index(&self, apps: &HashMap<String, Application>) -> Result<u64, StoreError> {
        let what = "rebuilding the channel index";
        let ks = self.keyspace();
        let put = self
            .session()
            .prepare(format!(
                "INSERT INTO {ks}.channel_objects (app, channel, id, model, body, version, changed_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP {REBUILT_AT}"
            ))
            .await
            .map_err(|e| StoreError::Corrupt(crate::error::Cause::with(what, e)))?;
        let scan = format!("SELECT app, model, id, body, version, deleted FROM {ks}.objects");
        let pager = self.session().query_iter(scan, ()).await.map_err(pager(what))?;
        let mut objects = pager.rows_stream::<Columns>().map_err(rows(what))?;
        let changed_at = crate::model::clock::now_millis();
        let mut writes = Vec::new();
        let mut written = 0u64;
        while let Some((app, model, id, body, version, deleted)) = objects.try_next().await.map_err(next_row(what))? {
            let (Some(body), Some(version), Some(false) | None) = (body, version, deleted) else { continue };
            let Some(application) = apps.get(&app) else { continue };
            // A body that does not decode is the object's own problem, reported where it is read.
            let Ok(object) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&body) else {
                continue;
            };
            for channel in indexed_channels(&app, &model, &object, &application.schema) {
                writes.push((app.clone(), channel.into_string(), id.clone(), model.clone(), body.clone(), version));
            }
            if writes.len() >= 1_000 {
                written += self.put_rebuilt(&put, std::mem::take(&mut writes), changed_at).await?;
            }
        }
        written += self.put_rebuilt(&put, writes, changed_at).await?;
        Ok(written)
    }

    async fn put_rebuilt(
        &self,
        put: &scylla::statement::prepared::PreparedStatement,
        writes: Vec<(String, String, String, String, String, i64)>,
        changed_at: i64,
    ) -> Result<u64, StoreError> {
        let count = writes.len() as u64;
        futures::stream::iter(writes)
            .map(|(app, channel, id, model, body, version)| async move {
                let values = (app, channel, id, model, body, version, changed_at);
                self.session().execute_unpaged(put, values).await.map_err(execution("writing a rebuilt channel entry"))
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(count)
    }
}
