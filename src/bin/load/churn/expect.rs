//! What each subscription must hold at the end, and a client's audit against it.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::ledger::Final;
use crate::plan::THRESHOLD;

/// (channel, filtered) → id → (version, score) every subscription of it must end holding.
pub type Expected = HashMap<(usize, bool), HashMap<String, (u64, u32)>>;

/// What every subscription must hold once everything sent is applied.
pub fn expected(objects: &BTreeMap<String, Final>, subs: &[(usize, bool)]) -> Expected {
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
