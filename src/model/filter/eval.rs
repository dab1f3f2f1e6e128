//! Filter evaluation, and the enter / stay / leave decision on before- and after-images.
//!
//! Telepat's worker evaluated `like` as a raw regex, threw on missing fields and ignored
//! `range` (telepat-original 13.2). Here: every operator is evaluated, a missing field (or a
//! field holding `null`) makes a condition false, `not` inverts whatever is inside it, and
//! nothing can panic or run unbounded (the parser bounds depth and size).
//!
//! Array fields follow Elasticsearch, which served the initial subscribe result in Telepat:
//! `is`, `like` and `in_array` on an array field match when any element matches.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::{Bounds, Connector, Element, Filter};
use crate::model::json::{cmp_numbers, json_eq};

/// How a change moves an object relative to one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Did not match before, matches after: the subscriber receives it as `new`.
    Enter,
    /// Matched before and after: an ordinary `updated`.
    Stay,
    /// Matched before, not after: the subscriber receives it as `deleted`.
    Leave,
    /// Matched neither: nothing to send.
    None,
}

impl Filter {
    /// Tests an object; anything but a JSON object never matches.
    pub fn eval(&self, object: &Value) -> bool {
        match object {
            Value::Object(map) => self.matches(map),
            _ => false,
        }
    }

    /// Tests an object's fields.
    pub fn matches(&self, object: &Map<String, Value>) -> bool {
        eval_group(self.connector, &self.elements, object)
    }

    /// Classifies a change: `before`/`after` are `None` when the object did not exist
    /// (create) or no longer exists (delete).
    pub fn transition(&self, before: Option<&Value>, after: Option<&Value>) -> Transition {
        let was = before.is_some_and(|v| self.eval(v));
        let is = after.is_some_and(|v| self.eval(v));
        match (was, is) {
            (false, true) => Transition::Enter,
            (true, true) => Transition::Stay,
            (true, false) => Transition::Leave,
            (false, false) => Transition::None,
        }
    }
}

fn eval_group(connector: Connector, elements: &[Element], obj: &Map<String, Value>) -> bool {
    match connector {
        Connector::And => elements.iter().all(|e| eval_element(e, connector, obj)),
        Connector::Or => elements.iter().any(|e| eval_element(e, connector, obj)),
    }
}

/// Combines the per-field results of one element with the enclosing connector.
fn combine<T>(
    connector: Connector,
    fields: &[(String, T)],
    obj: &Map<String, Value>,
    test: impl Fn(&Value, &T) -> bool,
) -> bool {
    let one = |(name, spec): &(String, T)| match obj.get(name) {
        None | Some(Value::Null) => false,
        Some(v) => test(v, spec),
    };
    match connector {
        Connector::And => fields.iter().all(one),
        Connector::Or => fields.iter().any(one),
    }
}

fn eval_element(e: &Element, connector: Connector, obj: &Map<String, Value>) -> bool {
    match e {
        Element::Group(c, items) => eval_group(*c, items, obj),
        Element::Is(f) => combine(connector, f, obj, is_equal),
        Element::Like(f) => combine(connector, f, obj, |v, needle| like(v, needle)),
        Element::Range(f) => combine(connector, f, obj, in_range),
        Element::InArray(f) => combine(connector, f, obj, |v, list| list.iter().any(|wanted| is_equal(v, wanted))),
        Element::Exists(field) => obj.get(field).is_some_and(|v| !v.is_null()),
        // A `not` holds one field or a group, so the connector does not matter inside it.
        Element::Not(inner) => !eval_element(inner, Connector::And, obj),
    }
}

fn is_equal(stored: &Value, wanted: &Value) -> bool {
    if json_eq(stored, wanted) {
        return true;
    }
    match (stored, wanted) {
        (Value::Array(items), w) if !w.is_array() => items.iter().any(|i| json_eq(i, w)),
        _ => false,
    }
}

fn like(stored: &Value, needle: &str) -> bool {
    match stored {
        Value::String(s) => s.contains(needle),
        Value::Number(n) => n.to_string().contains(needle),
        Value::Bool(b) => b.to_string().contains(needle),
        Value::Array(items) => items.iter().any(|i| !i.is_array() && !i.is_object() && like(i, needle)),
        Value::Null | Value::Object(_) => false,
    }
}

fn in_range(stored: &Value, b: &Bounds) -> bool {
    let Value::Number(x) = stored else {
        return false;
    };
    let check = |bound: &Option<serde_json::Number>, ok: fn(Ordering) -> bool| match bound {
        None => true,
        Some(n) => cmp_numbers(x, n).is_some_and(ok),
    };
    check(&b.gt, |o| o == Ordering::Greater)
        && check(&b.gte, |o| o != Ordering::Less)
        && check(&b.lt, |o| o == Ordering::Less)
        && check(&b.lte, |o| o != Ordering::Greater)
}
