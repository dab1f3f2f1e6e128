//! The track role: device and subscription commands from `track` applied to the Redis registry
//! (CONTRACT sections 4 and 5). Every command is idempotent (set additions and removals), so a
//! replay after a crash changes nothing.

use std::sync::Arc;

use crate::error::{Cause, ProcessError, WorkerError};
use crate::model::{check_track_command, Device, TrackCommand, Volatile};
use crate::queue::outbox::Outbox;
use crate::queue::{topic, Record};
use crate::registry::Registry;

use crate::apps::Apps;
use crate::pipeline::{Handler, Pipeline};
use crate::runtime::{Worker, WorkerContext};

pub struct Track {
    registry: Arc<Registry>,
    apps: Apps,
}

impl Track {
    pub fn new(registry: Arc<Registry>, apps: Apps) -> Self {
        Track { registry, apps }
    }
}

impl Worker for Track {
    async fn connect(
        ctx: &WorkerContext,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(Self, Pipeline), WorkerError> {
        let registry = ctx.registry(shutdown).await?;
        let (apps, pipeline) = ctx.pipeline(topic::TRACK, shutdown).await?;
        Ok((Track::new(Arc::new(registry), apps), pipeline))
    }
}

impl Handler for Track {
    type Input = TrackCommand;

    async fn handle(&mut self, _: &Record<'_>, command: TrackCommand, _out: &mut Outbox) -> Result<(), ProcessError> {
        let app = command.application_id().to_string();
        let application = self.apps.require(&app)?;
        check_track_command(&command, &application).map_err(|e| ProcessError::Poison(Cause::of(e)))?;
        let registry = &self.registry;
        match command {
            TrackCommand::DeviceRegister { device, .. } => {
                // The live socket (`volatile`) belongs to the sockets transport that holds it; the
                // API cannot know it, so a re-registration keeps the stored one and a first one
                // cannot claim a socket that nobody holds.
                let with_volatile = |stored: Option<&Device>| {
                    let mut next = device.clone();
                    next.volatile = match stored {
                        Some(p) => p.volatile.clone(),
                        None => device.volatile.clone().map(|v| Volatile { active: false, ..v }),
                    };
                    Some(next)
                };
                // Move the channel entries before storing the record: if this is interrupted, the
                // replay still sees the old record, so the move is redone rather than forgotten.
                let previous = registry.get_device(&app, &device.id).await?;
                let planned = with_volatile(previous.as_ref()).map(|d| d.addresses()).unwrap_or_default();
                if let Some(p) = &previous {
                    if p.addresses() != planned {
                        registry.move_addresses(&app, &device.id, &p.addresses(), &planned).await?;
                    }
                }
                let (replaced, stored) =
                    registry.update_device_from(&app, &device.id, previous.clone(), with_volatile).await?;
                // A socket attached in between: move from what was really replaced as well.
                if replaced != previous {
                    let old = replaced.as_ref().map(Device::addresses).unwrap_or_default();
                    let new = stored.as_ref().map(Device::addresses).unwrap_or_default();
                    if old != new {
                        registry.move_addresses(&app, &device.id, &old, &new).await?;
                    }
                }
            }
            TrackCommand::DeviceRemove { device_id, .. } => registry.delete_device(&app, &device_id).await?,
            TrackCommand::Subscribe { device_id, channel, filter, .. } => {
                let key = channel.key(&app, filter.as_ref()).map_err(|e| ProcessError::Poison(Cause::of(e)))?;
                if !registry.subscribe_device(&app, &device_id, &key, None).await? {
                    return Err(ProcessError::poison(format!("subscribe of unknown device `{device_id}`")));
                }
            }
            TrackCommand::Unsubscribe { device_id, channel, filter, .. } => {
                let key = channel.key(&app, filter.as_ref()).map_err(|e| ProcessError::Poison(Cause::of(e)))?;
                registry.unsubscribe_device(&app, &device_id, &key, None).await?;
            }
        }
        crate::telemetry::track_command();
        Ok(())
    }
}
