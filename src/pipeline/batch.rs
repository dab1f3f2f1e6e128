//! Processing a batch: each record decoded once into its handler's input (a record that does
//! not decode is dead-lettered here, in one place), `prepare` over the decoded inputs, then
//! `handle` in order, each record retried on transient failures.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Decode, Handler, Outcome, Pipeline, Positions};
use crate::error::{Cause, ProcessError, WorkerError};
use crate::model::retry;
use crate::queue::dead_letter;
use crate::queue::source::{Offsets, Received};
use crate::queue::Record;
use crate::telemetry;

/// The first offset of each partition in `batch`: where a redo of it starts.
pub(super) fn first_offsets(batch: &[Received<'_>]) -> Offsets {
    let mut first = Offsets::new();
    for received in batch {
        let record = received.record();
        first.entry((record.topic.to_string(), record.partition)).or_insert(record.offset);
    }
    first
}

impl Pipeline {
    /// Processes records in order; returns the positions of what completed, and why it stopped.
    pub(super) async fn process_batch<H: Handler>(
        &mut self,
        handler: &mut H,
        batch: &[Received<'_>],
        shutdown: &CancellationToken,
    ) -> (Positions, Result<Outcome, WorkerError>) {
        let mut positions = Positions::default();
        let mut records = Vec::with_capacity(batch.len());
        for received in batch {
            let record = received.record();
            // Every partition of the batch, processed or not: a redo must rewind them all.
            positions.first.entry((record.topic.to_string(), record.partition)).or_insert(record.offset);
            let input = H::Input::decode(&record);
            records.push((record, input));
        }
        let inputs: Vec<&H::Input> = records.iter().filter_map(|(_, input)| input.as_ref().ok()).collect();
        handler.prepare(&inputs).await;
        drop(inputs);
        for (record, input) in records {
            telemetry::consumed(record.topic);
            let started = Instant::now();
            match self.process(handler, &record, input, shutdown).await {
                Ok(Outcome::Done) => {}
                other => return (positions, other),
            }
            telemetry::processing_time(record.topic, started.elapsed());
            positions.next.insert((record.topic.to_string(), record.partition), record.offset + 1);
        }
        (positions, Ok(Outcome::Done))
    }

    /// One record, retried on transient failures until it succeeds or the process stops. A
    /// retry decodes the record again: the input was given to the failed attempt, and retries
    /// are the rare path.
    async fn process<H: Handler>(
        &mut self,
        handler: &mut H,
        record: &Record<'_>,
        mut input: Result<H::Input, Cause>,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, WorkerError> {
        let mut delays = retry::PIPELINE_RECORD.delays();
        let mut failing = false;
        loop {
            let handled = match input {
                Ok(input) => handler.handle(record, input, &mut self.outbox).await,
                Err(cause) => Err(ProcessError::Poison(cause)),
            };
            let result = match handled {
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
                    telemetry::retried(record.topic);
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
            input = H::Input::decode(record);
        }
    }

    async fn dead_letter(&mut self, record: &Record<'_>, reason: &str) -> Result<(), ProcessError> {
        dead_letter::send(&mut self.outbox, &self.dead_letter_topic, record, &self.worker, reason).await
    }
}
