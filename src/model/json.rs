//! JSON helpers shared by decoding, patches and filters.
//!
//! Numbers arrive as `i64`, `u64` or `f64` depending on how they were written (`1`, `1.0`,
//! `18446744073709551615`). Telepat compared them with JavaScript's loose `==`, so `1` and
//! `1.0` were equal; we compare numerically, exactly for integers and through `f64` only when
//! a float is involved.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::error::ModelError;

/// Compares two JSON numbers by value.
///
/// Returns `None` only when a float is NaN, which `serde_json` never produces from text.
pub fn cmp_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    // One side is a u64 above i64::MAX and the other a negative i64.
    if let (Some(_), Some(_)) = (a.as_u64(), b.as_i64()) {
        return Some(Ordering::Greater);
    }
    if let (Some(_), Some(_)) = (a.as_i64(), b.as_u64()) {
        return Some(Ordering::Less);
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// Deep equality where numbers compare by value (`1 == 1.0`) and everything else strictly.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Returns a copy of `value` with every object's keys sorted, recursively; array order is kept.
///
/// With the `preserve_order` feature a `Map` keeps insertion order, so inserting sorted keys
/// into a fresh map is what makes the output canonical.
pub fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::with_capacity(map.len());
            for k in keys {
                if let Some(v) = map.get(k) {
                    out.insert(k.clone(), sorted(v));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Reads an optional string field; present-but-not-a-string is an error.
pub(crate) fn opt_str<'a>(map: &'a Map<String, Value>, key: &str, field: &str) -> Result<Option<&'a str>, ModelError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ModelError::wrong_type(field, "a string")),
    }
}

/// Reads a required string field.
pub(crate) fn req_str<'a>(map: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a str, ModelError> {
    opt_str(map, key, field)?.ok_or_else(|| ModelError::missing(field))
}

/// Reads a required object field.
pub(crate) fn req_obj<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a Map<String, Value>, ModelError> {
    match map.get(key) {
        None | Some(Value::Null) => Err(ModelError::missing(field)),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(ModelError::wrong_type(field, "an object")),
    }
}

/// Renders a scalar the way it appears inside a channel key (`"p1"` → `p1`, `7` → `7`).
pub(crate) fn scalar_to_key_part(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!([1, {"a": 2}]), &json!([1.0, {"a": 2.0}])));
        assert!(!json_eq(&json!(1), &json!("1")));
        let big = json!(u64::MAX);
        let neg = json!(-1);
        let (Value::Number(b), Value::Number(n)) = (&big, &neg) else { unreachable!() };
        assert_eq!(cmp_numbers(b, n), Some(Ordering::Greater));
        assert_eq!(cmp_numbers(n, b), Some(Ordering::Less));
    }

    #[test]
    fn sorted_is_recursive() {
        let v = json!({"b": [{"z": 1, "a": 2}], "a": 1});
        assert_eq!(serde_json::to_string(&sorted(&v)).unwrap(), r#"{"a":1,"b":[{"a":2,"z":1}]}"#);
    }
}
