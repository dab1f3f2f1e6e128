//! `nexxus-worker supervise` with real child processes on the real stack: a SIGKILLed child is
//! replaced, a crash loop and a configuration error are given up on with a clear reason, SIGHUP
//! recycles every child without losing a message (counted on Kafka), drain then resume, and
//! SIGTERM stops everything.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::Duration;

use nexxus_worker::config::Config;
use serde_json::{json, Value};

/// A port `p` with `p..=p+n` all free (the supervisor gives child k the port p+k).
fn free_ports(n: u16) -> u16 {
    common::free_port_block(n + 1)
}

struct Supervisor {
    proc: common::Reaper,
    port: u16,
    /// The supervisor's and its children's log (children inherit its stderr), for failures.
    log: tempfile::NamedTempFile,
}

impl Supervisor {
    fn start(env: &HashMap<String, String>, plan: &str, extra: &[(&str, &str)]) -> Supervisor {
        let port = free_ports(8);
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(common::BIN)
            .arg("supervise")
            .env_clear()
            .envs(env)
            .env("TP_SUPERVISE", plan)
            .env("TP_HTTP_PORT", port.to_string())
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Supervisor { proc: common::Reaper(child), port, log }
    }

    /// The last lines of the log of the supervisor and its children.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn status(&self) -> Option<Value> {
        let (code, body) = common::http_get(self.port, "/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    fn post(&self, path: &str) -> Value {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        serde_json::from_str(text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default()).unwrap()
    }

    fn child(&self, role: &str, index: u64) -> Value {
        let status = self.status().unwrap_or_default();
        let children = status["children"].as_array().cloned().unwrap_or_default();
        children.into_iter().find(|c| c["role"] == role && c["index"] == index).unwrap_or_default()
    }

    async fn until(&self, what: &str, mut check: impl FnMut(&Supervisor) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !check(self) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; status {:?}", self.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

fn kill(pid: u64, signal: &str) {
    assert!(Command::new("kill").args([signal, &pid.to_string()]).status().unwrap().success());
}

async fn stack(name: &str) -> (Config, HashMap<String, String>, String) {
    let prefix = common::unique_prefix(name);
    let env = common::env_for(&prefix);
    let cfg = Config::load(&Default::default(), &env).unwrap();
    common::create_topics(&cfg, &[("aggregation", 2), ("write", 2), ("dead_letter", 1), ("system", 1)]).await;
    let app = format!("{}s", prefix.replace(['-', '.'], ""));
    common::app_put(&env, &json!({"id": app, "schema": {"task": {}}}));
    (cfg, env, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_children_are_replaced_until_a_crash_loop_and_config_errors_give_up() {
    let (_cfg, env, _app) = stack("sup-crash").await;
    let ssl = [
        ("TP_SCKT_SSL", "true"),
        ("TP_SCKT_KEY_SSL", "/nonexistent/key.pem"),
        ("TP_SCKT_CERT_FILE", "/nonexistent/cert.pem"),
        ("TP_SUPERVISE_MAX_CRASHES", "3"),
    ];
    let sup = Supervisor::start(&env, "aggregation=2,sockets_transport=1", &ssl);
    sup.until("both aggregation children running", |s| {
        s.child("aggregation", 0)["pid"].is_u64() && s.child("aggregation", 1)["pid"].is_u64()
    })
    .await;

    // SIGKILL: replaced, with a new pid, counted as a crash.
    let first = sup.child("aggregation", 0)["pid"].as_u64().unwrap();
    kill(first, "-9");
    sup.until("aggregation-0 replaced", |s| {
        let c = s.child("aggregation", 0);
        c["pid"].as_u64().is_some_and(|p| p != first) && c["crashes"] == 1
    })
    .await;

    // Three crashes within a minute: given up on, loudly, and not restarted.
    for n in 1..=3u64 {
        let pid = loop {
            if let Some(p) = sup.child("aggregation", 1)["pid"].as_u64() {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        kill(pid, "-9");
        sup.until("the crash counted", |s| s.child("aggregation", 1)["crashes"] == n).await;
    }
    sup.until("aggregation-1 given up", |s| s.child("aggregation", 1)["gave_up"].is_string()).await;
    let c = sup.child("aggregation", 1);
    assert!(c["gave_up"].as_str().unwrap().contains("crashed 3 times within 60 s"), "{c}");
    assert!(c["pid"].is_null());

    // A configuration error (exit 64) is given up on at once, naming why.
    sup.until("the misconfigured sockets transport given up", |s| {
        s.child("sockets_transport", 0)["gave_up"].is_string()
    })
    .await;
    let c = sup.child("sockets_transport", 0);
    assert!(c["gave_up"].as_str().unwrap().contains("exited 64"), "{c}");
    assert_eq!(c["starts"], 1, "not restarted");

    // SIGTERM: every child stops, the supervisor exits 0.
    let survivor = sup.child("aggregation", 0)["pid"].as_u64().unwrap();
    let mut proc = sup.proc;
    kill(proc.0.id() as u64, "-TERM");
    let status = proc.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!alive(survivor), "children stop with the supervisor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_recycles_every_child_without_losing_a_message_then_drain_and_resume() {
    let (cfg, env, app) = stack("sup-hup").await;
    let sup = Supervisor::start(&env, "aggregation=2", &[]);
    sup.until("children running", |s| s.child("aggregation", 1)["pid"].is_u64()).await;

    // 3,000 creates at a steady pace; SIGHUP in the middle.
    const N: usize = 3000;
    let producer = common::producer(&cfg);
    let topic = cfg.topic("aggregation");
    let supervisor_pid = sup.proc.0.id() as u64;
    for n in 0..N {
        let id = format!("o{n}");
        let line = json!({"op":"create","application_id":app,"timestamp":1_700_000_000_000_000u64 + n as u64,
            "object":{"id":id,"type":"task","n":n}});
        producer.send(&topic, Some(id.as_bytes()), line.to_string().as_bytes(), &[]).await.unwrap();
        if n == N / 2 {
            kill(supervisor_pid, "-HUP");
        }
        if n % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    sup.until("every child recycled", |s| {
        (0..2).all(|i| {
            s.child("aggregation", i)["starts"].as_u64() >= Some(2) && s.child("aggregation", i)["pid"].is_u64()
        })
    })
    .await;
    let write = cfg.topic("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let ids = loop {
        let ids: BTreeSet<String> = common::read_all(&cfg, &write, 2)
            .into_iter()
            .filter_map(|(_, payload)| serde_json::from_slice::<Value>(&payload).ok())
            .filter_map(|v| v["id"].as_str().map(String::from))
            .collect();
        if ids.len() >= N || tokio::time::Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(ids.len(), N, "every message produced came out of the recycled aggregation children");
    assert_eq!(sup.status().unwrap()["generation"], 1);

    // Drain: every child stopped, none started; resume: all back.
    let pids: Vec<u64> = (0..2).filter_map(|i| sup.child("aggregation", i)["pid"].as_u64()).collect();
    assert_eq!(sup.post("/drain")["state"], "drained");
    sup.until("children stopped", |s| (0..2).all(|i| s.child("aggregation", i)["pid"].is_null())).await;
    assert!(pids.iter().all(|p| !alive(*p)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!((0..2).all(|i| sup.child("aggregation", i)["pid"].is_null()), "a drained supervisor starts nothing");
    assert_eq!(sup.post("/resume")["state"], "running");
    sup.until("children back", |s| (0..2).all(|i| s.child("aggregation", i)["pid"].is_u64())).await;
    assert!(
        (0..2).all(|i| sup.child("aggregation", i)["crashes"] == 0),
        "no stop counted as a crash; log:\n{}",
        sup.log_tail()
    );

    // A supervisor killed with SIGKILL leaves no orphan: its children notice and stop.
    let children: Vec<u64> = (0..2).filter_map(|i| sup.child("aggregation", i)["pid"].as_u64()).collect();
    let mut proc = sup.proc;
    kill(proc.0.id() as u64, "-9");
    let _ = proc.0.wait();
    common::wait_until(Duration::from_secs(30), "orphaned children to stop", || children.iter().all(|p| !alive(*p)))
        .await;
}
