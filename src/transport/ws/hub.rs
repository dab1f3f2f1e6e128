//! The connections of one sockets transport, by application and device, and the fan-out of a
//! transport message to them.
//!
//! A transport message's frame is built once, around the delivery's bytes as they arrived;
//! every receiving connection gets a reference-counted handle on those same bytes (no copy)
//! through its bounded queue. A full queue means the client stopped keeping up: it is
//! closed with 4008 rather than allowed to grow memory or hold back the partition.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::mailbox::Mailbox;
use super::protocol::{self, CLOSE_TOO_SLOW};
use crate::model::RawTransportMessage;

/// One connection as the hub holds it: its id (to leave by) and its mailbox (frames and the
/// close signal). The connection's task holds a clone.
#[derive(Clone)]
pub struct Handle {
    pub id: u64,
    pub mailbox: Arc<Mailbox>,
}

/// Counts of one delivery.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Frames queued.
    pub frames: usize,
    /// Bytes queued (frames × frame size).
    pub bytes: usize,
    /// Connections closed because their queue was full.
    pub dropped: usize,
    /// Recipients addressed to an earlier life of this transport or no longer connected.
    pub absent: usize,
}

/// A device's connections: usually one, so its list starts with room for one (a `Vec` grows
/// to four slots on its first push), and its key is a boxed `str` (no spare capacity): both
/// are held per idle connection.
type Devices = HashMap<Box<str>, Vec<Handle>>;

pub struct Hub {
    /// `sockets_transport-<i>`.
    pub server: String,
    /// This life's socket token (see [`crate::registry`]'s sockets module).
    pub token: String,
    queue: usize,
    apps: RwLock<HashMap<String, Devices>>,
    /// Serializes registry attach/detach per device, so a connection arriving while the
    /// device's last one is leaving cannot have its fresh entries removed.
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: RandomState,
    next_id: AtomicU64,
    open: Arc<AtomicUsize>,
    max_open: usize,
    /// The code [`Hub::close_all`] asked for (0: open); connections joining later get it too.
    closing: AtomicU16,
}

/// One accepted socket counted against the connection limit until dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hub {
    pub fn new(server: String, token: String, queue: usize, max_open: usize) -> Hub {
        Hub {
            server,
            token,
            queue: queue.max(1),
            apps: RwLock::default(),
            stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            open: Arc::default(),
            max_open,
            closing: AtomicU16::new(0),
        }
    }

    /// Counts a new socket, or `None` when the limit is reached.
    pub fn admit(&self) -> Option<Slot> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.open.clone());
        (before < self.max_open).then_some(slot)
    }

    /// Accepted sockets, authenticated or not.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn stripe(&self, app: &str, device: &str) -> &tokio::sync::Mutex<()> {
        let i = self.hasher.hash_one((app, device)) as usize % self.stripes.len();
        &self.stripes[i]
    }

    /// Adds a connection; `true` if it is the device's first here. Call under [`Hub::stripe`].
    /// A connection joining after [`Hub::close_all`] is asked to close at once.
    pub fn join(&self, app: &str, device: &str) -> (Handle, bool) {
        let handle =
            Handle { id: self.next_id.fetch_add(1, Ordering::Relaxed), mailbox: Arc::new(Mailbox::new(self.queue)) };
        let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
        // Read under the write lock, and `close_all` sets it before taking the read lock: a
        // join either is seen by `close_all` or sees the code.
        match self.closing.load(Ordering::Acquire) {
            0 => {}
            code => handle.mailbox.close(code),
        }
        let conns =
            apps.entry(app.to_owned()).or_default().entry(device.into()).or_insert_with(|| Vec::with_capacity(1));
        conns.push(handle.clone());
        (handle, conns.len() == 1)
    }

    /// Removes a connection; `true` if it was the device's last here. Call under [`Hub::stripe`].
    pub fn leave(&self, app: &str, device: &str, id: u64) -> bool {
        let mut apps = self.apps.write().unwrap_or_else(|p| p.into_inner());
        let Some(devices) = apps.get_mut(app) else { return false };
        let Some(conns) = devices.get_mut(device) else { return false };
        conns.retain(|h| h.id != id);
        let last = conns.is_empty();
        if last {
            devices.remove(device);
            if devices.is_empty() {
                apps.remove(app);
            }
        }
        last
    }

    /// Asks every connection to close with `code` (shutdown: 1001), those joining later too.
    pub fn close_all(&self, code: u16) {
        let _ = self.closing.compare_exchange(0, code.max(1), Ordering::AcqRel, Ordering::Acquire);
        let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
        apps.values().flat_map(HashMap::values).flatten().for_each(|h| h.mailbox.close(code));
    }

    /// Queues `msg` for its recipients on this transport (or, for a broadcast, every connection
    /// of its application).
    pub fn deliver(&self, msg: &RawTransportMessage<'_>) -> Delivered {
        let frame = protocol::delivery(msg.ephemeral, msg.message);
        let mut out = Delivered::default();
        let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
        let Some(devices) = apps.get(&msg.application_id) else {
            out.absent = msg.devices.len();
            return out;
        };
        if msg.broadcast {
            devices.values().flatten().for_each(|h| queue(h, &frame, &mut out));
        } else {
            for r in &msg.devices {
                match devices.get(r.device_id.as_str()).filter(|_| r.token == self.token) {
                    Some(conns) => conns.iter().for_each(|h| queue(h, &frame, &mut out)),
                    None => out.absent += 1,
                }
            }
        }
        out.bytes = out.frames * frame.len();
        out
    }

    /// Queues `frame` for every connection of `devices` of application `app` (devices this life
    /// of the transport resolved itself, so no token is checked).
    pub fn deliver_to(&self, app: &str, devices: &[Arc<str>], frame: &Utf8Bytes) -> Delivered {
        let mut out = Delivered::default();
        let apps = self.apps.read().unwrap_or_else(|p| p.into_inner());
        let Some(connected) = apps.get(app) else {
            out.absent = devices.len();
            return out;
        };
        for device in devices {
            match connected.get(&**device) {
                Some(conns) => conns.iter().for_each(|h| queue(h, frame, &mut out)),
                None => out.absent += 1,
            }
        }
        out.bytes = out.frames * frame.len();
        out
    }
}

/// Queues one frame on a connection; a full queue closes it (4008). A connection already
/// closing (asked by the hub, or its loop ended) gets nothing more and is not counted again.
fn queue(h: &Handle, frame: &Utf8Bytes, out: &mut Delivered) {
    if h.mailbox.is_closing() {
        return;
    }
    if h.mailbox.push(frame.clone()) {
        out.frames += 1;
    } else {
        out.dropped += 1;
        h.mailbox.close(CLOSE_TOO_SLOW);
    }
}

impl std::ops::AddAssign for Delivered {
    fn add_assign(&mut self, other: Delivered) {
        self.frames += other.frames;
        self.bytes += other.bytes;
        self.dropped += other.dropped;
        self.absent += other.absent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    use crate::model::Recipient;

    const EMPTY: &str = r#"{"new":[],"updated":[],"deleted":[]}"#;

    fn msg<'a>(app: &str, to: &[(&str, &str)], broadcast: bool, batch: &'a RawValue) -> RawTransportMessage<'a> {
        RawTransportMessage {
            application_id: app.into(),
            object_id: "o".into(),
            version: 1,
            timestamp: 0,
            devices: to.iter().map(|(d, t)| Recipient { device_id: (*d).into(), token: (*t).into() }).collect(),
            channels: Vec::new(),
            broadcast,
            ephemeral: false,
            message: batch,
        }
    }

    fn empty() -> Box<RawValue> {
        RawValue::from_string(EMPTY.into()).expect("valid JSON")
    }

    #[test]
    fn every_connection_of_a_recipient_gets_the_same_bytes_and_no_one_else() {
        let hub = Hub::new("sockets_transport-0".into(), "life".into(), 4, 10);
        let (a1, first) = hub.join("app", "d1");
        let (a2, second) = hub.join("app", "d1");
        let (b, _) = hub.join("app", "d2");
        let (other, _) = hub.join("other", "d1");
        assert!(first && !second);
        let batch = empty();
        let d = hub.deliver(&msg("app", &[("d1", "life"), ("d3", "life"), ("d2", "old-life")], false, &batch));
        assert_eq!((d.frames, d.absent, d.dropped), (2, 2, 0));
        let (x, y) = (a1.mailbox.try_pop(), a2.mailbox.try_pop());
        assert!(x.is_some() && x == y);
        let same = |f: &Option<Utf8Bytes>| f.as_ref().map(|f| f.as_str().as_ptr());
        assert_eq!(same(&x), same(&y), "one frame shared, not a copy per connection");
        assert!(b.mailbox.try_pop().is_none() && other.mailbox.try_pop().is_none());
        let d = hub.deliver(&msg("app", &[], true, &batch));
        assert_eq!(d.frames, 3, "a broadcast reaches every connection of its application only");
        assert!(other.mailbox.try_pop().is_none());
        assert!(!hub.leave("app", "d1", a1.id));
        assert!(hub.leave("app", "d1", a2.id));
        assert_eq!(hub.deliver(&msg("app", &[], true, &batch)).frames, 1, "only d2 is left in the application");
    }

    #[test]
    fn a_resolved_delivery_reaches_every_connection_of_those_devices_only() {
        let hub = Hub::new("s".into(), "t".into(), 4, 10);
        let (a1, _) = hub.join("app", "a");
        let (a2, _) = hub.join("app", "a");
        let (b, _) = hub.join("app", "b");
        let (other, _) = hub.join("other", "a");
        let frame = protocol::message(&empty());
        let d = hub.deliver_to("app", &[Arc::from("a"), Arc::from("gone")], &frame);
        assert_eq!((d.frames, d.absent, d.bytes), (2, 1, 2 * frame.len()));
        assert!(a1.mailbox.try_pop().is_some() && a2.mailbox.try_pop().is_some());
        assert!(b.mailbox.try_pop().is_none() && other.mailbox.try_pop().is_none());
        assert_eq!(hub.deliver_to("nobody", &[Arc::from("a")], &frame).absent, 1);
    }

    #[test]
    fn a_full_queue_closes_that_connection_with_4008_only() {
        let hub = Hub::new("s".into(), "t".into(), 2, 10);
        let (slow, _) = hub.join("app", "slow");
        let (fast, _) = hub.join("app", "fast");
        let batch = empty();
        for _ in 0..3 {
            hub.deliver(&msg("app", &[], true, &batch));
            while fast.mailbox.try_pop().is_some() {}
        }
        assert_eq!(slow.mailbox.code(), CLOSE_TOO_SLOW);
        assert!(slow.mailbox.is_closing());
        assert_eq!(fast.mailbox.code(), 0);
        // Closing: nothing more is queued for it, and it is not counted as dropped again.
        let d = hub.deliver(&msg("app", &[], true, &batch));
        assert_eq!((d.frames, d.dropped), (1, 0));
        assert_eq!(std::iter::from_fn(|| slow.mailbox.try_pop()).count(), 2, "only what it took before");
    }

    #[test]
    fn close_all_asks_every_connection_of_every_application() {
        let hub = Hub::new("s".into(), "t".into(), 4, 8);
        let handles = [hub.join("a1", "d1").0, hub.join("a1", "d2").0, hub.join("a2", "d1").0];
        handles[1].mailbox.close(CLOSE_TOO_SLOW);
        hub.close_all(1001);
        let codes: Vec<u16> = handles.iter().map(|i| i.mailbox.code()).collect();
        assert_eq!(codes, [1001, CLOSE_TOO_SLOW, 1001], "a close already asked for keeps its code");
        let (late, _) = hub.join("a1", "d3");
        assert_eq!(late.mailbox.code(), 1001, "a connection joining during shutdown is closed too");
    }

    #[test]
    fn the_connection_limit_counts_slots() {
        let hub = Hub::new("s".into(), "t".into(), 2, 2);
        let (a, b) = (hub.admit(), hub.admit());
        assert!(a.is_some() && b.is_some() && hub.admit().is_none());
        drop(a);
        assert!(hub.admit().is_some());
    }
}
