//! Track and transport manager end to end with real processes, Kafka, Cassandra and Redis (one
//! node and a cluster): every Telepat channel mask routes to exactly its devices, filters give
//! enter / stay / leave, applications with identical channel names never mix, broadcasts reach
//! one application only.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexxus_worker::config::Config;
use nexxus_worker::model::TransportMessage;
use nexxus_worker::registry::Registry;
use serde_json::{json, Value};

struct Stack {
    cfg: Config,
    env: HashMap<String, String>,
    /// Two application ids unique to this test (Redis keys outlive a run and are shared).
    app1: String,
    app2: String,
}

impl Stack {
    async fn new(name: &str, redis_url: &str) -> Stack {
        let prefix = common::unique_prefix(name);
        let keyspace: String = format!("k{}", prefix.replace(['-', '.'], "_")).chars().take(48).collect();
        let mut env = common::env_for(&prefix);
        env.insert("TP_SCYLLA_KEYSPACE".into(), keyspace);
        env.insert("TP_HTTP_PORT".into(), "0".into());
        env.insert("TP_REDIS_URL".into(), redis_url.into());
        let cfg = Config::load(&Default::default(), &env).unwrap();
        common::create_topics(
            &cfg,
            &[
                ("aggregation", 2),
                ("write", 2),
                ("transport_manager", 2),
                ("track", 1),
                ("ios_transport", 1),
                ("android_transport", 1),
                ("sockets_transport", 1),
                ("sockets_transport-0", 1),
                ("dead_letter", 1),
                ("system", 1),
            ],
        )
        .await;
        let unique = prefix.replace(['-', '.'], "");
        let stack = Stack { cfg, env, app1: format!("{unique}a1"), app2: format!("{unique}a2") };
        for app in [stack.app1.as_str(), stack.app2.as_str()] {
            let schema = json!({"task": {"belongsTo": [{"parentModel": "project"}]}, "project": {}});
            common::app_put(&stack.env, &json!({"id": app, "schema": schema}));
        }
        stack
    }

    fn start(&self, role: &str) -> common::Reaper {
        common::Reaper(
            Command::new(common::BIN)
                .args(["-t", role, "-i", "0"])
                .env_clear()
                .envs(&self.env)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    async fn send(&self, topic: &str, key: &str, lines: &[Value]) {
        let producer = common::producer(&self.cfg);
        for l in lines {
            producer.send(&self.cfg.topic(topic), Some(key.as_bytes()), l.to_string().as_bytes(), &[]).await.unwrap();
        }
    }
}

fn register(app: &str, device: &str) -> Value {
    json!({"op":"device_register","application_id":app,"device":{"id":device,"info":{},
        "persistent":{"type":"ios","token":format!("tok-{device}")}}})
}

fn subscribe(app: &str, device: &str, channel: Value, filters: Option<Value>) -> Value {
    let mut m = json!({"op":"subscribe","application_id":app,"device_id":device,"channel":channel});
    if let Some(f) = filters {
        m["filters"] = f;
    }
    m
}

fn object(app: &str, id: &str, user: &str, project: &str, status: &str, ctx: &str) -> Value {
    json!({"id":id,"type":"task","context_id":ctx,"user_id":user,"project_id":project,"status":status,
        "application_id":app,"title":"x"})
}

/// (device, kind, object id, version) of every delivery on `ios_transport`.
type Seen = BTreeSet<(String, String, String, u64)>;

fn deliveries(stack: &Stack) -> Seen {
    let mut seen = Seen::new();
    for (_, payload) in common::read_all(&stack.cfg, &stack.cfg.topic("ios_transport"), 1) {
        let m: TransportMessage = serde_json::from_slice(&payload).unwrap();
        for d in &m.devices {
            assert_eq!(d.token, format!("tok-{}", d.device_id), "tokens travel with their device");
            for (kind, deltas) in
                [("new", &m.message.new), ("updated", &m.message.updated), ("deleted", &m.message.deleted)]
            {
                for delta in deltas.iter() {
                    let id =
                        delta.object.as_ref().and_then(|o| o.get("id")).and_then(Value::as_str).map(str::to_string);
                    let id = id.or_else(|| delta.patch.as_ref().map(|p| p.path.id.clone())).unwrap_or_default();
                    assert_eq!(delta.application_id, m.application_id);
                    seen.insert((d.device_id.clone(), kind.to_string(), id, delta.version));
                }
            }
        }
    }
    seen
}

async fn wait_for(stack: &Stack, expected: &Seen, what: &str) -> Seen {
    let started = Instant::now();
    loop {
        let seen = deliveries(stack);
        if expected.is_subset(&seen) {
            // Give stragglers (deliveries that should not exist) a moment to show up.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return deliveries(stack);
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{what}: missing {:?}\nseen {seen:#?}",
            expected.difference(&seen).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn row(device: &str, kind: &str, id: &str, version: u64) -> (String, String, String, u64) {
    (device.into(), kind.into(), id.into(), version)
}

async fn scenario(name: &str, redis_url: &str) {
    let stack = Stack::new(name, redis_url).await;
    let (a1, a2) = (stack.app1.as_str(), stack.app2.as_str());
    let _procs = ["aggregation", "write", "track", "transport_manager"].map(|r| stack.start(r));
    let filter = json!({"and": [{"is": {"status": "open"}}]});
    let subs = [
        ("d_ctx", json!({"model":"task","context":"c1"}), None),
        ("d_ctx_user", json!({"model":"task","context":"c1","user":"u1"}), None),
        ("d_parent", json!({"model":"task","parent":{"model":"project","id":"p1"}}), None),
        ("d_user_parent", json!({"model":"task","user":"u1","parent":{"model":"project","id":"p1"}}), None),
        ("d_id", json!({"model":"task","id":"t1"}), None),
        ("d_other_ctx", json!({"model":"task","context":"c2"}), None),
        ("d_filter", json!({"model":"task","context":"c1"}), Some(filter.clone())),
    ];
    let mut track = Vec::new();
    for (device, channel, filters) in &subs {
        track.push(register(a1, device));
        track.push(subscribe(a1, device, channel.clone(), filters.clone()));
    }
    track.push(register(a2, "d_app2"));
    track.push(subscribe(a2, "d_app2", json!({"model":"task","context":"c1"}), None));
    stack.send("track", "devices", &track).await;

    let registry = Registry::connect(redis_url).await.unwrap();
    let started = Instant::now();
    while registry.device_subscriptions(a2, "d_app2").await.unwrap().is_empty()
        || registry.device_subscriptions(a1, "d_filter").await.unwrap().is_empty()
    {
        assert!(started.elapsed() < Duration::from_secs(60), "track commands not applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let ts = 1_700_000_000_000_000u64;
    let create =
        |app: &str, o: Value, n: u64| json!({"op":"create","object":o,"application_id":app,"timestamp":ts + n});
    stack.send("aggregation", "t1", &[create(a1, object(a1, "t1", "u1", "p1", "open", "c1"), 1)]).await;
    stack.send("aggregation", "t2", &[create(a1, object(a1, "t2", "u2", "p2", "closed", "c1"), 2)]).await;
    stack.send("aggregation", "t9", &[create(a2, object(a2, "t9", "u1", "p1", "open", "c1"), 3)]).await;
    let creates: Seen = [
        row("d_ctx", "new", "t1", 1),
        row("d_ctx", "new", "t2", 1),
        row("d_ctx_user", "new", "t1", 1),
        row("d_parent", "new", "t1", 1),
        row("d_user_parent", "new", "t1", 1),
        row("d_id", "new", "t1", 1),
        row("d_filter", "new", "t1", 1),
        row("d_app2", "new", "t9", 1),
    ]
    .into();
    let seen = wait_for(&stack, &creates, "creates").await;
    assert_eq!(seen, creates, "each mask routes to exactly its devices; apps never mix");

    // t2 enters the filter, t1 leaves it, then t2 stays in it.
    let patch = |id: &str, field: &str, value: &str, n: u64| {
        json!({"op":"update","patches":[{"op":"replace","path":format!("task/{id}/{field}"),"value":value}],
            "application_id":a1,"timestamp":ts + n})
    };
    stack.send("aggregation", "t2", &[patch("t2", "status", "open", 10)]).await;
    stack.send("aggregation", "t1", &[patch("t1", "status", "closed", 11)]).await;
    stack.send("aggregation", "t2", &[patch("t2", "title", "y", 12)]).await;
    let mut expected = creates.clone();
    expected.extend([
        row("d_filter", "new", "t2", 2),
        row("d_ctx", "updated", "t2", 2),
        row("d_filter", "deleted", "t1", 2),
        row("d_ctx", "updated", "t1", 2),
        row("d_ctx_user", "updated", "t1", 2),
        row("d_parent", "updated", "t1", 2),
        row("d_user_parent", "updated", "t1", 2),
        row("d_id", "updated", "t1", 2),
        row("d_filter", "updated", "t2", 3),
        row("d_ctx", "updated", "t2", 3),
    ]);
    let seen = wait_for(&stack, &expected, "filter transitions").await;
    assert_eq!(seen, expected);

    // A broadcast reaches every device of app1 (each once) and none of app2.
    let broadcast = json!({"application_id":a1,"op":"update","model":"task","id":"t1","version":3,"timestamp":ts + 20,
        "channels":[format!("blg:{a1}:context:c1:task")],"broadcast":true,
        "before":object(a1,"t1","u1","p1","closed","c1"),"after":object(a1,"t1","u1","p1","closed","c1"),
        "patches":[{"op":"replace","path":"task/t1/title","value":"x"}]});
    stack.send("transport_manager", "t1", &[broadcast]).await;
    let mut expected = expected.clone();
    for (device, _, _) in &subs {
        expected.insert(row(device, "updated", "t1", 3));
    }
    let seen = wait_for(&stack, &expected, "broadcast").await;
    assert_eq!(seen, expected);
    let sockets = common::read_all(&stack.cfg, &stack.cfg.topic("sockets_transport"), 1);
    assert_eq!(sockets.len(), 1, "one broadcast message for every socket worker");
    let m: TransportMessage = serde_json::from_slice(&sockets[0].1).unwrap();
    assert!(m.broadcast && m.application_id == a1);
    common::drop_keyspace(&stack.cfg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn masks_filters_apps_and_broadcasts_on_single_redis() {
    let url = common::stack_env()["TP_REDIS_URL"].clone();
    scenario("route1", &url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn masks_filters_apps_and_broadcasts_on_redis_cluster() {
    let url = common::stack_env()["NEXXUS_REDIS_CLUSTER_URL"].clone();
    scenario("routec", &url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn track_moves_entries_on_token_change_and_dead_letters_invalid_commands() {
    let url = common::stack_env()["TP_REDIS_URL"].clone();
    let stack = Stack::new("track", &url).await;
    let (a1, _) = (stack.app1.as_str(), stack.app2.as_str());
    let _track = stack.start("track");
    let channel = json!({"model":"task","context":"c1"});
    stack.send("track", "d1", &[register(a1, "d1"), subscribe(a1, "d1", channel.clone(), None)]).await;
    let registry = Registry::connect(&url).await.unwrap();
    let key = format!("blg:{a1}:context:c1:task");
    let members = |registry: Registry| {
        let key = key.clone();
        async move {
            let routes = registry.route(&[nexxus_worker::model::ChannelKey::from_stored(key.clone())]).await.unwrap();
            routes.members.get(&key).cloned().unwrap_or_default()
        }
    };
    let started = Instant::now();
    while members(registry.clone()).await != vec![format!("ios_transport|d1|tok-d1|{a1}")] {
        assert!(started.elapsed() < Duration::from_secs(60), "subscription never applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The same device registers again with a new token: its entries move.
    let mut again = register(a1, "d1");
    again["device"]["persistent"]["token"] = json!("tok-new");
    stack.send("track", "d1", &[again]).await;
    let started = Instant::now();
    while members(registry.clone()).await != vec![format!("ios_transport|d1|tok-new|{a1}")] {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "token change not applied: {:?}",
            members(registry.clone()).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bad = [
        json!({"op":"teleport","application_id":a1,"device_id":"d1"}),
        subscribe(a1, "ghost", channel.clone(), None),
        register("nope", "d9"),
        subscribe(a1, "d1", json!({"model":"task","id":"t1"}), Some(json!({"and":[{"is":{"a":1}}]}))),
    ];
    stack.send("track", "d1", &bad).await;
    stack.send("track", "d1", &[json!({"op":"device_remove","application_id":a1,"device_id":"d1"})]).await;
    let started = Instant::now();
    while !members(registry.clone()).await.is_empty() || registry.get_device(a1, "d1").await.unwrap().is_some() {
        assert!(started.elapsed() < Duration::from_secs(60), "device_remove not applied after the bad commands");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead: Vec<nexxus_worker::queue::dead_letter::Envelope> =
        common::read_all(&stack.cfg, &stack.cfg.topic("dead_letter"), 1)
            .iter()
            .map(|(_, p)| serde_json::from_slice(p).unwrap())
            .collect();
    let reasons: Vec<&str> = dead.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(dead.len(), 4, "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("teleport")), "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("unknown device `ghost`")), "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("unknown application `nope`")), "{reasons:#?}");
    assert!(dead.iter().all(|e| e.worker == "track-0"));
    common::drop_keyspace(&stack.cfg).await;
}
