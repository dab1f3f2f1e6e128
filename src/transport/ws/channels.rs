//! A sockets transport's own view of the channels it is sent messages for by channel (see
//! `TransportMessage`), and their resolution to its devices.
//!
//! A view of a channel is its members on this transport and their [`MembersDigest`]. A
//! message names each channel with the digest of the members the transport manager routed it
//! by; a view with that digest holds those members, and is used as it is. Any other view
//! (none yet, or changed by a subscription this transport did not see: the `track` role
//! subscribing a connected device, a restore at attach, a removed device) is read again from
//! the registry first. So a device receives a channel's delivery exactly when the transport
//! manager found it among the channel's members, or, if the channel changed in between, when
//! the registry lists it a moment later: the outcome of routing that change a moment later.
//! The connections' own subscribes, unsubscribes and detaches update the views as they
//! update the registry, so the usual changes do not cost a read.
//!
//! A device on several of a message's channels receives the delivery once, narrowed to the
//! channels it holds, as the transport manager narrows a listed device's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use hashlink::LruCache;
use serde_json::value::RawValue;

use crate::model::members::{sockets_index, MembersDigest};
use crate::model::transport_message::ChannelRef;
use crate::model::{BroadcastDelivery, ChannelKey, DeliveryBatch, DeviceAddress, Transport};
use crate::registry::{keys, Registry, RegistryError};

/// Channels viewed at once; the least recently addressed is forgotten (and read again when a
/// message names it). Only channels with many members here are addressed by channel.
pub const VIEWED_CHANNELS: usize = 10_000;

/// Channels one transport message may name. The transport manager names only the change's
/// channels with many members on the transport (a handful); more comes from a forged or
/// corrupted record, whose resolution would read every one from Redis.
pub const CHANNELS_PER_MESSAGE: usize = 1_000;

pub struct ChannelViews {
    index: u32,
    /// This life's socket token: members with another are an earlier life's, delivered to no one.
    token: String,
    views: Mutex<LruCache<String, View>>,
}

struct View {
    digest: MembersDigest,
    /// Every member on this transport → its device id if it is a device of this life of the
    /// transport, in the channel's application (whom a delivery reaches).
    members: HashMap<String, Option<Arc<str>>>,
}

/// Who receives one channel-addressed message.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Per set of channels held (positions in the message's `channels`, ascending), the
    /// devices holding exactly that set.
    pub groups: Vec<(Vec<usize>, Vec<Arc<str>>)>,
    /// Channels read from the registry because the view was not the one routed by.
    pub read: usize,
}

impl ChannelViews {
    pub fn new(index: u32, token: String, capacity: usize) -> Self {
        ChannelViews { index, token, views: Mutex::new(LruCache::new(capacity.max(1))) }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<String, View>> {
        self.views.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device id of `member` if this transport delivers to it for channel `key`.
    fn ours(&self, key: &str, member: &str) -> Option<Arc<str>> {
        let a = DeviceAddress::parse(member).ok()?;
        let ours = a.transport == Transport::Sockets(self.index)
            && a.token == self.token
            && keys::app_of(key) == Some(a.application_id.as_str());
        ours.then(|| Arc::from(a.device_id))
    }

    fn view(&self, key: &str, members: Vec<String>) -> View {
        let mut view = View { digest: MembersDigest::default(), members: HashMap::new() };
        for member in members.into_iter().filter(|m| sockets_index(m) == Some(self.index)) {
            view.digest.add(&member);
            let device = self.ours(key, &member);
            view.members.insert(member, device);
        }
        view
    }

    /// The devices of `channels` on this transport, grouped by the channels each holds; views
    /// that are not the ones the message was routed by are read from `registry` first.
    pub async fn resolve(&self, registry: &Registry, channels: &[ChannelRef]) -> Result<Resolved, RegistryError> {
        let stale: Vec<&str> = {
            let views = self.lock();
            let current = |c: &ChannelRef| views.peek(&c.key).is_some_and(|v| v.digest == c.members);
            channels.iter().filter(|c| !current(c)).map(|c| c.key.as_str()).collect()
        };
        let mut fresh: HashMap<&str, View> = HashMap::new();
        if !stale.is_empty() {
            let read = registry.channel_members(&stale).await?;
            fresh = stale.iter().zip(read).map(|(key, members)| (*key, self.view(key, members))).collect();
        }
        let mut views = self.lock();
        // Fresh views are used as read, even if the cache could not keep them all.
        let devices = |key: &str| -> Vec<Arc<str>> {
            let view = fresh.get(key).or_else(|| views.peek(key));
            view.map(|v| v.members.values().flatten().cloned().collect()).unwrap_or_default()
        };
        let mut out = Resolved { read: stale.len(), ..Resolved::default() };
        if let [only] = channels {
            out.groups.push((vec![0], devices(&only.key)));
        } else {
            let mut held: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
            for (j, c) in channels.iter().enumerate() {
                for device in devices(&c.key) {
                    held.entry(device).or_default().push(j);
                }
            }
            let mut groups: BTreeMap<Vec<usize>, Vec<Arc<str>>> = BTreeMap::new();
            for (device, held) in held {
                groups.entry(held).or_default().push(device);
            }
            out.groups = groups.into_iter().collect();
        }
        for c in channels {
            match fresh.remove(c.key.as_str()) {
                Some(view) => drop(views.insert(c.key.clone(), view)),
                None => drop(views.get(&c.key)),
            }
        }
        Ok(out)
    }

    /// A connection of this transport subscribed `member` (its own address) to `key`, and the
    /// registry has it.
    pub fn subscribed(&self, key: &str, member: &DeviceAddress) {
        let member = member.to_string();
        let device = self.ours(key, &member);
        if let Some(view) = self.lock().peek_mut(key) {
            if !view.members.contains_key(&member) {
                view.digest.add(&member);
                view.members.insert(member, device);
            }
        }
    }

    /// A connection of this transport unsubscribed `member` from `key`, in the registry too.
    pub fn unsubscribed(&self, key: &str, member: &DeviceAddress) {
        let member = member.to_string();
        if let Some(view) = self.lock().peek_mut(key) {
            if view.members.remove(&member).is_some() {
                view.digest.remove(&member);
            }
        }
    }

    /// The device's last connection here detached `member` from every channel it holds.
    pub fn detached(&self, member: &DeviceAddress) {
        let member = member.to_string();
        for (_, view) in self.lock().iter_mut() {
            if view.members.remove(&member).is_some() {
                view.digest.remove(&member);
            }
        }
    }
}

/// A channel-addressed delivery, decoded once to be narrowed for devices holding only some of
/// its channels: Telepat's grouping, or a broadcast's object.
pub enum Narrowing {
    Changes(DeliveryBatch),
    Broadcast(BroadcastDelivery),
}

impl Narrowing {
    pub fn of(ephemeral: bool, delivery: &RawValue) -> Result<Self, serde_json::Error> {
        match ephemeral {
            false => serde_json::from_str(delivery.get()).map(Narrowing::Changes),
            true => serde_json::from_str(delivery.get()).map(Narrowing::Broadcast),
        }
    }

    /// The delivery for a device holding the channels at `held` (positions in `channels`):
    /// the bytes the transport manager writes for such a device, since it narrows the same
    /// deltas with the same rule and encodes them with the same types.
    pub fn to(&self, channels: &[ChannelRef], held: &[usize]) -> Result<Box<RawValue>, serde_json::Error> {
        let holds = |k: &ChannelKey| held.iter().any(|&j| channels.get(j).is_some_and(|c| c.key == k.as_str()));
        match self {
            Narrowing::Changes(b) => {
                let batch: DeliveryBatch =
                    b.new.iter().chain(&b.updated).chain(&b.deleted).filter_map(|d| d.narrowed(holds)).collect();
                serde_json::value::to_raw_value(&batch)
            }
            // `held` is never empty, and every named channel is one of the delivery's.
            Narrowing::Broadcast(d) => serde_json::value::to_raw_value(&d.narrowed(holds).unwrap_or_else(|| d.clone())),
        }
    }
}

#[cfg(test)]
mod tests;
