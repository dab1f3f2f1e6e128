//! The checks of tests/crash_stack.rs: deliveries as the load tool audited them, the stored
//! state against what it published, the registry against what went through `track`; and the
//! `track` traffic itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nexxus_worker::config::Config;
use nexxus_worker::registry::Registry;
use nexxus_worker::store::cql::CqlStore;
use nexxus_worker::store::Store;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common;
use crate::common::stack::TestStack;

#[derive(Deserialize)]
pub struct Published {
    pub application_id: String,
    pub model: String,
    pub objects: BTreeMap<String, Final>,
}

#[derive(Deserialize)]
pub struct Final {
    channel: u64,
    score: u64,
    version: u64,
    deleted: bool,
}

/// The last event at or before `at`, the one a failure at `at` followed.
fn after(events: &[(String, u64)], at: u64) -> String {
    events.iter().rev().find(|(_, t)| *t <= at).map_or_else(
        || "before the first kill".into(),
        |(what, t)| format!("{:.1} s after {what}", (at - t) as f64 / 1e6),
    )
}

pub fn assert_deliveries(outcome: &Value, events: &[(String, u64)]) {
    let expected = outcome["deliveries_expected"].as_u64().unwrap();
    assert!(expected > 0 && outcome["changes_sent"].as_u64().unwrap() > 0, "nothing was measured: {outcome}");
    let (lost, dups, unexpected) = (&outcome["lost"], &outcome["duplicates"], &outcome["unexpected"]);
    if lost == 0 && dups == 0 && unexpected == 0 {
        return;
    }
    let mut why = String::new();
    for s in outcome["samples"].as_array().unwrap() {
        let received: Vec<u64> = s["received_us"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
        let sent = s["sent_us"].as_u64();
        let when = match (s["kind"].as_str(), sent, received.get(1).or(received.first())) {
            (Some("lost"), Some(sent), _) => format!("sent {}", after(events, sent)),
            (_, _, Some(&again)) => {
                format!(
                    "sent {}, received again {}",
                    sent.map_or("never".into(), |t| after(events, t)),
                    after(events, again)
                )
            }
            _ => String::new(),
        };
        why.push_str(&format!(
            "\n  {} client {} object {} v{}: {when}",
            s["kind"], s["client"], s["object"], s["version"]
        ));
    }
    panic!(
        "{lost} lost, {dups} duplicate and {unexpected} unexpected deliveries of {expected}; events {:?}; samples:{why}",
        events.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>()
    );
}

/// Every object published is stored with exactly its final version, score, channel and
/// deletion, and the store holds no other object.
pub async fn assert_stored(stack: &TestStack, published: &Published) {
    let store = CqlStore::connect(&stack.cfg).await.unwrap();
    let ids: Vec<(String, String)> = published.objects.keys().map(|id| (published.model.clone(), id.clone())).collect();
    let app = &published.application_id;
    let started = Instant::now();
    let rows = loop {
        let mut rows = std::collections::HashMap::new();
        for chunk in ids.chunks(500) {
            rows.extend(store.get_objects(app, chunk).await.unwrap());
        }
        let behind: Vec<&String> = published
            .objects
            .iter()
            .filter(|(id, f)| {
                rows.get(&(published.model.clone(), (*id).clone())).map(|r| r.object.version) != Some(f.version)
            })
            .map(|(id, _)| id)
            .collect();
        if behind.is_empty() {
            break rows;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} of {} objects not stored at their final version after 120 s, e.g. {:?}",
            behind.len(),
            ids.len(),
            &behind[..behind.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (id, f) in &published.objects {
        let row = &rows[&(published.model.clone(), id.clone())];
        let o = &row.object.object;
        assert_eq!(row.deleted, f.deleted, "{id} deleted");
        assert_eq!(o["score"].as_u64(), Some(f.score), "{id} score: {o:?}");
        assert_eq!(o["context_id"].as_str(), Some(format!("c{}", f.channel).as_str()), "{id} channel");
    }
    let count =
        store.session().query_unpaged(format!("SELECT count(*) FROM {}.objects", store.keyspace()), ()).await.unwrap();
    let (count,): (i64,) = count.into_rows_result().unwrap().first_row().unwrap();
    assert_eq!(
        count as usize,
        published.objects.len(),
        "objects stored that were never published (the keyspace is this test's)"
    );
}

/// What flows through `track` while it is killed: every 100 ms a device registered and
/// subscribed (to a channel no change is published to, so the clients' deliveries stay as
/// counted), until `stop`. A send the broker's absence fails is repeated: the commands are
/// idempotent. Returns how many devices were sent.
pub async fn feed_track(cfg: Config, app: String, stop: tokio_util::sync::CancellationToken) -> usize {
    let producer = common::producer(&cfg);
    let topic = cfg.topic("track");
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        let device = format!("track{n}");
        let channel = json!({"model": "item", "context": format!("tracked{}", n % 5)});
        for command in [
            json!({"op": "device_register", "application_id": app, "device": {"id": device, "info": {}}}),
            json!({"op": "subscribe", "application_id": app, "device_id": device, "channel": channel}),
        ] {
            while producer.send(&topic, Some(device.as_bytes()), command.to_string().as_bytes(), &[]).await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        n += 1;
    }
    n
}

/// Every device sent through `track` is in the registry with its one subscription.
pub async fn assert_registered(stack: &TestStack, app: &str, devices: usize) {
    assert!(devices > 0, "no device was sent through track");
    let registry = Registry::connect(&stack.env["TP_REDIS_URL"]).await.unwrap();
    let started = Instant::now();
    for n in 0..devices {
        let device = format!("track{n}");
        loop {
            let known = registry.get_device(app, &device).await.unwrap().is_some();
            let subscriptions = registry.device_subscriptions(app, &device).await.unwrap().len();
            if known && subscriptions == 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "device {device} of {devices}: registered {known}, {subscriptions} subscriptions after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
