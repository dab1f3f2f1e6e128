//! The transport manager's `plan` without servers: which devices get which delivery, in how many
//! messages, and the bytes of those messages (each delivery serialised once, the same bytes a
//! decoded `TransportMessage` serialises to); and a sockets transport with many devices
//! addressed by channel, whose narrowing gives each device the bytes a device list would.

use std::collections::{BTreeMap, HashMap};

use nexxus_worker::model::members::{sockets_index, MembersDigest};
use nexxus_worker::model::{ChangeEvent, ChangeOp, ChannelKey, Filter, RawTransportMessage, TransportMessage};
use nexxus_worker::registry::Routes;
use nexxus_worker::transport::ws::channels::Narrowing;
use nexxus_worker::workers::transport_manager::{plan, FilterCache, Planned, RouteTable, SOCKETS_BY_CHANNEL_MIN};
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
        ephemeral: false,
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
    planned(&event(), members, filtered_of_a).into_iter().map(|m| (m.destination, m.devices, m.delivery)).collect()
}

/// One planned message, decoded.
struct Message {
    destination: String,
    devices: Vec<String>,
    channels: Vec<(String, MembersDigest)>,
    delivery: Value,
    /// The delivery's own bytes, as a sockets transport reads them.
    raw: String,
}

fn planned(event: &ChangeEvent, members: &[(&str, Vec<String>)], filtered_of_a: &[String]) -> Vec<Message> {
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
    let mut table = RouteTable::new(routes);
    for Planned { destination, devices, channels, payload } in
        plan(event, &mut table, &mut FilterCache::default()).unwrap()
    {
        let decoded: TransportMessage = serde_json::from_slice(&payload).unwrap();
        assert_eq!(serde_json::to_vec(&decoded).unwrap(), payload, "the bytes a decoded message serialises to");
        assert_eq!((decoded.object_id.as_str(), decoded.version, decoded.timestamp), ("t1", event.version, 100));
        assert!(!decoded.broadcast);
        assert_eq!((devices, channels), (decoded.devices.len(), decoded.channels.len()));
        assert!(decoded.devices.is_empty() || decoded.channels.is_empty(), "by devices or by channels, not both");
        let raw = RawTransportMessage::decode(&payload).unwrap();
        assert_eq!(raw.message.get(), serde_json::to_string(&decoded.message).unwrap());
        let ids = decoded.devices.iter().map(|r| r.device_id.clone()).collect();
        for r in &decoded.devices {
            assert_eq!(r.token, format!("tok-{}", r.device_id));
        }
        out.push(Message {
            destination,
            devices: ids,
            channels: decoded.channels.into_iter().map(|c| (c.key, c.members)).collect(),
            delivery: serde_json::to_value(&decoded.message).unwrap(),
            raw: raw.message.get().to_string(),
        });
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
    let many: Vec<String> = (0..1201).map(|i| device("android_transport", &format!("d{i:04}"))).collect();
    let got = run(&[(A, many), (B, vec![device("ios_transport", "x")])], &[]);
    let sizes: BTreeMap<&str, Vec<usize>> = got.iter().fold(BTreeMap::new(), |mut m, (d, ids, _)| {
        m.entry(d.as_str()).or_default().push(ids.len());
        m
    });
    assert_eq!(sizes, BTreeMap::from([("android_transport", vec![500, 500, 201]), ("ios_transport", vec![1])]));
    let android: Vec<&Value> = got.iter().filter(|m| m.0 == "android_transport").map(|m| &m.2).collect();
    assert!(android.iter().all(|d| **d == updated(&[A])));
    let listed: Vec<&String> = got.iter().filter(|m| m.0 == "android_transport").flat_map(|m| &m.1).collect();
    assert!(listed.windows(2).all(|w| w[0] < w[1]) && listed.len() == 1201, "each device once, in order");
}

/// The digest of `key`'s members on sockets transport `index`, as a transport computes it.
fn digest(members: &[(&str, Vec<String>)], key: &str, index: u32) -> MembersDigest {
    let of_key = members.iter().filter(|(k, _)| *k == key).flat_map(|(_, m)| m);
    MembersDigest::of(of_key.filter(|m| sockets_index(m) == Some(index)).map(String::as_str))
}

#[test]
fn many_devices_on_one_sockets_transport_get_one_message_naming_the_channels() {
    let stay = filtered(A, json!({"and":[{"is":{"status":"open"}}]}));
    let many = |n: usize, prefix: &str| -> Vec<String> {
        (0..n).map(|i| device("sockets_transport-0", &format!("{prefix}{i:03}"))).collect()
    };
    let mut on_a = many(1200, "a");
    on_a.extend(many(3, "ab"));
    on_a.push("sockets_transport-0|old|earlier-life|app1".into());
    on_a.push(device("sockets_transport-1", "x1"));
    on_a.push(device("ios_transport", "i1"));
    let mut on_b = many(3, "ab");
    on_b.push(device("sockets_transport-1", "x1"));
    let members = [(A, on_a), (B, on_b), (stay.as_str(), many(2, "s")), (C, vec![])];
    let got = planned(&event(), &members, std::slice::from_ref(&stay));
    let to_0: Vec<&Message> = got.iter().filter(|m| m.destination == "sockets_transport-0").collect();
    assert_eq!(to_0.len(), 1, "one message for 1,205 devices");
    let m = to_0[0];
    assert!(m.devices.is_empty());
    let expected: Vec<(String, MembersDigest)> =
        [A, stay.as_str(), B].iter().map(|k| (k.to_string(), digest(&members, k, 0))).collect();
    assert_eq!(m.channels, expected, "every carrying channel with members there, with their digest on index 0");
    assert_eq!(m.delivery, updated(&[A, stay.as_str(), B]), "the delivery of a device holding all of them");
    assert!(m.raw.len() < 2_000, "the message does not grow with the audience: {} bytes", m.raw.len());
    // Index 1 (one device) and the push device keep their lists.
    let mut rest: Vec<(&str, &[String], &Value)> = got
        .iter()
        .filter(|m| m.destination != "sockets_transport-0")
        .map(|m| (m.destination.as_str(), m.devices.as_slice(), &m.delivery))
        .collect();
    rest.sort_by_key(|r| r.0);
    let (x1, i1) = (["x1".to_string()], ["i1".to_string()]);
    assert_eq!(
        rest,
        vec![("ios_transport", &i1[..], &updated(&[A])), ("sockets_transport-1", &x1[..], &updated(&[A, B]))]
    );
}

#[test]
fn below_the_threshold_a_sockets_transport_gets_device_lists() {
    let n = SOCKETS_BY_CHANNEL_MIN - 1;
    let devices: Vec<String> = (0..n).map(|i| device("sockets_transport-0", &format!("d{i:03}"))).collect();
    let got = planned(&event(), &[(A, devices.clone())], &[]);
    assert_eq!(got.iter().map(|m| (m.devices.len(), m.channels.len())).collect::<Vec<_>>(), vec![(n, 0)]);
    let mut devices = devices;
    devices.push(device("sockets_transport-0", "one-more"));
    let got = planned(&event(), &[(A, devices)], &[]);
    assert_eq!(got.iter().map(|m| (m.devices.len(), m.channels.len())).collect::<Vec<_>>(), vec![(0, 1)]);
}

/// `event()` with the status moving from open to closed: a filter on `open` is left
/// (`deleted`), one on `closed` entered (`new`), the unfiltered channels see `updated`.
fn closing() -> ChangeEvent {
    let mut e = event();
    e.after = Some(obj(json!({"id":"t1","type":"task","status":"closed","votes":2})));
    e.patches = serde_json::from_value(json!([{"op":"replace","path":"task/t1/status","value":"closed"}])).unwrap();
    e
}

/// For every set of channels a device can hold, a device on index 0 (addressed by channel,
/// narrowed by the transport) receives the very bytes a device on index 1 (listed) does:
/// filters entered and left, unfiltered channels, and their combinations.
#[test]
fn a_channel_addressed_delivery_narrows_to_the_bytes_a_device_list_carries() {
    let open = filtered(A, json!({"and":[{"is":{"status":"open"}}]}));
    let closed = filtered(A, json!({"and":[{"is":{"status":"closed"}}]}));
    let held: [&[&str]; 6] = [
        &[A],
        &[B],
        &[open.as_str()],
        &[closed.as_str()],
        &[A, closed.as_str()],
        &[A, B, open.as_str(), closed.as_str()],
    ];
    for event in [event(), closing()] {
        let mut members: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (g, keys) in held.iter().enumerate() {
            for key in keys.iter() {
                let on = members.entry(key).or_default();
                on.extend((0..10).map(|i| device("sockets_transport-0", &format!("g{g}n{i}"))));
                on.push(device("sockets_transport-1", &format!("g{g}")));
            }
        }
        let members: Vec<(&str, Vec<String>)> = members.into_iter().collect();
        let got = planned(&event, &members, &[open.clone(), closed.clone()]);
        let by_channel: Vec<&Message> = got.iter().filter(|m| !m.channels.is_empty()).collect();
        assert_eq!(by_channel.len(), 1);
        let channels: Vec<_> = by_channel[0]
            .channels
            .iter()
            .map(|(key, members)| nexxus_worker::model::transport_message::ChannelRef {
                key: key.clone(),
                members: *members,
            })
            .collect();
        let delivery = serde_json::value::RawValue::from_string(by_channel[0].raw.clone()).unwrap();
        let narrowing = Narrowing::of(false, &delivery).unwrap();
        let mut compared = 0;
        for (g, keys) in held.iter().enumerate() {
            let listed = got.iter().find(|m| m.devices.contains(&format!("g{g}")));
            let positions: Vec<usize> =
                channels.iter().enumerate().filter(|(_, c)| keys.contains(&c.key.as_str())).map(|(j, _)| j).collect();
            match listed {
                Some(listed) => {
                    let narrowed = narrowing.to(&channels, &positions).unwrap();
                    assert_eq!(narrowed.get(), listed.raw, "{keys:?} on {}", event.after.as_ref().unwrap()["status"]);
                    compared += 1;
                }
                // Nothing for this device (its filter neither entered nor stayed): nothing named for it either.
                None => assert!(positions.is_empty(), "{keys:?}"),
            }
        }
        assert!(compared >= 4, "{compared}");
    }
}

/// A broadcast's object: a create never stored, at version 0.
fn ephemeral() -> ChangeEvent {
    let object = obj(json!({"type":"task","id":"b1","context_id":"c1","status":"open","typing":true}));
    ChangeEvent {
        op: ChangeOp::Create,
        id: "b1".into(),
        before: None,
        after: Some(object),
        patches: Vec::new(),
        version: 0,
        ephemeral: true,
        ..event()
    }
}

/// Planned messages of a broadcast, read as a sockets transport reads them: destination,
/// devices, channels named, and the delivery.
fn planned_broadcast(
    members: &[(&str, Vec<String>)],
    filtered_of_a: &[String],
) -> Vec<(String, Vec<String>, usize, Value)> {
    let mut routes = Routes { members: HashMap::new(), filtered: HashMap::new(), round_trips: 1 };
    routes.members.extend(members.iter().map(|(k, d)| ((*k).to_string(), d.clone())));
    routes.filtered.insert(A.to_string(), filtered_of_a.to_vec());
    let event = ephemeral();
    let messages = plan(&event, &mut RouteTable::new(routes), &mut FilterCache::default()).unwrap();
    messages
        .into_iter()
        .map(|m| {
            let raw = RawTransportMessage::decode(&m.payload).unwrap();
            assert!(raw.ephemeral && !raw.broadcast);
            assert_eq!((raw.object_id.as_str(), raw.version), ("b1", 0));
            let devices = raw.devices.iter().map(|r| r.device_id.clone()).collect();
            (m.destination, devices, raw.channels.len(), serde_json::from_str(raw.message.get()).unwrap())
        })
        .collect()
}

fn broadcast_of(subscriptions: &[&str]) -> Value {
    json!({"object":{"type":"task","id":"b1","context_id":"c1","status":"open","typing":true},
           "subscriptions":subscriptions,"application_id":"app1","timestamp":100})
}

#[test]
fn a_broadcast_reaches_connected_subscribers_whose_filters_match_and_no_push_device() {
    let open = filtered(A, json!({"and":[{"is":{"status":"open"}}]}));
    let closed = filtered(A, json!({"and":[{"is":{"status":"closed"}}]}));
    let members = [
        (
            A,
            vec![device("sockets_transport-0", "d1"), device("ios_transport", "i1"), device("android_transport", "a1")],
        ),
        (B, vec![device("sockets_transport-0", "d1"), device("sockets_transport-1", "d2")]),
        (open.as_str(), vec![device("sockets_transport-0", "d3")]),
        (closed.as_str(), vec![device("sockets_transport-0", "d4")]),
    ];
    let mut got = planned_broadcast(&members, &[open.clone(), closed.clone()]);
    got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let expected = vec![
        ("sockets_transport-0".to_string(), vec!["d1".to_string()], 0, broadcast_of(&[A, B])),
        ("sockets_transport-0".into(), vec!["d3".into()], 0, broadcast_of(&[open.as_str()])),
        ("sockets_transport-1".into(), vec!["d2".into()], 0, broadcast_of(&[B])),
    ];
    assert_eq!(got, expected, "d4's filter does not match; push devices are not woken for a broadcast");

    // Many devices on one transport: one message naming the channels, narrowed there per device.
    let many: Vec<String> = (0..40).map(|i| device("sockets_transport-0", &format!("m{i:02}"))).collect();
    let got = planned_broadcast(&[(A, many.clone()), (B, many[..5].to_vec())], &[]);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].1.len(), got[0].2, &got[0].3), (0, 2, &broadcast_of(&[A, B])));
    let channels: Vec<_> = [A, B]
        .iter()
        .map(|k| nexxus_worker::model::transport_message::ChannelRef {
            key: k.to_string(),
            members: MembersDigest::default(),
        })
        .collect();
    let raw = serde_json::value::RawValue::from_string(got[0].3.to_string()).unwrap();
    let narrowed = Narrowing::of(true, &raw).unwrap().to(&channels, &[0]).unwrap();
    assert_eq!(serde_json::from_str::<Value>(narrowed.get()).unwrap(), broadcast_of(&[A]));
}
