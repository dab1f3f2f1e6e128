//! Recording the metrics of the pipeline, the queues and the process around the roles. Names
//! and help text are in [`super::names`]; label values that are code (a phase, a reason) are
//! `&'static str` so recording them allocates nothing.
#![allow(clippy::disallowed_macros)] // the one home of the metric macros (see clippy.toml)

use std::time::Duration;

use super::names;

/// A message consumed from `topic`.
pub fn consumed(topic: &str) {
    metrics::counter!(names::CONSUMED, "topic" => topic.to_string()).increment(1);
}

/// A message produced to `topic` and acknowledged by the broker.
pub fn produced(topic: &str) {
    metrics::counter!(names::PRODUCED, "topic" => topic.to_string()).increment(1);
}

/// A message that failed processing; `class` is `poison`, `transient` or `fatal`.
pub fn failed(topic: &str, class: &'static str) {
    metrics::counter!(names::FAILED, "topic" => topic.to_string(), "class" => class).increment(1);
}

/// A record sent to `dead_letter`, counted under the topic it came from.
pub fn dead_lettered(topic: &str) {
    metrics::counter!(names::DEAD_LETTERED, "topic" => topic.to_string()).increment(1);
}

/// The time one record of `topic` took to process.
pub fn processing_time(topic: &str, elapsed: Duration) {
    metrics::histogram!(names::PROCESSING_SECONDS, "topic" => topic.to_string()).record(elapsed.as_secs_f64());
}

/// A record of `topic` whose processing is retried.
pub fn retried(topic: &str) {
    metrics::counter!(names::RETRIES, "topic" => topic.to_string()).increment(1);
}

/// A batch's `persist` retried (counted as a retry of the pseudo-topic `persist`).
pub fn persist_retried() {
    metrics::counter!(names::RETRIES, "topic" => "persist").increment(1);
}

/// An offset commit that failed.
pub fn commit_failed() {
    metrics::counter!(names::COMMIT_FAILURES).increment(1);
}

/// The records of one batch.
pub fn batch_size(records: usize) {
    metrics::histogram!(names::BATCH_SIZE).record(records as f64);
}

/// The time one `phase` of a batch took (`process`, `end_batch`, `settle`, ...).
pub fn batch_phase(phase: &'static str, elapsed: Duration) {
    metrics::histogram!(names::BATCH_PHASE_SECONDS, "phase" => phase).record(elapsed.as_secs_f64());
}

/// A consumer's lag on one partition, from librdkafka's statistics.
pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    metrics::gauge!(names::CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag as f64);
}

/// Requests of one type a Kafka client has sent so far, over every broker.
pub fn kafka_requests(client: &str, request: &str, total: u64) {
    metrics::counter!(names::KAFKA_REQUESTS, "client" => client.to_string(), "request" => request.to_string())
        .absolute(total);
}

/// An owned partition found stalled (`kind`: `no_position`, `stable_offset_stuck`).
pub fn partition_stalled(kind: &'static str) {
    metrics::counter!(names::PARTITION_STALLS, "kind" => kind).increment(1);
}

/// A consumer group rebalance.
pub fn rebalanced() {
    metrics::counter!(names::REBALANCES).increment(1);
}

/// A record dropped from an in-process topic nobody consumes.
pub fn memory_queue_dropped(topic: &str) {
    metrics::counter!(names::MEMORY_QUEUE_DROPPED, "topic" => topic.to_string()).increment(1);
}

/// A supervisor event (`started`, `crashed`, `recycled`, `stopped`, `gave_up`) of a child of
/// `role`.
pub fn supervisor_event(role: &'static str, event: &'static str) {
    metrics::counter!(names::SUPERVISOR_EVENTS, "role" => role, "event" => event).increment(1);
}

/// An ingress request refused before a handler (`busy`, `content_type`, `origin`, `host`).
pub fn ingress_refused(reason: &'static str) {
    metrics::counter!(names::INGRESS_REFUSED, "reason" => reason).increment(1);
}
