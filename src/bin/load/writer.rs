//! Drives changes into the pipeline at a steady rate: to Kafka's `aggregation` topic (keyed by
//! object id, the idempotent producer keeping each object's order), or to the HTTP ingress
//! (`POST /events`, one array per tick, in order).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::plan::{message, owed, Change, Generator};
use nexxus_worker::config::Config;
use nexxus_worker::model::clock;

pub enum Target {
    Kafka { producer: FutureProducer, topic: String },
    Http { client: reqwest::Client, url: String, token: Option<String> },
}

/// What was sent, and what each channel's subscriptions are owed (unfiltered, filtered), in
/// counts and key by key.
#[derive(Default)]
pub struct Sent {
    pub changes: u64,
    pub owed: HashMap<usize, (u64, u64)>,
    pub elapsed: Duration,
    pub ledger: Ledger,
}

impl Sent {
    /// `sent_us`: when the send began, not when it was acknowledged, which may be much later
    /// while the broker is away.
    fn add(&mut self, change: &Change, sent_us: u64) {
        let (u, f) = owed(change);
        let e = self.owed.entry(change.channel).or_default();
        e.0 += u;
        e.1 += f;
        self.changes += 1;
        self.ledger.book(change, sent_us);
    }
}

impl Target {
    pub fn kafka(cfg: &Config) -> anyhow::Result<Target> {
        let mut c = nexxus_worker::queue::kafka::base_config(cfg, "nexxus-load");
        c.set("enable.idempotence", "true").set("linger.ms", "5").set("compression.type", "lz4");
        c.set("queue.buffering.max.messages", "1000000");
        Ok(Target::Kafka { producer: c.create()?, topic: cfg.topic("aggregation") })
    }

    pub fn http(base: &str, token: Option<String>) -> Target {
        let url = format!("{}/events", base.trim_end_matches('/'));
        Target::Http { client: reqwest::Client::new(), url, token }
    }

    /// Sends `changes` as fast as the target takes them, in order.
    pub async fn send_all(&self, app: &str, changes: &[Change], sent: &mut Sent) -> anyhow::Result<()> {
        for chunk in changes.chunks(500) {
            let at = clock::now_micros();
            self.send(app, chunk).await?;
            for c in chunk {
                sent.add(c, at);
            }
        }
        Ok(())
    }

    /// `rate` changes per second for `duration`, ticking every 5 ms, or until `stop`.
    pub async fn drive(
        &self,
        app: &str,
        generator: &mut Generator,
        (rate, duration): (u64, Duration),
        stop: &CancellationToken,
        sent: &mut Sent,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut done = 0u64;
        while started.elapsed() < duration && !stop.is_cancelled() {
            tick.tick().await;
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            let batch: Vec<Change> = (done..due).map(|_| generator.next_change()).collect();
            done = due;
            if batch.is_empty() {
                continue;
            }
            let at = clock::now_micros();
            self.send(app, &batch).await?;
            for c in &batch {
                sent.add(c, at);
            }
        }
        sent.elapsed = started.elapsed();
        Ok(())
    }

    async fn send(&self, app: &str, batch: &[Change]) -> anyhow::Result<()> {
        match self {
            Target::Kafka { producer, topic } => {
                let mut pending = FuturesUnordered::<DeliveryFuture>::new();
                for change in batch {
                    let payload = message(app, change, clock::now_micros()).to_string();
                    let mut record = FutureRecord::to(topic).key(change.id.as_bytes()).payload(payload.as_bytes());
                    loop {
                        match producer.send_result(record) {
                            Ok(delivery) => {
                                pending.push(delivery);
                                break;
                            }
                            Err((_, back)) => {
                                record = back;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                }
                while let Some(result) = pending.next().await {
                    match result {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => anyhow::bail!("produce failed: {e}"),
                        Err(_) => anyhow::bail!("produce cancelled"),
                    }
                }
                Ok(())
            }
            Target::Http { client, url, token } => {
                // Requests stay well under the ingress's 1 MiB default body limit.
                for chunk in batch.chunks(1000) {
                    let now = clock::now_micros();
                    let body: Vec<serde_json::Value> = chunk.iter().map(|c| message(app, c, now)).collect();
                    let mut request = client.post(url).json(&body);
                    if let Some(t) = token {
                        request = request.bearer_auth(t);
                    }
                    let response = request.send().await?;
                    anyhow::ensure!(response.status().as_u16() == 202, "POST /events: {}", response.status());
                }
                Ok(())
            }
        }
    }
}
