//! Latency histograms that merge across client processes, and the result: JSON for machines,
//! a Markdown table for BENCHMARKS.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Log-linear buckets of microseconds: exact below 64 µs, then 32 buckets per power of two
/// (at most ~3 % error), so millions of samples cost a few hundred counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Histogram {
    counts: BTreeMap<u32, u64>,
    max: u64,
    total: u64,
}

const SUB: u32 = 32;

fn bucket(v: u64) -> u32 {
    if v < 64 {
        return v as u32;
    }
    let exp = 63 - v.leading_zeros(); // >= 6
    let frac = ((v >> (exp - 5)) & u64::from(SUB - 1)) as u32;
    64 + (exp - 6) * SUB + frac
}

fn lower_bound(b: u32) -> u64 {
    if b < 64 {
        return u64::from(b);
    }
    let exp = (b - 64) / SUB + 6;
    let frac = u64::from((b - 64) % SUB);
    (1u64 << exp) + (frac << (exp - 5))
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        *self.counts.entry(bucket(micros)).or_default() += 1;
        self.max = self.max.max(micros);
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (b, n) in &other.counts {
            *self.counts.entry(*b).or_default() += n;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (lower bound of its bucket), in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return lower_bound(*b).min(self.max);
            }
        }
        self.max
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

/// One worker process over the measured window.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessUse {
    pub name: String,
    pub pid: u32,
    pub cpu_seconds: f64,
    /// CPU seconds per wall second: 1.0 is one core busy.
    pub cores: f64,
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram) -> Latency {
        let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
        Latency {
            samples: h.count(),
            p50_ms: ms(h.quantile(0.5)),
            p90_ms: ms(h.quantile(0.9)),
            p99_ms: ms(h.quantile(0.99)),
            p999_ms: ms(h.quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub target: String,
    pub machine: String,
    pub clients: usize,
    pub channels: usize,
    pub subs_per_client: usize,
    pub filtered_fraction: f64,
    pub rate_wanted: u64,
    pub duration_s: f64,
    pub changes_sent: u64,
    pub changes_per_s: f64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub deliveries_per_s: f64,
    pub lost: u64,
    pub duplicates: u64,
    /// Deliveries nobody should have had (a filter or routing error).
    pub unexpected: u64,
    pub clients_with_loss: usize,
    pub clients_with_duplicates: usize,
    pub latency: Latency,
    pub processes: Vec<ProcessUse>,
    /// Idle runs: worker RSS per connection, KiB.
    pub idle_kib_per_connection: Option<f64>,
}

impl Outcome {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### {} ({})\n\n{} clients × {} subscriptions over {} channels ({:.0} % filtered); wanted {} changes/s for {:.0} s; {}\n\n",
            self.scenario,
            self.target,
            self.clients,
            self.subs_per_client,
            self.channels,
            self.filtered_fraction * 100.0,
            self.rate_wanted,
            self.duration_s,
            self.machine
        );
        s.push_str("| changes/s | deliveries/s | expected | received | lost | dup | unexpected | p50 | p90 | p99 | p99.9 | max |\n");
        s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let l = &self.latency;
        s.push_str(&format!(
            "| {:.0} | {:.0} | {} | {} | {} | {} | {} | {} ms | {} ms | {} ms | {} ms | {} ms |\n\n",
            self.changes_per_s,
            self.deliveries_per_s,
            self.deliveries_expected,
            self.deliveries_received,
            self.lost,
            self.duplicates,
            self.unexpected,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms
        ));
        if let Some(kib) = self.idle_kib_per_connection {
            s.push_str(&format!("Idle: {kib:.2} KiB of worker RSS per connection.\n\n"));
        }
        s.push_str("| process | CPU s | cores | RSS start | RSS peak | RSS end |\n|---|---:|---:|---:|---:|---:|\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.04, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        let mut other = Histogram::default();
        other.record(5);
        h.merge(&other);
        assert_eq!(h.count(), 100_001);
        assert_eq!(bucket(63), 63);
        assert_eq!(lower_bound(bucket(64)), 64);
        assert!(lower_bound(bucket(1_000_000)) <= 1_000_000);
    }
}
