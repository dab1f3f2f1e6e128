//! What a connection delivered on one channel between a snapshot (or a resume's catch-up) and
//! its settle catch-up (`sync.rs`), so the settle does not send a state again that the snapshot,
//! the catch-up or a delivery already gave the client.
//!
//! Without it, the catch-up resent every object changed around the subscribe: on a busy channel
//! that was most of them (`tests/snapshot.rs`, 300 subscribes racing a stream: 15,303 entries
//! received twice and dropped by version; 222 with no settle at all). The connection's loop
//! shows it each frame it writes while the watch is open; frames that do not name the channel
//! are passed over with one substring search, and the watch closes at the catch-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde_json::Value;

/// Objects a connection holds at a version on one channel, as far as this watch saw.
pub struct Watch {
    /// The channel key as deliveries name it in `subscriptions`, quoted (a whole JSON string).
    quoted: String,
    versions: Mutex<HashMap<String, u64>>,
    done: AtomicBool,
}

impl Watch {
    /// A watch of the channel `key`, knowing the client holds `seed` (id → version).
    pub fn new(key: &str, seed: HashMap<String, u64>) -> Watch {
        Watch {
            quoted: serde_json::to_string(key).unwrap_or_default(),
            versions: Mutex::new(seed),
            done: AtomicBool::new(false),
        }
    }

    /// Notes the versions a frame written to the client carries on this channel.
    pub fn saw(&self, frame: &str) {
        if !frame.contains(&self.quoted) || !frame.starts_with(r#"{"event":"message""#) {
            return;
        }
        let Ok(parsed) = serde_json::from_str::<Value>(frame) else { return };
        let key = &self.quoted[1..self.quoted.len() - 1];
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        for list in ["new", "updated", "deleted"] {
            for delta in parsed["data"][list].as_array().into_iter().flatten() {
                let ours = delta["subscriptions"].as_array().is_some_and(|s| s.iter().any(|k| k == key));
                let id = delta["object"]["id"]
                    .as_str()
                    .or_else(|| delta["patch"]["path"].as_str().and_then(|p| p.split('/').nth(1)));
                let (true, Some(id), Some(version)) = (ours, id, delta["version"].as_u64()) else { continue };
                match (list, versions.get_mut(id)) {
                    // A patch leaves the client at its version only if it held the one before:
                    // after a gap (the change a catch-up must bring) it holds the patch unapplied.
                    ("updated", Some(held)) if *held + 1 == version => *held = version,
                    ("updated", _) => {}
                    (_, Some(held)) => *held = (*held).max(version),
                    (_, None) => {
                        versions.insert(id.to_owned(), version);
                    }
                }
            }
        }
    }

    /// Notes that the client holds `id` at `version` (from the snapshot it was sent).
    pub fn holds(&self, id: &str, version: u64) {
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let held = versions.entry(id.to_owned()).or_insert(version);
        *held = (*held).max(version);
    }

    /// Whether the client already got `id` at `version` or later.
    pub fn covers(&self, id: &str, version: u64) -> bool {
        let versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        versions.get(id).is_some_and(|held| *held >= version)
    }

    /// The catch-up is out: nothing more to note.
    pub fn close(&self) {
        self.done.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_watch_notes_the_highest_version_of_each_object_on_its_channel_only() {
        let w = Watch::new("blg:a:list:l1:task", HashMap::from([("s".to_string(), 3)]));
        let frame = |kind: &str, delta: Value| json!({"event": "message", "data": {kind: [delta]}}).to_string();
        w.saw(&frame("new", json!({"object": {"id": "n"}, "version": 1, "subscriptions": ["blg:a:list:l1:task"]})));
        w.holds("u", 5);
        w.saw(&frame(
            "updated",
            json!({"patch": {"path": "task/u/votes"}, "version": 6, "subscriptions": ["blg:a:list:l1:task"]}),
        ));
        w.saw(&frame(
            "updated",
            json!({"patch": {"path": "task/u/votes"}, "version": 7, "subscriptions": ["blg:a:list:l1:task"]}),
        ));
        // After a gap (s holds 3; 4 never came), a patch is not a state the client holds.
        w.saw(&frame(
            "updated",
            json!({"patch": {"path": "task/s/votes"}, "version": 5, "subscriptions": ["blg:a:list:l1:task"]}),
        ));
        w.saw(&frame(
            "updated",
            json!({"patch": {"path": "task/m/votes"}, "version": 2, "subscriptions": ["blg:a:list:l1:task"]}),
        ));
        w.saw(&frame("new", json!({"object": {"id": "other"}, "version": 9, "subscriptions": ["blg:a:list:l2:task"]})));
        w.saw(
            &json!({"event": "broadcast", "data": {"object": {"id": "b"}, "subscriptions": ["blg:a:list:l1:task"]}})
                .to_string(),
        );
        assert!(w.covers("s", 3) && !w.covers("s", 4) && !w.covers("s", 5), "the seed, and no patch past a gap");
        assert!(!w.covers("m", 2), "a patch of an object the client never held");
        assert!(w.covers("n", 1) && w.covers("u", 7) && !w.covers("u", 8));
        assert!(!w.covers("other", 1), "another channel's delivery");
        assert!(!w.covers("b", 0), "a broadcast is no state");
        assert!(!w.is_closed());
        w.close();
        assert!(w.is_closed());
    }
}
