//! The transport_manager role: each change event from the writer becomes deliveries for the
//! devices subscribed to its channels, grouped per destination topic.
//!
//! Per poll batch, one pipelined registry lookup covers every channel of every event (and the
//! filtered variants of each, from the filter index: never a keyspace scan). Per event, each
//! distinct filter is evaluated once on the before- and after-image (enter → `new`, stay →
//! `updated`, leave → `deleted`); each device gets the deltas narrowed to the channels it holds;
//! devices with byte-identical deliveries share one message per destination. Messages are keyed
//! by object id, so one object's changes stay in order to every destination.
//!
//! Read ACLs: before routing, an event of a model not every device may read (`read_acl`
//! without bits 1/2/0, or the built-in `user`) keeps only the channels that can hold only
//! readers of its object ([`channel_carries_readable`]): checked per channel of the event,
//! not per device, so it costs a few key parses per such event and nothing per recipient.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Cause, ProcessError, WorkerError};
use crate::model::acl::{channel_carries_readable, read_access, ReadAccess};
use crate::model::{
    plan_deliveries, transition_for, ChangeEvent, ChannelKey, DeliveryBatch, DeviceAddress, Filter, Recipient,
    Transition, TransportMessage,
};
use crate::queue::outbox::Outbox;
use crate::queue::{topic, Record};
use crate::registry::{Registry, Routes};

use crate::apps::Apps;
use crate::pipeline::{Handler, Pipeline};
use crate::runtime::{Worker, WorkerContext};

/// Devices per transport message: bounds message size while sharing one payload widely.
const DEVICES_PER_MESSAGE: usize = 500;
/// Parsed filters kept across events; cleared when it grows past this.
const FILTER_CACHE: usize = 50_000;

/// Serialized delivery → (the delivery, every device that receives exactly it).
type Groups = HashMap<Vec<u8>, (DeliveryBatch, Vec<Recipient>)>;

pub struct TransportManager {
    registry: Arc<Registry>,
    apps: Apps,
    prefix: String,
    /// The batch's routes, looked up once in `prepare`.
    routes: Option<Routes>,
    filters: FilterCache,
}

impl Worker for TransportManager {
    async fn connect(
        ctx: &WorkerContext,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(Self, Pipeline), WorkerError> {
        let registry = ctx.registry(shutdown).await?;
        let (apps, pipeline) = ctx.pipeline(topic::TRANSPORT_MANAGER, shutdown).await?;
        Ok((TransportManager::new(Arc::new(registry), apps, ctx.config.kafka.topic_prefix.clone()), pipeline))
    }
}

impl TransportManager {
    pub fn new(registry: Arc<Registry>, apps: Apps, prefix: String) -> Self {
        TransportManager { registry, apps, prefix, routes: None, filters: FilterCache::default() }
    }

    /// Deliveries for the subscribers of the event's channels.
    async fn route(&mut self, event: &ChangeEvent, out: &mut Outbox) -> Result<(), ProcessError> {
        // `prepare` looked up every channel of the batch; without it (it failed) look up now.
        let fetched;
        let routes = match &self.routes {
            Some(r) => r,
            None => {
                fetched = self.registry.route(&event.channels).await?;
                crate::telemetry::registry_round_trips(fetched.round_trips);
                &fetched
            }
        };
        let narrowed = readable_only(&self.apps, event);
        let messages = plan(narrowed.as_ref().unwrap_or(event), routes, &mut self.filters)?;
        for (destination, message) in &messages {
            send(out, &self.prefix, destination, message).await?;
        }
        crate::telemetry::change_routed();
        Ok(())
    }

    /// A broadcast reaches every device of its application, and no other: push devices through
    /// their provider topics, connected sockets through the `sockets_transport` broadcast topic.
    async fn broadcast(&mut self, event: &ChangeEvent, out: &mut Outbox) -> Result<(), ProcessError> {
        let readable = self
            .apps
            .get(&event.application_id)
            .is_some_and(|app| read_access(&app.schema, &event.model, true) == ReadAccess::All);
        if !readable {
            return Err(ProcessError::poison(format!(
                "broadcast of model `{}`, which not every device may read (read_acl)",
                event.model
            )));
        }
        let entries: Vec<(ChannelKey, Option<Transition>)> = event.channels.iter().map(|c| (c.clone(), None)).collect();
        let batch: DeliveryBatch = plan_deliveries(event, &entries).into_iter().collect();
        let devices = self.registry.app_devices(&event.application_id).await?;
        let mut push: BTreeMap<String, Vec<Recipient>> = BTreeMap::new();
        for device in devices.iter().filter(|d| d.application_id == event.application_id) {
            for a in
                device.addresses().into_iter().filter(|a| !matches!(a.transport, crate::model::Transport::Sockets(_)))
            {
                push.entry(a.transport.name()).or_default().push(Recipient { device_id: a.device_id, token: a.token });
            }
        }
        for (destination, recipients) in push {
            for chunk in recipients.chunks(DEVICES_PER_MESSAGE) {
                send(out, &self.prefix, &destination, &message(event, chunk.to_vec(), false, batch.clone())).await?;
            }
        }
        send(out, &self.prefix, topic::SOCKETS_BROADCAST, &message(event, Vec::new(), true, batch)).await
    }
}

/// `event` with only the channels its readers may hold, or `None` when every channel may carry
/// it (the usual case: no copy).
fn readable_only(apps: &Apps, event: &ChangeEvent) -> Option<ChangeEvent> {
    let app = apps.get(&event.application_id)?;
    if read_access(&app.schema, &event.model, true) == ReadAccess::All {
        return None;
    }
    let object = event.after.as_ref().or(event.before.as_ref());
    let channels: Vec<ChannelKey> = event
        .channels
        .iter()
        .filter(|key| {
            ChannelKey::parse(key.as_str())
                .is_ok_and(|parsed| channel_carries_readable(&app.schema, &event.model, &parsed.channel, object))
        })
        .cloned()
        .collect();
    let dropped = event.channels.len() - channels.len();
    crate::telemetry::acl_channels_withheld(dropped);
    Some(ChangeEvent { channels, ..event.clone() })
}

/// The transport messages for one (non-broadcast) event given its routes: pure, no I/O, so the
/// routing cost can be measured apart from Kafka (examples/bench_routing.rs).
///
/// Each distinct filter is evaluated once; each device gets the deltas narrowed to the channels
/// it holds; devices with byte-identical deliveries share one message per destination.
pub fn plan(
    event: &ChangeEvent,
    routes: &Routes,
    filters: &mut FilterCache,
) -> Result<Vec<(String, TransportMessage)>, ProcessError> {
    let mut entries: Vec<(ChannelKey, Option<Transition>)> = Vec::new();
    let mut holders: BTreeMap<&str, HashSet<ChannelKey>> = BTreeMap::new();
    let mut transitions: HashMap<String, Transition> = HashMap::new();
    for channel in &event.channels {
        if let Some(members) = routes.members.get(channel.as_str()).filter(|m| !m.is_empty()) {
            entries.push((channel.clone(), None));
            for m in members {
                holders.entry(m.as_str()).or_default().insert(channel.clone());
            }
        }
        for variant in routes.filtered.get(channel.as_str()).into_iter().flatten() {
            let Some(members) = routes.members.get(variant).filter(|m| !m.is_empty()) else { continue };
            let key = ChannelKey::from_stored(variant.clone());
            let Some(suffix) = key.filter_suffix().map(str::to_string) else { continue };
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
            entries.push((key.clone(), Some(transition)));
            for m in members {
                holders.entry(m.as_str()).or_default().insert(key.clone());
            }
        }
    }
    let deltas = plan_deliveries(event, &entries);
    // Destination topic → serialized delivery → (delivery, recipients).
    let mut groups: BTreeMap<String, Groups> = BTreeMap::new();
    for (member, held) in &holders {
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
        let batch: DeliveryBatch = deltas.iter().filter_map(|d| d.narrowed(|k| held.contains(k))).collect();
        if batch.is_empty() {
            continue;
        }
        // Cannot fail on any input (string-keyed JSON maps, strings, integers): an error is a bug
        // in our types, not the message's fault, and no retry cures it: stop.
        let bytes =
            serde_json::to_vec(&batch).map_err(|e| ProcessError::Fatal(Cause::with("encoding a delivery", e)))?;
        let recipient = Recipient { device_id: address.device_id, token: address.token };
        groups
            .entry(address.transport.name())
            .or_default()
            .entry(bytes)
            .or_insert_with(|| (batch, Vec::new()))
            .1
            .push(recipient);
    }
    crate::telemetry::devices_per_change(holders.len());
    let mut messages = Vec::new();
    for (destination, deliveries) in groups {
        for (_, (batch, recipients)) in deliveries {
            for chunk in recipients.chunks(DEVICES_PER_MESSAGE) {
                messages.push((destination.clone(), message(event, chunk.to_vec(), false, batch.clone())));
            }
        }
    }
    Ok(messages)
}

fn message(event: &ChangeEvent, devices: Vec<Recipient>, broadcast: bool, batch: DeliveryBatch) -> TransportMessage {
    TransportMessage {
        application_id: event.application_id.clone(),
        object_id: event.id.clone(),
        version: event.version,
        timestamp: event.timestamp,
        devices,
        broadcast,
        message: batch,
    }
}

async fn send(out: &mut Outbox, prefix: &str, destination: &str, msg: &TransportMessage) -> Result<(), ProcessError> {
    // As for deliveries above: only a bug in our types could fail here.
    let bytes =
        serde_json::to_vec(msg).map_err(|e| ProcessError::Fatal(Cause::with("encoding a transport message", e)))?;
    out.send(&format!("{prefix}{destination}"), Some(msg.partition_key()), &bytes, &[])
        .await
        .map_err(ProcessError::from)
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

impl Handler for TransportManager {
    type Input = ChangeEvent;

    /// One pipelined lookup for every channel of the batch.
    async fn prepare(&mut self, batch: &[&ChangeEvent]) {
        let mut channels: Vec<ChannelKey> = Vec::new();
        let mut seen = HashSet::new();
        for event in batch.iter().filter(|e| !e.broadcast) {
            for c in &event.channels {
                if seen.insert(c.as_str()) {
                    channels.push(c.clone());
                }
            }
        }
        self.routes = None;
        if !channels.is_empty() {
            match self.registry.route(&channels).await {
                Ok(routes) => {
                    crate::telemetry::registry_round_trips(routes.round_trips);
                    self.routes = Some(routes);
                }
                Err(error) => tracing::warn!(message = "batch route lookup failed, falling back per event", %error),
            }
        }
    }

    async fn handle(&mut self, _: &Record<'_>, event: ChangeEvent, out: &mut Outbox) -> Result<(), ProcessError> {
        self.apps.require(&event.application_id)?;
        if event.broadcast {
            self.broadcast(&event, out).await
        } else {
            self.route(&event, out).await
        }
    }

    fn abort_batch(&mut self) {
        self.routes = None;
    }
}
