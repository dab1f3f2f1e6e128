//! The sockets_transport role (CONTRACT sections 3 and 7): a WebSocket server on
//! `TP_SCKT_PORT` delivering what the transport manager addressed to `sockets_transport-<i>`,
//! plus the `sockets_transport` broadcasts, to authenticated connections.
//!
//! Start: applications loaded, entries an earlier life of this index left in the registry
//! purged, then the listener opens. Run: the pipeline hands each message to the hub, which
//! queues one shared frame per receiving connection (a message addressed by channel is first
//! resolved to this transport's devices, see `transport::ws::channels`); offsets commit once
//! the frames are queued
//! (a socket delivery is at most once: a message for a connection that is gone has no one to
//! be redelivered to). Stop: no more accepts, close 1001 to every client, each connection
//! detaches from the registry, bounded by the process's shutdown grace.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Cause, ProcessError, WorkerError};
use crate::model::{clock, RawTransportMessage, Transport};
use crate::pipeline::{Handler, Pipeline};
use crate::queue::outbox::Outbox;
use crate::queue::{topic, Record};
use crate::registry::{keys, Registry};
use crate::runtime::{Worker, WorkerContext};
use crate::transport::replay::{Replays, REMEMBERED_DELIVERIES};
use crate::transport::ws::channels::{ChannelViews, Narrowing, Resolved, CHANNELS_PER_MESSAGE, VIEWED_CHANNELS};
use crate::transport::ws::gate::{SyncGate, SYNCS_AT_ONCE, SYNCS_PER_APP};
use crate::transport::ws::hub::{Delivered, Hub};
use crate::transport::ws::limit::DeviceBudgets;
use crate::transport::ws::protocol;
use crate::transport::ws::server::{Handshakes, Server};
use crate::transport::ws::Shared;

/// How often devices whose frame bucket refilled are forgotten.
const BUDGET_SWEEP: std::time::Duration = std::time::Duration::from_secs(10);

/// The role's handler: each transport message to the hub. It owns the listener's connections,
/// which it closes when it drains.
pub struct SocketsTransport {
    hub: Arc<Hub>,
    /// For the channels it resolves itself: their members, and the registry to read them from.
    views: Arc<ChannelViews>,
    registry: Registry,
    /// What was handed to connections lately: a replay upstream is dropped here.
    replays: Replays,
    /// Cancelled at drain: every connection sees it and closes with 1001.
    connections: CancellationToken,
    tracker: TaskTracker,
}

impl Worker for SocketsTransport {
    async fn connect(ctx: &WorkerContext, shutdown: &CancellationToken) -> Result<(Self, Pipeline), WorkerError> {
        let cfg = &ctx.config;
        let name = ctx.name();
        // Bad TLS files are a configuration error: exit 64 before connecting to anything.
        let tls = crate::transport::tls::acceptor(&cfg.sockets)?;
        let registry = ctx.registry(shutdown).await?;
        let store = ctx.store(shutdown).await?;
        let apps = ctx.apps(shutdown).await?;
        let producer = ctx.queue.sink(cfg, &ctx.health, &name)?;
        let own = topic::sockets(ctx.index);
        let topics = [own.as_str(), topic::SOCKETS_BROADCAST];
        let pipeline = Pipeline::connect(cfg, &ctx.health, &name, &own, &topics, producer, shutdown).await?;

        let token = life_token();
        let mut purged = 0;
        for app in apps.ids() {
            purged += registry
                .purge_sockets(&app, ctx.index, &token)
                .await
                .map_err(|e| WorkerError::Fatal(format!("purging stale socket entries of {name}: {e}")))?;
        }
        tracing::info!(message = "stale socket entries purged", server = name, purged);

        let s = &cfg.sockets;
        let hub = Arc::new(Hub::new(Transport::Sockets(ctx.index).name(), token, s.queue_frames, s.max_connections));
        let budgets = Arc::new(DeviceBudgets::new(s.frames_per_sec));
        let views = Arc::new(ChannelViews::new(ctx.index, hub.token.clone(), VIEWED_CHANNELS));
        let shared = Arc::new(Shared {
            hub: hub.clone(),
            registry: registry.clone(),
            apps,
            index: ctx.index,
            fallback_secret: cfg.jwt_secret.clone(),
            jwt_max_lifetime: cfg.jwt_max_lifetime,
            ws_config: ws_config(s.max_message_bytes),
            ping_interval: s.ping_interval,
            budgets: budgets.clone(),
            views: views.clone(),
            store,
            resume: s.resume.clone(),
            syncs: Arc::new(SyncGate::new(SYNCS_AT_ONCE, SYNCS_PER_APP)),
        });
        let handshakes = Handshakes { max: s.max_handshakes, timeout: s.handshake_timeout };
        let server = Server::bind(&s.host, s.port, tls, shared, handshakes).await?;
        let tracker = server.tracker();
        tracing::info!(message = "sockets transport listening", server = name, addr = ?server.local_addr(), tls = s.ssl);
        let connections = shutdown.child_token();
        tokio::spawn(server.run(connections.clone()));
        // Full buckets are forgotten, so the map holds only devices that spent frames lately.
        let sweep = connections.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BUDGET_SWEEP);
            loop {
                tokio::select! {
                    () = sweep.cancelled() => break,
                    _ = tick.tick() => budgets.forget_refilled(),
                }
            }
        });
        let replays = Replays::new(REMEMBERED_DELIVERIES);
        Ok((SocketsTransport { hub, views, registry, replays, connections, tracker }, pipeline))
    }

    async fn drain(self, ctx: &WorkerContext) {
        self.connections.cancel();
        self.hub.close_all(protocol::CLOSE_GOING_AWAY);
        if tokio::time::timeout(ctx.config.shutdown_grace, self.tracker.wait()).await.is_err() {
            tracing::warn!(message = "connections still open at the end of the grace period", open = self.hub.open());
        }
    }
}

/// Small buffers: most connections are idle most of the time, and memory per idle
/// connection is what limits how many one process holds. Client frames are small (a pong is
/// 6 bytes, a subscribe about a hundred); a larger one grows the buffer for its own length. The
/// read buffer is allocated whole for every connection: 128 bytes instead of 1 KiB.
fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(128)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// A token naming this life of the process (see the registry's sockets module): distinct per
/// start, so deliveries addressed to an earlier life are recognised.
fn life_token() -> String {
    let nanos = clock::now_nanos();
    format!("{:x}{:05x}", nanos, std::process::id())
}

impl SocketsTransport {
    /// A channel-addressed message to the devices it resolved to: the delivery as it came to
    /// those holding every channel named, narrowed for the others.
    fn deliver_resolved(&self, msg: &RawTransportMessage<'_>, resolved: Resolved) -> Delivered {
        if resolved.read > 0 {
            crate::telemetry::sockets_channel_reads(resolved.read);
            tracing::debug!(message = "channel views read again", channels = resolved.read, object = msg.object_id);
        }
        let mut out = Delivered::default();
        let mut narrowing = None;
        for (held, devices) in resolved.groups {
            let frame = if held.len() == msg.channels.len() {
                protocol::delivery(msg.ephemeral, msg.message)
            } else {
                let narrowed = narrowing
                    .get_or_insert_with(|| Narrowing::of(msg.ephemeral, msg.message))
                    .as_ref()
                    .map_err(|e| e.to_string())
                    .and_then(|n| n.to(&msg.channels, &held).map_err(|e| e.to_string()));
                match narrowed {
                    Ok(delivery) => protocol::delivery(msg.ephemeral, &delivery),
                    // The transport manager wrote it with these types: a bug, not the devices' loss alone.
                    Err(error) => {
                        tracing::error!(message = "delivery not narrowed, skipped", object = msg.object_id, error);
                        continue;
                    }
                }
            };
            out += self.hub.deliver_to(&msg.application_id, &devices, &frame);
        }
        out
    }
}

impl Handler for SocketsTransport {
    /// Read with its delivery left raw (`RawTransportMessage`): the frame wraps the delivery's
    /// bytes as they arrived, so the pipeline's typed decode is not used here.
    type Input = ();

    async fn handle(&mut self, record: &Record<'_>, _: (), _out: &mut Outbox) -> Result<(), ProcessError> {
        let msg = RawTransportMessage::decode(record.payload)
            .map_err(|e| ProcessError::Poison(Cause::with("not a transport message", e)))?;
        // A message names channels of its own application only: anything else would read (and
        // deliver to) another tenant's members. Only a forged or corrupted record does that.
        if msg.channels.len() > CHANNELS_PER_MESSAGE {
            return Err(ProcessError::Poison(Cause::from(format!(
                "{} channels named, at most {CHANNELS_PER_MESSAGE}",
                msg.channels.len()
            ))));
        }
        if let Some(foreign) = msg.channels.iter().find(|c| !keys::is_channel_of(&c.key, &msg.application_id)) {
            return Err(ProcessError::Poison(Cause::from(format!(
                "channel {:.200} is not a channel of application {}",
                foreign.key, msg.application_id
            ))));
        }
        // Before the replay filter records the message: a resolution that fails is retried,
        // and the retry must not be taken for a replay.
        let resolved = match msg.channels.is_empty() {
            true => None,
            false => Some(self.views.resolve(&self.registry, &msg.channels).await?),
        };
        if !self.replays.admit(&msg.application_id, &msg.object_id, msg.version, record.payload) {
            crate::telemetry::sockets_replay_suppressed();
            return Ok(());
        }
        let d = match resolved {
            None => self.hub.deliver(&msg),
            Some(resolved) => self.deliver_resolved(&msg, resolved),
        };
        crate::telemetry::sockets_frames_out(d.frames);
        crate::telemetry::sockets_bytes_out(d.bytes);
        crate::telemetry::sockets_queue_drops(d.dropped);
        crate::telemetry::sockets_absent_recipients(d.absent);
        if d.frames > 0 {
            let now = clock::now_micros();
            let latency = std::time::Duration::from_micros(now.saturating_sub(msg.timestamp));
            crate::telemetry::sockets_delivery_latency(latency);
        }
        Ok(())
    }
}
