//! A store outage is not a poison message: the writer keeps its place, retries with backoff,
//! reports not-ready meanwhile, and applies everything once the store is back.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nexxus_worker::apps::Apps;
use nexxus_worker::config::Config;
use nexxus_worker::model::{Application, ChannelKey, StoredObject};
use nexxus_worker::pipeline::Pipeline;
use nexxus_worker::queue::outbox::Sink;
use nexxus_worker::store::cql::CqlStore;
use nexxus_worker::store::{ChannelRow, ObjectId, ObjectRow, ObjectWrite, Store, StoreError};
use nexxus_worker::telemetry::Health;
use nexxus_worker::workers::write::Write;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The real store behind a switch that makes every call fail as an outage would.
struct Switchable {
    inner: CqlStore,
    down: AtomicBool,
}

impl Switchable {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("connection refused (simulated outage)".into()))
        } else {
            Ok(())
        }
    }
}

impl Store for Switchable {
    async fn get_objects(&self, app: &str, ids: &[ObjectId]) -> Result<HashMap<ObjectId, ObjectRow>, StoreError> {
        self.check()?;
        self.inner.get_objects(app, ids).await
    }
    async fn put_objects(&self, app: &str, writes: &[ObjectWrite]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_objects(app, writes).await
    }
    async fn children(&self, app: &str, model: &str, id: &str) -> Result<Vec<ObjectId>, StoreError> {
        self.check()?;
        self.inner.children(app, model, id).await
    }
    async fn channel_page(
        &self,
        app: &str,
        channel: &ChannelKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChannelRow>, StoreError> {
        self.check()?;
        self.inner.channel_page(app, channel, after, limit).await
    }
    async fn channel_changes(
        &self,
        app: &str,
        channel: &ChannelKey,
        since: u64,
        limit: usize,
    ) -> Result<Option<Vec<ChannelRow>>, StoreError> {
        self.check()?;
        self.inner.channel_changes(app, channel, since, limit).await
    }
    async fn put_application(&self, app: &Application) -> Result<(), StoreError> {
        self.inner.put_application(app).await
    }
    async fn get_application(&self, id: &str) -> Result<Option<Application>, StoreError> {
        self.inner.get_application(id).await
    }
    async fn list_applications(&self) -> Result<Vec<Application>, StoreError> {
        self.inner.list_applications().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }
}

fn write_record(op: serde_json::Value, offset: i64) -> String {
    let mut r = json!({"application_id": "app1", "model": "task", "id": "t1", "timestamp": 1_700_000_000_000_000u64 + offset as u64,
        "source": {"topic": "aggregation", "partition": 0, "offset": offset}});
    for (k, v) in op.as_object().unwrap() {
        r[k] = v.clone();
    }
    r.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn outage_keeps_the_place_and_readiness_false_until_the_store_returns() {
    let prefix = common::unique_prefix("outage");
    let mut env = common::env_for(&prefix);
    let keyspace: String = format!("k{}", prefix.replace(['-', '.'], "_")).chars().take(48).collect();
    env.insert("TP_SCYLLA_KEYSPACE".into(), keyspace);
    let cfg = Arc::new(Config::load(&Default::default(), &env).unwrap());
    common::create_topics(&cfg, &[("write", 1), ("transport_manager", 1), ("dead_letter", 1)]).await;
    let store = Arc::new(Switchable { inner: CqlStore::connect(&cfg).await.unwrap(), down: AtomicBool::new(true) });
    let apps = Apps::default();
    apps.insert(Application::from_json(br#"{"id":"app1","schema":{"task":{}}}"#).unwrap());

    let producer = common::producer(&cfg);
    let topic = cfg.topic("write");
    let create = write_record(json!({"op": "create", "object": {"type": "task", "votes": 0}}), 0);
    producer.send(&topic, Some(b"t1"), create.as_bytes(), &[]).await.unwrap();
    for i in 1..=5 {
        let inc = write_record(
            json!({"op": "update", "patches": [{"op": "increment", "path": "task/t1/votes", "value": 1}]}),
            i,
        );
        producer.send(&topic, Some(b"t1"), inc.as_bytes(), &[]).await.unwrap();
    }

    let health = Arc::new(Health::new());
    let shutdown = CancellationToken::new();
    let pipeline =
        Pipeline::connect(&cfg, &health, "write-0", "write", &["write"], Sink::Kafka(producer.clone()), &shutdown)
            .await
            .unwrap();
    let mut writer = Write::new(store.clone(), apps, &cfg, "write-0");
    let run = tokio::spawn({
        let s = shutdown.clone();
        async move { pipeline.run(&mut writer, s).await }
    });

    common::wait_until(Duration::from_secs(30), "readiness to report the outage", || {
        health.failing().iter().any(|(c, r)| c.starts_with("processing:") && r.contains("simulated outage"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!health.is_ready());
    assert!(common::read_all(&cfg, &cfg.topic("dead_letter"), 1).is_empty(), "an outage is not a poison message");

    store.down.store(false, Ordering::SeqCst);
    let ids = vec![("task".to_string(), "t1".to_string())];
    let started = std::time::Instant::now();
    loop {
        let rows = store.get_objects("app1", &ids).await.unwrap();
        if let Some(row) = rows.get(&ids[0]) {
            if row.object.version == 6 {
                let o: &StoredObject = &row.object;
                assert_eq!(o.object["votes"], json!(5));
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "writes never landed after the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::wait_until(Duration::from_secs(10), "readiness after recovery", || health.is_ready()).await;
    shutdown.cancel();
    run.await.unwrap().unwrap();
    common::drop_keyspace(&cfg).await;
}
