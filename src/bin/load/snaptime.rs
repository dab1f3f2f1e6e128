//! Snapshot time (`--snapshot-objects N`): fills one channel with N objects through the normal
//! write path, then measures subscribes with `"snapshot": true` on fresh connections: the time
//! from sending `subscribe` to `snapshot_end`, the pages and bytes.
//!
//! The fill goes as fast as the pipeline takes it: creates are sent 500 at a time while at most
//! about `--fill-window` of them are sent but not yet through the pipeline. Progress is read from
//! a live listener subscribed to the channel filtered by `score >= 98` (2 % of the objects: a
//! listener of every create would be closed with 4008 by the first burst, its queue holding 256
//! frames). A writer routes a change before it stores it, so delivery is not storage: the fill
//! is complete once a snapshot counts every object (`snapshot_end.count`). Everything is
//! bounded by `--fill-timeout`; a fill that does not finish in time is measured as far as it
//! got, and the report says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::plan::{Generator, Shape};
use crate::report::ProcessUse;
use crate::socket;

/// One measured subscribe.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapRun {
    /// `subscribe` sent → `snapshot_end` received.
    pub ms: f64,
    /// → `subscribed` (the first store page is read before it).
    pub subscribed_ms: f64,
    /// `snapshot` pages.
    pub frames: u64,
    /// Bytes of the pages and `snapshot_end`.
    pub bytes: u64,
    /// `snapshot_end.count`.
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SnapshotOutcome {
    pub scenario: String,
    pub target: String,
    pub machine: String,
    pub objects_wanted: usize,
    pub objects_sent: u64,
    /// Objects the last snapshot counted before measuring.
    pub objects_stored: u64,
    /// Every wanted object stored within the bound.
    pub filled: bool,
    /// Seconds from the first create sent to: the last sent, the last delivered live, all stored.
    pub sent_s: f64,
    pub delivered_s: f64,
    pub stored_s: f64,
    /// Objects stored per second over the fill.
    pub fill_per_s: f64,
    pub runs: Vec<SnapRun>,
    pub p50_ms: f64,
    pub max_ms: f64,
    pub p50_subscribed_ms: f64,
    pub processes: Vec<ProcessUse>,
}

/// Subscribes with a snapshot on a fresh connection and times it.
async fn measure(base: &str, app: &str, secret: &str, device: &str) -> anyhow::Result<SnapRun> {
    let mut ws = socket::connect(base, app, secret, device).await?;
    let subscribe = json!({"event": "subscribe", "data": {"channel": Shape::channel(0), "snapshot": true}});
    let t = Instant::now();
    socket::send(&mut ws, subscribe.to_string()).await?;
    let mut run = SnapRun::default();
    let bound = Duration::from_secs(600);
    loop {
        let text = tokio::time::timeout(bound.saturating_sub(t.elapsed()), socket::next_text(&mut ws))
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed during the snapshot"))?;
        // Pages are only counted: parsing them would time the client, not the server.
        if text.starts_with(r#"{"event":"snapshot","#) {
            run.frames += 1;
            run.bytes += text.len() as u64;
        } else if text.starts_with(r#"{"event":"snapshot_end""#) {
            run.ms = t.elapsed().as_secs_f64() * 1000.0;
            run.bytes += text.len() as u64;
            let end: Value = serde_json::from_str(&text)?;
            run.count = end["data"]["count"].as_u64().unwrap_or(0);
            break;
        } else if text.starts_with(r#"{"event":"subscribed""#) {
            run.subscribed_ms = t.elapsed().as_secs_f64() * 1000.0;
        } else if text.starts_with(r#"{"event":"error""#) || text.starts_with(r#"{"event":"resync_required""#) {
            anyhow::bail!("snapshot refused: {text}");
        }
    }
    Ok(run)
}

/// Objects with a score at or above this are the fill's progress markers.
const MARK: u32 = 98;

/// Counts the `new` deltas of channel 0 filtered by `score >= MARK` a live subscriber receives.
async fn listen(
    base: &str,
    app: &str,
    secret: &str,
    count: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut ws = socket::connect(base, app, secret, "snap-listener").await?;
    let filters = json!({"and": [{"range": {"score": {"gte": MARK}}}]});
    let subscribe = json!({"event": "subscribe", "data": {"channel": Shape::channel(0), "filters": filters}});
    socket::send(&mut ws, subscribe.to_string()).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), socket::next_text(&mut ws)).await?.unwrap_or_default();
    anyhow::ensure!(answer.starts_with(r#"{"event":"subscribed""#), "listener refused: {answer}");
    tokio::spawn(async move {
        loop {
            let text = tokio::select! {
                () = stop.cancelled() => return,
                t = socket::next(&mut ws) => match t {
                    Ok(t) => t,
                    Err(why) => {
                        eprintln!("[load] the fill listener's connection ended: {why}");
                        return;
                    }
                },
            };
            if let Ok(frame) = serde_json::from_str::<Value>(&text) {
                let n = frame["data"]["new"].as_array().map_or(0, Vec::len);
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    Ok(())
}

pub async fn run(args: &crate::Run, target: &crate::writer::Target, app: &str) -> anyhow::Result<SnapshotOutcome> {
    let n = args.snapshot_objects.unwrap_or(0);
    let base = args.ws.first().cloned().unwrap_or_default();
    let bound = Duration::from_secs_f64(args.fill_timeout);
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    listen(&base, app, &args.secret, delivered.clone(), stop.clone()).await?;
    let processes = crate::watch::discover();
    let watch = crate::watch::Watch::start(&processes);

    let changes = Generator::new(1, [1.0, 0.0, 0.0], app).seed(n);
    let mut sent = crate::writer::Sent::default();
    let t0 = Instant::now();
    // Markers (creates with score >= MARK) sent but not delivered, at most.
    let window = (args.fill_window as u64 * u64::from(100 - MARK) / 100).max(2);
    let (mut marks, mut last_report) = (0u64, Instant::now());
    for chunk in changes.chunks(500) {
        while marks.saturating_sub(delivered.load(Ordering::Relaxed)) > window && t0.elapsed() < bound {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if t0.elapsed() >= bound {
            eprintln!("[load] fill bound reached after {} of {n} creates sent", sent.changes);
            break;
        }
        target.send_all(app, chunk, &mut sent).await?;
        marks += chunk.iter().filter(|c| c.after.is_some_and(|s| s >= MARK)).count() as u64;
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "[load] fill: {} sent after {:.0} s ({} of {marks} markers delivered)",
                sent.changes,
                t0.elapsed().as_secs_f64(),
                delivered.load(Ordering::Relaxed)
            );
        }
    }
    let sent_s = t0.elapsed().as_secs_f64();
    // Every marker delivered live (or no progress for 30 s, or the bound).
    let (mut last, mut still) = (0, Instant::now());
    while delivered.load(Ordering::Relaxed) < marks && t0.elapsed() < bound && still.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            (last, still) = (now, Instant::now());
        }
    }
    let delivered_s = t0.elapsed().as_secs_f64();
    stop.cancel();
    // Stored: a snapshot counts every object sent (or the bound).
    let mut stored = 0;
    let mut polls = 0;
    loop {
        polls += 1;
        match measure(&base, app, &args.secret, &format!("snap-poll{polls}")).await {
            Ok(r) => stored = r.count,
            Err(e) => eprintln!("[load] snapshot poll failed: {e}"),
        }
        if stored >= sent.changes || t0.elapsed() >= bound + Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stored_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "[load] {stored} of {n} objects stored ({} sent) after {stored_s:.1} s; measuring {} snapshots",
        sent.changes, args.snapshot_runs
    );
    let mut runs = Vec::new();
    for r in 0..args.snapshot_runs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = measure(&base, app, &args.secret, &format!("snap-run{r}")).await?;
        eprintln!(
            "[load] snapshot {}: {:.1} ms, {} pages, {} bytes, {} objects",
            r + 1,
            m.ms,
            m.frames,
            m.bytes,
            m.count
        );
        runs.push(m);
    }
    let processes = watch.finish();
    let mut ms: Vec<f64> = runs.iter().map(|r| r.ms).collect();
    ms.sort_by(f64::total_cmp);
    let mut sub_ms: Vec<f64> = runs.iter().map(|r| r.subscribed_ms).collect();
    sub_ms.sort_by(f64::total_cmp);
    let median = |v: &[f64]| if v.is_empty() { 0.0 } else { v[(v.len() - 1) / 2] };
    Ok(SnapshotOutcome {
        scenario: args.scenario.clone(),
        target: if args.target == "http" { format!("HTTP ingress {}", args.http) } else { "Kafka".into() },
        machine: crate::machine(),
        objects_wanted: n,
        objects_sent: sent.changes,
        objects_stored: stored,
        filled: stored >= n as u64,
        sent_s,
        delivered_s,
        stored_s,
        fill_per_s: stored as f64 / stored_s.max(0.001),
        p50_ms: median(&ms),
        max_ms: ms.last().copied().unwrap_or(0.0),
        p50_subscribed_ms: median(&sub_ms),
        runs,
        processes,
    })
}

impl SnapshotOutcome {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### {} ({})\n\n{} objects wanted in one channel: {} sent in {:.1} s, delivered live after {:.1} s, {} stored \
             (counted by a snapshot) after {:.1} s ({:.0} objects/s){}; {}\n\n",
            self.scenario,
            self.target,
            self.objects_wanted,
            self.objects_sent,
            self.sent_s,
            self.delivered_s,
            self.objects_stored,
            self.stored_s,
            self.fill_per_s,
            if self.filled { "" } else { " — NOT FILLED within the bound" },
            self.machine
        );
        s.push_str(
            "| subscribes | objects | subscribe → snapshot_end p50 | max | → subscribed p50 | pages | bytes |\n",
        );
        s.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
        let first = self.runs.first().cloned().unwrap_or_default();
        s.push_str(&format!(
            "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {:.2} MiB |\n\n",
            self.runs.len(),
            first.count,
            self.p50_ms,
            self.max_ms,
            self.p50_subscribed_ms,
            first.frames,
            first.bytes as f64 / 1024.0 / 1024.0
        ));
        s.push_str(&format!(
            "Each run (ms): {}\n\n",
            self.runs.iter().map(|r| format!("{:.1}", r.ms)).collect::<Vec<_>>().join(", ")
        ));
        s.push_str(&crate::report::process_table(&self.processes));
        s
    }
}
