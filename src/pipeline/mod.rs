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

mod batch;
mod decode;
mod finish;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{ProcessError, WorkerError};
use crate::model::retry;
use crate::queue::kafka;
use crate::queue::outbox::{Outbox, Sink};
use crate::queue::source::{Offsets, Received, Source};
use crate::queue::{topic, Record};
use crate::telemetry::{self, Health};

pub use decode::Decode;
use finish::{Phases, Step};

/// A role's processing. Per batch the pipeline calls `handle` for each record in order, then
/// `end_batch`, awaits every output, calls `persist`, and commits. If the outputs could not be
/// delivered the batch is redone from its first offsets after `abort_batch`.
pub trait Handler {
    /// What each record is decoded into, once, by the pipeline; a record that does not decode
    /// is dead-lettered there and never reaches the handler.
    type Input: Decode;

    /// Before the batch's first record, with every input of the batch that decoded: a chance
    /// to fetch what the whole batch needs at once. Best effort: whatever it cannot do,
    /// `handle` does record by record.
    fn prepare(&mut self, _batch: &[&Self::Input]) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Processes one record (its position and key in `record`, its decoded `input`); outputs
    /// go to `out`.
    fn handle(
        &mut self,
        record: &Record<'_>,
        input: Self::Input,
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
        // Its own handle: a batch borrows the consumer while the pipeline is borrowed mutably.
        let consumer = self.consumer.clone();
        let running = self.running_condition.clone();
        self.health.ok(&running);
        let mut redo = retry::PIPELINE_REDO.delays();
        let result = loop {
            let batch = match self.receive(&consumer, &shutdown).await {
                Ok(Some(batch)) => batch,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            if self.transactional {
                if let Err(e) = self.outbox.begin() {
                    break Err(e);
                }
            }
            let phase = Phases::start();
            let (positions, outcome) = self.process_batch(handler, &batch, &shutdown).await;
            let phase = phase.next("process");
            drop(batch);
            match self.finish(handler, positions, outcome, phase, &mut redo, &shutdown).await {
                Step::Next => {}
                Step::Stop(result) => break result,
            }
        };
        self.health.remove(&self.processing_condition);
        self.health.fail(&running, "stopped");
        result
    }

    /// One record plus whatever the consumer already buffered, then (with a linger) what arrives
    /// in time, up to `TP_BATCH_SIZE`: bigger batches under load, no added latency when idle.
    /// `None` once `shutdown` is cancelled; an error once the consumer can never deliver again.
    /// `recv` is cancel-safe.
    async fn receive<'c>(
        &self,
        consumer: &'c Source,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Received<'c>>>, WorkerError> {
        let first = loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(None),
                m = consumer.recv() => m,
            };
            match received {
                Ok(m) => break m,
                Err(error) if error.is_fatal() => {
                    return Err(WorkerError::Fatal(format!("the consumer of {} failed for good: {error}", self.worker)))
                }
                Err(error) => tracing::warn!(message = "kafka receive error", %error),
            }
        };
        let mut batch = Vec::with_capacity(self.batch_size.min(1024));
        batch.push(first);
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
        telemetry::batch_size(batch.len());
        Ok(Some(batch))
    }
}

/// The readiness condition of a worker's loop, `running:<worker>`. A process registers it for
/// every role it starts before any of them runs (a role still connecting has no pipeline yet,
/// and readiness must not hold while one is missing); the pipeline meets it once its loop runs.
pub fn running_condition(worker: &str) -> String {
    format!("running:{worker}")
}
