//! Helpers shared by the integration tests. They run against the real local stack that
//! `make up` starts (deploy/local/stack.env); each test works under its own topic prefix so tests
//! run in parallel without seeing each other.
#![allow(dead_code)]

pub mod all;
pub mod broker;
pub mod push_fakes;
pub mod stack;
pub mod store_suite;
pub mod view;
pub mod ws;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nexxus_worker::config::{Config, Overrides};
use nexxus_worker::queue::kafka::Producer;
use nexxus_worker::queue::topics::{self, TopicFile};
use nexxus_worker::telemetry::Health;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The variables `make up` wrote. Integration tests need the real servers: without them they
/// fail with instructions rather than pretend to pass.
pub fn stack_env() -> HashMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/stack.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; start the local stack with `make up` (make test does it)", path.display())
    });
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A prefix no other test (or earlier run) uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t{}-{}-{test}.", nanos % 1_000_000_000_000, std::process::id())
}

/// Environment for a worker under `prefix`, pointing at the local stack.
pub fn env_for(prefix: &str) -> HashMap<String, String> {
    let mut env = stack_env();
    env.retain(|k, _| k.starts_with("TP_"));
    env.insert("TP_TOPIC_PREFIX".into(), prefix.into());
    env.insert("TP_HTTP_HOST".into(), "127.0.0.1".into());
    env.insert("TP_LOG_LEVEL".into(), "info".into());
    env
}

pub fn config(prefix: &str) -> Config {
    Config::load(&Overrides::default(), &env_for(prefix)).expect("test config")
}

/// Creates `(base name, partitions)` topics under the config's prefix.
pub async fn create_topics(cfg: &Config, topics: &[(&str, i32)]) {
    let files: Vec<TopicFile> = topics
        .iter()
        .map(|(name, partitions)| TopicFile {
            name: name.to_string(),
            indexes: None,
            partitions: *partitions,
            replication_factor: 1,
            retention_ms: 3_600_000,
            cleanup_policy: "delete".into(),
            config: BTreeMap::new(),
            about: String::new(),
        })
        .collect();
    topics::apply(cfg, &files, false).await.expect("creating test topics");
}

pub fn producer(cfg: &Config) -> Producer {
    Producer::new(cfg, &Arc::new(Health::new()), "test-producer").expect("producer")
}

/// Reads every message of `topic` (full name) from the beginning up to its current end (the
/// high watermarks when called). Returns (key, payload) pairs in partition order.
pub fn read_all(cfg: &Config, topic: &str, partitions: i32) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    read_records(cfg, topic, partitions).into_iter().map(|r| (r.key, r.payload)).collect()
}

/// A record as [`read_records`] returns it, with where it lies.
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Every committed record of `topic` up to its current end, with partition and offset.
pub fn read_records(cfg: &Config, topic: &str, partitions: i32) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("reader-{}", unique_prefix("r")))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    let timeout = Duration::from_secs(10);
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, timeout).expect("watermarks");
        ends.push(high);
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    // Positions, not message offsets: transaction markers occupy offsets but carry no message.
    let done = |c: &BaseConsumer| {
        let pos = c.position().unwrap();
        (0..partitions).all(|p| {
            let end = ends[p as usize];
            end == 0 || matches!(pos.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= end)
        })
    };
    while !done(&consumer) {
        assert!(started.elapsed() < Duration::from_secs(60), "reading {topic} did not reach its end");
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(ReadRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    out
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free TCP port on 127.0.0.1.
/// A port for a worker to listen on. Not one the kernel hands out by binding port 0: that range
/// (32768-60999 by default) is also where every outgoing connection takes its local port, so
/// under a full `make test` a Kafka or Redis client of a parallel test could take the port
/// before the worker binds it ("Address already in use"). These come from 20000-31999, below it,
/// each test binary starting at its own place and never handing out a port twice; a port in
/// use (a server of the stack) is skipped.
pub fn free_port() -> u16 {
    free_port_block(1)
}

/// `len` consecutive free ports (for a process that gives its children the ports after its
/// own); the first is returned. Blocks are handed out whole, so no other test gets one of them.
pub fn free_port_block(len: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    loop {
        let n = NEXT.fetch_add(len, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left in {FIRST}..{}", FIRST + SPAN);
        let first = FIRST + (start + n) % SPAN;
        let fits = first.checked_add(len).is_some_and(|end| end <= FIRST + SPAN);
        if fits && (first..first + len).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return first;
        }
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_nexxus-worker");

/// Kills a worker process when the test ends, passing or panicking, so no orphan outlives it.
pub struct Reaper(pub std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Drops a test's keyspace at its end: every keyspace costs the single test node memory and
/// slows its schema changes, and `make test` is run again and again on one machine.
pub async fn drop_keyspace(cfg: &Config) {
    if let Ok(store) = nexxus_worker::store::cql::CqlStore::connect(cfg).await {
        let _ = store.session().query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", store.keyspace()), ()).await;
    }
}

/// A minimal HTTP/1.0 GET to 127.0.0.1 with the status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, &[], "")
}

/// A minimal HTTP/1.0 request to 127.0.0.1 with extra headers and a body; the status code and
/// the response body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    // The ingress takes JSON bodies only; a test that means otherwise says so in `headers`.
    if !body.is_empty() && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type")) {
        head.push_str("Content-Type: application/json\r\n");
    }
    write!(s, "{head}\r\n{body}").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// `nexxus-worker app put` of `doc` with `env`, asserting it succeeded.
pub fn app_put(env: &HashMap<String, String>, doc: &serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("app.json");
    std::fs::write(&path, doc.to_string()).expect("writing the application file");
    let out = std::process::Command::new(BIN)
        .args(["app", "put"])
        .arg(&path)
        .env_clear()
        .envs(env)
        .output()
        .expect("running app put");
    assert!(out.status.success(), "app put: {}", String::from_utf8_lossy(&out.stderr));
}
