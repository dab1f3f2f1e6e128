//! Replays stopped before they reach a client. A writer or transport manager that crashed after
//! producing but before committing produces the same records again (the same events, routed by
//! a deterministic plan into byte-identical transport messages); this transport remembers what
//! it handed to its connections, per object, and drops an exact repeat. Only a repeat of the same
//! bytes for the same object and version is dropped, so nothing a client has not seen can be
//! lost here; anything else (a re-routed delivery after a subscription changed) still reaches
//! the client, whose own version check is the second line.

use std::hash::{DefaultHasher, Hash, Hasher};

use hashlink::LruCache;

/// Objects remembered per transport: a replay re-delivers at most the batches in flight of the
/// roles upstream (`TP_BATCH_SIZE` records each), far fewer than this.
pub const REMEMBERED_OBJECTS: usize = 100_000;

/// (version, hash of the transport message) pairs kept per object: one per distinct delivery of
/// a version (devices that hold different channels get different messages).
const DELIVERIES_PER_OBJECT: usize = 8;

/// What this transport delivered lately, by a hash of (application, object id): the lookup on
/// every delivery allocates nothing. Two objects sharing a key hash only share the bound of 8;
/// a repeat is still recognised by the hash of the whole message, which names both.
pub struct Replays {
    seen: LruCache<u64, Vec<(u64, u64)>>,
}

impl Replays {
    pub fn new(capacity: usize) -> Self {
        Replays { seen: LruCache::new(capacity.max(1)) }
    }

    /// Whether `payload`, the transport message of `object` at `version`, is new here; records
    /// it if so.
    pub fn admit(&mut self, application: &str, object: &str, version: u64, payload: &[u8]) -> bool {
        let hash = |parts: &[&[u8]]| {
            let mut hasher = DefaultHasher::new();
            parts.hash(&mut hasher);
            hasher.finish()
        };
        let entry = (version, hash(&[payload]));
        let key = hash(&[application.as_bytes(), object.as_bytes()]);
        match self.seen.get_mut(&key) {
            Some(entries) if entries.contains(&entry) => false,
            Some(entries) => {
                if entries.len() == DELIVERIES_PER_OBJECT {
                    entries.remove(0);
                }
                entries.push(entry);
                true
            }
            None => {
                self.seen.insert(key, vec![entry]);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_repeat_is_dropped_and_everything_else_passes() {
        let mut d = Replays::new(10);
        assert!(d.admit("a", "o1", 3, b"m3"));
        assert!(!d.admit("a", "o1", 3, b"m3"), "the same bytes again: a replay");
        assert!(d.admit("a", "o1", 3, b"m3-other-devices"), "another delivery of the same version");
        assert!(d.admit("a", "o1", 4, b"m4"));
        assert!(!d.admit("a", "o1", 3, b"m3"), "an older replay after a newer version");
        assert!(d.admit("b", "o1", 3, b"m3"), "another application's object of the same id");
        assert!(d.admit("a", "o2", 3, b"m3"), "another object");
    }

    #[test]
    fn memory_is_bounded_by_objects_and_deliveries_per_object() {
        let mut d = Replays::new(2);
        assert!(d.admit("a", "o1", 1, b"x"));
        assert!(d.admit("a", "o2", 1, b"x"));
        assert!(d.admit("a", "o3", 1, b"x"));
        assert!(d.admit("a", "o1", 1, b"x"), "the least recently used object was forgotten");
        for v in 0..(DELIVERIES_PER_OBJECT as u64 + 1) {
            assert!(d.admit("a", "o9", v, b"y"));
        }
        assert!(d.admit("a", "o9", 0, b"y"), "the oldest delivery of an object was forgotten");
        assert!(!d.admit("a", "o9", DELIVERIES_PER_OBJECT as u64, b"y"));
    }
}
