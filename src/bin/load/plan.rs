//! The workload: who subscribes to what, which change comes next, and, from the objects' state,
//! how many deltas each subscription must receive. Pure: the writer and the report share it.
//!
//! Channels are contexts `c0..c{C-1}` of model `item`. Client `i` subscribes to `K` consecutive
//! channels starting at `i*K mod C` (fan-out per channel `M*K/C`), each filtered with
//! probability `F` by `score >= 50`. Every change touches one object of one channel, and an
//! update replaces only `score`, so every subscription gets at most one delta per change:
//!
//! | subscription | create | update (before → after) | delete |
//! |---|---|---|---|
//! | unfiltered | 1 | 1 | 1 |
//! | filtered | 1 if after matches | 1 if before or after matches (enter, stay, leave) | 1 if before matched |
//!
//! The aggregator merges consecutive updates of one object within one batch (up to
//! `TP_BATCH_SIZE`, 500, records when it lags behind), and a filtered subscription then sees one
//! transition for the merged change instead of one per update, which is right but not what the
//! table counts. So the generator touches channels and objects round-robin: the same object
//! comes back only after every other live object, [`Generator::revisit`] changes later, and a
//! run with more live objects than a batch holds is never merged.

use serde_json::{json, Value};

pub const MODEL: &str = "item";
pub const THRESHOLD: u32 = 50;

#[derive(Clone, Debug)]
pub struct Shape {
    pub clients: usize,
    pub channels: usize,
    pub subs_per_client: usize,
    /// Fraction of subscriptions that are filtered, in [0, 1].
    pub filtered: f64,
}

impl Shape {
    /// (channel, filtered) of each subscription of client `i`.
    pub fn subscriptions(&self, i: usize) -> Vec<(usize, bool)> {
        let k = self.subs_per_client.min(self.channels);
        (0..k).map(|j| ((i * k + j) % self.channels, unit(i as u64 * 7919 + j as u64) < self.filtered)).collect()
    }

    pub fn channel(c: usize) -> Value {
        json!({"model": MODEL, "context": format!("c{c}")})
    }

    pub fn filter() -> Value {
        json!({"and": [{"range": {"score": {"gte": THRESHOLD}}}]})
    }
}

/// Deterministic value in [0, 1) for a seed (splitmix64).
pub fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// One change the writer sends.
#[derive(Clone, Debug)]
pub struct Change {
    pub op: Op,
    pub channel: usize,
    pub id: String,
    pub before: Option<u32>,
    pub after: Option<u32>,
    /// The object's version once this change is applied: 1 for a create, one more per update,
    /// and one more for the delete (CONTRACT section 7).
    pub version: u64,
}

/// A live object: id, score, version.
type Live = (String, u32, u64);

/// Deltas this change owes an unfiltered and a filtered subscription of its channel.
pub fn owed(change: &Change) -> (u64, u64) {
    let m = |s: Option<u32>| s.is_some_and(|s| s >= THRESHOLD);
    let filtered = match change.op {
        Op::Create => m(change.after),
        Op::Update => m(change.before) || m(change.after),
        Op::Delete => m(change.before),
    };
    (1, u64::from(filtered))
}

/// The objects of every channel and the sequence of changes, from a seed.
pub struct Generator {
    live: Vec<Vec<Live>>,
    cursor: Vec<usize>,
    next_id: u64,
    step: u64,
    mix: [f64; 3],
    run: String,
}

impl Generator {
    /// `mix` = weights of create, update, delete; `run` makes object ids unique per run.
    pub fn new(channels: usize, mix: [f64; 3], run: &str) -> Generator {
        let total: f64 = mix.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        Generator {
            live: vec![Vec::new(); channels.max(1)],
            cursor: vec![0; channels.max(1)],
            next_id: 0,
            step: 0,
            mix: mix.map(|w| w / total),
            run: run.to_string(),
        }
    }

    /// Creates `per_channel` objects in every channel (the warm-up before measuring).
    pub fn seed(&mut self, per_channel: usize) -> Vec<Change> {
        let channels = self.live.len();
        (0..per_channel).flat_map(|_| (0..channels).collect::<Vec<_>>()).map(|c| self.create(c)).collect()
    }

    /// Changes between two changes of the same object (live objects, all channels).
    pub fn revisit(&self) -> usize {
        self.live.iter().map(Vec::len).sum()
    }

    pub fn next_change(&mut self) -> Change {
        self.step += 1;
        let channel = (self.step as usize) % self.live.len();
        let roll = unit(self.step * 17 + 3);
        let op = if self.live[channel].is_empty() || roll < self.mix[0] {
            Op::Create
        } else if roll < self.mix[0] + self.mix[1] {
            Op::Update
        } else {
            Op::Delete
        };
        match op {
            Op::Create => self.create(channel),
            Op::Update | Op::Delete => {
                let objects = &mut self.live[channel];
                let at = self.cursor[channel] % objects.len();
                self.cursor[channel] = at + 1;
                if op == Op::Delete {
                    let (id, score, version) = objects.swap_remove(at);
                    return Change { op, channel, id, before: Some(score), after: None, version: version + 1 };
                }
                let score = (unit(self.step * 11 + 7) * 100.0) as u32;
                let object = &mut objects[at];
                let before = std::mem::replace(&mut object.1, score);
                object.2 += 1;
                Change {
                    op,
                    channel,
                    id: object.0.clone(),
                    before: Some(before),
                    after: Some(score),
                    version: object.2,
                }
            }
        }
    }

    fn create(&mut self, channel: usize) -> Change {
        self.next_id += 1;
        let id = format!("{}-{}", self.run, self.next_id);
        let score = (unit(self.next_id * 7 + 1) * 100.0) as u32;
        self.live[channel].push((id.clone(), score, 1));
        Change { op: Op::Create, channel, id, before: None, after: Some(score), version: 1 }
    }
}

/// The aggregation message of a change, stamped `timestamp_us` (the latency origin).
pub fn message(app: &str, change: &Change, timestamp_us: u64) -> Value {
    let context = format!("c{}", change.channel);
    match change.op {
        Op::Create => json!({"op": "create", "application_id": app, "timestamp": timestamp_us,
            "object": {"id": change.id, "type": MODEL, "application_id": app, "context_id": context,
                       "score": change.after, "title": "load tool object"}}),
        Op::Update => json!({"op": "update", "application_id": app, "timestamp": timestamp_us,
            "patches": [{"op": "replace", "path": format!("{MODEL}/{}/score", change.id), "value": change.after}]}),
        Op::Delete => json!({"op": "delete", "application_id": app, "timestamp": timestamp_us,
            "object": {"model": MODEL, "id": change.id}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_spread_evenly_and_filters_follow_the_fraction() {
        let shape = Shape { clients: 1000, channels: 100, subs_per_client: 3, filtered: 0.5 };
        let mut per_channel = vec![0; 100];
        let mut filtered = 0;
        for i in 0..1000 {
            for (c, f) in shape.subscriptions(i) {
                per_channel[c] += 1;
                filtered += usize::from(f);
            }
        }
        assert!(per_channel.iter().all(|&n| n == 30), "{per_channel:?}");
        assert!((1300..1700).contains(&filtered), "{filtered}");
    }

    #[test]
    fn filtered_subscriptions_owe_enter_stay_and_leave_only() {
        let c = |op, before, after| Change { op, channel: 0, id: "x".into(), before, after, version: 1 };
        assert_eq!(owed(&c(Op::Create, None, Some(10))), (1, 0));
        assert_eq!(owed(&c(Op::Create, None, Some(60))), (1, 1));
        assert_eq!(owed(&c(Op::Update, Some(10), Some(20))), (1, 0));
        assert_eq!(owed(&c(Op::Update, Some(10), Some(60))), (1, 1), "enter");
        assert_eq!(owed(&c(Op::Update, Some(60), Some(10))), (1, 1), "leave");
        assert_eq!(owed(&c(Op::Delete, Some(60), None)), (1, 1));
        assert_eq!(owed(&c(Op::Delete, Some(10), None)), (1, 0));
    }

    #[test]
    fn the_generator_follows_the_mix_and_never_touches_a_deleted_object() {
        let mut g = Generator::new(4, [1.0, 8.0, 1.0], "r");
        g.seed(5);
        let mut live: std::collections::HashMap<String, u64> = (1..=20).map(|n| (format!("r-{n}"), 1)).collect();
        let mut counts = [0; 3];
        for _ in 0..10_000 {
            let ch = g.next_change();
            match ch.op {
                Op::Create => assert!(live.insert(ch.id.clone(), 1).is_none()),
                Op::Update => {
                    let version = live.get_mut(&ch.id).expect("an update of a live object");
                    *version += 1;
                    assert_eq!(ch.version, *version, "one version per update");
                }
                Op::Delete => assert_eq!(live.remove(&ch.id).map(|v| v + 1), Some(ch.version)),
            }
            counts[ch.op as usize] += 1;
        }
        assert!(counts[1] > 7000 && counts[0] > 500 && counts[2] > 500, "{counts:?}");
    }
}
