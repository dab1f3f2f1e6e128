//! Routing cost against the real Redis registry: how many changes per second the transport
//! manager can route, and how many Redis round trips each costs, as the total number of
//! subscriptions grows while the number of devices matching each change stays fixed.
//!
//! Layout: `--subs N` subscriptions over N/10 context channels; each channel has 9 plain
//! subscribers and 1 filtered one (10 % filtered), the filters drawn from 1,000 distinct ones.
//! Each change updates an object of a random context, so it matches 9-10 devices whatever N is.
//! Per batch of `--batch` changes: one pipelined `route` lookup, then `plan` per change (filter
//! evaluation, per-device narrowing, grouping, JSON encoding) — everything the role does except
//! the Kafka produce.
//!
//!     cargo run --release --example bench_routing -- --subs 100000 --changes 20000
#![allow(clippy::disallowed_methods)] // a benchmark harness, not the worker: it reads its settings from the environment

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt};
use nexxus_worker::model::{ChangeEvent, ChangeOp, Channel, DeviceAddress, Filter, Transport};
use nexxus_worker::registry::Registry;
use nexxus_worker::workers::transport_manager::{plan, FilterCache, RouteTable};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (subs, changes, batch) = (arg("--subs", 100_000), arg("--changes", 20_000), arg("--batch", 100));
    let url = std::env::var("TP_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".into());
    let registry = Registry::connect(&url).await?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let app = format!("rb{nanos}");
    let channels = (subs / 10).max(1);
    let filters: Vec<Filter> = (0..1000)
        .map(|k| Filter::parse(&json!({"and": [{"is": {"status": format!("s{k}")}}]})))
        .collect::<Result<_, _>>()?;
    let channel = |c: usize| Channel { model: "task".into(), context: Some(format!("c{c}")), ..Channel::default() };

    // Populate through the registry's own subscribe (one pipelined round per call), 256 at once.
    let started = Instant::now();
    let jobs = (0..channels).flat_map(|c| (0..10).map(move |j| (c, j)));
    let results: Vec<anyhow::Result<()>> = stream::iter(jobs)
        .map(|(c, j)| {
            let (registry, app, filters) = (&registry, &app, &filters);
            async move {
                let filter = (j == 9).then(|| &filters[c % filters.len()]);
                let key = channel(c).key(app, filter)?;
                let device = format!("d{c}_{j}");
                let address = DeviceAddress {
                    transport: Transport::Ios,
                    device_id: device.clone(),
                    token: format!("tok{c}_{j}"),
                    application_id: app.clone(),
                };
                registry.subscribe(app, &device, &key, &[address]).await?;
                Ok(())
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let populate = started.elapsed();

    // Route `changes` updates in batches.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    let events: Vec<ChangeEvent> = (0..changes)
        .map(|n| {
            let c = next() % channels;
            let status = |k: usize| format!("s{}", k % 1000);
            // Half the changes move the object into the filtered subscriber's filter (enter),
            // half keep it outside (none): both paths are exercised.
            let (before, after) = if n % 2 == 0 { (status(c + 1), status(c)) } else { (status(c + 1), status(c + 2)) };
            let object =
                |s: String| json!({"id": format!("o{n}"), "type": "task", "context_id": format!("c{c}"), "status": s});
            ChangeEvent {
                application_id: app.clone(),
                op: ChangeOp::Update,
                model: "task".into(),
                id: format!("o{n}"),
                before: object(before).as_object().cloned(),
                after: object(after).as_object().cloned(),
                patches: serde_json::from_value(
                    json!([{"op": "replace", "path": format!("task/o{n}/status"), "value": "x"}]),
                )
                .unwrap_or_default(),
                version: 2,
                timestamp: 1,
                channels: vec![channel(c).key(&app, None).expect("valid channel")],
                broadcast: false,
                ephemeral: false,
            }
        })
        .collect();
    let mut cache = FilterCache::default();
    let (mut round_trips, mut messages, mut recipients, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        let keys: Vec<_> = chunk.iter().flat_map(|e| e.channels.iter().cloned()).collect();
        let routes = registry.route(&keys).await?;
        round_trips += routes.round_trips as u64;
        let mut table = RouteTable::new(routes);
        for event in chunk {
            for planned in plan(event, &mut table, &mut cache).map_err(|e| anyhow::anyhow!("{e}"))? {
                messages += 1;
                recipients += planned.devices as u64;
                bytes += planned.payload.len() as u64;
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "| {subs} | {channels} | {:.1} s | {changes} | {:.0} | {:.3} | {:.1} | {:.1} | {:.0} | {:.1} |",
        populate.as_secs_f64(),
        changes as f64 / elapsed.as_secs_f64(),
        round_trips as f64 / changes as f64,
        recipients as f64 / changes as f64,
        messages as f64 / changes as f64,
        bytes as f64 / messages.max(1) as f64,
        elapsed.as_secs_f64() * 1e6 / changes as f64,
    );

    // Clean up every key this run made (the registry is shared with tests).
    let client = redis::Client::open(url.as_str())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    for c in 0..channels {
        let mut pipe = redis::pipe();
        let base = channel(c).key(&app, None)?;
        pipe.del(base.as_str()).ignore();
        pipe.del(channel(c).key(&app, Some(&filters[c % filters.len()]))?.as_str()).ignore();
        pipe.del(format!("blg:{app}:filters|{}", base.as_str())).ignore();
        for j in 0..10 {
            pipe.del(format!("blg:{app}:device:d{c}_{j}:subscriptions")).ignore();
        }
        pipe.query_async::<()>(&mut con).await?;
    }
    Ok(())
}
