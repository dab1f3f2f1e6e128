//! The Redis subscription registry: devices, their subscriptions, and the routing lookup the
//! `transport_manager` role does for every change.
//!
//! # Keys
//!
//! Telepat's (CONTRACT section 5), unchanged:
//!
//! | key | type | content |
//! |---|---|---|
//! | `blg:<app>:devices:<deviceId>` | string | the device record, JSON of [`Device`] |
//! | `blg:<app>:device:<deviceId>:subscriptions` | set | the device's channel keys |
//! | `<channelKey>` (e.g. `blg:<app>:context:<ctx>:<model>`, `...:filter:<b64>`) | set | device strings `<transport>\|<deviceId>\|<token>\|<appId>` |
//!
//! Ours, so that nothing ever needs SCAN/KEYS (see [`keys`]; `|` cannot occur in a Telepat
//! identifier, so these never collide with a Telepat key):
//!
//! | key | type | content |
//! |---|---|---|
//! | `blg:<app>:filters\|<base channel key>` | set | the filtered variants `<base>:filter:<b64>` subscribed on that channel |
//! | `blg:<app>:index\|devices` | set | ids of the devices stored through [`Registry::put_device`] |
//!
//! # Topologies and consistency
//!
//! One URL is a single node, a comma list is a Redis Cluster ([`conn`]). Only single-key
//! commands are sent, batched in pipelines (per slot on a cluster); a batch is not atomic and a
//! batch that failed on a connection error runs once more (every command is idempotent in
//! effect). Each operation below is therefore idempotent and safe to repeat after a crash, but
//! another process can observe it half done. Routing tolerates that: a filter-index entry
//! whose channel set is empty costs one empty SMEMBERS, nothing more, and an unsubscribe
//! re-checks the channel after removing an index entry so a concurrent subscribe cannot lose it.
//!
//! # Bad values and bounds
//!
//! Nothing found in Redis stops a worker or locks a device out (see `repair.rs`): a key of the
//! wrong Redis type is replaced on write and skipped on read, a device record that is not this
//! device's reads as absent, a subscription-set member that is not a channel key of the
//! device's application is removed. [`Registry::subscribe`] enforces [`Limits`] (see `limits.rs`).

pub mod conn;
pub mod keys;
mod limits;
pub mod memory;
pub mod op;
mod repair;
mod route;
pub mod secure;
mod sockets;
mod subscription;
mod values;

use std::collections::BTreeSet;

use conn::Conn;
use op::Op;
pub use route::Routes;

use crate::config::Limits;
use crate::error::{Cause, ProcessError};
use crate::model::{ChannelKey, Device, DeviceAddress};

/// Why a registry operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// Redis cannot be reached or answered with a transient error (I/O, timeout, cluster down,
    /// lost node), after the one retry. Also a URL that cannot be used at connect time.
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The server refused our credentials, or we refused its certificate: retrying cannot fix
    /// it (a worker starting exits 69 naming the setting; a running one retries, not ready).
    #[error("redis refused: {0}")]
    Refused(#[source] Cause),
    /// A stored value does not parse or a key holds another type than the registry stores.
    #[error("redis registry data is corrupt: {0}")]
    Corrupt(#[source] Cause),
    /// A device or channel bound ([`crate::config::Limits`]) would be exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
}

impl From<RegistryError> for ProcessError {
    /// Nothing found in the registry stops a worker: what a message led to (a limit, a value
    /// that is not what it should be) rejects that message, and the partition moves on.
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unavailable(_) | RegistryError::Refused(_) => ProcessError::Transient(Cause::of(e)),
            RegistryError::Corrupt(_) | RegistryError::LimitExceeded(_) => ProcessError::Poison(Cause::of(e)),
        }
    }
}

/// Attempts of [`Registry::update_device`] before it gives up (each one lost a race).
const UPDATE_ROUNDS: usize = 64;

/// Device ids read per pipelined GET batch in [`Registry::app_devices`].
pub const DEVICE_CHUNK: usize = 500;

/// A handle on the registry; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct Registry {
    conn: Conn,
    limits: Limits,
}

impl Registry {
    /// Connects to `redis://` / `rediss://` URL, or to a Redis Cluster given a comma list of
    /// URLs, with bounded connect and response timeouts ([`conn::CONNECT_TIMEOUT`],
    /// [`conn::RESPONSE_TIMEOUT`]).
    pub async fn connect(url: &str) -> Result<Registry, RegistryError> {
        Self::connect_trusting(url, None).await
    }

    /// [`Registry::connect`], trusting the CA `ca_pem` (PEM) for `rediss://` instead of the
    /// system's roots.
    pub async fn connect_trusting(url: &str, ca_pem: Option<&[u8]>) -> Result<Registry, RegistryError> {
        Ok(Registry { conn: Conn::connect(url, ca_pem).await?, limits: Limits::default() })
    }

    /// The same registry, enforcing `limits` on subscriptions.
    pub fn with_limits(mut self, limits: Limits) -> Registry {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The in-process registry of `-t all` without Redis (not durable; see [`memory`]).
    pub fn memory() -> Registry {
        Registry { conn: Conn::memory(), limits: Limits::default() }
    }

    /// The map behind an in-memory registry (tests inspect it as they would a server).
    pub fn memory_db(&self) -> Option<memory::MemoryDb> {
        self.conn.memory_db()
    }

    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Batches that were retried after a connection error since connect.
    pub fn retries(&self) -> u64 {
        self.conn.retries()
    }

    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.conn.ping().await
    }

    /// The record at `blg:<app>:devices:<id>`. A value there that is not a record of this
    /// device (does not parse, another type, names another device) is logged and read as
    /// `None`: the next write of the record replaces it (see `repair.rs`).
    pub async fn get_device(&self, app: &str, device_id: &str) -> Result<Option<Device>, RegistryError> {
        let key = keys::device(app, device_id);
        let v = self.run_skipping("get device", &[Op::new("GET", &key)]).await?;
        Ok(Self::device_or_skip(&key, app, device_id, v.into_iter().next().unwrap_or(redis::Value::Nil)))
    }

    /// Stores the record under its own `application_id`/`id` (SET ... GET) and adds the id to
    /// the device index; returns the record it replaced. A replaced value that was not a record
    /// of this device (see [`Registry::get_device`]) is logged and reported as `None`: the
    /// write has repaired it, and the caller cannot do better.
    pub async fn put_device(&self, device: &Device) -> Result<Option<Device>, RegistryError> {
        let app = &device.application_id;
        let key = keys::device(app, &device.id);
        let json = serde_json::to_string(device).map_err(|e| {
            RegistryError::Corrupt(Cause::with(format_args!("device {} does not serialize", device.id), e))
        })?;
        let ops =
            [Op::new("SET", &key).arg(json).arg("GET"), Op::new("SADD", &keys::device_index(app)).arg(&device.id)];
        let mut replies = self.run_repairing("put device", &ops).await?.into_iter();
        Ok(Self::device_or_skip(&key, app, &device.id, replies.next().unwrap_or(redis::Value::Nil)))
    }

    /// Read-modify-write of a device record that loses no concurrent update: every write
    /// answers the record it replaced (`SET … GET`, atomic). If that is not what this writer
    /// expected there (the record it started from, then its own last write), another writer got
    /// in between and was overwritten: `change` runs again on the replaced record, which holds
    /// that writer's change, and the result is written again. A socket attaching while `track`
    /// registers the device is the case this exists for. `change` returns `None` to leave the
    /// record alone. Returns the record the last write replaced and the one stored.
    pub async fn update_device<F>(
        &self,
        app: &str,
        device_id: &str,
        change: F,
    ) -> Result<(Option<Device>, Option<Device>), RegistryError>
    where
        F: FnMut(Option<&Device>) -> Option<Device>,
    {
        let stored = self.get_device(app, device_id).await?;
        self.update_device_from(app, device_id, stored, change).await
    }

    /// [`Registry::update_device`] from a record the caller has just read.
    pub async fn update_device_from<F>(
        &self,
        app: &str,
        device_id: &str,
        mut basis: Option<Device>,
        mut change: F,
    ) -> Result<(Option<Device>, Option<Device>), RegistryError>
    where
        F: FnMut(Option<&Device>) -> Option<Device>,
    {
        let mut expected = basis.clone();
        let mut wrote = false;
        for _ in 0..UPDATE_ROUNDS {
            let next = match (change(basis.as_ref()), wrote, &basis) {
                (Some(next), _, _) => next,
                (None, false, _) => return Ok((basis.clone(), basis)),
                // Nothing to change on the other writer's record, but ours overwrote it: put it back.
                (None, true, Some(theirs)) => theirs.clone(),
                (None, true, None) => return Ok((None, expected)),
            };
            wrote = true;
            let replaced = self.put_device(&next).await?;
            if replaced == expected {
                return Ok((replaced, Some(next)));
            }
            basis = replaced;
            expected = Some(next);
        }
        Err(RegistryError::Unavailable(
            format!("device {app}/{device_id} changed under us {UPDATE_ROUNDS} times in a row").into(),
        ))
    }

    /// Removes the device: its address(es) from every channel it subscribed (every member of
    /// those channels whose device and application parts are this device's, whatever its
    /// transport and token), the filter-index entries left empty, its subscription set, its
    /// record and its device-index entry. Channels go first, so a crash part-way leaves what
    /// a repeat needs. Idempotent.
    pub async fn delete_device(&self, app: &str, device_id: &str) -> Result<(), RegistryError> {
        let subs_key = keys::device_subscriptions(app, device_id);
        let subs = self.valid_subscriptions(app, device_id).await?;

        let reads: Vec<Op> = subs.iter().map(|k| Op::new("SMEMBERS", k)).collect();
        let replies = self.run_skipping("delete device: read channels", &reads).await?;
        let mut removes = Vec::new();
        let mut filtered = Vec::new();
        for (key, v) in subs.iter().zip(replies) {
            let mine: Vec<String> = Self::members_or_skip(key, v)
                .into_iter()
                .filter(|m| DeviceAddress::parse(m).is_ok_and(|a| a.device_id == device_id && a.application_id == app))
                .collect();
            if !mine.is_empty() {
                removes.push(Op::new("SREM", key).arg(mine));
            }
            if keys::is_filtered(key) {
                removes.push(Op::new("SCARD", key));
                filtered.push(key.as_str());
            }
        }
        let replies = self.run_repairing("delete device: leave channels", &removes).await?;
        let empty = empty_after(&removes, replies)?;
        self.prune_filter_index(filtered.into_iter().filter(|k| empty.contains(*k)).collect()).await?;

        let ops = [
            Op::new("DEL", &subs_key),
            Op::new("DEL", &keys::device(app, device_id)),
            Op::new("SREM", &keys::device_index(app)).arg(device_id),
        ];
        self.run_repairing("delete device", &ops).await.map(drop)
    }

    /// The channel keys of `app` in `blg:<app>:device:<id>:subscriptions`, sorted (anything
    /// else found there is left out; [`Registry::move_addresses`] removes it).
    pub async fn device_subscriptions(&self, app: &str, device_id: &str) -> Result<Vec<String>, RegistryError> {
        let key = keys::device_subscriptions(app, device_id);
        let read = self.run_skipping("device subscriptions", &[Op::new("SMEMBERS", &key)]).await?;
        let members = Self::members_or_skip(&key, read.into_iter().next().unwrap_or(redis::Value::Nil));
        Ok(members.into_iter().filter(|k| keys::is_channel_of(k, app)).collect())
    }

    /// Removes the addresses from the channel set and `key` from the device's subscription set;
    /// a filtered `key` whose channel set became empty leaves its filter index. Idempotent.
    pub async fn unsubscribe(
        &self,
        app: &str,
        device_id: &str,
        key: &ChannelKey,
        addresses: &[DeviceAddress],
    ) -> Result<(), RegistryError> {
        let mut ops = Vec::with_capacity(3);
        if !addresses.is_empty() {
            ops.push(Op::new("SREM", key.as_str()).arg(strings(addresses)));
        }
        ops.push(Op::new("SREM", &keys::device_subscriptions(app, device_id)).arg(key.as_str()));
        let filtered = key.filter_suffix().is_some();
        if filtered {
            ops.push(Op::new("SCARD", key.as_str()));
        }
        let replies = self.run_repairing("unsubscribe", &ops).await?;
        if filtered && !empty_after(&ops, replies)?.is_empty() {
            self.prune_filter_index(vec![key.as_str()]).await?;
        }
        Ok(())
    }

    /// A device's addresses changed (new push token, socket moved): in every channel it
    /// subscribed, adds the `new` addresses (and lists filtered channels in their filter index
    /// again), then removes the `old` ones not among them. Returns how many channels the
    /// device subscribed (0 when there was nothing to move, and they were not read).
    pub async fn move_addresses(
        &self,
        app: &str,
        device_id: &str,
        old: &[DeviceAddress],
        new: &[DeviceAddress],
    ) -> Result<usize, RegistryError> {
        let added = strings(new);
        let kept: BTreeSet<&str> = added.iter().map(String::as_str).collect();
        let removed: Vec<String> = strings(old).into_iter().filter(|a| !kept.contains(a.as_str())).collect();
        if added.is_empty() && removed.is_empty() {
            return Ok(0);
        }
        let subs = self.valid_subscriptions(app, device_id).await?;
        let mut ops = Vec::with_capacity(subs.len() * 2);
        let mut filtered = Vec::new();
        for key in &subs {
            if !added.is_empty() {
                ops.push(Op::new("SADD", key).arg(&added));
                // The channel may have been emptied and pruned from its filter index while the
                // device had no address (a socket that went away): list it again.
                if let Some(index) = keys::is_filtered(key).then(|| keys::filter_index(keys::base_of(key))).flatten() {
                    ops.push(Op::new("SADD", &index).arg(key));
                }
            }
            if !removed.is_empty() {
                ops.push(Op::new("SREM", key).arg(&removed));
                // Only a move to no address at all can empty a channel.
                if added.is_empty() && keys::is_filtered(key) {
                    ops.push(Op::new("SCARD", key));
                    filtered.push(key.as_str());
                }
            }
        }
        let replies = self.run_repairing("move addresses", &ops).await?;
        let empty = empty_after(&ops, replies)?;
        self.prune_filter_index(filtered.into_iter().filter(|k| empty.contains(*k)).collect()).await?;
        Ok(subs.len())
    }

    /// Removes filtered keys, found empty, from their filter indexes; then re-checks them and
    /// puts back any that a concurrent subscribe filled meanwhile (each step is a separate
    /// round trip because the keys live in different slots, and order across slots is only
    /// guaranteed between round trips).
    pub(super) async fn prune_filter_index(&self, empty: Vec<&str>) -> Result<(), RegistryError> {
        let entries: Vec<(&str, String)> =
            empty.into_iter().filter_map(|k| keys::filter_index(keys::base_of(k)).map(|i| (k, i))).collect();
        if entries.is_empty() {
            return Ok(());
        }
        let srem: Vec<Op> = entries.iter().map(|(k, i)| Op::new("SREM", i).arg(*k)).collect();
        self.run_repairing("prune filter index", &srem).await?;
        let check: Vec<Op> = entries.iter().map(|(k, _)| Op::new("SCARD", k)).collect();
        let counts = self.run_repairing("prune filter index: re-check", &check).await?;
        let mut readd = Vec::new();
        for ((k, i), v) in entries.iter().zip(counts) {
            if values::int(k, v)? > 0 {
                readd.push(Op::new("SADD", i).arg(*k));
            }
        }
        self.run_repairing("prune filter index: restore", &readd).await.map(drop)
    }
}

/// The keys of the SCARD commands in `ops` whose reply is 0.
fn empty_after(ops: &[Op], replies: Vec<redis::Value>) -> Result<BTreeSet<String>, RegistryError> {
    let mut out = BTreeSet::new();
    for (op, v) in ops.iter().zip(replies) {
        if op.name() == "SCARD" && values::int(op.key(), v)? == 0 {
            out.insert(op.key().to_owned());
        }
    }
    Ok(out)
}

fn strings(addresses: &[DeviceAddress]) -> Vec<String> {
    let set: BTreeSet<String> = addresses.iter().map(DeviceAddress::to_string).collect();
    set.into_iter().collect()
}
