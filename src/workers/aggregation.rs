//! The aggregation role: `aggregation` → validated, id-assigned, coalesced [`WriteRecord`]s on
//! `write`, keyed by object id. Outputs and input offsets commit in one Kafka transaction, so a
//! crash never yields a half-forwarded batch and a replay never forwards twice.
//!
//! What it decides: the message is well formed, its application is known, its model exists;
//! creates without an id get the deterministic id of their log position. What it leaves to the
//! writer, which holds the stored object: the author ACL (it needs the object's author fields)
//! and the affected channels (they need the before-image).

use std::collections::HashMap;

use crate::error::{ProcessError, WorkerError};
use crate::model::schema::is_builtin;
use crate::model::{decode_aggregation, Change, SourcePosition, WriteRecord, DEFAULT_MAX_MESSAGE_BYTES};
use crate::queue::outbox::Outbox;
use crate::queue::{topic, Record};

use super::apps::Apps;
use super::pipeline::{Handler, Pipeline};
use super::WorkerContext;

pub struct Aggregator {
    apps: Apps,
    write_topic: String,
    coalesce: bool,
    /// The batch's records in input order, forwarded by `end_batch`.
    pending: Vec<WriteRecord>,
}

impl Aggregator {
    pub fn new(apps: Apps, write_topic: String, coalesce: bool) -> Self {
        Aggregator { apps, write_topic, coalesce, pending: Vec::new() }
    }
}

/// Connects and runs the role until `shutdown`.
pub async fn run(ctx: &WorkerContext, shutdown: tokio_util::sync::CancellationToken) -> Result<(), WorkerError> {
    let cfg = &ctx.config;
    let apps = Apps::for_worker(ctx, shutdown.clone()).await?;
    // One transactional id per instance: a restarted `aggregation-<i>` fences its previous life.
    let producer = ctx.queue.transactional_sink(cfg, &ctx.health, &cfg.topic(&ctx.name())).await?;
    let pipeline = Pipeline::connect(
        cfg,
        &ctx.health,
        &ctx.name(),
        topic::AGGREGATION,
        &[topic::AGGREGATION],
        producer,
        &shutdown,
    )
    .await?
    .transactional()
    .with_linger(cfg.aggregation_linger);
    let mut handler = Aggregator::new(apps, cfg.topic(topic::WRITE), !cfg.aggregation_linger.is_zero());
    pipeline.run(&mut handler, shutdown).await
}

impl Handler for Aggregator {
    async fn handle(&mut self, record: &Record<'_>, _out: &mut Outbox) -> Result<(), ProcessError> {
        let message = decode_aggregation(record.payload, DEFAULT_MAX_MESSAGE_BYTES)
            .map_err(|e| ProcessError::Poison(e.to_string()))?;
        let app_id = message.application_id().to_string();
        let app =
            self.apps.get(&app_id).ok_or_else(|| ProcessError::Poison(format!("unknown application `{app_id}`")))?;
        let position =
            SourcePosition { topic: record.topic.to_string(), partition: record.partition, offset: record.offset };
        let records = WriteRecord::from_message(message, &position);
        // All or nothing: a message naming one unknown model is rejected whole.
        if let Some(bad) = records.iter().find(|r| app.model(&r.model).is_none() && !is_builtin(&r.model)) {
            return Err(ProcessError::Poison(format!("unknown model `{}` in application `{app_id}`", bad.model)));
        }
        self.pending.extend(records);
        Ok(())
    }

    async fn end_batch(&mut self, out: &mut Outbox) -> Result<(), ProcessError> {
        let records = std::mem::take(&mut self.pending);
        let records = if self.coalesce { coalesce(records) } else { records };
        for r in &records {
            // Cannot fail on any input: string-keyed maps of JSON values, strings and integers. An
            // error would be a bug in our types, which no retry or dead letter cures: stop.
            let bytes =
                serde_json::to_vec(r).map_err(|e| ProcessError::Fatal(format!("encoding a write record: {e}")))?;
            out.send(&self.write_topic, Some(r.id.as_bytes()), &bytes, &[])
                .await
                .map_err(|e| ProcessError::Transient(format!("producing to write: {e}")))?;
        }
        metrics::counter!("nexxus_aggregation_records_total", "stage" => "forwarded").increment(records.len() as u64);
        Ok(())
    }

    fn abort_batch(&mut self) {
        self.pending.clear();
    }
}

/// Merges consecutive updates of the same object into one record, keeping every object's
/// changes in order. Creates and deletes are never merged: they change the object's existence.
pub fn coalesce(records: Vec<WriteRecord>) -> Vec<WriteRecord> {
    let mut out: Vec<WriteRecord> = Vec::with_capacity(records.len());
    // Index in `out` of the latest record of each object.
    let mut last: HashMap<(String, String, String), usize> = HashMap::new();
    for r in records {
        let key = (r.application_id.clone(), r.model.clone(), r.id.clone());
        if let (Change::Update { patches, instant }, Some(&i)) = (&r.change, last.get(&key)) {
            if let Some(WriteRecord {
                change: Change::Update { patches: into, instant: into_instant },
                timestamp,
                source,
                ..
            }) = out.get_mut(i)
            {
                into.extend(patches.iter().cloned());
                *into_instant |= *instant;
                *timestamp = r.timestamp;
                *source = r.source.clone();
                continue;
            }
        }
        last.insert(key, out.len());
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AggregatorMessage;

    fn records(lines: &[&str]) -> Vec<WriteRecord> {
        lines
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                let m = AggregatorMessage::decode(l.as_bytes()).unwrap();
                WriteRecord::from_message(
                    m,
                    &SourcePosition { topic: "aggregation".into(), partition: 0, offset: i as i64 },
                )
            })
            .collect()
    }

    fn inc(id: &str, n: i64) -> String {
        format!(
            r#"{{"op":"update","patches":[{{"op":"increment","path":"task/{id}/votes","value":{n}}}],"application_id":"a","timestamp":{n}}}"#
        )
    }

    #[test]
    fn merges_updates_per_object_in_order_and_never_across_a_delete() {
        let del = r#"{"op":"delete","object":{"model":"task","id":"x"},"application_id":"a","timestamp":9}"#;
        let lines = [inc("x", 1), inc("y", 2), inc("x", 3), del.to_string(), inc("x", 4), inc("y", 5)];
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let out = coalesce(records(&refs));
        let summary: Vec<(String, Vec<i64>)> = out
            .iter()
            .map(|r| {
                let values = match &r.change {
                    Change::Update { patches, .. } => patches.iter().filter_map(|p| p.value.as_i64()).collect(),
                    _ => vec![],
                };
                (format!("{}:{:?}", r.id, r.op()), values)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("x:Update".to_string(), vec![1, 3]),
                ("y:Update".to_string(), vec![2, 5]),
                ("x:Delete".to_string(), vec![]),
                ("x:Update".to_string(), vec![4]),
            ]
        );
        assert_eq!(out[1].source.offset, 5, "a merged record carries its last source");
        assert_eq!(out[1].timestamp, 5);
    }
}
