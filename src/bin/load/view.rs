//! What one subscription of a churning client holds, kept by the version rules of
//! `docs/protocol.md` ("Applying frames exactly once"), with the counts the churn report needs:
//! entries applied, entries dropped as duplicates, entries applied a second time (a bug: the
//! rules must make that impossible), and patches still waiting for a state they follow (gaps).
//!
//! Only what the load tool's objects carry is kept: each object's version and `score`.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::ledger::object_number;

/// One held object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub version: u64,
    pub score: Option<i64>,
}

/// A patch that arrived before the version it follows.
#[derive(Clone, Debug)]
struct Waiting {
    version: u64,
    op: String,
    value: Value,
}

/// Counts of what the view did with the entries it received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Entries (states, patches, removals) that changed what the view holds.
    pub applied: u64,
    /// Entries received but dropped by version: the view already held that version or newer.
    pub duplicates_dropped: u64,
    /// Entries applied although the same (object, version, kind) had been applied before.
    pub duplicates_applied: u64,
    /// Objects removed at the end of a snapshot because none of its pages held them.
    pub removed_by_snapshot: u64,
}

#[derive(Debug, Default)]
pub struct View {
    pub objects: HashMap<String, Held>,
    tombstones: HashMap<String, u64>,
    pending: HashMap<String, Vec<Waiting>>,
    /// (object number, version, removal?) of every entry applied, to catch one applied twice.
    applied: HashSet<(u64, u64, bool)>,
    /// While a snapshot is in flight: the ids its pages held, and those changed otherwise.
    seen: Option<HashSet<String>>,
    touched: HashSet<String>,
    pub counts: Counts,
}

impl View {
    /// A snapshot was asked for: from now on, note what its pages hold and what else changes.
    pub fn begin_snapshot(&mut self) {
        self.seen = Some(HashSet::new());
        self.touched.clear();
    }

    /// The snapshot broke off (the connection dropped, or `resync_required`): no removal pass.
    pub fn abandon_snapshot(&mut self) {
        self.seen = None;
        self.touched.clear();
    }

    /// The snapshot is whole: an object held but in none of its pages, and not changed since it
    /// was asked for, is gone; it is removed with a tombstone at the version held.
    pub fn end_snapshot(&mut self) {
        let Some(seen) = self.seen.take() else { return };
        let gone: Vec<(String, u64)> = self
            .objects
            .iter()
            .filter(|(id, _)| !seen.contains(*id) && !self.touched.contains(*id))
            .map(|(id, h)| (id.clone(), h.version))
            .collect();
        for (id, version) in gone {
            self.objects.remove(&id);
            self.tombstones.insert(id, version);
            self.counts.removed_by_snapshot += 1;
        }
        self.touched.clear();
    }

    /// One object of a `snapshot` page.
    pub fn snapshot_item(&mut self, item: &Value) {
        let object = &item["object"];
        let Some(id) = object["id"].as_str() else { return };
        if let Some(seen) = &mut self.seen {
            seen.insert(id.to_string());
        }
        self.full(id, item["version"].as_u64().unwrap_or(0), object["score"].as_i64(), false);
    }

    /// One `objects` entry of a `catchup` page.
    pub fn catchup_item(&mut self, item: &Value) {
        let object = &item["object"];
        let Some(id) = object["id"].as_str() else { return };
        self.full(id, item["version"].as_u64().unwrap_or(0), object["score"].as_i64(), true);
    }

    /// One `deleted` entry of a `catchup` page.
    pub fn catchup_gone(&mut self, gone: &Value) {
        let Some(id) = gone["id"].as_str() else { return };
        self.gone(id, gone["version"].as_u64().unwrap_or(0));
    }

    /// One delta of a `message` frame; `kind` is `new`, `updated` or `deleted`.
    pub fn delta(&mut self, kind: &str, d: &Value) {
        let version = d["version"].as_u64().unwrap_or(0);
        match kind {
            "new" => {
                if let Some(id) = d["object"]["id"].as_str() {
                    self.full(id, version, d["object"]["score"].as_i64(), true);
                }
            }
            "deleted" => {
                if let Some(id) = d["object"]["id"].as_str() {
                    self.gone(id, version);
                }
            }
            _ => {
                let patch = &d["patch"];
                let mut path = patch["path"].as_str().unwrap_or_default().split('/');
                let id = path.nth(1).unwrap_or_default().to_string();
                let waiting = Waiting {
                    version,
                    op: patch["op"].as_str().unwrap_or_default().to_string(),
                    value: patch["value"].clone(),
                };
                self.patch(&id, waiting);
            }
        }
    }

    /// A full state: taken when its version is above the one held and above the tombstone.
    fn full(&mut self, id: &str, version: u64, score: Option<i64>, touch: bool) {
        if touch && self.seen.is_some() {
            self.touched.insert(id.to_string());
        }
        let held = self.objects.get(id).map(|h| h.version);
        let tomb = self.tombstones.get(id).copied();
        if held.is_some_and(|h| version <= h) || tomb.is_some_and(|t| version <= t) {
            self.counts.duplicates_dropped += 1;
            return;
        }
        self.objects.insert(id.to_string(), Held { version, score });
        self.tombstones.remove(id);
        self.mark(id, version, false);
        self.drain(id);
    }

    /// A removal: taken when its version is at or above the one held; leaves a tombstone.
    fn gone(&mut self, id: &str, version: u64) {
        if self.seen.is_some() {
            self.touched.insert(id.to_string());
        }
        match self.objects.get(id).map(|h| h.version) {
            Some(held) if version >= held => {
                self.objects.remove(id);
                self.mark(id, version, true);
            }
            Some(_) => self.counts.duplicates_dropped += 1,
            None if self.tombstones.get(id).is_some_and(|t| *t >= version) => self.counts.duplicates_dropped += 1,
            None => {}
        }
        let tomb = self.tombstones.entry(id.to_string()).or_insert(0);
        *tomb = (*tomb).max(version);
        self.drain(id);
    }

    /// A patch: applies at the held version plus one; at or below it is a duplicate; above it
    /// (or for an object not held) it waits for a state that covers it.
    fn patch(&mut self, id: &str, w: Waiting) {
        if self.seen.is_some() {
            self.touched.insert(id.to_string());
        }
        if self.tombstones.get(id).is_some_and(|t| *t >= w.version) {
            self.counts.duplicates_dropped += 1;
            return;
        }
        match self.objects.get(id).map(|h| h.version) {
            Some(held) if w.version <= held => self.counts.duplicates_dropped += 1,
            Some(held) if w.version == held + 1 => {
                self.apply_patch(id, &w);
                self.drain(id);
            }
            _ => self.pending.entry(id.to_string()).or_default().push(w),
        }
    }

    fn apply_patch(&mut self, id: &str, w: &Waiting) {
        let Some(held) = self.objects.get_mut(id) else { return };
        // The load tool's updates replace `score`; an increment is handled for completeness.
        held.score = match w.op.as_str() {
            "increment" => Some(held.score.unwrap_or(0) + w.value.as_i64().unwrap_or(0)),
            _ => w.value.as_i64(),
        };
        held.version = w.version;
        self.mark(id, w.version, false);
    }

    /// Patches waiting for `id` that now apply or are covered.
    fn drain(&mut self, id: &str) {
        let Some(mut waiting) = self.pending.remove(id) else { return };
        waiting.sort_by_key(|w| w.version);
        let mut still = Vec::new();
        for w in waiting {
            let held = self.objects.get(id).map(|h| h.version);
            let tomb = self.tombstones.get(id).copied().unwrap_or(0);
            if w.version <= tomb || held.is_some_and(|h| w.version <= h) {
                self.counts.duplicates_dropped += 1;
            } else if held.is_some_and(|h| w.version == h + 1) {
                self.apply_patch(id, &w);
            } else {
                still.push(w);
            }
        }
        if !still.is_empty() {
            self.pending.insert(id.to_string(), still);
        }
    }

    fn mark(&mut self, id: &str, version: u64, removal: bool) {
        self.counts.applied += 1;
        if !self.applied.insert((object_number(id), version, removal)) {
            self.counts.duplicates_applied += 1;
        }
    }

    /// Patches still waiting for a state that never came.
    pub fn gaps(&self) -> u64 {
        self.pending.values().map(|w| w.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new(id: &str, v: u64, score: i64) -> Value {
        json!({"object": {"id": id, "score": score}, "version": v})
    }

    fn upd(id: &str, v: u64, score: i64) -> Value {
        json!({"patch": {"op": "replace", "path": format!("item/{id}/score"), "value": score}, "version": v})
    }

    #[test]
    fn duplicates_are_dropped_and_gaps_wait_for_a_state() {
        let mut view = View::default();
        view.delta("new", &new("r-1", 1, 10));
        view.delta("updated", &upd("r-1", 2, 20));
        view.delta("updated", &upd("r-1", 2, 20));
        view.catchup_item(&new("r-1", 2, 20));
        assert_eq!(view.objects["r-1"], Held { version: 2, score: Some(20) });
        assert_eq!(view.counts.duplicates_dropped, 2);
        // v4 before v3: waits, then both apply in order.
        view.delta("updated", &upd("r-1", 4, 40));
        assert_eq!(view.gaps(), 1);
        view.delta("updated", &upd("r-1", 3, 30));
        assert_eq!((view.objects["r-1"], view.gaps()), (Held { version: 4, score: Some(40) }, 0));
        // A patch of an object never held waits until a catch-up brings its state.
        view.delta("updated", &upd("r-2", 3, 5));
        view.catchup_item(&new("r-2", 3, 5));
        assert_eq!((view.objects["r-2"].version, view.gaps()), (3, 0));
        assert_eq!(view.counts.duplicates_applied, 0);
    }

    #[test]
    fn a_removal_leaves_a_tombstone_that_refuses_older_states() {
        let mut view = View::default();
        view.delta("new", &new("r-1", 1, 10));
        view.catchup_gone(&json!({"id": "r-1", "model": "item", "version": 2}));
        assert!(view.objects.is_empty());
        view.catchup_item(&new("r-1", 1, 10));
        view.delta("updated", &upd("r-1", 2, 3));
        view.delta("deleted", &json!({"object": {"id": "r-1"}, "version": 2}));
        assert!(view.objects.is_empty());
        assert_eq!(view.counts.duplicates_dropped, 3);
        assert_eq!(view.counts.duplicates_applied, 0);
    }

    #[test]
    fn a_whole_snapshot_removes_what_it_no_longer_holds_unless_changed_meanwhile() {
        let mut view = View::default();
        view.delta("new", &new("r-1", 1, 10));
        view.delta("new", &new("r-2", 1, 10));
        view.delta("new", &new("r-3", 1, 10));
        view.begin_snapshot();
        view.delta("updated", &upd("r-3", 2, 11));
        view.snapshot_item(&new("r-1", 4, 1));
        view.end_snapshot();
        let mut held: Vec<_> = view.objects.keys().cloned().collect();
        held.sort();
        assert_eq!(held, ["r-1", "r-3"], "r-2 is in no page and untouched: gone");
        assert_eq!(view.counts.removed_by_snapshot, 1);
        view.catchup_item(&new("r-2", 1, 10));
        assert!(!view.objects.contains_key("r-2"), "its tombstone refuses the version it had");
    }
}
