//! The versioned JSON Schemas of the internal topics' records (docs/schemas/v1/,
//! docs/custom-workers.md) are the ones the Rust types generate, and records the workers write
//! validate against them. `UPDATE_SCHEMAS=1 cargo test --test schemas` rewrites the files; the
//! diff is what a reviewer reads.
#![allow(clippy::disallowed_methods)] // a test reads its own switch (UPDATE_SCHEMAS) from the environment

use std::path::PathBuf;

use nexxus_worker::model::{Application, BroadcastDelivery, ChangeEvent, TransportMessage, WriteRecord};
use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::queue::Record;
use schemars::{schema_for, Schema};
use serde_json::{json, Value};

const VERSION: &str = "v1";

/// (file stem, what it describes, the schema of its type).
fn schemas() -> Vec<(&'static str, &'static str, Schema)> {
    vec![
        ("write", "a record of the `write` topic (aggregation to writer), keyed by object id", schema_for!(WriteRecord)),
        (
            "transport_manager",
            "a record of the `transport_manager` topic (writer or broadcast to transport manager), keyed by object id",
            schema_for!(ChangeEvent),
        ),
        (
            "transport",
            "a record of the transport topics (ios_transport, android_transport, sockets_transport-<i>, sockets_transport), keyed by object id; with `ephemeral: true` (sockets topics only) its `message` is a broadcast_delivery",
            schema_for!(TransportMessage),
        ),
        (
            "broadcast_delivery",
            "the `message` of an ephemeral transport record, and the `data` of a `broadcast` frame",
            schema_for!(BroadcastDelivery),
        ),
        ("dead_letter", "a record of the `dead_letter` topic", schema_for!(Envelope)),
        ("system", "a record of the compacted `system` topic: an application, keyed by its id", schema_for!(Application)),
    ]
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/schemas").join(VERSION)
}

fn document(stem: &str, about: &str, schema: Schema) -> Value {
    let mut doc = schema.to_value();
    if let Some(map) = doc.as_object_mut() {
        map.insert("$id".into(), json!(format!("https://nexxus-worker.invalid/schemas/{VERSION}/{stem}.schema.json")));
        map.insert("description".into(), json!(about));
    }
    doc
}

#[test]
fn the_published_schemas_are_the_ones_the_types_generate() {
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (stem, about, schema) in schemas() {
        let path = dir().join(format!("{stem}.schema.json"));
        let text = serde_json::to_string_pretty(&document(stem, about, schema)).unwrap() + "\n";
        if update {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(stale.is_empty(), "schemas differ from the types (UPDATE_SCHEMAS=1 cargo test --test schemas): {stale:?}");
}

fn validator(stem: &str) -> jsonschema::Validator {
    let path = dir().join(format!("{stem}.schema.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn assert_valid(stem: &str, record: &Value) {
    let v = validator(stem);
    let errors: Vec<String> = v.iter_errors(record).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{stem}: {record} -> {errors:?}");
}

#[test]
fn records_the_workers_write_validate_and_malformed_ones_do_not() {
    let write: WriteRecord = serde_json::from_value(json!({"application_id":"app1","model":"task","id":"t1",
        "op":"update","patches":[{"op":"increment","path":"task/t1/votes","value":1,"user_id":"u1"}],
        "instant":false,"timestamp":1,"source":{"topic":"aggregation","partition":0,"offset":42},
        "merged":[{"patches":[{"op":"replace","path":"task/t1/title","value":"x"}],"instant":false,"timestamp":2,
                   "source":{"topic":"aggregation","partition":0,"offset":43}}]}))
    .unwrap();
    assert_valid("write", &serde_json::to_value(&write).unwrap());
    let create: WriteRecord = serde_json::from_value(json!({"application_id":"app1","model":"task","id":"t2",
        "op":"create","object":{"type":"task","title":"y"},"timestamp":1,
        "source":{"topic":"aggregation","partition":1,"offset":7}}))
    .unwrap();
    assert_valid("write", &serde_json::to_value(&create).unwrap());

    let event: ChangeEvent = serde_json::from_value(json!({"application_id":"app1","op":"update","model":"task",
        "id":"t1","before":{"votes":1},"after":{"votes":2},
        "patches":[{"op":"increment","path":"task/t1/votes","value":1}],"version":7,"timestamp":3,
        "channels":["blg:app1:context:c1:task"],"broadcast":false}))
    .unwrap();
    assert_valid("transport_manager", &serde_json::to_value(&event).unwrap());
    let ephemeral = nexxus_worker::model::decode_broadcast_object(
        json!({"application_id":"app1","object":{"type":"task","list_id":"l1"}}).as_object().unwrap(),
    )
    .unwrap()
    .into_event("b1".into(), 4);
    assert_valid("transport_manager", &serde_json::to_value(&ephemeral).unwrap());

    let message: TransportMessage = serde_json::from_value(json!({"application_id":"app1","object_id":"t1",
        "version":7,"timestamp":3,"devices":[{"device_id":"d1","token":"tok"}],
        "channels":[{"key":"blg:app1:context:c1:task","members":"0123456789abcdef0123456789abcdef"}],
        "broadcast":false,"message":{"new":[],"updated":[{"op":"update",
        "patch":{"op":"increment","path":"task/t1/votes","value":1},"subscriptions":["blg:app1:context:c1:task"],
        "application_id":"app1","timestamp":3,"version":7}],"deleted":[]}}))
    .unwrap();
    assert_valid("transport", &serde_json::to_value(&message).unwrap());
    assert_valid(
        "broadcast_delivery",
        &json!({"object":{"type":"task"},"subscriptions":["blg:app1:task"],"application_id":"app1","timestamp":5}),
    );

    let record =
        Record { topic: "write", partition: 2, offset: 9, key: Some(b"t1"), payload: b"{oops", timestamp_ms: None };
    let envelope = Envelope::new(&record, "write-0", "not JSON");
    assert_valid("dead_letter", &serde_json::to_value(&envelope).unwrap());

    let app = Application::from_json(
        json!({"id":"app1","jwt_secret":"s","schema":{"list":{"write_acl":0,"read_acl":0},
            "task":{"belongsTo":[{"parentModel":"list"}],"read_acl":8,"author_fields":["owner"]}}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_valid("system", &serde_json::to_value(&app).unwrap());

    // What the types refuse, the schemas refuse too.
    let refused = [
        (
            "write",
            json!({"application_id":"a","model":"t","id":"i","op":"rename","timestamp":1,"source":{"topic":"x","partition":0,"offset":0}}),
        ),
        (
            "transport_manager",
            json!({"application_id":"a","op":"update","model":"t","id":"i","version":"7","timestamp":1,"channels":[]}),
        ),
        (
            "transport",
            json!({"application_id":"a","object_id":"i","version":1,"timestamp":1,"devices":[],"message":{"new":[]}}),
        ),
        (
            "transport",
            json!({"application_id":"a","object_id":"i","version":1,"timestamp":1,"devices":[],
            "channels":[{"key":"k","members":"short"}],"message":{"new":[],"updated":[],"deleted":[]}}),
        ),
        ("system", json!({"schema":{}})),
    ];
    for (stem, record) in refused {
        assert!(!validator(stem).is_valid(&record), "{stem} accepted {record}");
    }
}
