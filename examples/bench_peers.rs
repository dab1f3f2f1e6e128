//! Side-by-side WebSocket benchmark: `nexxus-worker -t all` (embedded defaults) and Centrifugo
//! (memory engine, no history), driven by this one client program (`deploy/local/bench-peers.sh`,
//! `make bench-peers`; method at the top of the script).
//!
//! Three modes:
//! - parent (default): one measured run against a server the script started (`--pid`):
//!   `--mode fanout` connects `--clients` subscribed clients, publishes `--messages` copies of one
//!   ~300-byte JSON object at `--rate` per second over the server's HTTP API, and reports
//!   deliveries, losses and duplicates per client, latency (receive time minus the `bench_sent_ns`
//!   the object carries), server CPU and RSS; `--mode idle` holds `--clients` subscribed
//!   connections for `--idle-secs` and reports memory and CPU per connection. One JSON result
//!   goes to `--out`. `--via broadcast` (ours): publish with `POST /broadcast`, never stored,
//!   reported as server `nexxus-broadcast`.
//! - `--client`: a child process holding up to 9,500 connections from its own source address
//!   (the per-process file limit and the ephemeral port range bound one process, as in
//!   `bench_sockets`); it prints `ready <n>`, then a JSON report when `report` arrives on stdin.
//! - `--report <dir>`: the Markdown table of every `run-*.json` in `<dir>`.
#![allow(clippy::disallowed_methods)] // a benchmark harness, not the worker: it reads its settings from the command line

#[path = "support/histogram_text.rs"]
mod histogram_text;
#[path = "support/proc.rs"]
mod proc;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use histogram_text::bucket_quantile;
use hmac::{Hmac, Mac};
use nexxus_worker::transport::jwt::{self, Claims};
use proc::{cpu_split_ticks, cpu_ticks, http_get, rss_kib};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const PER_CHILD: usize = 9_500;
/// Linux reports `/proc/<pid>/stat` times in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;
/// Our application, its object and the channel every client subscribes to.
const APP: &str = "peers";
const OBJECT_ID: &str = "fan1";
const LIST_ID: &str = "bench";
/// Centrifugo's channel: namespace `bench` allows client subscribes (the script's config).
const CF_CHANNEL: &str = "bench:fan";

type Ws = WebSocketStream<TcpStream>;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(name: &str, default: u64) -> u64 {
    match arg(name) {
        Some(v) => v.parse().unwrap_or_else(|_| panic!("{name} {v}: not a number")),
        None => default,
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Nexxus,
    Centrifugo,
}

impl Server {
    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "nexxus" => Ok(Server::Nexxus),
            "centrifugo" => Ok(Server::Centrifugo),
            other => anyhow::bail!("--server {other}: expected nexxus or centrifugo"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Server::Nexxus => "nexxus",
            Server::Centrifugo => "centrifugo",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--client") {
        return client().await;
    }
    if let Some(dir) = arg("--report") {
        print!("{}", report(&dir)?);
        return Ok(());
    }
    parent().await
}

// ---------------------------------------------------------------------------------------------
// Parent: one measured run.

#[derive(Clone)]
struct Run {
    server: Server,
    pid: u32,
    ws_port: u16,
    http_port: u16,
    secret: String,
    api_key: String,
    /// Ours: publish with `POST /broadcast` (never stored) instead of an update through the store.
    via_broadcast: bool,
}

async fn parent() -> anyhow::Result<()> {
    let server = Server::parse(&arg("--server").unwrap_or_default())?;
    let mode = arg("--mode").unwrap_or_else(|| "fanout".into());
    anyhow::ensure!(mode == "fanout" || mode == "idle", "--mode {mode}: expected fanout or idle");
    let run = Run {
        server,
        pid: num("--pid", 0) as u32,
        ws_port: num("--ws-port", 0) as u16,
        http_port: num("--http-port", 0) as u16,
        secret: arg("--secret").context("--secret")?,
        api_key: arg("--api-key").unwrap_or_default(),
        via_broadcast: arg("--via").as_deref() == Some("broadcast"),
    };
    anyhow::ensure!(!run.via_broadcast || run.server == Server::Nexxus, "--via broadcast is ours only");
    anyhow::ensure!(
        run.pid > 0 && run.ws_port > 0 && run.http_port > 0,
        "--pid, --ws-port and --http-port are required"
    );
    let clients = num("--clients", 5_000) as usize;
    let messages = num("--messages", 100);
    let rate = num("--rate", 20).max(1);
    let idle_secs = num("--idle-secs", 30);
    let drain_secs = num("--drain-secs", 5);
    let net = num("--net", 1);
    let round = num("--round", 1);
    let out = arg("--out").context("--out")?;

    wait_ready(&run).await?;
    setup(&run).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let load = load_average();
    let rss_base = rss_kib(run.pid);

    // Connect and subscribe every client; the server's CPU over that phase is what accepting,
    // authenticating and subscribing cost.
    let cpu_before_connect = cpu_ticks(run.pid);
    let connect_started = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    let mut open = 0;
    while open < clients {
        let n = (clients - open).min(PER_CHILD);
        children.push(spawn_client(&run, net, children.len(), open, n, messages).await?);
        open += n;
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    let accept_cpu_s = cpu_ticks(run.pid).saturating_sub(cpu_before_connect) as f64 / TICKS_PER_SECOND;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_connected = rss_kib(run.pid);
    check_alive(&run)?;

    let mut result = json!({
        "server": if run.via_broadcast { "nexxus-broadcast" } else { server.name() }, "mode": mode, "round": round, "clients": clients,
        "load_before": load, "rss_base_kib": rss_base, "rss_connected_kib": rss_connected,
        "connect_s": round2(connect_s), "accept_cpu_s": accept_cpu_s,
        "accept_cpu_us_per_conn": round2(accept_cpu_s * 1e6 / clients.max(1) as f64),
    });
    if mode == "fanout" {
        // A warm-up publication (seq 0, not measured) primes every path first.
        publish(&run, 0).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (user_before, system_before) = cpu_split_ticks(run.pid);
        let cpu_before = user_before + system_before;
        let started = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        // Each publication starts on its schedule, whether or not the previous one was answered:
        // a server whose publish call returns only after the fan-out (Centrifugo's) would
        // otherwise pace the publisher and be offered less load than one that answers at once.
        let mut requests = tokio::task::JoinSet::new();
        let mut late_ms = 0f64;
        for seq in 1..=messages {
            let due = started + interval * (seq as u32 - 1);
            tokio::time::sleep_until(due.into()).await;
            late_ms = late_ms.max(due.elapsed().as_secs_f64() * 1e3);
            let run = run.clone();
            requests.spawn(async move { (seq, publish(&run, seq).await) });
        }
        let mut refused = 0u64;
        while let Some(done) = requests.join_next().await {
            if let (seq, Err(e)) = done? {
                refused += 1;
                eprintln!("publish {seq}: {e:#}");
            }
        }
        let published_s = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(drain_secs)).await;
        let (user_after, system_after) = cpu_split_ticks(run.pid);
        let cpu_s = (user_after + system_after).saturating_sub(cpu_before) as f64 / TICKS_PER_SECOND;
        let system_s = system_after.saturating_sub(system_before) as f64 / TICKS_PER_SECOND;
        let user_s = user_after.saturating_sub(user_before) as f64 / TICKS_PER_SECOND;
        let window_s = started.elapsed().as_secs_f64();
        let rss_after = rss_kib(run.pid);
        check_alive(&run)?;
        let stages = (run.server == Server::Nexxus).then(|| stage_quantiles(run.http_port));
        let reports = collect(children).await?;
        let agg = aggregate(&reports, messages, clients);
        let o = result.as_object_mut().context("result object")?;
        o.insert("messages".into(), json!(messages));
        o.insert("rate".into(), json!(rate));
        o.insert("publish_failed".into(), json!(refused));
        o.insert("published_s".into(), json!(round2(published_s)));
        o.insert("publish_start_late_ms".into(), json!(round2(late_ms)));
        o.insert("fanout_window_s".into(), json!(round2(window_s)));
        o.insert("fanout_cpu_s".into(), json!(cpu_s));
        o.insert("fanout_user_s".into(), json!(user_s));
        o.insert("fanout_system_s".into(), json!(system_s));
        o.insert("rss_after_fanout_kib".into(), json!(rss_after));
        for (k, v) in agg {
            o.insert(k, v);
        }
        if let Some(stages) = stages {
            o.insert("stages_ms".into(), stages);
        }
    } else {
        let cpu_before = cpu_ticks(run.pid);
        let rss_start = rss_kib(run.pid);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(idle_secs)).await;
        let window_s = started.elapsed().as_secs_f64();
        let cpu_s = cpu_ticks(run.pid).saturating_sub(cpu_before) as f64 / TICKS_PER_SECOND;
        let rss_end = rss_kib(run.pid);
        check_alive(&run)?;
        let reports = collect(children).await?;
        let agg = aggregate(&reports, 0, clients);
        let per_conn_kib = rss_end.saturating_sub(rss_base) as f64 / clients.max(1) as f64;
        let o = result.as_object_mut().context("result object")?;
        o.insert("idle_window_s".into(), json!(round2(window_s)));
        o.insert("idle_cpu_s".into(), json!(cpu_s));
        o.insert("rss_idle_start_kib".into(), json!(rss_start));
        o.insert("rss_idle_end_kib".into(), json!(rss_end));
        o.insert("idle_kib_per_conn".into(), json!(round2(per_conn_kib)));
        o.insert("idle_cpu_us_per_conn_s".into(), json!(round2(cpu_s * 1e6 / window_s / clients.max(1) as f64)));
        o.insert("connected".into(), agg["connected"].clone());
        o.insert("connect_failed".into(), agg["connect_failed"].clone());
        o.insert("closed_early".into(), agg["closed_early"].clone());
    }
    std::fs::write(&out, serde_json::to_string_pretty(&result)?).with_context(|| format!("writing {out}"))?;
    let mut brief = result.clone();
    if let Some(o) = brief.as_object_mut() {
        o.remove("latency_ms_histogram");
    }
    eprintln!("{}", brief);
    Ok(())
}

/// Where ours spent a delivery's time, from its own histograms (bucket bounds, in ms): the
/// change's timestamp to frames queued on the connections, and the store write of each batch.
/// The rest of the client's latency is the socket writes and the clients' reading.
fn stage_quantiles(http_port: u16) -> Value {
    let metrics = http_get(http_port, "/metrics").unwrap_or_default();
    let q = |name: &str, labels: &str, q: f64| bucket_quantile(&metrics, name, labels, q).map(|s| round2(s * 1e3));
    let queued = "nexxus_sockets_delivery_latency_seconds";
    let phase = "nexxus_batch_phase_seconds";
    json!({
        "queued_p50": q(queued, "", 0.5), "queued_p99": q(queued, "", 0.99), "queued_max": q(queued, "", 1.0),
        "persist_p50": q(phase, "phase=\"persist\"", 0.5), "persist_p99": q(phase, "phase=\"persist\"", 0.99),
        "persist_max": q(phase, "phase=\"persist\"", 1.0),
    })
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn check_alive(run: &Run) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::path::Path::new(&format!("/proc/{}/stat", run.pid)).exists(),
        "the {} server (pid {}) is gone",
        run.server.name(),
        run.pid
    );
    Ok(())
}

/// Waits (up to 60 s) until the server answers its HTTP API.
async fn wait_ready(run: &Run) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        check_alive(run)?;
        let answer = match run.server {
            Server::Nexxus => http(run.http_port, "GET", "/readyz", &[], "").await,
            Server::Centrifugo => http(run.http_port, "POST", "/api/info", &[("X-API-Key", &run.api_key)], "{}").await,
        };
        if matches!(answer, Ok((200, _))) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{} did not answer within 60 s: {answer:?}", run.server.name());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ours: the application (PUT /apps/<id>) and the one object every publication updates.
async fn setup(run: &Run) -> anyhow::Result<()> {
    if run.server == Server::Centrifugo {
        return Ok(());
    }
    let app = json!({"id": APP, "jwt_secret": run.secret, "schema": {
        "list": {"write_acl": 0, "read_acl": 0},
        "task": {"belongsTo": [{"parentModel": "list"}], "write_acl": 0, "read_acl": 0}}});
    let (status, body) = http(run.http_port, "PUT", &format!("/apps/{APP}"), &[], &app.to_string()).await?;
    anyhow::ensure!(status == 200, "PUT /apps/{APP}: {status} {body}");
    let create = json!({"op": "create", "application_id": APP, "object": {"id": OBJECT_ID, "type": "task",
        "application_id": APP, "context_id": LIST_ID, "list_id": LIST_ID, "title": "fan-out target"}});
    let (status, body) = http(run.http_port, "POST", "/events", &[], &create.to_string()).await?;
    anyhow::ensure!(status == 202, "POST /events (create): {status} {body}");
    Ok(())
}

/// The published object: the same ~300 bytes every time but for its sequence number and send time.
fn object(seq: u64) -> Value {
    json!({
        "bench_seq": seq,
        "bench_sent_ns": now_ns(),
        "title": "benchmark object with a few fields of ordinary size",
        "status": "open",
        "owner": "user-0042",
        "tags": ["alpha", "beta", "gamma", "delta"],
        "votes": 17,
        "done": false,
        "note": "the same object is published each time; only bench_seq and bench_sent_ns change",
    })
}

/// One publication over the server's HTTP API (an update of one object for ours, or with
/// `--via broadcast` a broadcast of it).
async fn publish(run: &Run, seq: u64) -> anyhow::Result<()> {
    match run.server {
        Server::Nexxus if run.via_broadcast => {
            let body = json!({"application_id": APP, "object": {"type": "task", "id": OBJECT_ID,
                "list_id": LIST_ID, "context_id": LIST_ID, "payload": object(seq)}});
            let (status, text) = http(run.http_port, "POST", "/broadcast", &[], &body.to_string()).await?;
            anyhow::ensure!(status == 202, "POST /broadcast: {status} {text}");
        }
        Server::Nexxus => {
            let body = json!({"op": "update", "application_id": APP, "patches": [
                {"op": "replace", "path": format!("task/{OBJECT_ID}/payload"), "value": object(seq)}]});
            let (status, text) = http(run.http_port, "POST", "/events", &[], &body.to_string()).await?;
            anyhow::ensure!(status == 202, "POST /events: {status} {text}");
        }
        Server::Centrifugo => {
            let body = json!({"channel": CF_CHANNEL, "data": object(seq)});
            let (status, text) =
                http(run.http_port, "POST", "/api/publish", &[("X-API-Key", &run.api_key)], &body.to_string()).await?;
            anyhow::ensure!(status == 200 && !text.contains("\"error\""), "POST /api/publish: {status} {text}");
        }
    }
    Ok(())
}

/// A minimal HTTP/1.1 request on 127.0.0.1 (one connection per request): status and body.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(k);
        request.push_str(": ");
        request.push_str(v);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.context("HTTP timeout")??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text:.200}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn load_average() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).filter_map(|v| v.parse().ok()).collect()
}

async fn spawn_client(run: &Run, net: u64, k: usize, first: usize, n: usize, messages: u64) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["--client", "--server", run.server.name(), "--port", &run.ws_port.to_string()])
        .args(["--secret", &run.secret, "--count", &n.to_string(), "--first", &first.to_string()])
        .args(["--ip", &format!("127.{}.{}.{}", 100 + net / 250, net % 250, k + 2)])
        .args(["--messages", &messages.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("client stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next_line().await?.unwrap_or_default();
    anyhow::ensure!(line.starts_with("ready"), "client process {k}: {line:?}");
    child.stdout = Some(lines.into_inner().into_inner());
    Ok(child)
}

async fn collect(children: Vec<Child>) -> anyhow::Result<Vec<Value>> {
    let mut reports = Vec::new();
    for mut child in children {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"report\n").await?;
        }
        let out = child.wait_with_output().await?;
        let report: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("client report: {:.300}", String::from_utf8_lossy(&out.stdout)))?;
        reports.push(report);
    }
    Ok(reports)
}

/// Sums the client processes' reports; latency percentiles over every first delivery.
fn aggregate(reports: &[Value], messages: u64, clients: usize) -> BTreeMap<String, Value> {
    let sum = |k: &str| reports.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
    let mut out = BTreeMap::new();
    let (connected, failed) = (sum("connected"), sum("connect_failed"));
    out.insert("connected".into(), json!(connected));
    out.insert("connect_failed".into(), json!(failed));
    out.insert("closed_early".into(), json!(sum("closed_early")));
    if messages == 0 {
        return out;
    }
    let expected = messages * clients as u64;
    let unique = sum("unique");
    let mut lat: Vec<u64> = reports
        .iter()
        .flat_map(|r| r["latency_us"].as_array().into_iter().flatten().filter_map(Value::as_u64))
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> Value {
        if lat.is_empty() {
            return Value::Null;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        json!(lat[i] as f64 / 1000.0)
    };
    // Whole-millisecond buckets: the raw latency distribution, compact.
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for &us in &lat {
        *buckets.entry(us / 1000).or_default() += 1;
    }
    out.insert("expected".into(), json!(expected));
    out.insert("received".into(), json!(sum("received")));
    out.insert("unique".into(), json!(unique));
    // Lost: every message a requested client did not get (a client that never connected lost all).
    out.insert("lost".into(), json!(sum("lost") + failed * messages));
    out.insert("duplicates".into(), json!(sum("duplicates")));
    out.insert("clients_with_loss".into(), json!(sum("clients_with_loss") + failed));
    out.insert("clients_with_duplicates".into(), json!(sum("clients_with_duplicates")));
    out.insert("unexpected".into(), json!(sum("unexpected")));
    out.insert(
        "latency_ms".into(),
        json!({"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999),
        "max": lat.last().map(|&v| v as f64 / 1000.0)}),
    );
    out.insert(
        "latency_ms_histogram".into(),
        json!(buckets.into_iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Client processes.

struct Conn {
    server: Server,
    port: u16,
    ip: std::net::Ipv4Addr,
    secret: String,
}

/// What one connection saw.
#[derive(Default)]
struct Seen {
    unique: u64,
    received: u64,
    duplicates: u64,
    unexpected: u64,
    closed: bool,
    latency_us: Vec<u32>,
}

async fn client() -> anyhow::Result<()> {
    let server = Server::parse(&arg("--server").unwrap_or_default())?;
    let conn = Conn {
        server,
        port: num("--port", 0) as u16,
        ip: arg("--ip").unwrap_or_else(|| "127.0.0.2".into()).parse().context("--ip")?,
        secret: arg("--secret").context("--secret")?,
    };
    let (count, first, messages) = (num("--count", 1) as usize, num("--first", 0) as usize, num("--messages", 0));
    let stop = tokio_util::sync::CancellationToken::new();
    let conn = std::sync::Arc::new(conn);
    let opened: Vec<anyhow::Result<Ws>> = futures::stream::iter(0..count)
        .map(|i| {
            let conn = conn.clone();
            async move { open(&conn, first + i).await }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let mut failed = 0u64;
    let mut tasks = Vec::with_capacity(count);
    for ws in opened {
        let ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                if failed < 3 {
                    eprintln!("client {}: connect failed: {e:#}", conn.ip);
                }
                failed += 1;
                continue;
            }
        };
        tasks.push(tokio::spawn(receive(ws, server, messages, stop.clone())));
    }
    println!("ready {}", tasks.len());
    let mut line = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut line).await?;
    stop.cancel();
    let connected = tasks.len() as u64;
    let (mut unique, mut received, mut dups, mut unexpected, mut lost, mut closed) = (0, 0, 0, 0, 0, 0);
    let (mut with_loss, mut with_dups, mut latency) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let seen = t.await?;
        unique += seen.unique;
        received += seen.received;
        dups += seen.duplicates;
        unexpected += seen.unexpected;
        lost += messages - seen.unique.min(messages);
        with_loss += u64::from(seen.unique < messages);
        with_dups += u64::from(seen.duplicates > 0);
        closed += u64::from(seen.closed);
        latency.extend(seen.latency_us);
    }
    println!(
        "{}",
        json!({"connected": connected, "connect_failed": failed, "closed_early": closed, "unique": unique,
            "received": received, "duplicates": dups, "unexpected": unexpected, "lost": lost,
            "clients_with_loss": with_loss, "clients_with_duplicates": with_dups, "latency_us": latency})
    );
    Ok(())
}

/// Opens one authenticated, subscribed connection, in the server's own protocol.
async fn open(conn: &Conn, i: usize) -> anyhow::Result<Ws> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let url = match conn.server {
        Server::Nexxus => {
            let claims =
                Claims { application_id: APP.into(), device_id: format!("d{i}"), exp, user_id: Some(format!("u{i}")) };
            format!("ws://127.0.0.1:{}/?token={}", conn.port, jwt::sign(&claims, &conn.secret))
        }
        Server::Centrifugo => format!("ws://127.0.0.1:{}/connection/websocket", conn.port),
    };
    let socket = TcpSocket::new_v4()?;
    socket.bind((conn.ip, 0).into()).with_context(|| format!("bind {}", conn.ip))?;
    let tcp = socket.connect(([127, 0, 0, 1], conn.port).into()).await?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    let deadline = Duration::from_secs(30);
    match conn.server {
        Server::Nexxus => {
            await_frame(&mut ws, deadline, |f| event_of(f) == Some("ready")).await.context("ready")?;
            let channel = json!({"model": "task", "parent": {"model": "list", "id": LIST_ID}});
            ws.send(Message::text(json!({"event": "subscribe", "data": {"channel": channel}}).to_string())).await?;
            let answer = await_frame(&mut ws, deadline, |f| matches!(event_of(f), Some("subscribed" | "error")))
                .await
                .context("subscribed")?;
            anyhow::ensure!(event_of(&answer) == Some("subscribed"), "subscribe refused: {answer}");
        }
        Server::Centrifugo => {
            let token = hs256(&json!({"sub": format!("u{i}"), "exp": exp}), &conn.secret);
            ws.send(Message::text(json!({"id": 1, "connect": {"token": token, "name": "bench_peers"}}).to_string()))
                .await?;
            let reply = await_reply(&mut ws, deadline, 1).await.context("connect reply")?;
            anyhow::ensure!(reply.get("connect").is_some(), "connect refused: {reply}");
            ws.send(Message::text(json!({"id": 2, "subscribe": {"channel": CF_CHANNEL}}).to_string())).await?;
            let reply = await_reply(&mut ws, deadline, 2).await.context("subscribe reply")?;
            anyhow::ensure!(reply.get("subscribe").is_some(), "subscribe refused: {reply}");
        }
    }
    Ok(ws)
}

fn event_of(frame: &Value) -> Option<&str> {
    frame.get("event").and_then(Value::as_str)
}

/// The next text frame; other frames are skipped, a close or an error ends the wait.
async fn next_text(ws: &mut Ws) -> anyhow::Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(c))) => anyhow::bail!("closed: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed"),
        }
    }
}

/// Ours: the next frame for which `want` holds (others are skipped).
async fn await_frame(ws: &mut Ws, limit: Duration, want: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    tokio::time::timeout(limit, async {
        loop {
            let t = next_text(ws).await?;
            let frame: Value = serde_json::from_str(&t).with_context(|| format!("not JSON: {t}"))?;
            if want(&frame) {
                return Ok(frame);
            }
        }
    })
    .await
    .context("timed out")?
}

/// Centrifugo: the reply to command `id`; answers pings (`{}`) meanwhile. A frame may hold
/// several newline-separated replies.
async fn await_reply(ws: &mut Ws, limit: Duration, id: u64) -> anyhow::Result<Value> {
    tokio::time::timeout(limit, async {
        loop {
            let t = next_text(ws).await?;
            for line in t.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if line == "{}" {
                    ws.send(Message::text("{}")).await?;
                    continue;
                }
                let reply: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
                if reply.get("id").and_then(Value::as_u64) == Some(id) {
                    return Ok(reply);
                }
            }
        }
    })
    .await
    .context("timed out")?
}

/// An HS256 JWT of `claims` (Centrifugo's connection token: `sub`, `exp`).
fn hs256(claims: &Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

/// Reads one connection until told to stop: every publication's sequence number (deduplicated)
/// and latency; answers Centrifugo's `{}` pings (WebSocket pings are answered by tungstenite).
async fn receive(mut ws: Ws, server: Server, messages: u64, stop: tokio_util::sync::CancellationToken) -> Seen {
    let mut seen = Seen::default();
    let mut got = vec![false; messages as usize + 1];
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let now = now_ns();
                    if server == Server::Centrifugo && t.lines().any(|l| l.trim() == "{}") && ws.send(Message::text("{}")).await.is_err() {
                        seen.closed = true;
                        break;
                    }
                    for (seq, sent) in numbers(&t, "\"bench_seq\":").zip(numbers(&t, "\"bench_sent_ns\":")) {
                        if seq == 0 {
                            continue; // the warm-up
                        }
                        seen.received += 1;
                        match got.get_mut(seq as usize) {
                            Some(slot) if !*slot => {
                                *slot = true;
                                seen.unique += 1;
                                seen.latency_us.push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
                            }
                            Some(_) => seen.duplicates += 1,
                            None => seen.unexpected += 1,
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    seen.closed = true;
                    break;
                }
            },
        }
    }
    seen
}

/// Every integer that follows `key` in `text`, in order (each publication carries each key once).
fn numbers<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = u64> + 'a {
    text.match_indices(key).filter_map(move |(at, _)| {
        let rest = text[at + key.len()..].trim_start();
        let digits = rest.find(|c: char| !c.is_ascii_digit()).map_or(rest, |end| &rest[..end]);
        digits.parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------
// The Markdown report.

fn report(dir: &str) -> anyhow::Result<String> {
    let mut runs: Vec<Value> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.starts_with("run-") && name.ends_with(".json") {
            let text = std::fs::read_to_string(&path)?;
            runs.push(serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?);
        }
    }
    // (round, server) -> (fanout, idle)
    let mut rows: BTreeMap<(u64, String), (Option<Value>, Option<Value>)> = BTreeMap::new();
    for r in runs {
        let key = (r["round"].as_u64().unwrap_or(0), r["server"].as_str().unwrap_or("?").to_string());
        let slot = rows.entry(key).or_default();
        if r["mode"] == "fanout" {
            slot.0 = Some(r);
        } else {
            slot.1 = Some(r);
        }
    }
    let null = Value::Null;
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    let fmt = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    // The numeric columns, each: title, how to read it from (fanout, idle), digits.
    type Col = (&'static str, fn(&Value, &Value) -> Option<f64>, usize);
    let cols: Vec<Col> = vec![
        ("p50 ms", |a, _| a["latency_ms"]["p50"].as_f64(), 1),
        ("p90 ms", |a, _| a["latency_ms"]["p90"].as_f64(), 1),
        ("p99 ms", |a, _| a["latency_ms"]["p99"].as_f64(), 1),
        ("max ms", |a, _| a["latency_ms"]["max"].as_f64(), 1),
        ("publish s", |a, _| a["published_s"].as_f64(), 1),
        ("fan-out CPU s", |a, _| a["fanout_cpu_s"].as_f64(), 2),
        ("of which user s", |a, _| a["fanout_user_s"].as_f64(), 2),
        ("queued p99 ms", |a, _| a["stages_ms"]["queued_p99"].as_f64(), 0),
        ("store write max ms", |a, _| a["stages_ms"]["persist_max"].as_f64(), 0),
        ("RSS with clients MiB", |a, _| a["rss_connected_kib"].as_f64().map(|k| k / 1024.0), 1),
        ("idle KiB/conn", |_, b| b["idle_kib_per_conn"].as_f64(), 2),
        ("idle CPU µs/s per conn", |_, b| b["idle_cpu_us_per_conn_s"].as_f64(), 3),
        ("accept CPU µs/conn", |_, b| b["accept_cpu_us_per_conn"].as_f64(), 0),
    ];
    let mut md = String::new();
    let fan = rows.values().find_map(|(a, _)| a.clone()).unwrap_or(Value::Null);
    let idle = rows.values().find_map(|(_, b)| b.clone()).unwrap_or(Value::Null);
    md.push_str("# nexxus-worker vs Centrifugo: fan-out and idle connections\n\n");
    md.push_str(&format!(
        "Fan-out: {} clients on one channel, {} messages of one ~300-byte JSON object at {}/s. \
         Idle: {} subscribed connections held for {} s. Method: deploy/local/bench-peers.sh. \
         Each publication starts on schedule, answered or not; \"publish s\": time until the HTTP \
         API had answered every publication (the schedule is {} s); \
         \"fan-out CPU s\": server CPU from the first publication to the end of the drain \
         (\"of which user s\": outside the kernel); ours only, from its own histograms (bucket \
         bounds): \"queued p99 ms\", change timestamp to frames queued on the connections, and \
         \"store write max ms\", the slowest batch's SQLite write.\n\n",
        fan["clients"],
        fan["messages"],
        fan["rate"],
        idle["clients"],
        idle["idle_window_s"],
        (f(&fan, "messages").unwrap_or(0.0) - 1.0).max(0.0) / f(&fan, "rate").unwrap_or(1.0)
    ));
    md.push_str(
        "| round | server | deliveries received/expected | lost (clients) | duplicates (clients) | connect failed / closed early |",
    );
    for (title, _, _) in &cols {
        md.push_str(&format!(" {title} |"));
    }
    md.push_str(" load before fan-out / idle |\n|");
    for _ in 0..(7 + cols.len()) {
        md.push_str("---|");
    }
    md.push('\n');
    let mut per_server: BTreeMap<String, Vec<Vec<Option<f64>>>> = BTreeMap::new();
    for ((round, server), (a, b)) in &rows {
        let a = a.as_ref().unwrap_or(&null);
        let b = b.as_ref().unwrap_or(&null);
        let load =
            |v: &Value| v["load_before"].get(0).and_then(Value::as_f64).map_or("-".into(), |l| format!("{l:.2}"));
        md.push_str(&format!(
            "| {round} | {server} | {}/{} | {} ({}) | {} ({}) | {} / {} |",
            a["unique"],
            a["expected"],
            a["lost"],
            a["clients_with_loss"],
            a["duplicates"],
            a["clients_with_duplicates"],
            f(a, "connect_failed").unwrap_or(0.0) + f(b, "connect_failed").unwrap_or(0.0),
            f(a, "closed_early").unwrap_or(0.0) + f(b, "closed_early").unwrap_or(0.0),
        ));
        let values: Vec<Option<f64>> = cols.iter().map(|(_, get, _)| get(a, b)).collect();
        for (v, (_, _, d)) in values.iter().zip(&cols) {
            md.push_str(&format!(" {} |", fmt(*v, *d)));
        }
        md.push_str(&format!(" {} / {} |\n", load(a), load(b)));
        per_server.entry(server.clone()).or_default().push(values);
    }
    md.push_str("\n## Medians (and ranges) per server\n\n| server | rounds |");
    for (title, _, _) in &cols {
        md.push_str(&format!(" {title} |"));
    }
    md.push_str("\n|---|---|");
    for _ in &cols {
        md.push_str("---|");
    }
    md.push('\n');
    let mut medians: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for (server, rounds) in &per_server {
        md.push_str(&format!("| {server} | {} |", rounds.len()));
        let mut meds = Vec::new();
        for (c, (_, _, d)) in cols.iter().enumerate() {
            let mut vs: Vec<f64> = rounds.iter().filter_map(|r| r[c]).collect();
            vs.sort_by(f64::total_cmp);
            let med = if vs.is_empty() {
                None
            } else if vs.len() % 2 == 1 {
                Some(vs[vs.len() / 2])
            } else {
                Some((vs[vs.len() / 2 - 1] + vs[vs.len() / 2]) / 2.0)
            };
            meds.push(med);
            let range = match (vs.first(), vs.last()) {
                (Some(lo), Some(hi)) if vs.len() > 1 => format!(" ({lo:.d$}–{hi:.d$})"),
                _ => String::new(),
            };
            md.push_str(&format!(" {}{range} |", fmt(med, *d)));
        }
        md.push('\n');
        medians.insert(server.clone(), meds);
    }
    for ours in ["nexxus", "nexxus-broadcast"] {
        let (Some(n), Some(c)) = (medians.get(ours), medians.get("centrifugo")) else { continue };
        md.push_str(&format!("| **{ours}/centrifugo** | |"));
        for (a, b) in n.iter().zip(c) {
            let ratio = match (a, b) {
                (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}×", a / b),
                _ => "-".into(),
            };
            md.push_str(&format!(" {ratio} |"));
        }
        md.push('\n');
    }
    md.push_str("\n## Machine\n\n");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).map(str::trim);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    md.push_str(&format!(
        "- nproc: {cores}\n- CPU: {}\n- memory: {}\n",
        model.unwrap_or("unknown"),
        mem.unwrap_or("unknown")
    ));
    if let Some(versions) = arg("--versions") {
        for v in versions.split(';').filter(|v| !v.trim().is_empty()) {
            md.push_str(&format!("- {}\n", v.trim()));
        }
    }
    md.push_str(
        "- load before each run: the last column of the first table (1-minute load average); \
         raw results: run-*.json beside this file\n",
    );
    Ok(md)
}
