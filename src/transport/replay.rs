//! Replays stopped before they reach a device. A writer or transport manager that crashed after
//! producing but before committing produces the same records again (the same events, routed by
//! a deterministic plan into byte-identical transport messages); a transport remembers what it
//! delivered lately and drops an exact repeat. Only a repeat of the same bytes for the same
//! application, object and version is dropped, so nothing a device has not been sent can be
//! lost here; anything else (another device chunk of the same version, a delivery re-routed
//! because a subscription changed) still goes out, and the client's own version check is the
//! second line.
//!
//! The memory is the process's own: a transport that restarts starts empty, so a replay that
//! crosses the transport's own crash is delivered again.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashlink::LruCache;

/// Deliveries remembered per transport, about 14 MB (56 bytes each, allocator included). A
/// replay arrives after the deliveries made while the crashed role restarted and rejoined,
/// seconds of traffic: at 5,000 transport messages a second this holds the last 50 s. Counted
/// per delivery, not per object, so neither the 20 device chunks of one change to a channel of
/// 10,000 phones nor an object updated many times within the window push out what a replay
/// is about to repeat.
pub const REMEMBERED_DELIVERIES: usize = 250_000;

/// A delivery's identity: a keyed hash of its application, object, version and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery(u64);

/// What a transport delivered lately, least recently seen forgotten first.
pub struct Replays {
    seen: LruCache<u64, ()>,
    /// Random keys per process: the hash decides what is dropped, and message contents come
    /// from clients, so nobody may craft a message that collides with another's.
    keys: RandomState,
}

impl Replays {
    pub fn new(capacity: usize) -> Self {
        Replays { seen: LruCache::new(capacity.max(1)), keys: RandomState::new() }
    }

    /// The identity of `payload`, the transport message of `object` at `version`.
    pub fn delivery(&self, application: &str, object: &str, version: u64, payload: &[u8]) -> Delivery {
        Delivery(self.keys.hash_one((application, object, version, payload)))
    }

    /// Whether `delivery` was remembered (and keeps it longest, should it be replayed again).
    pub fn seen(&mut self, delivery: Delivery) -> bool {
        self.seen.get(&delivery.0).is_some()
    }

    pub fn remember(&mut self, delivery: Delivery) {
        self.seen.insert(delivery.0, ());
    }

    /// Whether the delivery is new here; remembers it if so. For a transport whose delivery is
    /// done once it is handed on (sockets); one that may redo a batch remembers only once the
    /// batch's deliveries ended.
    pub fn admit(&mut self, application: &str, object: &str, version: u64, payload: &[u8]) -> bool {
        let delivery = self.delivery(application, object, version, payload);
        if self.seen(delivery) {
            return false;
        }
        self.remember(delivery);
        true
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
        assert!(d.admit("a", "o1", 5, b"m3"), "the same bytes named another version");
    }

    #[test]
    fn memory_is_bounded_by_deliveries_and_the_least_recently_seen_goes_first() {
        let mut d = Replays::new(3);
        for o in ["o1", "o2", "o3"] {
            assert!(d.admit("a", o, 1, b"x"));
        }
        assert!(!d.admit("a", "o1", 1, b"x"), "a replay refreshes what it repeats");
        assert!(d.admit("a", "o4", 1, b"x"));
        assert!(d.admit("a", "o2", 1, b"x"), "o2, least recently seen, was forgotten");
        assert!(!d.admit("a", "o1", 1, b"x"));
    }

    #[test]
    fn many_deliveries_of_one_object_are_all_remembered() {
        // 20 device chunks of one version, then the whole sequence replayed: none passes.
        let mut d = Replays::new(100);
        let chunks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 4]).collect();
        for c in &chunks {
            assert!(d.admit("a", "o", 1, c));
        }
        for c in &chunks {
            assert!(!d.admit("a", "o", 1, c), "chunk {c:?} replayed");
        }
    }

    #[test]
    fn a_delivery_checked_is_not_remembered_until_told() {
        let mut d = Replays::new(10);
        let m = d.delivery("a", "o", 1, b"m");
        assert!(!d.seen(m));
        assert!(!d.seen(m), "checking alone remembers nothing");
        d.remember(m);
        assert!(d.seen(m));
        assert_eq!(m, d.delivery("a", "o", 1, b"m"), "the same delivery, the same identity");
    }
}
