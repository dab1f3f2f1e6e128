//! `plan`: from one change event and the batch's routes to the transport messages that carry
//! it, pure (no I/O), so the routing cost can be measured apart from Kafka
//! (examples/bench_routing.rs).
//!
//! Each distinct filter is evaluated once; each device gets the deltas narrowed to the
//! channels it holds; devices with identical deliveries share one message per destination, and
//! each distinct delivery is serialised once, whatever the number of devices and messages that
//! carry it.
//!
//! A sockets transport with at least [`SOCKETS_BY_CHANNEL_MIN`] members on the change's
//! carrying channels gets one message naming those channels instead of lists of its devices
//! (see `TransportMessage`): its delivery is the one for a device holding all of them, and the
//! transport narrows it per device as this function would. Each channel carries the digest of
//! its members on that transport as read here, so the transport resolves exactly this set or,
//! when its own view differs, reads the channel again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::{Cause, ProcessError};
use crate::model::members::{sockets_index, MembersDigest};
use crate::model::transport_message::{Addressed, ChannelRef};
use crate::model::{
    encode_transport_message, plan_deliveries, transition_for, BroadcastDelivery, ChangeEvent, ChannelKey,
    DeliveryBatch, Delta, DeviceAddress, EncodedBatch, Filter, Recipient, Transition, Transport, TransportHeader,
};
use crate::registry::Routes;

/// Devices per transport message: bounds message size while sharing one payload widely.
pub(super) const DEVICES_PER_MESSAGE: usize = 500;
/// Members on one sockets transport from which a change is addressed to it by channel. Below
/// it a device list is a few KB and the transport keeps no view of the channel; above it the
/// list grows with the audience (about 60 bytes a device) while a channel message does not.
pub const SOCKETS_BY_CHANNEL_MIN: usize = 32;
/// Parsed filters kept across events; cleared when it grows past this.
const FILTER_CACHE: usize = 50_000;

/// One transport message, encoded: where it goes (`ios_transport`, `sockets_transport-3`, ...),
/// how many devices and channels it names, and its bytes.
#[derive(Debug)]
pub struct Planned {
    pub destination: String,
    pub devices: usize,
    pub channels: usize,
    pub payload: Vec<u8>,
}

/// A batch's routes, with what [`plan`] derives from each channel's members (who is on which
/// sockets transport, and the digest of those members), derived once per batch however many
/// of its changes reach the channel.
pub struct RouteTable {
    routes: Routes,
    audiences: HashMap<String, Audience>,
}

impl RouteTable {
    pub fn new(routes: Routes) -> Self {
        RouteTable { routes, audiences: HashMap::new() }
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }
}

/// A channel's members by destination, as positions in its member list.
#[derive(Default)]
struct Audience {
    /// Push devices, and strings that are not device strings (skipped later, as always).
    others: Vec<u32>,
    /// Per sockets transport index: its members and their digest.
    sockets: BTreeMap<u32, (Vec<u32>, MembersDigest)>,
}

impl Audience {
    fn of(members: &[String]) -> Self {
        let mut audience = Audience::default();
        for (pos, member) in (0u32..).zip(members) {
            match sockets_index(member) {
                Some(i) => {
                    let (positions, digest) = audience.sockets.entry(i).or_default();
                    positions.push(pos);
                    digest.add(member);
                }
                None => audience.others.push(pos),
            }
        }
        audience
    }
}

/// The transport messages for one (non-broadcast) event given its batch's routes.
pub fn plan<'a>(
    event: &'a ChangeEvent,
    table: &'a mut RouteTable,
    filters: &mut FilterCache,
) -> Result<Vec<Planned>, ProcessError> {
    let RouteTable { routes, audiences } = table;
    let routes: &'a Routes = routes;
    let mut entries: Vec<(ChannelKey, Option<Transition>)> = Vec::new();
    // Channel key → its place in `entries` (and in `members_of`).
    let mut places: HashMap<&'a str, usize> = HashMap::new();
    let mut members_of: Vec<&'a [String]> = Vec::new();
    let mut transitions: HashMap<String, Transition> = HashMap::new();
    let mut hold = |key: &'a str, transition: Option<Transition>, members: &'a [String]| {
        places.entry(key).or_insert_with(|| {
            entries.push((ChannelKey::from_stored(key.to_owned()), transition));
            members_of.push(members);
            entries.len() - 1
        });
    };
    for channel in &event.channels {
        if let Some(members) = routes.members.get(channel.as_str()).filter(|m| !m.is_empty()) {
            hold(channel.as_str(), None, members);
        }
        for variant in routes.filtered.get(channel.as_str()).into_iter().flatten() {
            let Some(members) = routes.members.get(variant).filter(|m| !m.is_empty()) else { continue };
            let Some(suffix) = ChannelKey::from_stored(variant.clone()).filter_suffix().map(str::to_string) else {
                continue;
            };
            let transition = match transitions.get(&suffix) {
                Some(t) => *t,
                None => {
                    let Some(filter) = filters.get(&suffix) else { continue };
                    let t = transition_for(event, &filter);
                    crate::telemetry::filter_evaluated();
                    transitions.insert(suffix, t);
                    t
                }
            };
            if transition == Transition::None {
                continue;
            }
            hold(variant, Some(transition), members);
        }
    }
    let deltas = plan_deliveries(event, &entries);
    // Only the channels some delta lists decide a delivery (an update without patches has none).
    let mut carries = vec![false; entries.len()];
    for k in deltas.iter().flat_map(|d| &d.subscriptions) {
        if let Some(&place) = places.get(k.as_str()) {
            carries[place] = true;
        }
    }
    let carrying: Vec<usize> = (0..entries.len()).filter(|&p| carries[p]).collect();
    for &p in &carrying {
        let key = entries[p].0.as_str();
        if !audiences.contains_key(key) {
            audiences.insert(key.to_owned(), Audience::of(members_of[p]));
        }
    }
    let audiences = &*audiences;
    let audience = |p: usize| audiences.get(entries[p].0.as_str());
    let mut on_sockets: BTreeMap<u32, usize> = BTreeMap::new();
    for a in carrying.iter().filter_map(|&p| audience(p)) {
        for (&i, (positions, _)) in &a.sockets {
            *on_sockets.entry(i).or_default() += positions.len();
        }
    }
    let by_channel: BTreeSet<u32> =
        on_sockets.iter().filter(|(_, &n)| n >= SOCKETS_BY_CHANNEL_MIN).map(|(&i, _)| i).collect();

    // Listed devices (every one not on a sockets transport addressed by channel) → the places
    // they hold.
    let mut holders: BTreeMap<&'a str, Vec<usize>> = BTreeMap::new();
    for &p in &carrying {
        let Some(a) = audience(p) else { continue };
        let sockets = a.sockets.iter().filter(|(i, _)| !by_channel.contains(i));
        for &pos in a.others.iter().chain(sockets.flat_map(|(_, (positions, _))| positions)) {
            holders.entry(members_of[p][pos as usize].as_str()).or_default().push(p);
        }
    }
    let by_channel_devices: usize = by_channel.iter().filter_map(|i| on_sockets.get(i)).sum();
    crate::telemetry::devices_per_change(holders.len() + by_channel_devices);

    let mut deliveries =
        Deliveries { event, deltas: &deltas, places: &places, by_held: HashMap::new(), encoded: Vec::new() };
    // (destination topic, delivery) → recipients.
    let mut groups: BTreeMap<(String, usize), Vec<Recipient>> = BTreeMap::new();
    for (member, mut held) in holders {
        let address = match DeviceAddress::parse(member) {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(message = "bad device string in a channel set, skipped", %error);
                continue;
            }
        };
        // Keys are per application already; this guards against a corrupted set.
        if address.application_id != event.application_id {
            continue;
        }
        // A broadcast is for connected devices: no push provider is woken for it.
        if event.ephemeral && !matches!(address.transport, Transport::Sockets(_)) {
            continue;
        }
        held.sort_unstable();
        held.dedup();
        let delivery = deliveries.get(held)?;
        let recipient = Recipient { device_id: address.device_id, token: address.token };
        groups.entry((address.transport.name(), delivery)).or_default().push(recipient);
    }
    let mut messages = Vec::new();
    for ((destination, delivery), recipients) in groups {
        for chunk in recipients.chunks(DEVICES_PER_MESSAGE) {
            let to = Addressed { devices: chunk, channels: &[], broadcast: false };
            let payload = encode(event, to, &deliveries.encoded[delivery])?;
            messages.push(Planned { destination: destination.clone(), devices: chunk.len(), channels: 0, payload });
        }
    }
    for i in by_channel {
        let mut held = Vec::new();
        let mut channels = Vec::new();
        for &p in &carrying {
            if let Some((_, digest)) = audience(p).and_then(|a| a.sockets.get(&i)) {
                held.push(p);
                channels.push(ChannelRef { key: entries[p].0.as_str().to_owned(), members: *digest });
            }
        }
        let delivery = deliveries.get(held)?;
        crate::telemetry::transport_channel_message();
        let to = Addressed { devices: &[], channels: &channels, broadcast: false };
        let payload = encode(event, to, &deliveries.encoded[delivery])?;
        let destination = Transport::Sockets(i).name();
        messages.push(Planned { destination, devices: 0, channels: channels.len(), payload });
    }
    Ok(messages)
}

/// A change's deliveries by the set of channels (places) their receivers hold, each narrowed
/// and serialised once.
struct Deliveries<'d, 'a> {
    event: &'d ChangeEvent,
    deltas: &'d [Delta],
    places: &'d HashMap<&'a str, usize>,
    by_held: HashMap<Vec<usize>, usize>,
    encoded: Vec<EncodedBatch>,
}

impl Deliveries<'_, '_> {
    /// The delivery for holders of `held` (sorted, carrying places): its index in `encoded`.
    fn get(&mut self, held: Vec<usize>) -> Result<usize, ProcessError> {
        if let Some(&d) = self.by_held.get(&held) {
            return Ok(d);
        }
        let holds = |k: &ChannelKey| self.places.get(k.as_str()).is_some_and(|p| held.binary_search(p).is_ok());
        let narrowed = self.deltas.iter().filter_map(|d| d.narrowed(holds));
        self.encoded.push(encode_delivery(self.event, narrowed)?);
        self.by_held.insert(held, self.encoded.len() - 1);
        Ok(self.encoded.len() - 1)
    }
}

/// Encoding our own types cannot fail on any input (string-keyed JSON maps, strings,
/// integers): an error is a bug in them, not the message's fault, and no retry cures it: stop.
pub(super) fn encoding(what: &'static str) -> impl Fn(serde_json::Error) -> ProcessError {
    move |e| ProcessError::Fatal(Cause::with(format_args!("encoding {what}"), e))
}

/// The delivery of `event` made of `deltas`: Telepat's grouping, or for a broadcast's object its
/// one create delta as a [`BroadcastDelivery`].
pub(super) fn encode_delivery(
    event: &ChangeEvent,
    mut deltas: impl Iterator<Item = Delta>,
) -> Result<EncodedBatch, ProcessError> {
    let encoded = match event.ephemeral {
        false => EncodedBatch::encode(&deltas.collect::<DeliveryBatch>()),
        true => {
            // No delta: a broadcast to the whole application of an object on no channel.
            let delivery = deltas.next().map(|d| BroadcastDelivery::of(&d)).unwrap_or_else(|| BroadcastDelivery {
                object: event.after.clone().unwrap_or_default(),
                subscriptions: Vec::new(),
                application_id: event.application_id.clone(),
                timestamp: event.timestamp,
            });
            EncodedBatch::encode_broadcast(&delivery)
        }
    };
    encoded.map_err(encoding("a delivery"))
}

pub(super) fn encode(event: &ChangeEvent, to: Addressed<'_>, batch: &EncodedBatch) -> Result<Vec<u8>, ProcessError> {
    let header = TransportHeader {
        application_id: &event.application_id,
        object_id: &event.id,
        version: event.version,
        timestamp: event.timestamp,
        ephemeral: event.ephemeral,
    };
    encode_transport_message(&header, to, batch).map_err(encoding("a transport message"))
}

/// Parsed filters by key suffix, kept across events (`None`: undecodable, skipped).
#[derive(Default)]
pub struct FilterCache(HashMap<String, Option<Filter>>);

impl FilterCache {
    pub fn get(&mut self, suffix: &str) -> Option<Filter> {
        if self.0.len() > FILTER_CACHE {
            self.0.clear();
        }
        self.0
            .entry(suffix.to_string())
            .or_insert_with(|| match Filter::from_key_suffix(suffix) {
                Ok(f) => Some(f),
                Err(error) => {
                    tracing::warn!(message = "undecodable filter in the registry, skipped", suffix, %error);
                    None
                }
            })
            .clone()
    }
}
