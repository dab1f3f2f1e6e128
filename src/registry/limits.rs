//! Subscribing, within the bounds of [`crate::config::Limits`]: one home for the rule, used by
//! the `track` role and the sockets transport alike.
//!
//! - `device_subscriptions`: a device holds at most that many channel keys in its subscription
//!   set. Subscribing again to one it holds is always accepted.
//! - `channel_filters`: a base channel has at most that many filtered variants in its filter
//!   index (`blg:<app>:filters|<base>`), whichever devices subscribed them. Subscribing to a
//!   variant already listed is always accepted.
//!
//! # Races
//!
//! Nothing spans slots (no MULTI, no Lua; see [`super::conn`]), so the check cannot be atomic
//! with the write. It is done act-then-check: SADD the key, then SCARD the set, and a subscribe
//! that finds the set over the bound removes what it added and fails. Two subscribes racing
//! for the last place may therefore both fail (the client may try again), but at rest a set is
//! never over its bound because of a race. The exceptions are bounded: a crash between the
//! SADD and its removal leaves one entry over per crash; and a filter variant whose removal
//! found it already in use by a racing subscribe of another device stays (so that device's
//! channel stays routed), one over per racing subscribe. A bound lowered in the configuration
//! applies to new subscriptions only.

use redis::Value;

use super::op::Op;
use super::{keys, values, Registry, RegistryError};
use crate::model::{ChannelKey, DeviceAddress};

impl Registry {
    /// Subscribes the device to `key`: `key` in the device's subscription set, a filtered
    /// `key` in the filter index of its base channel, and every address in the channel set.
    /// Idempotent. [`RegistryError::LimitExceeded`] (nothing left behind) if a new
    /// subscription would put the device or the channel over its bound.
    pub async fn subscribe(
        &self,
        app: &str,
        device_id: &str,
        key: &ChannelKey,
        addresses: &[DeviceAddress],
    ) -> Result<(), RegistryError> {
        let subs = keys::device_subscriptions(app, device_id);
        let index = key.filter_suffix().and_then(|_| keys::filter_index(key.base()));
        // Round 1: take the places, and count. Per-slot pipelines keep each SADD before its SCARD.
        let mut ops = vec![Op::new("SADD", &subs).arg(key.as_str()), Op::new("SCARD", &subs)];
        if let Some(index) = &index {
            ops.push(Op::new("SADD", index).arg(key.as_str()));
            ops.push(Op::new("SCARD", index));
        }
        let replies = self.run_repairing("subscribe", &ops).await?;
        let counts = counts(&ops, replies)?;
        let new_subscription = counts[0] == 1;
        let held = counts[1];
        let new_variant = index.is_some() && counts.get(2) == Some(&1);
        let variants = counts.get(3).copied().unwrap_or(0);

        let limits = self.limits;
        let over = if !new_subscription {
            None
        } else if over_bound(held, limits.device_subscriptions) {
            Some(format!(
                "device {device_id} already holds {} subscriptions (TP_MAX_DEVICE_SUBSCRIPTIONS)",
                limits.device_subscriptions
            ))
        } else if new_variant && over_bound(variants, limits.channel_filters) {
            Some(format!(
                "channel {} already has {} distinct filters (TP_MAX_CHANNEL_FILTERS)",
                key.base(),
                limits.channel_filters
            ))
        } else {
            None
        };
        if let Some(reason) = over {
            crate::telemetry::registry_limit_exceeded();
            self.run_repairing("subscribe: over the limit", &[Op::new("SREM", &subs).arg(key.as_str())]).await?;
            if new_variant {
                // Removed only if no racing subscribe of another device has filled it meanwhile.
                self.prune_filter_index(vec![key.as_str()]).await?;
            }
            return Err(RegistryError::LimitExceeded(reason));
        }

        // Round 2: the addresses; the index entry again, in case a racing subscribe that went
        // over the bound removed the one this subscribe found listed.
        let mut ops = Vec::with_capacity(2);
        if !addresses.is_empty() {
            ops.push(Op::new("SADD", key.as_str()).arg(super::strings(addresses)));
        }
        if let Some(index) = &index {
            ops.push(Op::new("SADD", index).arg(key.as_str()));
        }
        self.run_repairing("subscribe: channel", &ops).await.map(drop)
    }
}

fn over_bound(count: i64, bound: usize) -> bool {
    usize::try_from(count).is_ok_and(|n| n > bound)
}

fn counts(ops: &[Op], replies: Vec<Value>) -> Result<Vec<i64>, RegistryError> {
    ops.iter().zip(replies).map(|(op, v)| values::int(op.key(), v)).collect()
}
