//! `bench_peers --report <dir>`: the Markdown side-by-side table of every `run-*.json` in a
//! directory, with medians, ranges and ratios to Centrifugo.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::Value;

use super::arg;

pub fn report(dir: &str) -> anyhow::Result<String> {
    let mut runs: Vec<Value> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.starts_with("run-") && name.ends_with(".json") {
            let text = std::fs::read_to_string(&path)?;
            runs.push(serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?);
        }
    }
    // (round, server) -> (fanout, idle)
    let mut rows: BTreeMap<(u64, String), (Option<Value>, Option<Value>)> = BTreeMap::new();
    for r in runs {
        let key = (r["round"].as_u64().unwrap_or(0), r["server"].as_str().unwrap_or("?").to_string());
        let slot = rows.entry(key).or_default();
        if r["mode"] == "fanout" {
            slot.0 = Some(r);
        } else {
            slot.1 = Some(r);
        }
    }
    let null = Value::Null;
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    let fmt = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    // The numeric columns, each: title, how to read it from (fanout, idle), digits.
    type Col = (&'static str, fn(&Value, &Value) -> Option<f64>, usize);
    let cols: Vec<Col> = vec![
        ("p50 ms", |a, _| a["latency_ms"]["p50"].as_f64(), 1),
        ("p90 ms", |a, _| a["latency_ms"]["p90"].as_f64(), 1),
        ("p99 ms", |a, _| a["latency_ms"]["p99"].as_f64(), 1),
        ("max ms", |a, _| a["latency_ms"]["max"].as_f64(), 1),
        ("publish s", |a, _| a["published_s"].as_f64(), 1),
        ("fan-out CPU s", |a, _| a["fanout_cpu_s"].as_f64(), 2),
        ("of which user s", |a, _| a["fanout_user_s"].as_f64(), 2),
        ("queued p99 ms", |a, _| a["stages_ms"]["queued_p99"].as_f64(), 0),
        ("store write max ms", |a, _| a["stages_ms"]["persist_max"].as_f64(), 0),
        ("RSS with clients MiB", |a, _| a["rss_connected_kib"].as_f64().map(|k| k / 1024.0), 1),
        ("idle KiB/conn", |_, b| b["idle_kib_per_conn"].as_f64(), 2),
        ("idle CPU µs/s per conn", |_, b| b["idle_cpu_us_per_conn_s"].as_f64(), 3),
        ("accept CPU µs/conn", |_, b| b["accept_cpu_us_per_conn"].as_f64(), 0),
    ];
    let mut md = String::new();
    let fan = rows.values().find_map(|(a, _)| a.clone()).unwrap_or(Value::Null);
    let idle = rows.values().find_map(|(_, b)| b.clone()).unwrap_or(Value::Null);
    md.push_str("# nexxus-worker vs Centrifugo: fan-out and idle connections\n\n");
    md.push_str(&format!(
        "Fan-out: {} clients on one channel, {} messages of one ~300-byte JSON object at {}/s. \
         Idle: {} subscribed connections held for {} s. Method: deploy/local/bench-peers.sh. \
         Each publication starts on schedule, answered or not; \"publish s\": time until the HTTP \
         API had answered every publication (the schedule is {} s); \
         \"fan-out CPU s\": server CPU from the first publication to the end of the drain \
         (\"of which user s\": outside the kernel); ours only, from its own histograms (bucket \
         bounds): \"queued p99 ms\", change timestamp to frames queued on the connections, and \
         \"store write max ms\", the slowest batch's SQLite write.\n\n",
        fan["clients"],
        fan["messages"],
        fan["rate"],
        idle["clients"],
        idle["idle_window_s"],
        (f(&fan, "messages").unwrap_or(0.0) - 1.0).max(0.0) / f(&fan, "rate").unwrap_or(1.0)
    ));
    md.push_str(
        "| round | server | deliveries received/expected | lost (clients) | duplicates (clients) | connect failed / closed early |",
    );
    for (title, _, _) in &cols {
        md.push_str(&format!(" {title} |"));
    }
    md.push_str(" load before fan-out / idle |\n|");
    for _ in 0..(7 + cols.len()) {
        md.push_str("---|");
    }
    md.push('\n');
    let mut per_server: BTreeMap<String, Vec<Vec<Option<f64>>>> = BTreeMap::new();
    for ((round, server), (a, b)) in &rows {
        let a = a.as_ref().unwrap_or(&null);
        let b = b.as_ref().unwrap_or(&null);
        let load =
            |v: &Value| v["load_before"].get(0).and_then(Value::as_f64).map_or("-".into(), |l| format!("{l:.2}"));
        md.push_str(&format!(
            "| {round} | {server} | {}/{} | {} ({}) | {} ({}) | {} / {} |",
            a["unique"],
            a["expected"],
            a["lost"],
            a["clients_with_loss"],
            a["duplicates"],
            a["clients_with_duplicates"],
            f(a, "connect_failed").unwrap_or(0.0) + f(b, "connect_failed").unwrap_or(0.0),
            f(a, "closed_early").unwrap_or(0.0) + f(b, "closed_early").unwrap_or(0.0),
        ));
        let values: Vec<Option<f64>> = cols.iter().map(|(_, get, _)| get(a, b)).collect();
        for (v, (_, _, d)) in values.iter().zip(&cols) {
            md.push_str(&format!(" {} |", fmt(*v, *d)));
        }
        md.push_str(&format!(" {} / {} |\n", load(a), load(b)));
        per_server.entry(server.clone()).or_default().push(values);
    }
    md.push_str("\n## Medians (and ranges) per server\n\n| server | rounds |");
    for (title, _, _) in &cols {
        md.push_str(&format!(" {title} |"));
    }
    md.push_str("\n|---|---|");
    for _ in &cols {
        md.push_str("---|");
    }
    md.push('\n');
    let mut medians: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for (server, rounds) in &per_server {
        md.push_str(&format!("| {server} | {} |", rounds.len()));
        let mut meds = Vec::new();
        for (c, (_, _, d)) in cols.iter().enumerate() {
            let mut vs: Vec<f64> = rounds.iter().filter_map(|r| r[c]).collect();
            vs.sort_by(f64::total_cmp);
            let med = if vs.is_empty() {
                None
            } else if vs.len() % 2 == 1 {
                Some(vs[vs.len() / 2])
            } else {
                Some((vs[vs.len() / 2 - 1] + vs[vs.len() / 2]) / 2.0)
            };
            meds.push(med);
            let range = match (vs.first(), vs.last()) {
                (Some(lo), Some(hi)) if vs.len() > 1 => format!(" ({lo:.d$}–{hi:.d$})"),
                _ => String::new(),
            };
            md.push_str(&format!(" {}{range} |", fmt(med, *d)));
        }
        md.push('\n');
        medians.insert(server.clone(), meds);
    }
    for ours in ["nexxus", "nexxus-broadcast"] {
        let (Some(n), Some(c)) = (medians.get(ours), medians.get("centrifugo")) else { continue };
        md.push_str(&format!("| **{ours}/centrifugo** | |"));
        for (a, b) in n.iter().zip(c) {
            let ratio = match (a, b) {
                (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}×", a / b),
                _ => "-".into(),
            };
            md.push_str(&format!(" {ratio} |"));
        }
        md.push('\n');
    }
    md.push_str("\n## Machine\n\n");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).map(str::trim);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    md.push_str(&format!(
        "- nproc: {cores}\n- CPU: {}\n- memory: {}\n",
        model.unwrap_or("unknown"),
        mem.unwrap_or("unknown")
    ));
    if let Some(versions) = arg("--versions") {
        for v in versions.split(';').filter(|v| !v.trim().is_empty()) {
            md.push_str(&format!("- {}\n", v.trim()));
        }
    }
    md.push_str(
        "- load before each run: the last column of the first table (1-minute load average); \
         raw results: run-*.json beside this file\n",
    );
    Ok(md)
}
