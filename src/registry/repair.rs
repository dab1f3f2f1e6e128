//! What the registry does about values that are not what it stored: nothing found in Redis may
//! stop a worker or lock a device out (issue 14).
//!
//! Every key the registry writes has one kind ([`keys::kind_of`]) and each kind one Redis type,
//! and the spellings of the kinds are disjoint (checked over every channel mask in `keys`). So
//! a `WRONGTYPE` on a key whose kind is known can only be a value written from outside (by hand,
//! by another program): it holds nothing of ours, and writes replace it. A `WRONGTYPE` on a key
//! of no known kind, or of a kind whose type is the one the command wanted, means the registry
//! computed a key it should not have: that stays an error ([`RegistryError::Corrupt`], which
//! rejects the one message), and nothing is deleted.
//!
//! Reads never write: a channel or index that cannot be read is routed as empty, a device
//! record that does not parse (or names another device) reads as absent, and the next write of
//! that key replaces it.

use std::collections::BTreeSet;

use redis::Value;

use super::keys::{self, Kind};
use super::op::{Op, WRONGTYPE};
use super::{values, Registry, RegistryError};
use crate::model::Device;
use crate::telemetry::gate;

/// Whether `command` works on a set (the registry's other type is a string).
fn wants_set(command: &str) -> bool {
    matches!(command, "SADD" | "SREM" | "SMEMBERS" | "SCARD")
}

/// Logs a corrupt value found and what was done about it, rate-limited.
pub(super) fn report(action: &'static str, key: &str, error: &RegistryError) {
    crate::telemetry::registry_corrupt(action);
    if let Some(suppressed) = gate::allow("registry_corrupt") {
        tracing::warn!(message = "corrupt registry value", action, key, error = %error, suppressed);
    }
}

impl Registry {
    /// Runs a write batch. A command refused because its key holds another type than its
    /// kind's is repaired: the key is deleted and its commands run again (one more round trip,
    /// only then). Replies as [`super::conn::Conn::run`].
    pub(super) async fn run_repairing(&self, what: &str, ops: &[Op]) -> Result<Vec<Value>, RegistryError> {
        let mut replies = self.conn.run_each(what, ops).await?;
        let mut broken: BTreeSet<&str> = BTreeSet::new();
        for (op, reply) in ops.iter().zip(&replies) {
            let Err(e) = reply else { continue };
            // Only a refusal for the type: any other error is not the value's doing.
            let repairable = matches!(e, RegistryError::Corrupt(m) if m.to_string().contains(WRONGTYPE))
                && keys::kind_of(op.key()).is_some_and(|k: Kind| k.is_set() == wants_set(op.name()));
            if !repairable {
                return Err(e.clone());
            }
            report("replaced", op.key(), e);
            broken.insert(op.key());
        }
        if broken.is_empty() {
            return replies.into_iter().collect();
        }
        let dels: Vec<Op> = broken.iter().map(|k| Op::new("DEL", k)).collect();
        self.conn.run(&format!("{what}: repair"), &dels).await?;
        let again: Vec<(usize, Op)> =
            ops.iter().enumerate().filter(|(_, op)| broken.contains(op.key())).map(|(i, op)| (i, op.clone())).collect();
        let rerun: Vec<Op> = again.iter().map(|(_, op)| op.clone()).collect();
        let fresh = self.conn.run(what, &rerun).await?;
        for ((i, _), v) in again.into_iter().zip(fresh) {
            replies[i] = Ok(v);
        }
        replies.into_iter().collect()
    }

    /// Runs a read batch; a reply that cannot be read (`WRONGTYPE`) is logged and answered as
    /// `Nil`, which every reader takes for an empty set or an absent record.
    pub(super) async fn run_skipping(&self, what: &str, ops: &[Op]) -> Result<Vec<Value>, RegistryError> {
        let replies = self.conn.run_each(what, ops).await?;
        Ok(ops
            .iter()
            .zip(replies)
            .map(|(op, reply)| match reply {
                Ok(v) => v,
                Err(e) => {
                    report("skipped", op.key(), &e);
                    Value::Nil
                }
            })
            .collect())
    }

    /// SMEMBERS of a set read as strings; a value of another shape is skipped as empty.
    pub(super) fn members_or_skip(key: &str, v: Value) -> Vec<String> {
        values::members(key, v).unwrap_or_else(|e| {
            report("skipped", key, &e);
            Vec::new()
        })
    }

    /// A device record as stored, `None` for none, for one that does not parse and for one
    /// that names another device or application (a value under this key that the registry did
    /// not write: using it would write to that other device's keys).
    pub(super) fn device_or_skip(key: &str, app: &str, device_id: &str, v: Value) -> Option<Device> {
        let parsed = values::device(key, v).and_then(|d| match d {
            Some(d) if d.id != device_id || d.application_id != app => Err(RegistryError::Corrupt(
                format!(
                    "{key}: the record names device {}/{}",
                    d.application_id.chars().take(64).collect::<String>(),
                    d.id.chars().take(64).collect::<String>()
                )
                .into(),
            )),
            other => Ok(other),
        });
        parsed.unwrap_or_else(|e| {
            report("skipped", key, &e);
            None
        })
    }

    /// The device's subscription set, only its channel keys of `app`. Other members (nothing
    /// the registry writes: a key of another kind, another application's, garbage) are removed
    /// from the set, so they are neither used nor looked at again. A set that cannot be read
    /// is replaced by the next subscribe; until then the device has no subscriptions.
    pub(super) async fn valid_subscriptions(&self, app: &str, device_id: &str) -> Result<Vec<String>, RegistryError> {
        let key = keys::device_subscriptions(app, device_id);
        let read = self.run_skipping("device subscriptions", &[Op::new("SMEMBERS", &key)]).await?;
        let members = Self::members_or_skip(&key, read.into_iter().next().unwrap_or(Value::Nil));
        let (valid, invalid): (Vec<String>, Vec<String>) =
            members.into_iter().partition(|k| keys::is_channel_of(k, app));
        if !invalid.is_empty() {
            let e =
                RegistryError::Corrupt(format!("{} members that are not channel keys of {app}", invalid.len()).into());
            report("removed", &key, &e);
            self.run_repairing("device subscriptions: remove invalid", &[Op::new("SREM", &key).arg(invalid)]).await?;
        }
        Ok(valid)
    }
}
