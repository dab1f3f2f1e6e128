//! Property tests: decoding and evaluation never panic on arbitrary input, canonical filter
//! keys do not depend on key order, patches and push splitting keep their invariants.

use nexxus_worker::model::message::{decode_aggregation, PatchPath};
use nexxus_worker::model::patch::apply_patch;
use nexxus_worker::model::track::decode_track;
use nexxus_worker::model::{split_push, ChannelKey, DeliveryBatch, Delta, DeltaOp, Filter, Patch, PatchOp};
use proptest::prelude::*;
use serde_json::{json, Map, Number, Value};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z:/|]{0,6}".prop_map(Value::String),
        prop_oneof![Just("a"), Just("b"), Just("task/t1/a"), Just("app1")].prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn key_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("op"),
            Just("application_id"),
            Just("timestamp"),
            Just("object"),
            Just("patches"),
            Just("path"),
            Just("value"),
            Just("type"),
            Just("id"),
            Just("model"),
            Just("device"),
            Just("device_id"),
            Just("channel"),
            Just("filters"),
            Just("and"),
            Just("or"),
            Just("is"),
            Just("like"),
            Just("range"),
            Just("not"),
            Just("exists"),
            Just("in_array"),
            Just("gt"),
            Just("lte"),
            Just("field"),
            Just("persistent"),
            Just("token"),
            Just("context"),
            Just("parent"),
            Just("a"),
        ]
        .prop_map(str::to_owned),
        "[a-z_]{0,5}",
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key_name(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Messages with a real `op` and otherwise arbitrary fields, to get past the first checks.
fn near_message() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        Just("create"),
        Just("update"),
        Just("delete"),
        Just("device_register"),
        Just("device_remove"),
        Just("subscribe"),
        Just("unsubscribe"),
    ];
    (op, prop::collection::vec((key_name(), any_json()), 0..6)).prop_map(|(op, kv)| {
        let mut m: Map<String, Value> = kv.into_iter().collect();
        m.insert("op".into(), json!(op));
        m.entry("application_id").or_insert(json!("app1"));
        m.entry("timestamp").or_insert(json!(1));
        Value::Object(m)
    })
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned)
}

fn fields_of(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(field(), v, 1..3).prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn condition() -> impl Strategy<Value = Value> {
    let num = prop_oneof![(-5i64..5).prop_map(Value::from), (-5.0f64..5.0).prop_map(Value::from)];
    let bound = prop::collection::btree_map(
        prop_oneof![Just("gt"), Just("gte"), Just("lt"), Just("lte")].prop_map(str::to_owned),
        num.clone(),
        1..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()));
    prop_oneof![
        fields_of(scalar()).prop_map(|v| json!({"is": v})),
        fields_of("[a-c]{0,2}".prop_map(Value::String)).prop_map(|v| json!({"like": v})),
        fields_of(bound).prop_map(|v| json!({"range": v})),
        fields_of(prop::collection::vec(num, 0..3).prop_map(Value::Array)).prop_map(|v| json!({"in_array": v})),
        field().prop_map(|f| json!({"exists": {"field": f}})),
        (field(), scalar()).prop_map(|(f, v)| json!({"not": {"is": {f: v}}})),
    ]
}

fn valid_filter() -> impl Strategy<Value = Value> {
    let group = |items: Vec<Value>, and: bool| {
        if and {
            json!({ "and": items })
        } else {
            json!({ "or": items })
        }
    };
    let leaf =
        (prop::collection::vec(condition(), 1..4), any::<bool>()).prop_map(move |(items, and)| group(items, and));
    leaf.prop_recursive(3, 24, 4, move |inner| {
        (prop::collection::vec(prop_oneof![inner, condition()], 1..4), any::<bool>())
            .prop_map(move |(items, and)| group(items, and))
    })
}

/// Rebuilds every object with its keys rotated by `seed` (and reversed on odd seeds).
fn reorder(v: &Value, seed: usize) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.iter().map(|(k, v)| (k.clone(), reorder(v, seed + 1))).collect();
            if !entries.is_empty() {
                let n = entries.len();
                entries.rotate_left(seed % n);
            }
            if seed % 2 == 1 {
                entries.reverse();
            }
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| reorder(x, seed + 1)).collect()),
        other => other.clone(),
    }
}

proptest! {
    // No regression file: failures print their minimal input, which belongs in a unit test.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decoders_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_aggregation(&bytes, 1 << 20);
        let _ = decode_track(&bytes, 1 << 20);
        let _ = Filter::from_key_suffix(&String::from_utf8_lossy(&bytes));
        let _ = ChannelKey::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn decoders_never_panic_on_json(v in prop_oneof![any_json(), near_message()]) {
        let bytes = serde_json::to_vec(&v).unwrap();
        let _ = decode_aggregation(&bytes, 1 << 20);
        let _ = decode_track(&bytes, 1 << 20);
    }

    #[test]
    fn filter_parse_and_eval_never_panic(f in any_json(), obj in any_json()) {
        if let Ok(filter) = Filter::parse(&f) {
            let _ = filter.eval(&obj);
            let _ = filter.transition(Some(&obj), Some(&f));
        }
    }

    #[test]
    fn valid_filters_evaluate_and_round_trip(f in valid_filter(), obj in any_json()) {
        let filter = Filter::parse(&f).unwrap();
        let _ = filter.eval(&obj);
        let again = Filter::from_key_suffix(&filter.key_suffix()).unwrap();
        prop_assert_eq!(again.key_suffix(), filter.key_suffix());
        prop_assert_eq!(again.eval(&obj), filter.eval(&obj));
    }

    #[test]
    fn canonical_key_is_stable_under_key_reordering(f in valid_filter(), seed in 0usize..7) {
        let a = Filter::parse(&f).unwrap();
        let b = Filter::parse(&reorder(&f, seed)).unwrap();
        prop_assert_eq!(a.key_suffix(), b.key_suffix());
        prop_assert_eq!(a.canonical_json(), b.canonical_json());
    }

    #[test]
    fn patches_never_panic_and_fail_atomically(
        obj in any_json(), value in any_json(), f in field(),
        op in prop_oneof![Just(PatchOp::Replace), Just(PatchOp::Increment),
                          Just(PatchOp::Append), Just(PatchOp::Remove)],
    ) {
        let mut map = match obj { Value::Object(m) => m, other => {
            let mut m = Map::new();
            m.insert(f.clone(), other);
            m
        }};
        let before = map.clone();
        let patch = Patch {
            op,
            path: PatchPath::parse(&format!("task/t1/{f}")).unwrap(),
            value,
            user_id: None,
        };
        if apply_patch(&mut map, &patch).is_err() {
            prop_assert_eq!(map, before);
        }
    }

    #[test]
    fn push_payloads_never_exceed_the_limit(
        sizes in prop::collection::vec((0usize..3, 0usize..6000), 0..30),
        limit in 600usize..5000,
    ) {
        let mut batch = DeliveryBatch::default();
        for (kind, size) in &sizes {
            let op = [DeltaOp::Create, DeltaOp::Update, DeltaOp::Delete][*kind];
            let mut object = Map::new();
            object.insert("blob".into(), Value::String("x".repeat(*size)));
            batch.push(Delta {
                op,
                object: Some(object),
                patch: None,
                subscriptions: vec![ChannelKey::parse("blg:app1:user").unwrap().canonical_key().unwrap()],
                application_id: "app1".into(),
                timestamp: 1,
                version: 1,
            });
        }
        for p in split_push(&batch, limit) {
            prop_assert!(serde_json::to_vec(&p).unwrap().len() <= limit);
        }
    }
}
