//! From a write record to what a device receives: stored objects, events, deltas, batches,
//! push payload splitting.

use nexxus_worker::model::{
    micros_to_secs, plan_deliveries, split_push, transition_for, AggregatorMessage, Change, ChangeEvent, ChangeOp,
    ChannelKey, DeliveryBatch, Delta, DeltaOp, Filter, PushPayload, SourcePosition, StoredObject, Transition,
    WriteRecord, DEFAULT_PUSH_LIMIT,
};
use serde_json::{json, Map, Value};

fn pos(offset: i64) -> SourcePosition {
    SourcePosition { topic: "aggregation".into(), partition: 0, offset }
}

fn key(s: &str) -> ChannelKey {
    ChannelKey::parse(s).unwrap().canonical_key().unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

#[test]
fn create_then_update_versions_and_replays() {
    let msg = AggregatorMessage::decode(
        br#"{"op":"create","object":{"type":"task","context_id":"c1","title":"x"},
            "application_id":"app1","timestamp":1700000000000000}"#,
    )
    .unwrap();
    let AggregatorMessage::Create(create) = &msg else { panic!() };
    let records = WriteRecord::from_message(msg.clone(), &pos(7));
    assert_eq!(records.len(), 1);
    let again = WriteRecord::from_message(msg.clone(), &pos(7));
    assert_eq!(records, again, "a replay derives the same id");
    let id = records[0].id.clone();
    let Change::Create { object } = &records[0].change else { panic!() };
    assert_eq!(object["id"], json!(id));

    let now = micros_to_secs(records[0].timestamp);
    let stored = StoredObject::create(create, &id, now, Some(pos(7)));
    assert_eq!(stored.version, 1);
    assert_eq!(stored.object["created"], json!(1_700_000_000));
    assert!(stored.already_applied(&pos(7)));
    assert!(!stored.already_applied(&pos(8)));

    let update = AggregatorMessage::decode(
        format!(
            r#"{{"op":"update","patches":[
                {{"op":"increment","path":"task/{id}/votes","value":1}},
                {{"op":"append","path":"task/{id}/tags","value":"a"}}],
                "application_id":"app1","timestamp":1700000001000000}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let recs = WriteRecord::from_message(update, &pos(8));
    let Change::Update { patches, .. } = &recs[0].change else { panic!() };
    let next = stored.apply(patches, 1_700_000_001, Some(pos(8))).unwrap();
    assert_eq!(next.version, 3, "one version per patch");
    assert_eq!(next.object["votes"], json!(1));
    assert_eq!(next.object["tags"], json!(["a"]));
    assert_eq!(next.object["modified"], json!(1_700_000_001));
    assert_eq!(stored.version, 1, "apply does not mutate");

    // A patch aimed at another object is refused, and nothing is applied.
    let mut wrong = patches.clone();
    wrong[1].path.id = "other".into();
    assert_eq!(stored.apply(&wrong, 0, None).unwrap_err().code(), "patch_target_mismatch");
}

#[test]
fn records_and_events_serialize_with_stable_names() {
    let msg = AggregatorMessage::decode(
        br#"{"op":"delete","object":{"model":"task","id":"t1"},"application_id":"app1","timestamp":2,"user_id":"u1"}"#,
    )
    .unwrap();
    let rec = &WriteRecord::from_message(msg, &pos(3))[0];
    let v = serde_json::to_value(rec).unwrap();
    assert_eq!(
        v,
        json!({"application_id":"app1","model":"task","id":"t1","op":"delete","user_id":"u1",
               "timestamp":2,"source":{"topic":"aggregation","partition":0,"offset":3}})
    );
    assert_eq!(serde_json::from_value::<WriteRecord>(v).unwrap(), *rec);
    assert_eq!(rec.op(), ChangeOp::Delete);

    let ev = event(ChangeOp::Delete, Some(json!({"id":"t1","type":"task"})), None);
    let v = serde_json::to_value(&ev).unwrap();
    assert_eq!(v["op"], "delete");
    assert!(v.get("after").is_none());
    assert_eq!(serde_json::from_value::<ChangeEvent>(v).unwrap(), ev);
}

fn event(op: ChangeOp, before: Option<Value>, after: Option<Value>) -> ChangeEvent {
    let patches = match op {
        ChangeOp::Update => serde_json::from_value(json!([
            {"op":"replace","path":"task/t1/status","value":"closed","user_id":"u1"},
            {"op":"increment","path":"task/t1/votes","value":1}
        ]))
        .unwrap(),
        _ => Vec::new(),
    };
    ChangeEvent {
        application_id: "app1".into(),
        op,
        model: "task".into(),
        id: "t1".into(),
        before: before.map(obj),
        after: after.map(obj),
        patches,
        version: 9,
        timestamp: 100,
        channels: vec![key("blg:app1:context:c1:task")],
        broadcast: false,
        ephemeral: false,
    }
}

#[test]
fn plan_groups_channels_by_kind() {
    let ev = event(
        ChangeOp::Update,
        Some(json!({"id":"t1","type":"task","status":"open"})),
        Some(json!({"id":"t1","type":"task","status":"closed"})),
    );
    let open = Filter::parse(&json!({"and":[{"is":{"status":"open"}}]})).unwrap();
    let closed = Filter::parse(&json!({"and":[{"is":{"status":"closed"}}]})).unwrap();
    let other = Filter::parse(&json!({"and":[{"is":{"status":"x"}}]})).unwrap();
    assert_eq!(transition_for(&ev, &open), Transition::Leave);
    assert_eq!(transition_for(&ev, &closed), Transition::Enter);
    let base = key("blg:app1:context:c1:task");
    let channels = vec![
        (base.clone(), None),
        (base.with_filter(&open), Some(transition_for(&ev, &open))),
        (base.with_filter(&closed), Some(transition_for(&ev, &closed))),
        (base.with_filter(&other), Some(transition_for(&ev, &other))),
    ];
    let deltas = plan_deliveries(&ev, &channels);
    let ops: Vec<DeltaOp> = deltas.iter().map(|d| d.op).collect();
    assert_eq!(ops, [DeltaOp::Create, DeltaOp::Update, DeltaOp::Update, DeltaOp::Delete]);
    assert_eq!(deltas[0].subscriptions, [base.with_filter(&closed)]);
    assert_eq!(deltas[0].object.as_ref().unwrap()["status"], "closed");
    assert_eq!(deltas[1].subscriptions, std::slice::from_ref(&base));
    assert_eq!((deltas[1].version, deltas[2].version), (8, 9));
    assert_eq!((deltas[1].timestamp, deltas[2].timestamp), (100, 101));
    assert_eq!(deltas[1].patch.as_ref().unwrap().user_id, None, "user_id never reaches clients");
    assert_eq!(deltas[3].subscriptions, [base.with_filter(&open)]);
    assert_eq!(deltas[3].object.as_ref().unwrap()["status"], "open", "leave sends the before-image");

    let json = serde_json::to_value(&deltas[1]).unwrap();
    assert_eq!(
        json,
        json!({"op":"update","patch":{"op":"replace","path":"task/t1/status","value":"closed"},
               "subscriptions":["blg:app1:context:c1:task"],"application_id":"app1",
               "timestamp":100,"version":8})
    );

    let device_holds = |k: &ChannelKey| k == &base;
    assert!(deltas[0].narrowed(device_holds).is_none());
    assert_eq!(deltas[1].narrowed(device_holds).unwrap().subscriptions, std::slice::from_ref(&base));

    let batch: DeliveryBatch = deltas.into_iter().collect();
    assert_eq!((batch.new.len(), batch.updated.len(), batch.deleted.len()), (1, 2, 1));
    // The frame as the sockets transport builds it: the delivery encoded once, then wrapped.
    let encoded = nexxus_worker::model::transport_message::EncodedBatch::encode(&batch).unwrap();
    let frame: Value =
        serde_json::from_str(&nexxus_worker::transport::ws::protocol::message(encoded.as_raw())).unwrap();
    assert_eq!(frame["event"], "message");
    assert_eq!(frame["data"]["updated"][1]["version"], 9);
}

#[test]
fn create_and_delete_on_unfiltered_channels() {
    let base = key("blg:app1:context:c1:task");
    let c = event(ChangeOp::Create, None, Some(json!({"id":"t1","type":"task"})));
    let d = plan_deliveries(&c, &[(base.clone(), None)]);
    assert_eq!((d.len(), d[0].op), (1, DeltaOp::Create));
    let del = event(ChangeOp::Delete, Some(json!({"id":"t1","type":"task"})), None);
    let d = plan_deliveries(&del, &[(base, None)]);
    assert_eq!((d.len(), d[0].op), (1, DeltaOp::Delete));
    assert_eq!(d[0].object.as_ref().unwrap()["id"], "t1");
}

fn delta(op: DeltaOp, size: usize, channel: &str) -> Delta {
    Delta {
        op,
        object: Some(obj(json!({"id":"t1","blob":"x".repeat(size)}))),
        patch: None,
        subscriptions: vec![key(channel)],
        application_id: "app1".into(),
        timestamp: 1,
        version: 1,
    }
}

#[test]
fn push_payloads_fit_the_limit() {
    let mut batch = DeliveryBatch::default();
    for i in 0..10 {
        batch.push(delta(DeltaOp::Create, 900, "blg:app1:context:c1:task"));
        batch.push(delta(DeltaOp::Update, 100 * i, "blg:app1:context:c1:task"));
    }
    batch.push(delta(DeltaOp::Delete, 5000, "blg:app1:context:c2:task"));
    batch.push(delta(DeltaOp::Delete, 9000, "blg:app1:context:c3:task"));
    batch.push(delta(DeltaOp::Delete, 9000, "blg:app1:context:c3:task"));
    let payloads = split_push(&batch, DEFAULT_PUSH_LIMIT);
    let mut seen = 0;
    for p in &payloads {
        let bytes = serde_json::to_vec(p).unwrap();
        assert!(bytes.len() <= DEFAULT_PUSH_LIMIT, "{} bytes", bytes.len());
        if let PushPayload::Data { data } = p {
            seen += data.len();
        }
    }
    assert_eq!(seen, 20, "every delta that fits is sent exactly once");
    let PushPayload::Sync { sync } = payloads.last().unwrap() else { panic!("oversized deltas become a sync") };
    let sync: Vec<&str> = sync.iter().map(ChannelKey::as_str).collect();
    assert_eq!(sync, ["blg:app1:context:c2:task", "blg:app1:context:c3:task"]);
    let text = serde_json::to_string(payloads.last().unwrap()).unwrap();
    assert!(text.starts_with(r#"{"sync":["#));
    assert!(serde_json::to_string(&payloads[0]).unwrap().starts_with(r#"{"data":{"new":["#));
    assert!(split_push(&DeliveryBatch::default(), DEFAULT_PUSH_LIMIT).is_empty());
}
