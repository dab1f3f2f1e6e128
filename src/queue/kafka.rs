//! rdkafka client builders shared by every role.
//!
//! Offsets: `enable.auto.offset.store=false`. The run loop stores, after a batch's side effects
//! succeeded, the offsets it processed (next = last + 1), and librdkafka commits what was stored
//! every second (`auto.commit.interval.ms`), on revoke and on close. A timer never commits a
//! message that was merely received, so a crash re-delivers at most the last second's batches
//! plus the two in flight (one finishing in the background, one being processed). Reads are
//! `read_committed`, because upstream roles produce in transactions.
//!
//! Group membership uses Kafka 4's consumer group protocol (KIP-848, `group.protocol=consumer`):
//! the broker assigns partitions incrementally, a join or a leave never stops the other members,
//! and liveness (`group.consumer.session.timeout.ms`, `group.consumer.heartbeat.interval.ms`) is
//! the broker's setting, not the client's. `TP_KAFKA_OPTS=group.protocol=classic` selects the
//! classic protocol for clusters older than Kafka 4 (cooperative-sticky, a 10 s session).
//! No static membership (`group.instance.id`): under KIP-848 a member restarted after a crash,
//! before the broker expired its previous life, is refused with UNRELEASED_INSTANCE_ID, which
//! librdkafka treats as fatal for the consumer.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::config::Config;
use crate::error::WorkerError;
use crate::model::retry;
use crate::telemetry::{self, Health};

mod context;
mod stall;

pub use context::WorkerContext;

/// How long a produce may wait for queue space and delivery before it counts as failed.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings every client shares: brokers, `TP_KAFKA_OPTS` (TLS, SASL, tuning) last so the
/// operator can override anything.
pub fn base_config(cfg: &Config, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers).set("client.id", client_id).set("socket.keepalive.enable", "true");
    for (k, v) in &cfg.kafka.opts.0 {
        c.set(k, v);
    }
    c
}

pub type KafkaConsumer = StreamConsumer<WorkerContext>;

/// A member is ready once it is at most this many records (or one batch, if larger) behind the
/// end of every partition it owns.
const CAUGHT_UP_LAG: i64 = 1_000;

/// `TP_KAFKA_OPTS` asks for the classic group protocol (a cluster before Kafka 4).
fn classic_protocol(cfg: &Config) -> bool {
    cfg.kafka.opts.0.iter().any(|(k, v)| k == "group.protocol" && v.eq_ignore_ascii_case("classic"))
}

/// A consumer in group `group` subscribed to `topics` (full names, prefix included).
pub fn consumer(
    cfg: &Config,
    health: &Arc<Health>,
    client_id: &str,
    group: &str,
    topics: &[String],
    from_beginning: bool,
) -> Result<Arc<KafkaConsumer>, WorkerError> {
    let mut c = base_config(cfg, client_id);
    // Statistics only where [`WorkerContext`] turns them into lag gauges and readiness:
    // rdkafka's default context would log the whole multi-kilobyte document at INFO every
    // interval. Every second, so readiness follows a catch-up within about a second.
    c.set("statistics.interval.ms", "1000");
    c.set("group.id", group)
        // Offsets are stored by the pipeline once a batch's side effects are durable
        // (`Source::mark_done`) and committed by librdkafka every second, on revoke and on close:
        // a commit per batch cost the broker a request per batch (BENCHMARKS). The aggregation
        // stores none: its offsets commit in its transaction, so this commits nothing for it.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", if from_beginning { "earliest" } else { "latest" })
        // A batch must finish within this bound or the member leaves the group (KIP-62); the
        // run loop keeps batches bounded by TP_BATCH_SIZE so five minutes is ample.
        .set("max.poll.interval.ms", "300000");
    if classic_protocol(cfg) {
        // librdkafka refuses these three under the consumer protocol.
        c.set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
    } else {
        c.set("group.protocol", "consumer");
    }
    for (k, v) in &cfg.kafka.opts.0 {
        c.set(k, v);
    }
    let bound = i64::try_from(cfg.batch_size).unwrap_or(i64::MAX).max(CAUGHT_UP_LAG);
    let context = WorkerContext::consumer(health.clone(), client_id, bound, from_beginning);
    let consumer: KafkaConsumer = c.create_with_context(context).map_err(WorkerError::kafka("creating consumer"))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(WorkerError::kafka(format!("subscribing to {names:?}")))?;
    Ok(Arc::new(consumer))
}

/// Waits until the cluster answers a metadata request for `topics`, keeping readiness false and
/// retrying with backoff meanwhile. A missing topic is reported by name (run `topics apply`).
pub async fn wait_for_topics(
    consumer: &Arc<KafkaConsumer>,
    health: &Health,
    client_id: &str,
    topics: &[String],
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), WorkerError> {
    let condition = format!("kafka:{client_id}");
    health.require(&condition, "connecting to the Kafka cluster");
    let mut delays = retry::KAFKA_TOPICS_WAIT.delays();
    loop {
        let c = consumer.clone();
        let probe = tokio::task::spawn_blocking(move || c.fetch_metadata(None, Duration::from_secs(5)))
            .await
            .map_err(|e| WorkerError::Fatal(format!("metadata task: {e}")))?;
        let problem = match probe {
            Ok(md) => {
                let missing: Vec<&String> = topics
                    .iter()
                    .filter(|t| !md.topics().iter().any(|m| m.name() == t.as_str() && m.error().is_none()))
                    .collect();
                if missing.is_empty() {
                    health.ok(&condition);
                    return Ok(());
                }
                format!("missing topics {missing:?}: run `nexxus-worker topics apply`")
            }
            Err(e) => format!("cluster unreachable: {e}"),
        };
        health.fail(&condition, problem.clone());
        let delay = delays.next_delay();
        tracing::warn!(message = "kafka not ready, retrying", problem, retry_in_ms = delay.as_millis() as u64);
        tokio::select! {
            () = shutdown.cancelled() => return Err(WorkerError::Cancelled("Kafka was ready".into())),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The shared producer: idempotent (no duplicates from retries) and `acks=all`.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<WorkerContext>,
}

/// Settings of every producer, plain or transactional: idempotent, `acks=all`, then
/// `TP_KAFKA_OPTS` last so the operator can override them.
fn producer_config(cfg: &Config, client_id: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut c = base_config(cfg, client_id);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        // Statistics tell the context a broker is back after an outage (readiness recovers).
        .set("statistics.interval.ms", "5000");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    for (k, v) in &cfg.kafka.opts.0 {
        c.set(k, v);
    }
    c
}

/// A record for `topic` with an optional key and headers (shared by awaited and batched sends).
pub(crate) fn record<'a>(
    topic: &'a str,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    headers: &[(&str, &[u8])],
) -> FutureRecord<'a, [u8], [u8]> {
    let mut record: FutureRecord<'a, [u8], [u8]> = FutureRecord::to(topic).payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    if !headers.is_empty() {
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            h = h.insert(Header { key: name, value: Some(*value) });
        }
        record = record.headers(h);
    }
    record
}

impl Producer {
    pub fn new(cfg: &Config, health: &Arc<Health>, client_id: &str) -> Result<Self, WorkerError> {
        let inner = producer_config(cfg, client_id, &[])
            .create_with_context(WorkerContext::new(health.clone(), &format!("{client_id}-producer")))
            .map_err(WorkerError::kafka("creating producer"))?;
        Ok(Producer { inner })
    }

    /// Produces one message (full topic name) and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> KafkaResult<(i32, i64)> {
        match self.inner.send(record(topic, key, payload, headers), PRODUCE_TIMEOUT).await {
            Ok(delivery) => {
                telemetry::produced(topic);
                Ok((delivery.partition, delivery.offset))
            }
            Err((e, _)) => Err(e),
        }
    }

    /// A transactional producer (`transactional.id` stable per worker instance, so a restarted
    /// instance fences its previous life), with its transactions initialised.
    pub async fn transactional(
        cfg: &Config,
        health: &Arc<Health>,
        transactional_id: &str,
    ) -> Result<Self, WorkerError> {
        let extra = [("transactional.id", transactional_id), ("transaction.timeout.ms", "60000")];
        let inner: FutureProducer<WorkerContext> = producer_config(cfg, transactional_id, &extra)
            .create_with_context(WorkerContext::new(health.clone(), &format!("{transactional_id}-producer")))
            .map_err(WorkerError::kafka("creating transactional producer"))?;
        let p = inner.clone();
        tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::init_transactions(&p, Duration::from_secs(60))
        })
        .await
        .map_err(|e| WorkerError::Fatal(format!("init_transactions task: {e}")))?
        .map_err(WorkerError::kafka("initialising transactions"))?;
        Ok(Producer { inner })
    }

    pub(crate) fn inner(&self) -> &FutureProducer<WorkerContext> {
        &self.inner
    }

    /// Fails fast, naming the topic, when it does not exist: a produce to a missing topic would
    /// otherwise wait for the whole message timeout and report only "timed out".
    pub async fn check_topic(&self, topic: &str) -> Result<(), WorkerError> {
        // A topic created a moment ago may not be in every broker's metadata yet: look a few
        // times before calling it missing.
        let mut delays = retry::KAFKA_TOPIC_METADATA.delays();
        loop {
            let p = self.inner.clone();
            let t = topic.to_string();
            let md = tokio::task::spawn_blocking(move || {
                rdkafka::producer::Producer::client(&p).fetch_metadata(Some(&t), Duration::from_secs(10))
            })
            .await
            .map_err(|e| WorkerError::Fatal(format!("metadata task: {e}")))?
            .map_err(WorkerError::kafka("fetching metadata"))?;
            if md.topics().iter().any(|m| m.name() == topic && m.error().is_none() && !m.partitions().is_empty()) {
                return Ok(());
            }
            let Some(delay) = delays.next() else { break };
            tokio::time::sleep(delay).await;
        }
        Err(WorkerError::Usage(format!("topic {topic} does not exist: run `nexxus-worker topics apply`")))
    }

    /// Waits for queued messages; a producer dropped without flushing loses them.
    pub async fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        let p = self.inner.clone();
        tokio::task::spawn_blocking(move || rdkafka::producer::Producer::flush(&p, timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}

/// Reads the committed offsets of `group` for `topic`'s partitions (tests and operators).
pub fn committed_offsets(cfg: &Config, group: &str, topic: &str, partitions: i32) -> KafkaResult<Vec<i64>> {
    let mut c = base_config(cfg, &format!("{group}-inspect"));
    c.set("group.id", group).set("enable.auto.commit", "false");
    let consumer: BaseConsumer = c.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed.elements().iter().map(|e| e.offset().to_raw().unwrap_or(-1)).collect())
}
