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
