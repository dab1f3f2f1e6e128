//! The ios_transport and android_transport roles (CONTRACT sections 3 and 8): every device of a
//! transport message gets the message's pushes from its application's provider account.
//!
//! A batch's pushes run concurrently (bounded by `TP_PUSH_CONCURRENCY`, each application paced
//! by `TP_PUSH_RATE`), each retried on its own with capped exponential backoff that honours
//! `Retry-After`, so a throttled application waits without holding the others' requests. The
//! batch commits once every push ended: delivered, rejected, given up after the retry budget,
//! or its token invalid, in which case the device and its subscriptions leave the registry.
//! Delivery is at least once: a crash mid-batch sends the batch again.
//!
//! An upstream replay is not pushed again (see [`crate::transport::replay`]): a transport message
//! identical to one whose pushes ended, or to an earlier one of the same batch, is dropped. A
//! message is remembered only once its batch's pushes ended, so a batch that is redone before
//! then is pushed in full.
//!
//! An application whose record names an endpoint the operator does not allow (a record that
//! reached `system` without `app put`'s checks) gets nothing sent: the role never connects
//! there, counts its pushes as `refused` and logs why, at most once a second.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::apps::Apps;
use crate::error::{ProcessError, WorkerError};
use crate::model::retry;
use crate::model::{Application, Recipient, TransportMessage, DEFAULT_MAX_MESSAGE_BYTES};
use crate::pipeline::{Handler, Pipeline};
use crate::queue::outbox::Outbox;
use crate::queue::{topic, Record};
use crate::registry::Registry;
use crate::runtime::{Role, Worker, WorkerContext};
use crate::telemetry::{self, gate};
use crate::transport::push::apns::{self, Apns, ApnsPush};
use crate::transport::push::fcm::{self, Fcm};
use crate::transport::push::{EndpointError, Outcome, Pacer};
use crate::transport::replay::{Delivery, Replays, REMEMBERED_DELIVERIES};

/// A push still failing after this long is given up, so a batch always ends.
const RETRY_BUDGET: Duration = Duration::from_secs(120);

/// The provider a push role speaks to.
pub enum Provider {
    Apns(Apns),
    Fcm(Fcm),
}

impl Provider {
    fn name(&self) -> &'static str {
        match self {
            Provider::Apns(_) => "apns",
            Provider::Fcm(_) => "fcm",
        }
    }

    fn topic(&self) -> &'static str {
        match self {
            Provider::Apns(_) => topic::IOS_TRANSPORT,
            Provider::Fcm(_) => topic::ANDROID_TRANSPORT,
        }
    }

    /// The operator's allow list of OAuth token endpoints (APNs has no such endpoint).
    pub fn with_token_urls(self, token_urls: &[String]) -> Provider {
        match self {
            Provider::Fcm(f) => Provider::Fcm(f.with_token_urls(token_urls.to_vec())),
            apns => apns,
        }
    }

    /// Why `app` must not be sent with by this provider, if so. APNs records cannot name an
    /// endpoint at all (the schema refuses `apn.url`).
    fn refuses(&self, app: &Application) -> Option<EndpointError> {
        match self {
            Provider::Apns(_) => None,
            Provider::Fcm(f) => f.refuses(app),
        }
    }
}

enum Push {
    Apns(ApnsPush),
    Fcm(Map<String, Value>),
}

struct Job {
    app: Arc<Application>,
    device: Recipient,
    push: Arc<Push>,
}

pub struct PushTransport {
    provider: Arc<Provider>,
    registry: Registry,
    apps: Apps,
    pacer: Arc<Pacer>,
    concurrency: usize,
    jobs: Vec<Job>,
    /// Transport messages whose pushes ended lately.
    replays: Replays,
    /// The messages of the batch in progress, remembered in `replays` when its pushes ended.
    batch: HashSet<Delivery>,
}

impl Worker for PushTransport {
    /// `ios_transport` speaks to APNs, `android_transport` to FCM.
    async fn connect(
        ctx: &WorkerContext,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(Self, Pipeline), WorkerError> {
        let push = &ctx.config.push;
        let provider = match ctx.role {
            Role::IosTransport => Provider::Apns(Apns::new(push.apns_url.clone())),
            _ => Provider::Fcm(Fcm::new(Some(push.fcm_url.clone()))),
        };
        let registry = ctx.registry(shutdown).await?;
        let (apps, pipeline) = ctx.pipeline(provider.topic(), shutdown).await?;
        let provider = provider.with_token_urls(&push.token_urls);
        Ok((PushTransport::new(provider, registry, apps, push.rate, push.concurrency), pipeline))
    }
}

impl PushTransport {
    pub fn new(provider: Provider, registry: Registry, apps: Apps, rate: u64, concurrency: usize) -> PushTransport {
        PushTransport {
            provider: Arc::new(provider),
            registry,
            apps,
            pacer: Arc::new(Pacer::new(rate)),
            concurrency,
            jobs: Vec::new(),
            replays: Replays::new(REMEMBERED_DELIVERIES),
            batch: HashSet::new(),
        }
    }
}

impl PushTransport {
    /// Removes the device only if its push token is still the one refused: a device that
    /// registered a new token since the message was routed keeps it.
    async fn remove_if_still(
        &self,
        app: &str,
        device: &str,
        token: &str,
    ) -> Result<(), crate::registry::RegistryError> {
        let current = self.registry.get_device(app, device).await?;
        let same = current.as_ref().and_then(|d| d.persistent.as_ref()).is_some_and(|p| p.token == token);
        if same {
            self.registry.delete_device(app, device).await?;
            telemetry::push_invalid_token(self.provider.name());
        }
        Ok(())
    }
}

/// Sends one push until it ends, retrying what may be retried.
async fn deliver(provider: &Provider, pacer: &Pacer, job: &Job) -> Outcome {
    let started = Instant::now();
    // Past the policy's attempts or the budget a push is given up
    // (`nexxus_push_sent_total{outcome="failed"}`).
    let mut delays = retry::PUSH_SEND.delays();
    loop {
        pacer.acquire(&job.app.id).await;
        let outcome = match (provider, job.push.as_ref()) {
            (Provider::Apns(a), Push::Apns(p)) => a.send(&job.app, &job.device.token, p).await,
            (Provider::Fcm(f), Push::Fcm(d)) => f.send(&job.app, &job.device.token, d).await,
            _ => Outcome::Rejected("push built for another provider".into()),
        };
        let Outcome::Retry { reason, after } = outcome else { return outcome };
        telemetry::push_retried(provider.name());
        let attempts = delays.retries() + 1;
        let wait = match delays.next_after(after) {
            Some(wait) if started.elapsed() + wait <= RETRY_BUDGET => wait,
            _ => return Outcome::Rejected(format!("gave up after {attempts} attempts: {reason}")),
        };
        tracing::debug!(
            message = "push retried",
            device = job.device.device_id,
            reason,
            wait_ms = wait.as_millis() as u64
        );
        tokio::time::sleep(wait).await;
    }
}

impl Handler for PushTransport {
    type Input = TransportMessage;

    async fn handle(
        &mut self,
        record: &Record<'_>,
        msg: TransportMessage,
        _out: &mut Outbox,
    ) -> Result<(), ProcessError> {
        if record.payload.len() > DEFAULT_MAX_MESSAGE_BYTES {
            return Err(ProcessError::poison(format!("transport message of {} bytes", record.payload.len())));
        }
        let delivery = self.replays.delivery(&msg.application_id, &msg.object_id, msg.version, record.payload);
        if self.batch.contains(&delivery) || self.replays.seen(delivery) {
            telemetry::push_replay_suppressed(self.provider.name());
            return Ok(());
        }
        let app = self.apps.require(&msg.application_id)?;
        let pushes: Vec<Arc<Push>> = match self.provider.as_ref() {
            Provider::Apns(_) => apns::payloads(&msg, &app).into_iter().map(|p| Arc::new(Push::Apns(p))).collect(),
            Provider::Fcm(_) => fcm::payloads(&msg).into_iter().map(|p| Arc::new(Push::Fcm(p))).collect(),
        };
        if let Some(refused) = self.provider.refuses(&app) {
            let count = pushes.len() * msg.devices.len();
            telemetry::push_sent(self.provider.name(), "refused", count);
            if let Some(suppressed) = gate::allow("push_endpoint_refused") {
                tracing::error!(
                    message = "pushes refused: the application names an endpoint the operator does not allow",
                    app = %app.id,
                    reason = %refused,
                    pushes = count,
                    suppressed
                );
            }
            self.batch.insert(delivery);
            return Ok(());
        }
        for device in &msg.devices {
            for push in &pushes {
                self.jobs.push(Job { app: app.clone(), device: device.clone(), push: push.clone() });
            }
        }
        // Only now: a record whose handling failed is handled again, and must not meet itself.
        self.batch.insert(delivery);
        Ok(())
    }

    async fn end_batch(&mut self, _out: &mut Outbox) -> Result<(), ProcessError> {
        let jobs = std::mem::take(&mut self.jobs);
        let (provider, pacer) = (self.provider.clone(), self.pacer.clone());
        let name = provider.name();
        let results: Vec<(String, Recipient, Outcome)> = futures::stream::iter(jobs)
            .map(|job| {
                let (provider, pacer) = (provider.clone(), pacer.clone());
                async move {
                    let outcome = deliver(&provider, &pacer, &job).await;
                    (job.app.id.clone(), job.device, outcome)
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        // Every push of the batch ended, delivered or given up: a replay of one of its messages,
        // or a redo of the batch, would reach devices that already have it.
        for delivery in self.batch.drain() {
            self.replays.remember(delivery);
        }
        let mut invalid = BTreeSet::new();
        for (app, device, outcome) in results {
            let label = match &outcome {
                Outcome::Delivered => "delivered",
                Outcome::InvalidToken(_) => "invalid_token",
                Outcome::Rejected(_) | Outcome::Retry { .. } => "failed",
            };
            telemetry::push_sent(name, label, 1);
            match outcome {
                Outcome::InvalidToken(reason) => {
                    if let Some(suppressed) = gate::allow("push_invalid_token") {
                        tracing::info!(
                            message = "invalid push token",
                            app,
                            device = device.device_id,
                            reason,
                            suppressed
                        );
                    }
                    invalid.insert((app, device.device_id, device.token));
                }
                Outcome::Rejected(reason) | Outcome::Retry { reason, .. } => {
                    if let Some(suppressed) = gate::allow("push_not_delivered") {
                        tracing::warn!(
                            message = "push not delivered",
                            app,
                            device = device.device_id,
                            reason,
                            suppressed
                        );
                    }
                }
                Outcome::Delivered => {}
            }
        }
        for (app, device, token) in invalid {
            // A removal that fails now is done again the next time the provider refuses the
            // token; redoing the batch for it would push every other device twice.
            if let Err(e) = self.remove_if_still(&app, &device, &token).await {
                tracing::warn!(message = "invalid device not removed", app, device, error = %e);
            }
        }
        Ok(())
    }

    fn abort_batch(&mut self) {
        self.jobs.clear();
        self.batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::queue::memory::Broker;
    use crate::queue::outbox::Sink;

    fn record(payload: &[u8]) -> Record<'_> {
        Record { topic: "android_transport", partition: 0, offset: 0, key: None, payload, timestamp_ms: None }
    }

    /// A transport message's bytes and their decoding, for `devices` (ids doubling as tokens).
    fn message(devices: &[&str]) -> (Vec<u8>, TransportMessage) {
        let delta = json!({"op":"create","object":{"id":"o","type":"task"},"subscriptions":["blg:a:context:c:task"],
            "application_id":"a","timestamp":1,"version":1});
        let recipients: Vec<Value> = devices.iter().map(|d| json!({"device_id": d, "token": d})).collect();
        let msg = json!({"application_id":"a","object_id":"o","version":1,"timestamp":1,"devices":recipients,
            "message":{"new":[delta],"updated":[],"deleted":[]}});
        (msg.to_string().into_bytes(), serde_json::from_value(msg).expect("a transport message"))
    }

    /// Whether `t` handled `(bytes, msg)` without an error.
    async fn handled(t: &mut PushTransport, out: &mut Outbox, (bytes, msg): &(Vec<u8>, TransportMessage)) -> bool {
        t.handle(&record(bytes), msg.clone(), out).await.is_ok()
    }

    #[tokio::test]
    async fn a_message_is_remembered_only_once_its_pushes_ended() {
        let apps = Apps::default();
        // FCM that can never send (the key does not parse): every push ends at once, `failed`.
        let fcm = Fcm::new(Some("http://127.0.0.1:9".into()));
        let mut t = PushTransport::new(Provider::Fcm(fcm), Registry::memory(), apps.clone(), 1000, 4);
        let mut out = Outbox::new(Sink::Memory(Broker::new(16)));
        let m = message(&["d1"]);

        assert!(!handled(&mut t, &mut out, &m).await, "an unknown application: an error, retried");
        assert!(!handled(&mut t, &mut out, &m).await, "the retry is handled, not taken for a replay");
        apps.insert(
            serde_json::from_value(json!({"id": "a", "fcm": {"service_account": {"project_id": "p",
                "client_email": "e@p.example", "private_key": "not a key"}}}))
            .expect("application"),
        );
        assert!(handled(&mut t, &mut out, &m).await);
        assert_eq!(t.jobs.len(), 1);
        assert!(handled(&mut t, &mut out, &m).await);
        assert_eq!(t.jobs.len(), 1, "a repeat within the batch is dropped");

        t.abort_batch();
        assert!(handled(&mut t, &mut out, &m).await);
        assert_eq!(t.jobs.len(), 1, "a redone batch pushes in full");
        t.end_batch(&mut out).await.expect("the batch ends");
        assert!(t.jobs.is_empty());
        assert!(handled(&mut t, &mut out, &m).await);
        assert!(t.jobs.is_empty(), "a replay after the pushes ended is dropped");

        assert!(handled(&mut t, &mut out, &message(&["d2"])).await);
        assert_eq!(t.jobs.len(), 1, "another device chunk of the same version is pushed");
    }
}
