//! The audit of a churn run and its report.

use std::collections::HashMap;
use std::sync::{MutexGuard, PoisonError};

use serde::Serialize;

use super::client::{lock, ClientAudit, Expected};
use super::reference::{reference_audit, Fleet, Reference};
use crate::report::{Histogram, Latency, ProcessUse};

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
    let refs: HashMap<(usize, bool), MutexGuard<'_, Reference>> = fleet
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
        s.push('\n');
        s.push_str(&crate::report::process_table(&self.processes));
        s
    }
}
