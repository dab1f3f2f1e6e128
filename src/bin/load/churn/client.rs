//! One churning client's state: its subscriptions' views, cursors and offline periods, and how
//! each frame of the protocol changes them.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

pub(super) use super::expect::{expected, ClientAudit, Expected};
use super::Control;
use crate::plan::Shape;
use crate::view::View;
use nexxus_worker::model::clock;
use std::sync::atomic::Ordering;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Snapshot,
    Resume,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
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

pub(super) struct Sub {
    pub(super) channel: usize,
    pub(super) filtered: bool,
    pub(super) key: Option<String>,
    pub(super) view: View,
    /// The latest cursor and when it arrived.
    pub(super) cursor: Option<(String, Instant)>,
    /// The connection on which its last snapshot or resume completed.
    pub(super) complete_epoch: u64,
    pub(super) phase: Phase,
    /// The offline period in progress (started by a drop, ended by a completed sync).
    pub(super) open: Option<Period>,
    pub(super) periods: Vec<Period>,
}

/// One client's state, shared with the run (which checks progress while draining).
pub struct Client {
    pub(super) index: usize,
    pub(super) subs: Vec<Sub>,
    pub(super) online: bool,
    pub(super) epoch: u64,
    /// Subscribes sent on this connection and not answered yet, in order.
    pub(super) inflight: VecDeque<(usize, Mode)>,
    pub(super) audit: ClientAudit,
    /// Milliseconds: resume subscribe → `catchup_end`; snapshot subscribe → `snapshot_end`;
    /// age of the cursor sent with a resume; offline time of each drop.
    pub(super) catchup_ms: Vec<u64>,
    pub(super) snapshot_ms: Vec<u64>,
    pub(super) cursor_age_ms: Vec<u64>,
    pub(super) offline_ms: Vec<u64>,
    pub(super) errors: Vec<String>,
}

/// What a frame asks of the task: subscribes to send now, or after a pause.
pub(super) enum Action {
    Now(usize, Mode),
    Later(usize, Mode),
}

impl Client {
    pub(super) fn new(index: usize, subs: &[(usize, bool)]) -> Client {
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
    pub(super) fn request(&mut self, j: usize, mode: Mode) -> String {
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
    pub(super) fn dropped(&mut self, now_us: u64) {
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
    pub(super) fn on_frame(&mut self, text: &str, ctl: &Control) -> Vec<Action> {
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
    pub(super) fn check(&self, expected: &Expected) -> ClientAudit {
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

    pub(super) fn settled(&self) -> bool {
        self.online && self.subs.iter().all(|s| s.phase == Phase::Live)
    }
}

pub(super) fn lock(c: &Mutex<Client>) -> std::sync::MutexGuard<'_, Client> {
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Final;

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
