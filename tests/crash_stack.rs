//! The crash test of the distributed stack (issue 15): the load tool (`nexxus-load`) publishes
//! creates, updates and deletes through Kafka to real WebSocket clients while every role runs
//! as its own process; each of `aggregation`, `write`, `transport_manager` and `track` is
//! SIGKILLed in turn and restarted 2 s later, then the Kafka broker itself is SIGKILLed and
//! restarted. Afterwards: no client lost or got twice a delta (the tool audits each client by
//! object and version), and the store holds exactly the state the published changes lead to.
//!
//! The broker is the test's own (tests/common/broker.rs): the shared one serves every other test.
//! The sockets transport is not killed: clients cannot resume yet. Nothing about speed is
//! asserted. Sizes are bounded for `make test`; `make crash` (deploy/local/crash.sh) runs the
//! same test at full size through the `CRASH_*` variables, and keeps the logs of every run.
#![allow(clippy::disallowed_methods)] // the full-size run passes its sizes in the environment

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::broker::Broker;
use common::stack::{pipeline_topics, TestStack};
use common::Reaper;
use nexxus_worker::store::cql::CqlStore;
use nexxus_worker::store::Store;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The roles killed in turn, in pipeline order.
const KILLED: [&str; 4] = ["aggregation", "write", "transport_manager", "track"];

/// Sizes, from `CRASH_<NAME>` or the bounded default.
struct Scale {
    clients: u64,
    channels: u64,
    subs: u64,
    filtered: f64,
    rate: u64,
    /// Objects per channel before the load.
    seed: u64,
    partitions: i32,
    /// Seconds of undisturbed load before each kill, and after the last restart.
    flow_s: u64,
}

impl Scale {
    fn from_env() -> Scale {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            std::env::var(format!("CRASH_{name}")).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
        }
        Scale {
            clients: var("CLIENTS", 100),
            channels: var("CHANNELS", 50),
            subs: var("SUBS", 2),
            filtered: var("FILTERED", 0.3),
            rate: var("RATE", 100),
            seed: var("SEED", 12),
            partitions: var("PARTITIONS", 3),
            flow_s: var("FLOW", 3),
        }
    }
}

fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// The test's directory under the target dir: broker data, every process's log, the tool's
/// results. Removed when the test passes, kept (and named) when it fails.
struct Workspace(PathBuf);

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("CRASH_KEEP").is_some() {
            eprintln!("[crash] logs and results kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One process per role, each restartable; every start logs to its own file.
struct Roles<'a> {
    stack: &'a TestStack,
    dir: &'a Path,
    ws_port: u16,
    running: BTreeMap<&'static str, (Reaper, u16)>,
    starts: u32,
}

impl Roles<'_> {
    fn start(&mut self, role: &'static str) {
        let http = common::free_port();
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("{:02}-{role}.log", self.starts))).unwrap();
        let child = Command::new(common::BIN)
            .args(["-t", role, "-i", "0"])
            .env_clear()
            .envs(&self.stack.env)
            .env("TP_HTTP_PORT", http.to_string())
            .env("TP_SCKT_PORT", self.ws_port.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.running.insert(role, (Reaper(child), http));
    }

    /// SIGKILL: no drain, no commit, no leaving the group.
    fn kill(&mut self, role: &str) {
        let (mut p, _) = self.running.remove(role).unwrap();
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }

    fn ready_urls(&self) -> Vec<String> {
        self.running.values().map(|(_, port)| format!("http://127.0.0.1:{port}/readyz")).collect()
    }

    /// Until every role answers `/readyz` with 200: it owns its partitions and caught up.
    async fn wait_ready(&self) {
        let started = Instant::now();
        for (role, (_, port)) in &self.running {
            let port = *port;
            loop {
                let answer = tokio::task::spawn_blocking(move || common::http_get(port, "/readyz")).await.unwrap();
                match answer {
                    Some((200, _)) => break,
                    other => assert!(
                        started.elapsed() < Duration::from_secs(180),
                        "{role} not ready after 180 s: {other:?} (logs in {})",
                        self.dir.display()
                    ),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[derive(Deserialize)]
struct Published {
    application_id: String,
    model: String,
    objects: BTreeMap<String, Final>,
}

#[derive(Deserialize)]
struct Final {
    channel: u64,
    score: u64,
    version: u64,
    deleted: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_every_role_and_a_broker_restart_lose_and_duplicate_no_delivery() {
    let scale = Scale::from_env();
    let unique = common::unique_prefix("crash");
    let work = Workspace(Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique.trim_end_matches('.')));
    let dir = work.0.clone();
    let mut broker = Broker::start(&dir.join("broker")).await;
    let mut topics = pipeline_topics(scale.partitions);
    topics.push(("sockets_transport-0", 1));
    let brokers = broker.address();
    // No coalescing: the audit owes a client one delta per change, and merging two updates of an
    // object into one (right, and routine when a role catches up on a backlog) would read as a
    // lost delta.
    let extra = [
        ("TP_KFK_BROKERS", brokers.as_str()),
        ("TP_SCKT_HOST", "127.0.0.1"),
        ("TP_LOG_LEVEL", "info"),
        ("TP_AGGREGATION_LINGER_MS", "0"),
    ];
    let stack = TestStack::new("crash", true, &extra, &topics).await;
    let mut roles =
        Roles { stack: &stack, dir: &dir, ws_port: common::free_port(), running: BTreeMap::new(), starts: 0 };
    for role in KILLED.into_iter().chain(["sockets_transport"]) {
        roles.start(role);
    }

    let (result, published) = (dir.join("result.json"), dir.join("published.json"));
    let mut load = tokio::process::Command::new(env!("CARGO_BIN_EXE_nexxus-load"))
        .args(["--scenario", "crash", "--target", "kafka", "--mix", "10,85,5", "--duration", "3600"])
        .args(["--drain", "240", "--quiet", "60", "--stop-on-eof"])
        .args(["--clients", &scale.clients.to_string(), "--channels", &scale.channels.to_string()])
        .args(["--subs", &scale.subs.to_string(), "--filtered", &scale.filtered.to_string()])
        .args(["--rate", &scale.rate.to_string(), "--seed", &scale.seed.to_string()])
        .args(["--ws", &format!("ws://127.0.0.1:{}", roles.ws_port), "--ready", &roles.ready_urls().join(",")])
        .arg("--out")
        .arg(&result)
        .arg("--published")
        .arg(&published)
        .env_clear()
        .envs(&stack.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdin = load.stdin.take().unwrap();
    let summary = tokio::spawn(collect(load.stdout.take().unwrap()));
    // The tool's progress, shown as it comes; the schedule starts once the load does.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(async move {
        let mut lines = BufReader::new(load.stderr.take().unwrap()).lines();
        let mut started = Some(started_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            if let Some(tx) = started.take_if(|_| line.contains("changes/s for")) {
                let _ = tx.send(());
            }
        }
        load.wait().await.unwrap()
    });
    started_rx.await.expect("the load tool ended before its load started (its output is above)");

    let flow = Duration::from_secs(scale.flow_s);
    let mut events: Vec<(String, u64)> = Vec::new();
    let mut event = |what: String| {
        eprintln!("[crash] {what}");
        events.push((what, unix_us()));
    };
    for role in KILLED {
        tokio::time::sleep(flow).await;
        roles.kill(role);
        let killed = Instant::now();
        event(format!("SIGKILL {role}-0"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        roles.start(role);
        roles.wait_ready().await;
        event(format!("{role}-0 restarted and ready {:.1} s after the kill", killed.elapsed().as_secs_f64()));
    }
    tokio::time::sleep(flow).await;
    broker.kill();
    let killed = Instant::now();
    event("SIGKILL broker".into());
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.run().await;
    roles.wait_ready().await;
    event(format!("broker restarted, every role ready {:.1} s after the kill", killed.elapsed().as_secs_f64()));
    tokio::time::sleep(flow).await;
    drop(stdin);
    event("load stopped".into());

    let status = tokio::time::timeout(Duration::from_secs(400), progress).await.expect("load tool drained").unwrap();
    let summary = summary.await.unwrap();
    eprintln!("{summary}");
    assert!(status.success(), "load tool failed: {status}");
    let outcome: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_deliveries(&outcome, &events);
    let published: Published = serde_json::from_str(&std::fs::read_to_string(&published).unwrap()).unwrap();
    assert_stored(&stack, &published).await;
    eprintln!(
        "CRASH passed: {} changes, {} deliveries to {} clients, 0 lost, 0 duplicate, 0 unexpected; {} objects stored exactly",
        outcome["changes_sent"],
        outcome["deliveries_received"],
        scale.clients,
        published.objects.len()
    );
    stack.finish().await;
}

async fn collect(out: tokio::process::ChildStdout) -> String {
    let mut text = String::new();
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// The last event at or before `at`, the one a failure at `at` followed.
fn after(events: &[(String, u64)], at: u64) -> String {
    events.iter().rev().find(|(_, t)| *t <= at).map_or_else(
        || "before the first kill".into(),
        |(what, t)| format!("{:.1} s after {what}", (at - t) as f64 / 1e6),
    )
}

fn assert_deliveries(outcome: &Value, events: &[(String, u64)]) {
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
async fn assert_stored(stack: &TestStack, published: &Published) {
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
