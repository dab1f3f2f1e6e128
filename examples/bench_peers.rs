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
#[path = "support/peers_client.rs"]
mod peers_client;
#[path = "support/peers_report.rs"]
mod peers_report;
#[path = "support/proc.rs"]
mod proc;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use histogram_text::bucket_quantile;
use proc::{cpu_split_ticks, cpu_ticks, http_get, rss_kib};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
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
        return peers_client::client().await;
    }
    if let Some(dir) = arg("--report") {
        print!("{}", peers_report::report(&dir)?);
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
