//! Latency histograms that merge across client processes, and the result: JSON for machines,
//! a Markdown table for BENCHMARKS.md.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::{AdditionError, CreationError};
use serde::{Deserialize, Serialize};

use crate::ledger::{Audit, Sample};

/// Clients with a loss, duplicate or unexpected delta listed in the result at most.
pub const PROBLEMS: usize = 100;

/// The slowest latency told apart: a delivery later than this is counted at this bound, since an
/// outlier beyond it means a stalled run, not a figure to report.
const HIGHEST_US: u64 = 600_000_000;
/// Three significant digits: quantiles within 0.1 % of the recorded value.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Latencies in microseconds. It crosses from a client process to the parent inside the JSON
/// report as HdrHistogram's V2 encoding in base64, so the parent merges exact counts.
#[derive(Clone, Debug)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Histogram {
    pub fn new() -> Result<Histogram, CreationError> {
        hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS).map(Histogram)
    }

    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros);
    }

    pub fn merge(&mut self, other: &Histogram) -> Result<(), AdditionError> {
        self.0.add(&other.0)
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q`, in microseconds (0 when nothing was recorded).
    pub fn quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    pub fn max(&self) -> u64 {
        self.0.max()
    }
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        V2Serializer::new().serialize(&self.0, &mut bytes).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Histogram, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        Deserializer::new().deserialize(&mut bytes.as_slice()).map(Histogram).map_err(serde::de::Error::custom)
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
    /// Clients that lost, got twice or got unexpectedly a delta (the first [`PROBLEMS`]).
    pub problems: Vec<ClientProblem>,
    /// Which deltas: object, version, when sent and received (a few of each kind per client process).
    pub samples: Vec<Sample>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientProblem {
    pub client: usize,
    #[serde(flatten)]
    pub audit: Audit,
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
        if !self.samples.is_empty() {
            s.push_str(&format!(
                "{} clients with losses, {} with duplicates; samples (object/version: sent → received, unix µs):\n\n",
                self.clients_with_loss, self.clients_with_duplicates
            ));
            for x in self.samples.iter().take(30) {
                s.push_str(&format!(
                    "- {:?} client {} object {} v{}: {} → {:?}\n",
                    x.kind,
                    x.client,
                    x.object,
                    x.version,
                    x.sent_us.map_or_else(|| "never sent".to_string(), |t| t.to_string()),
                    x.received_us
                ));
            }
            s.push('\n');
        }
        if let Some(kib) = self.idle_kib_per_connection {
            s.push_str(&format!("Idle: {kib:.2} KiB of worker RSS per connection.\n\n"));
        }
        s.push_str(&crate::report::process_table(&self.processes));
        s
    }
}

/// The Markdown table of the processes watched during a run: CPU and RSS.
pub fn process_table(processes: &[ProcessUse]) -> String {
    let mut s =
        String::from("| process | CPU s | cores | RSS start | RSS peak | RSS end |\n|---|---:|---:|---:|---:|---:|\n");
    for p in processes {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_three_significant_digits() -> Result<(), Box<dyn std::error::Error>> {
        let mut h = Histogram::new()?;
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want <= 0.001, "q{q}: {got} vs {want}");
        }
        assert!(h.max().abs_diff(100_000) <= 100, "max {}", h.max());
        assert_eq!(h.count(), 100_000);
        // Below 2048 µs every value has its own bucket.
        let mut small = Histogram::new()?;
        small.record(0);
        small.record(1_234);
        assert_eq!((small.quantile(0.5), small.max()), (0, 1_234));
        Ok(())
    }

    #[test]
    fn an_empty_histogram_reports_zero() -> Result<(), Box<dyn std::error::Error>> {
        let l = Latency::of(&Histogram::new()?);
        assert_eq!((l.samples, l.p50_ms, l.p999_ms, l.max_ms), (0, 0.0, 0.0, 0.0));
        Ok(())
    }

    #[test]
    fn an_outlier_beyond_the_range_is_clamped_not_lost() -> Result<(), Box<dyn std::error::Error>> {
        let mut h = Histogram::new()?;
        h.record(10);
        h.record(u64::MAX);
        assert_eq!(h.count(), 2);
        assert!(h.max().abs_diff(HIGHEST_US) <= HIGHEST_US / 1000, "max {}", h.max());
        Ok(())
    }

    #[test]
    fn client_histograms_merge_through_the_json_report() -> Result<(), Box<dyn std::error::Error>> {
        let (mut fast, mut slow) = (Histogram::new()?, Histogram::new()?);
        for v in 0..900u64 {
            fast.record(1_000 + v);
        }
        for v in 0..100u64 {
            slow.record(50_000 + v);
        }
        let json = serde_json::to_string(&slow)?;
        assert!(json.starts_with('"'), "a base64 string inside the report: {json}");
        let back: Histogram = serde_json::from_str(&json)?;
        assert_eq!((back.count(), back.max()), (slow.count(), slow.max()));
        fast.merge(&back)?;
        assert_eq!(fast.count(), 1_000);
        assert!(fast.quantile(0.9) < 2_000, "the 900th of 1000 is still fast: {}", fast.quantile(0.9));
        assert!(fast.quantile(0.91) >= 50_000, "the 910th is slow: {}", fast.quantile(0.91));
        let l = Latency::of(&fast);
        assert_eq!(l.samples, 1_000);
        assert!((l.max_ms - 50.1).abs() <= 0.1, "max {} ms", l.max_ms);
        assert!(serde_json::from_str::<Histogram>("\"not base64!\"").is_err());
        Ok(())
    }
}
