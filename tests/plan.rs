//! The transport manager's `plan` without servers: which devices get which delivery, in how many
//! messages, and the bytes of those messages (each delivery serialised once, the same bytes a
//! decoded `TransportMessage` serialises to).

use std::collections::{BTreeMap, HashMap};

use nexxus_worker::model::{ChangeEvent, ChangeOp, ChannelKey, Filter, RawTransportMessage, TransportMessage};
use nexxus_worker::registry::Routes;
use nexxus_worker::workers::transport_manager::{plan, FilterCache, Planned};
use serde_json::{json, Map, Value};

const A: &str = "blg:app1:context:c1:task";
const B: &str = "blg:app1:task";
const C: &str = "blg:app1:project:p1:task";

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn filtered(base: &str, filter: Value) -> String {
    ChannelKey::from_stored(base.into()).with_filter(&Filter::parse(&filter).unwrap()).as_str().to_string()
}

fn event() -> ChangeEvent {
    ChangeEvent {
        application_id: "app1".into(),
        op: ChangeOp::Update,
        model: "task".into(),
        id: "t1".into(),
        before: Some(obj(json!({"id":"t1","type":"task","status":"open","votes":1}))),
        after: Some(obj(json!({"id":"t1","type":"task","status":"open","votes":2}))),
        patches: serde_json::from_value(json!([
            {"op":"increment","path":"task/t1/votes","value":1,"user_id":"u1"},
            {"op":"replace","path":"task/t1/status","value":"open"}
        ]))
        .unwrap(),
        version: 9,
        timestamp: 100,
        channels: [A, B, C].into_iter().map(|k| ChannelKey::from_stored(k.into())).collect(),
        broadcast: false,
    }
}

/// The `updated` deltas of `event()` as a device holding `subscriptions` receives them.
fn updated(subscriptions: &[&str]) -> Value {
    let delta = |patch: Value, timestamp: u64, version: u64| {
        json!({"op":"update","patch":patch,"subscriptions":subscriptions,"application_id":"app1",
               "timestamp":timestamp,"version":version})
    };
    json!({"new":[],"updated":[
        delta(json!({"op":"increment","path":"task/t1/votes","value":1}), 100, 8),
        delta(json!({"op":"replace","path":"task/t1/status","value":"open"}), 101, 9)
    ],"deleted":[]})
}

fn device(transport: &str, id: &str) -> String {
    format!("{transport}|{id}|tok-{id}|app1")
}

/// Plans with `members` (channel key → devices) and returns, per message: destination,
/// device ids, the delivery as JSON; checking on the way that every message is the bytes of
/// its decoded form and that the sockets transport reads the delivery's own bytes from it.
fn run(members: &[(&str, Vec<String>)], filtered_of_a: &[String]) -> Vec<(String, Vec<String>, Value)> {
    let mut routes = Routes { members: HashMap::new(), filtered: HashMap::new(), round_trips: 1 };
    for (key, devices) in members {
        let mut devices = devices.clone();
        devices.sort();
        routes.members.insert((*key).to_string(), devices);
    }
    if !filtered_of_a.is_empty() {
        routes.filtered.insert(A.to_string(), filtered_of_a.to_vec());
    }
    let mut out = Vec::new();
    for Planned { destination, devices, payload } in plan(&event(), &routes, &mut FilterCache::default()).unwrap() {
        let decoded: TransportMessage = serde_json::from_slice(&payload).unwrap();
        assert_eq!(serde_json::to_vec(&decoded).unwrap(), payload, "the bytes a decoded message serialises to");
        assert_eq!((decoded.object_id.as_str(), decoded.version, decoded.timestamp), ("t1", 9, 100));
        assert!(!decoded.broadcast);
        assert_eq!(devices, decoded.devices.len());
        let raw = RawTransportMessage::decode(&payload).unwrap();
        assert_eq!(raw.message.get(), serde_json::to_string(&decoded.message).unwrap());
        let ids = decoded.devices.iter().map(|r| r.device_id.clone()).collect();
        for r in &decoded.devices {
            assert_eq!(r.token, format!("tok-{}", r.device_id));
        }
        out.push((destination, ids, serde_json::to_value(&decoded.message).unwrap()));
    }
    out
}

#[test]
fn devices_with_one_delivery_share_a_message_per_destination() {
    let stay = filtered(A, json!({"and":[{"is":{"status":"open"}}]}));
    let none = filtered(A, json!({"and":[{"is":{"status":"closed"}}]}));
    let members = [
        (
            A,
            vec![
                device("sockets_transport-0", "d1"),
                device("sockets_transport-0", "d2"),
                device("sockets_transport-1", "d3"),
                device("sockets_transport-0", "d4"),
                "sockets_transport-0|d7|tok-d7|other".to_string(),
                "not a device".to_string(),
            ],
        ),
        (B, vec![device("sockets_transport-0", "d4"), device("ios_transport", "d8")]),
        (stay.as_str(), vec![device("sockets_transport-0", "d6")]),
        (none.as_str(), vec![device("ios_transport", "d5")]),
    ];
    let mut got = run(&members, &[none.clone(), stay.clone()]);
    got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let expected = vec![
        ("ios_transport".to_string(), vec!["d8".to_string()], updated(&[B])),
        ("sockets_transport-0".into(), vec!["d1".into(), "d2".into()], updated(&[A])),
        ("sockets_transport-0".into(), vec!["d4".into()], updated(&[A, B])),
        ("sockets_transport-0".into(), vec!["d6".into()], updated(&[stay.as_str()])),
        ("sockets_transport-1".into(), vec!["d3".into()], updated(&[A])),
    ];
    assert_eq!(got, expected, "d5's filter is left by nobody and entered by nobody; d7 and a bad string are skipped");
}

#[test]
fn a_delivery_to_many_devices_is_chunked_and_each_chunk_carries_the_same_bytes() {
    let many: Vec<String> = (0..1201).map(|i| device("sockets_transport-0", &format!("d{i:04}"))).collect();
    let got = run(&[(A, many), (B, vec![device("android_transport", "x")])], &[]);
    let sizes: BTreeMap<&str, Vec<usize>> = got.iter().fold(BTreeMap::new(), |mut m, (d, ids, _)| {
        m.entry(d.as_str()).or_default().push(ids.len());
        m
    });
    assert_eq!(sizes, BTreeMap::from([("android_transport", vec![1]), ("sockets_transport-0", vec![500, 500, 201])]));
    let sockets: Vec<&Value> = got.iter().filter(|m| m.0 == "sockets_transport-0").map(|m| &m.2).collect();
    assert!(sockets.iter().all(|d| **d == updated(&[A])));
    let listed: Vec<&String> = got.iter().filter(|m| m.0 == "sockets_transport-0").flat_map(|m| &m.1).collect();
    assert!(listed.windows(2).all(|w| w[0] < w[1]) && listed.len() == 1201, "each device once, in order");
}
