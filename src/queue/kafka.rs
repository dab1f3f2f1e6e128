//! rdkafka client builders shared by every role.
//!
//! Offsets: `enable.auto.commit=false` and `enable.auto.offset.store=false`. The run loop commits
//! explicitly, after a batch's side effects succeeded, the offsets it processed (next = last + 1).
//! A timer never commits a message that was merely received, so a crash re-delivers at most the
//! batch in flight. Assignment is cooperative-sticky so a rebalance does not stop every member.
//! Reads are `read_committed`, because upstream roles produce in transactions.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::error::WorkerError;
use crate::model::retry;
use crate::telemetry::{self, Health};

/// How long a produce may wait for queue space and delivery before it counts as failed.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Context of every client: turns librdkafka statistics into lag gauges, rebalances into
/// readiness, and broker loss into a failing readiness condition.
pub struct WorkerContext {
    health: Arc<Health>,
    /// Readiness condition names this client owns: `kafka:<client>` and `assigned:<client>`.
    broker_condition: String,
    assigned_condition: String,
}

impl WorkerContext {
    pub fn new(health: Arc<Health>, client: &str) -> Self {
        WorkerContext {
            health,
            broker_condition: format!("kafka:{client}"),
            assigned_condition: format!("assigned:{client}"),
        }
    }
}

impl ClientContext for WorkerContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 means unknown.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    telemetry::consumer_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.health.fail(&self.broker_condition, "all brokers down");
        }
        tracing::warn!(message = "kafka client error", %error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            _ => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        telemetry::rebalanced();
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Joining the group is what makes a consumer ready, even with zero partitions
                // (more members than partitions is a healthy state).
                self.health.ok(&self.assigned_condition);
                tracing::info!(message = "partitions assigned", partitions = %describe(tpl));
            }
            Rebalance::Revoke(tpl) => tracing::info!(message = "partitions revoked", partitions = %describe(tpl)),
            Rebalance::Error(error) => tracing::warn!(message = "rebalance failed", %error),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let parts: Vec<String> = tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
    parts.join(",")
}

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
    // Statistics only where [`WorkerContext`] turns them into lag gauges: rdkafka's default
    // context would log the whole multi-kilobyte document at INFO every interval.
    c.set("statistics.interval.ms", "5000");
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", if from_beginning { "earliest" } else { "latest" })
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // A batch must finish within this bound or the member leaves the group (KIP-62); the
        // run loop keeps batches bounded by TP_BATCH_SIZE so five minutes is ample.
        .set("max.poll.interval.ms", "300000");
    for (k, v) in &cfg.kafka.opts.0 {
        c.set(k, v);
    }
    let context = WorkerContext::new(health.clone(), client_id);
    health.require(&context.assigned_condition, "waiting for a partition assignment");
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
        .set("message.timeout.ms", "30000");
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
