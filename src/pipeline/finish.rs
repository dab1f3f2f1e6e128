//! The end of a batch: `end_batch`, then the batch is sealed (its deliveries, the handler's
//! store writes and its offsets) and finished in the background (every output acknowledged,
//! `persist`, offsets committed) while the next batch is processed. A transactional pipeline
//! finishes each batch before the next (one open transaction per producer). If an output was
//! not delivered, the batch, and the one processed on top of it, are redone from the first
//! offsets after a backoff.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Handler, Outcome, Persist, Pipeline, Positions};
use crate::error::WorkerError;
use crate::model::retry::{self, Delays};
use crate::queue::outbox::Deliveries;
use crate::queue::source::{Offsets, Source};
use crate::telemetry::{self, Health};

/// What the loop does after a batch.
pub(super) enum Step {
    /// Take the next batch (or the same one again, rewound).
    Next,
    /// Leave the loop with this result.
    Stop(Result<(), WorkerError>),
}

/// How a sealed batch ended.
pub(super) enum Finished {
    /// Delivered, persisted and committed (a commit refused after a rebalance included: the
    /// partition's next owner redoes it, which the roles make idempotent).
    Committed,
    /// An output was not acknowledged: nothing of the batch is committed, it must be redone.
    Undelivered(String),
    /// Shutdown came while the store was failing: nothing of the batch is committed.
    Stopped,
}

/// A batch finishing in the background, with the first offsets a redo rewinds to.
pub(super) struct InFlight {
    pub(super) first: Offsets,
    pub(super) task: JoinHandle<Finished>,
}

impl InFlight {
    /// Waits for the batch to finish (cancel-safe: the task goes on); a panicked finishing task
    /// counts as undelivered. Returns the batch's first offsets once, with how it ended.
    pub(super) async fn finished(&mut self) -> (Offsets, Finished) {
        let finished =
            (&mut self.task).await.unwrap_or_else(|e| Finished::Undelivered(format!("finishing task failed: {e}")));
        (std::mem::take(&mut self.first), finished)
    }
}

/// A batch taken out of the loop: its outputs, its store writes, the offsets to commit.
struct Sealed {
    deliveries: Deliveries,
    persist: Option<Persist>,
    next: Offsets,
}

/// What finishes sealed batches; cloned into each background task.
#[derive(Clone)]
pub(super) struct Committer {
    pub(super) consumer: Arc<Source>,
    pub(super) health: Arc<Health>,
    pub(super) processing_condition: String,
}

impl Committer {
    async fn finish(self, sealed: Sealed, shutdown: CancellationToken) -> Finished {
        let phase = Phases::start();
        if let Err(e) = sealed.deliveries.settle().await {
            return Finished::Undelivered(e.to_string());
        }
        let phase = phase.next("settle");
        if let Some(persist) = &sealed.persist {
            if !self.persist(persist, &shutdown).await {
                return Finished::Stopped;
            }
        }
        let phase = phase.next("persist");
        // Delivered and stored: whatever failed before (an output, the store) works again.
        self.health.ok(&self.processing_condition);
        self.mark_done(&sealed.next);
        phase.next("commit");
        Finished::Committed
    }

    /// Runs the batch's store writes until they succeed; false if shutdown came first.
    async fn persist(&self, persist: &Persist, shutdown: &CancellationToken) -> bool {
        let mut delays = retry::PIPELINE_PERSIST.delays();
        loop {
            let delay = delays.next_delay();
            match persist().await {
                Ok(()) => {
                    self.health.ok(&self.processing_condition);
                    return true;
                }
                Err(e) => {
                    telemetry::persist_retried();
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

    fn mark_done(&self, offsets: &Offsets) {
        // Marking fails after a rebalance moved the partition away; the new owner resumes
        // from the previous commit and re-processes, which the roles make idempotent.
        if let Err(error) = self.consumer.mark_done(offsets) {
            telemetry::commit_failed();
            tracing::warn!(message = "offsets not marked done (partition revoked meanwhile?)", %error);
        }
    }
}

impl Pipeline {
    fn committer(&self) -> Committer {
        Committer {
            consumer: self.consumer.clone(),
            health: self.health.clone(),
            processing_condition: self.processing_condition.clone(),
        }
    }

    /// Ends the batch `positions` and `outcome` describe and hands it to the background (or,
    /// for the last batch before a stop, finishes it here), after the previous one finished.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn finish<H: Handler>(
        &mut self,
        handler: &mut H,
        positions: Positions,
        outcome: Result<Outcome, WorkerError>,
        phase: Phases,
        in_flight: &mut Option<InFlight>,
        redo: &mut Delays,
        shutdown: &CancellationToken,
    ) -> Step {
        // A failed `end_batch` means some outputs were never enqueued: the batch must be redone,
        // never committed.
        let ended = if outcome.is_ok() { handler.end_batch(&mut self.outbox).await.err() } else { None };
        let phase = phase.next("end_batch");
        if self.transactional {
            return self.finish_transaction(handler, positions, outcome, ended, phase, redo, shutdown).await;
        }
        let (interrupted, fatal) = match outcome {
            Ok(Outcome::Done) => (false, None),
            Ok(Outcome::Interrupted) => (true, None),
            Err(e) => (true, Some(e)),
        };
        let persist = if ended.is_none() { handler.seal() } else { None };
        let sealed = Sealed { deliveries: self.outbox.take(), persist, next: positions.next };
        // The previous batch first: this one was computed on top of it, so if it failed this
        // one is forgotten too (its outputs may be out already: repeats, like after a crash).
        if let Some(mut previous) = in_flight.take() {
            let ended = previous.finished().await;
            if let Some(step) = self.after_previous(handler, ended, &positions.first, interrupted, redo, shutdown).await
            {
                return stop_with(step, fatal);
            }
        }
        let phase = phase.next("previous");
        if let Some(e) = ended {
            // Settled anyway so no delivery is left pending.
            let _ = sealed.deliveries.settle().await;
            return self
                .redo(handler, &positions.first, format!("ending the batch: {e}"), interrupted, redo, shutdown)
                .await;
        }
        if !interrupted && !shutdown.is_cancelled() {
            let task = tokio::spawn(self.committer().finish(sealed, shutdown.clone()));
            *in_flight = Some(InFlight { first: positions.first, task });
            return Step::Next;
        }
        // The last batch before a stop: finished here, before the loop returns.
        let finished = self.committer().finish(sealed, shutdown.clone()).await;
        phase.next("finish_last");
        match finished {
            Finished::Committed => {}
            Finished::Stopped => return Step::Stop(Ok(())),
            Finished::Undelivered(reason) => {
                return stop_with(
                    self.redo(handler, &positions.first, reason, interrupted, redo, shutdown).await,
                    fatal,
                )
            }
        }
        match (interrupted, fatal) {
            (_, Some(e)) => Step::Stop(Err(e)),
            (true, None) => Step::Stop(Ok(())),
            (false, None) => Step::Next,
        }
    }

    /// What follows the end of the batch in flight: nothing if it was committed; else a stop, or
    /// a redo from its first offsets and those of `on_top`, a batch computed on top of it.
    pub(super) async fn after_previous<H: Handler>(
        &mut self,
        handler: &mut H,
        (mut first, finished): (Offsets, Finished),
        on_top: &Offsets,
        interrupted: bool,
        redo: &mut Delays,
        shutdown: &CancellationToken,
    ) -> Option<Step> {
        match finished {
            Finished::Committed => {
                redo.reset();
                None
            }
            Finished::Stopped => Some(Step::Stop(Ok(()))),
            Finished::Undelivered(reason) => {
                for (partition, offset) in on_top {
                    first.entry(partition.clone()).or_insert(*offset);
                }
                Some(self.redo(handler, &first, reason, interrupted, redo, shutdown).await)
            }
        }
    }

    /// Consume-transform-produce: every output acknowledged and the transaction committed with
    /// the input offsets, then the handler's store writes, before the next batch.
    #[allow(clippy::too_many_arguments)]
    async fn finish_transaction<H: Handler>(
        &mut self,
        handler: &mut H,
        positions: Positions,
        outcome: Result<Outcome, WorkerError>,
        ended: Option<crate::error::ProcessError>,
        phase: Phases,
        redo: &mut Delays,
        shutdown: &CancellationToken,
    ) -> Step {
        let (interrupted, fatal) = match outcome {
            Ok(Outcome::Done) => (false, None),
            Ok(Outcome::Interrupted) => (true, None),
            Err(e) => (true, Some(e)),
        };
        let settled = self.outbox.settle().await;
        let phase = phase.next("settle");
        let delivered = match (ended, settled) {
            (Some(e), _) => Err(format!("ending the batch: {e}")),
            (None, Err(e)) => Err(e.to_string()),
            (None, Ok(_)) => {
                self.outbox.commit_transaction(&self.consumer, &positions.next).await.map_err(|e| e.to_string())
            }
        };
        if let Err(reason) = delivered {
            return stop_with(self.redo(handler, &positions.first, reason, interrupted, redo, shutdown).await, fatal);
        }
        redo.reset();
        self.health.ok(&self.processing_condition);
        let phase = phase.next("commit_transaction");
        if let Some(persist) = handler.seal() {
            if !self.committer().persist(&persist, shutdown).await {
                return Step::Stop(Ok(()));
            }
        }
        phase.next("persist");
        match (interrupted, fatal) {
            (_, Some(e)) => Step::Stop(Err(e)),
            (true, None) => Step::Stop(Ok(())),
            (false, None) => Step::Next,
        }
    }

    /// Some outputs may be missing: forget what was not committed, rewind to `first`, back off.
    pub(super) async fn redo<H: Handler>(
        &mut self,
        handler: &mut H,
        first: &Offsets,
        reason: String,
        interrupted: bool,
        redo: &mut Delays,
        shutdown: &CancellationToken,
    ) -> Step {
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
                return Step::Stop(Err(e));
            }
        }
        if let Err(e) = self.consumer.rewind(first).await {
            return Step::Stop(Err(e));
        }
        if interrupted || shutdown.is_cancelled() {
            return Step::Stop(Ok(()));
        }
        tokio::select! {
            () = shutdown.cancelled() => Step::Stop(Ok(())),
            () = tokio::time::sleep(delay) => Step::Next,
        }
    }
}

/// A stop after a redo keeps the fatal error that ended the batch (the redo is left to the
/// partition's next owner).
fn stop_with(step: Step, fatal: Option<WorkerError>) -> Step {
    match (step, fatal) {
        (Step::Stop(Ok(())), Some(e)) => Step::Stop(Err(e)),
        (step, _) => step,
    }
}

/// Times the phases of one batch into `nexxus_batch_phase_seconds{phase}`: where a role's batch
/// time goes (processing, waiting for the previous batch, and in the background the outputs'
/// acknowledgements, the store, the commit).
pub(super) struct Phases(Instant);

impl Phases {
    pub(super) fn start() -> Phases {
        Phases(Instant::now())
    }

    pub(super) fn next(self, phase: &'static str) -> Phases {
        let now = Instant::now();
        telemetry::batch_phase(phase, now - self.0);
        Phases(now)
    }
}
