//! The crash test of the distributed stack (issue 15): the load tool (`nexxus-load`) publishes
//! creates, updates and deletes through Kafka to real WebSocket clients while every role runs
//! as its own process; each of `aggregation`, `write`, `transport_manager` and `track` is
//! SIGKILLed in turn and restarted 2 s later, then the Kafka broker itself is SIGKILLed and
//! restarted once its controller has fenced it (at least 2 s, `CRASH_BROKER_DOWN`). Afterwards: no client lost or got twice a delta (the tool audits each client by
//! object and version), and the store holds exactly the state the published changes lead to.
//!
//! The broker is the test's own, with its own controller (tests/common/broker.rs, which says why
//! not one combined node): the shared one serves every other test.
//! The sockets transport is not killed: clients cannot resume yet. Nothing about speed is
//! asserted. Sizes are bounded for `make test`; `make crash` (deploy/local/crash.sh) runs the
//! same test at full size through the `CRASH_*` variables, and keeps the logs of every run.
#![allow(clippy::disallowed_methods)] // the full-size run passes its sizes in the environment

#[path = "common/crash.rs"]
mod checks;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use checks::{assert_deliveries, assert_registered, assert_stored, feed_track, Published};
use common::broker::Broker;
use common::stack::{pipeline_topics, TestStack};
use common::Reaper;
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
    /// Seconds the broker stays down before its restart, which also waits for its controller to
    /// fence it (tests/common/broker.rs); beyond the group session timeout members are fenced too.
    broker_down_s: u64,
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
            broker_down_s: var("BROKER_DOWN", 2),
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
    let app = format!("crash{}", stack.unique);
    let mut load = tokio::process::Command::new(env!("CARGO_BIN_EXE_nexxus-load"))
        .args(["--scenario", "crash", "--target", "kafka", "--mix", "10,85,5", "--duration", "3600"])
        .args(["--drain", "240", "--quiet", "60", "--stop-on-eof"])
        .args(["--clients", &scale.clients.to_string(), "--channels", &scale.channels.to_string()])
        .args(["--subs", &scale.subs.to_string(), "--filtered", &scale.filtered.to_string()])
        .args(["--rate", &scale.rate.to_string(), "--seed", &scale.seed.to_string()])
        .args(["--ws", &format!("ws://127.0.0.1:{}", roles.ws_port), "--ready", &roles.ready_urls().join(",")])
        .args(["--app", &app])
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
    let stop_track = tokio_util::sync::CancellationToken::new();
    let track = tokio::spawn(feed_track(stack.cfg.clone(), app.clone(), stop_track.clone()));

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
    tokio::time::sleep(Duration::from_secs(scale.broker_down_s)).await;
    broker.run().await;
    roles.wait_ready().await;
    event(format!("broker restarted, every role ready {:.1} s after the kill", killed.elapsed().as_secs_f64()));
    tokio::time::sleep(flow).await;
    drop(stdin);
    stop_track.cancel();
    event("load stopped".into());
    let devices = track.await.unwrap();

    let status = tokio::time::timeout(Duration::from_secs(400), progress).await.expect("load tool drained").unwrap();
    let summary = summary.await.unwrap();
    eprintln!("{summary}");
    assert!(status.success(), "load tool failed: {status}");
    let outcome: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_deliveries(&outcome, &events);
    let published: Published = serde_json::from_str(&std::fs::read_to_string(&published).unwrap()).unwrap();
    assert_stored(&stack, &published).await;
    assert_registered(&stack, &app, devices).await;
    eprintln!(
        "CRASH passed: {} changes, {} deliveries to {} clients, 0 lost, 0 duplicate, 0 unexpected; {} objects stored exactly",
        outcome["changes_sent"],
        outcome["deliveries_received"],
        scale.clients,
        published.objects.len()
    );
    eprintln!("CRASH track: {devices} devices registered and subscribed through `track`, every one in the registry");
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
