//! Noisy-neighbour benchmark (issue 14 item 5): does an abusive client of one application move
//! another application's delivery latency? Against `nexxus-worker -t all` on its embedded
//! defaults (in-process queue, SQLite in a temporary directory, in-memory registry), loopback.
//!
//! Every run starts a fresh process, registers a victim and an attacker application, connects
//! the victim's clients (`--clients`, each subscribed to `--subs` of `--channels` context
//! channels, every other subscription filtered by `score >= 50`) and posts creates to
//! `POST /events` at `--rate` a second for `--secs`, each stamped with its send time in µs. Each
//! client records receipt time − timestamp per delta; losses are the deltas owed (from what was
//! posted) and not received. Attacked runs add a child process (this example, `--attacker`)
//! that, from `--attack-devices` × `--attack-conns` connections, sends `--attack-fps` frames a
//! second per connection (10× `TP_SCKT_FRAMES_PER_SEC`), alternating distinct filtered
//! subscriptions over 20 channels (10× `TP_MAX_CHANNEL_FILTERS` per channel within a run) and
//! unfiltered subscriptions to fresh channels (10× `TP_MAX_DEVICE_SUBSCRIPTIONS` per device),
//! reconnects at once when closed, and posts `--attack-writes` changes a second into its own
//! filtered channels so its filters are evaluated. Runs alternate baseline, attacked, `--rounds`
//! times, so noise from other work on the machine hits both sides.
//!
//!     deploy/local/bench-noisy-neighbour.sh --rounds 3 --secs 20 --clients 200 --rate 200
#![allow(clippy::disallowed_methods)] // a benchmark harness, not the worker: it reads its settings from the environment

#[path = "support/noisy_attacker.rs"]
mod attacker;
#[path = "support/proc.rs"]
mod proc;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use nexxus_worker::transport::jwt::{self, Claims};
use proc::{cpu_ticks, http_get, rss_kib};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const BIN: &str = "target/release/nexxus-worker";
const SECRET: &str = "noisy-neighbour-secret";
const ATTACK_CHANNELS: u64 = 20;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn token(app: &str, device: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 3600;
    jwt::sign(&Claims { application_id: app.into(), device_id: device.into(), exp, user_id: None }, SECRET)
}

fn channel(c: u64) -> Value {
    json!({"model": "item", "context": format!("c{c}")})
}

fn create(app: &str, id: &str, c: u64, score: u64) -> Value {
    json!({"op": "create", "application_id": app, "timestamp": micros(),
        "object": {"id": id, "type": "item", "application_id": app, "context_id": format!("c{c}"),
                   "score": score, "n": score, "title": "noisy neighbour benchmark object"}})
}

async fn post(
    http: &reqwest::Client,
    port: u16,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> anyhow::Result<()> {
    let r = http.request(method, format!("http://127.0.0.1:{port}{path}")).json(body).send().await?;
    anyhow::ensure!(r.status().is_success(), "{path}: {} {}", r.status(), r.text().await.unwrap_or_default());
    Ok(())
}

#[derive(Default)]
struct Run {
    attacked: bool,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    received: u64,
    expected: u64,
    server_cpu: f64,
    rss_mib: f64,
    hwm_mib: f64,
    other_cpu: f64,
    attack: Value,
    phases: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest is built without a default TLS provider; plain HTTP still needs one installed.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    if std::env::args().any(|a| a == "--attacker") {
        return attacker::attacker().await;
    }
    let rounds = num("--rounds", 3);
    let mut runs = Vec::new();
    for i in 0..rounds * 2 {
        let r = run(i % 2 == 1, i).await?;
        println!(
            "run {} {:<8}: p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms, {}/{} deltas, server CPU {:.0} %, \
             RSS {:.0} MiB (peak {:.0}), other load {:.0} % of the machine{}",
            i + 1,
            if r.attacked { "attacked" } else { "baseline" },
            r.p50,
            r.p99,
            r.p999,
            r.max,
            r.received,
            r.expected,
            r.server_cpu,
            r.rss_mib,
            r.hwm_mib,
            r.other_cpu,
            if r.attacked { format!("\n    attacker: {}", r.attack) } else { String::new() },
        );
        println!("    batch phases (sum s / count): {}", r.phases);
        runs.push(r);
    }
    println!("\n| round | baseline p50 | baseline p99 | attacked p50 | attacked p99 | p99 ratio | losses b/a |");
    println!("|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (k, pair) in runs.chunks(2).enumerate() {
        let [b, a] = pair else { continue };
        let ratio = a.p99 / b.p99.max(1e-9);
        ratios.push(ratio);
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} | {}/{} |",
            k + 1,
            b.p50,
            b.p99,
            a.p50,
            a.p99,
            ratio,
            b.expected - b.received.min(b.expected),
            a.expected - a.received.min(a.expected)
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let side = |att: bool, f: fn(&Run) -> f64| median(runs.iter().filter(|r| r.attacked == att).map(f).collect());
    println!(
        "medians: baseline p50 {:.2} p99 {:.2} ms, attacked p50 {:.2} p99 {:.2} ms; p99 ratio of medians {:.2}, \
         median of per-round ratios {:.2}",
        side(false, |r| r.p50),
        side(false, |r| r.p99),
        side(true, |r| r.p50),
        side(true, |r| r.p99),
        side(true, |r| r.p99) / side(false, |r| r.p99).max(1e-9),
        median(ratios)
    );
    Ok(())
}

/// One run on a fresh `-t all` process.
async fn run(attacked: bool, i: u64) -> anyhow::Result<Run> {
    let (clients, channels, subs) = (num("--clients", 200), num("--channels", 10), num("--subs", 2));
    let (rate, secs) = (num("--rate", 200), num("--secs", 20));
    let dir = tempfile::tempdir()?;
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    let (hp, wp) = (free()?, free()?);
    let mut server = tokio::process::Command::new(BIN)
        .args(["-t", "all"])
        .env_clear()
        .env("TP_SQLITE_PATH", dir.path().join("nexxus.db"))
        .env("TP_HTTP_HOST", "127.0.0.1")
        .env("TP_HTTP_PORT", hp.to_string())
        .env("TP_SCKT_HOST", "127.0.0.1")
        .env("TP_SCKT_PORT", wp.to_string())
        .env("TP_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("worker.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let pid = server.id().unwrap_or(0);
    let started = Instant::now();
    while http_get(hp, "/healthz").is_none_or(|t| !t.starts_with("HTTP/1.0 200") && !t.starts_with("HTTP/1.1 200")) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "-t all did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::new();
    let (victim, bully) = (format!("victim{i}"), format!("attacker{i}"));
    for app in [&victim, &bully] {
        let doc = json!({"id": app, "jwt_secret": SECRET, "schema": {"item": {"read_acl": 0, "write_acl": 0}}});
        // `/healthz` answers before the ingress has its queue (503 until then).
        while let Err(e) = post(&http, hp, reqwest::Method::PUT, &format!("/apps/{app}"), &doc).await {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "{e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Victim clients: subscription j of client k is channel (k*subs + j) mod channels, filtered when odd.
    let plan = |k: u64| (0..subs).map(move |j| ((k * subs + j) % channels, (k + j) % 2 == 1));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let url = format!("ws://127.0.0.1:{wp}/?token={}", token(&victim, &format!("v{k}")));
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        for (c, filtered) in plan(k) {
            let mut data = json!({"channel": channel(c)});
            if filtered {
                data["filters"] = json!({"and": [{"range": {"score": {"gte": 50}}}]});
            }
            ws.send(Message::Text(json!({"event": "subscribe", "data": data}).to_string().into())).await?;
        }
        let mut answered = 0;
        while answered < subs {
            let m = ws.next().await.ok_or_else(|| anyhow::anyhow!("victim closed while subscribing"))??;
            let t = m.to_text()?;
            anyhow::ensure!(!t.contains("\"error\""), "victim subscribe refused: {t}");
            answered += u64::from(t.contains("\"subscribed\""));
        }
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut n) = (Vec::<u32>::new(), 0u64);
            loop {
                let t = tokio::select! {
                    () = stop.cancelled() => break,
                    m = ws.next() => match m { Some(Ok(Message::Text(t))) => t, Some(Ok(_)) => continue, _ => break },
                };
                let now = micros();
                let Ok(frame) = serde_json::from_str::<Value>(&t) else { continue };
                for d in frame["data"]["new"].as_array().into_iter().flatten() {
                    // Warm-up objects are `w…`, measured ones `m…`.
                    if d["object"]["id"].as_str().is_some_and(|id| id.starts_with('m')) {
                        n += 1;
                        lat.push(now.saturating_sub(d["timestamp"].as_u64().unwrap_or(now)) as u32);
                    }
                }
            }
            (lat, n)
        }));
    }
    for c in 0..channels * 2 {
        post(
            &http,
            hp,
            reqwest::Method::POST,
            "/events",
            &json!([create(&victim, &format!("w{c}"), c % channels, 60)]),
        )
        .await?;
    }
    let mut child = None;
    if attacked {
        let exe = std::env::current_exe()?;
        let mut c = tokio::process::Command::new(exe)
            .args(["--attacker", "--ws", &wp.to_string(), "--http", &hp.to_string(), "--app", &bully])
            .args(["--secs", &(secs + 5).to_string()])
            .args(["--attack-devices", &num("--attack-devices", 6).to_string()])
            .args(["--attack-conns", &num("--attack-conns", 3).to_string()])
            .args(["--attack-fps", &num("--attack-fps", 200).to_string()])
            .args(["--attack-writes", &num("--attack-writes", 20).to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let out = c.stdout.take().ok_or_else(|| anyhow::anyhow!("attacker stdout"))?;
        child = Some((c, BufReader::new(out).lines()));
    }
    // Warm-up, and for attacked runs the flood's first seconds (the subscription limits fill).
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (cpu0, sys0, own0) = (cpu_ticks(pid), busy_ticks(), own_ticks(&child));
    let mut owed: HashMap<(u64, bool), u64> = HashMap::new();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut done = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        let batch: Vec<Value> = (done..due)
            .map(|n| {
                let (c, score) = (n % channels, (n * 37) % 100);
                *owed.entry((c, false)).or_default() += 1;
                *owed.entry((c, true)).or_default() += u64::from(score >= 50);
                create(&victim, &format!("m{n}"), c, score)
            })
            .collect();
        done = due;
        if !batch.is_empty() {
            post(&http, hp, reqwest::Method::POST, "/events", &Value::Array(batch)).await?;
        }
    }
    let window = t0.elapsed().as_secs_f64();
    let (cpu1, sys1, own1) = (cpu_ticks(pid), busy_ticks(), own_ticks(&child));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let (mut lat, mut received) = (Vec::new(), 0);
    for t in tasks {
        let (l, n) = t.await?;
        lat.extend(l);
        received += n;
    }
    let expected: u64 = (0..clients).flat_map(plan).map(|key| owed.get(&key).copied().unwrap_or(0)).sum();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map_or(0.0, |&v| v as f64 / 1000.0)
    };
    let metrics = http_get(hp, "/metrics").unwrap_or_default();
    let mut attack = Value::Null;
    if let Some((mut c, mut lines)) = child {
        attack = match tokio::time::timeout(Duration::from_secs(15), lines.next_line()).await {
            Ok(Ok(Some(l))) => serde_json::from_str(&l).unwrap_or(Value::String(l)),
            _ => Value::String("no report".into()),
        };
        let _ = c.kill().await;
    }
    let ticks_per_s = 100.0 * window;
    let run = Run {
        attacked,
        p50: pct(0.5),
        p99: pct(0.99),
        p999: pct(0.999),
        max: lat.last().map_or(0.0, |&v| v as f64 / 1000.0),
        received,
        expected,
        server_cpu: (cpu1 - cpu0) as f64 / ticks_per_s * 100.0,
        rss_mib: rss_kib(pid) as f64 / 1024.0,
        hwm_mib: status_kib(pid, "VmHWM:") as f64 / 1024.0,
        // Busy CPU of the whole machine not spent by the server, this process or the attacker.
        other_cpu: (sys1.saturating_sub(sys0) as f64 - (cpu1 - cpu0) as f64 - own1.saturating_sub(own0) as f64)
            / (ticks_per_s * cores())
            * 100.0,
        attack,
        phases: metric_lines(&metrics, "nexxus_batch_phase_seconds"),
    };
    if std::env::var_os("NOISY_METRICS").is_some() {
        std::fs::write(format!("/tmp/noisy-metrics-{i}.txt"), &metrics)?;
    }
    if let Some(pid) = server.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
    Ok(run)
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// CPU ticks of this process and of the attacker child, if any.
fn own_ticks(child: &Option<(tokio::process::Child, Lines)>) -> u64 {
    cpu_ticks(std::process::id()) + child.as_ref().and_then(|(c, _)| c.id()).map_or(0, cpu_ticks)
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Non-idle ticks of the whole machine (`/proc/stat`: all fields but idle and iowait).
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    cpu.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `phase=sum/count` for each `_sum` series of a histogram.
fn metric_lines(metrics: &str, name: &str) -> String {
    let sums: Vec<&str> = metrics.lines().filter(|l| l.starts_with(&format!("{name}_sum"))).collect();
    let count = |labels: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(&format!("{name}_count{labels} "))).unwrap_or("?").to_string()
    };
    sums.iter()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{name}_sum"))?;
            let (labels, v) = rest.rsplit_once(' ')?;
            Some(format!("{labels}={:.3}/{}", v.parse::<f64>().unwrap_or(0.0), count(labels)))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
