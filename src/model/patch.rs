//! Applying Telepat patches to an object (telepat-original 6.3, CONTRACT section 4).
//!
//! | op          | field missing/null | field array        | field string       | other         |
//! |-------------|--------------------|--------------------|--------------------|---------------|
//! | `replace`   | set                | set                | set                | set           |
//! | `increment` | `0 + value`        | error              | error              | number: add   |
//! | `append`    | `[value]`          | push               | concatenate        | error         |
//! | `remove`    | no-op              | drop first equal   | error              | error         |
//!
//! Differences from Telepat, on purpose: a patch that cannot apply is an error (Telepat
//! produced `NaN` or silently did nothing), immutable fields are refused rather than skipped,
//! and "equal" in `remove` compares numbers by value. Integer increments stay integers and
//! are checked for overflow; once a float is involved the result is a float.

use serde_json::{Map, Number, Value};

use super::error::ModelError;
use super::json::json_eq;
use super::message::{Patch, PatchOp, IMMUTABLE_FIELDS};

fn not_applicable(op: PatchOp, field: &str, reason: &'static str) -> ModelError {
    ModelError::PatchNotApplicable { op: op.as_str(), field: field.to_owned(), reason }
}

/// Adds two JSON numbers: exactly for integers, as `f64` otherwise.
fn add_numbers(a: &Number, b: &Number) -> Option<Number> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        if let Some(sum) = x.checked_add(y) {
            return Some(Number::from(sum));
        }
    }
    let wide = |n: &Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    if let (Some(x), Some(y)) = (wide(a), wide(b)) {
        let sum = x.checked_add(y)?;
        return i64::try_from(sum).map(Number::from).ok().or_else(|| u64::try_from(sum).ok().map(Number::from));
    }
    Number::from_f64(a.as_f64()? + b.as_f64()?)
}

/// Applies one patch to the fields of an object, in place; on error the object is unchanged.
///
/// Does not look at `path.model`/`path.id`: matching the patch to the object is the caller's
/// job ([`super::object::StoredObject::apply`] does it).
pub fn apply_patch(object: &mut Map<String, Value>, patch: &Patch) -> Result<(), ModelError> {
    let field = patch.path.field.as_str();
    if IMMUTABLE_FIELDS.contains(&field) {
        return Err(ModelError::ImmutableField { field: field.to_owned() });
    }
    let op = patch.op;
    let current = object.get(field).filter(|v| !v.is_null());
    let new = match (op, current) {
        (PatchOp::Replace, _) => patch.value.clone(),

        (PatchOp::Increment, cur) => {
            let Value::Number(by) = &patch.value else {
                return Err(not_applicable(op, field, "the value is not a number"));
            };
            let base = match cur {
                None => Number::from(0),
                Some(Value::Number(n)) => n.clone(),
                Some(_) => return Err(not_applicable(op, field, "the field is not a number")),
            };
            let sum = add_numbers(&base, by).ok_or_else(|| not_applicable(op, field, "the result is out of range"))?;
            Value::Number(sum)
        }

        (PatchOp::Append, None) => Value::Array(vec![patch.value.clone()]),
        (PatchOp::Append, Some(Value::Array(items))) => {
            let mut items = items.clone();
            items.push(patch.value.clone());
            Value::Array(items)
        }
        (PatchOp::Append, Some(Value::String(s))) => {
            let tail = match &patch.value {
                Value::String(t) => t.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(not_applicable(
                        op,
                        field,
                        "only a string, number or boolean can be appended to a string",
                    ))
                }
            };
            Value::String(format!("{s}{tail}"))
        }
        (PatchOp::Append, Some(_)) => return Err(not_applicable(op, field, "the field is not an array or a string")),

        (PatchOp::Remove, None) => return Ok(()),
        (PatchOp::Remove, Some(Value::Array(items))) => {
            let mut items = items.clone();
            if let Some(i) = items.iter().position(|v| json_eq(v, &patch.value)) {
                items.remove(i);
            }
            Value::Array(items)
        }
        (PatchOp::Remove, Some(_)) => return Err(not_applicable(op, field, "the field is not an array")),
    };
    object.insert(field.to_owned(), new);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::message::PatchPath;

    fn patch(op: PatchOp, field: &str, value: Value) -> Patch {
        Patch {
            op,
            path: PatchPath { model: "task".into(), id: "t1".into(), field: field.into() },
            value,
            user_id: None,
        }
    }

    fn apply(obj: Value, op: PatchOp, field: &str, value: Value) -> Result<Value, ModelError> {
        let Value::Object(mut m) = obj else { unreachable!() };
        apply_patch(&mut m, &patch(op, field, value))?;
        Ok(Value::Object(m))
    }

    #[test]
    fn replace_sets_any_value() {
        let r = apply(json!({"a": 1}), PatchOp::Replace, "a", json!({"x": [1]}));
        assert_eq!(r.unwrap(), json!({"a": {"x": [1]}}));
    }

    #[test]
    fn increment() {
        use PatchOp::Increment as I;
        assert_eq!(apply(json!({}), I, "v", json!(2)).unwrap(), json!({"v": 2}));
        assert_eq!(apply(json!({"v": null}), I, "v", json!(2)).unwrap(), json!({"v": 2}));
        assert_eq!(apply(json!({"v": 1}), I, "v", json!(-3)).unwrap(), json!({"v": -2}));
        assert_eq!(apply(json!({"v": 1}), I, "v", json!(0.5)).unwrap(), json!({"v": 1.5}));
        let big = apply(json!({"v": i64::MAX}), I, "v", json!(1)).unwrap();
        assert_eq!(big, json!({"v": (i64::MAX as u64) + 1}));
        assert!(apply(json!({"v": u64::MAX}), I, "v", json!(1)).is_err());
        assert!(apply(json!({"v": "1"}), I, "v", json!(1)).is_err());
        assert!(apply(json!({"v": 1}), I, "v", json!("1")).is_err());
        assert!(apply(json!({"v": 1e308}), I, "v", json!(1e308)).is_err());
    }

    #[test]
    fn append() {
        use PatchOp::Append as A;
        assert_eq!(apply(json!({}), A, "t", json!("x")).unwrap(), json!({"t": ["x"]}));
        assert_eq!(apply(json!({"t": [1]}), A, "t", json!(2)).unwrap(), json!({"t": [1, 2]}));
        assert_eq!(apply(json!({"t": "ab"}), A, "t", json!("c")).unwrap(), json!({"t": "abc"}));
        assert_eq!(apply(json!({"t": "n"}), A, "t", json!(5)).unwrap(), json!({"t": "n5"}));
        assert!(apply(json!({"t": "n"}), A, "t", json!([5])).is_err());
        assert!(apply(json!({"t": 3}), A, "t", json!(5)).is_err());
    }

    #[test]
    fn remove_first_equal() {
        use PatchOp::Remove as R;
        let r = apply(json!({"t": [1, 2, 1.0]}), R, "t", json!(1.0)).unwrap();
        assert_eq!(r, json!({"t": [2, 1.0]}));
        assert_eq!(apply(json!({"t": [1]}), R, "t", json!(3)).unwrap(), json!({"t": [1]}));
        assert_eq!(apply(json!({}), R, "t", json!(3)).unwrap(), json!({}));
        assert!(apply(json!({"t": "abc"}), R, "t", json!("a")).is_err());
    }

    #[test]
    fn immutable_fields_are_refused() {
        for f in IMMUTABLE_FIELDS {
            let err = apply(json!({}), PatchOp::Replace, f, json!(1)).unwrap_err();
            assert_eq!(err.code(), "immutable_field");
        }
    }
}
