//! Aggregation → write → transport_manager with real processes, the real broker and the real
//! Cassandra: ordering over several partitions and two writers, exact state under SIGKILLs, and
//! poison messages dead-lettered while the rest flows.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexxus_worker::config::Config;
use nexxus_worker::model::key::message_key;
use nexxus_worker::model::{object_id_from_position, ChangeEvent};
use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::store::cql::CqlStore;
use nexxus_worker::store::Store;
use serde_json::{json, Value};

const APP: &str = "app1";

/// Expected final (votes, tags, title, version) per object id.
type Expected = BTreeMap<String, (i64, Vec<Value>, String, u64)>;

struct Stack {
    cfg: Config,
    env: HashMap<String, String>,
}

impl Stack {
    async fn new(name: &str) -> Stack {
        let prefix = common::unique_prefix(name);
        let keyspace = format!("k{}", prefix.replace(['-', '.'], "_")).chars().take(48).collect::<String>();
        let mut env = common::env_for(&prefix);
        env.insert("TP_SCYLLA_KEYSPACE".into(), keyspace);
        env.insert("TP_HTTP_PORT".into(), "0".into());
        let cfg = Config::load(&Default::default(), &env).unwrap();
        common::create_topics(
            &cfg,
            &[("aggregation", 3), ("write", 4), ("transport_manager", 4), ("dead_letter", 1), ("system", 1)],
        )
        .await;
        let stack = Stack { cfg, env };
        let schema = json!({"task": {"belongsTo": [{"parentModel": "project"}]}, "project": {}});
        common::app_put(&stack.env, &json!({"id": APP, "schema": schema}));
        stack
    }

    fn start(&self, role: &str, index: u32) -> common::Reaper {
        common::Reaper(
            Command::new(common::BIN)
                .args(["-t", role, "-i", &index.to_string()])
                .env_clear()
                .envs(&self.env)
                .env("TP_BATCH_SIZE", "200")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    async fn store(&self) -> CqlStore {
        CqlStore::connect(&self.cfg).await.unwrap()
    }

    /// Produces lines to `aggregation` and returns each line's (partition, offset).
    async fn publish(&self, lines: Vec<Value>) -> Vec<(i32, i64)> {
        let producer = common::producer(&self.cfg);
        let topic = self.cfg.topic("aggregation");
        let mut positions = Vec::new();
        for chunk in lines.chunks(500) {
            let sends =
                chunk.iter().map(|v| {
                    let key = message_key(v);
                    let bytes = v.to_string();
                    let (producer, topic) = (&producer, &topic);
                    async move {
                        producer.send(topic, key.as_deref().map(str::as_bytes), bytes.as_bytes(), &[]).await.unwrap()
                    }
                });
            positions.extend(futures::future::join_all(sends).await);
        }
        positions
    }
}

fn create(id: Option<&str>, n: u64) -> Value {
    let mut object =
        json!({"type": "task", "context_id": "c1", "application_id": APP, "title": "t", "votes": 0, "tags": []});
    if let Some(id) = id {
        object["id"] = json!(id);
    }
    json!({"op": "create", "object": object, "application_id": APP, "timestamp": 1_700_000_000_000_000u64 + n})
}

/// Deterministic pseudo-random mixed patches over `ids`; returns the messages and the expected
/// final (votes, tags, title, version) of every object.
fn updates(ids: &[String], count: usize) -> (Vec<Value>, Expected) {
    let mut expected: Expected = ids.iter().map(|id| (id.clone(), (0, Vec::new(), "t".to_string(), 1))).collect();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let id = &ids[(next() % ids.len() as u64) as usize];
        let e = expected.get_mut(id).unwrap();
        let patch = match next() % 3 {
            0 => {
                let v = (next() % 5 + 1) as i64;
                e.0 += v;
                json!({"op": "increment", "path": format!("task/{id}/votes"), "value": v})
            }
            1 => {
                let v = json!(format!("g{n}"));
                e.1.push(v.clone());
                json!({"op": "append", "path": format!("task/{id}/tags"), "value": v})
            }
            _ => {
                e.2 = format!("title {n}");
                json!({"op": "replace", "path": format!("task/{id}/title"), "value": e.2})
            }
        };
        e.3 += 1;
        out.push(json!({"op": "update", "patches": [patch], "application_id": APP, "timestamp": 1_700_000_001_000_000u64 + n as u64}));
    }
    (out, expected)
}

/// Waits until every object in `expected` is stored with its expected version, then compares.
async fn assert_state(store: &CqlStore, expected: &Expected, timeout: Duration) {
    let ids: Vec<(String, String)> = expected.keys().map(|id| ("task".to_string(), id.clone())).collect();
    let started = Instant::now();
    loop {
        let rows = store.get_objects(APP, &ids).await.unwrap();
        let behind = expected
            .iter()
            .filter(|(id, e)| rows.get(&("task".to_string(), (*id).clone())).map(|r| r.object.version) != Some(e.3))
            .count();
        if behind == 0 {
            for (id, (votes, tags, title, version)) in expected {
                let row = &rows[&("task".to_string(), id.clone())];
                let o = &row.object.object;
                assert_eq!(o["votes"], json!(votes), "{id} votes");
                assert_eq!(o["tags"], json!(tags), "{id} tags");
                assert_eq!(o["title"], json!(title), "{id} title");
                assert_eq!(row.object.version, *version, "{id} version");
                assert!(!row.deleted);
            }
            return;
        }
        assert!(started.elapsed() < timeout, "{behind} objects not at their final version after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ordered_exact_state_with_two_writers_and_events_for_every_version() {
    let stack = Stack::new("order").await;
    let _agg = stack.start("aggregation", 0);
    let _w0 = stack.start("write", 0);
    let _w1 = stack.start("write", 1);
    let ids: Vec<String> = (0..100).map(|i| format!("obj-{i}")).collect();
    stack.publish(ids.iter().enumerate().map(|(n, id)| create(Some(id), n as u64)).collect()).await;
    let (msgs, expected) = updates(&ids, 9_900);
    stack.publish(msgs).await;
    let store = stack.store().await;
    assert_state(&store, &expected, Duration::from_secs(240)).await;

    // Every version of every object reached transport_manager, in order per object.
    let events = common::read_all(&stack.cfg, &stack.cfg.topic("transport_manager"), 4);
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, payload) in &events {
        let e: ChangeEvent = serde_json::from_slice(payload).unwrap();
        assert!(!e.channels.is_empty(), "events carry channels");
        versions.entry(e.id.clone()).or_default().push(e.version);
    }
    for (id, e) in &expected {
        let v = &versions[id];
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{id}: versions out of order {v:?}");
        assert_eq!(*v.last().unwrap(), e.3, "{id}");
    }
    common::drop_keyspace(&stack.cfg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkills_of_writer_and_aggregator_lose_and_duplicate_nothing() {
    let stack = Stack::new("crash").await;
    let mut agg = stack.start("aggregation", 0);
    let mut w0 = stack.start("write", 0);
    let _w1 = stack.start("write", 1);
    // Half the creates carry no id: theirs derive from the log position, so replays cannot
    // make a second object.
    let explicit: Vec<String> = (0..50).map(|i| format!("obj-{i}")).collect();
    let mut creates: Vec<Value> = explicit.iter().enumerate().map(|(n, id)| create(Some(id), n as u64)).collect();
    creates.extend((50..100).map(|n| create(None, n)));
    let positions = stack.publish(creates).await;
    let mut ids = explicit.clone();
    for &(partition, offset) in &positions[50..] {
        ids.push(object_id_from_position(APP, &stack.cfg.topic("aggregation"), partition, offset));
    }
    // A create without an id is keyed by nothing (its id does not exist yet), so it may sit on
    // another `aggregation` partition than later updates keyed by that id; Kafka orders them
    // only once the client learned the id, i.e. after the create was applied. Wait for that, as
    // a client must.
    let store = stack.store().await;
    let wanted: Vec<(String, String)> = ids.iter().map(|id| ("task".to_string(), id.clone())).collect();
    let started = Instant::now();
    while store.get_objects(APP, &wanted).await.unwrap().len() < wanted.len() {
        assert!(started.elapsed() < Duration::from_secs(120), "creates not applied");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (msgs, expected) = updates(&ids, 10_000);
    let killer = async {
        for round in 0..4 {
            tokio::time::sleep(Duration::from_millis(1500 + 700 * round)).await;
            if round % 2 == 0 {
                w0.0.kill().unwrap();
                w0.0.wait().unwrap();
                w0 = stack.start("write", 0);
            } else {
                agg.0.kill().unwrap();
                agg.0.wait().unwrap();
                agg = stack.start("aggregation", 0);
            }
        }
    };
    // Spread the input over ~8 s so that the kills land while work is in flight.
    let paced = async {
        for chunk in msgs.chunks(500) {
            stack.publish(chunk.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    };
    tokio::join!(paced, killer);
    assert_state(&store, &expected, Duration::from_secs(300)).await;
    let count =
        store.session().query_unpaged(format!("SELECT count(*) FROM {}.objects", store.keyspace()), ()).await.unwrap();
    let (count,): (i64,) = count.into_rows_result().unwrap().first_row().unwrap();
    assert_eq!(count, 100, "no duplicate objects from replayed creates");
    common::drop_keyspace(&stack.cfg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_are_dead_lettered_and_the_rest_flows() {
    let stack = Stack::new("poison").await;
    let _agg = stack.start("aggregation", 0);
    let _w = stack.start("write", 0);
    let producer = common::producer(&stack.cfg);
    let topic = stack.cfg.topic("aggregation");
    let bad: Vec<(&str, String)> = vec![
        ("not JSON", "{oops".to_string()),
        ("unknown op", json!({"op": "upsert", "application_id": APP, "timestamp": 1}).to_string()),
        ("unknown application", create(Some("x1"), 1).to_string().replace("app1", "nope")),
        ("unknown model", json!({"op":"create","object":{"type":"ghost","application_id":APP},"application_id":APP,"timestamp":1}).to_string()),
        ("update of missing", json!({"op":"update","patches":[{"op":"increment","path":"task/missing/votes","value":1}],"application_id":APP,"timestamp":1}).to_string()),
        ("immutable field", json!({"op":"update","patches":[{"op":"replace","path":"task/good-0/created","value":1}],"application_id":APP,"timestamp":5}).to_string()),
    ];
    producer.send(&topic, Some(b"good-0"), create(Some("good-0"), 0).to_string().as_bytes(), &[]).await.unwrap();
    for (i, (_, line)) in bad.iter().enumerate() {
        producer.send(&topic, Some(b"good-0"), line.as_bytes(), &[]).await.unwrap();
        let inc = json!({"op":"update","patches":[{"op":"increment","path":"task/good-0/votes","value":1}],"application_id":APP,"timestamp":10 + i});
        producer.send(&topic, Some(b"good-0"), inc.to_string().as_bytes(), &[]).await.unwrap();
    }
    let expected: Expected =
        [("good-0".to_string(), (bad.len() as i64, vec![], "t".to_string(), 1 + bad.len() as u64))].into();
    assert_state(&stack.store().await, &expected, Duration::from_secs(120)).await;

    let started = Instant::now();
    let envelopes: Vec<Envelope> = loop {
        let dead = common::read_all(&stack.cfg, &stack.cfg.topic("dead_letter"), 1);
        if dead.len() >= bad.len() || started.elapsed() > Duration::from_secs(60) {
            break dead.iter().map(|(_, p)| serde_json::from_slice(p).unwrap()).collect();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(envelopes.len(), bad.len(), "{envelopes:#?}");
    let reasons: Vec<String> = envelopes.iter().map(|e| format!("{} <- {}", e.reason, e.worker)).collect();
    for needle in ["unknown application `nope`", "unknown model `ghost`", "update of missing task `missing`", "created"]
    {
        assert!(reasons.iter().any(|r| r.contains(needle)), "no reason with {needle:?} in {reasons:#?}");
    }
    assert_eq!(envelopes.iter().filter(|e| e.worker == "aggregation-0").count(), 5, "{reasons:#?}");
    assert_eq!(
        envelopes.iter().filter(|e| e.worker == "write-0").count(),
        1,
        "only the update of a missing object needs the store to be refused: {reasons:#?}"
    );
    common::drop_keyspace(&stack.cfg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_parent_deletes_its_children_with_events() {
    let stack = Stack::new("cascade").await;
    let _agg = stack.start("aggregation", 0);
    let _w = stack.start("write", 0);
    let project = json!({"op":"create","object":{"id":"p1","type":"project","context_id":"c1","application_id":APP},
        "application_id":APP,"timestamp":1_700_000_000_000_000u64});
    let mut lines = vec![project];
    for i in 0..3 {
        lines.push(
            json!({"op":"create","object":{"id":format!("task-{i}"),"type":"task","context_id":"c1","project_id":"p1",
            "application_id":APP},"application_id":APP,"timestamp":1_700_000_000_000_001u64 + i}),
        );
    }
    lines.push(json!({"op":"create","object":{"id":"other","type":"task","context_id":"c1","project_id":"p2","application_id":APP},
        "application_id":APP,"timestamp":1_700_000_000_000_009u64}));
    stack.publish(lines).await;
    let store = stack.store().await;
    let ids: Vec<(String, String)> = (0..3).map(|i| ("task".to_string(), format!("task-{i}"))).collect();
    let started = Instant::now();
    while store.get_objects(APP, &ids).await.unwrap().len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(60), "children not stored");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stack
        .publish(vec![json!({"op":"delete","object":{"model":"project","id":"p1"},"application_id":APP,"timestamp":1_700_000_000_000_100u64})])
        .await;
    let started = Instant::now();
    loop {
        let rows = store.get_objects(APP, &ids).await.unwrap();
        if rows.values().all(|r| r.deleted) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "children not deleted: {rows:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let other = store.get_objects(APP, &[("task".to_string(), "other".to_string())]).await.unwrap();
    assert!(!other.values().next().unwrap().deleted, "a child of another parent stays");
    let events: Vec<ChangeEvent> = common::read_all(&stack.cfg, &stack.cfg.topic("transport_manager"), 4)
        .iter()
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect();
    let deletes: Vec<&str> =
        events.iter().filter(|e| e.op == nexxus_worker::model::ChangeOp::Delete).map(|e| e.id.as_str()).collect();
    assert_eq!(deletes.len(), 4, "{deletes:?}");
    for id in ["p1", "task-0", "task-1", "task-2"] {
        assert!(deletes.contains(&id), "{id} delete event missing: {deletes:?}");
    }
    common::drop_keyspace(&stack.cfg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_put_while_running_is_picked_up_without_restart() {
    let stack = Stack::new("appput").await;
    let _agg = stack.start("aggregation", 0);
    let _w = stack.start("write", 0);
    let create = |id: &str, t: u64| json!({"op":"create","object":{"id":id,"type":"note","application_id":"late"},"application_id":"late","timestamp":t});
    stack.publish(vec![create("n1", 1)]).await;
    let started = Instant::now();
    while common::read_all(&stack.cfg, &stack.cfg.topic("dead_letter"), 1).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "unknown application never dead-lettered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    common::app_put(&stack.env, &json!({"id": "late", "schema": {"note": {}}}));
    // Workers follow `system` asynchronously; retry the create under new ids until one lands.
    let store = stack.store().await;
    let started = Instant::now();
    for n in 2.. {
        let id = format!("n{n}");
        stack.publish(vec![create(&id, n)]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !store.get_objects("late", &[("note".to_string(), id)]).await.unwrap().is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the new application was never picked up");
    }
    let stored = store.get_application("late").await.unwrap();
    assert_eq!(stored.map(|a| a.id), Some("late".to_string()), "app put also stores the application");
    common::drop_keyspace(&stack.cfg).await;
}
