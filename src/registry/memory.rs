//! The registry's in-process backend (`-t all` without Redis): the handful of Redis commands
//! the registry sends, with Redis's semantics, on a map in memory. The registry's logic (keys,
//! indexes, routing lookups) is the same code as against Redis; only the last hop differs.
//!
//! Not durable: a restart forgets devices and subscriptions. Clients of `-t all` resubscribe on
//! reconnect (`/client.js` does); configure Redis for a registry that survives restarts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use redis::{Arg, Value};

use super::conn::Op;
use super::RegistryError;

#[derive(Clone, Default)]
pub struct MemoryDb {
    keys: Arc<Mutex<HashMap<String, Entry>>>,
}

enum Entry {
    Text(Vec<u8>),
    Set(HashSet<Vec<u8>>),
}

impl MemoryDb {
    /// Runs a batch atomically (one lock), one reply per command as Redis would give.
    pub fn run(&self, what: &str, ops: &[Op]) -> Result<Vec<Value>, RegistryError> {
        let mut keys = self.keys.lock().map_err(|_| RegistryError::Unavailable(format!("{what}: poisoned")))?;
        ops.iter().map(|op| apply(&mut keys, op).map_err(|e| RegistryError::Corrupt(format!("{what}: {e}")))).collect()
    }

    /// Number of keys (tests and gauges).
    pub fn len(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn apply(keys: &mut HashMap<String, Entry>, op: &Op) -> Result<Value, String> {
    // The command name, then the key (`Op::new`), then the command's values.
    let values: Vec<Vec<u8>> = op
        .cmd()
        .args_iter()
        .skip(2)
        .filter_map(|a| match a {
            Arg::Simple(bytes) => Some(bytes.to_vec()),
            _ => None,
        })
        .collect();
    let key = op.key();
    let wrong_type = || format!("WRONGTYPE {} on {key}", op.name());
    Ok(match op.name() {
        "PING" => Value::SimpleString("PONG".into()),
        "GET" => match keys.get(key) {
            None => Value::Nil,
            Some(Entry::Text(v)) => Value::BulkString(v.clone()),
            Some(Entry::Set(_)) => return Err(wrong_type()),
        },
        "SET" => {
            let value = values.into_iter().next().ok_or_else(|| format!("SET {key} without a value"))?;
            keys.insert(key.to_string(), Entry::Text(value));
            Value::Okay
        }
        "DEL" => Value::Int(i64::from(keys.remove(key).is_some())),
        "SADD" => {
            let entry = keys.entry(key.to_string()).or_insert_with(|| Entry::Set(HashSet::new()));
            let Entry::Set(set) = entry else { return Err(wrong_type()) };
            Value::Int(values.into_iter().filter(|m| set.insert(m.clone())).count() as i64)
        }
        "SREM" => {
            let (removed, now_empty) = match keys.get_mut(key) {
                None => (0, false),
                Some(Entry::Text(_)) => return Err(wrong_type()),
                Some(Entry::Set(set)) => (values.iter().filter(|m| set.remove(*m)).count(), set.is_empty()),
            };
            // Redis deletes a set when its last member goes.
            if now_empty {
                keys.remove(key);
            }
            Value::Int(removed as i64)
        }
        "SMEMBERS" => match keys.get(key) {
            None => Value::Array(Vec::new()),
            Some(Entry::Set(set)) => Value::Array(set.iter().cloned().map(Value::BulkString).collect()),
            Some(Entry::Text(_)) => return Err(wrong_type()),
        },
        "SCARD" => match keys.get(key) {
            None => Value::Int(0),
            Some(Entry::Set(set)) => Value::Int(set.len() as i64),
            Some(Entry::Text(_)) => return Err(wrong_type()),
        },
        other => return Err(format!("command {other} is not supported by the in-memory registry")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(v: &Value) -> Vec<String> {
        let Value::Array(items) = v else { panic!("not an array: {v:?}") };
        let mut out: Vec<String> = items
            .iter()
            .map(|i| match i {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("{other:?}"),
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn sets_and_strings_behave_like_redis() {
        let db = MemoryDb::default();
        let out = db
            .run(
                "t",
                &[
                    Op::new("SADD", "s").arg("a").arg("b").arg("a"),
                    Op::new("SCARD", "s"),
                    Op::new("SREM", "s").arg("a").arg("zz"),
                    Op::new("SMEMBERS", "s"),
                    Op::new("SET", "k").arg("v1"),
                    Op::new("GET", "k"),
                    Op::new("GET", "missing"),
                    Op::new("DEL", "k"),
                    Op::new("DEL", "k"),
                ],
            )
            .unwrap();
        assert_eq!(out[0], Value::Int(2));
        assert_eq!(out[1], Value::Int(2));
        assert_eq!(out[2], Value::Int(1));
        assert_eq!(members(&out[3]), vec!["b"]);
        assert_eq!(out[4], Value::Okay);
        assert_eq!(out[5], Value::BulkString(b"v1".to_vec()));
        assert_eq!(out[6], Value::Nil);
        assert_eq!((out[7].clone(), out[8].clone()), (Value::Int(1), Value::Int(0)));
    }

    #[test]
    fn an_emptied_set_disappears_and_wrong_types_are_corrupt() {
        let db = MemoryDb::default();
        db.run("t", &[Op::new("SADD", "s").arg("a"), Op::new("SREM", "s").arg("a")]).unwrap();
        assert!(db.is_empty());
        db.run("t", &[Op::new("SET", "k").arg("v")]).unwrap();
        let err = db.run("t", &[Op::new("SADD", "k").arg("x")]).unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt(ref m) if m.contains("WRONGTYPE")), "{err}");
    }
}
