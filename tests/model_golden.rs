//! Golden tests on Telepat-shaped input taken from the references: CONTRACT section 4's
//! create/update/delete examples, Telepat's own filter example (telepat-models
//! `utils/utils.js`), its filtered channel keys, and the API's author-filter injection.

use nexxus_worker::model::schema::Application;
use nexxus_worker::model::{
    affected_channels, validate_author, AclKind, AggregatorMessage, Channel, ChannelKey, Filter, ModelError, PatchOp,
    StoredObject, TrackCommand,
};
use serde_json::{json, Value};

const CREATE: &str = r#"{"op":"create","object":{"type":"task","context_id":"c1","application_id":"app1","user_id":"u1","title":"x"},
 "application_id":"app1","timestamp":1700000000000000}"#;
const UPDATE: &str = r#"{"op":"update","patches":[{"op":"increment","path":"task/t1/votes","value":1}],
 "application_id":"app1","timestamp":1700000000000001}"#;
const DELETE: &str =
    r#"{"op":"delete","object":{"model":"task","id":"t1"},"application_id":"app1","timestamp":1700000000000002}"#;

/// Telepat's example filter, in the client's key order (`gender` before `age`).
const TELEPAT_FILTER: &str = r#"{"or":[{"and":[{"is":{"gender":"male","age":23}},{"range":{"experience":{"gte":1,"lte":6}}}]},{"and":[{"like":{"image_url":"png","website":"png"}}]}]}"#;
/// `Buffer.from(TELEPAT_FILTER).toString('base64')`, as Telepat's API put it in the key.
const TELEPAT_SUFFIX: &str = "eyJvciI6W3siYW5kIjpbeyJpcyI6eyJnZW5kZXIiOiJtYWxlIiwiYWdlIjoyM319LHsicmFuZ2UiOnsiZXhwZXJpZW5jZSI6eyJndGUiOjEsImx0ZSI6Nn19fV19LHsiYW5kIjpbeyJsaWtlIjp7ImltYWdlX3VybCI6InBuZyIsIndlYnNpdGUiOiJwbmcifX1dfV19";
/// The same filter in canonical form (keys sorted), standard base64.
const CANONICAL_SUFFIX: &str = "eyJvciI6W3siYW5kIjpbeyJpcyI6eyJhZ2UiOjIzLCJnZW5kZXIiOiJtYWxlIn19LHsicmFuZ2UiOnsiZXhwZXJpZW5jZSI6eyJndGUiOjEsImx0ZSI6Nn19fV19LHsiYW5kIjpbeyJsaWtlIjp7ImltYWdlX3VybCI6InBuZyIsIndlYnNpdGUiOiJwbmcifX1dfV19";

const APP: &str = r#"{"id":"app1","jwt_secret":"s3cret",
 "schema":{"task":{"belongsTo":[{"parentModel":"project"}],"write_acl":8,"read_acl":6,
                   "author_fields":["owner_id"],"ios_push_field":"title","properties":{"title":{"type":"string"}}}},
 "apn":{"key":"-----BEGIN PRIVATE KEY-----","key_id":"K","team_id":"T","topic":"com.example.app","production":true},
 "fcm":{"service_account":{"type":"service_account","project_id":"p","client_email":"e@p","private_key":"k"}}}"#;

#[test]
fn contract_create_update_delete() {
    let AggregatorMessage::Create(c) = AggregatorMessage::decode(CREATE.as_bytes()).unwrap() else { panic!("create") };
    assert_eq!((c.model.as_str(), c.timestamp), ("task", 1_700_000_000_000_000));
    let stored = StoredObject::create(&c, "t1", 1_700_000_000, None);
    assert_eq!(
        Value::Object(stored.object.clone()),
        json!({"type":"task","context_id":"c1","application_id":"app1","user_id":"u1","title":"x",
               "id":"t1","created":1700000000,"modified":1700000000})
    );

    let AggregatorMessage::Update(u) = AggregatorMessage::decode(UPDATE.as_bytes()).unwrap() else { panic!("update") };
    assert_eq!(u.patches[0].op, PatchOp::Increment);
    assert_eq!(u.patches[0].path.to_string(), "task/t1/votes");
    let next = stored.apply(&u.patches, 1_700_000_000, None).unwrap();
    assert_eq!((next.object["votes"].clone(), next.version), (json!(1), 2));

    let AggregatorMessage::Delete(d) = AggregatorMessage::decode(DELETE.as_bytes()).unwrap() else { panic!("delete") };
    assert_eq!((d.object.model.as_str(), d.object.id.as_str()), ("task", "t1"));
}

#[test]
fn contract_track_examples() {
    let msgs = [
        r#"{"op":"device_register","application_id":"app1","device":{"id":"d1","info":{"os":"Android"},
            "persistent":{"type":"android","token":"fcm-token"}}}"#,
        r#"{"op":"device_remove","application_id":"app1","device_id":"d1"}"#,
        r#"{"op":"subscribe","application_id":"app1","device_id":"d1","channel":{"model":"task","context":"c1"}}"#,
        r#"{"op":"unsubscribe","application_id":"app1","device_id":"d1","channel":{"model":"task","context":"c1"}}"#,
    ];
    for m in msgs {
        let cmd = TrackCommand::decode(m.as_bytes()).unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!(cmd.application_id(), "app1");
    }
}

#[test]
fn telepat_filtered_key_decodes_and_canonicalizes() {
    let telepat_key = format!("blg:app1:context:c1:task:filter:{TELEPAT_SUFFIX}");
    let parsed = ChannelKey::parse(&telepat_key).unwrap();
    let flt = parsed.filter.clone().unwrap();
    assert_eq!(flt, Filter::parse_str(TELEPAT_FILTER).unwrap());
    assert_eq!(flt.key_suffix(), CANONICAL_SUFFIX);
    assert_eq!(parsed.canonical_key().unwrap().as_str(), format!("blg:app1:context:c1:task:filter:{CANONICAL_SUFFIX}"));
    // The Telepat example evaluates as its comment intends, ranges included.
    assert!(flt.eval(&json!({"gender":"male","age":23,"experience":2})));
    assert!(!flt.eval(&json!({"gender":"male","age":23,"experience":7})));
}

#[test]
fn author_filter_injected_by_the_api_keeps_telepat_bytes() {
    // `{and:[..., {or:[{is:{user_id:uid}}, {is:{<author_field>:uid}}]}]}` (A controllers/object.js).
    let telepat = r#"{"and":[{"is":{"status":"open"}},{"or":[{"is":{"user_id":"u1"}},{"is":{"owner_id":"u1"}}]}]}"#;
    let flt = Filter::parse_str(telepat).unwrap();
    assert_eq!(flt.canonical_json(), telepat, "already sorted: byte-identical to Telepat");
    let channel = Channel::from_value(&json!({"model":"task","context":"c1"})).unwrap();
    assert_eq!(
        channel.key("app1", Some(&flt)).unwrap().as_str(),
        "blg:app1:context:c1:task:filter:eyJhbmQiOlt7ImlzIjp7InN0YXR1cyI6Im9wZW4ifX0seyJvciI6W3siaXMiOnsidXNlcl9pZCI6InUxIn19LHsiaXMiOnsib3duZXJfaWQiOiJ1MSJ9fV19XX0="
    );
    assert!(flt.eval(&json!({"status":"open","owner_id":"u1","user_id":"u2"})));
    assert!(!flt.eval(&json!({"status":"open","user_id":"u2"})));
}

#[test]
fn application_schema_channels_and_author_acl() {
    let app = Application::from_json(APP.as_bytes()).unwrap();
    let debug = format!("{app:?}");
    assert!(!debug.contains("s3cret") && !debug.contains("PRIVATE KEY"), "{debug}");
    let task = app.model("task").unwrap();
    assert_eq!(task.belongs_to[0].parent_field(), "project_id");
    assert!(task.extra.contains_key("properties"), "unknown schema keys are kept");
    assert_eq!(app.fcm.as_ref().unwrap().project_id(), Some("p"));

    let obj = json!({"id":"t1","type":"task","context_id":"c1","user_id":"u1","project_id":"p1","owner_id":"u2"});
    let Value::Object(obj) = obj else { panic!() };
    let keys: Vec<String> =
        affected_channels("app1", &obj, &app.schema).unwrap().into_iter().map(|k| k.into_string()).collect();
    assert_eq!(keys.len(), 5);
    assert!(validate_author(&app.schema, "task", &obj, AclKind::Write, Some("u2")).is_ok());
    assert!(matches!(
        validate_author(&app.schema, "task", &obj, AclKind::Write, Some("u3")),
        Err(ModelError::NotAuthor { .. })
    ));
}

#[test]
fn application_errors() {
    let bad = [
        r#"{"jwt_secret":"x"}"#,
        r#"{"id":"a:b"}"#,
        r#"{"id":"a","apn":{"topic":"t"}}"#,
        r#"{"id":"a","apn":{"key":"k","key_id":"i","team_id":"t","topic":"x","prod":true}}"#,
        r#"{"id":"a","fcm":{"service_account":{}}}"#,
        r#"{"id":"a","schema":{"t:x":{}}}"#,
    ];
    for b in bad {
        let code = Application::from_json(b.as_bytes()).unwrap_err().code();
        // Names that end up in keys report the identifier check's own code.
        assert!(matches!(code, "invalid_application" | "invalid_identifier"), "{b}: {code}");
    }
}
