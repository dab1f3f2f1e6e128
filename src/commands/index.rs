//! `index rebuild`: the channel index (snapshots and resumes, `docs/protocol.md`) for the objects
//! a store held before the index existed. The writer keeps the index of every object it writes;
//! a SQLite file is indexed when its schema is migrated; this is for a CQL keyspace that already
//! held objects (and harmless anywhere: entries a writer wrote are kept).

use std::collections::HashMap;

use crate::config::Config;
use crate::error::WorkerError;
use crate::store::{MainStore, Store};

/// Rebuilds the index of `cfg`'s main store; the number of entries written.
pub async fn rebuild(cfg: &Config) -> Result<u64, WorkerError> {
    let store = MainStore::connect(cfg).await.map_err(|e| WorkerError::Unavailable(format!("main store: {e}")))?;
    let apps = store
        .list_applications()
        .await
        .map_err(|e| WorkerError::Unavailable(format!("reading the applications: {e}")))?;
    let apps: HashMap<_, _> = apps.into_iter().map(|a| (a.id.clone(), a)).collect();
    store.rebuild_index(&apps).await.map_err(|e| WorkerError::Fatal(format!("rebuilding the channel index: {e}")))
}
