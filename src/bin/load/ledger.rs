//! Exactly what every client is owed, and the audit of what it got. The writer books each change
//! it sent under its channel as the (object, version) key a subscription receives it by, with
//! whether a filtered subscription is owed it and when it was sent. At the end each client
//! process compares its clients' deliveries with the book key by key: lost, duplicated and
//! unexpected deltas per client, with samples (which object and version, sent and received when)
//! that tell a crash test which failure they followed. Counting alone would let a missing delta
//! and a stray one cancel out.
//!
//! The book also holds the final state of every object sent, for a harness that compares the
//! store with it (`--published`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::plan::{owed, Change, Op};

/// Samples of each kind one client process reports at most.
const SAMPLES: usize = 20;

/// `<run>-<n>` → n: object ids of one run differ only by their number.
pub fn object_number(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The key of a delta: object number and version in one integer (versions below 2^24).
pub fn key(object: u64, version: u64) -> u64 {
    object << 24 | (version & 0xff_ffff)
}

/// One delta every subscription of a channel is owed (a filtered one only if `filtered`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Owed {
    pub key: u64,
    pub filtered: bool,
    pub sent_us: u64,
}

/// An object as the changes sent leave it; the store must end up holding exactly this.
#[derive(Clone, Debug, Serialize)]
pub struct Final {
    pub channel: usize,
    pub score: u32,
    pub version: u64,
    pub deleted: bool,
}

#[derive(Default, Debug, Serialize, Deserialize)]
pub struct Ledger {
    pub channels: HashMap<usize, Vec<Owed>>,
    #[serde(skip)]
    pub objects: BTreeMap<String, Final>,
}

impl Ledger {
    pub fn book(&mut self, change: &Change, sent_us: u64) {
        let filtered = owed(change).1 == 1;
        let entry = Owed { key: key(object_number(&change.id), change.version), filtered, sent_us };
        self.channels.entry(change.channel).or_default().push(entry);
        let score = change.after.or(change.before).unwrap_or_default();
        let deleted = change.op == Op::Delete;
        self.objects
            .insert(change.id.clone(), Final { channel: change.channel, score, version: change.version, deleted });
    }
}

/// One client's deliveries against what it was owed.
#[derive(Clone, Copy, Default, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Audit {
    pub received: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub unexpected: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Lost,
    Duplicate,
    Unexpected,
}

/// One delta gone wrong: never received, received more than once, or never owed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub kind: Kind,
    pub client: usize,
    pub object: u64,
    pub version: u64,
    /// When the writer sent the change (unix µs), if it was sent to this client's channels.
    pub sent_us: Option<u64>,
    /// When the client received each copy (unix µs).
    pub received_us: Vec<u64>,
}

/// Audits client `client`, subscribed to `subs` (channel, filtered), that received `seen`
/// (key, arrival µs) in any order; adds up to [`SAMPLES`] of each kind to `samples`.
pub fn audit(
    client: usize,
    subs: &[(usize, bool)],
    seen: &mut [(u64, u64)],
    ledger: &Ledger,
    samples: &mut Vec<Sample>,
) -> Audit {
    let mut owed: BTreeMap<u64, u64> = BTreeMap::new();
    for (channel, filtered) in subs {
        for o in ledger.channels.get(channel).map(Vec::as_slice).unwrap_or_default() {
            if o.filtered || !filtered {
                owed.insert(o.key, o.sent_us);
            }
        }
    }
    seen.sort_unstable();
    let mut a = Audit { received: seen.len() as u64, ..Audit::default() };
    let mut sample = |kind: Kind, key: u64, sent_us: Option<u64>, received_us: Vec<u64>| {
        if samples.iter().filter(|s| s.kind == kind).count() < SAMPLES {
            let (object, version) = (key >> 24, key & 0xff_ffff);
            samples.push(Sample { kind, client, object, version, sent_us, received_us });
        }
    };
    for copies in seen.chunk_by(|x, y| x.0 == y.0) {
        let k = copies[0].0;
        a.unique += 1;
        let sent = owed.remove(&k);
        if copies.len() > 1 {
            a.duplicates += copies.len() as u64 - 1;
            sample(Kind::Duplicate, k, sent, copies.iter().map(|c| c.1).collect());
        }
        if sent.is_none() {
            a.unexpected += 1;
            sample(Kind::Unexpected, k, None, copies.iter().map(|c| c.1).collect());
        }
    }
    a.lost = owed.len() as u64;
    for (k, sent) in owed {
        sample(Kind::Lost, k, Some(sent), Vec::new());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: Op, channel: usize, n: u64, version: u64, before: Option<u32>, after: Option<u32>) -> Change {
        Change { op, channel, id: format!("run-{n}"), before, after, version }
    }

    #[test]
    fn the_audit_tells_lost_duplicate_and_unexpected_deltas_apart() {
        let mut ledger = Ledger::default();
        ledger.book(&change(Op::Create, 0, 1, 1, None, Some(10)), 100);
        ledger.book(&change(Op::Update, 0, 1, 2, Some(10), Some(90)), 200);
        ledger.book(&change(Op::Update, 0, 1, 3, Some(90), Some(20)), 300);
        ledger.book(&change(Op::Create, 1, 2, 1, None, Some(70)), 400);
        ledger.book(&change(Op::Delete, 1, 2, 2, Some(70), None), 500);

        // Unfiltered on channel 0: v2 twice, v3 never, and v7 of object 1 that was never sent.
        let mut samples = Vec::new();
        let mut seen = vec![(key(1, 2), 20), (key(1, 1), 10), (key(1, 2), 21), (key(1, 7), 30)];
        let a = audit(5, &[(0, false)], &mut seen, &ledger, &mut samples);
        assert_eq!(a, Audit { received: 4, unique: 3, lost: 1, duplicates: 1, unexpected: 1 });
        let kinds: Vec<(Kind, u64, u64)> = samples.iter().map(|s| (s.kind, s.object, s.version)).collect();
        assert_eq!(kinds, [(Kind::Duplicate, 1, 2), (Kind::Unexpected, 1, 7), (Kind::Lost, 1, 3)]);
        assert_eq!(samples[0].received_us, [20, 21]);
        assert_eq!(samples[2].sent_us, Some(300));

        // Filtered (score >= 50) on both: the enter (v2) and leave (v3) on 0, create and delete on 1.
        let mut seen = vec![(key(1, 2), 1), (key(1, 3), 2), (key(2, 1), 3), (key(2, 2), 4)];
        let a = audit(6, &[(0, true), (1, true)], &mut seen, &ledger, &mut Vec::new());
        assert_eq!(a, Audit { received: 4, unique: 4, ..Audit::default() });
    }

    #[test]
    fn the_book_keeps_each_objects_final_state() {
        let mut ledger = Ledger::default();
        ledger.book(&change(Op::Create, 3, 1, 1, None, Some(10)), 1);
        ledger.book(&change(Op::Update, 3, 1, 2, Some(10), Some(40)), 2);
        ledger.book(&change(Op::Create, 3, 2, 1, None, Some(60)), 3);
        ledger.book(&change(Op::Delete, 3, 2, 2, Some(60), None), 4);
        let f = |id: &str| ledger.objects.get(id).map(|f| (f.score, f.version, f.deleted));
        assert_eq!(f("run-1"), Some((40, 2, false)));
        assert_eq!(f("run-2"), Some((60, 2, true)));
        assert_eq!(key(object_number("load123-42"), 5) >> 24, 42);
    }
}
