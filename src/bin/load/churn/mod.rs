//! Churn (`--churn`): clients that subscribe with a snapshot, then, while changes flow, drop
//! their connection at random times, stay offline a short while, reconnect and resume from their
//! latest cursor (a fresh snapshot after `RESYNC_REQUIRED`), as `docs/protocol.md` describes.
//! Each keeps what it holds by the version rules ([`crate::view`]); at the end every client's
//! view is compared with the state each object must have (the writer's ledger).
//!
//! What resuming costs is measured against what replaying every missed change would have cost:
//! one reference client per (channel, filter) subscribes once, live only, and never drops; it
//! records the bytes of every `message` frame with its arrival time. A churner's replay cost for
//! an offline period is the reference's bytes of its channel between the drop and the answer to
//! the resume. The references' own views are checked too: a reference that ends wrong means the
//! pipeline lost a delta, not the resume.
//!
//! Every client is a task of this process (a few hundred connections need no child process).

mod client;
mod expect;
mod outcome;
mod reference;
mod task;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::plan::Shape;
use client::{expected, Expected};
use nexxus_worker::model::clock;
use outcome::audit;
pub use outcome::ChurnOutcome;
use reference::{record, reference, Fleet};
use task::churner;

/// What the churning clients do.
#[derive(Clone, Debug)]
pub struct Params {
    pub ws: Vec<String>,
    pub app: String,
    pub secret: String,
    /// Mean seconds between two drops of one client (exponentially distributed).
    pub every_s: f64,
    /// Offline time after a drop, uniform in this range, milliseconds.
    pub offline_ms: (u64, u64),
}

/// Signals and counters shared by the run and every client task.
#[derive(Default)]
pub struct Control {
    /// Set while the load runs: clients drop their connections only then.
    pub active: AtomicBool,
    /// Cancelled at the very end: every task returns.
    pub finish: CancellationToken,
    /// Frames received by every client, for the quiet test.
    pub frames: AtomicU64,
    /// When the last snapshot or resume completed (unix µs): the settle catch-up follows it.
    pub last_sync_us: AtomicU64,
}

/// Waits after the load: churn stops, every client comes back and syncs, then until every view
/// matches the expected state (with the settle catch-up's delay passed since the last sync),
/// or nothing arrived for `quiet`, at most `bound`. Returns the seconds waited and whether all
/// matched.
pub async fn drain(
    fleet: &Fleet,
    ctl: &Control,
    expected: &Expected,
    (bound, quiet, settle): (Duration, Duration, Duration),
) -> (f64, bool) {
    ctl.active.store(false, Ordering::Relaxed);
    let started = Instant::now();
    let (mut last_frames, mut quiet_since) = (u64::MAX, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let frames = ctl.frames.load(Ordering::Relaxed);
        if frames != last_frames {
            last_frames = frames;
            quiet_since = Instant::now();
        }
        let synced = fleet.settled() == fleet.clients.len();
        let since_sync = clock::now_micros().saturating_sub(ctl.last_sync_us.load(Ordering::Relaxed));
        let (churners, references) = if synced { fleet.matching(expected) } else { (0, 0) };
        let all = synced && churners == fleet.clients.len() && references == fleet.references.len();
        if all && since_sync >= (settle + Duration::from_secs(1)).as_micros() as u64 {
            return (started.elapsed().as_secs_f64(), true);
        }
        if quiet_since.elapsed() >= quiet || started.elapsed() >= bound {
            eprintln!(
                "[load] drain ends without every view matching: {} of {} clients synced, {churners} matching, {references} of {} references",
                fleet.settled(),
                fleet.clients.len(),
                fleet.references.len()
            );
            return (started.elapsed().as_secs_f64(), all);
        }
    }
}

/// The churn scenario: references, seed, churners and their first snapshots, the load with
/// drops, the drain, the audit.
pub async fn run(
    args: &crate::Run,
    target: &crate::writer::Target,
    app: &str,
    stop: &CancellationToken,
) -> anyhow::Result<ChurnOutcome> {
    let shape = Shape {
        clients: args.clients,
        channels: args.channels.max(1),
        subs_per_client: args.subs,
        filtered: args.filtered,
    };
    let offline_ms = match args.offline_ms.as_slice() {
        [lo, hi, ..] => (*lo.min(hi), *lo.max(hi)),
        [one] => (*one, *one),
        [] => (200, 3000),
    };
    let params = Arc::new(Params {
        ws: args.ws.clone(),
        app: app.to_string(),
        secret: args.secret.clone(),
        every_s: args.churn_every.max(0.1),
        offline_ms,
    });
    let ctl = Arc::new(Control::default());
    let mut fleet = Fleet::new(&shape);
    let mut keys: Vec<(usize, bool)> = (0..shape.clients).flat_map(|i| shape.subscriptions(i)).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut tasks = Vec::new();
    for (n, k) in keys.iter().enumerate() {
        let (ws, r) = reference(&params, *k, n).await?;
        let r = Arc::new(Mutex::new(r));
        tasks.push(tokio::spawn(record(ws, r.clone(), ctl.clone())));
        fleet.references.push(r);
    }
    eprintln!("[load] {} reference clients subscribed (live only)", keys.len());

    let mix = [0, 1, 2].map(|i| args.mix.get(i).copied().unwrap_or(0.0));
    let mut generator = crate::plan::Generator::new(shape.channels, mix, app);
    let mut sent = crate::writer::Sent::default();
    target.send_all(app, &generator.seed(args.seed), &mut sent).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let processes = crate::watch::discover();
    let watch = crate::watch::Watch::start(&processes);
    for c in &fleet.clients {
        tasks.push(tokio::spawn(churner(params.clone(), c.clone(), ctl.clone())));
    }
    let started = Instant::now();
    while fleet.settled() < shape.clients && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "[load] {} of {} churning clients hold their first snapshots after {:.1} s; {} changes/s for {} s",
        fleet.settled(),
        shape.clients,
        started.elapsed().as_secs_f64(),
        args.rate,
        args.duration
    );
    let seeded = sent.changes;
    ctl.active.store(true, Ordering::Relaxed);
    let load = (args.rate, Duration::from_secs_f64(args.duration));
    target.drive(app, &mut generator, load, stop, &mut sent).await?;
    let expected = expected(&sent.ledger.objects, &keys);
    let bounds = (
        Duration::from_secs_f64(args.drain),
        Duration::from_secs_f64(args.quiet),
        Duration::from_millis(args.settle_ms),
    );
    let (drain_s, all_matched) = drain(&fleet, &ctl, &expected, bounds).await;
    eprintln!("[load] drained after {drain_s:.1} s");
    ctl.finish.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let processes = watch.finish();
    if let Some(path) = &args.published {
        crate::harness::write_published(path, app, &sent.ledger)?;
    }
    let a = audit(&fleet, &expected);
    let [resumes_per_client, catchup_ms, snapshot_ms, cursor_age_ms, offline_ms_actual] = a.extra.spreads()?;
    let elapsed = sent.elapsed.as_secs_f64().max(0.001);
    Ok(ChurnOutcome {
        scenario: args.scenario.clone(),
        target: if args.target == "http" { format!("HTTP ingress {}", args.http) } else { "Kafka".into() },
        machine: crate::machine(),
        clients: shape.clients,
        subs_per_client: shape.subs_per_client.min(shape.channels),
        channels: shape.channels,
        filtered_fraction: shape.filtered,
        rate_wanted: args.rate,
        duration_s: args.duration,
        churn_every_s: params.every_s,
        offline_ms,
        changes_sent: sent.changes,
        changes_per_s: (sent.changes - seeded) as f64 / elapsed,
        objects_live_at_end: sent.ledger.objects.values().filter(|f| !f.deleted).count(),
        drain_s,
        all_matched,
        clients_with_loss: a.clients.iter().filter(|c| c.lost() + c.ghosts + c.ahead > 0).count(),
        clients_with_duplicates_applied: a.clients.iter().filter(|c| c.duplicates_applied > 0).count(),
        clients_with_gaps: a.clients.iter().filter(|c| c.gaps > 0).count(),
        totals: a.totals,
        resumes_per_client,
        catchup_ms,
        snapshot_ms,
        cursor_age_ms,
        offline_ms_actual,
        references: a.references.len(),
        references_wrong: a.references.iter().filter(|r| r.wrong() + r.gaps > 0).count() as u64,
        reference_audits: a.references,
        per_client: a.clients,
        errors: a.extra.errors,
        processes,
    })
}
