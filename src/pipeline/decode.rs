//! Each record is decoded once, here, into the input its role's [`super::Handler`] takes. A
//! record that does not decode is poison: the pipeline dead-letters it with the reason below
//! and the handler never sees it.

use crate::error::Cause;
use crate::model::{
    decode_aggregation, decode_track, AggregatorMessage, ChangeEvent, TrackCommand, TransportMessage, WriteRecord,
    DEFAULT_MAX_MESSAGE_BYTES,
};
use crate::queue::Record;

/// How a handler's input is made from a record's bytes.
pub trait Decode: Sized + Send {
    fn decode(record: &Record<'_>) -> Result<Self, Cause>;
}

/// For handlers that read the record's bytes themselves (`dead-letter replay`, tests).
impl Decode for () {
    fn decode(_: &Record<'_>) -> Result<(), Cause> {
        Ok(())
    }
}

/// `aggregation`: API messages, bounded in size (CONTRACT section 2).
impl Decode for AggregatorMessage {
    fn decode(record: &Record<'_>) -> Result<Self, Cause> {
        decode_aggregation(record.payload, DEFAULT_MAX_MESSAGE_BYTES).map_err(Cause::of)
    }
}

/// `track`: device and subscription commands, bounded in size.
impl Decode for TrackCommand {
    fn decode(record: &Record<'_>) -> Result<Self, Cause> {
        decode_track(record.payload, DEFAULT_MAX_MESSAGE_BYTES).map_err(Cause::of)
    }
}

/// `write`: what aggregation forwarded.
impl Decode for WriteRecord {
    fn decode(record: &Record<'_>) -> Result<Self, Cause> {
        serde_json::from_slice(record.payload).map_err(|e| Cause::with("not a write record", e))
    }
}

/// `transport_manager`: the writer's events.
impl Decode for ChangeEvent {
    fn decode(record: &Record<'_>) -> Result<Self, Cause> {
        serde_json::from_slice(record.payload).map_err(|e| Cause::with("not a change event", e))
    }
}

/// The transport topics: what the transport manager addressed.
impl Decode for TransportMessage {
    fn decode(record: &Record<'_>) -> Result<Self, Cause> {
        serde_json::from_slice(record.payload).map_err(|e| Cause::with("not a transport message", e))
    }
}
