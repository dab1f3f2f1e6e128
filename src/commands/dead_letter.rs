//! `nexxus-worker dead-letter replay`: after the cause of a rejection is fixed, re-feeds each
//! dead-lettered message, byte for byte, to the topic it came from (or `--to`). It is an
//! ordinary pipeline: the group `dead_letter-replay` commits only what was re-produced.

use crate::error::ProcessError;
use crate::pipeline::Handler;
use crate::queue::dead_letter::Envelope;
use crate::queue::outbox::Outbox;
use crate::queue::Record;

pub const GROUP: &str = "dead_letter-replay";

pub struct Replay {
    /// Replay only envelopes from this (full) source topic.
    pub only_source: Option<String>,
    /// Send to this (full) topic instead of the source.
    pub to: Option<String>,
}

impl Handler for Replay {
    /// The envelope is read here, not by the pipeline: one that does not decode stays in place
    /// instead of being dead-lettered into the topic it came from.
    type Input = ();

    async fn handle(&mut self, record: &Record<'_>, _: (), out: &mut Outbox) -> Result<(), ProcessError> {
        let envelope: Envelope = match serde_json::from_slice(record.payload) {
            Ok(e) => e,
            // Not ours, or damaged. Dead-lettering it again would feed this very topic forever;
            // it stays in `dead_letter` for a person to look at.
            Err(error) => {
                tracing::error!(message = "not a dead-letter envelope, left in place", offset = record.offset, %error);
                return Ok(());
            }
        };
        if self.only_source.as_ref().is_some_and(|s| *s != envelope.source.topic) {
            return Ok(());
        }
        let (key, payload) = match envelope.original() {
            Ok(original) => original,
            Err(error) => {
                tracing::error!(message = "envelope payload is not base64, left in place", offset = record.offset, %error);
                return Ok(());
            }
        };
        let topic = self.to.as_deref().unwrap_or(&envelope.source.topic);
        out.send(
            topic,
            key.as_deref(),
            &payload,
            &[("nexxus-replayed-from", format!("{}/{}", record.partition, record.offset).as_bytes())],
        )
        .await
        .map_err(ProcessError::from)
    }
}
