//! Telepat's filter language: parsing, canonical form, channel-key suffix.
//!
//! Wire shape (telepat-original section 13): a root `{"and"|"or": [element, ...]}` where an
//! element is one of
//!
//! ```text
//! {"is":       {field: value, ...}}            equality, numbers by value
//! {"like":     {field: "text", ...}}           case-sensitive substring, never a regex
//! {"range":    {field: {"gt"|"gte"|"lt"|"lte": n, ...}, ...}}
//! {"in_array": {field: [v, ...], ...}}         field equals (or contains) one of the values
//! {"exists":   {"field": "name"}}              also accepted: {"exists": "name"}
//! {"not":      element}                        one single-field condition, or a group
//! {"and"|"or": [element, ...]}                 nesting
//! ```
//!
//! As in Telepat's `testObject`, the fields of a multi-field element are separate conditions
//! joined by the enclosing group's connector: inside an `or`, `{"is":{"a":1,"b":2}}` means
//! `a == 1 || b == 2`. The bounds of one `range` field always hold together.
//!
//! The canonical form is the filter re-serialized from the parsed tree with every object's
//! keys sorted and no whitespace, so two filters that differ only in key order (or in the
//! `exists` shorthand) share one channel key `...:filter:<base64>`. The base64 is the standard
//! alphabet with padding, the same as Telepat's `Buffer.toString('base64')`, so a Telepat key
//! whose filter JSON was already sorted is byte-identical to ours.

mod eval;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{Map, Number, Value};

pub use eval::Transition;

use super::error::ModelError;
use super::json::sorted;

/// Deepest nesting of groups and `not` accepted.
pub const MAX_FILTER_DEPTH: usize = 32;
/// Most field conditions accepted in one filter.
pub const MAX_FILTER_CONDITIONS: usize = 1024;
/// Longest filter key suffix accepted, in base64 characters.
pub const MAX_FILTER_KEY_LEN: usize = 64 * 1024;

/// How the elements of a group combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Connector {
    And,
    Or,
}

impl Connector {
    fn as_str(self) -> &'static str {
        match self {
            Connector::And => "and",
            Connector::Or => "or",
        }
    }
}

/// Numeric bounds of one `range` field; at least one is set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bounds {
    pub gt: Option<Number>,
    pub gte: Option<Number>,
    pub lt: Option<Number>,
    pub lte: Option<Number>,
}

/// One element of a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    Group(Connector, Vec<Element>),
    Is(Vec<(String, Value)>),
    Like(Vec<(String, String)>),
    Range(Vec<(String, Bounds)>),
    InArray(Vec<(String, Vec<Value>)>),
    Exists(String),
    Not(Box<Element>),
}

/// A parsed, validated filter; its root is always an `and` or `or` group.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    connector: Connector,
    elements: Vec<Element>,
}

struct Budget {
    conditions: usize,
}

impl Budget {
    fn take(&mut self, n: usize, at: &str) -> Result<(), ModelError> {
        self.conditions += n;
        if self.conditions > MAX_FILTER_CONDITIONS {
            return Err(ModelError::filter(at, "more than 1024 conditions"));
        }
        Ok(())
    }
}

impl Filter {
    /// Parses Telepat filter JSON.
    pub fn parse(value: &Value) -> Result<Self, ModelError> {
        let mut budget = Budget { conditions: 0 };
        // Floats survive print-then-parse (serde_json's `float_roundtrip`), so the canonical key of
        // a filter read back from its key is the key itself (checked by the model proptests).
        match parse_element(value, "filters", 0, &mut budget)? {
            Element::Group(connector, elements) => Ok(Filter { connector, elements }),
            _ => Err(ModelError::filter("filters", "the root must be {\"and\":[...]} or {\"or\":[...]}")),
        }
    }

    /// Parses filter JSON text.
    pub fn parse_str(text: &str) -> Result<Self, ModelError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::filter("filters", e.to_string()))?;
        Self::parse(&value)
    }

    pub fn connector(&self) -> Connector {
        self.connector
    }

    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    /// Returns the canonical JSON value (sorted keys, normalized shorthands).
    pub fn to_value(&self) -> Value {
        sorted(&group_value(self.connector, &self.elements))
    }

    /// Returns the canonical JSON text: the bytes behind the channel key suffix.
    pub fn canonical_json(&self) -> String {
        // Serializing a `Value` cannot fail: its keys are strings and floats are finite.
        serde_json::to_string(&self.to_value()).unwrap_or_default()
    }

    /// Returns the standard-base64 suffix used in `<channel>:filter:<suffix>`.
    pub fn key_suffix(&self) -> String {
        STANDARD.encode(self.canonical_json())
    }

    /// Decodes a filter from a key suffix: ours, or Telepat's base64 of the client's JSON in
    /// whatever key order it was sent. Standard and URL-safe alphabets, padded or not.
    pub fn from_key_suffix(suffix: &str) -> Result<Self, ModelError> {
        if suffix.len() > MAX_FILTER_KEY_LEN {
            return Err(ModelError::InvalidFilterKey {
                reason: format!("longer than {MAX_FILTER_KEY_LEN} characters"),
            });
        }
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(suffix).ok())
            .ok_or_else(|| ModelError::InvalidFilterKey { reason: "not base64".into() })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ModelError::InvalidFilterKey { reason: format!("not JSON: {e}") })?;
        Self::parse(&value)
    }
}

fn parse_element(value: &Value, at: &str, depth: usize, budget: &mut Budget) -> Result<Element, ModelError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(ModelError::filter(at, "nested deeper than 32 levels"));
    }
    let Value::Object(map) = value else {
        return Err(ModelError::filter(at, "an element must be an object"));
    };
    let mut entries = map.iter();
    let (Some((op, body)), None) = (entries.next(), entries.next()) else {
        return Err(ModelError::filter(at, "an element must have exactly one key"));
    };
    let at = format!("{at}.{op}");
    match op.as_str() {
        "and" | "or" => {
            let Value::Array(items) = body else {
                return Err(ModelError::filter(&at, "must be an array"));
            };
            if items.is_empty() {
                return Err(ModelError::filter(&at, "must not be empty"));
            }
            let connector = if op == "and" { Connector::And } else { Connector::Or };
            let children = items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_element(v, &format!("{at}[{i}]"), depth + 1, budget))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Element::Group(connector, children))
        }
        "not" => {
            let inner = parse_element(body, &at, depth + 1, budget)?;
            let single = match &inner {
                Element::Is(f) => f.len() == 1,
                Element::Like(f) => f.len() == 1,
                Element::Range(f) => f.len() == 1,
                Element::InArray(f) => f.len() == 1,
                _ => true,
            };
            if !single {
                return Err(ModelError::filter(&at, "takes one single-field condition or a group"));
            }
            Ok(Element::Not(Box::new(inner)))
        }
        "exists" => {
            let field = match body {
                Value::String(s) => s.as_str(),
                Value::Object(m) => match (m.len(), m.get("field")) {
                    (1, Some(Value::String(s))) => s.as_str(),
                    _ => return Err(ModelError::filter(&at, "must be {\"field\": \"<name>\"}")),
                },
                _ => return Err(ModelError::filter(&at, "must be {\"field\": \"<name>\"}")),
            };
            if field.is_empty() {
                return Err(ModelError::filter(&at, "field name is empty"));
            }
            budget.take(1, &at)?;
            Ok(Element::Exists(field.to_owned()))
        }
        "is" => fields(body, &at, budget, |v, _| Ok(v.clone())).map(Element::Is),
        "like" => fields(body, &at, budget, |v, at| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(ModelError::filter(at, "must be a string")),
        })
        .map(Element::Like),
        "in_array" => fields(body, &at, budget, |v, at| match v {
            Value::Array(items) => Ok(items.clone()),
            _ => Err(ModelError::filter(at, "must be an array")),
        })
        .map(Element::InArray),
        "range" => fields(body, &at, budget, parse_bounds).map(Element::Range),
        other => Err(ModelError::filter(&at, format!("unknown operator `{other}`"))),
    }
}

/// Parses `{field: <spec>, ...}` into a list sorted by field name.
fn fields<T>(
    body: &Value,
    at: &str,
    budget: &mut Budget,
    each: impl Fn(&Value, &str) -> Result<T, ModelError>,
) -> Result<Vec<(String, T)>, ModelError> {
    let Value::Object(map) = body else {
        return Err(ModelError::filter(at, "must be an object of fields"));
    };
    if map.is_empty() {
        return Err(ModelError::filter(at, "names no field"));
    }
    budget.take(map.len(), at)?;
    let mut out = map
        .iter()
        .map(|(k, v)| {
            if k.is_empty() {
                return Err(ModelError::filter(at, "field name is empty"));
            }
            Ok((k.clone(), each(v, &format!("{at}.{k}"))?))
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn parse_bounds(v: &Value, at: &str) -> Result<Bounds, ModelError> {
    let Value::Object(m) = v else {
        return Err(ModelError::filter(at, "must be an object of bounds"));
    };
    if m.is_empty() {
        return Err(ModelError::filter(at, "names no bound"));
    }
    let mut b = Bounds::default();
    for (k, v) in m {
        let Value::Number(n) = v else {
            return Err(ModelError::filter(at, format!("bound `{k}` must be a number")));
        };
        let slot = match k.as_str() {
            "gt" => &mut b.gt,
            "gte" => &mut b.gte,
            "lt" => &mut b.lt,
            "lte" => &mut b.lte,
            other => return Err(ModelError::filter(at, format!("unknown bound `{other}`"))),
        };
        *slot = Some(n.clone());
    }
    Ok(b)
}

fn group_value(connector: Connector, elements: &[Element]) -> Value {
    let mut m = Map::new();
    m.insert(connector.as_str().into(), Value::Array(elements.iter().map(element_value).collect()));
    Value::Object(m)
}

fn one(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.into(), value);
    Value::Object(m)
}

fn field_map<T>(list: &[(String, T)], f: impl Fn(&T) -> Value) -> Value {
    Value::Object(list.iter().map(|(k, v)| (k.clone(), f(v))).collect())
}

fn element_value(e: &Element) -> Value {
    match e {
        Element::Group(c, items) => group_value(*c, items),
        Element::Is(f) => one("is", field_map(f, Clone::clone)),
        Element::Like(f) => one("like", field_map(f, |s| Value::String(s.clone()))),
        Element::InArray(f) => one("in_array", field_map(f, |v| Value::Array(v.clone()))),
        Element::Range(f) => one(
            "range",
            field_map(f, |b| {
                let mut m = Map::new();
                for (k, v) in [("gt", &b.gt), ("gte", &b.gte), ("lt", &b.lt), ("lte", &b.lte)] {
                    if let Some(n) = v {
                        m.insert(k.into(), Value::Number(n.clone()));
                    }
                }
                Value::Object(m)
            }),
        ),
        Element::Exists(field) => one("exists", one("field", Value::String(field.clone()))),
        Element::Not(inner) => one("not", element_value(inner)),
    }
}
