//! A device subscribing to a channel or leaving it: the one rule for the `track` role's
//! commands and a socket's own frames.
//!
//! A subscription is made with every address the device has: its push token and its live
//! socket as its record names them, and, for a socket's frame, that socket's own address
//! (the record's `volatile` names one connection, another may have taken it meanwhile).
//!
//! # Races
//!
//! A socket attaching ([`Registry::attach_socket`]) writes the device's `volatile` and then reads
//! its subscriptions; a subscribe writes the subscription and then reads the device again, and
//! adds any address that appeared in between. Whichever runs second sees the other, so a
//! subscription racing an attach reaches the new socket either way. A leave does not
//! read again: an attach that read the subscription list before the leave removed it, and
//! whose address the leave did not see yet, leaves that address in the channel (deliveries of
//! that channel reach the socket) until the socket detaches. Reading again would narrow that
//! window, not close it, and a second removal could undo a subscribe racing the leave.

use super::{Registry, RegistryError};
use crate::model::{ChannelKey, Device, DeviceAddress};

impl Registry {
    /// Subscribes device `device_id` to `key` with all its addresses and `via` (the address of
    /// the socket that asks, if one does), within the limits of [`Registry::subscribe`].
    /// Returns `false`, having written nothing, for a device with no record when no `via` is
    /// given: there is nothing to subscribe with.
    pub async fn subscribe_device(
        &self,
        app: &str,
        device_id: &str,
        key: &ChannelKey,
        via: Option<&DeviceAddress>,
    ) -> Result<bool, RegistryError> {
        let device = self.get_device(app, device_id).await?;
        if device.is_none() && via.is_none() {
            return Ok(false);
        }
        let addresses = with_via(device.as_ref(), via);
        self.subscribe(app, device_id, key, &addresses).await?;
        let now = with_via(self.get_device(app, device_id).await?.as_ref(), via);
        // Every address, not just the new ones: a leave between the two rounds removed the
        // first round's, and the subscription this puts back must reach all of them.
        if now.iter().any(|a| !addresses.contains(a)) {
            self.subscribe(app, device_id, key, &now).await?;
        }
        Ok(true)
    }

    /// Removes `key` from the device's subscriptions and its addresses (and `via`) from the
    /// channel. Idempotent; a device with no record still leaves.
    pub async fn unsubscribe_device(
        &self,
        app: &str,
        device_id: &str,
        key: &ChannelKey,
        via: Option<&DeviceAddress>,
    ) -> Result<(), RegistryError> {
        let device = self.get_device(app, device_id).await?;
        self.unsubscribe(app, device_id, key, &with_via(device.as_ref(), via)).await
    }
}

fn with_via(device: Option<&Device>, via: Option<&DeviceAddress>) -> Vec<DeviceAddress> {
    let mut addresses = device.map(Device::addresses).unwrap_or_default();
    if let Some(via) = via.filter(|v| !addresses.contains(v)) {
        addresses.push(via.clone());
    }
    addresses
}
