//! Channel keys for every Telepat mask, parsing back, and affected channels.

use nexxus_worker::model::schema::{BelongsTo, ModelSchema};
use nexxus_worker::model::{
    affected_channels, affected_channels_for_change, AppSchema, Channel, ChannelKey, Filter, ParentRef,
};
use serde_json::{json, Map, Value};

fn ch(v: Value) -> Channel {
    Channel::from_value(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn schema() -> AppSchema {
    let mut s = AppSchema::new();
    s.insert(
        "task".into(),
        ModelSchema {
            belongs_to: vec![BelongsTo { parent_model: "project".into(), extra: Map::new() }],
            ..ModelSchema::default()
        },
    );
    s.insert("project".into(), ModelSchema::default());
    s
}

#[test]
fn every_mask_builds_and_parses_back() {
    let cases = [
        (json!({"model":"user"}), "blg:app1:user"),
        (json!({"model":"context"}), "blg:app1:context"),
        (json!({"model":"context","id":"c1"}), "blg:app1:context:c1"),
        (json!({"model":"task","context":"c1"}), "blg:app1:context:c1:task"),
        (json!({"model":"task","context":"c1","user":"u1"}), "blg:app1:context:c1:users:u1:task"),
        (json!({"model":"task","parent":{"model":"project","id":"p1"}}), "blg:app1:project:p1:task"),
        (
            json!({"model":"task","user":"u1","parent":{"model":"project","id":"p1"}}),
            "blg:app1:users:u1:project:p1:task",
        ),
        (json!({"model":"task","id":"t1"}), "blg:app1:task:t1"),
    ];
    for (channel, key) in cases {
        let c = ch(channel);
        let k = c.key("app1", None).unwrap();
        assert_eq!(k.as_str(), key);
        let parsed = ChannelKey::parse(key).unwrap();
        assert_eq!(parsed.application_id, "app1");
        assert_eq!(parsed.channel, c, "{key}");
        assert!(parsed.filter.is_none());
        // The channel JSON round-trips too.
        assert_eq!(ch(serde_json::to_value(&c).unwrap()), c);
    }
}

#[test]
fn filtered_keys() {
    let flt = Filter::parse(&json!({"and":[{"is":{"b":1,"a":2}}]})).unwrap();
    let c = ch(json!({"model":"task","context":"c1"}));
    let k = c.key("app1", Some(&flt)).unwrap();
    assert_eq!(k.base(), "blg:app1:context:c1:task");
    assert_eq!(k.filter_suffix(), Some(flt.key_suffix().as_str()));
    assert_eq!(k.as_str(), "blg:app1:context:c1:task:filter:eyJhbmQiOlt7ImlzIjp7ImEiOjIsImIiOjF9fV19");
    let unfiltered = c.key("app1", None).unwrap();
    assert_eq!(unfiltered.with_filter(&flt), k);
    let parsed = ChannelKey::parse(k.as_str()).unwrap();
    assert_eq!(parsed.filter.as_ref(), Some(&flt));
    assert_eq!(parsed.canonical_key().unwrap(), k);
    assert!(c.check_filter_allowed(Some(&flt)).is_ok());
    let single = ch(json!({"model":"task","id":"t1"}));
    assert!(single.key("app1", Some(&flt)).is_err());
}

#[test]
fn invalid_channels() {
    let bad = [
        json!({"model":"task"}),
        json!({"model":"task","user":"u1"}),
        json!({"model":"task","id":"t1","context":"c1"}),
        json!({"model":"task","context":"c1","parent":{"model":"project","id":"p1"}}),
        json!({"model":"user","context":"c1"}),
        json!({"model":"users","id":"x"}),
        json!({"model":"task","parent":{"model":"context","id":"c1"}}),
        json!({"model":"task","context":"filter"}),
        json!({"model":"task","context":"c:1"}),
        json!({"model":""}),
        json!({"model":"task","parent":{"model":"project"}}),
    ];
    for b in bad {
        assert!(Channel::from_value(&b).is_err(), "{b}");
    }
    for key in [
        "",
        "blg",
        "blg:app1",
        "xyz:app1:user",
        "blg:app1:task",
        "blg:app1:a:b:c:d",
        "blg:app1:a:b:c:d:e:f",
        "blg:app1:context:c1:task:filter:***",
        "blg:app1:task:t1:filter:eyJhbmQiOlt7ImlzIjp7ImEiOjJ9fV19",
    ] {
        assert!(ChannelKey::parse(key).is_err(), "{key}");
    }
    assert!(ch(json!({"model":"user"})).key("a:b", None).is_err());
}

#[test]
fn affected_channels_of_an_app_object() {
    let o = obj(json!({"id":"t1","type":"task","context_id":"c1","user_id":"u1",
        "project_id":"p1","application_id":"app1"}));
    let keys: Vec<String> =
        affected_channels("app1", &o, &schema()).unwrap().into_iter().map(ChannelKey::into_string).collect();
    assert_eq!(
        keys,
        [
            "blg:app1:task:t1",
            "blg:app1:context:c1:task",
            "blg:app1:context:c1:users:u1:task",
            "blg:app1:project:p1:task",
            "blg:app1:users:u1:project:p1:task",
        ]
    );
    // Without id, user or parent (a create before its id): only the context channel.
    let o = obj(json!({"type":"task","context_id":"c1"}));
    let keys = affected_channels("app1", &o, &schema()).unwrap();
    assert_eq!(keys, [ch(json!({"model":"task","context":"c1"})).key("app1", None).unwrap()]);
}

#[test]
fn affected_channels_of_builtins_and_unknown_models() {
    let user = obj(json!({"id":"u1","type":"user","context_id":"c1"}));
    let keys = affected_channels("app1", &user, &AppSchema::new()).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].as_str(), "blg:app1:user");
    assert_eq!(keys[1].as_str(), "blg:app1:user:u1");
    let ctx = obj(json!({"id":"c1","type":"context"}));
    let keys = affected_channels("app1", &ctx, &AppSchema::new()).unwrap();
    assert_eq!(keys[1].as_str(), "blg:app1:context:c1");

    let err = affected_channels("app1", &obj(json!({"type":"user_metadata"})), &schema());
    assert_eq!(err.unwrap_err().code(), "unknown_model");
    assert_eq!(affected_channels("app1", &obj(json!({})), &schema()).unwrap_err().code(), "missing_field");
}

#[test]
fn a_move_reaches_old_and_new_parents() {
    let before = obj(json!({"id":"t1","type":"task","project_id":"p1"}));
    let after = obj(json!({"id":"t1","type":"task","project_id":"p2"}));
    let keys = affected_channels_for_change("app1", Some(&before), Some(&after), &schema()).unwrap();
    let keys: Vec<&str> = keys.iter().map(ChannelKey::as_str).collect();
    assert_eq!(keys, ["blg:app1:task:t1", "blg:app1:project:p2:task", "blg:app1:project:p1:task"]);
    let p = ParentRef { model: "project".into(), id: "p1".into() };
    assert_eq!(ch(json!({"model":"task","parent":p})).key("app1", None).unwrap().as_str(), keys[2]);
}
