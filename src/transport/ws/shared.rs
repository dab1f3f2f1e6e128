//! What every connection of one sockets transport shares: the hub, the registry, the
//! applications and the settings a connection reads.

use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::channels::ChannelViews;
use super::gate::SyncGate;
use super::hub::Hub;
use super::limit::DeviceBudgets;
use crate::apps::Apps;
use crate::config::ResumeConfig;
use crate::registry::Registry;
use crate::store::MainStore;

/// What every connection of a transport shares.
pub struct Shared {
    pub hub: Arc<Hub>,
    pub registry: Registry,
    pub apps: Apps,
    pub index: u32,
    pub fallback_secret: Option<String>,
    pub jwt_max_lifetime: Duration,
    pub ws_config: WebSocketConfig,
    pub ping_interval: Duration,
    /// The devices' frame buckets (`TP_SCKT_FRAMES_PER_SEC`), shared by every connection of
    /// this transport.
    pub budgets: Arc<DeviceBudgets>,
    /// The channels this transport resolves itself, kept current by its connections'
    /// subscribes, unsubscribes and detaches.
    pub views: Arc<ChannelViews>,
    /// Snapshots and catch-ups are read from it (`docs/protocol.md`).
    pub store: MainStore,
    pub resume: ResumeConfig,
    /// Snapshots and catch-ups read at once, in all and per application.
    pub syncs: Arc<SyncGate>,
}
