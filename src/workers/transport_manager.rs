//! The transport_manager role: each change event from the writer becomes deliveries for the
//! devices subscribed to its channels, grouped per destination topic.
//!
//! Per poll batch, one pipelined registry lookup covers every channel of every event (and the
//! filtered variants of each, from the filter index: never a keyspace scan). Per event, each
//! distinct filter is evaluated once on the before- and after-image (enter → `new`, stay →
//! `updated`, leave → `deleted`); each device gets the deltas narrowed to the channels it holds;
//! devices with identical deliveries share one message per destination, and each distinct delivery
//! is serialised once; a sockets transport with many of them is sent one message naming the
//! channels instead, and resolves them to its connections (see `plan`). Messages are keyed
//! by object id, so one object's changes stay in order to every destination.
//!
//! Read ACLs: before routing, an event of a model not every device may read (`read_acl`
//! without bits 1/2/0, or the built-in `user`) keeps only the channels that can hold only
//! readers of its object ([`channel_carries_readable`]): checked per channel of the event,
//! not per device, so it costs a few key parses per such event and nothing per recipient.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::error::{ProcessError, WorkerError};
use crate::model::acl::{channel_carries_readable, read_access, ReadAccess};
use crate::model::transport_message::Addressed;
use crate::model::{broadcast_channels, plan_deliveries, Application, ChangeEvent, ChannelKey, Recipient, Transition};
use crate::queue::outbox::Outbox;
use crate::queue::{topic, Record};
use crate::registry::Registry;

use crate::apps::Apps;
use crate::pipeline::{Handler, Pipeline};
use crate::runtime::{Worker, WorkerContext};

mod plan;

use plan::{encode, encode_delivery, DEVICES_PER_MESSAGE};
pub use plan::{plan, FilterCache, Planned, RouteTable, SOCKETS_BY_CHANNEL_MIN};

pub struct TransportManager {
    registry: Arc<Registry>,
    apps: Apps,
    prefix: String,
    /// The batch's routes, looked up once in `prepare`.
    routes: Option<RouteTable>,
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
        let mut fetched;
        let routes = match &mut self.routes {
            Some(r) => r,
            None => {
                let routes = self.registry.route(&event.channels).await?;
                crate::telemetry::registry_round_trips(routes.round_trips);
                fetched = RouteTable::new(routes);
                &mut fetched
            }
        };
        let narrowed = readable_only(&self.apps, event);
        for planned in plan(narrowed.as_ref().unwrap_or(event), routes, &mut self.filters)? {
            send(out, &self.prefix, &planned.destination, &event.id, &planned.payload).await?;
        }
        crate::telemetry::change_routed();
        Ok(())
    }

    /// A broadcast reaches every device of its application, and no other: push devices through
    /// their provider topics, connected sockets through the `sockets_transport` broadcast topic.
    /// A broadcast's ephemeral object reaches the connected sockets only.
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
        // A broadcast's object sent to the whole application names no channel: the devices
        // receive it whatever they hold.
        let entries: Vec<(ChannelKey, Option<Transition>)> = match event.ephemeral {
            true => Vec::new(),
            false => event.channels.iter().map(|c| (c.clone(), None)).collect(),
        };
        let batch = encode_delivery(event, plan_deliveries(event, &entries).into_iter())?;
        if !event.ephemeral {
            let devices = self.registry.app_devices(&event.application_id).await?;
            let mut push: BTreeMap<String, Vec<Recipient>> = BTreeMap::new();
            for device in devices.iter().filter(|d| d.application_id == event.application_id) {
                let addresses = device.addresses().into_iter();
                for a in addresses.filter(|a| !matches!(a.transport, crate::model::Transport::Sockets(_))) {
                    push.entry(a.transport.name())
                        .or_default()
                        .push(Recipient { device_id: a.device_id, token: a.token });
                }
            }
            for (destination, recipients) in push {
                for chunk in recipients.chunks(DEVICES_PER_MESSAGE) {
                    let to = Addressed { devices: chunk, channels: &[], broadcast: false };
                    send(out, &self.prefix, &destination, &event.id, &encode(event, to, &batch)?).await?;
                }
            }
        }
        let to = Addressed { devices: &[], channels: &[], broadcast: true };
        send(out, &self.prefix, topic::SOCKETS_BROADCAST, &event.id, &encode(event, to, &batch)?).await
    }
}

/// The channels of a broadcast's object, derived here from the application's schema (the
/// producer's list is never trusted for it).
fn ephemeral_channels(app: &Application, event: &ChangeEvent) -> Result<Vec<ChannelKey>, ProcessError> {
    let object = event.after.as_ref().ok_or_else(|| ProcessError::poison("broadcast without an object (`after`)"))?;
    broadcast_channels(app, object).map_err(|e| ProcessError::poison(format!("broadcast: {e}")))
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

async fn send(
    out: &mut Outbox,
    prefix: &str,
    destination: &str,
    key: &str,
    payload: &[u8],
) -> Result<(), ProcessError> {
    out.send(&format!("{prefix}{destination}"), Some(key.as_bytes()), payload, &[]).await.map_err(ProcessError::from)
}

impl Handler for TransportManager {
    type Input = ChangeEvent;

    /// One pipelined lookup for every channel of the batch.
    async fn prepare(&mut self, batch: &[&ChangeEvent]) {
        // A broadcast's channels are derived from its object; a stored change carries its own.
        let derived: Vec<Vec<ChannelKey>> = batch
            .iter()
            .filter(|e| e.ephemeral && !e.broadcast)
            .filter_map(|e| ephemeral_channels(&*self.apps.get(&e.application_id)?, e).ok())
            .collect();
        let carried = batch.iter().filter(|e| !e.broadcast && !e.ephemeral).map(|e| &e.channels);
        let mut channels: Vec<ChannelKey> = Vec::new();
        let mut seen = HashSet::new();
        for c in carried.chain(&derived).flatten() {
            if seen.insert(c.as_str()) {
                channels.push(c.clone());
            }
        }
        self.routes = None;
        if !channels.is_empty() {
            match self.registry.route(&channels).await {
                Ok(routes) => {
                    crate::telemetry::registry_round_trips(routes.round_trips);
                    self.routes = Some(RouteTable::new(routes));
                }
                Err(error) => tracing::warn!(message = "batch route lookup failed, falling back per event", %error),
            }
        }
    }

    async fn handle(&mut self, _: &Record<'_>, mut event: ChangeEvent, out: &mut Outbox) -> Result<(), ProcessError> {
        let app = self.apps.require(&event.application_id)?;
        if event.ephemeral {
            event.channels = ephemeral_channels(&app, &event)?;
        }
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
