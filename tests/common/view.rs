//! A client's view of one subscription, built from frames by the rules of `docs/protocol.md`
//! (the rules `web/client.js` follows): what a subscriber ends up holding, and how many
//! entries it dropped as duplicates.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

#[derive(Debug, Default)]
pub struct View {
    /// The subscription's channel key.
    pub key: String,
    /// id → (version, object).
    pub objects: BTreeMap<String, (u64, Map<String, Value>)>,
    pub tombstones: BTreeMap<String, u64>,
    /// Patches that arrived ahead of the state they apply to: id → (version, patch).
    pending: BTreeMap<String, Vec<(u64, Value)>>,
    /// The latest cursor the server gave.
    pub cursor: Option<String>,
    /// Entries received but not applied: already held at that version or newer.
    pub duplicates: usize,
    /// Entries applied.
    pub applied: usize,
    /// Bytes of `snapshot` and `catchup` frames received.
    pub sync_bytes: usize,
    /// Bytes of `message` frames received.
    pub delta_bytes: usize,
}

/// What a frame was to the view.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    SnapshotEnd,
    CatchupEnd,
    Other,
}

impl View {
    pub fn new(key: &str) -> View {
        View { key: key.to_string(), ..View::default() }
    }

    /// Applies one frame (`text` is its raw text, for the byte counts).
    pub fn apply(&mut self, frame: &Value, text_len: usize) -> Seen {
        let data = &frame["data"];
        match frame["event"].as_str().unwrap_or_default() {
            "snapshot" | "catchup" if data["channel"] == self.key.as_str() => {
                self.sync_bytes += text_len;
                for item in data["objects"].as_array().into_iter().flatten() {
                    self.state(&item["object"], item["version"].as_u64().unwrap_or_default());
                }
                for gone in data["deleted"].as_array().into_iter().flatten() {
                    self.gone(gone["id"].as_str().unwrap_or_default(), gone["version"].as_u64().unwrap_or_default());
                }
                Seen::Other
            }
            "snapshot_end" | "catchup_end" if data["channel"] == self.key.as_str() => {
                self.cursor = data["cursor"].as_str().map(str::to_string);
                if frame["event"] == "snapshot_end" {
                    Seen::SnapshotEnd
                } else {
                    Seen::CatchupEnd
                }
            }
            "cursor" => {
                self.cursor = data["cursor"].as_str().map(str::to_string);
                Seen::Other
            }
            "message" => {
                self.delta_bytes += text_len;
                for kind in ["new", "updated", "deleted"] {
                    for d in data[kind].as_array().into_iter().flatten() {
                        let ours =
                            d["subscriptions"].as_array().is_some_and(|s| s.iter().any(|k| k == self.key.as_str()));
                        if ours {
                            self.delta(kind, d);
                        }
                    }
                }
                Seen::Other
            }
            _ => Seen::Other,
        }
    }

    fn delta(&mut self, kind: &str, d: &Value) {
        let v = d["version"].as_u64().unwrap_or_default();
        match kind {
            "new" => self.state(&d["object"], v),
            "deleted" => self.gone(d["object"]["id"].as_str().unwrap_or_default(), v),
            _ => {
                let path = d["patch"]["path"].as_str().unwrap_or_default();
                let id = path.split('/').nth(1).unwrap_or_default().to_string();
                if self.tombstones.get(&id).is_some_and(|t| *t >= v) {
                    self.duplicates += 1;
                    return;
                }
                match self.objects.get(&id).map(|(have, _)| *have) {
                    Some(have) if v <= have => self.duplicates += 1,
                    Some(have) if v == have + 1 => {
                        self.patch(&id, v, &d["patch"]);
                        self.drain_pending(&id);
                    }
                    _ => self.pending.entry(id).or_default().push((v, d["patch"].clone())),
                }
            }
        }
    }

    fn state(&mut self, object: &Value, v: u64) {
        let Some(object) = object.as_object() else { return };
        let id = object["id"].as_str().unwrap_or_default().to_string();
        let have = self.objects.get(&id).map_or(0, |(h, _)| *h);
        let tomb = self.tombstones.get(&id).copied().unwrap_or(0);
        if (self.objects.contains_key(&id) && v <= have) || (tomb > 0 && v <= tomb) {
            self.duplicates += 1;
            return;
        }
        self.objects.insert(id.clone(), (v, object.clone()));
        self.tombstones.remove(&id);
        self.applied += 1;
        self.drain_pending(&id);
    }

    fn gone(&mut self, id: &str, v: u64) {
        match self.objects.get(id) {
            Some((have, _)) if v >= *have => {
                self.objects.remove(id);
                self.applied += 1;
            }
            Some(_) => self.duplicates += 1,
            None => {}
        }
        let tomb = self.tombstones.entry(id.to_string()).or_insert(0);
        *tomb = (*tomb).max(v);
    }

    fn patch(&mut self, id: &str, v: u64, patch: &Value) {
        let Some((have, object)) = self.objects.get_mut(id) else { return };
        let field = patch["path"].as_str().unwrap_or_default().split('/').nth(2).unwrap_or_default().to_string();
        match patch["op"].as_str().unwrap_or_default() {
            "increment" => {
                let now = object.get(&field).and_then(Value::as_i64).unwrap_or(0);
                let by = patch["value"].as_i64().unwrap_or(0);
                object.insert(field, Value::from(now + by));
            }
            _ => {
                object.insert(field, patch["value"].clone());
            }
        }
        *have = v;
        self.applied += 1;
    }

    fn drain_pending(&mut self, id: &str) {
        let Some(mut waiting) = self.pending.remove(id) else { return };
        waiting.sort_by_key(|(v, _)| *v);
        for (v, patch) in waiting {
            let have = self.objects.get(id).map_or(0, |(h, _)| *h);
            if v <= have {
                self.duplicates += 1;
            } else if v == have + 1 {
                self.patch(id, v, &patch);
            } else {
                self.pending.entry(id.to_string()).or_default().push((v, patch));
            }
        }
    }

    /// Patches still waiting for a state (a gap the server never filled).
    pub fn gaps(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// id → the field `field` of every held object.
    pub fn field(&self, field: &str) -> BTreeMap<String, Value> {
        self.objects.iter().map(|(id, (_, o))| (id.clone(), o.get(field).cloned().unwrap_or(Value::Null))).collect()
    }
}
