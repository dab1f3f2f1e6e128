//! The consume loop every role runs: take a batch, process each record, settle, commit, repeat.
//!
//! ```text
//! loop {
//!     batch  = recv() + whatever else is already buffered (up to TP_BATCH_SIZE)
//!     for record in batch:
//!         handler.handle(record, outbox) -> Ok        : next (its outputs are enqueued)
//!                                        -> Poison    : enqueue a dead_letter envelope, next
//!                                        -> Transient : readiness false, back off, retry the SAME record
//!                                        -> Fatal     : settle and commit what was done, stop
//!     outbox.settle()   -> every produce acknowledged? commit(last offset + 1 per partition)
//!                       -> a produce failed?          seek back to the batch start, back off, redo
//! }
//! ```
//! A crash therefore re-delivers at most the batch in flight, a poison message never stops its
//! partition, and nothing is committed whose outputs are not durable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{ProcessError, WorkerError};
use crate::model::retry;
use crate::queue::dead_letter;
use crate::queue::kafka;
use crate::queue::outbox::{Outbox, Sink};
use crate::queue::source::{Offsets, Received, Source};
use crate::queue::{topic, Record};
use crate::telemetry::{self, names, Health};

/// A role's processing. Per batch the pipeline calls `handle` for each record in order, then
/// `end_batch`, awaits every output, calls `persist`, and commits. If the outputs could not be
/// delivered the batch is redone from its first offsets after `abort_batch`.
pub trait Handler {
    /// Before the batch's first record: a chance to fetch what the whole batch needs at once.
    /// Best effort: whatever it cannot do, `handle` does record by record.
    fn prepare(&mut self, _batch: &[Record<'_>]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Processes one record; outputs go to `out`.
    fn handle(
        &mut self,
        record: &Record<'_>,
        out: &mut Outbox,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// After the batch's last record, before its outputs are awaited (coalescing happens here).
    fn end_batch(&mut self, _out: &mut Outbox) -> impl Future<Output = Result<(), ProcessError>> + Send {
        async { Ok(()) }
    }

    /// After every output was acknowledged, before the offsets are committed. Transient errors
    /// are retried with backoff; it must be idempotent.
    fn persist(&mut self) -> impl Future<Output = Result<(), ProcessError>> + Send {
        async { Ok(()) }
    }

    /// The batch will be redone: forget what it accumulated.
    fn abort_batch(&mut self) {}
}

/// A connected consumer with the producer for its outputs and dead letters.
pub struct Pipeline {
    worker: String,
    consumer: Arc<Source>,
    outbox: Outbox,
    health: Arc<Health>,
    dead_letter_topic: String,
    batch_size: usize,
    /// How long to wait for more records once one arrived (bigger batches, more coalescing).
    linger: Duration,
    /// Input offsets go into the output transaction instead of a plain commit.
    transactional: bool,
    /// Readiness condition held false while a dependency is failing.
    processing_condition: String,
    /// `running:<worker>`: unmet until the loop runs, and again once it stopped.
    running_condition: String,
}

/// Where a batch stopped.
enum Outcome {
    Done,
    /// Shutdown arrived while a record was being retried.
    Interrupted,
}

/// Next offset to commit per (topic, partition), and the first offset of the batch for rewinds.
#[derive(Default)]
struct Positions {
    next: Offsets,
    first: Offsets,
}

impl Pipeline {
    /// Creates the consumer for `group` on `topics` (before the prefix), on the queue `sink`
    /// belongs to, and (Kafka) waits until the cluster answers and the topics exist.
    pub async fn connect(
        cfg: &Config,
        health: &Arc<Health>,
        worker: &str,
        group: &str,
        topics: &[&str],
        sink: Sink,
        shutdown: &CancellationToken,
    ) -> Result<Self, WorkerError> {
        let full: Vec<String> = topics.iter().map(|t| cfg.topic(t)).collect();
        let group = cfg.topic(group);
        let client_id = format!("{worker}-{group}");
        let consumer = match &sink {
            Sink::Kafka(_) => {
                let consumer = kafka::consumer(cfg, health, &client_id, &group, &full, true)?;
                kafka::wait_for_topics(&consumer, health, &client_id, &full, shutdown).await?;
                Source::Kafka(consumer)
            }
            Sink::Memory(broker) => Source::Memory(broker.consumer(&group, &full)),
        };
        // Not ready until the loop runs: a process whose roles have not started (or, for the
        // sockets transport, whose listener is not bound yet) must not receive traffic.
        let running_condition = running_condition(worker);
        health.require(&running_condition, "starting");
        Ok(Pipeline {
            processing_condition: format!("processing:{client_id}"),
            running_condition,
            worker: worker.to_string(),
            consumer: Arc::new(consumer),
            outbox: Outbox::new(sink),
            health: health.clone(),
            dead_letter_topic: cfg.topic(topic::DEAD_LETTER),
            batch_size: cfg.batch_size,
            linger: Duration::ZERO,
            transactional: false,
        })
    }

    /// Waits up to `linger` after the first record for more (0: only what is already buffered).
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Commits input offsets in the producer's transaction, together with the batch's outputs
    /// (consume-transform-produce). The producer must be [`Producer::transactional`].
    pub fn transactional(mut self) -> Self {
        self.transactional = true;
        self
    }

    /// Consumes until `shutdown`, then commits and leaves the group.
    pub async fn run<H: Handler>(mut self, handler: &mut H, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let consumer = self.consumer.clone();
        let running = self.running_condition.clone();
        self.health.ok(&running);
        let mut redo = retry::PIPELINE_REDO.delays();
        let result = loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                m = consumer.recv() => m,
            };
            let mut batch = Vec::with_capacity(self.batch_size.min(1024));
            match first {
                Ok(m) => batch.push(m),
                Err(error) => {
                    tracing::warn!(message = "kafka receive error", %error);
                    continue;
                }
            }
            // Take what librdkafka already buffered, then (with a linger) what arrives in time:
            // bigger batches under load, no added latency when idle. `recv` is cancel-safe.
            let deadline = Instant::now() + self.linger;
            while batch.len() < self.batch_size {
                let next = match consumer.try_recv() {
                    Some(m) => Some(m),
                    None if self.linger.is_zero() => None,
                    None => tokio::time::timeout_at(deadline, consumer.recv()).await.ok(),
                };
                match next {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(error)) => tracing::warn!(message = "kafka receive error", %error),
                    None => break,
                }
            }
            metrics::histogram!(names::BATCH_SIZE).record(batch.len() as f64);
            if self.transactional {
                if let Err(e) = self.outbox.begin() {
                    break Err(e);
                }
            }
            let phase = Phases::start();
            let (positions, outcome) = self.process_batch(handler, &batch, &shutdown).await;
            let phase = phase.next("process");
            drop(batch);
            // A failed `end_batch` means some outputs were never enqueued: the batch must be redone,
            // never committed. The outbox is settled either way so no delivery is left pending.
            let ended = if outcome.is_ok() { handler.end_batch(&mut self.outbox).await.err() } else { None };
            let phase = phase.next("end_batch");
            let settled = self.outbox.settle().await;
            let phase = phase.next("settle");
            let delivered = match (ended, settled) {
                (Some(e), _) => Err(format!("ending the batch: {e}")),
                (None, Err(e)) => Err(e.to_string()),
                (None, Ok(_)) if self.transactional => {
                    self.outbox.commit_transaction(&consumer, &positions.next).await.map_err(|e| e.to_string())
                }
                (None, Ok(_)) => Ok(()),
            };
            if let Err(reason) = delivered {
                // Some outputs may be missing: redo the whole batch from its first offsets.
                handler.abort_batch();
                self.health.fail(&self.processing_condition, reason.clone());
                let delay = redo.next_delay();
                tracing::warn!(
                    message = "batch outputs not delivered, redoing the batch",
                    reason,
                    retry_in_ms = delay.as_millis() as u64
                );
                if self.transactional {
                    if let Err(e) = self.outbox.abort_transaction().await {
                        break Err(e);
                    }
                }
                if let Err(e) = self.rewind(&positions.first).await {
                    break Err(e);
                }
                if matches!(outcome, Ok(Outcome::Interrupted)) || shutdown.is_cancelled() {
                    break Ok(());
                }
                tokio::select! {
                    () = shutdown.cancelled() => break Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            redo.reset();
            let phase = phase.next("commit_transaction");
            if !self.persist(handler, &shutdown).await {
                // Shut down while the store was failing: nothing of this batch is committed.
                break Ok(());
            }
            if !self.transactional {
                // Synchronous: when the next batch starts, this one is durable, so a crash (even
                // SIGKILL) re-delivers at most the batch in flight. One round trip per batch.
                let phase = phase.next("persist");
                self.commit(&positions.next).await;
                phase.next("commit");
            } else {
                phase.next("persist");
            }
            match outcome {
                Ok(Outcome::Done) => {}
                Ok(Outcome::Interrupted) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.health.remove(&self.processing_condition);
        self.health.fail(&running, "stopped");
        result
    }

    /// Processes records in order; returns the positions of what completed, and why it stopped.
    async fn process_batch<H: Handler>(
        &mut self,
        handler: &mut H,
        batch: &[Received<'_>],
        shutdown: &CancellationToken,
    ) -> (Positions, Result<Outcome, WorkerError>) {
        let mut positions = Positions::default();
        let records: Vec<Record<'_>> = batch.iter().map(Received::record).collect();
        // Every partition of the batch, processed or not: a redo must rewind them all.
        for record in &records {
            positions.first.entry((record.topic.to_string(), record.partition)).or_insert(record.offset);
        }
        handler.prepare(&records).await;
        for record in records {
            telemetry::consumed(record.topic);
            let started = Instant::now();
            match self.process(handler, &record, shutdown).await {
                Ok(Outcome::Done) => {}
                other => return (positions, other),
            }
            metrics::histogram!(names::PROCESSING_SECONDS, "topic" => record.topic.to_string())
                .record(started.elapsed().as_secs_f64());
            positions.next.insert((record.topic.to_string(), record.partition), record.offset + 1);
        }
        (positions, Ok(Outcome::Done))
    }

    /// One record, retried on transient failures until it succeeds or the process stops.
    async fn process<H: Handler>(
        &mut self,
        handler: &mut H,
        record: &Record<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, WorkerError> {
        let mut delays = retry::PIPELINE_RECORD.delays();
        let mut failing = false;
        loop {
            let result = match handler.handle(record, &mut self.outbox).await {
                Err(ProcessError::Poison(reason)) => {
                    telemetry::failed(record.topic, "poison");
                    self.dead_letter(record, &reason.to_string()).await
                }
                other => other,
            };
            match result {
                Ok(()) => {
                    if failing {
                        self.health.ok(&self.processing_condition);
                    }
                    return Ok(Outcome::Done);
                }
                Err(ProcessError::Fatal(reason)) => {
                    telemetry::failed(record.topic, "fatal");
                    return Err(WorkerError::Fatal(format!(
                        "{}/{}@{}: {reason}",
                        record.topic, record.partition, record.offset
                    )));
                }
                Err(ProcessError::Transient(reason) | ProcessError::Poison(reason)) => {
                    telemetry::failed(record.topic, "transient");
                    metrics::counter!(names::RETRIES, "topic" => record.topic.to_string()).increment(1);
                    failing = true;
                    self.health.fail(&self.processing_condition, reason.to_string());
                    let delay = delays.next_delay();
                    tracing::warn!(
                        message = "processing failed, retrying",
                        topic = record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        reason = %reason,
                        retry_in_ms = delay.as_millis() as u64
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(Outcome::Interrupted),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Runs the handler's `persist` until it succeeds; false if shutdown came first.
    async fn persist<H: Handler>(&mut self, handler: &mut H, shutdown: &CancellationToken) -> bool {
        let mut delays = retry::PIPELINE_PERSIST.delays();
        loop {
            let delay = delays.next_delay();
            match handler.persist().await {
                Ok(()) => {
                    self.health.ok(&self.processing_condition);
                    return true;
                }
                Err(e) => {
                    metrics::counter!(names::RETRIES, "topic" => "persist").increment(1);
                    self.health.fail(&self.processing_condition, e.to_string());
                    tracing::warn!(message = "persisting a batch failed, retrying", reason = %e, retry_in_ms = delay.as_millis() as u64);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn dead_letter(&mut self, record: &Record<'_>, reason: &str) -> Result<(), ProcessError> {
        dead_letter::send(&mut self.outbox, &self.dead_letter_topic, record, &self.worker, reason).await
    }

    async fn commit(&self, offsets: &Offsets) {
        // A commit can fail after a rebalance moved the partition away; the new owner resumes
        // from the previous commit and re-processes, which the roles make idempotent.
        if let Err(error) = self.consumer.commit(offsets).await {
            metrics::counter!(names::COMMIT_FAILURES).increment(1);
            tracing::warn!(message = "offset commit failed", %error);
        }
    }

    /// Moves the consumer back to the first offsets of a batch that must be redone.
    async fn rewind(&self, first: &Offsets) -> Result<(), WorkerError> {
        self.consumer.rewind(first).await
    }
}

/// The readiness condition of a worker's loop, `running:<worker>`. A process registers it for
/// every role it starts before any of them runs (a role still connecting has no pipeline yet,
/// and readiness must not hold while one is missing); the pipeline meets it once its loop runs.
pub fn running_condition(worker: &str) -> String {
    format!("running:{worker}")
}

/// Times the phases of one batch into `nexxus_batch_phase_seconds{phase}`: where a role's batch
/// time goes (processing, the outputs' acknowledgements, the store, the commit).
struct Phases(Instant);

impl Phases {
    fn start() -> Phases {
        Phases(Instant::now())
    }

    fn next(self, phase: &'static str) -> Phases {
        let now = Instant::now();
        metrics::histogram!(names::BATCH_PHASE_SECONDS, "phase" => phase).record((now - self.0).as_secs_f64());
        Phases(now)
    }
}
