//! `snapshot` and `catchup` frames (`docs/protocol.md`): a channel's entries cut into pages of at
//! most [`PAGE_OBJECTS`] entries, each closed once over [`PAGE_BYTES`], so a large channel never
//! becomes one huge frame and a client can apply it as it arrives.

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::model::snapshot::{Entry, PAGE_BYTES, PAGE_OBJECTS};

/// Which frames a [`Pager`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `snapshot`: current objects only.
    Snapshot,
    /// `catchup`: current objects and `deleted` entries.
    Catchup,
}

/// Entries in, frames out.
pub struct Pager {
    kind: Kind,
    head: String,
    objects: String,
    deleted: String,
    entries: usize,
    /// Entries pushed in all, `deleted` ones included.
    pub total: usize,
}

#[derive(Serialize)]
struct State<'a> {
    object: &'a Map<String, Value>,
    version: u64,
}

#[derive(Serialize)]
struct Gone<'a> {
    id: &'a str,
    model: &'a str,
    version: u64,
}

impl Pager {
    /// Frames of `kind` for the channel `key`.
    pub fn new(kind: Kind, key: &str) -> Pager {
        let event = match kind {
            Kind::Snapshot => "snapshot",
            Kind::Catchup => "catchup",
        };
        // A channel key is an identifier-checked string: JSON-encoding it cannot fail.
        let key = serde_json::to_string(key).unwrap_or_default();
        let head = format!(r#"{{"event":"{event}","data":{{"channel":{key},"objects":["#);
        Pager { kind, head, objects: String::new(), deleted: String::new(), entries: 0, total: 0 }
    }

    /// Adds an object at a version.
    pub fn object(&mut self, object: &Map<String, Value>, version: u64) -> Option<Utf8Bytes> {
        append(&mut self.objects, &State { object, version });
        self.pushed()
    }

    /// Adds an entry; a `Gone` one in a snapshot is skipped (a snapshot holds live objects only).
    pub fn entry(&mut self, entry: &Entry) -> Option<Utf8Bytes> {
        match entry {
            Entry::State { object, version } => self.object(object, *version),
            Entry::Gone { .. } if self.kind == Kind::Snapshot => None,
            Entry::Gone { id, model, version } => {
                append(&mut self.deleted, &Gone { id, model, version: *version });
                self.pushed()
            }
        }
    }

    /// The last, partly filled page, if any.
    pub fn finish(&mut self) -> Option<Utf8Bytes> {
        (self.entries > 0).then(|| self.page())
    }

    fn pushed(&mut self) -> Option<Utf8Bytes> {
        self.entries += 1;
        self.total += 1;
        let full = self.entries >= PAGE_OBJECTS || self.objects.len() + self.deleted.len() >= PAGE_BYTES;
        full.then(|| self.page())
    }

    fn page(&mut self) -> Utf8Bytes {
        let mut text = String::with_capacity(self.head.len() + self.objects.len() + self.deleted.len() + 20);
        text.push_str(&self.head);
        text.push_str(&self.objects);
        text.push(']');
        if self.kind == Kind::Catchup {
            text.push_str(r#","deleted":["#);
            text.push_str(&self.deleted);
            text.push(']');
        }
        text.push_str("}}");
        self.objects.clear();
        self.deleted.clear();
        self.entries = 0;
        Utf8Bytes::from(text)
    }
}

fn append(list: &mut String, item: &impl Serialize) {
    if !list.is_empty() {
        list.push(',');
    }
    // A stored object is a JSON map and serializes; if it ever did not, nothing is appended.
    if let Ok(text) = serde_json::to_string(item) {
        list.push_str(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(i: usize, pad: usize) -> Map<String, Value> {
        json!({"id": format!("t{i:04}"), "type": "task", "pad": "x".repeat(pad)})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    fn parse(frame: &Utf8Bytes) -> Value {
        serde_json::from_str(frame.as_str()).unwrap_or_default()
    }

    #[test]
    fn pages_close_by_count_and_by_bytes_and_are_valid_frames() {
        let mut pager = Pager::new(Kind::Snapshot, "blg:a:context:c:task");
        let mut frames: Vec<Utf8Bytes> = (0..450).filter_map(|i| pager.object(&obj(i, 10), i as u64)).collect();
        frames.extend(pager.finish());
        let sizes: Vec<usize> =
            frames.iter().map(|f| parse(f)["data"]["objects"].as_array().map_or(0, Vec::len)).collect();
        assert_eq!(sizes, [200, 200, 50]);
        let first = parse(&frames[0]);
        assert_eq!(first["event"], "snapshot");
        assert_eq!(first["data"]["channel"], "blg:a:context:c:task");
        assert_eq!(first["data"]["objects"][1], json!({"object": obj(1, 10), "version": 1}));
        assert_eq!(pager.total, 450);

        let mut big = Pager::new(Kind::Snapshot, "k");
        let mut frames: Vec<Utf8Bytes> = (0..3).filter_map(|i| big.object(&obj(i, 40_000), 1)).collect();
        frames.extend(big.finish());
        let sizes: Vec<usize> =
            frames.iter().map(|f| parse(f)["data"]["objects"].as_array().map_or(0, Vec::len)).collect();
        assert_eq!(sizes, [2, 1], "a page closes once over 64 KiB");
        let mut one = Pager::new(Kind::Snapshot, "k");
        assert!(one.object(&obj(0, 200_000), 1).is_some(), "an object over the budget goes alone");
        assert!(one.finish().is_none());
    }

    #[test]
    fn catchup_pages_carry_deleted_entries_and_snapshots_skip_them() {
        let gone = Entry::Gone { id: "t9".into(), model: "task".into(), version: 4 };
        let mut pager = Pager::new(Kind::Catchup, "k");
        assert!(pager.entry(&Entry::State { object: obj(1, 0), version: 2 }).is_none());
        assert!(pager.entry(&gone).is_none());
        let frame = parse(&pager.finish().unwrap_or_default());
        assert_eq!(frame["event"], "catchup");
        assert_eq!(frame["data"]["deleted"], json!([{"id": "t9", "model": "task", "version": 4}]));
        assert_eq!(frame["data"]["objects"].as_array().map(Vec::len), Some(1));
        let mut snapshot = Pager::new(Kind::Snapshot, "k");
        assert!(snapshot.entry(&gone).is_none());
        assert!(snapshot.finish().is_none(), "nothing to send");
    }
}
