//! Poison on the `track` topic (issue 14 items 1 and 5): the track role over real Kafka and
//! Redis, then `-t all` through `POST /track`. After each attack the role is alive (a later
//! legitimate subscribe is applied) and, over Kafka, every bad record is in `dead_letter` with
//! its reason.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stack::TestStack;
use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::registry::Registry;
use serde_json::{json, Value};

const DEVICE_LIMIT: usize = 5;
const FILTER_LIMIT: usize = 3;

fn register(app: &str, device: &str, push: bool) -> Value {
    let mut d = json!({"op":"device_register","application_id":app,"device":{"id":device,"info":{}}});
    if push {
        d["device"]["persistent"] = json!({"type":"ios","token":format!("tok-{device}")});
    }
    d
}

fn subscribe(app: &str, device: &str, channel: Value) -> Value {
    json!({"op":"subscribe","application_id":app,"device_id":device,"channel":channel})
}

fn context(ctx: &str) -> Value {
    json!({"model":"task","context":ctx})
}

/// Waits until `device` holds `want` subscriptions: the track partition got that far, so the
/// role is alive and has handled everything sent before.
async fn applied(registry: &Registry, app: &str, device: &str, want: usize, what: &str) {
    let started = Instant::now();
    loop {
        let n = registry.device_subscriptions(app, device).await.unwrap().len();
        if n == want {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{what}: {device} holds {n}, not {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dead_letters(stack: &TestStack) -> Vec<Envelope> {
    common::read_all(&stack.cfg, &stack.cfg.topic("dead_letter"), 1)
        .iter()
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_on_track_is_dead_lettered_and_the_role_lives() {
    let url = common::stack_env()["TP_REDIS_URL"].clone();
    let (device_limit, filter_limit) = (DEVICE_LIMIT.to_string(), FILTER_LIMIT.to_string());
    let limits = [
        ("TP_REDIS_URL", url.as_str()),
        ("TP_MAX_DEVICE_SUBSCRIPTIONS", device_limit.as_str()),
        ("TP_MAX_CHANNEL_FILTERS", filter_limit.as_str()),
    ];
    let stack = TestStack::new("abtrack", true, &limits, &[("track", 1), ("dead_letter", 1), ("system", 1)]).await;
    let app = format!("{}a", stack.unique);
    let schema = json!({"task": {"belongsTo": [{"parentModel": "project"}]}, "project": {}});
    common::app_put(&stack.env, &json!({"id": app, "schema": schema}));
    let mut track = stack.start("track", 0, &[]);
    let registry = Registry::connect(&url).await.unwrap();
    let app = app.as_str();
    let mut poison = 0;

    // 1. The subscribe of issue 14: d1 (no push token) onto d2's device record key.
    let d2 = register(app, "d2", true);
    stack.send("track", "k", &[d2, register(app, "d1", false)]).await;
    stack.send("track", "k", &[subscribe(app, "d1", json!({"model":"devices","id":"d2"}))]).await;
    let parent_device = json!({"model":"subscriptions","parent":{"model":"device","id":"d2"}});
    stack.send("track", "k", &[subscribe(app, "d1", parent_device)]).await;
    poison += 2;
    stack.send("track", "k", &[subscribe(app, "d1", context("c0"))]).await;
    applied(&registry, app, "d1", 1, "after the devices-channel subscribe").await;
    assert!(registry.get_device(app, "d2").await.unwrap().is_some(), "d2's record is intact");

    // 2. Models the schema lacks, parents not in belongsTo, built-ins with parts they lack.
    let unknown = [
        json!({"model":"nosuch","context":"c1"}),
        json!({"model":"task","parent":{"model":"user","id":"u1"}}),
        json!({"model":"project","parent":{"model":"task","id":"t1"}}),
        json!({"model":"user","context":"c1"}),
    ];
    let lines: Vec<Value> = unknown.iter().map(|c| subscribe(app, "d1", c.clone())).collect();
    stack.send("track", "k", &lines).await;
    poison += lines.len();

    // 3. Garbage: not JSON, not UTF-8, not an object, nested past any parser's depth, and a
    // 900 KB device id (its dead letter keeps a truncated payload, so it can still be produced).
    let producer = common::producer(&stack.cfg);
    let topic = stack.cfg.topic("track");
    let huge = subscribe(app, &"x".repeat(900_000), context("c1")).to_string();
    let deep = "[".repeat(200_000);
    for bytes in [&b"{not json"[..], b"\xff\xfe\x00", b"[1,2,3]", deep.as_bytes(), huge.as_bytes()] {
        producer.send(&topic, Some(b"k"), bytes, &[]).await.unwrap();
        poison += 1;
    }
    stack.send("track", "k", &[subscribe(app, "d1", context("c1"))]).await;
    applied(&registry, app, "d1", 2, "after unknown models and garbage").await;

    // 4. Ten times the device limit, and ten times the filter limit on one channel.
    let lines: Vec<Value> = (0..10 * DEVICE_LIMIT).map(|i| subscribe(app, "d1", context(&format!("m{i}")))).collect();
    stack.send("track", "k", &lines).await;
    poison += lines.len() - (DEVICE_LIMIT - 2);
    let mut lines = Vec::new();
    for i in 0..10 * FILTER_LIMIT {
        let device = format!("f{i}");
        let mut sub = subscribe(app, &device, context("cf"));
        sub["filters"] = json!({"and":[{"is":{"n":i}}]});
        lines.extend([register(app, &device, true), sub]);
    }
    stack.send("track", "k", &lines).await;
    poison += 10 * FILTER_LIMIT - FILTER_LIMIT;
    stack.send("track", "k", &[register(app, "probe", true), subscribe(app, "probe", context("c1"))]).await;
    applied(&registry, app, "probe", 1, "after the floods").await;
    applied(&registry, app, "d1", DEVICE_LIMIT, "d1 is at its limit").await;
    let mut variants = 0;
    for i in 0..10 * FILTER_LIMIT {
        variants += registry.device_subscriptions(app, &format!("f{i}")).await.unwrap().len();
    }
    assert_eq!(variants, FILTER_LIMIT);

    assert!(track.0.try_wait().unwrap().is_none(), "the track role is still running");
    let started = Instant::now();
    let dead = loop {
        let dead = dead_letters(&stack);
        if dead.len() >= poison || started.elapsed() > Duration::from_secs(30) {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let reasons: Vec<&str> = dead.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(dead.len(), poison, "{reasons:#?}");
    assert!(dead.iter().all(|e| e.worker == "track-0" && !e.reason.is_empty()));
    let count = |needle: &str| reasons.iter().filter(|r| r.contains(needle)).count();
    assert_eq!(count("reserved"), 2, "{reasons:#?}");
    assert_eq!(count("nosuch"), 1, "{reasons:#?}");
    assert_eq!(count("belongsTo"), 2, "{reasons:#?}");
    assert_eq!(count("TP_MAX_DEVICE_SUBSCRIPTIONS"), 10 * DEVICE_LIMIT - (DEVICE_LIMIT - 2), "{reasons:#?}");
    assert_eq!(count("TP_MAX_CHANNEL_FILTERS"), 9 * FILTER_LIMIT, "{reasons:#?}");
    stack.finish().await;
}

/// `-t all` with the Redis registry, driven through `POST /track`: the subscribe that made it
/// exit 70 is refused with a reason, poison the ingress lets through is the track role's to
/// reject, and the process keeps applying legitimate subscribes.
#[tokio::test(flavor = "multi_thread")]
async fn poison_through_post_track_does_not_stop_all() {
    let url = common::stack_env()["TP_REDIS_URL"].clone();
    let dir = tempfile::tempdir().unwrap();
    let http = common::free_port();
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let child = Command::new(common::BIN)
        .args(["-t", "all"])
        .env_clear()
        .env("TP_SQLITE_PATH", dir.path().join("nexxus.db"))
        .env("TP_HTTP_HOST", "127.0.0.1")
        .env("TP_HTTP_PORT", http.to_string())
        .env("TP_SCKT_HOST", "127.0.0.1")
        .env("TP_SCKT_PORT", common::free_port().to_string())
        .env("TP_REDIS_URL", &url)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut process = common::Reaper(child);
    let json_type = [("Content-Type", "application/json")];
    let send = |method: &str, path: &str, body: &Value| {
        common::http_request(http, method, path, &json_type, &body.to_string()).map(|(code, _)| code)
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let app = format!("abt{}p{}", nanos % 1_000_000_000_000, std::process::id());
    let schema = json!({"task": {"belongsTo": [{"parentModel": "project"}]}, "project": {}});
    let started = Instant::now();
    while send("PUT", &format!("/apps/{app}"), &json!({"id": app, "schema": schema})) != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(30), "-t all not up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = app.as_str();
    assert_eq!(send("POST", "/track", &json!([register(app, "d1", false), register(app, "d2", true)])), Some(202));
    let poison = subscribe(app, "d1", json!({"model":"devices","id":"d2"}));
    assert_eq!(send("POST", "/track", &poison), Some(400), "refused with a reason at the door");
    // The track role's own rule, applied at the door too.
    let unknown = send("POST", "/track", &subscribe(app, "d1", json!({"model":"nosuch","context":"c1"})));
    assert_eq!(unknown, Some(400));
    let flood: Vec<Value> = (0..30).map(|i| subscribe(app, "d1", context(&format!("m{i}")))).collect();
    assert_eq!(send("POST", "/track", &json!(flood)), Some(202));

    let registry = Registry::connect(&url).await.unwrap();
    applied(&registry, app, "d1", 30, "subscribes after the poison").await;
    assert!(process.0.try_wait().unwrap().is_none(), "-t all is still running");
    let subs = registry.device_subscriptions(app, "d1").await.unwrap();
    assert!(subs.iter().all(|k| k.starts_with(&format!("blg:{app}:context:m"))), "{subs:?}");
    assert!(registry.get_device(app, "d2").await.unwrap().is_some());
    let _ = registry.delete_device(app, "d1").await;
    let _ = registry.delete_device(app, "d2").await;
}
