//! CPU and RSS of the worker processes under load, sampled once a second from `/proc`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(dead_code)] // the benchmark examples use all of it, this tool a part
#[path = "../../../examples/support/proc.rs"]
mod proc;

use crate::report::ProcessUse;

/// The `nexxus-worker` processes running a role (`-t`), named `<role>-<index>`, and what shares
/// the machine with them: the Kafka and Cassandra JVMs, Redis, and this tool with its clients.
pub fn discover() -> Vec<(String, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    let me = std::process::id();
    // The directory of this tool's binary: the workers measured are the ones built beside it.
    let ours = std::env::current_exe().ok().and_then(|p| Some(p.parent()?.to_string_lossy().into_owned()));
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let Some(exe) = args.first() else { continue };
        let flag = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).cloned();
        let has = |needle: &str| args.iter().any(|a| a.contains(needle));
        let name = if exe.ends_with("nexxus-worker") {
            // A worker of another build (another checkout's tests, a debug build) shares the
            // machine but is not the one measured: say so.
            let path = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned());
            let theirs = |dir: &str| !path.as_deref().unwrap_or(exe).starts_with(dir);
            let other = if ours.as_deref().is_some_and(theirs) { " (other build)" } else { "" };
            flag("-t").map(|role| format!("{role}-{}{other}", flag("-i").unwrap_or_else(|| "0".into())))
        } else if exe.ends_with("java") && has("kafka.Kafka") {
            Some("(kafka)".to_string())
        } else if exe.ends_with("java") && has("CassandraDaemon") {
            Some("(cassandra)".to_string())
        } else if exe.contains("redis-server") && !has("cluster") {
            Some(format!("(redis {})", exe.rsplit(' ').next().unwrap_or_default()))
        } else if exe.ends_with("nexxus-load") {
            Some(if pid == me { "(load tool)".to_string() } else { format!("(load clients {pid})") })
        } else {
            None
        };
        if let Some(name) = name {
            found.push((name, pid));
        }
    }
    found.sort();
    found
}

pub use proc::rss_kib;

struct Track {
    name: String,
    pid: u32,
    cpu_start: u64,
    rss_start: u64,
    rss_peak: u64,
}

/// Samples in a background thread until [`Watch::finish`].
pub struct Watch {
    tracks: Arc<Mutex<Vec<Track>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
}

impl Watch {
    pub fn start(processes: &[(String, u32)]) -> Watch {
        let tracks: Vec<Track> = processes
            .iter()
            .map(|(name, pid)| {
                let rss = proc::rss_kib(*pid);
                Track { name: name.clone(), pid: *pid, cpu_start: proc::cpu_ticks(*pid), rss_start: rss, rss_peak: rss }
            })
            .collect();
        let tracks = Arc::new(Mutex::new(tracks));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (t, s) = (tracks.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(mut tracks) = t.lock() {
                    for track in tracks.iter_mut() {
                        track.rss_peak = track.rss_peak.max(proc::rss_kib(track.pid));
                    }
                }
            }
        });
        Watch { tracks, stop, started: Instant::now() }
    }

    /// RSS now of every watched process, by name.
    pub fn rss_now(&self) -> Vec<(String, u64)> {
        let tracks = self.tracks.lock().map(|t| t.iter().map(|t| (t.name.clone(), t.pid)).collect::<Vec<_>>());
        tracks.unwrap_or_default().into_iter().map(|(n, pid)| (n, proc::rss_kib(pid))).collect()
    }

    pub fn finish(self) -> Vec<ProcessUse> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let wall = self.started.elapsed().as_secs_f64().max(0.001);
        let tracks = self.tracks.lock().map(|t| {
            t.iter().map(|t| (t.name.clone(), t.pid, t.cpu_start, t.rss_start, t.rss_peak)).collect::<Vec<_>>()
        });
        tracks
            .unwrap_or_default()
            .into_iter()
            .map(|(name, pid, cpu_start, rss_start, rss_peak)| {
                let cpu = proc::cpu_ticks(pid).saturating_sub(cpu_start) as f64 / 100.0;
                let rss_end = proc::rss_kib(pid);
                ProcessUse {
                    name,
                    pid,
                    cpu_seconds: cpu,
                    cores: (cpu / wall * 100.0).round() / 100.0,
                    rss_start_kib: rss_start,
                    rss_peak_kib: rss_peak.max(rss_end),
                    rss_end_kib: rss_end,
                }
            })
            .collect()
    }
}
