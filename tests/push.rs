//! The push transports against local stand-ins for APNs, FCM and Google's OAuth endpoint
//! (`common::push_fakes`, which verify signatures, topics, bearer tokens and payloads), with
//! real Kafka and Redis: every outcome maps to the device sent to, invalid tokens leave the
//! registry, throttling / 5xx / stream resets are retried until delivered, two applications
//! with different credentials share one process; an upstream replay is pushed once; end to end
//! from `aggregation`; and no
//! application record, registered or planted on `system`, makes the workers connect anywhere
//! the operator did not configure (`TP_APNS_URL`, `TP_FCM_URL`, `TP_PUSH_TOKEN_URLS`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::push_fakes::{self, ApnsApp, FakeApns, FakeFcm, FcmAccount};
use common::stack::{pipeline_topics, TestStack};
use nexxus_worker::model::Device;
use nexxus_worker::registry::Registry;
use serde_json::{json, Value};

struct Stack {
    base: TestStack,
    apps: Vec<String>,
    apns: FakeApns,
    fcm: FakeFcm,
}

impl std::ops::Deref for Stack {
    type Target = TestStack;
    fn deref(&self) -> &TestStack {
        &self.base
    }
}

impl Stack {
    /// Two applications registered with `app put`; the workers reach the stand-ins through the
    /// operator's settings, since application records cannot name endpoints.
    async fn new(name: &str, with_store: bool) -> Stack {
        let mut apps_keys = Vec::new();
        let (mut apns_apps, mut accounts) = (Vec::new(), Vec::new());
        for n in 0..2 {
            let (ec, ec_public) = push_fakes::ec_p8_key();
            let (rsa, rsa_public) = push_fakes::rsa_key();
            let (team, kid, topic) = (format!("TEAM{n}"), format!("KID{n}"), format!("com.example.app{n}"));
            apns_apps.push(ApnsApp {
                team_id: team.clone(),
                key_id: kid.clone(),
                public_key: ec_public,
                topic: topic.clone(),
            });
            let (project, email) = (format!("project-{n}"), format!("sa{n}@project-{n}.iam.gserviceaccount.com"));
            accounts.push(FcmAccount {
                project_id: project.clone(),
                client_email: email.clone(),
                public_key: rsa_public,
            });
            apps_keys.push((ec, kid, team, topic, rsa, project, email));
        }
        let (apns, fcm) = (FakeApns::start(apns_apps).await, FakeFcm::start(accounts).await);
        let endpoints =
            [("TP_APNS_URL", apns.url()), ("TP_FCM_URL", fcm.url()), ("TP_PUSH_TOKEN_URLS", fcm.token_uri())];
        let extra: Vec<(&str, &str)> = endpoints.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let base = TestStack::new(name, with_store, &extra, &pipeline_topics(1)).await;
        let apps: Vec<String> = (1..=2).map(|n| format!("{}p{n}", base.unique)).collect();
        for (app, (ec, kid, team, topic, rsa, project, email)) in apps.iter().zip(apps_keys) {
            let doc = json!({"id": app,
                "schema": {"task": {"ios_push_field": "title"}},
                "apn": {"key": ec, "key_id": kid, "team_id": team, "topic": topic},
                "fcm": {"service_account": {"type": "service_account", "project_id": project, "client_email": email,
                    "private_key": rsa, "token_uri": fcm.token_uri()}}});
            common::app_put(&base.env, &doc);
        }
        Stack { base, apps, apns, fcm }
    }
}

fn device(app: &str, id: &str, platform: &str, token: &str) -> Device {
    serde_json::from_value(json!({"id": id, "application_id": app, "info": {},
        "persistent": {"type": platform, "token": token, "active": true}}))
    .unwrap()
}

/// A transport message with one `new` delta of a task titled `title`, for `devices`
/// (device id, token).
fn message(app: &str, id: &str, title: &str, devices: &[(String, String)]) -> Value {
    message_at(app, id, 1, title, devices)
}

/// [`message`] at `version`.
fn message_at(app: &str, id: &str, version: u64, title: &str, devices: &[(String, String)]) -> Value {
    let ts = 1_700_000_000_000_000u64;
    let object = json!({"id": id, "type": "task", "title": title, "context_id": "c1"});
    let delta = json!({"op":"create","object":object,"subscriptions":[format!("blg:{app}:context:c1:task")],
        "application_id":app,"timestamp":ts,"version":version});
    json!({"application_id":app,"object_id":id,"version":version,"timestamp":ts,
        "devices": devices.iter().map(|(d, t)| json!({"device_id": d, "token": t})).collect::<Vec<_>>(),
        "message":{"new":[delta],"updated":[],"deleted":[]}})
}

async fn eventually<F: FnMut() -> bool>(what: &str, check: F) {
    common::wait_until(Duration::from_secs(90), what, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_outcome_maps_to_its_device_across_two_applications() {
    let stack = Stack::new("push-outcomes", false).await;
    let registry = Registry::connect(&stack.cfg.redis_url).await.unwrap();
    let kinds = ["ok", "bad", "gone", "busy", "flaky", "reset", "mismatch"];
    let mut sent = BTreeMap::new();
    for app in &stack.apps {
        for (platform, topic) in [("ios", "ios_transport"), ("android", "android_transport")] {
            let mut devices = Vec::new();
            for kind in kinds {
                let (id, token) = (format!("{kind}-{platform}"), format!("{kind}-{app}-{platform}"));
                registry.put_device(&device(app, &id, platform, &token)).await.unwrap();
                devices.push((id, token));
            }
            sent.insert((app.clone(), topic), devices.clone());
            stack.send(topic, "o1", &[message(app, "o1", "hello", &devices)]).await;
        }
    }
    let _ios = stack.start("ios_transport", 0, &[]);
    let _android = stack.start("android_transport", 0, &[]);

    // Delivered: ok, and the retried busy (429 + Retry-After), flaky (503) and reset (stream
    // reset) ones, each exactly once per push; nothing for the invalid ones.
    let retried = ["ok", "busy", "flaky", "reset"];
    let apns_expected: BTreeSet<(String, bool)> = stack
        .apps
        .iter()
        .flat_map(|app| retried.iter().flat_map(move |k| [false, true].map(|alert| (format!("{k}-{app}-ios"), alert))))
        .chain(stack.apps.iter().map(|app| (format!("mismatch-{app}-ios"), false)))
        .chain(stack.apps.iter().map(|app| (format!("mismatch-{app}-ios"), true)))
        .collect();
    eventually("APNs deliveries", || stack.apns.delivered().len() >= apns_expected.len()).await;
    let fcm_expected: BTreeSet<String> =
        stack.apps.iter().flat_map(|app| retried.map(|k| format!("{k}-{app}-android"))).collect();
    eventually("FCM deliveries", || stack.fcm.delivered().len() >= fcm_expected.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let apns = stack.apns.delivered();
    let got: BTreeSet<(String, bool)> = apns
        .iter()
        .map(|r| (r.token.clone(), r.headers.get("apns-push-type").map(String::as_str) == Some("alert")))
        .collect();
    assert_eq!(got, apns_expected);
    assert_eq!(apns.len(), apns_expected.len(), "no push delivered twice");
    for r in &apns {
        let app = stack.apps.iter().find(|a| r.token.contains(a.as_str())).unwrap();
        let n = stack.apps.iter().position(|a| a == app).unwrap();
        assert_eq!(r.team_id, format!("TEAM{n}"), "each app signs with its own key");
        assert_eq!(r.headers["apns-topic"], format!("com.example.app{n}"));
        if r.headers["apns-push-type"] == "alert" {
            assert_eq!(r.body["aps"]["alert"], "hello");
            assert_eq!(r.headers["apns-priority"], "10");
        } else {
            assert_eq!(r.body["aps"]["content-available"], 1);
            assert_eq!(r.body["data"]["new"][0]["object"]["id"], "o1");
            assert_eq!(r.headers["apns-priority"], "5");
            assert!(!r.headers.contains_key("apns-collapse-id"), "deltas never collapse");
        }
    }
    let fcm = stack.fcm.delivered();
    assert_eq!(fcm.iter().map(|r| r.token.clone()).collect::<BTreeSet<_>>(), fcm_expected);
    assert_eq!(fcm.len(), fcm_expected.len());
    for r in &fcm {
        let data: Value = serde_json::from_str(&r.data["data"]).unwrap();
        assert_eq!(data["new"][0]["object"]["title"], "hello");
        let n = stack.apps.iter().position(|a| r.token.contains(a.as_str())).unwrap();
        assert_eq!(r.project, format!("project-{n}"));
    }
    for app in &stack.apps {
        for k in ["busy", "flaky", "reset"] {
            assert_eq!(stack.fcm.attempts(&format!("{k}-{app}-android")), 2, "{k}: one failure, one retry");
        }
        assert_eq!(stack.apns.attempts(&format!("busy-{app}-ios")), 3, "429 then 200 for each of two pushes");
    }

    // Invalid tokens removed with their device; the others kept. APNs has no sender mismatch:
    // its `mismatch` device is a normal one there.
    for app in &stack.apps {
        for (platform, gone) in [("ios", vec!["bad", "gone"]), ("android", vec!["bad", "gone", "mismatch"])] {
            for kind in kinds {
                let present = registry.get_device(app, &format!("{kind}-{platform}")).await.unwrap().is_some();
                assert_eq!(present, !gone.contains(&kind), "{app} {kind}-{platform}");
            }
        }
    }
    assert!(stack.fcm.token_requests() <= 4, "access tokens are cached: {}", stack.fcm.token_requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_reaches_ios_and_android_subscribers_as_exactly_the_expected_requests() {
    let stack = Stack::new("push-e2e", true).await;
    let app = stack.apps[0].clone();
    let _procs = ["aggregation", "write", "track", "transport_manager", "ios_transport", "android_transport"]
        .map(|r| stack.start(r, 0, &[]));
    let channel = json!({"model": "task", "context": "c1"});
    let mut track = Vec::new();
    for (id, platform) in [("phone", "ios"), ("tablet", "android"), ("elsewhere", "ios")] {
        track.push(json!({"op":"device_register","application_id":app,
            "device":{"id":id,"persistent":{"type":platform,"token":format!("ok-{id}")}}}));
    }
    for id in ["phone", "tablet"] {
        track.push(json!({"op":"subscribe","application_id":app,"device_id":id,"channel":channel}));
    }
    track.push(json!({"op":"subscribe","application_id":app,"device_id":"elsewhere",
        "channel":{"model":"task","context":"c2"}}));
    stack.send("track", "devices", &track).await;
    let registry = Registry::connect(&stack.cfg.redis_url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while registry.device_subscriptions(&app, "elsewhere").await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "track commands not applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let create = json!({"op":"create","application_id":app,"timestamp":1_700_000_000_000_000u64,
        "object":{"id":"t1","type":"task","context_id":"c1","title":"Buy milk"}});
    stack.send("aggregation", "t1", &[create]).await;
    eventually("the iOS silent push and alert", || stack.apns.delivered().len() >= 2).await;
    eventually("the Android data message", || !stack.fcm.delivered().is_empty()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let apns = stack.apns.delivered();
    let kinds: BTreeSet<(String, String)> =
        apns.iter().map(|r| (r.token.clone(), r.headers["apns-push-type"].clone())).collect();
    let expected: BTreeSet<(String, String)> =
        [("ok-phone", "alert"), ("ok-phone", "background")].map(|(t, k)| (t.to_string(), k.to_string())).into();
    assert_eq!(kinds, expected);
    assert_eq!(apns.len(), 2);
    let alert = apns.iter().find(|r| r.headers["apns-push-type"] == "alert").unwrap();
    assert_eq!(alert.body["aps"]["alert"], "Buy milk");
    let fcm = stack.fcm.delivered();
    assert_eq!(fcm.len(), 1);
    assert_eq!(fcm[0].token, "ok-tablet");
    let data: Value = serde_json::from_str(&fcm[0].data["data"]).unwrap();
    assert_eq!(data["new"][0]["object"]["title"], "Buy milk");
    assert_eq!(data["new"][0]["version"], 1);
    stack.finish().await;
}

/// A listener that counts every connection made to it: an address no worker may ever reach.
struct Trap {
    url: String,
    connections: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Trap {
    async fn start() -> Trap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let accept = tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        Trap { url, connections, accept }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// `app put` of `doc`: its exit status and stderr.
fn try_app_put(env: &HashMap<String, String>, doc: &Value) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = Command::new(common::BIN).args(["app", "put"]).arg(&path).env_clear().envs(env).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn application_records_cannot_choose_where_the_workers_connect() {
    let trap = Trap::start().await;
    let stack = Stack::new("push-endpoints", false).await;
    let (ec, _) = push_fakes::ec_p8_key();
    let (rsa, _) = push_fakes::rsa_key();
    let evil = format!("{}evil", stack.unique);
    let apn = json!({"key": ec, "key_id": "K", "team_id": "T", "topic": "com.example.evil"});
    let account = |extra: Value| {
        let mut sa = json!({"project_id": "evil", "client_email": "e@evil.example", "private_key": rsa});
        sa.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        sa
    };
    let token_uri = format!("{}/token", trap.url);

    // Registration refuses every record that names a destination, with the reason, exit 65.
    let refused = [
        (json!({"id": evil, "apn": {"url": trap.url, "key": ec, "key_id": "K", "team_id": "T", "topic": "t"}}), "url"),
        (json!({"id": evil, "fcm": {"service_account": account(json!({})), "url": trap.url}}), "url"),
        (
            json!({"id": evil, "fcm": {"service_account": account(json!({"token_uri": token_uri}))}}),
            "TP_PUSH_TOKEN_URLS",
        ),
        (
            json!({"id": evil, "fcm": {"service_account": account(json!({"token_uri": "https://oauth2.googleapis.com/token"}))}}),
            "TP_PUSH_TOKEN_URLS",
        ),
        (
            json!({"id": evil, "fcm": {"service_account": account(json!({"project_id": "../../x",
            "token_uri": stack.fcm.token_uri()}))}}),
            "project_id",
        ),
    ];
    for (doc, reason) in &refused {
        let (code, stderr) = try_app_put(&stack.env, doc);
        assert_eq!(code, Some(65), "refused as bad input: {stderr}");
        assert!(stderr.contains(reason), "the reason names {reason}: {stderr}");
    }
    let announced = common::read_all(&stack.cfg, &stack.cfg.topic("system"), 1);
    assert!(!announced.iter().any(|(k, _)| k.as_deref() == Some(evil.as_bytes())), "nothing refused was announced");
    assert_eq!(trap.connections(), 0);

    // Records planted on `system` (an older binary, or written by hand) are never followed:
    // one whose token_uri is not allowed, one with an `fcm.url`, each with a queued push, then
    // a push for a registered application that must still arrive.
    let planted_token = format!("{evil}t");
    let planted_url = format!("{evil}u");
    let system = [
        (
            planted_token.clone(),
            json!({"id": planted_token, "apn": apn,
            "fcm": {"service_account": account(json!({"token_uri": token_uri}))}}),
        ),
        (
            planted_url.clone(),
            json!({"id": planted_url,
            "fcm": {"service_account": account(json!({"token_uri": stack.fcm.token_uri()})), "url": trap.url}}),
        ),
    ];
    for (key, doc) in &system {
        stack.send("system", key, std::slice::from_ref(doc)).await;
        let devices = [("d1".to_string(), format!("ok-{key}"))];
        stack.send("android_transport", "o1", &[message(key, "o1", "leak", &devices)]).await;
    }
    let legit = &stack.apps[0];
    let devices = [("d1".to_string(), format!("ok-{legit}-android"))];
    stack.send("android_transport", "o2", &[message(legit, "o2", "hello", &devices)]).await;
    let _android = stack.start("android_transport", 0, &[]);
    eventually("the registered application's push", || !stack.fcm.delivered().is_empty()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered: Vec<String> = stack.fcm.delivered().into_iter().map(|r| r.token).collect();
    assert_eq!(delivered, vec![format!("ok-{legit}-android")], "only the registered application's push");
    assert_eq!(trap.connections(), 0, "no connection to an address a record named");
}

#[path = "push/replay.rs"]
mod replay;
