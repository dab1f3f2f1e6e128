//! What both stores share about the channel index ([`super::Store::channel_page`],
//! [`super::Store::channel_changes`]): the entries one `put_objects` call writes, and the decoding
//! of an entry read back.
//!
//! An entry is keyed by (app, channel, id): every channel holds one model, so the id alone names
//! the object within it. A live entry carries the object's JSON (the text its row holds), a
//! tombstone none; both carry the version and the writer's `changed_at`, which a catch-up selects
//! by.

use std::collections::{BTreeSet, HashMap};

use super::{last_write_per_object, ChannelRow, ObjectId, ObjectWrite, StoreError};
use crate::error::Cause;

/// The index entries of one object in one `put_objects` call, as the columns hold them.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct IndexEntries {
    /// Channel keys that get a live entry.
    pub(crate) live: BTreeSet<String>,
    /// Channel keys that get a tombstone entry; never one of `live`.
    pub(crate) left: BTreeSet<String>,
    pub(crate) changed_at: i64,
}

impl IndexEntries {
    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty() && self.left.is_empty()
    }
}

/// The last write of each object (see [`last_write_per_object`]) with the index entries of the
/// whole call for it.
///
/// Only the last write's row is stored, but the index must also forget what the earlier writes
/// put it on: an object moved from A to B and then from B to C within one call names only B as
/// left in its last write, yet it is not on A any more either. So every channel any write of the
/// object named, live or left, that the last write does not keep gets a tombstone. A tombstone
/// write keeps no channel live, whatever it names.
pub(crate) fn last_writes<'a>(
    app: &str,
    writes: &'a [ObjectWrite],
) -> Result<Vec<(&'a ObjectWrite, IndexEntries)>, StoreError> {
    let mut named: HashMap<ObjectId, BTreeSet<String>> = HashMap::new();
    for w in writes {
        let channels = w.index.channels.iter().chain(&w.index.left);
        named.entry(w.key()).or_default().extend(channels.map(|c| c.as_str().to_owned()));
    }
    last_write_per_object(writes)
        .into_iter()
        .map(|w| {
            let live: BTreeSet<String> = if w.row.deleted {
                BTreeSet::new()
            } else {
                w.index.channels.iter().map(|c| c.as_str().to_owned()).collect()
            };
            let mut left = named.remove(&w.key()).unwrap_or_default();
            left.retain(|c| !live.contains(c));
            let changed_at = i64::try_from(w.index.changed_at).map_err(|_| {
                StoreError::Corrupt(
                    format!(
                        "object {app}/{}/{}: changed_at {} too large",
                        w.model,
                        w.row.object.id(),
                        w.index.changed_at
                    )
                    .into(),
                )
            })?;
            Ok((w, IndexEntries { live, left, changed_at }))
        })
        .collect()
}

/// An entry from its columns; the error names what is wrong, the caller names the entry.
pub(crate) fn decode_entry(
    model: String,
    id: String,
    body: Option<&str>,
    version: i64,
    changed_at: i64,
) -> Result<ChannelRow, Cause> {
    let body = body
        .map(serde_json::from_str::<serde_json::Map<String, serde_json::Value>>)
        .transpose()
        .map_err(|e| Cause::with("body is not a JSON object", e))?;
    let version = u64::try_from(version).map_err(|_| format!("negative version {version}"))?;
    let changed_at = u64::try_from(changed_at).map_err(|_| format!("negative changed_at {changed_at}"))?;
    Ok(ChannelRow { model, id, body, version, changed_at })
}

/// The error for an entry that does not decode: it spoils the one read that needs it, as a
/// corrupt object row does, not the whole store.
pub(crate) fn corrupt_entry(app: &str, channel: &str, id: &str, e: impl Into<crate::error::BoxError>) -> StoreError {
    StoreError::CorruptRow(Cause::with(format_args!("channel entry {app}/{channel}/{id}"), e))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Map};

    use super::*;
    use crate::model::{ChannelKey, StoredObject};
    use crate::store::{ChannelIndexWrite, ObjectRow};

    fn write(version: u64, deleted: bool, channels: &[&str], left: &[&str]) -> ObjectWrite {
        let mut object = Map::new();
        object.insert("id".into(), json!("t1"));
        let keys = |cs: &[&str]| cs.iter().map(|c| ChannelKey::from_stored(c.to_string())).collect();
        ObjectWrite {
            model: "task".into(),
            row: ObjectRow { object: StoredObject { object, version, last_applied: None }, deleted },
            parents: Vec::new(),
            recorded: None,
            index: ChannelIndexWrite { channels: keys(channels), left: keys(left), changed_at: version * 10 },
        }
    }

    fn set(cs: &[&str]) -> BTreeSet<String> {
        cs.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn earlier_writes_of_an_object_leave_no_live_entry_behind() {
        let writes = [write(1, false, &["b"], &["a"]), write(2, false, &["c", "c"], &["b"])];
        let got = last_writes("app", &writes).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.row.object.version, 2);
        assert_eq!(got[0].1, IndexEntries { live: set(&["c"]), left: set(&["a", "b"]), changed_at: 20 });

        // Back where it started: the channel is live again, not left.
        let writes = [write(1, false, &["b"], &["a"]), write(2, false, &["a"], &["b"])];
        assert_eq!(last_writes("app", &writes).unwrap()[0].1.live, set(&["a"]));
        assert_eq!(last_writes("app", &writes).unwrap()[0].1.left, set(&["b"]));
    }

    #[test]
    fn a_tombstone_keeps_nothing_live() {
        let writes = [write(3, true, &["a"], &["b"])];
        let got = last_writes("app", &writes).unwrap();
        assert_eq!(got[0].1, IndexEntries { live: BTreeSet::new(), left: set(&["a", "b"]), changed_at: 30 });
    }

    #[test]
    fn out_of_range_values_are_refused_or_reported() {
        let mut w = write(1, false, &["a"], &[]);
        w.index.changed_at = u64::MAX;
        assert!(matches!(last_writes("app", &[w]), Err(StoreError::Corrupt(_))));
        assert!(decode_entry("m".into(), "i".into(), Some("[1]"), 1, 1).is_err());
        assert!(decode_entry("m".into(), "i".into(), None, -1, 1).is_err());
        assert!(decode_entry("m".into(), "i".into(), None, 1, -1).is_err());
        let row = decode_entry("m".into(), "i".into(), Some(r#"{"a":1}"#), 2, 3).unwrap();
        assert_eq!((row.body.unwrap()["a"].clone(), row.version, row.changed_at), (json!(1), 2, 3));
    }
}
