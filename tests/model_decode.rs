//! Decoding of `aggregation` and `track` messages: every op and every error variant.

use nexxus_worker::model::message::decode_aggregation;
use nexxus_worker::model::track::{decode_track, PushPlatform};
use nexxus_worker::model::{AggregatorMessage, DeviceAddress, ModelError, PatchOp, TrackCommand, Transport};
use serde_json::json;

fn agg(v: serde_json::Value) -> Result<AggregatorMessage, ModelError> {
    AggregatorMessage::decode(v.to_string().as_bytes())
}

fn agg_code(v: serde_json::Value) -> &'static str {
    agg(v).expect_err("should be rejected").code()
}

fn track(v: serde_json::Value) -> Result<TrackCommand, ModelError> {
    TrackCommand::decode(v.to_string().as_bytes())
}

fn track_code(v: serde_json::Value) -> &'static str {
    track(v).expect_err("should be rejected").code()
}

#[test]
fn create_fills_application_id_and_keeps_the_object() {
    let m = agg(json!({"op":"create","application_id":"app1","timestamp":5,
        "object":{"type":"task","context_id":"c1","title":"x"}}))
    .unwrap();
    let AggregatorMessage::Create(c) = m else { panic!("not a create") };
    assert_eq!(c.model, "task");
    assert_eq!(c.id, None);
    assert_eq!(c.object["application_id"], "app1");
    assert_eq!(c.object["title"], "x");
    assert_eq!(c.timestamp, 5);
}

#[test]
fn update_patches_and_user_fallback() {
    let m = agg(json!({"op":"update","application_id":"app1","timestamp":5,"user_id":"u9",
        "patches":[
            {"op":"replace","path":"task/t1/title","value":"y","user_id":"u1"},
            {"op":"append","path":"task/t2/tags","value":"z"},
            {"op":"remove","path":"task/t1/tags","value":"q"},
            {"op":"increment","path":"task/t1/votes","value":2.5}]}))
    .unwrap();
    let AggregatorMessage::Update(u) = m else { panic!("not an update") };
    assert_eq!(u.patches.len(), 4);
    assert_eq!(u.patches[0].user_id.as_deref(), Some("u1"));
    assert_eq!(u.patches[1].user_id.as_deref(), Some("u9"));
    assert_eq!(u.patches[3].op, PatchOp::Increment);
    let groups = u.by_object();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].0.id, "t1");
    assert_eq!(groups[0].1.len(), 3);
    assert_eq!(groups[1].0.id, "t2");
}

#[test]
fn delete_reads_model_id_and_user() {
    let m = agg(json!({"op":"delete","application_id":"app1","timestamp":1,"user_id":"u1",
        "object":{"model":"task","id":"t1"}}))
    .unwrap();
    let AggregatorMessage::Delete(d) = m else { panic!("not a delete") };
    assert_eq!((d.object.model.as_str(), d.object.id.as_str()), ("task", "t1"));
    assert_eq!(d.user_id.as_deref(), Some("u1"));
}

#[test]
fn aggregation_errors_have_one_code_each() {
    let base = |extra: serde_json::Value| {
        let mut m = json!({"op":"delete","application_id":"app1","timestamp":1,
            "object":{"model":"task","id":"t1"}});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    };
    assert_eq!(agg_code(base(json!({"op":"add"}))), "unknown_op");
    assert_eq!(agg_code(base(json!({"op":7}))), "wrong_type");
    assert_eq!(agg_code(base(json!({"application_id":null}))), "missing_field");
    assert_eq!(agg_code(base(json!({"application_id":"a:b"}))), "invalid_identifier");
    assert_eq!(agg_code(base(json!({"timestamp":-1}))), "wrong_type");
    assert_eq!(agg_code(base(json!({"timestamp":1.5}))), "wrong_type");
    assert_eq!(agg_code(base(json!({"timestamp":null}))), "missing_field");
    assert_eq!(agg_code(base(json!({"object":{"model":"task"}}))), "missing_field");
    assert_eq!(agg_code(base(json!({"object":"t1"}))), "wrong_type");
    assert_eq!(agg_code(base(json!({"user_id":3}))), "wrong_type");

    let create = |obj: serde_json::Value| json!({"op":"create","application_id":"app1","timestamp":1,"object":obj});
    assert_eq!(agg_code(create(json!({"title":"x"}))), "missing_field");
    assert_eq!(agg_code(create(json!({"type":"task","id":""}))), "invalid_identifier");
    assert_eq!(agg_code(create(json!({"type":"task","context_id":5}))), "wrong_type");
    assert_eq!(agg_code(create(json!({"type":"task","application_id":"app2"}))), "application_mismatch");

    let update =
        |patches: serde_json::Value| json!({"op":"update","application_id":"app1","timestamp":1,"patches":patches});
    assert_eq!(agg_code(update(json!([]))), "empty_patches");
    assert_eq!(agg_code(update(json!({}))), "wrong_type");
    assert_eq!(agg_code(update(json!(["x"]))), "wrong_type");
    let p = |op: &str, path: &str, value: serde_json::Value| update(json!([{"op":op,"path":path,"value":value}]));
    assert_eq!(agg_code(p("merge", "task/t1/a", json!(1))), "unknown_op");
    assert_eq!(agg_code(p("replace", "task/t1", json!(1))), "invalid_path");
    assert_eq!(agg_code(p("replace", "task/t1/a/b", json!(1))), "invalid_path");
    assert_eq!(agg_code(p("replace", "task//a", json!(1))), "invalid_path");
    assert_eq!(agg_code(p("replace", "task/t1/id", json!(1))), "immutable_field");
    assert_eq!(agg_code(p("replace", "task/t1/modified", json!(1))), "immutable_field");
    assert_eq!(agg_code(p("increment", "task/t1/v", json!("1"))), "wrong_type");
    assert_eq!(agg_code(update(json!([{"op":"replace","path":"task/t1/a"}]))), "missing_field");
}

#[test]
fn size_json_and_shape_errors() {
    let big = format!(r#"{{"op":"create","pad":"{}"}}"#, "x".repeat(100));
    assert_eq!(
        decode_aggregation(big.as_bytes(), 64).unwrap_err(),
        ModelError::TooLarge { size: big.len(), limit: 64 }
    );
    assert_eq!(AggregatorMessage::decode(b"{nope").unwrap_err().code(), "invalid_json");
    assert_eq!(AggregatorMessage::decode(b"\xff\xfe").unwrap_err().code(), "invalid_json");
    assert_eq!(AggregatorMessage::decode(b"[1]").unwrap_err().code(), "wrong_type");
    assert_eq!(decode_track(b"{}", 1).unwrap_err().code(), "too_large");
}

#[test]
fn track_commands() {
    let reg = track(json!({"op":"device_register","application_id":"app1",
        "device":{"id":"d1","info":{"os":"iOS"},"persistent":{"type":"ios","token":"abc"},
                  "volatile":{"type":"sockets","active":1}}}))
    .unwrap();
    let TrackCommand::DeviceRegister { device, .. } = reg else { panic!("not a register") };
    assert_eq!(device.application_id, "app1");
    let p = device.persistent.as_ref().unwrap();
    assert_eq!((p.platform, p.token.as_str(), p.active), (PushPlatform::Ios, "abc", true));
    assert!(!device.volatile.as_ref().unwrap().active, "a register never binds a socket");
    assert_eq!(device.push_address().unwrap().to_string(), "ios_transport|d1|abc|app1");

    let rm = track(json!({"op":"device_remove","application_id":"app1","device_id":"d1"}));
    assert!(matches!(rm.unwrap(), TrackCommand::DeviceRemove { device_id, .. } if device_id == "d1"));

    let sub = track(json!({"op":"subscribe","application_id":"app1","device_id":"d1",
        "channel":{"model":"task","context":"c1"},"filters":{"and":[{"is":{"a":1}}]}}))
    .unwrap();
    let TrackCommand::Subscribe { channel, filter, .. } = sub else { panic!("not a subscribe") };
    assert_eq!(channel.context.as_deref(), Some("c1"));
    assert!(filter.is_some());
    let unsub = track(json!({"op":"unsubscribe","application_id":"app1","device_id":"d1",
        "channel":{"model":"task","context":"c1"}}));
    assert!(matches!(unsub.unwrap(), TrackCommand::Unsubscribe { filter: None, .. }));
}

#[test]
fn track_errors() {
    let sub = |channel: serde_json::Value, filters: serde_json::Value| {
        json!({"op":"subscribe","application_id":"app1","device_id":"d1",
               "channel":channel,"filters":filters})
    };
    assert_eq!(track_code(json!({"op":"ping","application_id":"app1"})), "unknown_op");
    assert_eq!(track_code(json!({"op":"device_remove","application_id":"app1"})), "missing_field");
    assert_eq!(
        track_code(json!({"op":"device_register","application_id":"app1","device":{"id":"d|1"}})),
        "invalid_identifier"
    );
    assert_eq!(
        track_code(json!({"op":"device_register","application_id":"app1",
            "device":{"id":"d1","persistent":{"type":"windows","token":"t"}}})),
        "wrong_type"
    );
    assert_eq!(
        track_code(json!({"op":"device_register","application_id":"app1",
            "device":{"id":"d1","persistent":{"type":"ios"}}})),
        "missing_field"
    );
    assert_eq!(track_code(sub(json!(null), json!(null))), "missing_field");
    assert_eq!(track_code(sub(json!({"model":"task"}), json!(null))), "invalid_channel");
    assert_eq!(track_code(sub(json!({"model":7}), json!(null))), "wrong_type");
    assert_eq!(track_code(sub(json!({"model":"task","context":"c1"}), json!({"xor":[]}))), "invalid_filter");
    assert_eq!(track_code(sub(json!({"model":"task","id":"t1"}), json!({"and":[{"is":{"a":1}}]}))), "invalid_channel");
}

#[test]
fn device_strings_round_trip() {
    for s in ["ios_transport|d1|tok|app1", "android_transport|d1|tok:with-colon|app1", "sockets_transport-12|d1||app1"]
    {
        assert_eq!(DeviceAddress::parse(s).unwrap().to_string(), s);
    }
    assert_eq!(DeviceAddress::parse("sockets_transport-3|d|t|a").unwrap().transport, Transport::Sockets(3));
    for bad in ["x|d|t|a", "ios_transport|d|t", "ios_transport|d|t|a|b", "sockets_transport-01|d|t|a"] {
        assert!(DeviceAddress::parse(bad).is_err(), "{bad}");
    }
}
