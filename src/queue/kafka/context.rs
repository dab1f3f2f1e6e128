//! The client context of every rdkafka client: librdkafka statistics become lag gauges,
//! rebalances and the lag of the owned partitions become readiness, broker loss a failing
//! readiness condition.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;

use super::stall::{StallWatch, Verdict};
use crate::telemetry::{self, Health};

/// Context of every client. Readiness condition names it owns: `kafka:<client>`, and for a
/// consumer `assigned:<client>` and `caught_up:<client>`.
pub struct WorkerContext {
    health: Arc<Health>,
    broker_condition: String,
    /// Set when librdkafka reported every broker down; cleared by the next statistics that
    /// show a broker up, which meets `kafka:<client>` again (nothing else would after an outage).
    brokers_down: std::sync::atomic::AtomicBool,
    assigned_condition: String,
    catch_up: Option<CatchUp>,
    /// How many times partitions were taken from this member: state a role keeps per owned
    /// partition is stale once this moves (see [`WorkerContext::revocations`]).
    revocations: AtomicU64,
}

/// A consumer's way to readiness: an assignment (possibly of zero partitions: more members than
/// partitions is healthy), then every owned partition within `bound` records of its end. Met
/// once, it stays met: readiness must not flap with the load (a busy member is not broken).
struct CatchUp {
    condition: String,
    bound: i64,
    /// `auto.offset.reset=earliest`: a partition with no commit starts at its low watermark.
    from_beginning: bool,
    state: Mutex<Owned>,
    /// `stalled:<client>`: absent unless an owned partition stopped moving (see [`super::stall`]).
    stalled_condition: String,
}

/// How long a member connected to its group coordinator waits for a partition before it counts
/// as a member that owns none (several heartbeats at the broker's default of 5 s would be more;
/// the local stack heartbeats every 500 ms).
const IDLE_MEMBER_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Owned {
    assigned: bool,
    coordinator_up_since: Option<Instant>,
    partitions: BTreeSet<(String, i32)>,
    caught_up: bool,
    /// How long each owned partition has not moved.
    stalls: StallWatch,
}

impl WorkerContext {
    /// The context of a producer (or of any client that is not a group member).
    pub fn new(health: Arc<Health>, client: &str) -> Self {
        WorkerContext {
            health,
            broker_condition: format!("kafka:{client}"),
            brokers_down: std::sync::atomic::AtomicBool::new(false),
            assigned_condition: format!("assigned:{client}"),
            catch_up: None,
            revocations: AtomicU64::new(0),
        }
    }

    /// The context of a group member: readiness waits for its assignment and for it to be
    /// within `bound` records of the end of every partition it owns.
    pub fn consumer(health: Arc<Health>, client: &str, bound: i64, from_beginning: bool) -> Self {
        let condition = format!("caught_up:{client}");
        let mut context = WorkerContext::new(health, client);
        context.health.require(&context.assigned_condition, "waiting for a partition assignment");
        context.health.require(&condition, "waiting for a partition assignment");
        context.catch_up = Some(CatchUp {
            condition,
            bound,
            from_beginning,
            state: Mutex::new(Owned::default()),
            stalled_condition: format!("stalled:{client}"),
        });
        context
    }

    /// Revocations so far. Rebalance callbacks run inside the consumer's poll, so a reader that
    /// compares this after each receive sees a revocation before it handles any record that
    /// follows it.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }
}

impl CatchUp {
    fn assigned(&self, health: &Health, tpl: &TopicPartitionList) {
        let Ok(mut owned) = self.state.lock() else { return };
        owned.assigned = true;
        owned.partitions.extend(tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())));
        if !owned.caught_up {
            if owned.partitions.is_empty() {
                // Every partition belongs to another member: nothing to catch up on.
                owned.caught_up = true;
                health.ok(&self.condition);
            } else {
                health.fail(&self.condition, "assigned, waiting for the first lag report");
            }
        }
    }

    fn revoked(&self, tpl: &TopicPartitionList) {
        if let Ok(mut owned) = self.state.lock() {
            for e in tpl.elements() {
                owned.partitions.remove(&(e.topic().to_string(), e.partition()));
            }
        }
    }

    /// Reports owned partitions that stopped moving, and their recovery; unlike catching up,
    /// watched for as long as the member runs.
    fn watch_stalls(&self, health: &Health, stats: &Statistics) {
        let Ok(mut state) = self.state.lock() else { return };
        let Owned { partitions, stalls, .. } = &mut *state;
        match stalls.observe(partitions, stats, Instant::now()) {
            None => {}
            Some(Verdict::Stalled(partitions, reason)) => {
                for (_, _, stall) in &partitions {
                    telemetry::partition_stalled(stall.label());
                }
                tracing::error!(message = "consumer stalled", %reason);
                health.fail(&self.stalled_condition, reason);
            }
            Some(Verdict::Clear) => {
                tracing::info!(message = "consumer moving again");
                health.remove(&self.stalled_condition);
            }
        }
    }

    fn observe(&self, health: &Health, assigned_condition: &str, stats: &Statistics) {
        let Ok(mut owned) = self.state.lock() else { return };
        if owned.caught_up {
            return;
        }
        if !owned.assigned {
            // Under the consumer protocol librdkafka calls no rebalance callback for an empty
            // assignment, and its statistics show no member epoch: a member that has talked to
            // its coordinator for IDLE_MEMBER_AFTER without being given a partition owns none.
            if stats.cgrp.as_ref().is_none_or(|g| g.state != "up") {
                owned.coordinator_up_since = None;
                return;
            }
            if owned.coordinator_up_since.get_or_insert_with(Instant::now).elapsed() < IDLE_MEMBER_AFTER {
                return;
            }
            owned.assigned = true;
            health.ok(assigned_condition);
            tracing::info!(message = "no partition assigned: every partition belongs to another member");
        }
        let mut worst: Option<i64> = Some(0);
        for (topic, partition) in &owned.partitions {
            let lag = stats.topics.get(topic).and_then(|t| t.partitions.get(partition)).and_then(|p| {
                let end = if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset };
                lag(end, p.lo_offset, p.app_offset.max(p.committed_offset), self.from_beginning)
            });
            worst = match (worst, lag) {
                (Some(w), Some(l)) => Some(w.max(l)),
                _ => None,
            };
        }
        match worst {
            Some(w) if w <= self.bound => {
                owned.caught_up = true;
                health.ok(&self.condition);
            }
            Some(w) => {
                health.fail(&self.condition, format!("catching up: {w} records behind (ready at {})", self.bound))
            }
            None => health.fail(&self.condition, "assigned, waiting for the partitions' offsets"),
        }
    }
}

/// Records between a partition's `end` (the last stable offset under `read_committed`) and
/// `consumed` (the later of what this member consumed and what the group committed); `None` while librdkafka does not know yet.
/// Unlike librdkafka's own `consumer_lag`, a partition the group never committed counts from
/// where the member starts reading (its low watermark when reading from the beginning), so an
/// empty or never-committed partition is not "unknown" forever.
fn lag(end: i64, low: i64, consumed: i64, from_beginning: bool) -> Option<i64> {
    if end < 0 {
        return None;
    }
    let position = match consumed {
        c if c >= 0 => c,
        _ if !from_beginning => end,
        _ if low >= 0 => low,
        _ => return None,
    };
    Some((end - position).max(0))
}

impl ClientContext for WorkerContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    telemetry::consumer_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
        let mut requests = std::collections::BTreeMap::<&str, i64>::new();
        for broker in stats.brokers.values() {
            for (request, n) in &broker.req {
                *requests.entry(request).or_default() += n;
            }
        }
        for (request, n) in requests.into_iter().filter(|(_, n)| *n > 0) {
            telemetry::kafka_requests(&stats.client_id, request, n as u64);
        }
        if let Some(catch_up) = &self.catch_up {
            catch_up.watch_stalls(&self.health, &stats);
            catch_up.observe(&self.health, &self.assigned_condition, &stats);
        }
        let down = &self.brokers_down;
        if down.load(Ordering::Relaxed) && stats.brokers.values().any(|b| b.state == "UP") {
            down.store(false, Ordering::Relaxed);
            self.health.ok(&self.broker_condition);
            tracing::info!(message = "kafka brokers reachable again", client = %self.broker_condition);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.brokers_down.store(true, Ordering::Relaxed);
            self.health.fail(&self.broker_condition, "all brokers down");
        }
        tracing::warn!(message = "kafka client error", %error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            _ => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        telemetry::rebalanced();
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Under the consumer protocol (and cooperative-sticky) `tpl` is what was added,
                // not the whole assignment.
                self.health.ok(&self.assigned_condition);
                if let Some(catch_up) = &self.catch_up {
                    catch_up.assigned(&self.health, tpl);
                }
                tracing::info!(message = "partitions assigned", partitions = %describe(tpl));
            }
            Rebalance::Revoke(tpl) => {
                self.revocations.fetch_add(1, Ordering::AcqRel);
                if let Some(catch_up) = &self.catch_up {
                    catch_up.revoked(tpl);
                }
                tracing::info!(message = "partitions revoked", partitions = %describe(tpl))
            }
            Rebalance::Error(error) => tracing::warn!(message = "rebalance failed", %error),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let parts: Vec<String> = tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::{Partition, Topic};

    use super::*;

    #[test]
    fn lag_counts_from_what_was_consumed_or_committed() {
        assert_eq!(lag(100, 0, 40, true), Some(60));
        assert_eq!(lag(100, 0, 100, true), Some(0));
        // Not yet known: the end (before the first fetch) or, reading from the beginning, the start.
        assert_eq!(lag(-1, 0, 40, true), None);
        assert_eq!(lag(100, -1, -1001, true), None);
    }

    #[test]
    fn a_never_committed_partition_counts_from_where_reading_starts() {
        assert_eq!(lag(100, 20, -1001, true), Some(80), "from the low watermark");
        assert_eq!(lag(0, 0, -1001, true), Some(0), "an empty partition is caught up");
        assert_eq!(lag(100, 0, -1001, false), Some(0), "`latest` starts at the end");
    }

    fn tpl(partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition("t", *p);
        }
        tpl
    }

    /// Statistics of topic `t` with (partition, end, consumed) per partition, never committed.
    fn stats(partitions: &[(i32, i64, i64)]) -> Statistics {
        let partitions = partitions
            .iter()
            .map(|&(partition, end, consumed)| {
                let p = Partition {
                    partition,
                    hi_offset: end,
                    ls_offset: end,
                    lo_offset: 0,
                    app_offset: consumed,
                    committed_offset: -1001,
                    ..Partition::default()
                };
                (partition, p)
            })
            .collect();
        let topic = Topic { topic: "t".into(), partitions, ..Topic::default() };
        Statistics { topics: [("t".to_string(), topic)].into_iter().collect(), ..Statistics::default() }
    }

    #[test]
    fn ready_once_assigned_and_caught_up_and_then_it_stays_ready() {
        let health = Arc::new(Health::new());
        let ctx = WorkerContext::consumer(health.clone(), "c", 10, true);
        let catch_up = ctx.catch_up.as_ref().expect("a consumer catches up");
        catch_up.observe(&health, &ctx.assigned_condition, &stats(&[(0, 100, 0)]));
        assert!(!health.is_ready(), "no assignment yet");
        health.ok(&ctx.assigned_condition);
        catch_up.assigned(&health, &tpl(&[0, 1]));
        catch_up.observe(&health, &ctx.assigned_condition, &stats(&[(0, 100, 95)]));
        assert!(!health.is_ready(), "partition 1 not reported yet: {:?}", health.failing());
        catch_up.observe(&health, &ctx.assigned_condition, &stats(&[(0, 100, 95), (1, 100, 50)]));
        assert!(health.failing()[0].1.contains("50 records behind"), "{:?}", health.failing());
        catch_up.observe(&health, &ctx.assigned_condition, &stats(&[(0, 100, 95), (1, 100, 92)]));
        assert!(health.is_ready(), "{:?}", health.failing());
        catch_up.observe(&health, &ctx.assigned_condition, &stats(&[(0, 10_000, 95), (1, 100, 92)]));
        assert!(health.is_ready(), "a busy member stays ready");
    }

    #[test]
    fn a_member_that_owns_nothing_is_ready_once_assigned() {
        let health = Arc::new(Health::new());
        let ctx = WorkerContext::consumer(health.clone(), "c", 10, true);
        health.ok(&ctx.assigned_condition);
        ctx.catch_up.as_ref().expect("a consumer catches up").assigned(&health, &tpl(&[]));
        assert!(health.is_ready(), "{:?}", health.failing());
    }

    #[test]
    fn readiness_returns_when_a_broker_is_up_again_after_an_outage() {
        let health = Arc::new(Health::new());
        let ctx = WorkerContext::new(health.clone(), "c");
        health.ok("kafka:c");
        assert!(health.is_ready());
        ctx.error(KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "test");
        assert!(!health.is_ready(), "all brokers down");
        let broker = |state: &str| rdkafka::statistics::Broker { state: state.into(), ..Default::default() };
        let with = |state: &str| Statistics {
            brokers: [("b".to_string(), broker(state))].into_iter().collect(),
            ..Statistics::default()
        };
        ctx.stats(with("DOWN"));
        assert!(!health.is_ready(), "still down");
        ctx.stats(with("UP"));
        assert!(health.is_ready(), "up again: {:?}", health.failing());
        // A condition failed for another reason is not the outage's to clear.
        health.fail("kafka:c", "topic missing");
        ctx.stats(with("UP"));
        assert!(!health.is_ready());
    }
}
