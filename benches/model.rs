//! Core model micro-benchmarks: the per-change hot paths of the aggregation, writer and
//! transport-manager workers. Results and the command are in BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nexxus_worker::model::schema::Application;
use nexxus_worker::model::{
    affected_channels, split_push, AggregatorMessage, ChangeEvent, ChangeOp, ChannelKey, DeliveryBatch, Delta, DeltaOp,
    Filter, RawTransportMessage, StoredObject, DEFAULT_PUSH_LIMIT,
};
use nexxus_worker::registry::Routes;
use nexxus_worker::transport::ws::protocol;
use nexxus_worker::workers::transport_manager::{plan, FilterCache, RouteTable};
use serde_json::{json, Map, Value};

const UPDATE: &[u8] = br#"{"op":"update","patches":[
  {"op":"increment","path":"task/0b7c6f5e-1d2a-8c3b-9a4d-5e6f7a8b9c0d/votes","value":1,"user_id":"u1"},
  {"op":"replace","path":"task/0b7c6f5e-1d2a-8c3b-9a4d-5e6f7a8b9c0d/title","value":"Write the benchmarks","user_id":"u1"}],
  "application_id":"app1","timestamp":1700000000000001}"#;

fn object() -> Map<String, Value> {
    let v = json!({"id":"0b7c6f5e-1d2a-8c3b-9a4d-5e6f7a8b9c0d","type":"task","context_id":"c1",
        "application_id":"app1","user_id":"u1","project_id":"p1","owner_id":"u2",
        "title":"Write the benchmarks","status":"open","votes":41,"priority":3,
        "tags":["perf","model"],"created":1700000000,"modified":1700000000});
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn app() -> Application {
    Application::from_json(
        br#"{"id":"app1","schema":{"task":{"belongsTo":[{"parentModel":"project"},{"parentModel":"board"}],
            "write_acl":8,"author_fields":["owner_id"]}}}"#,
    )
    .expect("valid app")
}

fn filter_20() -> Filter {
    // 20 conditions of every operator, nested two levels, as an author-scoped query would be.
    Filter::parse(&json!({"and":[
        {"is":{"application_id":"app1","context_id":"c1"}},
        {"or":[{"is":{"user_id":"u9"}},{"is":{"owner_id":"u2"}},{"in_array":{"tags":["x","model"]}}]},
        {"range":{"votes":{"gte":10,"lt":1000},"priority":{"lte":5}}},
        {"like":{"title":"bench","status":"op"}},
        {"not":{"is":{"status":"archived"}}},
        {"exists":{"field":"project_id"}},
        {"or":[{"and":[{"is":{"type":"task"}},{"range":{"created":{"gt":0}}}]},{"is":{"type":"note"}}]},
        {"in_array":{"status":["open","doing"]}},
        {"not":{"like":{"title":"draft"}}},
        {"is":{"project_id":"p1"}},
        {"exists":"modified"},
        {"range":{"modified":{"gte":1600000000}}}
    ]}))
    .expect("valid filter")
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("model");

    g.throughput(Throughput::Bytes(UPDATE.len() as u64));
    g.bench_function("decode_update", |b| b.iter(|| AggregatorMessage::decode(black_box(UPDATE)).expect("valid")));
    g.throughput(Throughput::Elements(1));

    let stored = StoredObject { object: object(), version: 7, last_applied: None };
    let Ok(AggregatorMessage::Update(update)) = AggregatorMessage::decode(UPDATE) else {
        panic!("bench input must decode")
    };
    g.bench_function("apply_2_patches", |b| {
        b.iter(|| stored.apply(black_box(&update.patches), 1_700_000_001, None).expect("applies"))
    });

    let app = app();
    let obj = object();
    g.bench_function("affected_channels", |b| {
        b.iter(|| affected_channels("app1", black_box(&obj), &app.schema).expect("known model"))
    });

    let simple = Filter::parse(&json!({"and":[{"is":{"status":"open"}}]})).expect("valid");
    let big = filter_20();
    assert!(big.matches(&obj), "the 20-clause filter should match and so run in full");
    g.bench_function("filter_eval_simple", |b| b.iter(|| black_box(&simple).matches(black_box(&obj))));
    g.bench_function("filter_eval_20_clauses", |b| b.iter(|| black_box(&big).matches(black_box(&obj))));
    g.bench_function("filter_key_suffix_20_clauses", |b| b.iter(|| black_box(&big).key_suffix()));

    let batch: DeliveryBatch = (0..20)
        .map(|i| Delta {
            op: [DeltaOp::Create, DeltaOp::Update, DeltaOp::Delete][i % 3],
            object: Some(obj.clone()),
            patch: None,
            subscriptions: Vec::new(),
            application_id: "app1".into(),
            timestamp: 1,
            version: i as u64,
        })
        .collect();
    g.bench_function("split_push_20_deltas", |b| b.iter(|| split_push(black_box(&batch), DEFAULT_PUSH_LIMIT)));
    g.finish();
    fan_out(c);
}

/// One update of an object on three channels (one filtered) held by `n` devices over two
/// socket transports and APNs, in four holding patterns: 24 transport messages.
fn fan_out_input(n: usize) -> (ChangeEvent, Routes) {
    let obj = object();
    let mut after = obj.clone();
    after.insert("votes".into(), json!(42));
    let channels: Vec<ChannelKey> = ["blg:app1:context:c1:task", "blg:app1:task", "blg:app1:project:p1:task"]
        .into_iter()
        .map(|k| ChannelKey::from_stored(k.into()))
        .collect();
    let filtered = channels[0].with_filter(&filter_20()).as_str().to_string();
    let patches = json!([{"op":"increment","path":"task/0b7c6f5e-1d2a-8c3b-9a4d-5e6f7a8b9c0d/votes","value":1}]);
    let event = ChangeEvent {
        application_id: "app1".into(),
        op: ChangeOp::Update,
        model: "task".into(),
        id: "0b7c6f5e-1d2a-8c3b-9a4d-5e6f7a8b9c0d".into(),
        before: Some(obj),
        after: Some(after),
        patches: serde_json::from_value(patches).expect("valid patches"),
        version: 8,
        timestamp: 1_700_000_000_000_001,
        channels: channels.clone(),
        broadcast: false,
        ephemeral: false,
    };
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    let transports = ["sockets_transport-0", "sockets_transport-1", "ios_transport"];
    for d in 0..n {
        let device = format!("{}|device-{d:06}|token-{d:06}|app1", transports[d % 3]);
        let held: &[&str] = match d % 4 {
            0 => &[channels[0].as_str()],
            1 => &[channels[0].as_str(), channels[1].as_str()],
            2 => &[channels[2].as_str()],
            _ => &[filtered.as_str()],
        };
        for key in held {
            members.entry((*key).to_string()).or_default().push(device.clone());
        }
    }
    let filtered_index = HashMap::from([(channels[0].as_str().to_string(), vec![filtered])]);
    (event, Routes { members, filtered: filtered_index, round_trips: 1 })
}

/// The transport manager's hot path for one change: `plan`, the produced records, and the
/// sockets transport turning each of its records into the frame every connection shares.
fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out");
    for n in [100, 1000, 10_000] {
        let (event, routes) = fan_out_input(n);
        let mut filters = FilterCache::default();
        g.throughput(Throughput::Elements(n as u64));
        // A batch of one change: the routes' per-channel work is part of each iteration.
        g.bench_function(format!("plan_encode_frame_{n}_devices"), |b| {
            b.iter_batched(
                || RouteTable::new(routes.clone()),
                |mut table| {
                    let mut frames = 0;
                    for planned in plan(black_box(&event), &mut table, &mut filters).expect("plans") {
                        if planned.destination.starts_with("sockets_transport") {
                            let received = RawTransportMessage::decode(&planned.payload).expect("decodes");
                            frames += protocol::message(received.message).len();
                        }
                    }
                    frames
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(model, benches);
criterion_main!(model);
