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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::ledger::Final;
use crate::plan::{unit, Shape, THRESHOLD};
use crate::report::{Histogram, Latency, ProcessUse};
use crate::socket;
use crate::view::View;
use nexxus_worker::model::clock;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Snapshot,
    Resume,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing asked on this connection yet.
    Idle,
    /// A `subscribe` with snapshot or resume sent at `sent`; `answered` once `subscribed` came.
    Syncing { mode: Mode, sent: Instant, answered: bool },
    /// Whole on this connection: live deltas and cursors apply.
    Live,
}

/// An offline period of one subscription: from the drop to the answer of the subscribe that
/// ended it, and what that cost.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Period {
    pub from_us: u64,
    pub to_us: u64,
    /// Ended by a resume's catch-up (else by a snapshot after `RESYNC_REQUIRED`).
    pub resumed: bool,
    /// Bytes of `catchup` pages and `catchup_end` received for it (partial attempts included).
    pub catchup_bytes: u64,
    /// Entries (`objects` and `deleted`) of those pages.
    pub catchup_entries: u64,
    /// Bytes of the snapshot that ended it, if it was resynced.
    pub snapshot_bytes: u64,
    /// What replaying it would have cost: the reference's `message` bytes and deltas in [from, to).
    pub replay_bytes: u64,
    pub replay_deltas: u64,
}

struct Sub {
    channel: usize,
    filtered: bool,
    key: Option<String>,
    view: View,
    /// The latest cursor and when it arrived.
    cursor: Option<(String, Instant)>,
    /// The connection on which its last snapshot or resume completed.
    complete_epoch: u64,
    phase: Phase,
    /// The offline period in progress (started by a drop, ended by a completed sync).
    open: Option<Period>,
    periods: Vec<Period>,
}

/// Per client: what it did and how it ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientAudit {
    pub client: usize,
    /// Objects it should hold but does not.
    pub missing: u64,
    /// Objects held at an older version (or another score) than their last one.
    pub stale: u64,
    /// Objects held that were deleted or left the channel (or its filter).
    pub ghosts: u64,
    /// Objects held at a version newer than any sent.
    pub ahead: u64,
    pub duplicates_applied: u64,
    pub duplicates_dropped: u64,
    pub gaps: u64,
    pub applied: u64,
    pub removed_by_snapshot: u64,
    pub drops: u64,
    pub resumes: u64,
    /// `RESYNC_REQUIRED` answers to a resume.
    pub resyncs: u64,
    /// `resync_required` frames (a snapshot or settle that broke off).
    pub resync_frames: u64,
    pub snapshots: u64,
    pub unavailable: u64,
    pub other_errors: u64,
    /// The server closed the connection (not a drop of ours).
    pub server_closes: u64,
    pub connect_failures: u64,
    pub catchup_bytes: u64,
    pub catchup_entries: u64,
    pub replay_bytes: u64,
    pub replay_deltas: u64,
    pub resync_snapshot_bytes: u64,
    pub resync_replay_bytes: u64,
    pub initial_snapshot_bytes: u64,
    pub settle_bytes: u64,
    pub live_bytes: u64,
}

impl ClientAudit {
    /// Objects lost: missing or stale at the end.
    pub fn lost(&self) -> u64 {
        self.missing + self.stale
    }

    /// Anything the run fails for.
    pub fn wrong(&self) -> u64 {
        self.lost() + self.ghosts + self.ahead + self.duplicates_applied
    }
}

/// One client's state, shared with the run (which checks progress while draining).
pub struct Client {
    index: usize,
    subs: Vec<Sub>,
    online: bool,
    epoch: u64,
    /// Subscribes sent on this connection and not answered yet, in order.
    inflight: VecDeque<(usize, Mode)>,
    audit: ClientAudit,
    /// Milliseconds: resume subscribe → `catchup_end`; snapshot subscribe → `snapshot_end`;
    /// age of the cursor sent with a resume; offline time of each drop.
    catchup_ms: Vec<u64>,
    snapshot_ms: Vec<u64>,
    cursor_age_ms: Vec<u64>,
    offline_ms: Vec<u64>,
    errors: Vec<String>,
}

/// What a frame asks of the task: subscribes to send now, or after a pause.
enum Action {
    Now(usize, Mode),
    Later(usize, Mode),
}

impl Client {
    fn new(index: usize, subs: &[(usize, bool)]) -> Client {
        Client {
            index,
            subs: subs
                .iter()
                .map(|&(channel, filtered)| Sub {
                    channel,
                    filtered,
                    key: None,
                    view: View::default(),
                    cursor: None,
                    complete_epoch: 0,
                    phase: Phase::Idle,
                    open: None,
                    periods: Vec::new(),
                })
                .collect(),
            online: false,
            epoch: 0,
            inflight: VecDeque::new(),
            audit: ClientAudit { client: index, ..ClientAudit::default() },
            catchup_ms: Vec::new(),
            snapshot_ms: Vec::new(),
            cursor_age_ms: Vec::new(),
            offline_ms: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The `subscribe` frame for subscription `j` in `mode` (a resume without a cursor becomes a
    /// snapshot), noting that it was sent.
    fn request(&mut self, j: usize, mode: Mode) -> String {
        let Some(sub) = self.subs.get_mut(j) else { return String::new() };
        let mut data = json!({"channel": Shape::channel(sub.channel)});
        if sub.filtered {
            data["filters"] = Shape::filter();
        }
        let mode = match (&sub.cursor, mode) {
            (Some((cursor, at)), Mode::Resume) => {
                data["resume"] = json!(cursor);
                self.cursor_age_ms.push(at.elapsed().as_millis() as u64);
                Mode::Resume
            }
            _ => {
                data["snapshot"] = json!(true);
                sub.view.begin_snapshot();
                Mode::Snapshot
            }
        };
        sub.phase = Phase::Syncing { mode, sent: Instant::now(), answered: false };
        self.inflight.push_back((j, mode));
        json!({"event": "subscribe", "data": data}).to_string()
    }

    fn sub_of(&self, key: &str) -> Option<usize> {
        self.subs.iter().position(|s| s.key.as_deref() == Some(key))
    }

    /// The connection is gone: syncs in flight are dropped; each subscription misses changes
    /// from now until a later sync completes.
    fn dropped(&mut self, now_us: u64) {
        self.online = false;
        self.inflight.clear();
        for sub in &mut self.subs {
            if let Phase::Syncing { mode: Mode::Snapshot, .. } = sub.phase {
                sub.view.abandon_snapshot();
            }
            sub.phase = Phase::Idle;
            if sub.open.is_none() {
                sub.open = Some(Period { from_us: now_us, ..Period::default() });
            }
        }
    }

    /// Applies one frame; returns the subscribes it calls for.
    fn on_frame(&mut self, text: &str, ctl: &Control) -> Vec<Action> {
        let bytes = text.len() as u64;
        let Ok(frame) = serde_json::from_str::<Value>(text) else { return Vec::new() };
        let data = &frame["data"];
        let channel = data["channel"].as_str().unwrap_or_default();
        let now_us = clock::now_micros();
        let mut actions = Vec::new();
        match frame["event"].as_str().unwrap_or_default() {
            "message" => {
                self.audit.live_bytes += bytes;
                for kind in ["new", "updated", "deleted"] {
                    for d in data[kind].as_array().into_iter().flatten() {
                        for key in d["subscriptions"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                            if let Some(j) = self.sub_of(key) {
                                self.subs[j].view.delta(kind, d);
                            }
                        }
                    }
                }
            }
            "subscribed" => {
                if let Some((j, mode)) = self.inflight.pop_front() {
                    let sub = &mut self.subs[j];
                    sub.key = Some(channel.to_string());
                    if let Phase::Syncing { answered, .. } = &mut sub.phase {
                        *answered = true;
                    }
                    if let Some(open) = &mut sub.open {
                        open.to_us = now_us;
                        open.resumed = mode == Mode::Resume;
                    }
                }
            }
            "error" => {
                let code = data["code"].as_str().unwrap_or_default().to_string();
                let answered = self.inflight.pop_front();
                if let (Some((j, _)), false) = (answered, channel.is_empty()) {
                    self.subs[j].key = Some(channel.to_string());
                }
                match (code.as_str(), answered) {
                    ("RESYNC_REQUIRED", Some((j, _))) => {
                        // The channel is subscribed nonetheless: take a snapshot now.
                        self.audit.resyncs += 1;
                        self.subs[j].cursor = None;
                        actions.push(Action::Now(j, Mode::Snapshot));
                    }
                    ("UNAVAILABLE", Some((j, mode))) => {
                        self.audit.unavailable += 1;
                        if mode == Mode::Snapshot {
                            self.subs[j].view.abandon_snapshot();
                        }
                        actions.push(Action::Later(j, mode));
                    }
                    (_, answered) => {
                        self.audit.other_errors += 1;
                        if self.errors.len() < 5 {
                            self.errors.push(text.chars().take(300).collect());
                        }
                        if let Some((j, mode)) = answered {
                            actions.push(Action::Later(j, mode));
                        }
                    }
                }
            }
            "snapshot" => {
                if let Some(j) = self.sub_of(channel) {
                    let sub = &mut self.subs[j];
                    for item in data["objects"].as_array().into_iter().flatten() {
                        sub.view.snapshot_item(item);
                    }
                    match &mut sub.open {
                        Some(open) => open.snapshot_bytes += bytes,
                        None => self.audit.initial_snapshot_bytes += bytes,
                    }
                }
            }
            "snapshot_end" => {
                if let Some(j) = self.sub_of(channel) {
                    let epoch = self.epoch;
                    let sub = &mut self.subs[j];
                    sub.view.end_snapshot();
                    if let Phase::Syncing { sent, .. } = sub.phase {
                        self.snapshot_ms.push(sent.elapsed().as_millis() as u64);
                    }
                    sub.phase = Phase::Live;
                    sub.complete_epoch = epoch;
                    sub.cursor = data["cursor"].as_str().map(|c| (c.to_string(), Instant::now()));
                    self.audit.snapshots += 1;
                    match sub.open.take() {
                        Some(mut open) => {
                            open.snapshot_bytes += bytes;
                            open.resumed = false;
                            sub.periods.push(open);
                        }
                        None => self.audit.initial_snapshot_bytes += bytes,
                    }
                    ctl.last_sync_us.fetch_max(now_us, Ordering::Relaxed);
                }
            }
            "catchup" | "catchup_end" => {
                let end = frame["event"] == "catchup_end";
                if let Some(j) = self.sub_of(channel) {
                    let epoch = self.epoch;
                    let sub = &mut self.subs[j];
                    let resuming = matches!(sub.phase, Phase::Syncing { mode: Mode::Resume, .. });
                    let (objects, deleted) = (data["objects"].as_array(), data["deleted"].as_array());
                    for item in objects.into_iter().flatten() {
                        sub.view.catchup_item(item);
                    }
                    for gone in deleted.into_iter().flatten() {
                        sub.view.catchup_gone(gone);
                    }
                    let entries = objects.map_or(0, Vec::len) + deleted.map_or(0, Vec::len);
                    match (&mut sub.open, resuming) {
                        (Some(open), true) => {
                            open.catchup_bytes += bytes;
                            open.catchup_entries += entries as u64;
                        }
                        _ => self.audit.settle_bytes += bytes,
                    }
                    let cursor = data["cursor"].as_str().map(|c| (c.to_string(), Instant::now()));
                    if end && resuming {
                        if let Phase::Syncing { sent, .. } = sub.phase {
                            self.catchup_ms.push(sent.elapsed().as_millis() as u64);
                        }
                        sub.phase = Phase::Live;
                        sub.complete_epoch = epoch;
                        sub.cursor = cursor;
                        self.audit.resumes += 1;
                        if let Some(open) = sub.open.take() {
                            sub.periods.push(open);
                        }
                        ctl.last_sync_us.fetch_max(now_us, Ordering::Relaxed);
                    } else if end && sub.phase == Phase::Live && sub.complete_epoch == epoch && cursor.is_some() {
                        // The settle catch-up after a snapshot: a newer cursor.
                        sub.cursor = cursor;
                    }
                }
            }
            "cursor" => {
                let epoch = self.epoch;
                if let Some(c) = data["cursor"].as_str() {
                    // Only for subscriptions whole on this connection: one still waiting for its
                    // catch-up has not got what happened while it was away.
                    for sub in self.subs.iter_mut().filter(|s| s.phase == Phase::Live && s.complete_epoch == epoch) {
                        sub.cursor = Some((c.to_string(), Instant::now()));
                    }
                }
            }
            "resync_required" => {
                self.audit.resync_frames += 1;
                if let Some(j) = self.sub_of(channel) {
                    if let Phase::Syncing { mode: Mode::Snapshot, .. } = self.subs[j].phase {
                        self.subs[j].view.abandon_snapshot();
                    }
                    actions.push(Action::Now(j, Mode::Snapshot));
                }
            }
            _ => {}
        }
        actions
    }

    /// Compares every subscription's view with the state each object must have.
    fn check(&self, expected: &Expected) -> ClientAudit {
        let mut a = ClientAudit { client: self.index, ..self.audit.clone() };
        for sub in &self.subs {
            let want = expected.get(&(sub.channel, sub.filtered));
            let held = &sub.view.objects;
            for (id, (version, score)) in want.into_iter().flatten() {
                match held.get(id) {
                    None => a.missing += 1,
                    Some(h) if h.version < *version => a.stale += 1,
                    Some(h) if h.version > *version => a.ahead += 1,
                    Some(h) if h.score != Some(i64::from(*score)) => a.stale += 1,
                    Some(_) => {}
                }
            }
            a.ghosts += held.keys().filter(|id| !want.is_some_and(|w| w.contains_key(*id))).count() as u64;
            let c = sub.view.counts;
            a.duplicates_applied += c.duplicates_applied;
            a.duplicates_dropped += c.duplicates_dropped;
            a.applied += c.applied;
            a.removed_by_snapshot += c.removed_by_snapshot;
            a.gaps += sub.view.gaps();
        }
        a
    }

    fn settled(&self) -> bool {
        self.online && self.subs.iter().all(|s| s.phase == Phase::Live)
    }
}

/// (channel, filtered) → id → (version, score) every subscription of it must end holding.
pub type Expected = HashMap<(usize, bool), HashMap<String, (u64, u32)>>;

/// What every subscription must hold once everything sent is applied.
pub fn expected(objects: &std::collections::BTreeMap<String, Final>, subs: &[(usize, bool)]) -> Expected {
    let mut out: Expected = subs.iter().map(|k| (*k, HashMap::new())).collect();
    for (id, f) in objects.iter().filter(|(_, f)| !f.deleted) {
        for filtered in [false, true] {
            if filtered && f.score < THRESHOLD {
                continue;
            }
            if let Some(m) = out.get_mut(&(f.channel, filtered)) {
                m.insert(id.clone(), (f.version, f.score));
            }
        }
    }
    out
}

/// A small deterministic random source per client (splitmix64 over a counter).
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 += 1;
        unit(self.0)
    }

    /// Exponentially distributed with this mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -(1.0 - self.unit()).ln() * mean
    }
}

fn lock(c: &Mutex<Client>) -> std::sync::MutexGuard<'_, Client> {
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a connection ended.
enum End {
    /// Dropped by the client, on schedule.
    Dropped,
    /// Closed or failed on the server's side.
    Lost,
    /// The run is over.
    Finish,
}

/// One churning client: connects, syncs its subscriptions, drops at random, until `finish`.
pub async fn churner(params: Arc<Params>, state: Arc<Mutex<Client>>, ctl: Arc<Control>) {
    let index = lock(&state).index;
    let mut rng = Rng(index as u64 * 1_000_003 + 11);
    let base = params.ws[index % params.ws.len()].clone();
    let device = format!("churn{index}");
    loop {
        if ctl.finish.is_cancelled() {
            return;
        }
        let mut ws = match socket::connect(&base, &params.app, &params.secret, &device).await {
            Ok(ws) => ws,
            Err(e) => {
                {
                    let mut c = lock(&state);
                    c.audit.connect_failures += 1;
                    if c.errors.len() < 5 {
                        c.errors.push(format!("connect: {e}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let first: Vec<String> = {
            let mut c = lock(&state);
            c.epoch += 1;
            c.online = true;
            (0..c.subs.len()).map(|j| c.request(j, Mode::Resume)).collect()
        };
        let mut end = End::Lost;
        let mut sent_ok = true;
        for text in first {
            sent_ok &= socket::send(&mut ws, text).await.is_ok();
        }
        let far = Duration::from_secs(86_400);
        let mut drop_at = tokio::time::Instant::now() + Duration::from_secs_f64(rng.exp(params.every_s));
        let mut later: Vec<(tokio::time::Instant, usize, Mode)> = Vec::new();
        while sent_ok {
            let retry_at = later.iter().map(|l| l.0).min().unwrap_or(tokio::time::Instant::now() + far);
            let out: Vec<String> = tokio::select! {
                () = ctl.finish.cancelled() => { end = End::Finish; break }
                () = tokio::time::sleep_until(drop_at) => {
                    if !ctl.active.load(Ordering::Relaxed) {
                        drop_at = tokio::time::Instant::now() + Duration::from_secs_f64(rng.exp(params.every_s));
                        continue;
                    }
                    end = End::Dropped;
                    break;
                }
                () = tokio::time::sleep_until(retry_at) => {
                    let now = tokio::time::Instant::now();
                    let due: Vec<(usize, Mode)> = later.iter().filter(|l| l.0 <= now).map(|l| (l.1, l.2)).collect();
                    later.retain(|l| l.0 > now);
                    let mut c = lock(&state);
                    due.into_iter().map(|(j, mode)| c.request(j, mode)).collect()
                }
                text = socket::next_text(&mut ws) => {
                    let Some(text) = text else { break };
                    // Cursors come every ping interval, changes or not: they do not end a quiet spell.
                    if !text.starts_with(r#"{"event":"cursor""#) {
                        ctl.frames.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut c = lock(&state);
                    let mut out = Vec::new();
                    for action in c.on_frame(&text, &ctl) {
                        match action {
                            Action::Now(j, mode) => out.push(c.request(j, mode)),
                            Action::Later(j, mode) => later.push((tokio::time::Instant::now() + Duration::from_millis(500), j, mode)),
                        }
                    }
                    out
                }
            };
            for text in out {
                sent_ok &= socket::send(&mut ws, text).await.is_ok();
            }
        }
        // An abrupt drop: no close handshake, as when a phone loses its network.
        drop(ws);
        lock(&state).dropped(clock::now_micros());
        match end {
            End::Finish => return,
            End::Dropped => {
                let (lo, hi) = params.offline_ms;
                let offline = lo + ((hi.saturating_sub(lo)) as f64 * rng.unit()) as u64;
                {
                    let mut c = lock(&state);
                    c.audit.drops += 1;
                    c.offline_ms.push(offline);
                }
                tokio::select! {
                    () = ctl.finish.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(offline)) => {}
                }
            }
            End::Lost => {
                lock(&state).audit.server_closes += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A reference client: one live subscription, never dropped; every `message` frame's arrival
/// (unix µs), bytes and deltas, and the view those deltas build.
pub struct Reference {
    pub channel: usize,
    pub filtered: bool,
    key: Option<String>,
    pub frames: Vec<(u64, u64, u64)>,
    view: View,
}

impl Reference {
    /// Bytes and deltas of its frames that arrived in [from, to).
    fn between(&self, from: u64, to: u64) -> (u64, u64) {
        let start = self.frames.partition_point(|f| f.0 < from);
        let end = self.frames.partition_point(|f| f.0 < to);
        self.frames[start..end.max(start)].iter().fold((0, 0), |(b, d), f| (b + f.1, d + f.2))
    }
}

/// Connects the reference of (channel, filtered) and subscribes it (live only).
pub async fn reference(
    params: &Params,
    (channel, filtered): (usize, bool),
    n: usize,
) -> anyhow::Result<(socket::Ws, Reference)> {
    let base = &params.ws[n % params.ws.len()];
    let mut ws = socket::connect(base, &params.app, &params.secret, &format!("ref{n}")).await?;
    let mut data = json!({"channel": Shape::channel(channel)});
    if filtered {
        data["filters"] = Shape::filter();
    }
    socket::send(&mut ws, json!({"event": "subscribe", "data": data}).to_string()).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), socket::next_text(&mut ws))
        .await?
        .ok_or_else(|| anyhow::anyhow!("reference closed while subscribing"))?;
    let frame: Value = serde_json::from_str(&answer)?;
    anyhow::ensure!(frame["event"] == "subscribed", "reference subscribe refused: {answer}");
    let key = frame["data"]["channel"].as_str().map(str::to_string);
    Ok((ws, Reference { channel, filtered, key, frames: Vec::new(), view: View::default() }))
}

/// Records the reference's frames until `finish`.
pub async fn record(mut ws: socket::Ws, state: Arc<Mutex<Reference>>, ctl: Arc<Control>) {
    loop {
        let text = tokio::select! {
            () = ctl.finish.cancelled() => return,
            t = socket::next_text(&mut ws) => match t { Some(t) => t, None => return },
        };
        let now = clock::now_micros();
        ctl.frames.fetch_add(1, Ordering::Relaxed);
        let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
        if frame["event"] != "message" {
            continue;
        }
        let mut r = state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut deltas = 0;
        let key = r.key.clone().unwrap_or_default();
        for kind in ["new", "updated", "deleted"] {
            for d in frame["data"][kind].as_array().into_iter().flatten() {
                deltas += 1;
                if d["subscriptions"].as_array().is_some_and(|s| s.iter().any(|k| k == key.as_str())) {
                    r.view.delta(kind, d);
                }
            }
        }
        r.frames.push((now, text.len() as u64, deltas));
    }
}

/// The churners and references of a run.
pub struct Fleet {
    pub clients: Vec<Arc<Mutex<Client>>>,
    pub references: Vec<Arc<Mutex<Reference>>>,
}

impl Fleet {
    pub fn new(shape: &Shape) -> Fleet {
        let clients =
            (0..shape.clients).map(|i| Arc::new(Mutex::new(Client::new(i, &shape.subscriptions(i))))).collect();
        Fleet { clients, references: Vec::new() }
    }

    /// Every churner online with each subscription whole.
    pub fn settled(&self) -> usize {
        self.clients.iter().filter(|c| lock(c).settled()).count()
    }

    /// Churners and references whose views match `expected` (a quick test while draining).
    pub fn matching(&self, expected: &Expected) -> (usize, usize) {
        let churners = self.clients.iter().filter(|c| lock(c).check(expected).wrong() == 0).count();
        let references = self
            .references
            .iter()
            .filter(|r| {
                let r = r.lock().unwrap_or_else(PoisonError::into_inner);
                reference_audit(&r, expected).wrong() == 0
            })
            .count();
        (churners, references)
    }
}

fn reference_audit(r: &Reference, expected: &Expected) -> ClientAudit {
    let mut probe = Client::new(usize::MAX, &[(r.channel, r.filtered)]);
    if let Some(sub) = probe.subs.first_mut() {
        sub.view.objects.clone_from(&r.view.objects);
        sub.view.counts = r.view.counts;
    }
    let mut a = probe.check(expected);
    a.gaps = r.view.gaps();
    a
}

/// Totals over the churners.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub lost: u64,
    pub missing: u64,
    pub stale: u64,
    pub ghosts: u64,
    pub ahead: u64,
    pub duplicates_applied: u64,
    pub duplicates_dropped: u64,
    pub gaps: u64,
    pub drops: u64,
    pub resumes: u64,
    pub resyncs: u64,
    pub resync_frames: u64,
    pub snapshots: u64,
    pub unavailable: u64,
    pub other_errors: u64,
    pub server_closes: u64,
    pub connect_failures: u64,
    pub catchup_bytes: u64,
    pub catchup_entries: u64,
    pub replay_bytes: u64,
    pub replay_deltas: u64,
    /// catchup_bytes / replay_bytes over the periods ended by a resume.
    pub catchup_to_replay: f64,
    pub resync_snapshot_bytes: u64,
    pub resync_replay_bytes: u64,
    pub initial_snapshot_bytes: u64,
    pub settle_bytes: u64,
    pub live_bytes: u64,
}

/// Milliseconds at a few quantiles.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Spread {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

fn spread(values: &[u64]) -> anyhow::Result<Spread> {
    let mut h = Histogram::new()?;
    for v in values {
        h.record(v.saturating_mul(1000));
    }
    let l = Latency::of(&h);
    Ok(Spread { count: l.samples, p50: l.p50_ms, p99: l.p99_ms, max: l.max_ms })
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnOutcome {
    pub scenario: String,
    pub target: String,
    pub machine: String,
    pub clients: usize,
    pub subs_per_client: usize,
    pub channels: usize,
    pub filtered_fraction: f64,
    pub rate_wanted: u64,
    pub duration_s: f64,
    pub churn_every_s: f64,
    pub offline_ms: (u64, u64),
    pub changes_sent: u64,
    pub changes_per_s: f64,
    pub objects_live_at_end: usize,
    /// Seconds from the end of the load until every view matched (or the drain bound).
    pub drain_s: f64,
    pub all_matched: bool,
    pub totals: Totals,
    pub clients_with_loss: usize,
    pub clients_with_duplicates_applied: usize,
    pub clients_with_gaps: usize,
    /// Per-client spread: resumes, and catch-up/replay byte ratio.
    pub resumes_per_client: Spread,
    pub catchup_ms: Spread,
    pub snapshot_ms: Spread,
    pub cursor_age_ms: Spread,
    pub offline_ms_actual: Spread,
    pub references: usize,
    pub references_wrong: u64,
    pub reference_audits: Vec<ClientAudit>,
    pub per_client: Vec<ClientAudit>,
    pub errors: Vec<String>,
    pub processes: Vec<ProcessUse>,
}

/// The audit of a run: per client (replay costs included), totals, the references.
pub struct Audited {
    pub clients: Vec<ClientAudit>,
    pub totals: Totals,
    pub references: Vec<ClientAudit>,
    pub extra: Extra,
}

/// The per-client audits, replay costs included, and the totals.
pub fn audit(fleet: &Fleet, expected: &Expected) -> Audited {
    let refs: HashMap<(usize, bool), std::sync::MutexGuard<'_, Reference>> = fleet
        .references
        .iter()
        .map(|r| {
            let g = r.lock().unwrap_or_else(PoisonError::into_inner);
            ((g.channel, g.filtered), g)
        })
        .collect();
    let (mut audits, mut t, mut extra) = (Vec::new(), Totals::default(), Extra::default());
    for c in &fleet.clients {
        let c = lock(c);
        let mut a = c.check(expected);
        for sub in &c.subs {
            for p in &sub.periods {
                let (bytes, deltas) =
                    refs.get(&(sub.channel, sub.filtered)).map_or((0, 0), |r| r.between(p.from_us, p.to_us));
                if p.resumed {
                    a.catchup_bytes += p.catchup_bytes;
                    a.catchup_entries += p.catchup_entries;
                    a.replay_bytes += bytes;
                    a.replay_deltas += deltas;
                } else {
                    a.resync_snapshot_bytes += p.snapshot_bytes + p.catchup_bytes;
                    a.resync_replay_bytes += bytes;
                }
            }
        }
        extra.catchup_ms.extend(&c.catchup_ms);
        extra.snapshot_ms.extend(&c.snapshot_ms);
        extra.cursor_age_ms.extend(&c.cursor_age_ms);
        extra.offline_ms.extend(&c.offline_ms);
        extra.resumes.push(a.resumes);
        for e in &c.errors {
            if extra.errors.len() < 20 {
                extra.errors.push(format!("client {}: {e}", c.index));
            }
        }
        add(&mut t, &a);
        audits.push(a);
    }
    t.lost = t.missing + t.stale;
    t.catchup_to_replay = t.catchup_bytes as f64 / t.replay_bytes.max(1) as f64;
    let references = refs.values().map(|r| reference_audit(r, expected)).collect();
    Audited { clients: audits, totals: t, references, extra }
}

/// Raw samples gathered over every client.
#[derive(Default)]
pub struct Extra {
    pub catchup_ms: Vec<u64>,
    pub snapshot_ms: Vec<u64>,
    pub cursor_age_ms: Vec<u64>,
    pub offline_ms: Vec<u64>,
    pub resumes: Vec<u64>,
    pub errors: Vec<String>,
}

impl Extra {
    pub fn spreads(&self) -> anyhow::Result<[Spread; 5]> {
        Ok([
            spread(&self.resumes)?,
            spread(&self.catchup_ms)?,
            spread(&self.snapshot_ms)?,
            spread(&self.cursor_age_ms)?,
            spread(&self.offline_ms)?,
        ])
    }
}

fn add(t: &mut Totals, a: &ClientAudit) {
    t.missing += a.missing;
    t.stale += a.stale;
    t.ghosts += a.ghosts;
    t.ahead += a.ahead;
    t.duplicates_applied += a.duplicates_applied;
    t.duplicates_dropped += a.duplicates_dropped;
    t.gaps += a.gaps;
    t.drops += a.drops;
    t.resumes += a.resumes;
    t.resyncs += a.resyncs;
    t.resync_frames += a.resync_frames;
    t.snapshots += a.snapshots;
    t.unavailable += a.unavailable;
    t.other_errors += a.other_errors;
    t.server_closes += a.server_closes;
    t.connect_failures += a.connect_failures;
    t.catchup_bytes += a.catchup_bytes;
    t.catchup_entries += a.catchup_entries;
    t.replay_bytes += a.replay_bytes;
    t.replay_deltas += a.replay_deltas;
    t.resync_snapshot_bytes += a.resync_snapshot_bytes;
    t.resync_replay_bytes += a.resync_replay_bytes;
    t.initial_snapshot_bytes += a.initial_snapshot_bytes;
    t.settle_bytes += a.settle_bytes;
    t.live_bytes += a.live_bytes;
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

impl ChurnOutcome {
    pub fn failed(&self) -> bool {
        self.totals.lost + self.totals.ghosts + self.totals.ahead + self.totals.duplicates_applied > 0
    }

    pub fn markdown(&self) -> String {
        let t = &self.totals;
        let mut s = format!(
            "### {} ({})\n\n{} churning clients × {} subscriptions over {} channels ({:.0} % filtered); {} changes/s wanted \
             for {:.0} s ({} sent, {:.0}/s); a drop every {:.1} s on average per client, offline {}-{} ms; {}\n\n",
            self.scenario,
            self.target,
            self.clients,
            self.subs_per_client,
            self.channels,
            self.filtered_fraction * 100.0,
            self.rate_wanted,
            self.duration_s,
            self.changes_sent,
            self.changes_per_s,
            self.churn_every_s,
            self.offline_ms.0,
            self.offline_ms.1,
            self.machine
        );
        s.push_str(&format!(
            "End state ({} live objects; every view {} after {:.1} s of drain):\n\n",
            self.objects_live_at_end,
            if self.all_matched { "matched" } else { "did NOT match" },
            self.drain_s
        ));
        s.push_str("| lost (missing + stale) | ghosts | dup applied | dup received, dropped | gaps left | clients with loss | references wrong |\n");
        s.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
        s.push_str(&format!(
            "| {} ({} + {}) | {} | {} | {} | {} | {} | {} of {} |\n\n",
            t.lost,
            t.missing,
            t.stale,
            t.ghosts,
            t.duplicates_applied,
            t.duplicates_dropped,
            t.gaps,
            self.clients_with_loss,
            self.references_wrong,
            self.references
        ));
        s.push_str("| drops | resumes | RESYNC_REQUIRED | resync_required | snapshots | catch-up bytes | replay bytes | ratio | catch-up entries | missed deltas |\n");
        s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} |\n\n",
            t.drops,
            t.resumes,
            t.resyncs,
            t.resync_frames,
            t.snapshots,
            kib(t.catchup_bytes),
            kib(t.replay_bytes),
            t.catchup_to_replay,
            t.catchup_entries,
            t.replay_deltas
        ));
        let sp = |x: &Spread| format!("{} / {} / {} ms (n={})", x.p50, x.p99, x.max, x.count);
        s.push_str(&format!(
            "Resume subscribe → `catchup_end` p50/p99/max: {}; snapshot subscribe → `snapshot_end`: {}; cursor age at \
             resume: {}; offline: {}. Resumes per client p50 {} max {}. Bytes: initial snapshots {}, snapshots after \
             RESYNC_REQUIRED {} (replay would have been {}), settle catch-ups {}, live deltas {}. Errors: {} UNAVAILABLE, \
             {} other; {} server-side closes; {} failed connects.\n\n",
            sp(&self.catchup_ms),
            sp(&self.snapshot_ms),
            sp(&self.cursor_age_ms),
            sp(&self.offline_ms_actual),
            self.resumes_per_client.p50,
            self.resumes_per_client.max,
            kib(t.initial_snapshot_bytes),
            kib(t.resync_snapshot_bytes),
            kib(t.resync_replay_bytes),
            kib(t.settle_bytes),
            kib(t.live_bytes),
            t.unavailable,
            t.other_errors,
            t.server_closes,
            t.connect_failures
        ));
        let bad: Vec<&ClientAudit> = self.per_client.iter().filter(|a| a.wrong() + a.gaps > 0).take(20).collect();
        if !bad.is_empty() {
            s.push_str("Clients that ended wrong (first 20): \n\n");
            for a in bad {
                s.push_str(&format!(
                    "- client {}: missing {}, stale {}, ghosts {}, ahead {}, dup applied {}, gaps {}, resumes {}, resyncs {}\n",
                    a.client, a.missing, a.stale, a.ghosts, a.ahead, a.duplicates_applied, a.gaps, a.resumes, a.resyncs
                ));
            }
            s.push('\n');
        }
        for a in self.reference_audits.iter().filter(|a| a.wrong() + a.gaps > 0).take(10) {
            s.push_str(&format!(
                "- reference: missing {}, stale {}, ghosts {}, ahead {}, gaps {}\n",
                a.missing, a.stale, a.ghosts, a.ahead, a.gaps
            ));
        }
        for e in self.errors.iter().take(10) {
            s.push_str(&format!("- error: {e}\n"));
        }
        s.push_str("\n| process | CPU s | cores | RSS start | RSS peak | RSS end |\n|---|---:|---:|---:|---:|---:|\n");
        for p in &self.processes {
            s.push_str(&format!(
                "| {} | {:.1} | {:.2} | {} MiB | {} MiB | {} MiB |\n",
                p.name,
                p.cpu_seconds,
                p.cores,
                p.rss_start_kib / 1024,
                p.rss_peak_kib / 1024,
                p.rss_end_kib / 1024
            ));
        }
        s
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_state_follows_deletes_and_the_filter() {
        let mut objects = std::collections::BTreeMap::new();
        let f = |channel, score, version, deleted| Final { channel, score, version, deleted };
        objects.insert("r-1".to_string(), f(0, 10, 3, false));
        objects.insert("r-2".to_string(), f(0, 70, 1, false));
        objects.insert("r-3".to_string(), f(0, 70, 2, true));
        objects.insert("r-4".to_string(), f(1, 70, 1, false));
        let e = expected(&objects, &[(0, false), (0, true)]);
        let mut all: Vec<_> = e[&(0, false)].keys().cloned().collect();
        all.sort();
        assert_eq!(all, ["r-1", "r-2"]);
        assert_eq!(e[&(0, true)].keys().collect::<Vec<_>>(), ["r-2"]);
        assert!(!e.contains_key(&(1, false)), "nobody subscribes to channel 1");
    }

    #[test]
    fn a_resume_answers_the_offline_period_and_cursors_wait_for_it() {
        let ctl = Control::default();
        let mut c = Client::new(0, &[(0, false)]);
        c.epoch = 1;
        let _ = c.request(0, Mode::Resume);
        assert!(matches!(c.subs[0].phase, Phase::Syncing { mode: Mode::Snapshot, .. }), "no cursor yet");
        c.on_frame(r#"{"event":"subscribed","data":{"channel":"k"}}"#, &ctl);
        c.on_frame(
            r#"{"event":"snapshot","data":{"channel":"k","objects":[{"object":{"id":"r-1","score":5},"version":2}]}}"#,
            &ctl,
        );
        c.on_frame(r#"{"event":"snapshot_end","data":{"channel":"k","cursor":"1.100","count":1}}"#, &ctl);
        assert_eq!(c.subs[0].cursor.as_ref().map(|x| x.0.as_str()), Some("1.100"));
        c.dropped(1_000);
        c.epoch = 2;
        let text = c.request(0, Mode::Resume);
        assert!(text.contains(r#""resume":"1.100""#), "{text}");
        // A cursor frame before the catch-up ended must not replace the cursor.
        c.on_frame(r#"{"event":"cursor","data":{"cursor":"1.999"}}"#, &ctl);
        c.on_frame(r#"{"event":"subscribed","data":{"channel":"k"}}"#, &ctl);
        c.on_frame(r#"{"event":"cursor","data":{"cursor":"1.999"}}"#, &ctl);
        assert_eq!(c.subs[0].cursor.as_ref().map(|x| x.0.as_str()), Some("1.100"));
        c.on_frame(r#"{"event":"catchup","data":{"channel":"k","objects":[{"object":{"id":"r-1","score":9},"version":3}],"deleted":[]}}"#, &ctl);
        c.on_frame(r#"{"event":"catchup_end","data":{"channel":"k","cursor":"1.200","count":1}}"#, &ctl);
        assert_eq!(c.subs[0].cursor.as_ref().map(|x| x.0.as_str()), Some("1.200"));
        c.on_frame(r#"{"event":"cursor","data":{"cursor":"1.300"}}"#, &ctl);
        assert_eq!(c.subs[0].cursor.as_ref().map(|x| x.0.as_str()), Some("1.300"));
        let p = c.subs[0].periods[0];
        assert!(p.resumed && p.from_us == 1_000 && p.catchup_entries == 1 && p.catchup_bytes > 0);
        assert_eq!(c.audit.resumes, 1);
        // A refused resume: a snapshot at once, and the period ends resynced.
        c.dropped(5_000);
        c.epoch = 3;
        let _ = c.request(0, Mode::Resume);
        let actions =
            c.on_frame(r#"{"event":"error","data":{"code":"RESYNC_REQUIRED","message":"old","channel":"k"}}"#, &ctl);
        assert!(matches!(actions.as_slice(), [Action::Now(0, Mode::Snapshot)]));
        assert_eq!(c.audit.resyncs, 1);
        let mut e = Expected::new();
        e.insert((0, false), [("r-1".to_string(), (3, 9))].into_iter().collect());
        assert_eq!(c.check(&e).wrong(), 0);
    }
}
