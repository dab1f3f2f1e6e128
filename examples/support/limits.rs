//! What the dependency-limit benchmarks (`bench_raw_kafka`, `bench_raw_cql`) share: their
//! arguments, latency summaries, and the CPU that processes used over a measured window.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Linux reports `/proc/<pid>/stat` times in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// The value after `--name`, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    arg_text(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The text after `--name`, if given.
pub fn arg_text(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A name no earlier run used (topics, groups, keyspaces).
pub fn unique() -> String {
    format!("{}", now_micros())
}

/// Microseconds from 1 µs to 10 minutes at 3 significant digits (0.1 % error).
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// p50 / p99 / max (and mean) of a microsecond histogram, in milliseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
        "mean_ms": (h.mean() / 10.0).round() / 100.0,
    })
}

/// User + system CPU of some processes over a window, as cores used (1.0 = one core busy).
pub struct CpuWindow {
    started: Instant,
    start: Vec<(String, u32, u64)>,
}

impl CpuWindow {
    /// Starts the window for `(name, pid)`; pid 0 means "not measured" and reports null.
    pub fn start(pids: &[(&str, u32)]) -> Self {
        let start = pids.iter().map(|&(n, pid)| (n.to_string(), pid, crate::proc::cpu_ticks(pid))).collect();
        CpuWindow { started: Instant::now(), start }
    }

    /// `{name: cores}` since `start`, and the window's length in seconds.
    pub fn cores(&self) -> Value {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let mut out = Map::new();
        for (name, pid, before) in &self.start {
            let cores = if *pid == 0 {
                Value::Null
            } else {
                let used = crate::proc::cpu_ticks(*pid).saturating_sub(*before) as f64 / TICKS_PER_SECOND;
                json!((used / seconds * 100.0).round() / 100.0)
            };
            out.insert(name.clone(), cores);
        }
        out.insert("window_s".into(), json!((seconds * 10.0).round() / 10.0));
        Value::Object(out)
    }
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`.
pub fn load_average() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loads: Vec<f64> = text.split_whitespace().take(3).filter_map(|v| v.parse().ok()).collect();
    json!(loads)
}
