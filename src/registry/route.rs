//! The read side: who receives a change ([`Registry::route`]) and every device of an
//! application ([`Registry::app_devices`]). Both are pipelined reads of known keys; neither
//! ever SCANs.

use std::collections::{BTreeSet, HashMap};

use super::op::Op;
use super::{keys, Registry, RegistryError, DEVICE_CHUNK};
use crate::model::{ChannelKey, Device};

/// The result of [`Registry::route`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// Channel key (unfiltered or filtered) -> device strings
    /// (`<transport>|<deviceId>|<token>|<appId>`), sorted. Every key asked for and every
    /// filtered variant found is present, with an empty list if nobody is on it.
    pub members: HashMap<String, Vec<String>>,
    /// Base channel key -> its filtered variant keys, sorted; only bases that have variants.
    pub filtered: HashMap<String, Vec<String>>,
    /// Redis round trips used: 0 for no channels, 1 without filtered variants, 2 with. On a
    /// cluster a round trip is one wave of concurrent per-slot pipelines.
    pub round_trips: u32,
}

impl Registry {
    /// Looks up many channels at once; they may belong to different applications (a key's
    /// filter index is found from the key's own `blg:<app>:` prefix).
    ///
    /// Round 1: SMEMBERS of every channel key and, for an unfiltered key, of its filter index.
    /// Round 2: SMEMBERS of every filtered variant found (not already asked for). A filtered
    /// key passed in is read as is, without an index lookup. A variant in an index that is not
    /// `<base>:filter:...` of that base is ignored (logged), so an index can never route to
    /// another channel's or application's devices.
    pub async fn route(&self, channels: &[ChannelKey]) -> Result<Routes, RegistryError> {
        let mut routes = Routes::default();
        let wanted: BTreeSet<&str> = channels.iter().map(ChannelKey::as_str).collect();
        if wanted.is_empty() {
            return Ok(routes);
        }

        // Round 1: (channel, Some(index)) for an index read, (channel, None) for the set itself.
        let mut asked: Vec<(&str, Option<String>)> = Vec::with_capacity(wanted.len() * 2);
        for &key in &wanted {
            asked.push((key, None));
            if !keys::is_filtered(key) {
                if let Some(index) = keys::filter_index(key) {
                    asked.push((key, Some(index)));
                }
            }
        }
        let ops: Vec<Op> =
            asked.iter().map(|(key, index)| Op::new("SMEMBERS", index.as_deref().unwrap_or(key))).collect();
        let replies = self.run_skipping("route", &ops).await?;
        routes.round_trips = 1;

        let mut second: Vec<String> = Vec::new();
        for ((key, index), v) in asked.into_iter().zip(replies) {
            let Some(index) = index else {
                routes.members.insert(key.to_owned(), Self::members_or_skip(key, v));
                continue;
            };
            let variants: Vec<String> = Self::members_or_skip(&index, v)
                .into_iter()
                .filter(|variant| {
                    let ok = keys::is_variant_of(variant, key);
                    if !ok {
                        tracing::warn!(message = "ignoring a foreign entry of a filter index", index, variant);
                    }
                    ok
                })
                .collect();
            for variant in &variants {
                if !wanted.contains(variant.as_str()) {
                    second.push(variant.clone());
                }
            }
            if !variants.is_empty() {
                routes.filtered.insert(key.to_owned(), variants);
            }
        }

        if !second.is_empty() {
            let ops: Vec<Op> = second.iter().map(|k| Op::new("SMEMBERS", k)).collect();
            let replies = self.run_skipping("route: filtered channels", &ops).await?;
            routes.round_trips = 2;
            for (key, v) in second.into_iter().zip(replies) {
                let members = Self::members_or_skip(&key, v);
                routes.members.insert(key, members);
            }
        }
        Ok(routes)
    }

    /// The members of each channel key, in the order asked, in one pipelined round trip: what a
    /// sockets transport reads when its own view of a channel is not the one a message was
    /// routed by.
    pub async fn channel_members(&self, keys: &[&str]) -> Result<Vec<Vec<String>>, RegistryError> {
        let ops: Vec<Op> = keys.iter().map(|k| Op::new("SMEMBERS", k)).collect();
        let replies = self.run_skipping("channel members", &ops).await?;
        Ok(keys.iter().zip(replies).map(|(key, v)| Self::members_or_skip(key, v)).collect())
    }

    /// Every device record of `app` listed in the device index (so every device stored through
    /// [`Registry::put_device`]), in pipelined GET batches of [`DEVICE_CHUNK`], sorted by id.
    /// Ids whose record is gone are skipped; a record that does not parse (or names another
    /// device) is logged and skipped, so one bad record cannot stop a broadcast.
    pub async fn app_devices(&self, app: &str) -> Result<Vec<Device>, RegistryError> {
        let index = keys::device_index(app);
        let read = self.run_skipping("app devices", &[Op::new("SMEMBERS", &index)]).await?;
        let ids = Self::members_or_skip(&index, read.into_iter().next().unwrap_or(redis::Value::Nil));
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(DEVICE_CHUNK) {
            let record_keys: Vec<String> = chunk.iter().map(|id| keys::device(app, id)).collect();
            let ops: Vec<Op> = record_keys.iter().map(|k| Op::new("GET", k)).collect();
            let replies = self.run_skipping("app devices: records", &ops).await?;
            for ((key, id), v) in record_keys.iter().zip(chunk).zip(replies) {
                out.extend(Self::device_or_skip(key, app, id, v));
            }
        }
        Ok(out)
    }
}
