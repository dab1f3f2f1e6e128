//! `-t all` as a user runs it: one process, no Kafka, no CQL node, no Redis (except where a test
//! says so), driven through its HTTP ingress and watched by real WebSocket clients.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::ws::Client;
use common::{http_get, http_request, Reaper};
use nexxus_worker::transport::jwt::{self, Claims};
use serde_json::{json, Value};

const SECRET: &str = "single-process-test-secret";

struct Process {
    reaper: Reaper,
    http: u16,
    ws: u16,
}

/// Starts `-t all` on `dir/nexxus.db` with nothing but `extra` configured, and waits until its
/// ingress answers.
async fn start(dir: &Path, ports: Option<(u16, u16)>, extra: &[(&str, &str)]) -> Process {
    let (http, ws) = ports.unwrap_or_else(|| (common::free_port(), common::free_port()));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("worker.log")).unwrap();
    let child = Command::new(common::BIN)
        .args(["-t", "all"])
        .env_clear()
        .env("TP_SQLITE_PATH", dir.join("nexxus.db"))
        .env("TP_HTTP_HOST", "127.0.0.1")
        .env("TP_HTTP_PORT", http.to_string())
        .env("TP_SCKT_HOST", "127.0.0.1")
        .env("TP_SCKT_PORT", ws.to_string())
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting -t all");
    let p = Process { reaper: Reaper(child), http, ws };
    let started = std::time::Instant::now();
    // `/objects` without a token answers 401 once the ingress is connected, 503 before.
    while http_get(http, "/objects?channel=%7B%7D").map(|(code, _)| code) != Some(401) {
        assert!(started.elapsed() < Duration::from_secs(30), "-t all not ready: {}", log_of(dir));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p
}

impl Process {
    /// SIGTERM, then the exit status (graceful shutdown must exit 0).
    fn stop(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.reaper.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.reaper.0.wait().unwrap().code()
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
        // No body for `null`: a server that answers without reading an unexpected body resets
        // the connection, which can cut the answer short.
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let (code, text) = http_request(self.http, method, path, headers, &body)
            .unwrap_or_else(|| panic!("no HTTP answer to {method} {path} on {}", self.http));
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request("POST", path, &[], body)
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default()
}

fn unique_app(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("sp{}_{}_{name}", nanos % 1_000_000_000_000, std::process::id())
}

fn app_doc(app: &str) -> Value {
    json!({"id": app, "jwt_secret": SECRET, "schema": {
        "list": {"write_acl": 0, "read_acl": 0},
        "task": {"belongsTo": [{"parentModel": "list"}], "write_acl": 0, "read_acl": 0}}})
}

fn token(app: &str, device: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    jwt::sign(&Claims { application_id: app.into(), device_id: device.into(), exp, user_id: None }, SECRET)
}

fn list_channel() -> Value {
    json!({"model": "task", "parent": {"model": "list", "id": "l1"}})
}

fn create(app: &str, id: Option<&str>, title: &str) -> Value {
    let mut object =
        json!({"type": "task", "application_id": app, "context_id": "c1", "list_id": "l1", "title": title});
    if let Some(id) = id {
        object["id"] = json!(id);
    }
    json!({"op": "create", "application_id": app, "object": object})
}

fn increment(app: &str, id: &str) -> Value {
    json!({"op": "update", "application_id": app, "patches": [{"op": "increment", "path": format!("task/{id}/votes"), "value": 1}]})
}

/// Reads frames until `want` deltas arrived; (kind, object id, version, title) of each.
async fn deltas(client: &mut Client, want: usize) -> Vec<(String, String, u64, Value)> {
    let mut out = Vec::new();
    while out.len() < want {
        let frame = client.event().await;
        assert_eq!(frame["event"], "message", "{frame}");
        for kind in ["new", "updated", "deleted"] {
            for d in frame["data"][kind].as_array().unwrap() {
                let id = match d["object"]["id"].as_str() {
                    Some(id) => id.to_string(),
                    None => d["patch"]["path"].as_str().unwrap().split('/').nth(1).unwrap().to_string(),
                };
                out.push((kind.to_string(), id, d["version"].as_u64().unwrap(), d["object"]["title"].clone()));
            }
        }
    }
    out
}

/// `GET /objects` of the list channel: object id → (version, object).
fn snapshot(p: &Process, app: &str, device: &str) -> std::collections::BTreeMap<String, (u64, Value)> {
    let channel = list_channel().to_string();
    let path = format!("/objects?channel={}", url_encode(&channel));
    let auth = format!("Bearer {}", token(app, device));
    let (code, body) = p.request("GET", &path, &[("Authorization", &auth)], &Value::Null);
    assert_eq!(code, 200, "{body}");
    body["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (o["object"]["id"].as_str().unwrap().to_string(), (o["version"].as_u64().unwrap(), o["object"].clone()))
        })
        .collect()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

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
    let env = [("TP_INGRESS_TOKEN", "s3cret"), ("TP_INGRESS_MAX_BYTES", "4096")];
    let p = start(dir.path(), None, &env).await;
    let auth = [("Authorization", "Bearer s3cret")];
    let path = format!("/apps/{app}");
    assert_eq!(p.request("PUT", &path, &[], &app_doc(&app)).0, 401);
    assert_eq!(p.request("PUT", &path, &[("Authorization", "Bearer nope")], &app_doc(&app)).0, 401);
    assert_eq!(p.request("PUT", &format!("/apps/{app}x"), &auth, &app_doc(&app)).0, 400, "path and body ids differ");
    assert_eq!(p.request("PUT", &path, &auth, &app_doc(&app)).0, 200);

    assert_eq!(p.post("/events", &create(&app, Some("a"), "x")).0, 401);
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
    let started = std::time::Instant::now();
    let letters = loop {
        let (code, body) = p.request("GET", "/dead_letter?limit=10", &auth, &Value::Null);
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
    assert_eq!(p.request("GET", &ctx_channel, &[("Authorization", &ok)], &Value::Null).0, 400);
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
    assert_eq!(p.post("/events", &json!(creates)).0, 202);
    // Straight after the 202: every accepted create must still be written.
    assert_eq!(p.stop(), Some(0), "{}", log_of(dir.path()));
    let p = start(dir.path(), None, &[]).await;
    assert_eq!(snapshot(&p, &app, "d1").len(), 2000, "{}", log_of(dir.path()));
    assert_eq!(p.stop(), Some(0));
}

/// The demo page in two headless Chromium pages (tests/web/demo.browser.mjs): what one page
/// does, the other shows within a second. Chromium and playwright-core come from
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
    let out = tokio::process::Command::new("node")
        .arg(root.join("tests/web/demo.browser.mjs"))
        .arg(format!("http://127.0.0.1:{}", p.http))
        .arg(&shot)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("browser test within 120 s").unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "browser test failed:\n{report}\nworker log:\n{}", log_of(dir.path()));
    assert!(report.contains("PASS"), "{report}");
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "no screenshot at {}", shot.display());
    assert_eq!(p.stop(), Some(0));
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
    let started = std::time::Instant::now();
    let mut c = loop {
        // The sockets transport listens once its consumer joined; the ingress may answer first.
        let url = format!("ws://127.0.0.1:{}/?token={}", p.ws, token(&app, "d1"));
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
            if let Some(Ok(m)) = futures::StreamExt::next(&mut ws).await {
                if m.to_text().unwrap_or_default().contains("\"ready\"") {
                    break Client(ws);
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no ready from the sockets transport: {}",
            log_of(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(c.subscribe(list_channel(), None).await["event"], "subscribed");
    // The aggregation and write roles follow `system` too: retry until the create goes through.
    let mut got = Vec::new();
    for attempt in 0..30 {
        // 400 "unknown application" until the ingress's own `system` follower has it.
        let (code, body) = p.post("/events", &json!([create(&app, Some("k1"), "via kafka")]));
        assert!(code == 202 || (code == 400 && body.to_string().contains("unknown application")), "{code} {body}");
        if c.silent(Duration::from_millis(700)).await.is_err() {
            got.push(attempt);
            break;
        }
    }
    assert!(!got.is_empty(), "no delivery through Kafka: {}", log_of(dir.path()));
    let objects = snapshot(&p, &app, "d1");
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
