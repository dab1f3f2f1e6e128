//! A subscription's snapshot or catch-up (`docs/protocol.md`), sent on the connection that
//! asked, right after the subscription was made.
//!
//! Deliveries for the channel queue in the connection's mailbox meanwhile and are written after
//! `snapshot_end` / `catchup_end`: a client applies the state first, then the changes after it.
//! A writer routes a change before it stores it, so a change routed just before the subscription
//! existed and stored just after the snapshot (or resume catch-up) was read is in neither: one
//! catch-up, the settle, follows every snapshot and every resume a little later, queued through
//! the mailbox like a delivery. Without it after resumes, 200 clients churning on the distributed
//! layout ended with 19 objects lost (`make bench-churn`).

use std::sync::Arc;

use serde_json::json;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::conn::Stop;
use super::mailbox::Mailbox;
use super::pages::{Kind, Pager};
use super::protocol::{self as p, ErrorCode, Sync};
use super::shared::Shared;
use super::watch::Watch;
use super::wire::Wire;
use crate::model::snapshot::{resume_since, Cursor, Entry, CATCHUP_LIMIT};
use crate::model::{Channel, Filter};
use crate::store::MainStore;
use crate::transport::snapshot::ChannelRead;

/// The settle catch-up reaches back this far before the snapshot: the writers' clocks may be
/// behind this server's by up to it.
const SETTLE_SKEW_MS: u64 = 1_000;

/// A subscription just made that asked for more than live deltas.
pub struct SyncJob {
    /// Its channel key (filtered if it is), as `subscribed` names it.
    pub key: String,
    pub channel: Channel,
    pub filter: Option<Filter>,
    pub sync: Sync,
    /// Taken before the subscription was made.
    pub issued: Cursor,
}

/// What a sync leaves the connection with.
#[derive(Default)]
pub struct Synced {
    /// The subscription has a cursor: the connection is sent newer ones.
    pub resumable: bool,
    /// To be shown every frame the connection writes until the settle catch-up closes it.
    pub watch: Option<Arc<Watch>>,
}

/// Sends the answer to `job`'s subscribe and its snapshot or catch-up.
pub async fn run<W: Wire>(
    shared: &Shared,
    app: &str,
    ws: &mut W,
    mailbox: &Arc<Mailbox>,
    job: SyncJob,
) -> Result<Synced, Stop> {
    let mut out = Out { ws, mailbox, limit: shared.ping_interval, held: Default::default(), watch: None };
    if job.sync == Sync::Live {
        return out.write(p::subscribed("subscribed", &job.key)).await.map(|()| Synced::default());
    }
    // Raced against the connection's close: a client gone while it waits gives its place up.
    let turn = tokio::select! {
        biased;
        code = mailbox.closed() => return Err(Stop::Closed(code)),
        turn = shared.syncs.turn(app) => turn,
    };
    let Some(_turn) = turn else {
        return out
            .write(p::channel_error(ErrorCode::Unavailable, "snapshots are shut", &job.key))
            .await
            .map(|()| Synced::default());
    };
    let read = ChannelRead { store: &shared.store, app, channel: &job.channel, filter: job.filter.as_ref() };
    let synced = match &job.sync {
        Sync::Live => Synced::default(),
        Sync::Resume(_) | Sync::Snapshot => {
            let watch = Arc::new(Watch::new(&job.key, Default::default()));
            out.watch = Some(watch.clone());
            let sent = match &job.sync {
                Sync::Resume(cursor) => resume(&mut out, &shared.resume, &read, &job, cursor).await?,
                _ => snapshot(&mut out, &read, &job).await?,
            };
            if sent {
                let since = job.issued.0.saturating_sub(SETTLE_SKEW_MS);
                settle(shared, app, &job, since, mailbox.clone(), watch.clone());
            }
            Synced { resumable: sent, watch: sent.then_some(watch) }
        }
    };
    out.release().await?;
    Ok(synced)
}

/// Deliveries held aside while a snapshot or catch-up is written, at most: a client whose
/// channel delivers more than this meanwhile is too slow for it (4008), as a full queue would be.
const HELD_MAX: usize = 4096;

/// Writes to the connection, each write raced against its close signal and bounded in time.
/// Deliveries queued meanwhile are taken out of the mailbox and held (so a long snapshot on a busy
/// channel does not fill the connection's queue), and written after the sync's last frame.
struct Out<'a, W> {
    ws: &'a mut W,
    mailbox: &'a Mailbox,
    limit: std::time::Duration,
    held: std::collections::VecDeque<Utf8Bytes>,
    /// The snapshot's watch: the deliveries held are deliveries the client gets.
    watch: Option<Arc<Watch>>,
}

impl<W: Wire> Out<'_, W> {
    /// Writes a frame of the sync, after taking what was delivered meanwhile aside.
    async fn send(&mut self, frame: Utf8Bytes) -> Result<(), Stop> {
        while let Some(delivery) = self.mailbox.try_pop() {
            if self.held.len() >= HELD_MAX {
                crate::telemetry::sockets_queue_drops(1);
                return Err(Stop::Closed(p::CLOSE_TOO_SLOW));
            }
            if let Some(watch) = &self.watch {
                watch.saw(&delivery);
            }
            self.held.push_back(delivery);
        }
        self.write(frame).await
    }

    /// Writes the deliveries held during the sync, in their order.
    async fn release(&mut self) -> Result<(), Stop> {
        while let Some(delivery) = self.held.pop_front() {
            self.write(delivery).await?;
        }
        Ok(())
    }

    async fn write(&mut self, frame: Utf8Bytes) -> Result<(), Stop> {
        tokio::select! {
            biased;
            code = self.mailbox.closed() => Err(Stop::Closed(code)),
            sent = tokio::time::timeout(self.limit, self.ws.send_text(frame)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Stop::Gone),
                Err(_) => Err(Stop::Stuck),
            },
        }
    }
}

async fn snapshot<W: Wire>(out: &mut Out<'_, W>, read: &ChannelRead<'_>, job: &SyncJob) -> Result<bool, Stop> {
    let mut snapshot = read.snapshot();
    // The first page is read before answering, so a store that is down refuses the subscribe
    // (UNAVAILABLE, retried by the client) instead of breaking a snapshot half sent.
    let first = match snapshot.next(read).await {
        Ok(page) => page,
        Err(e) => {
            tracing::warn!(message = "snapshot refused: store unavailable", error = %e);
            out.send(p::channel_error(ErrorCode::Unavailable, &e.to_string(), &job.key)).await?;
            return Ok(false);
        }
    };
    out.send(p::subscribed("subscribed", &job.key)).await?;
    let mut pager = Pager::new(Kind::Snapshot, &job.key);
    let mut page = first;
    while let Some(objects) = page {
        for (object, version, changed_at) in &objects {
            // What changed around the subscribe is what the settle catch-up may bring again.
            if let (Some(watch), Some(id)) = (&out.watch, object.get("id").and_then(serde_json::Value::as_str)) {
                if changed_at.is_none_or(|at| at >= job.issued.0.saturating_sub(SETTLE_SKEW_MS)) {
                    watch.holds(id, *version);
                }
            }
            if let Some(frame) = pager.object(object, *version) {
                out.send(frame).await?;
            }
        }
        page = match snapshot.next(read).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(message = "snapshot broken off: store unavailable", error = %e);
                out.send(resync_required(&job.key, &format!("the snapshot broke off: {e}"))).await?;
                return Ok(false);
            }
        };
    }
    if let Some(frame) = pager.finish() {
        out.send(frame).await?;
    }
    crate::telemetry::sockets_snapshot(pager.total);
    out.send(p::sync_end("snapshot_end", &job.key, &job.issued.encode(), pager.total)).await?;
    Ok(true)
}

async fn resume<W: Wire>(
    out: &mut Out<'_, W>,
    cfg: &crate::config::ResumeConfig,
    read: &ChannelRead<'_>,
    job: &SyncJob,
    cursor: &str,
) -> Result<bool, Stop> {
    let refuse = |why: &str| p::channel_error(ErrorCode::ResyncRequired, why, &job.key);
    let since = match resume_since(cursor, job.issued.0, cfg.window, cfg.overlap) {
        Ok(since) => since,
        Err(why) => {
            out.send(refuse(why)).await?;
            return Ok(false);
        }
    };
    let entries = match read.changes(since, CATCHUP_LIMIT).await {
        Ok(Some(entries)) => entries,
        Ok(None) => {
            out.send(refuse("more objects changed since the cursor than a catch-up sends (10,000)")).await?;
            return Ok(false);
        }
        Err(e) => {
            out.send(p::channel_error(ErrorCode::Unavailable, &e.to_string(), &job.key)).await?;
            return Ok(false);
        }
    };
    out.send(p::subscribed("subscribed", &job.key)).await?;
    if let Some(watch) = &out.watch {
        for entry in &entries {
            let (id, version) = match entry {
                Entry::State { object, version } => (object.get("id").and_then(serde_json::Value::as_str), *version),
                Entry::Gone { id, version, .. } => (Some(id.as_str()), *version),
            };
            if let Some(id) = id {
                watch.holds(id, version);
            }
        }
    }
    let (frames, total) = catchup_frames(&job.key, &entries);
    for frame in frames {
        out.send(frame).await?;
    }
    crate::telemetry::sockets_catchup(total);
    out.send(p::sync_end("catchup_end", &job.key, &job.issued.encode(), total)).await?;
    Ok(true)
}

fn catchup_frames(key: &str, entries: &[crate::model::snapshot::Entry]) -> (Vec<Utf8Bytes>, usize) {
    let mut pager = Pager::new(Kind::Catchup, key);
    let mut frames: Vec<Utf8Bytes> = entries.iter().filter_map(|e| pager.entry(e)).collect();
    frames.extend(pager.finish());
    (frames, pager.total)
}

/// Whether the client already holds what `entry` says (the settle leaves it out).
fn covered(watch: &Watch, entry: &Entry) -> bool {
    match entry {
        Entry::State { object, version } => {
            object.get("id").and_then(serde_json::Value::as_str).is_some_and(|id| watch.covers(id, *version))
        }
        Entry::Gone { id, version, .. } => watch.covers(id, *version),
    }
}

/// `{"event":"resync_required","data":{"channel","message"}}`: what the client holds for the
/// channel may be incomplete (a snapshot or settle that broke off); it subscribes with a snapshot.
fn resync_required(key: &str, message: &str) -> Utf8Bytes {
    let text =
        json!({"event": "resync_required", "data": {"channel": key, "code": "RESYNC_REQUIRED", "message": message}});
    Utf8Bytes::from(text.to_string())
}

/// The catch-up after a snapshot, `settle` later, through the mailbox (after whatever was
/// delivered meanwhile). Its own task: the connection's loop goes on.
fn settle(shared: &Shared, app: &str, job: &SyncJob, since: u64, mailbox: Arc<Mailbox>, watch: Arc<Watch>) {
    let (store, delay): (MainStore, _) = (shared.store.clone(), shared.resume.settle);
    let (app, key, channel, filter) = (app.to_owned(), job.key.clone(), job.channel.clone(), job.filter.clone());
    let shared_gate = shared.syncs.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if mailbox.is_closing() {
            watch.close();
            return;
        }
        let Some(_turn) = shared_gate.turn(&app).await else { return };
        let issued = Cursor(u64::try_from(crate::model::clock::now_millis()).unwrap_or_default());
        let read = ChannelRead { store: &store, app: &app, channel: &channel, filter: filter.as_ref() };
        let frames = match read.changes(since, CATCHUP_LIMIT).await {
            Ok(Some(mut entries)) => {
                entries.retain(|entry| !covered(&watch, entry));
                let (mut frames, total) = catchup_frames(&key, &entries);
                frames.push(p::sync_end("catchup_end", &key, &issued.encode(), total));
                frames
            }
            Ok(None) => vec![resync_required(&key, "too many changes while the snapshot was sent")],
            Err(e) => vec![resync_required(&key, &format!("the catch-up after the snapshot failed: {e}"))],
        };
        watch.close();
        for frame in frames {
            if !mailbox.push(frame) {
                crate::telemetry::sockets_queue_drops(1);
                mailbox.close(p::CLOSE_TOO_SLOW);
                return;
            }
        }
    });
}
