//! How long to wait between attempts: one capped exponential schedule ([`Backoff`], on `backon`'s
//! `ExponentialBuilder`) and the named policy of every place that retries, so the constants live
//! in one file with the reason for each.
//!
//! A policy is a `const`; a loop takes its [`Delays`] (a stateful iterator of waits), sleeps the
//! wait it gets (racing shutdown: the sleep is the caller's, this module has no clock), and
//! [`Delays::reset`]s it after a success when it keeps running. A server that names its own
//! wait (`Retry-After`) is honoured with [`Delays::next_after`], never beyond the cap.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A record whose handler failed transiently (a store, registry or produce that is down): the
/// same record is retried, never skipped, since skipping would break the partition's order.
/// 100 ms recovers from a blip almost unnoticed; 30 s bounds a long outage to one attempt (and
/// one log line) per 30 s per worker.
pub const PIPELINE_RECORD: Backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30));

/// A batch's `persist` (the store write after its outputs were acknowledged): the same
/// dependencies as [`PIPELINE_RECORD`], so the same schedule.
pub const PIPELINE_PERSIST: Backoff = PIPELINE_RECORD;

/// A batch whose outputs were not all delivered, redone from its first offsets. Reset once a
/// batch is delivered, so one bad moment does not slow the redo of a later one.
pub const PIPELINE_REDO: Backoff = PIPELINE_RECORD;

/// A dependency (store, registry) a worker connects to at start: in an orchestrated deployment
/// it may start after the worker. 10 s keeps readiness close behind the dependency's own.
pub const DEPENDENCY_CONNECT: Backoff = Backoff::exponential(Duration::from_millis(500), Duration::from_secs(10));

/// A consumer waiting for the Kafka cluster to answer and its topics to exist (`topics apply`
/// may run a moment later). Metadata requests are cheap: start at 200 ms, cap at 10 s.
pub const KAFKA_TOPICS_WAIT: Backoff = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(10));

/// A producer checking that a topic exists: a topic created a moment ago may not be in every
/// broker's metadata yet. Five looks within about 3 s (200 ms doubling, four waits), then the
/// topic is reported missing.
pub const KAFKA_TOPIC_METADATA: Backoff =
    Backoff::exponential(Duration::from_millis(200), Duration::from_secs(10)).with_max_retries(4);

/// One push to APNs or FCM that was throttled or met a provider error: 200 ms doubling, or the
/// provider's `Retry-After`, never a single wait beyond 30 s; eight attempts (seven waits) and
/// the push is given up, so one device cannot hold its batch for long.
pub const PUSH_SEND: Backoff =
    Backoff::exponential(Duration::from_millis(200), Duration::from_secs(30)).with_max_retries(7);

/// A supervised child that crashed: restart after 500 ms, doubling to 30 s while it keeps
/// crashing (the crash-loop limit, not this schedule, decides when to give up); reset after a
/// healthy run or a recycle, so an old crash does not slow the next restart.
pub const SUPERVISOR_CRASH: Backoff = Backoff::exponential(Duration::from_millis(500), Duration::from_secs(30));

/// A capped exponential schedule of waits between attempts. No jitter unless asked: every policy
/// above is one process retrying its own dependency, not a fleet that could retry in step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    factor: f32,
    jitter: bool,
    max_retries: Option<usize>,
}

impl Backoff {
    /// Waits of `first`, then doubling, never more than `cap`, without end.
    pub const fn exponential(first: Duration, cap: Duration) -> Backoff {
        Backoff { first, cap, factor: 2.0, jitter: false, max_retries: None }
    }

    /// Each wait is `factor` times the previous one (2 unless set).
    pub const fn with_factor(mut self, factor: f32) -> Backoff {
        self.factor = factor;
        self
    }

    /// Stretches each wait by a random 0-100 % (still never past the cap): for many processes
    /// that would otherwise retry a shared dependency in step.
    pub const fn with_jitter(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// At most `n` waits; [`Delays`] then ends and the caller gives up.
    pub const fn with_max_retries(mut self, n: usize) -> Backoff {
        self.max_retries = Some(n);
        self
    }

    /// The longest single wait, `Retry-After` included.
    pub const fn cap(&self) -> Duration {
        self.cap
    }

    /// A fresh schedule, starting at the first wait.
    pub fn delays(&self) -> Delays {
        Delays { policy: *self, schedule: self.builder().build(), retries: 0 }
    }

    fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::new()
            .with_min_delay(self.first)
            .with_max_delay(self.cap)
            .with_factor(self.factor)
            .without_max_times();
        let b = if self.jitter { b.with_jitter() } else { b };
        match self.max_retries {
            Some(n) => b.with_max_times(n),
            None => b,
        }
    }
}

/// The waits of one retry loop, in order.
#[derive(Debug)]
pub struct Delays {
    policy: Backoff,
    schedule: ExponentialBackoff,
    retries: usize,
}

impl Delays {
    /// Back to the first wait (after a success, in a loop that goes on).
    pub fn reset(&mut self) {
        *self = self.policy.delays();
    }

    /// The next wait of a policy without a retry limit (one with a limit answers its cap once
    /// exhausted; such a caller iterates instead, to learn when to give up).
    pub fn next_delay(&mut self) -> Duration {
        self.next().unwrap_or(self.policy.cap)
    }

    /// The next wait, or the server's own `retry_after` in its place (capped). Either way the
    /// schedule advances and the attempt counts toward the limit; `None`: give up.
    pub fn next_after(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let scheduled = self.next()?;
        Some(retry_after.map_or(scheduled, |after| after.min(self.policy.cap)))
    }

    /// Waits handed out since the start or the last reset.
    pub fn retries(&self) -> usize {
        self.retries
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.schedule.next()?;
        self.retries += 1;
        Some(whole_millis(delay).min(self.policy.cap))
    }
}

/// `backon` multiplies in `f32` seconds (200 ms doubled comes out a few nanoseconds off), and
/// tokio's timer counts whole milliseconds anyway: round, so the waits are the documented ones.
fn whole_millis(d: Duration) -> Duration {
    Duration::from_millis(((d.as_micros() + 500) / 1000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn first(policy: Backoff, n: usize) -> Vec<Duration> {
        policy.delays().take(n).collect()
    }

    #[test]
    fn pipeline_doubles_from_100_ms_to_30_s_and_never_ends() {
        let expected: Vec<Duration> =
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000].into_iter().map(ms).collect();
        for policy in [PIPELINE_RECORD, PIPELINE_PERSIST, PIPELINE_REDO] {
            assert_eq!(first(policy, expected.len()), expected);
            assert_eq!(policy.delays().nth(1000), Some(ms(30_000)));
        }
    }

    #[test]
    fn each_use_keeps_its_schedule() {
        assert_eq!(first(DEPENDENCY_CONNECT, 7), [500, 1000, 2000, 4000, 8000, 10_000, 10_000].map(ms));
        assert_eq!(first(KAFKA_TOPICS_WAIT, 8), [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000].map(ms));
        assert_eq!(first(SUPERVISOR_CRASH, 8), [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000].map(ms));
    }

    #[test]
    fn a_limited_policy_ends() {
        assert_eq!(KAFKA_TOPIC_METADATA.delays().collect::<Vec<_>>(), [200, 400, 800, 1600].map(ms));
        let push: Vec<Duration> = PUSH_SEND.delays().collect();
        assert_eq!(push, [200, 400, 800, 1600, 3200, 6400, 12_800].map(ms));
        let mut d = KAFKA_TOPIC_METADATA.delays();
        d.by_ref().for_each(drop);
        assert_eq!(d.retries(), 4);
        assert_eq!(d.next_after(Some(ms(50))), None, "Retry-After does not extend the limit");
        assert_eq!(d.next_delay(), KAFKA_TOPIC_METADATA.cap());
    }

    #[test]
    fn reset_starts_over() {
        let mut d = SUPERVISOR_CRASH.delays();
        assert_eq!((d.next_delay(), d.next_delay(), d.next_delay()), (ms(500), ms(1000), ms(2000)));
        d.reset();
        assert_eq!(d.retries(), 0);
        assert_eq!((d.next_delay(), d.next_delay()), (ms(500), ms(1000)));
        let mut limited = KAFKA_TOPIC_METADATA.delays();
        limited.by_ref().for_each(drop);
        limited.reset();
        assert_eq!(limited.next(), Some(ms(200)), "a reset also restores the retry budget");
    }

    #[test]
    fn retry_after_is_honoured_capped_and_advances_the_schedule() {
        let mut d = PUSH_SEND.delays();
        assert_eq!(d.next_after(None), Some(ms(200)));
        assert_eq!(d.next_after(Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
        assert_eq!(d.next_after(None), Some(ms(800)), "the schedule moved on under the server's wait");
        assert_eq!(d.next_after(Some(Duration::from_secs(90))), Some(Duration::from_secs(30)));
        assert_eq!(d.next_after(Some(Duration::ZERO)), Some(Duration::ZERO), "a server may ask for none");
        assert_eq!(d.retries(), 5);
    }

    #[test]
    fn factor_and_jitter_stay_within_the_cap() {
        let slow = Backoff::exponential(ms(100), ms(1000)).with_factor(3.0);
        assert_eq!(first(slow, 4), [100, 300, 900, 1000].map(ms));
        let jittered = Backoff::exponential(ms(100), ms(1000)).with_jitter();
        for _ in 0..50 {
            let waits = first(jittered, 6);
            for (wait, base) in waits.iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
                assert!(*wait >= ms(base) && *wait <= ms((2 * base).min(1000)), "{wait:?} for {base} ms");
            }
        }
    }
}
