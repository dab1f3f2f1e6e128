//! The end of a batch: `end_batch`, every output acknowledged (and the transaction committed
//! with the input offsets), then `persist`, then the offsets committed. If the outputs are not
//! all delivered, the batch is redone from its first offsets instead, after a backoff.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Handler, Outcome, Pipeline, Positions};
use crate::error::WorkerError;
use crate::model::retry::{self, Delays};
use crate::queue::source::Offsets;
use crate::telemetry;

/// What the loop does after a batch.
pub(super) enum Step {
    /// Take the next batch (or the same one again, rewound).
    Next,
    /// Leave the loop with this result.
    Stop(Result<(), WorkerError>),
}

impl Pipeline {
    /// Settles, persists and commits the batch that `positions` and `outcome` describe.
    pub(super) async fn finish<H: Handler>(
        &mut self,
        handler: &mut H,
        positions: Positions,
        outcome: Result<Outcome, WorkerError>,
        phase: Phases,
        redo: &mut Delays,
        shutdown: &CancellationToken,
    ) -> Step {
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
                self.outbox.commit_transaction(&self.consumer, &positions.next).await.map_err(|e| e.to_string())
            }
            (None, Ok(_)) => Ok(()),
        };
        if let Err(reason) = delivered {
            return self.redo(handler, &positions.first, reason, &outcome, redo, shutdown).await;
        }
        redo.reset();
        let phase = phase.next("commit_transaction");
        if !self.persist(handler, shutdown).await {
            // Shut down while the store was failing: nothing of this batch is committed.
            return Step::Stop(Ok(()));
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
            Ok(Outcome::Done) => Step::Next,
            Ok(Outcome::Interrupted) => Step::Stop(Ok(())),
            Err(e) => Step::Stop(Err(e)),
        }
    }

    /// Some outputs may be missing: forget the batch, rewind to its first offsets, back off.
    async fn redo<H: Handler>(
        &mut self,
        handler: &mut H,
        first: &Offsets,
        reason: String,
        outcome: &Result<Outcome, WorkerError>,
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
        if matches!(outcome, Ok(Outcome::Interrupted)) || shutdown.is_cancelled() {
            return Step::Stop(Ok(()));
        }
        tokio::select! {
            () = shutdown.cancelled() => Step::Stop(Ok(())),
            () = tokio::time::sleep(delay) => Step::Next,
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

    async fn commit(&self, offsets: &Offsets) {
        // A commit can fail after a rebalance moved the partition away; the new owner resumes
        // from the previous commit and re-processes, which the roles make idempotent.
        if let Err(error) = self.consumer.commit(offsets).await {
            telemetry::commit_failed();
            tracing::warn!(message = "offset commit failed", %error);
        }
    }
}

/// Times the phases of one batch into `nexxus_batch_phase_seconds{phase}`: where a role's batch
/// time goes (processing, the outputs' acknowledgements, the store, the commit).
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
