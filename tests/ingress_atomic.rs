//! `POST /events` over Kafka is all or nothing: a request whose records cannot all be produced
//! leaves none of them for the roles (one producer transaction, read `read_committed`), and the
//! answer says so. Real Kafka; `-t all` on it with SQLite as the store.
//!
//! The failure is a real broker refusal: the test's `aggregation` topic takes messages of at
//! most 4 KiB, and one message of the request is larger (still far below the ingress's own
//! bound). Its other messages land on other partitions, so produced one by one they were in.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::all::*;
use nexxus_worker::queue::topics;
use serde_json::{json, Value};

#[tokio::test]
async fn a_request_the_broker_refuses_in_part_leaves_none_of_it() {
    let prefix = common::unique_prefix("atomic");
    let mut env = common::env_for(&prefix);
    env.insert("TP_MAIN_DB".into(), "sqlite".into());
    let cfg = common::config(&prefix);
    let mut files = topics::load(None).expect("the repository's topic files");
    for f in &mut files {
        f.replication_factor = 1;
        if f.name == "aggregation" {
            f.partitions = 8;
            f.config = BTreeMap::from([("max.message.bytes".to_string(), "4096".to_string())]);
        } else {
            f.config.clear();
        }
    }
    topics::apply(&cfg, &files, false).await.expect("topics");

    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let p = start(dir.path(), None, &pairs).await;
    let app = unique_app("atomic");
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[], &app_doc(&app)).0, 200);

    let small: Vec<Value> = (0..20).map(|i| create(&app, Some(&format!("s{i}")), &format!("small {i}"))).collect();
    let mut request = small.clone();
    // Incompressible (the producer compresses its batches), so it stays over the topic's bound.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: String = (0..6000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'a' + (seed % 26) as u8)
        })
        .collect();
    request.push(create(&app, Some("big"), &noise));
    let (code, body) = p.post("/events", &Value::Array(request));
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["accepted"], 0, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("none accepted")), "{body}");

    // Nothing of it reaches the store: a later request's object is stored alone.
    let (code, body) = p.post("/events", &create(&app, Some("marker"), "after the refusal"));
    assert_eq!(code, 202, "{body}");
    let started = Instant::now();
    while !snapshot(&p, &app, "reader").contains_key("marker") {
        assert!(started.elapsed() < Duration::from_secs(30), "the marker is stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = snapshot(&p, &app, "reader");
    assert_eq!(stored.keys().collect::<Vec<_>>(), ["marker"], "none of the refused request");

    // The same small messages alone go in.
    let (code, body) = p.post("/events", &Value::Array(small));
    assert_eq!((code, &body["accepted"]), (202, &json!(20)), "{body}");
    let started = Instant::now();
    let stored = loop {
        let stored = snapshot(&p, &app, "reader");
        if stored.len() >= 21 || started.elapsed() > Duration::from_secs(30) {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stored.len(), 21, "{:?}", stored.keys().collect::<Vec<_>>());
    assert!(stored.values().all(|(version, _)| *version == 1), "each created once: {stored:?}");
    assert!(!stored.contains_key("big"));
    assert_eq!(p.stop(), Some(0));
}
