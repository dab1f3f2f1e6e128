//! What the benchmark examples read about a worker process, and a minimal HTTP GET.

/// Resident set size from `/proc/<pid>/status`, in KiB (0 if unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid` in clock ticks (1/100 s on Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    let (user, system) = cpu_split_ticks(pid);
    user + system
}

/// A process's (user, system) CPU in clock ticks: for a server whose cost is mostly its
/// sockets, system time is the kernel's share and user time its own code's.
pub fn cpu_split_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0);
    (field(11), field(12))
}

/// The whole response (headers and body) of `GET path` on 127.0.0.1:`port`.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The upper bound (in the metric's unit) of the bucket holding quantile `q` of the Prometheus
/// histogram `name` in the text `metrics`, over the series whose labels contain `labels`
/// (summed); `None` without samples. A bucket bound, not an interpolation: it says "at most".
pub fn bucket_quantile(metrics: &str, name: &str, labels: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: std::collections::BTreeMap<u64, (f64, f64)> = std::collections::BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with(&prefix) && l.contains(labels)) {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        // Keyed by the bound's bits: positive floats order as their bits do.
        buckets.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += count;
    }
    let total = buckets.values().last()?.1;
    (total > 0.0).then(|| buckets.values().find(|(_, c)| *c >= q * total).map_or(f64::INFINITY, |(b, _)| *b))
}
