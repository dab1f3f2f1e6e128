//! Sockets transport benchmark against the real local stack (Kafka, Redis): memory per idle
//! connection, and fan-out of one change stream to many connected clients.
//!
//! The parent creates topics under a fresh prefix, registers an application, starts one
//! `nexxus-worker -t sockets_transport` (release build), and drives client processes (this same
//! example with `--client`), each holding up to 9,500 real WebSocket connections from its own
//! source address (127.0.0.<n>): the per-process file limit and the ephemeral port range, not
//! the transport, bound how many one process can open here.
//!
//! 1. Idle: RSS of the transport at 0 connections and at each `--idle` step.
//! 2. Fan-out: with `--clients` connected, `--messages` broadcasts at `--rate` per second go to
//!    `sockets_transport`; every client records, per frame, the time since the change's
//!    timestamp (produce time). Reported: deliveries expected/received, per second, latency
//!    percentiles, transport CPU.
//!
//!     deploy/local/bench-sockets.sh --clients 10000 --messages 200 --rate 50 --idle 10000,19000
//!
//! `--sse`: the clients are server-sent event streams (`GET /sse`, `docs/sse.md`) instead of
//! WebSockets, over the same transport, the same deliveries: the two kinds side by side.
#![allow(clippy::disallowed_methods)] // a benchmark harness, not the worker: it reads its settings from the environment

#[path = "support/proc.rs"]
mod proc;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use nexxus_worker::transport::jwt::{self, Claims};
use proc::{cpu_ticks, http_get, rss_kib};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = "target/release/nexxus-worker";
const PER_CHILD: usize = 9_500;
const SECRET: &str = "bench-secret";

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(name: &str, default: usize) -> usize {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn sse() -> bool {
    std::env::args().any(|a| a == "--sse")
}

fn micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--client") {
        return client().await;
    }
    let (clients, messages, rate) = (num("--clients", 10_000), num("--messages", 200), num("--rate", 50));
    let idle: Vec<usize> =
        arg("--idle").unwrap_or_else(|| "10000".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let kind = if sse() { "event streams" } else { "WebSockets" };
    println!("clients: {kind}");
    let prefix = format!("bs{}.", micros());
    let app = format!("bs{}", micros());
    let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("TP_")).collect();
    let run =
        |args: &[&str]| std::process::Command::new(BIN).args(args).envs(&env).env("TP_TOPIC_PREFIX", &prefix).output();
    anyhow::ensure!(run(&["topics", "apply"])?.status.success(), "topics apply failed");
    let dir = tempfile::tempdir()?;
    let app_file = dir.path().join("app.json");
    std::fs::write(&app_file, json!({"id": app, "jwt_secret": SECRET, "schema": {"task": {}}}).to_string())?;
    anyhow::ensure!(run(&["app", "put", app_file.to_str().unwrap_or_default()])?.status.success(), "app put failed");

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server = Command::new(BIN)
        .args(["-t", "sockets_transport", "-i", "0"])
        .envs(&env)
        .env("TP_TOPIC_PREFIX", &prefix)
        .env("TP_SCKT_HOST", "127.0.0.1")
        .env("TP_SCKT_PORT", port.to_string())
        .env("TP_HTTP_PORT", http.to_string())
        .env("TP_HTTP_HOST", "127.0.0.1")
        .env("TP_LOG_LEVEL", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().unwrap_or(0);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = rss_kib(pid);
    println!("idle: 0 connections, transport RSS {base} KiB");

    let mut children: Vec<(Child, usize)> = Vec::new();
    let mut open = 0;
    let mut steps = idle.clone();
    steps.push(clients);
    steps.sort_unstable();
    steps.dedup();
    let mut idle_rows = vec![(0usize, base)];
    for step in steps {
        while open < step {
            let n = (step - open).min(PER_CHILD);
            children.push((spawn_client(port, &app, children.len(), n).await?, n));
            open += n;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = rss_kib(pid);
        idle_rows.push((open, rss));
        println!(
            "idle: {open} connections, transport RSS {rss} KiB, {:.2} KiB per connection",
            (rss.saturating_sub(base)) as f64 / open.max(1) as f64
        );
    }
    // Fan-out runs with exactly `clients` connections: close the extra ones.
    let mut kept = 0;
    let mut fanout = Vec::new();
    for (mut child, n) in children {
        if kept >= clients {
            let _ = child.kill().await;
        } else {
            kept += n;
            fanout.push(child);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut cfg_env = env.clone();
    cfg_env.insert("TP_TOPIC_PREFIX".into(), prefix.clone());
    let cfg = nexxus_worker::config::Config::load(&Default::default(), &cfg_env)?;
    let health = Arc::new(nexxus_worker::telemetry::Health::default());
    let producer = nexxus_worker::queue::kafka::Producer::new(&cfg, &health, "bench-sockets")?;
    let topic = cfg.topic("sockets_transport");
    let frame = |v: u64, object: serde_json::Value| {
        let ts = micros();
        let delta =
            json!({"op":"create","object":object,"subscriptions":[],"application_id":app,"timestamp":ts,"version":v});
        json!({"application_id":app,"object_id":"o1","version":v,"timestamp":ts,"devices":[],"broadcast":true,
            "message":{"new":[delta],"updated":[],"deleted":[]}})
        .to_string()
    };
    let warmup = frame(0, json!({"id": "o1", "type": "task", "warmup": true}));
    producer.send(&topic, Some(b"o1"), warmup.as_bytes(), &[]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    for v in 1..=messages as u64 {
        let due = started + interval * (v as u32 - 1);
        tokio::time::sleep_until(due.into()).await;
        let m = frame(v, json!({"id": "o1", "type": "task", "title": "benchmark object with a few fields", "n": v}));
        producer.send(&topic, Some(b"o1"), m.as_bytes(), &[]).await?;
    }
    let produced = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / 100.0;

    let mut samples: Vec<u32> = Vec::new();
    let (mut received, mut first, mut last, mut short) = (0u64, u64::MAX, 0u64, 0u64);
    for mut child in fanout {
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"report\n").await?;
        }
        let out = child.wait_with_output().await?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        received += report["received"].as_u64().unwrap_or(0);
        short += report["short_clients"].as_u64().unwrap_or(0);
        first = first.min(report["first_us"].as_u64().unwrap_or(u64::MAX));
        last = last.max(report["last_us"].as_u64().unwrap_or(0));
        samples
            .extend(report["latency_us"].as_array().into_iter().flatten().filter_map(|v| v.as_u64()).map(|v| v as u32));
    }
    samples.sort_unstable();
    let pct = |p: f64| samples.get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1))).copied();
    let ms = |v: Option<u32>| v.map_or("-".into(), |v| format!("{:.1} ms", v as f64 / 1000.0));
    let expected = (messages * kept) as u64;
    let span = last.saturating_sub(first).max(1) as f64 / 1e6;
    println!(
        "fan-out: {kept} clients, {messages} messages at {rate}/s (produced in {:.1} s): {received}/{expected} deliveries, \
         {short} clients short, {:.0} deliveries/s over {span:.1} s; latency p50 {} p90 {} p99 {} p99.9 {} max {}; \
         transport CPU {cpu:.1} s ({:.0} % of one core)",
        produced.as_secs_f64(),
        received as f64 / span,
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(pct(0.999)),
        ms(samples.last().copied()),
        cpu / span * 100.0,
    );
    // The transport's own view: time from the change's timestamp to the frames being queued.
    let metrics = http_get(http, "/metrics").unwrap_or_default();
    let queued: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("nexxus_sockets_delivery_latency_seconds_bucket")).collect();
    println!("transport-side latency (change timestamp to frames queued), cumulative buckets:");
    for l in queued {
        println!("  {l}");
    }
    let _ = server.kill().await;
    Ok(())
}

async fn spawn_client(port: u16, app: &str, k: usize, n: usize) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["--client", "--port", &port.to_string(), "--app", app, "--count", &n.to_string()])
        .args(["--ip", &format!("127.0.0.{}", k + 2), "--first", &(k * PER_CHILD).to_string()])
        .args(if sse() { &["--sse"][..] } else { &[][..] })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("client stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next_line().await?.unwrap_or_default();
    anyhow::ensure!(line.starts_with("ready"), "client {k}: {line}");
    child.stdout = Some(lines.into_inner().into_inner());
    Ok(child)
}

/// Client mode: opens `--count` connections, prints `ready`, records every frame's latency
/// until `report` arrives on stdin, then prints a JSON report.
async fn client() -> anyhow::Result<()> {
    let (port, count, first) = (num("--port", 0), num("--count", 1), num("--first", 0));
    let app = arg("--app").unwrap_or_default();
    let ip: std::net::Ipv4Addr = arg("--ip").unwrap_or_else(|| "127.0.0.2".into()).parse()?;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let stop = tokio_util::sync::CancellationToken::new();
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let token = |i: usize| {
        let claims = Claims { application_id: app.clone(), device_id: format!("d{}", first + i), exp, user_id: None };
        jwt::sign(&claims, SECRET)
    };
    let connect = |i: usize| {
        let url = format!("ws://127.0.0.1:{port}/?token={}", token(i));
        async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind((ip, 0).into())?;
            let tcp = socket.connect(([127, 0, 0, 1], port as u16).into()).await?;
            let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
            let ready = ws.next().await.ok_or_else(|| anyhow::anyhow!("closed before ready"))??;
            anyhow::ensure!(ready.to_text()?.contains("\"ready\""), "not ready: {ready:?}");
            anyhow::Ok(ws)
        }
    };
    let open_sse = |i: usize| {
        let token = token(i);
        async move {
            let socket = TcpSocket::new_v4()?;
            socket.bind((ip, 0).into())?;
            let mut tcp = socket.connect(([127, 0, 0, 1], port as u16).into()).await?;
            let request = format!("GET /sse?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            tcp.write_all(request.as_bytes()).await?;
            // The same read buffer as the WebSocket clients'.
            let mut reader = BufReader::with_capacity(4096, tcp);
            let mut line = String::new();
            loop {
                line.clear();
                anyhow::ensure!(reader.read_line(&mut line).await? > 0, "closed before ready");
                if line.starts_with("data: ") {
                    anyhow::ensure!(line.contains("\"ready\""), "not ready: {line}");
                    break;
                }
            }
            anyhow::Ok(reader)
        }
    };
    let mut tasks = Vec::with_capacity(count);
    if sse() {
        let streams: Vec<_> = futures::stream::iter(0..count).map(open_sse).buffer_unordered(200).collect().await;
        for reader in streams {
            let mut reader = reader?;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut line = String::new();
                loop {
                    line.clear();
                    tokio::select! {
                        () = stop.cancelled() => break,
                        n = reader.read_line(&mut line) => match n {
                            Ok(0) | Err(_) => break,
                            Ok(_) if line.starts_with("data: ") => tally.frame(&line),
                            Ok(_) => {}
                        },
                    }
                }
                tally.done()
            }));
        }
    } else {
        let sockets: Vec<_> = futures::stream::iter(0..count).map(connect).buffer_unordered(200).collect().await;
        for ws in sockets {
            let mut ws = ws?;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        m = ws.next() => match m {
                            Some(Ok(Message::Text(t))) => tally.frame(&t),
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                    }
                }
                tally.done()
            }));
        }
    }
    println!("ready {count}");
    let mut line = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut line).await?;
    stop.cancel();
    let (mut received, mut all, mut first, mut last, mut counts) = (0, Vec::new(), u64::MAX, 0, Vec::new());
    for t in tasks {
        let (n, lat, f, l) = t.await?;
        received += n;
        counts.push(n);
        all.extend(lat);
        first = first.min(f);
        last = last.max(l);
    }
    let max = counts.iter().copied().max().unwrap_or(0);
    let short = counts.iter().filter(|&&c| c < max).count();
    println!(
        "{}",
        json!({"received": received, "first_us": first, "last_us": last, "short_clients": short, "latency_us": all})
    );
    Ok(())
}

/// One client's frames: count, latencies, first and last arrival.
struct Tally {
    n: u64,
    lat: Vec<u32>,
    first: u64,
    last: u64,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally { n: 0, lat: Vec::new(), first: u64::MAX, last: 0 }
    }
}

impl Tally {
    fn frame(&mut self, text: &str) {
        // The warm-up frame primes the producer and the consumer's fetch: not measured.
        if text.contains("\"warmup\":true") {
            return;
        }
        let now = micros();
        if let Some(ts) = timestamp(text) {
            self.lat.push(now.saturating_sub(ts) as u32);
        }
        self.n += 1;
        self.first = self.first.min(now);
        self.last = self.last.max(now);
    }

    fn done(self) -> (u64, Vec<u32>, u64, u64) {
        (self.n, self.lat, self.first, self.last)
    }
}

/// The first `"timestamp":<n>` of a frame (the delta's, set at produce time).
fn timestamp(frame: &str) -> Option<u64> {
    let at = frame.find("\"timestamp\":")? + "\"timestamp\":".len();
    let digits: String = frame[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
