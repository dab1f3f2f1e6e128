//! The aggregation role: `aggregation` → validated, id-assigned, coalesced [`WriteRecord`]s on
//! `write`, keyed by object id. Outputs and input offsets commit in one Kafka transaction, so a
//! crash never yields a half-forwarded batch and a replay never forwards twice.
//!
//! What it decides: the message is well formed, its application is known, its model exists;
//! creates without an id get the deterministic id of their log position. What it leaves to the
//! writer, which holds the stored object: the author ACL (it needs the object's author fields)
//! and the affected channels (they need the before-image).

use std::collections::HashMap;

use crate::error::{Cause, ProcessError, WorkerError};
use crate::model::{AggregatorMessage, Change, WriteRecord};
use crate::queue::outbox::Outbox;
use crate::queue::{topic, Record};

use crate::apps::{require_model, Apps};
use crate::pipeline::{Handler, Pipeline};
use crate::runtime::{Worker, WorkerContext};
use crate::telemetry;

pub struct Aggregation {
    apps: Apps,
    write_topic: String,
    coalesce: bool,
    /// The batch's records in input order with their [`weight`], forwarded by `end_batch`.
    pending: Vec<(WriteRecord, usize)>,
}

impl Aggregation {
    pub fn new(apps: Apps, write_topic: String, coalesce: bool) -> Self {
        Aggregation { apps, write_topic, coalesce, pending: Vec::new() }
    }
}

impl Worker for Aggregation {
    async fn connect(
        ctx: &WorkerContext,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(Self, Pipeline), WorkerError> {
        let cfg = &ctx.config;
        let apps = ctx.apps(shutdown).await?;
        // One transactional id per instance: a restarted `aggregation-<i>` fences its previous life.
        let producer = ctx.queue.transactional_sink(cfg, &ctx.health, &cfg.topic(&ctx.name())).await?;
        let pipeline = Pipeline::connect(
            cfg,
            &ctx.health,
            &ctx.name(),
            topic::AGGREGATION,
            &[topic::AGGREGATION],
            producer,
            shutdown,
        )
        .await?
        .transactional()
        .with_linger(cfg.aggregation_linger);
        let handler =
            Aggregation::new(apps, cfg.topic(&cfg.kafka.outputs.aggregation), !cfg.aggregation_linger.is_zero());
        Ok((handler, pipeline))
    }
}

impl Handler for Aggregation {
    type Input = AggregatorMessage;

    async fn handle(
        &mut self,
        record: &Record<'_>,
        message: AggregatorMessage,
        _out: &mut Outbox,
    ) -> Result<(), ProcessError> {
        let app_id = message.application_id().to_string();
        let app = self.apps.require(&app_id)?;
        let records = WriteRecord::from_message(message, &record.position());
        // All or nothing: a message naming one unknown model is rejected whole.
        for r in &records {
            require_model(&app, &r.model)?;
        }
        let mut weighed = Vec::with_capacity(records.len());
        for r in records {
            let weight = weight(&r, record.payload.len());
            if weight > MAX_WRITE_RECORD_BYTES {
                return Err(ProcessError::poison(format!(
                    "message too large to forward: up to {weight} bytes as a write record, over {MAX_WRITE_RECORD_BYTES}"
                )));
            }
            weighed.push((r, weight));
        }
        self.pending.extend(weighed);
        Ok(())
    }

    async fn end_batch(&mut self, out: &mut Outbox) -> Result<(), ProcessError> {
        let records = std::mem::take(&mut self.pending);
        let records = if self.coalesce { coalesce(records) } else { records.into_iter().map(|(r, _)| r).collect() };
        for r in &records {
            // Cannot fail on any input: string-keyed maps of JSON values, strings and integers. An
            // error would be a bug in our types, which no retry or dead letter cures: stop.
            let bytes =
                serde_json::to_vec(r).map_err(|e| ProcessError::Fatal(Cause::with("encoding a write record", e)))?;
            out.send(&self.write_topic, Some(r.partition_key()), &bytes, &[]).await?;
        }
        telemetry::aggregation_forwarded(records.len());
        Ok(())
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
    }
}

/// A `write` record must fit the producer's default record limit (1,000,000 bytes), or the
/// batch could never be forwarded and would be retried forever: a message that could make a
/// bigger one is rejected instead.
pub const MAX_WRITE_RECORD_BYTES: usize = 900_000;

/// An upper bound of `r`'s encoded size, from the size of the message it came from: the record
/// re-encodes the message's parts, adds its envelope fields and copies the message's `user_id`
/// onto each patch.
fn weight(r: &WriteRecord, message_bytes: usize) -> usize {
    let per_patch: usize = match &r.change {
        Change::Update { patches, .. } => patches.iter().map(|p| p.user_id.as_ref().map_or(0, |u| u.len() + 16)).sum(),
        _ => 0,
    };
    message_bytes + per_patch + 512
}

/// Coalesced records stop growing at about this many bytes of input messages, well under the
/// broker's default 1 MiB record limit, so a merged record can always be produced.
pub const MAX_MERGED_BYTES: usize = 256 * 1024;

/// Merges later updates of an object into its latest record, keeping every object's changes in
/// order; `records` carry their [`weight`]. Creates and deletes are never
/// merged: they change the object's existence. Each merged message stays its own unit
/// ([`WriteRecord::merge`]): the writer applies or rejects each alone.
pub fn coalesce(records: Vec<(WriteRecord, usize)>) -> Vec<WriteRecord> {
    let mut out: Vec<(WriteRecord, usize)> = Vec::with_capacity(records.len());
    // Index in `out` of the latest record of each object.
    let mut last: HashMap<(String, String, String), usize> = HashMap::new();
    for (r, size) in records {
        let key = (r.application_id.clone(), r.model.clone(), r.id.clone());
        let into = last.get(&key).and_then(|&i| out.get_mut(i)).filter(|(_, bytes)| bytes + size <= MAX_MERGED_BYTES);
        let r = match into {
            Some((into, bytes)) => match into.merge(r) {
                None => {
                    *bytes += size;
                    continue;
                }
                Some(r) => r,
            },
            None => r,
        };
        last.insert(key, out.len());
        out.push((r, size));
    }
    out.into_iter().map(|(r, _)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AggregatorMessage, SourcePosition};

    fn records(lines: &[&str]) -> Vec<(WriteRecord, usize)> {
        lines
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                let m = AggregatorMessage::decode(l.as_bytes()).unwrap();
                let pos = SourcePosition { topic: "aggregation".into(), partition: 0, offset: i as i64 };
                WriteRecord::from_message(m, &pos).into_iter().map(|r| (r, l.len()))
            })
            .collect()
    }

    fn inc(id: &str, n: i64) -> String {
        format!(
            r#"{{"op":"update","patches":[{{"op":"increment","path":"task/{id}/votes","value":{n}}}],"application_id":"a","timestamp":{n}}}"#
        )
    }

    /// (id:op, the values of each unit's patches, each unit's source offset)
    fn summary(out: &[WriteRecord]) -> Vec<(String, Vec<Vec<i64>>, Vec<i64>)> {
        out.iter()
            .map(|r| {
                let units = r.update_units();
                (
                    format!("{}:{:?}", r.id, r.op()),
                    units.iter().map(|u| u.patches.iter().filter_map(|p| p.value.as_i64()).collect()).collect(),
                    units.iter().map(|u| u.source.offset).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn merges_updates_per_object_in_order_as_separate_units_and_never_across_a_delete() {
        let del = r#"{"op":"delete","object":{"model":"task","id":"x"},"application_id":"a","timestamp":9}"#;
        let lines = [inc("x", 1), inc("y", 2), inc("x", 3), del.to_string(), inc("x", 4), inc("y", 5)];
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let out = coalesce(records(&refs));
        assert_eq!(
            summary(&out),
            vec![
                ("x:Update".to_string(), vec![vec![1], vec![3]], vec![0, 2]),
                ("y:Update".to_string(), vec![vec![2], vec![5]], vec![1, 5]),
                ("x:Delete".to_string(), vec![], vec![]),
                ("x:Update".to_string(), vec![vec![4]], vec![4]),
            ]
        );
        let units = out[1].update_units();
        assert_eq!((units[0].timestamp, units[1].timestamp), (2, 5), "each unit keeps its own timestamp");
        // A merged record survives the topic: the writer sees the same units.
        let back: WriteRecord = serde_json::from_slice(&serde_json::to_vec(&out[1]).unwrap()).unwrap();
        assert_eq!(back, out[1]);
    }

    #[test]
    fn merging_stops_at_the_byte_bound() {
        let lines: Vec<String> = (0..4).map(|n| inc("x", n)).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let big: Vec<(WriteRecord, usize)> =
            records(&refs).into_iter().map(|(r, _)| (r, MAX_MERGED_BYTES / 2)).collect();
        let out = coalesce(big);
        assert_eq!(out.iter().map(|r| r.update_units().len()).collect::<Vec<_>>(), vec![2, 2]);
    }
}
