//! `-t all` as a user runs it: one process, no Kafka, no CQL node, no Redis (except where a test
//! says so), driven through its HTTP ingress and watched by real WebSocket clients.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::all::*;
use common::http_get;
use common::ws::Client;
use serde_json::{json, Value};

#[tokio::test]
async fn events_reach_a_websocket_client_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("restart");
    let p = start(dir.path(), None, &[]).await;
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[], &app_doc(&app)).0, 200);

    let mut c = Client::ready(p.ws, &token(&app, "d1")).await;
    assert_eq!(c.subscribe(list_channel(), None).await["event"], "subscribed");
    let batch = json!([
        create(&app, Some("t1"), "one"),
        create(&app, Some("t2"), "two"),
        create(&app, None, "three"),
        increment(&app, "t1")
    ]);
    let (code, body) = p.post("/events", &batch);
    assert_eq!((code, &body), (202, &json!({"accepted": 4})));
    let got = deltas(&mut c, 4).await;
    let news: Vec<&str> = got.iter().filter(|d| d.0 == "new").map(|d| d.1.as_str()).collect();
    assert_eq!(news.len(), 3, "{got:?}");
    let generated = news.iter().find(|id| !["t1", "t2"].contains(id)).unwrap().to_string();
    assert!(got.contains(&("updated".into(), "t1".into(), 2, Value::Null)), "{got:?}");

    assert_eq!(p.stop(), Some(0), "graceful exit: {}", log_of(dir.path()));
    let p = start(dir.path(), None, &[]).await;
    // The application came back from the store, objects with their versions.
    let objects = snapshot(&p, &app, "d1");
    let versions: Vec<(&str, u64)> = objects.iter().map(|(id, (v, _))| (id.as_str(), *v)).collect();
    let mut want = vec![("t1", 2), ("t2", 1), (generated.as_str(), 1)];
    want.sort();
    assert_eq!(versions, want);
    assert_eq!(objects["t1"].1["votes"], 1);

    // Versions continue, and a new id-less create gets a new id (log positions never repeat).
    let mut c = Client::ready(p.ws, &token(&app, "d1")).await;
    assert_eq!(c.subscribe(list_channel(), None).await["event"], "subscribed");
    assert_eq!(p.post("/events", &json!([increment(&app, "t1"), create(&app, None, "four")])).0, 202);
    let got = deltas(&mut c, 2).await;
    assert!(got.contains(&("updated".into(), "t1".into(), 3, Value::Null)), "{got:?}");
    let fourth = got.iter().find(|d| d.0 == "new").unwrap();
    assert_ne!(fourth.1, generated, "a replayed position would have reused the id");
    assert_eq!(fourth.3, "four");
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn device_subscriptions_survive_a_restart_with_redis() {
    let redis = common::stack_env().remove("TP_REDIS_URL").expect("TP_REDIS_URL in stack.env (make up)");
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("redis");
    let env = [("TP_REDIS_URL", redis.as_str())];
    let p = start(dir.path(), None, &env).await;
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[], &app_doc(&app)).0, 200);
    // A device's first connection gives it a registry record (`ready` comes after), so the
    // subscribe below finds the device.
    let mut c = Client::ready(p.ws, &token(&app, "d9")).await;
    let track = json!({"op": "subscribe", "application_id": app, "device_id": "d9", "channel": list_channel()});
    assert_eq!(p.post("/track", &track).0, 202);
    // `track` is asynchronous: the subscription is in place once a delivery reaches the device.
    let mut n = 0;
    loop {
        n += 1;
        assert_eq!(p.post("/events", &json!(create(&app, Some(&format!("probe{n}")), "probe"))).0, 202);
        if c.silent(Duration::from_millis(500)).await.is_err() {
            break;
        }
        assert!(n < 40, "the track subscription never took effect: {}", log_of(dir.path()));
    }
    drop(c);
    assert_eq!(p.stop(), Some(0));

    let p = start(dir.path(), None, &env).await;
    // No subscribe frame: the stored subscription is restored onto the new connection.
    let mut c = Client::ready(p.ws, &token(&app, "d9")).await;
    assert_eq!(p.post("/events", &json!(create(&app, Some("after"), "after restart"))).0, 202);
    let got = deltas(&mut c, 1).await;
    assert_eq!(got[0].1, "after", "{got:?}");
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn the_ingress_checks_tokens_sizes_and_each_message() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("ingress");
    let env = [("TP_INGRESS_TOKEN", "s3cret"), ("TP_ADMIN_TOKEN", "adm1n"), ("TP_INGRESS_MAX_BYTES", "4096")];
    let p = start(dir.path(), None, &env).await;
    let auth = [("Authorization", "Bearer s3cret")];
    let admin = [("Authorization", "Bearer adm1n")];
    let path = format!("/apps/{app}");
    assert_eq!(p.request("PUT", &path, &[], &app_doc(&app)).0, 401);
    assert_eq!(p.request("PUT", &path, &[("Authorization", "Bearer nope")], &app_doc(&app)).0, 401);
    assert_eq!(p.request("PUT", &path, &auth, &app_doc(&app)).0, 401, "the event token does not open operator routes");
    assert_eq!(p.request("PUT", &format!("/apps/{app}x"), &admin, &app_doc(&app)).0, 400, "path and body ids differ");
    assert_eq!(p.request("PUT", &path, &admin, &app_doc(&app)).0, 200);
    assert_eq!(p.post("/events", &create(&app, Some("a"), "x")).0, 401);
    assert_eq!(
        p.request("POST", "/events", &admin, &create(&app, Some("a"), "x")).0,
        401,
        "nor the admin token events"
    );

    let (code, body) = p.request(
        "POST",
        "/events",
        &auth,
        &json!([create(&app, Some("a"), "x"), {"op": "create"}, create("nobody", None, "x")]),
    );
    assert_eq!(code, 400, "{body}");
    let indexes: Vec<u64> = body["rejected"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, vec![1, 2], "{body}");
    assert!(body["rejected"][1]["reason"].as_str().unwrap().contains("unknown application"), "{body}");
    let (code, _) = p.request("POST", "/events", &auth, &json!("a string"));
    assert_eq!(code, 400);
    let big = json!([create(&app, Some("big"), &"x".repeat(5000))]);
    assert_eq!(p.request("POST", "/events", &auth, &big).0, 413);
    assert_eq!(p.request("POST", "/track", &auth, &json!({"op": "device_remove", "application_id": app})).0, 400);
    assert_eq!(p.request("POST", "/events", &auth, &create(&app, Some("a"), "x")).0, 202);

    // Decodable but refused by aggregation (a model the schema lacks): a dead letter, readable
    // over HTTP since the in-process queue has no topic to read.
    let mut unknown = create(&app, Some("u1"), "x");
    unknown["object"]["type"] = json!("nosuchmodel");
    assert_eq!(p.request("POST", "/events", &auth, &unknown).0, 202);
    assert_eq!(p.request("GET", "/dead_letter", &[], &Value::Null).0, 401);
    assert_eq!(p.request("GET", "/dead_letter", &auth, &Value::Null).0, 401, "dead letters are the operator's");
    let started = std::time::Instant::now();
    let letters = loop {
        let (code, body) = p.request("GET", "/dead_letter?limit=10", &admin, &Value::Null);
        assert_eq!(code, 200, "{body}");
        if !body["dead_letters"].as_array().unwrap().is_empty() {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no dead letter: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let letter = &letters["dead_letters"][0];
    assert!(letter["reason"].as_str().unwrap().contains("nosuchmodel"), "{letter}");
    assert_eq!(letter["worker"], "aggregation-0", "{letter}");
    assert!(letter["payload"].as_str().unwrap().contains("\"u1\""), "{letter}");
    assert_eq!(letters["dropped"], 0);

    // Snapshots want a device token of the channel's application.
    let channel = format!("/objects?channel={}", url_encode(&list_channel().to_string()));
    assert_eq!(p.request("GET", &channel, &[], &Value::Null).0, 401);
    let bad = format!("Bearer {}", token("some-other-app", "d1"));
    assert_eq!(p.request("GET", &channel, &[("Authorization", &bad)], &Value::Null).0, 401);
    let ok = format!("Bearer {}", token(&app, "d1"));
    let ctx_channel =
        format!("/objects?channel={}", url_encode(&json!({"model": "task", "context": "c1"}).to_string()));
    // Every channel shape has snapshots (tests/snapshot.rs checks their content).
    let (code, body) = p.request("GET", &ctx_channel, &[("Authorization", &ok)], &Value::Null);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["channel"], format!("blg:{app}:context:c1:task"), "{body}");
    assert!(body["objects"].is_array() && body["truncated"] == false, "{body}");
    let user_channel = json!({"model": "task", "user": "someone", "parent": {"model": "list", "id": "l1"}}).to_string();
    let path = format!("/objects?channel={}", url_encode(&user_channel));
    assert_eq!(p.request("GET", &path, &[("Authorization", &ok)], &Value::Null).0, 403);

    // Without TP_DEMO_APP there are no development tokens; the page and client are served.
    assert_eq!(p.post("/demo/token", &json!({"device_id": "d1"})).0, 404);
    let (code, page) = http_get(p.http, "/").unwrap();
    assert!(code == 200 && page.contains("<html") && page.contains("/client.js"), "{code}");
    let (code, js) = http_get(p.http, "/client.js").unwrap();
    assert!(code == 200 && js.contains("export"), "{code}");
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn shutdown_drains_what_the_ingress_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("drain");
    let p = start(dir.path(), None, &[]).await;
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[], &app_doc(&app)).0, 200);
    let creates: Vec<Value> = (0..2000).map(|i| create(&app, Some(&format!("o{i}")), "x")).collect();
    // Two requests: one carries at most TP_INGRESS_MAX_MESSAGES (1,000 by default).
    for half in creates.chunks(1000) {
        assert_eq!(p.post("/events", &json!(half)).0, 202);
    }
    // Straight after the 202: every accepted create must still be written.
    assert_eq!(p.stop(), Some(0), "{}", log_of(dir.path()));
    let p = start(dir.path(), None, &[]).await;
    assert_eq!(snapshot(&p, &app, "d1").len(), 2000, "{}", log_of(dir.path()));
    assert_eq!(p.stop(), Some(0));
}

/// The demo page in two headless Chromium pages (tests/web/demo.browser.mjs): what one page
/// does, the other shows within a second; a page whose browser went offline catches up when it is
/// back; both survive a restart of the server (stopped and started again on the same ports and
/// data when the script asks). Chromium and playwright-core come from
/// `deploy/local/browser.sh` (run by `make test`); the screenshot is kept in
/// `target/test-artifacts/demo-two-pages.png`.
#[tokio::test]
async fn two_browser_pages_share_the_demo_task_list_live() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for needed in ["/usr/bin/chromium", "tests/web/node_modules/playwright-core"] {
        assert!(root.join(needed).exists(), "{needed} is missing: run deploy/local/browser.sh (make test does)");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), None, &[("TP_DEMO_APP", "demo")]).await;
    let demo: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/local/demo-app.json")).unwrap()).unwrap();
    assert_eq!(p.request("PUT", "/apps/demo", &[], &demo).0, 200);
    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("demo-two-pages.png");
    let _ = std::fs::remove_file(&shot);
    let mut node = tokio::process::Command::new("node")
        .arg(root.join("tests/web/demo.browser.mjs"))
        .arg(format!("http://127.0.0.1:{}", p.http))
        .arg(&shot)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The script asks for a server restart midway (its step 6): the same ports, the same data.
    let (mut stdin, stdout) = (node.stdin.take(), node.stdout.take().unwrap());
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut report = String::new();
    let mut p = Some(p);
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("{line}");
            report.push_str(&line);
            report.push('\n');
            if line == "RESTART-SERVER" {
                let old = p.take().unwrap();
                let ports = (old.http, old.ws);
                assert_eq!(old.stop(), Some(0), "the restart's stop");
                p = Some(start(dir.path(), Some(ports), &[("TP_DEMO_APP", "demo")]).await);
                let mut pipe = stdin.take().unwrap();
                tokio::io::AsyncWriteExt::write_all(&mut pipe, b"restarted\n").await.unwrap();
            }
        }
        node.wait_with_output().await.unwrap()
    };
    let out = tokio::time::timeout(Duration::from_secs(240), run).await.expect("browser test within 240 s");
    report.push_str(&String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "browser test failed:\n{report}\nworker log:\n{}", log_of(dir.path()));
    assert!(report.contains("PASS") && report.contains("caught up"), "{report}");
    assert!(report.contains("both pages reconnected"), "the restart step ran: {report}");
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "no screenshot at {}", shot.display());
    assert_eq!(p.unwrap().stop(), Some(0));
}

/// With Kafka, a CQL node and Redis configured, `-t all` runs every role against them instead
/// of its embedded defaults: same ingress, same results, data in Cassandra.
#[tokio::test]
async fn with_kafka_cql_and_redis_configured_every_role_uses_them() {
    let prefix = common::unique_prefix("all-stack");
    let mut env = common::env_for(&prefix);
    let keyspace = format!("t_all_{}", std::process::id());
    env.insert("TP_SCYLLA_KEYSPACE".into(), keyspace.clone());
    env.insert("TP_SHUTDOWN_GRACE_MS".into(), "20000".into());
    let applied = Command::new(common::BIN).args(["topics", "apply"]).env_clear().envs(&env).output().unwrap();
    assert!(applied.status.success(), "topics apply: {}", String::from_utf8_lossy(&applied.stderr));
    let dir = tempfile::tempdir().unwrap();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let p = start(dir.path(), None, &pairs).await;
    let log = log_of(dir.path());
    assert!(log.contains("queue=Kafka store=Scylla registry=\"redis\""), "{log}");

    let app = unique_app("stack");
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[], &app_doc(&app)).0, 200);
    // Over Kafka the roles learn of the application from `system`, a moment later.
    let mut c = ready_client(&p, &app, "d1").await;
    assert_eq!(c.subscribe(list_channel(), None).await["event"], "subscribed");
    let frame = post_until_delivered(&p, &mut c, &json!([create(&app, Some("k1"), "via kafka")])).await;
    assert_eq!(frame["event"], "message", "{frame}");
    // A broadcast published over Kafka goes to the transport manager and reaches the subscriber.
    let line = json!({"application_id": app, "object": {"type": "task", "list_id": "l1", "typing": true}});
    let input = dir.path().join("broadcast.jsonl");
    std::fs::write(&input, format!("{line}\n")).unwrap();
    let published =
        Command::new(common::BIN).args(["publish", "--broadcast"]).arg(&input).env_clear().envs(&env).output().unwrap();
    assert!(published.status.success(), "publish --broadcast: {}", String::from_utf8_lossy(&published.stderr));
    let frame = c.event().await;
    assert_eq!((&frame["event"], &frame["data"]["object"]), (&json!("broadcast"), &line["object"]), "{frame}");
    // The writer emits before it persists (ARCHITECTURE: effectively once), so the delivery can
    // come a moment before the row is readable.
    let started = std::time::Instant::now();
    let objects = loop {
        let objects = snapshot(&p, &app, "d1");
        if objects.contains_key("k1") || started.elapsed() > Duration::from_secs(10) {
            break objects;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(objects["k1"].1["title"], "via kafka", "read back from Cassandra");
    assert_eq!(p.stop(), Some(0));
    let cfg = nexxus_worker::config::Config::load(&Default::default(), &env).unwrap();
    common::drop_keyspace(&cfg).await;
}

/// The load tool against `-t all`: a short run whose every expected delivery arrives.
#[tokio::test]
async fn the_load_tool_accounts_for_every_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), None, &[]).await;
    let out = dir.path().join("result.json");
    let args = [
        "--scenario",
        "test",
        "--target",
        "http",
        "--clients",
        "60",
        "--channels",
        "12",
        "--subs",
        "2",
        "--filtered",
        "0.5",
        "--rate",
        "300",
        "--duration",
        "3",
        "--seed",
        "50",
        "--drain",
        "20",
    ];
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_nexxus-load"))
        .args(args)
        .args(["--http", &format!("http://127.0.0.1:{}", p.http), "--ws", &format!("ws://127.0.0.1:{}", p.ws)])
        .arg("--out")
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(Duration::from_secs(120), run).await.expect("load tool within 120 s").unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{report}");
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let expected = result["deliveries_expected"].as_u64().unwrap();
    assert!(expected > 500, "{result}");
    assert_eq!(result["deliveries_received"].as_u64(), Some(expected), "{result}");
    for field in ["lost", "duplicates", "unexpected"] {
        assert_eq!(result[field], 0, "{field}: {result}");
    }
    assert!(result["latency"]["samples"].as_u64().unwrap() > 0, "{result}");
    assert!(report.contains("| changes/s |"), "Markdown table printed: {report}");
    let names: Vec<&str> = result["processes"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"all-0"), "{names:?}");
    assert_eq!(p.stop(), Some(0));
}
