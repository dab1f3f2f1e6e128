//! What a sockets transport records about the devices connected to it.
//!
//! A transport's address for a device is `sockets_transport-<i>|<deviceId>|<token>|<appId>`,
//! where the token names one life of the process: all connections of a device to that process
//! share the address, and a restarted process has a new token, so deliveries addressed to a
//! dead life are recognised and dropped. Each attached address is also listed in
//! `blg:<app>:index|sockets_transport-<i>` ([`keys::socket_index`]) so the next life can remove
//! what a crashed one left, without SCAN.
//!
//! Order matters for crash safety: attach lists the address in the index first, detach removes
//! it from the index last, so whatever a crash interrupts is still found by the purge.

use super::op::Op;
use super::{keys, Registry, RegistryError};
use crate::model::id::validate_ident;
use crate::model::{Device, DeviceAddress, Transport, Volatile};

impl Registry {
    /// Records that `addr` (a socket address) now reaches the device: index entry, the address
    /// in every channel of the device's stored subscriptions (Telepat's restore), and the
    /// device's `volatile` pointing at this connection (a device not registered yet gets a
    /// record). Returns the number of subscriptions restored.
    pub async fn attach_socket(&self, addr: &DeviceAddress) -> Result<usize, RegistryError> {
        let (app, dev, server) = parts(addr);
        let index = keys::socket_index(app, &server);
        self.run_repairing("attach socket: index", &[Op::new("SADD", &index).arg(member(addr))]).await?;
        let ours = Volatile {
            kind: Some("sockets".into()),
            token: Some(addr.token.clone()),
            active: true,
            server_name: Some(server.clone()),
        };
        self.update_device(app, dev, |stored| {
            let mut device = stored.cloned().unwrap_or_else(|| Device {
                id: dev.to_owned(),
                application_id: app.to_owned(),
                info: Default::default(),
                persistent: None,
                volatile: None,
            });
            device.volatile = Some(ours.clone());
            Some(device)
        })
        .await?;
        // After `volatile` is written: a `track` subscribe that read the device before it
        // re-reads it after storing its subscription, and this reads the subscriptions after,
        // so a subscription racing the attach is restored by one side or the other.
        self.move_addresses(app, dev, &[], std::slice::from_ref(addr)).await
    }

    /// Undoes [`Registry::attach_socket`]: the address leaves every channel, the device's
    /// `volatile` is turned off if it still points at this address (a newer connection
    /// elsewhere keeps it), the stored subscription list stays (as in Telepat), and the index
    /// entry goes last. Idempotent.
    pub async fn detach_socket(&self, addr: &DeviceAddress) -> Result<(), RegistryError> {
        let (app, dev, server) = parts(addr);
        self.move_addresses(app, dev, std::slice::from_ref(addr), &[]).await.map(drop)?;
        self.update_device(app, dev, |stored| {
            let mut device = stored?.clone();
            let ours = device.volatile.as_ref().is_some_and(|v| {
                v.server_name.as_deref() == Some(server.as_str()) && v.token.as_deref() == Some(addr.token.as_str())
            });
            // Only a volatile that still names this connection is turned off: a newer one stays.
            ours.then(|| {
                device.volatile =
                    Some(Volatile { kind: Some("sockets".into()), token: None, active: false, server_name: None });
                device
            })
        })
        .await?;
        let index = keys::socket_index(app, &server);
        self.run_repairing("detach socket: index", &[Op::new("SREM", &index).arg(member(addr))]).await.map(drop)
    }

    /// Detaches every address of socket transport `index` listed for `app` whose token is not
    /// `keep` (the current life's). Returns how many were removed.
    pub async fn purge_sockets(&self, app: &str, index: u32, keep: &str) -> Result<usize, RegistryError> {
        let server = Transport::Sockets(index).name();
        let key = keys::socket_index(app, &server);
        let read = self.run_skipping("purge sockets: list", &[Op::new("SMEMBERS", &key)]).await?;
        let entries = Self::members_or_skip(&key, read.into_iter().next().unwrap_or(redis::Value::Nil));
        let mut purged = 0;
        for entry in entries {
            // Only an entry as attach writes it: a device id that is an identifier (so its keys
            // are that device's) and a token without `|`.
            let parsed =
                entry.split_once('|').filter(|(d, t)| validate_ident("device_id", d).is_ok() && !t.contains('|'));
            let Some((device_id, token)) = parsed else {
                // Not ours to interpret; drop it so it is not looked at again.
                self.run_repairing("purge sockets: bad entry", &[Op::new("SREM", &key).arg(&entry)]).await?;
                continue;
            };
            if token == keep {
                continue;
            }
            let addr = DeviceAddress {
                transport: Transport::Sockets(index),
                device_id: device_id.to_owned(),
                token: token.to_owned(),
                application_id: app.to_owned(),
            };
            self.detach_socket(&addr).await?;
            purged += 1;
        }
        Ok(purged)
    }

    /// The `<deviceId>|<token>` entries of socket transport `index` for `app` (tests, operators).
    pub async fn socket_entries(&self, app: &str, index: u32) -> Result<Vec<String>, RegistryError> {
        let key = keys::socket_index(app, &Transport::Sockets(index).name());
        let read = self.run_skipping("socket entries", &[Op::new("SMEMBERS", &key)]).await?;
        Ok(Self::members_or_skip(&key, read.into_iter().next().unwrap_or(redis::Value::Nil)))
    }
}

fn parts(addr: &DeviceAddress) -> (&str, &str, String) {
    (&addr.application_id, &addr.device_id, addr.transport.name())
}

fn member(addr: &DeviceAddress) -> String {
    format!("{}|{}", addr.device_id, addr.token)
}
