//! Owned partitions that stopped moving for a reason no client retry fixes. The one seen here:
//! a *hanging transaction*, whose commit markers the broker never wrote (a single-node KRaft
//! broker SIGKILLed while a transaction was committing skips them after its restart, see
//! ARCHITECTURE "Hanging transactions"). It shows two ways, both forever and both silent in
//! librdkafka:
//! - the group's committed offset of a partition stays unstable (its pending transactional
//!   offsets never resolve), so the member never gets a fetch position and never consumes;
//! - a partition's last stable offset stays behind its end, so a `read_committed` member reads
//!   up to it and waits.
//!
//! Both happen briefly in normal operation (an assignment, a transaction open for a few
//! milliseconds). Past the bounds below they are reported: readiness false, an error naming the
//! remedy, a metric. Waiting is all a client can do; an operator aborts the transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::statistics::Statistics;

/// An owned partition without a fetch position this long, brokers up, is stalled. Normally a
/// position follows an assignment within one round trip; an unstable committed offset lasts as
/// long as the transaction that wrote it (at most `transaction.timeout.ms`, 60 s for the
/// aggregation), unless its markers were lost.
pub const NO_POSITION_BOUND: Duration = Duration::from_secs(90);

/// A last stable offset behind the end that has not moved this long, with the member waiting
/// on it, is a hanging transaction: the broker aborts any transaction open longer than its
/// producer's `transaction.timeout.ms` (60 s for the aggregation, 900 s at most in Kafka).
pub const STABLE_OFFSET_BOUND: Duration = Duration::from_secs(120);

/// Why a partition counts as stalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    NoPosition,
    StableOffsetStuck,
}

impl Stall {
    pub fn label(self) -> &'static str {
        match self {
            Stall::NoPosition => "no_position",
            Stall::StableOffsetStuck => "stable_offset_stuck",
        }
    }
}

/// What changed since the last statistics.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Newly stalled partitions, with a reason for readiness and the log.
    Stalled(Vec<(String, i32, Stall)>, String),
    /// Every stall is over.
    Clear,
}

#[derive(Default)]
struct Track {
    /// Since when the partition has had no fetch position.
    no_position_since: Option<Instant>,
    /// The last stable offset last seen, and since when it has not moved.
    stable: Option<(i64, Instant)>,
    reported: Option<Stall>,
}

/// Per owned partition, how long it has not moved.
#[derive(Default)]
pub struct StallWatch {
    tracks: BTreeMap<(String, i32), Track>,
}

impl StallWatch {
    /// One statistics report for the partitions `owned` now; `None` when nothing changed.
    pub fn observe(&mut self, owned: &BTreeSet<(String, i32)>, stats: &Statistics, now: Instant) -> Option<Verdict> {
        let was_stalled = self.tracks.values().any(|t| t.reported.is_some());
        self.tracks.retain(|key, _| owned.contains(key));
        let brokers_up = stats.brokers.values().any(|b| b.state == "UP");
        let mut newly = Vec::new();
        for key in owned {
            let Some(p) = stats.topics.get(&key.0).and_then(|t| t.partitions.get(&key.1)) else { continue };
            let track = self.tracks.entry(key.clone()).or_default();
            // No position: librdkafka has not started fetching (still asking for the committed
            // offset). While every broker is down that is the outage, reported elsewhere.
            let positioned = p.fetch_state == "active";
            track.no_position_since = match (positioned || !brokers_up, track.no_position_since) {
                (true, _) => None,
                (false, since) => Some(since.unwrap_or(now)),
            };
            // Stuck stable offset: the member has read everything stable and more is written.
            let waiting = p.ls_offset >= 0 && p.hi_offset > p.ls_offset && p.app_offset >= p.ls_offset;
            track.stable = match track.stable {
                Some((lso, since)) if waiting && lso == p.ls_offset => Some((lso, since)),
                _ if waiting => Some((p.ls_offset, now)),
                _ => None,
            };
            let stall = if track.no_position_since.is_some_and(|s| now - s >= NO_POSITION_BOUND) {
                Some(Stall::NoPosition)
            } else if track.stable.is_some_and(|(_, s)| now - s >= STABLE_OFFSET_BOUND) {
                Some(Stall::StableOffsetStuck)
            } else {
                None
            };
            if let Some(kind) = stall.filter(|s| track.reported != Some(*s)) {
                newly.push((key.0.clone(), key.1, kind));
            }
            track.reported = stall;
        }
        if !newly.is_empty() {
            let reason = describe(&newly);
            return Some(Verdict::Stalled(newly, reason));
        }
        let stalled = self.tracks.values().any(|t| t.reported.is_some());
        (was_stalled && !stalled).then_some(Verdict::Clear)
    }
}

fn describe(stalls: &[(String, i32, Stall)]) -> String {
    let parts: Vec<String> = stalls
        .iter()
        .map(|(topic, partition, stall)| match stall {
            Stall::NoPosition => format!(
                "{topic}/{partition}: no fetch position for {} s (its committed offset stays unstable)",
                NO_POSITION_BOUND.as_secs()
            ),
            Stall::StableOffsetStuck => {
                format!("{topic}/{partition}: last stable offset unmoved for {} s", STABLE_OFFSET_BOUND.as_secs())
            }
        })
        .collect();
    format!(
        "stalled on a hanging transaction? {}; find and abort it with kafka-transactions.sh find-hanging / abort",
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::{Broker, Partition, Topic};

    use super::*;

    fn stats(fetch_state: &str, hi: i64, ls: i64, app: i64, broker: &str) -> Statistics {
        let p = Partition {
            partition: 0,
            fetch_state: fetch_state.into(),
            hi_offset: hi,
            ls_offset: ls,
            app_offset: app,
            ..Partition::default()
        };
        let topic = Topic { topic: "t".into(), partitions: [(0, p)].into_iter().collect(), ..Topic::default() };
        Statistics {
            topics: [("t".to_string(), topic)].into_iter().collect(),
            brokers: [("b".to_string(), Broker { state: broker.into(), ..Broker::default() })].into_iter().collect(),
            ..Statistics::default()
        }
    }

    fn owned() -> BTreeSet<(String, i32)> {
        [("t".to_string(), 0)].into_iter().collect()
    }

    #[test]
    fn a_partition_without_a_position_past_the_bound_is_reported_once_then_cleared() {
        let (mut watch, t0) = (StallWatch::default(), Instant::now());
        let waiting = stats("offset-query", 10, 10, -1001, "UP");
        assert_eq!(watch.observe(&owned(), &waiting, t0), None);
        assert_eq!(watch.observe(&owned(), &waiting, t0 + NO_POSITION_BOUND / 2), None, "within the bound");
        match watch.observe(&owned(), &waiting, t0 + NO_POSITION_BOUND) {
            Some(Verdict::Stalled(parts, reason)) => {
                assert_eq!(parts, vec![("t".to_string(), 0, Stall::NoPosition)]);
                assert!(
                    reason.contains("t/0: no fetch position") && reason.contains("kafka-transactions.sh"),
                    "{reason}"
                );
            }
            other => panic!("expected a stall, got {other:?}"),
        }
        assert_eq!(watch.observe(&owned(), &waiting, t0 + NO_POSITION_BOUND * 2), None, "reported once");
        let moving = stats("active", 12, 12, 12, "UP");
        assert_eq!(watch.observe(&owned(), &moving, t0 + NO_POSITION_BOUND * 3), Some(Verdict::Clear));
        assert_eq!(watch.observe(&owned(), &moving, t0 + NO_POSITION_BOUND * 4), None);
    }

    #[test]
    fn no_position_while_every_broker_is_down_is_the_outage_not_a_stall() {
        let (mut watch, t0) = (StallWatch::default(), Instant::now());
        let down = stats("offset-query", 10, 10, -1001, "DOWN");
        for step in 0..4 {
            assert_eq!(watch.observe(&owned(), &down, t0 + NO_POSITION_BOUND * step), None);
        }
    }

    #[test]
    fn a_stable_offset_that_stops_with_the_member_waiting_on_it_is_a_stall() {
        let (mut watch, t0) = (StallWatch::default(), Instant::now());
        // Behind the stable offset: the member is just busy.
        let behind = stats("active", 100, 90, 50, "UP");
        assert_eq!(watch.observe(&owned(), &behind, t0), None);
        assert_eq!(watch.observe(&owned(), &behind, t0 + STABLE_OFFSET_BOUND * 2), None);
        // At it, and the end moves on while the stable offset does not.
        assert_eq!(watch.observe(&owned(), &stats("active", 100, 90, 90, "UP"), t0), None);
        assert_eq!(watch.observe(&owned(), &stats("active", 150, 90, 90, "UP"), t0 + STABLE_OFFSET_BOUND / 2), None);
        let verdict = watch.observe(&owned(), &stats("active", 200, 90, 90, "UP"), t0 + STABLE_OFFSET_BOUND);
        assert!(
            matches!(verdict, Some(Verdict::Stalled(ref p, _)) if p[0].2 == Stall::StableOffsetStuck),
            "{verdict:?}"
        );
        // The transaction ends: the stable offset moves.
        let verdict = watch.observe(&owned(), &stats("active", 200, 200, 200, "UP"), t0 + STABLE_OFFSET_BOUND * 2);
        assert_eq!(verdict, Some(Verdict::Clear));
    }

    #[test]
    fn a_stable_offset_that_keeps_moving_is_never_a_stall() {
        let (mut watch, t0) = (StallWatch::default(), Instant::now());
        for step in 0..20u32 {
            let lso = 10 * i64::from(step);
            let s = stats("active", lso + 5, lso, lso, "UP");
            assert_eq!(watch.observe(&owned(), &s, t0 + STABLE_OFFSET_BOUND / 4 * step), None);
        }
    }

    #[test]
    fn a_revoked_partition_is_forgotten() {
        let (mut watch, t0) = (StallWatch::default(), Instant::now());
        let waiting = stats("offset-query", 10, 10, -1001, "UP");
        watch.observe(&owned(), &waiting, t0);
        assert!(matches!(watch.observe(&owned(), &waiting, t0 + NO_POSITION_BOUND), Some(Verdict::Stalled(..))));
        assert_eq!(watch.observe(&BTreeSet::new(), &waiting, t0 + NO_POSITION_BOUND * 2), Some(Verdict::Clear));
    }
}
