//! WebSocket clients, in child processes of the tool (`nexxus-load client ...`): each holds up
//! to `PER_PROCESS` connections from its own source address (127.0.0.<n>), since the file
//! limit and the ephemeral port range bound one process, not the transport.
//!
//! A child connects its clients, subscribes each as the plan says, prints `ready`, then records
//! every delta: its (object, version) for losses and duplicates, and `now - timestamp` for
//! latency once the parent says `start <micros>`. On `progress` it prints how many deltas it has
//! received so far; on `report <ledger JSON>`, its JSON report: each client audited against the
//! ledger ([`crate::ledger`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::ledger::{audit, key, object_number, Audit, Ledger, Sample};
use crate::plan::Shape;
use crate::report::Histogram;
use nexxus_worker::model::clock;
use nexxus_worker::transport::jwt::{self, Claims};

pub const PER_PROCESS: usize = 9_000;

/// What a child process needs; passed as one JSON argument.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub ws: Vec<String>,
    pub app: String,
    pub secret: String,
    pub first: usize,
    pub count: usize,
    pub clients: usize,
    pub channels: usize,
    pub subs_per_client: usize,
    pub filtered: f64,
    pub source_ip: String,
}

/// Per client: its audit against the ledger; samples of what went wrong, for every client.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub first: usize,
    pub audits: Vec<Audit>,
    pub samples: Vec<Sample>,
    pub latency: Histogram,
    pub first_us: u64,
    pub last_us: u64,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: &'a str,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize, Default)]
struct Data {
    #[serde(default)]
    new: Vec<Delta>,
    #[serde(default)]
    updated: Vec<Delta>,
    #[serde(default)]
    deleted: Vec<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    object: Option<ObjectId>,
    #[serde(default)]
    patch: Option<PatchPath>,
    timestamp: u64,
    version: u64,
}

#[derive(Deserialize)]
struct ObjectId {
    id: String,
}

#[derive(Deserialize)]
struct PatchPath {
    path: String,
}

pub async fn run(spec: Spec) -> anyhow::Result<()> {
    let shape = Shape {
        clients: spec.clients,
        channels: spec.channels,
        subs_per_client: spec.subs_per_client,
        filtered: spec.filtered,
    };
    let ip: std::net::Ipv4Addr = spec.source_ip.parse()?;
    let exp = clock::now_secs() + 6 * 3600;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let start_us = Arc::new(AtomicU64::new(u64::MAX));
    let total = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    // One histogram per process, not per connection: it holds ~21,500 counters (170 KB), and a
    // process holds thousands of connections.
    let latency = Arc::new(Mutex::new(Histogram::new()?));
    let connect = |k: usize| {
        let i = spec.first + k;
        let claims = Claims { application_id: spec.app.clone(), device_id: format!("d{i}"), exp, user_id: None };
        let base = &spec.ws[i % spec.ws.len()];
        let url = format!("{}/?token={}", base.trim_end_matches('/'), jwt::sign(&claims, &spec.secret));
        let subs = shape.subscriptions(i);
        async move {
            let addr: std::net::SocketAddr = url
                .trim_start_matches("ws://")
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
            let socket = TcpSocket::new_v4()?;
            socket.bind((ip, 0).into())?;
            let tcp = socket.connect(addr).await?;
            let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
            let ready = ws.next().await.ok_or_else(|| anyhow::anyhow!("closed before ready"))??;
            anyhow::ensure!(ready.to_text()?.contains("\"ready\""), "not ready: {ready:?}");
            for (c, filtered) in &subs {
                let mut data = json!({"channel": Shape::channel(*c)});
                if *filtered {
                    data["filters"] = Shape::filter();
                }
                ws.send(Message::Text(json!({"event": "subscribe", "data": data}).to_string().into())).await?;
            }
            let mut answered = 0;
            while answered < subs.len() {
                let m = ws.next().await.ok_or_else(|| anyhow::anyhow!("closed while subscribing"))??;
                let text = m.to_text()?;
                anyhow::ensure!(!text.contains("\"error\""), "subscribe refused: {text}");
                answered += usize::from(text.contains("\"subscribed\""));
            }
            anyhow::Ok(ws)
        }
    };
    let sockets: Vec<_> = futures::stream::iter(0..spec.count).map(connect).buffered(200).collect().await;
    let mut tasks = Vec::with_capacity(spec.count);
    for ws in sockets {
        let mut ws = ws?;
        let (stop, start_us, total, latency) = (stop.clone(), start_us.clone(), total.clone(), latency.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(u64, u64)> = Vec::new();
            let (mut first, mut last) = (u64::MAX, 0u64);
            loop {
                let text = tokio::select! {
                    () = stop.cancelled() => break,
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(_)) => continue,
                        _ => break,
                    },
                };
                let now = clock::now_micros();
                let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else { continue };
                let Some(data) = frame.data.filter(|_| frame.event == "message") else { continue };
                let start = start_us.load(Ordering::Relaxed);
                for d in data.new.iter().chain(&data.updated).chain(&data.deleted) {
                    let id = match (&d.object, &d.patch) {
                        (Some(o), _) => object_number(&o.id),
                        (None, Some(p)) => object_number(p.path.split('/').nth(1).unwrap_or_default()),
                        (None, None) => 0,
                    };
                    seen.push((key(id, d.version), now));
                    total.fetch_add(1, Ordering::Relaxed);
                    if d.timestamp >= start {
                        latency.lock().unwrap_or_else(PoisonError::into_inner).record(now.saturating_sub(d.timestamp));
                        first = first.min(now);
                        last = last.max(now);
                    }
                }
            }
            (seen, first, last)
        }));
    }
    println!("ready {}", spec.count);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut ledger = Ledger::default();
    while let Some(line) = lines.next_line().await? {
        if let Some(t) = line.strip_prefix("start ") {
            start_us.store(t.trim().parse().unwrap_or(0), Ordering::Relaxed);
        } else if line.trim() == "progress" {
            println!("progress {}", total.load(Ordering::Relaxed));
        } else if let Some(book) = line.strip_prefix("report") {
            if !book.trim().is_empty() {
                ledger = serde_json::from_str(book)?;
            }
            break;
        }
    }
    stop.cancel();
    let (mut audits, mut samples) = (Vec::with_capacity(tasks.len()), Vec::new());
    let (mut first_us, mut last_us) = (u64::MAX, 0);
    for (k, t) in tasks.into_iter().enumerate() {
        let (mut seen, first, last) = t.await?;
        let i = spec.first + k;
        audits.push(audit(i, &shape.subscriptions(i), &mut seen, &ledger, &mut samples));
        first_us = first_us.min(first);
        last_us = last_us.max(last);
    }
    // Every task has ended, so the histogram is complete.
    let latency = latency.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let report = Report { first: spec.first, audits, samples, latency, first_us, last_us };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Counts of (spec, child) for `clients` connections split over child processes.
pub fn split(clients: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut first = 0;
    while first < clients {
        let n = (clients - first).min(PER_PROCESS);
        out.push((first, n));
        first += n;
    }
    out
}

/// Per client index → expected deltas, from each channel's owed (unfiltered, filtered) totals.
pub fn expected(shape: &Shape, owed: &HashMap<usize, (u64, u64)>) -> Vec<u64> {
    (0..shape.clients)
        .map(|i| {
            shape.subscriptions(i).iter().map(|(c, f)| owed.get(c).map_or(0, |(u, fl)| if *f { *fl } else { *u })).sum()
        })
        .collect()
}
