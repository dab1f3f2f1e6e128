//! The consume loop every role runs: take a batch, process each record, seal it, and while its
//! outputs, store writes and commit complete in the background, take the next batch.
//!
//! ```text
//! loop {
//!     batch  = recv() + whatever else is already buffered (up to TP_BATCH_SIZE)
//!     for record in batch:
//!         handler.handle(record, outbox) -> Ok        : next (its outputs are enqueued)
//!                                        -> Poison    : enqueue a dead_letter envelope, next
//!                                        -> Transient : readiness false, back off, retry the SAME record
//!                                        -> Fatal     : settle and commit what was done, stop
//!     handler.end_batch(); sealed = (the outputs' deliveries, handler.seal(), offsets)
//!     await the previous sealed batch -> committed? go on
//!                                     -> an output failed? rewind to ITS first offsets, forget
//!                                        this batch too (handler.abort_batch), back off, redo
//!     in the background: settle every delivery, persist, mark last offset + 1 per partition done
//! }
//! ```
//! Kafka commits the offsets marked done every second, on revoke and when the loop ends, so a
//! crash re-delivers at most the last second plus the two batches not marked yet; a poison
//! message never stops its partition, and nothing is committed whose outputs and store writes
//! are not durable. Roles with a transaction (the
//! aggregation) settle and commit each batch before taking the next: one transaction is open
//! at a time per producer.

mod batch;
mod decode;
mod finish;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

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
use finish::{Finished, InFlight, Phases, Step};

/// A role's processing. Per batch the pipeline calls `handle` for each record in order, then
/// `end_batch` and `seal`; in the background it awaits every output, runs what `seal` returned,
/// and commits. If the outputs could not be delivered the batch is redone from its first
/// offsets after `abort_batch`.
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

    /// After `end_batch`: what must be stored once the batch's outputs are acknowledged, and
    /// before its offsets are committed. It runs while the next batch is processed, so the
    /// handler keeps (as its own state) whatever the next batch must see of this one. Transient
    /// errors are retried with backoff, by calling it again: it must be idempotent.
    fn seal(&mut self) -> Option<Persist> {
        None
    }

    /// The batch, and any sealed batch not committed yet, will be redone from their first
    /// offsets: forget everything accumulated since the last committed batch.
    fn abort_batch(&mut self) {}

    /// Partitions were taken from this member (a rebalance, or a session it lost): forget state
    /// kept per owned partition, which its next owner may change.
    fn revoked(&mut self) {}
}

/// A sealed batch's store writes, runnable again on a retry.
pub type Persist = Box<dyn Fn() -> BoxFuture<'static, Result<(), ProcessError>> + Send + Sync>;

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

    /// Consumes until `shutdown`, then finishes what is in flight and leaves the group.
    pub async fn run<H: Handler>(mut self, handler: &mut H, shutdown: CancellationToken) -> Result<(), WorkerError> {
        // Its own handle: a batch borrows the consumer while the pipeline is borrowed mutably.
        let consumer = self.consumer.clone();
        let running = self.running_condition.clone();
        self.health.ok(&running);
        let mut redo = retry::PIPELINE_REDO.delays();
        let mut in_flight = None;
        let mut revocations = consumer.revocations();
        let result = loop {
            let batch = match self.receive(&consumer, &mut in_flight, &shutdown).await {
                Next::Batch(batch) => batch,
                Next::Stop(result) => break result,
                Next::Finished(ended) => {
                    match self.after_previous(handler, ended, &Offsets::new(), false, &mut redo, &shutdown).await {
                        None | Some(Step::Next) => continue,
                        Some(Step::Stop(result)) => break result,
                    }
                }
            };
            // Checked after the receive, whose poll ran the rebalance callbacks: nothing of a
            // partition's next owner's work is ever processed on top of stale state.
            if consumer.revocations() != revocations {
                revocations = consumer.revocations();
                // The batch in flight was computed on the state being dropped: it is finished
                // first, so the handler drops only what is stored.
                if let Some(mut previous) = in_flight.take() {
                    let ended = previous.finished().await;
                    let on_top = batch::first_offsets(&batch);
                    match self.after_previous(handler, ended, &on_top, false, &mut redo, &shutdown).await {
                        None => {}
                        Some(Step::Next) => continue,
                        Some(Step::Stop(result)) => break result,
                    }
                }
                handler.revoked();
            }
            if self.transactional {
                if let Err(e) = self.outbox.begin() {
                    break Err(e);
                }
            }
            let phase = Phases::start();
            let (positions, outcome) = self.process_batch(handler, &batch, &shutdown).await;
            let phase = phase.next("process");
            drop(batch);
            match self.finish(handler, positions, outcome, phase, &mut in_flight, &mut redo, &shutdown).await {
                Step::Next => {}
                Step::Stop(result) => break result,
            }
        };
        // The batch in flight is settled, persisted and committed (or, if the store is down at
        // shutdown, left to the partition's next owner) before the member leaves.
        if let Some(mut in_flight) = in_flight {
            in_flight.finished().await;
        }
        // What the commit timer has not sent yet, so the next owner starts where this one ended
        // (a transactional pipeline's offsets are committed in its transactions).
        if !self.transactional {
            if let Err(error) = self.consumer.commit_marked().await {
                telemetry::commit_failed();
                tracing::warn!(message = "final offset commit failed", %error);
            }
        }
        self.health.remove(&self.processing_condition);
        self.health.fail(&running, "stopped");
        result
    }

    /// One record plus whatever the consumer already buffered, then (with a linger) what arrives
    /// in time, up to `TP_BATCH_SIZE`: bigger batches under load, no added latency when idle.
    /// While it waits for the first record, the batch in flight may finish: that is returned
    /// at once, so a failed batch is redone without waiting for more input. `recv` is
    /// cancel-safe.
    async fn receive<'c>(
        &self,
        consumer: &'c Source,
        in_flight: &mut Option<InFlight>,
        shutdown: &CancellationToken,
    ) -> Next<'c> {
        let first = loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Next::Stop(Ok(())),
                ended = finished(in_flight) => {
                    *in_flight = None;
                    return Next::Finished(ended);
                }
                m = consumer.recv() => m,
            };
            match received {
                Ok(m) => break m,
                Err(error) if error.is_fatal() => {
                    return Next::Stop(Err(WorkerError::Fatal(format!(
                        "the consumer of {} failed for good: {error}",
                        self.worker
                    ))))
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
        Next::Batch(batch)
    }
}

/// What [`Pipeline::receive`] came back with.
enum Next<'c> {
    Batch(Vec<Received<'c>>),
    /// The batch in flight finished while no record was waiting (its first offsets, how).
    Finished((Offsets, Finished)),
    Stop(Result<(), WorkerError>),
}

/// The end of the batch in flight; never, if there is none.
async fn finished(in_flight: &mut Option<InFlight>) -> (Offsets, Finished) {
    match in_flight {
        Some(f) => f.finished().await,
        None => std::future::pending().await,
    }
}

/// The readiness condition of a worker's loop, `running:<worker>`. A process registers it for
/// every role it starts before any of them runs (a role still connecting has no pipeline yet,
/// and readiness must not hold while one is missing); the pipeline meets it once its loop runs.
pub fn running_condition(worker: &str) -> String {
    format!("running:{worker}")
}
