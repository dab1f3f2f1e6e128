//! `nexxus-worker app put <app.json>`: validates an application, stores it in the main store and
//! announces it on `system` (key = id), where every running worker picks it up.
//!
//! The `system` record carries the whole application, credentials included: workers need them
//! (JWT secrets, push keys). Protect the topic with Kafka ACLs like the store itself.
//!
//! A record that would choose where the push roles connect (a service account `token_uri` not
//! on `TP_PUSH_TOKEN_URLS`) is refused as bad input (exit 65) before anything is stored.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::error::WorkerError;
use crate::model::Application;
use crate::queue::kafka::Producer;
use crate::queue::topic;
use crate::store::{MainStore, Store};
use crate::telemetry::Health;
use crate::transport::push::check_endpoints;

pub async fn put(cfg: &Config, file: &Path) -> Result<Application, WorkerError> {
    let bytes = std::fs::read(file).map_err(WorkerError::io(format!("reading {}", file.display())))?;
    let app = Application::from_json(&bytes).map_err(|e| WorkerError::Data(format!("{}: {e}", file.display())))?;
    register(cfg, &app).await?;
    Ok(app)
}

/// Stores a validated application in the main store (`TP_MAIN_DB`) and announces it on `system`.
pub async fn register(cfg: &Config, app: &Application) -> Result<(), WorkerError> {
    // Before connecting: a refused record is bad input (65) even when Kafka is down.
    refuse_endpoints(cfg, app)?;
    let producer = Producer::new(cfg, &Arc::new(Health::new()), "nexxus-app-put")?;
    producer.check_topic(&cfg.topic(topic::SYSTEM)).await?;
    let store = MainStore::connect(cfg).await.map_err(|e| WorkerError::Fatal(format!("main store: {e}")))?;
    store_and_announce(cfg, &store, &producer, app).await
}

/// The two steps of registering, in order: the store first (the source of truth for the API,
/// operators and `token`), then `system` (key = id), which every running worker follows. Also
/// the ingress's `PUT /apps` over Kafka. A record naming a push endpoint the operator does not
/// allow is refused first, with nothing stored.
pub async fn store_and_announce(
    cfg: &Config,
    store: &MainStore,
    producer: &Producer,
    app: &Application,
) -> Result<(), WorkerError> {
    refuse_endpoints(cfg, app)?;
    store.put_application(app).await.map_err(|e| WorkerError::Fatal(format!("storing the application: {e}")))?;
    let json = serde_json::to_vec(app).map_err(|e| WorkerError::Fatal(format!("encoding the application: {e}")))?;
    producer
        .send(&cfg.topic(topic::SYSTEM), Some(app.id.as_bytes()), &json, &[])
        .await
        .map_err(WorkerError::kafka("announcing the application on system"))?;
    Ok(())
}

/// `app`'s push endpoints checked against the operator's (`WorkerError::Data`, exit 65).
pub fn refuse_endpoints(cfg: &Config, app: &Application) -> Result<(), WorkerError> {
    check_endpoints(app, &cfg.push).map_err(|e| WorkerError::Data(format!("application `{}`: {e}", app.id)))
}
