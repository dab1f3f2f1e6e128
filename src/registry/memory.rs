//! The registry's in-process backend (`-t all` without Redis): the handful of Redis commands
//! the registry sends, with Redis's semantics, on a map in memory. The registry's logic (keys,
//! indexes, routing lookups) is the same code as against Redis; only the last hop differs.
//!
//! Not durable: a restart forgets devices and subscriptions. Clients of `-t all` resubscribe on
//! reconnect (`/client.js` does); configure Redis for a registry that survives restarts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use redis::{Arg, Cmd, Value};

use super::op::{Op, WRONGTYPE};
use super::RegistryError;

#[derive(Clone, Default)]
pub struct MemoryDb {
    keys: Arc<Mutex<HashMap<Box<str>, Entry>>>,
}

/// Compact on purpose: with `-t all`, every connected device keeps a few keys and set members
/// here (its record, its subscription list, its address in each channel and index), so their
/// layout is part of the memory per idle connection. Boxed slices instead of `String`/`Vec`
/// (no spare capacity, 8 bytes less each), and small sets as a list: most sets (a device's
/// subscriptions) hold one or two members, and an empty-capacity `HashSet` costs a 4-bucket
/// table plus its hasher for the first.
enum Entry {
    Text(Box<[u8]>),
    Set(Members),
}

/// Sets of up to [`FEW`] members are a list (a linear search over a handful beats hashing);
/// larger ones a hash set.
enum Members {
    Few(Vec<Box<[u8]>>),
    #[expect(
        clippy::box_collection,
        reason = "boxed, a large set costs one pointer in every key's slot instead of 48 bytes"
    )]
    Many(Box<HashSet<Box<[u8]>>>),
}

const FEW: usize = 8;

impl Members {
    fn insert(&mut self, member: Box<[u8]>) -> bool {
        match self {
            Members::Few(list) if list.contains(&member) => false,
            Members::Few(list) if list.len() < FEW => {
                list.reserve_exact(1);
                list.push(member);
                true
            }
            Members::Few(list) => {
                let mut set: HashSet<Box<[u8]>> = std::mem::take(list).into_iter().collect();
                set.insert(member);
                *self = Members::Many(Box::new(set));
                true
            }
            Members::Many(set) => set.insert(member),
        }
    }

    fn remove(&mut self, member: &[u8]) -> bool {
        match self {
            Members::Few(list) => match list.iter().position(|m| **m == *member) {
                Some(at) => {
                    list.swap_remove(at);
                    true
                }
                None => false,
            },
            Members::Many(set) => set.remove(member),
        }
    }

    fn len(&self) -> usize {
        match self {
            Members::Few(list) => list.len(),
            Members::Many(set) => set.len(),
        }
    }

    /// The members as an `SMEMBERS` reply.
    fn reply(&self) -> Value {
        let bulk = |m: &[u8]| Value::BulkString(m.to_vec());
        match self {
            Members::Few(list) => Value::Array(list.iter().map(|m| bulk(m)).collect()),
            Members::Many(set) => Value::Array(set.iter().map(|m| bulk(m)).collect()),
        }
    }
}

impl MemoryDb {
    /// Runs a batch atomically (one lock), one reply per command as Redis would give; the
    /// first command refused fails the batch (the others still ran, as in a Redis pipeline).
    pub fn run(&self, what: &str, ops: &[Op]) -> Result<Vec<Value>, RegistryError> {
        self.run_each(what, ops).into_iter().collect()
    }

    /// [`MemoryDb::run`] with each command's own outcome (see `Conn::run_each`).
    pub fn run_each(&self, what: &str, ops: &[Op]) -> Vec<Result<Value, RegistryError>> {
        let Ok(mut keys) = self.keys.lock() else {
            return ops.iter().map(|_| Err(RegistryError::Unavailable(format!("{what}: poisoned").into()))).collect();
        };
        ops.iter()
            .map(|op| {
                // The command's name, then (but for PING) the `Op`'s key, then its values.
                let skip = if op.name() == "PING" { 1 } else { 2 };
                let values = args(op.cmd()).skip(skip).collect();
                apply(&mut keys, op.name(), op.key(), values)
                    .map_err(|e| RegistryError::Corrupt(format!("{what}: {e}").into()))
            })
            .collect()
    }

    /// One command as `redis::cmd(...)` builds it (tests inspect and tamper with the map the
    /// way they do with a server).
    pub fn query(&self, cmd: &Cmd) -> Result<Value, RegistryError> {
        let mut args = args(cmd);
        let name = args.next().map(|n| String::from_utf8_lossy(&n).to_ascii_uppercase());
        let name = name.ok_or_else(|| RegistryError::Corrupt("empty command".into()))?;
        let key = args.next().map(|k| String::from_utf8_lossy(&k).into_owned()).unwrap_or_default();
        let args = args.collect();
        let mut keys = self.keys.lock().map_err(|_| RegistryError::Unavailable("poisoned".into()))?;
        apply(&mut keys, &name, &key, args).map_err(|e| RegistryError::Corrupt(e.into()))
    }

    /// Every key (tests).
    pub fn keys(&self) -> Vec<String> {
        self.keys.lock().map(|k| k.keys().map(|key| key.to_string()).collect()).unwrap_or_default()
    }

    /// Number of keys (tests).
    pub fn len(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every argument of `cmd`, its name first.
fn args(cmd: &Cmd) -> impl Iterator<Item = Vec<u8>> + '_ {
    cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(bytes) => Some(bytes.to_vec()),
        _ => None,
    })
}

/// One command on the map; `values` are its arguments after the key.
fn apply(keys: &mut HashMap<Box<str>, Entry>, name: &str, key: &str, values: Vec<Vec<u8>>) -> Result<Value, String> {
    let wrong_type = || format!("{WRONGTYPE} {name} on {key}");
    Ok(match name {
        "PING" => Value::SimpleString("PONG".into()),
        "GET" => match keys.get(key) {
            None => Value::Nil,
            Some(Entry::Text(v)) => Value::BulkString(v.to_vec()),
            Some(Entry::Set(_)) => return Err(wrong_type()),
        },
        "SET" => {
            let mut args = values.into_iter();
            let value = args.next().ok_or_else(|| format!("SET {key} without a value"))?;
            // `SET key value GET` answers the previous value; no other option is sent.
            let get = match args.next() {
                None => false,
                Some(o) if o.eq_ignore_ascii_case(b"GET") && args.next().is_none() => true,
                Some(o) => return Err(format!("SET option {} is not supported", String::from_utf8_lossy(&o))),
            };
            let previous = match keys.insert(key.into(), Entry::Text(value.into())) {
                None => Value::Nil,
                Some(Entry::Text(old)) => Value::BulkString(old.into()),
                Some(old @ Entry::Set(_)) => {
                    keys.insert(key.into(), old);
                    return Err(wrong_type());
                }
            };
            if get {
                previous
            } else {
                Value::Okay
            }
        }
        "DEL" => Value::Int(i64::from(keys.remove(key).is_some())),
        "EXISTS" => Value::Int(i64::from(keys.contains_key(key))),
        "SADD" => {
            let entry = keys.entry(key.into()).or_insert_with(|| Entry::Set(Members::Few(Vec::new())));
            let Entry::Set(set) = entry else { return Err(wrong_type()) };
            let added = values.into_iter().map(|m| set.insert(m.into())).filter(|&new| new).count();
            Value::Int(added as i64)
        }
        "SREM" => {
            let (removed, now_empty) = match keys.get_mut(key) {
                None => (0, false),
                Some(Entry::Text(_)) => return Err(wrong_type()),
                Some(Entry::Set(set)) => (values.iter().filter(|m| set.remove(m)).count(), set.len() == 0),
            };
            // Redis deletes a set when its last member goes.
            if now_empty {
                keys.remove(key);
            }
            Value::Int(removed as i64)
        }
        "SMEMBERS" => match keys.get(key) {
            None => Value::Array(Vec::new()),
            Some(Entry::Set(set)) => set.reply(),
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
                    Op::new("SET", "k").arg("v2").arg("GET"),
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
        assert_eq!(out[5], Value::BulkString(b"v1".to_vec()), "SET ... GET answers the previous value");
        assert_eq!(out[6], Value::BulkString(b"v2".to_vec()));
        assert_eq!(out[7], Value::Nil);
        assert_eq!((out[8].clone(), out[9].clone()), (Value::Int(1), Value::Int(0)));
        let first = db.run("t", &[Op::new("SET", "new").arg("x").arg("GET")]).unwrap();
        assert_eq!(first, vec![Value::Nil]);
    }

    #[test]
    fn an_emptied_set_disappears_and_wrong_types_are_corrupt() {
        let db = MemoryDb::default();
        db.run("t", &[Op::new("SADD", "s").arg("a"), Op::new("SREM", "s").arg("a")]).unwrap();
        assert!(db.is_empty());
        db.run("t", &[Op::new("SET", "k").arg("v")]).unwrap();
        let err = db.run("t", &[Op::new("SADD", "k").arg("x")]).unwrap_err();
        assert!(matches!(err, RegistryError::Corrupt(ref m) if m.to_string().contains("WRONGTYPE")), "{err}");
    }

    #[test]
    fn a_set_keeps_redis_semantics_across_its_small_and_large_forms() {
        let db = MemoryDb::default();
        let add = |m: String| db.run("t", &[Op::new("SADD", "s").arg(m)]).unwrap()[0].clone();
        for i in 0..20 {
            assert_eq!(add(format!("m{i}")), Value::Int(1));
            assert_eq!(add(format!("m{i}")), Value::Int(0), "a member once, in either form");
        }
        let all = db.run("t", &[Op::new("SMEMBERS", "s"), Op::new("SCARD", "s")]).unwrap();
        let mut want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        want.sort();
        assert_eq!((members(&all[0]), all[1].clone()), (want, Value::Int(20)));
        let removed = (0..20).filter(|i| i % 2 == 0).map(|i| Op::new("SREM", "s").arg(format!("m{i}")));
        assert!(db.run("t", &removed.collect::<Vec<_>>()).unwrap().iter().all(|r| *r == Value::Int(1)));
        let left = db.run("t", &[Op::new("SCARD", "s"), Op::new("SREM", "s").arg("m0")]).unwrap();
        assert_eq!(left, vec![Value::Int(10), Value::Int(0)]);
        let small = db.run("t", &[Op::new("SADD", "f").arg("a").arg("b"), Op::new("SREM", "f").arg("a")]).unwrap();
        assert_eq!(small, vec![Value::Int(2), Value::Int(1)]);
        assert_eq!(members(&db.run("t", &[Op::new("SMEMBERS", "f")]).unwrap()[0]), vec!["b"]);
    }
}
