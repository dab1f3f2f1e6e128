//! The consume loop over the in-process queue with tokio's paused time: retry and backoff to the
//! millisecond, dead letters, a batch rewound and redone, shutdown in the middle of a retry. No
//! servers: this runs anywhere; `pipeline.rs` checks the same loop against real Kafka.
//!
//! With paused time the clock only moves when every task waits on a timer, straight to the next
//! deadline, so the instants a handler is called at are exactly the pipeline's own waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nexxus_worker::config::{Config, Overrides};
use nexxus_worker::error::{ProcessError, WorkerError};
use nexxus_worker::model::retry::{self, Backoff};
use nexxus_worker::pipeline::{Handler, Persist, Pipeline};
use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::queue::memory::Broker;
use nexxus_worker::queue::outbox::{Outbox, Sink};
use nexxus_worker::queue::Record;
use nexxus_worker::telemetry::Health;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WORKER: &str = "test-0";

/// One call of a hook: which record (none for `persist`), when, and what the queue and
/// readiness said at that moment.
#[derive(Debug, Clone)]
struct Call {
    payload: String,
    offset: i64,
    at: Instant,
    /// Records of the input not committed yet.
    uncommitted: i64,
    ready: bool,
}

#[derive(Clone, Default)]
struct Log {
    /// Every `handle` call, in order.
    handled: Vec<Call>,
    /// Payloads `handle` accepted, in order.
    accepted: Vec<String>,
    end_batches: Vec<Call>,
    aborts: Vec<Instant>,
    persists: Vec<Call>,
}

/// What the handler does. By payload: `poison…` is refused, `flaky…` fails `flaky_failures`
/// times then passes, `stuck…` always fails transiently, anything else passes. By call number
/// (1-based): the listed `end_batch` and `persist` calls fail.
#[derive(Default)]
struct Script {
    flaky_failures: u32,
    failing_end_batches: Vec<usize>,
    failing_persists: Vec<usize>,
    /// How long each store write takes.
    persist_delay: Duration,
    /// A role that stores nothing (`seal` returns nothing), like the transport manager.
    stores_nothing: bool,
}

struct Scripted {
    script: Script,
    log: Arc<Mutex<Log>>,
    broker: Broker,
    health: Arc<Health>,
    input: String,
    group: String,
}

impl Scripted {
    fn call(&self, payload: &str, offset: i64) -> Call {
        Call {
            payload: payload.to_string(),
            offset,
            at: Instant::now(),
            uncommitted: self.broker.lag(&self.input)[&self.group],
            ready: self.health.is_ready(),
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

impl Handler for Scripted {
    type Input = ();

    async fn handle(&mut self, record: &Record<'_>, _: (), _out: &mut Outbox) -> Result<(), ProcessError> {
        let payload = String::from_utf8_lossy(record.payload).to_string();
        let call = self.call(&payload, record.offset);
        let mut log = self.log();
        log.handled.push(call);
        let attempt = log.handled.iter().filter(|c| c.payload == payload).count() as u32;
        if payload.starts_with("poison") {
            return Err(ProcessError::poison(format!("cannot use {payload}")));
        }
        if payload.starts_with("stuck") || (payload.starts_with("flaky") && attempt <= self.script.flaky_failures) {
            return Err(ProcessError::Transient("store unavailable".into()));
        }
        log.accepted.push(payload);
        Ok(())
    }

    async fn end_batch(&mut self, _out: &mut Outbox) -> Result<(), ProcessError> {
        let call = self.call("", 0);
        let mut log = self.log();
        log.end_batches.push(call);
        if self.script.failing_end_batches.contains(&log.end_batches.len()) {
            return Err(ProcessError::Transient("an output could not be enqueued".into()));
        }
        Ok(())
    }

    /// Each run of the sealed batch's store writes is logged when it happens (in the
    /// background, while the next batch may be processed); the listed runs fail.
    fn seal(&mut self) -> Option<Persist> {
        if self.script.stores_nothing {
            return None;
        }
        let (log, broker, health) = (self.log.clone(), self.broker.clone(), self.health.clone());
        let (input, group, failing) = (self.input.clone(), self.group.clone(), self.script.failing_persists.clone());
        let delay = self.script.persist_delay;
        Some(Box::new(move || {
            let call = Call {
                payload: String::new(),
                offset: 0,
                at: Instant::now(),
                uncommitted: broker.lag(&input)[&group],
                ready: health.is_ready(),
            };
            let mut log = log.lock().unwrap();
            log.persists.push(call);
            let result = if failing.contains(&log.persists.len()) {
                Err(ProcessError::Transient("store unavailable".into()))
            } else {
                Ok(())
            };
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                result
            })
        }))
    }

    fn abort_batch(&mut self) {
        self.log().aborts.push(Instant::now());
    }
}

/// A pipeline on its own in-process broker, consuming `in` with a [`Scripted`] handler.
struct Harness {
    cfg: Config,
    broker: Broker,
    input: String,
    group: String,
    health: Arc<Health>,
    shutdown: CancellationToken,
    log: Arc<Mutex<Log>>,
    run: JoinHandle<Result<(), WorkerError>>,
    started: Instant,
}

impl Harness {
    /// Appends `records` (key `k`), then starts the loop: they arrive as one batch.
    async fn start(records: &[&str], script: Script) -> Harness {
        let env: HashMap<String, String> = HashMap::from([("TP_TOPIC_PREFIX".into(), "paused.".into())]);
        let cfg = Config::load(&Overrides::default(), &env).expect("config from defaults");
        let broker = Broker::new(cfg.memory_queue_capacity);
        let (input, group) = (cfg.topic("in"), cfg.topic("in"));
        broker.declare(&input, &group);
        let harness_broker = broker.clone();
        for r in records {
            broker.append(&input, Some(b"k".to_vec()), r.as_bytes().to_vec()).await;
        }
        let health = Arc::new(Health::new());
        let shutdown = CancellationToken::new();
        let pipeline = Pipeline::connect(&cfg, &health, WORKER, "in", &["in"], Sink::Memory(broker.clone()), &shutdown)
            .await
            .expect("a memory pipeline connects");
        let log = Arc::new(Mutex::new(Log::default()));
        let mut handler = Scripted {
            script,
            log: log.clone(),
            broker,
            health: health.clone(),
            input: input.clone(),
            group: group.clone(),
        };
        let started = Instant::now();
        let run = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { pipeline.run(&mut handler, shutdown).await }
        });
        Harness { cfg, broker: harness_broker, input, group, health, shutdown, log, run, started }
    }

    /// What the handler saw so far (a copy: no lock is held while the test waits).
    fn log(&self) -> Log {
        self.log.lock().unwrap().clone()
    }

    fn uncommitted(&self) -> i64 {
        self.broker.lag(&self.input)[&self.group]
    }

    /// Polls every (virtual) millisecond; a condition never met fails the test, not hangs it.
    async fn until(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        let deadline = self.started + Duration::from_secs(300);
        while !done(self) {
            assert!(Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops the loop, which must end cleanly.
    async fn stop(self) {
        self.shutdown.cancel();
        self.run.await.expect("the loop task").expect("a clean stop");
    }
}

/// The gaps between consecutive instants.
fn gaps(at: &[Instant]) -> Vec<Duration> {
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The first `n` waits of `policy`.
fn waits(policy: Backoff, n: usize) -> Vec<Duration> {
    policy.delays().take(n).collect()
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried_on_the_policy_s_schedule_then_processed_once() {
    let h = Harness::start(&["ok-0", "flaky-1", "ok-2"], Script { flaky_failures: 3, ..Script::default() }).await;
    h.until("the batch committed", |h| h.log().accepted.len() == 3 && h.uncommitted() == 0).await;

    let log = h.log();
    assert_eq!(log.accepted, ["ok-0", "flaky-1", "ok-2"], "order kept, each processed once");
    let flaky: Vec<&Call> = log.handled.iter().filter(|c| c.payload == "flaky-1").collect();
    assert_eq!(flaky.len(), 4, "three failures, then the success");
    let at: Vec<Instant> = flaky.iter().map(|c| c.at).collect();
    assert_eq!(gaps(&at), waits(retry::PIPELINE_RECORD, 3), "100, 200, 400 ms");
    assert_eq!(flaky[0].at, h.started, "the first attempt does not wait");
    assert!(flaky[0].ready && flaky[1..].iter().all(|c| !c.ready), "not ready while a record is failing");
    assert!(flaky.iter().all(|c| c.uncommitted == 3), "nothing of the batch is committed while it retries");
    let ok2 = log.handled.iter().find(|c| c.payload == "ok-2").unwrap();
    assert_eq!(ok2.at, flaky[3].at, "the next record follows the success at once");
    assert!(h.health.is_ready(), "ready again once the record passed");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_poison_record_is_dead_lettered_and_the_partition_moves_on() {
    let h = Harness::start(&["ok-0", "poison-1", "ok-2"], Script::default()).await;
    h.until("the batch committed", |h| h.log().accepted.len() == 2 && h.uncommitted() == 0).await;

    let log = h.log();
    assert_eq!(log.accepted, ["ok-0", "ok-2"]);
    let poison: Vec<&Call> = log.handled.iter().filter(|c| c.payload == "poison-1").collect();
    assert_eq!(poison.len(), 1, "poison is never retried");
    assert!(log.handled.iter().all(|c| c.at == h.started), "no backoff anywhere");
    let poison_offset = poison[0].offset;

    let dead = h.broker.tail(&h.cfg.topic("dead_letter"), 10);
    assert_eq!(dead.len(), 1, "one envelope on dead_letter");
    let envelope: Envelope = serde_json::from_slice(&dead[0].payload).unwrap();
    assert_eq!(envelope.source.topic, h.input);
    assert_eq!(envelope.source.offset, poison_offset);
    assert_eq!(envelope.reason, "cannot use poison-1");
    assert_eq!(envelope.worker, WORKER);
    assert_eq!(envelope.original().unwrap(), (Some(b"k".to_vec()), b"poison-1".to_vec()));
    assert!(h.health.is_ready(), "a poison record is not a failing dependency");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_end_batch_rewinds_and_redoes_the_batch_and_commits_only_after() {
    // End of batch 1 fails twice (two redos: the schedule grows), batch 2's first end fails once
    // (its redo waits the first delay again: the schedule was reset by batch 1's success).
    let script = Script { failing_end_batches: vec![1, 2, 4], ..Script::default() };
    let h = Harness::start(&["a", "b", "c"], script).await;
    h.until("batch 1 committed", |h| h.log().end_batches.len() == 3 && h.uncommitted() == 0).await;

    let log = h.log();
    let seen: Vec<&str> = log.handled.iter().map(|c| c.payload.as_str()).collect();
    assert_eq!(seen, ["a", "b", "c", "a", "b", "c", "a", "b", "c"], "redone from its first offset");
    let firsts: Vec<&Call> = log.handled.iter().filter(|c| c.payload == "a").collect();
    assert!(firsts.iter().all(|c| c.offset == firsts[0].offset), "the same records again");
    assert_eq!(log.aborts.len(), 2, "abort_batch before each redo");
    let starts: Vec<Instant> = firsts.iter().map(|c| c.at).collect();
    assert_eq!(gaps(&starts), waits(retry::PIPELINE_REDO, 2), "100 ms, then 200 ms");
    assert_eq!(log.aborts, [starts[0], starts[1]], "aborted as soon as the end failed");
    assert!(firsts.iter().all(|c| c.uncommitted == 3), "nothing committed until the batch succeeds");
    assert!(!firsts[1].ready && !firsts[2].ready, "not ready while outputs fail");
    assert_eq!(log.persists.len(), 1, "persist only for the batch that was delivered");

    let resumed = Instant::now();
    h.broker.append(&h.input, None, b"d".to_vec()).await;
    h.until("batch 2 committed", |h| h.log().end_batches.len() == 5 && h.uncommitted() == 0).await;
    let log = h.log();
    let d: Vec<Instant> = log.handled.iter().filter(|c| c.payload == "d").map(|c| c.at).collect();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0], resumed, "the new record is taken at once");
    assert_eq!(gaps(&d), waits(retry::PIPELINE_REDO, 1), "a new batch's redo starts from the first wait");
    assert!(h.health.is_ready());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_role_that_stores_nothing_is_ready_again_once_a_redone_batch_is_delivered() {
    let script = Script { failing_end_batches: vec![1], stores_nothing: true, ..Script::default() };
    let h = Harness::start(&["a", "b"], script).await;
    h.until("the batch committed", |h| h.log().end_batches.len() == 2 && h.uncommitted() == 0).await;
    assert_eq!(h.log().aborts.len(), 1, "redone once");
    assert!(h.health.is_ready(), "ready again: {:?}", h.health.failing());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_persist_is_retried_without_redoing_the_batch_and_commits_after() {
    let script = Script { failing_persists: vec![1, 2], ..Script::default() };
    let h = Harness::start(&["a", "b"], script).await;
    h.until("the batch committed", |h| h.log().persists.len() == 3 && h.uncommitted() == 0).await;

    let log = h.log();
    assert_eq!(log.accepted, ["a", "b"], "the records are not handled again");
    assert!(log.aborts.is_empty());
    let at: Vec<Instant> = log.persists.iter().map(|c| c.at).collect();
    assert_eq!(gaps(&at), waits(retry::PIPELINE_PERSIST, 2), "100 ms, then 200 ms");
    assert!(log.persists.iter().all(|c| c.uncommitted == 2), "committed only after persist succeeds");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_next_batch_is_processed_while_the_previous_one_is_stored_and_commits_after_it() {
    let second = Duration::from_secs(1);
    let h = Harness::start(&["a"], Script { persist_delay: second, ..Script::default() }).await;
    h.until("a handled", |h| h.log().handled.len() == 1).await;
    h.broker.append(&h.input, None, b"b".to_vec()).await;
    h.until("b handled", |h| h.log().handled.len() == 2).await;

    let log = h.log();
    let b = &log.handled[1];
    assert!(b.at < h.started + second, "b is processed while a's store write still runs");
    assert_eq!(b.uncommitted, 2, "a is not committed before its write ended");
    h.until("both committed", |h| h.uncommitted() == 0).await;
    let log = h.log();
    let at: Vec<Instant> = log.persists.iter().map(|c| c.at).collect();
    assert_eq!(at, [h.started, h.started + second], "b's write waited for a's: stored in order");
    assert_eq!(log.persists[1].uncommitted, 1, "a committed before b is stored");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_retry_stops_at_once_and_commits_only_what_completed() {
    let h = Harness::start(&["a", "b", "stuck-2", "d"], Script::default()).await;
    h.until("the stuck record retried", |h| h.log().handled.iter().filter(|c| c.payload == "stuck-2").count() == 2)
        .await;
    // Into the second failure's wait (200 ms).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cancelled = Instant::now();
    h.shutdown.cancel();
    let Harness { run, log, broker, input, group, health, .. } = h;
    run.await.expect("the loop task").expect("a signal is not an error");
    assert_eq!(Instant::now(), cancelled, "no wait is finished after the signal");

    let log = log.lock().unwrap().clone();
    assert_eq!(log.accepted, ["a", "b"], "the record after the stuck one is never reached");
    assert_eq!(log.end_batches.len(), 1, "the completed part is ended, settled and persisted");
    assert_eq!(log.persists.len(), 1);
    assert_eq!(broker.lag(&input)[&group], 2, "a and b committed; stuck-2 and d are not");
    assert!(
        health.failing().iter().any(|(name, reason)| name == "running:test-0" && reason == "stopped"),
        "the loop reports that it stopped: {:?}",
        health.failing()
    );
}

/// A record's bytes as a number: what a typed input looks like to the pipeline.
struct Number(u64);

impl nexxus_worker::pipeline::Decode for Number {
    fn decode(record: &Record<'_>) -> Result<Self, nexxus_worker::error::Cause> {
        let text = String::from_utf8_lossy(record.payload);
        text.parse().map(Number).map_err(|e| nexxus_worker::error::Cause::with(format!("`{text}` is no number"), e))
    }
}

/// Sums what it is given; records which inputs `prepare` saw.
#[derive(Default)]
struct Adder {
    prepared: Vec<Vec<u64>>,
    handled: Vec<u64>,
}

impl Handler for Adder {
    type Input = Number;

    async fn prepare(&mut self, batch: &[&Number]) {
        self.prepared.push(batch.iter().map(|n| n.0).collect());
    }

    async fn handle(&mut self, _: &Record<'_>, n: Number, _out: &mut Outbox) -> Result<(), ProcessError> {
        self.handled.push(n.0);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_record_that_does_not_decode_is_dead_lettered_by_the_pipeline_and_never_handled() {
    let env: HashMap<String, String> = HashMap::from([("TP_TOPIC_PREFIX".into(), "decode.".into())]);
    let cfg = Config::load(&Overrides::default(), &env).expect("config from defaults");
    let broker = Broker::new(cfg.memory_queue_capacity);
    let input = cfg.topic("in");
    broker.declare(&input, &input);
    for r in ["1", "two", "3"] {
        broker.append(&input, None, r.as_bytes().to_vec()).await;
    }
    let health = Arc::new(Health::new());
    let shutdown = CancellationToken::new();
    let pipeline = Pipeline::connect(&cfg, &health, WORKER, "in", &["in"], Sink::Memory(broker.clone()), &shutdown)
        .await
        .expect("a memory pipeline connects");
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut adder = Adder::default();
            pipeline.run(&mut adder, shutdown).await.map(|()| adder)
        }
    });
    let started = Instant::now();
    while broker.lag(&input)[&input] > 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "the batch was never committed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    shutdown.cancel();
    let adder = run.await.expect("the loop task").expect("a clean stop");
    assert_eq!(adder.prepared, [vec![1, 3]], "prepare sees every input that decoded, once");
    assert_eq!(adder.handled, [1, 3], "the handler never sees the bad record");
    let dead = broker.tail(&cfg.topic("dead_letter"), 10);
    assert_eq!(dead.len(), 1, "the bad record is dead-lettered");
    let envelope: Envelope = serde_json::from_slice(&dead[0].payload).unwrap();
    assert_eq!(envelope.original().unwrap(), (None, b"two".to_vec()));
    assert!(envelope.reason.starts_with("`two` is no number"), "{}", envelope.reason);
}
