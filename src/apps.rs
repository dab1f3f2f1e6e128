//! Applications as every worker sees them: loaded at start from the compacted `system` topic
//! (read from the beginning to its end before the worker takes traffic), then followed, so an
//! `app put` reaches running workers without a restart.
//!
//! `system` records: key = application id, value = the application JSON (CONTRACT section 6), an
//! empty value removes the application. The topic is compacted, so it always holds the latest
//! version of every application; the main store keeps the same data for the API and operators.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::{Cause, ProcessError, WorkerError};
use crate::model::schema::is_builtin;
use crate::model::Application;
use crate::queue::{kafka, topic};

/// A name no current application answers to. The wording is what a dead letter's reason and
/// the ingress's 400 say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    #[error("unknown application `{0}`")]
    Application(String),
    #[error("unknown model `{model}` in application `{application}`")]
    Model { application: String, model: String },
}

impl From<Unknown> for ProcessError {
    /// A message naming what does not exist is rejected; the partition moves on.
    fn from(e: Unknown) -> Self {
        ProcessError::Poison(Cause::of(e))
    }
}

/// Whether `app` has `model`: declared in its schema, or built in (`user`, `context`).
pub fn require_model(app: &Application, model: &str) -> Result<(), Unknown> {
    if app.model(model).is_some() || is_builtin(model) {
        Ok(())
    } else {
        Err(Unknown::Model { application: app.id.clone(), model: model.to_owned() })
    }
}

/// The current applications, shared by a worker's handlers and its `system` follower.
#[derive(Clone, Default)]
pub struct Apps {
    inner: Arc<RwLock<HashMap<String, Arc<Application>>>>,
}

impl Apps {
    pub fn get(&self, id: &str) -> Option<Arc<Application>> {
        self.inner.read().ok()?.get(id).cloned()
    }

    /// The application `id`, or why a message naming it is rejected.
    pub fn require(&self, id: &str) -> Result<Arc<Application>, Unknown> {
        self.get(id).ok_or_else(|| Unknown::Application(id.to_owned()))
    }

    /// The application `id` having `model` ([`require_model`]).
    pub fn require_model(&self, id: &str, model: &str) -> Result<Arc<Application>, Unknown> {
        let app = self.require(id)?;
        require_model(&app, model)?;
        Ok(app)
    }

    pub fn insert(&self, app: Application) {
        if let Ok(mut map) = self.inner.write() {
            map.insert(app.id.clone(), Arc::new(app));
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut map) = self.inner.write() {
            map.remove(id);
        }
    }

    /// The ids of the applications known now.
    pub fn ids(&self) -> Vec<String> {
        self.inner.read().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one `system` record; a bad one is logged and skipped (it cannot be dead-lettered
    /// by every worker at once, and `app put` validates before producing).
    fn apply(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        match (key.and_then(|k| std::str::from_utf8(k).ok()), payload) {
            (Some(id), None) | (Some(id), Some([])) => self.remove(id),
            (_, Some(bytes)) => match Application::from_json(bytes) {
                Ok(app) => {
                    tracing::info!(message = "application loaded", app = %app.id);
                    self.insert(app);
                }
                Err(error) => tracing::error!(message = "invalid application on system, ignored", %error),
            },
            (None, None) => {}
        }
    }

    /// Reads `system` to its current end, then follows it in a task on `tasks` until
    /// `shutdown`. Returns once the initial load is complete.
    pub async fn load_and_follow(
        cfg: &Config,
        worker: &str,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Apps, WorkerError> {
        let apps = Apps::default();
        let topic = cfg.topic(topic::SYSTEM);
        let mut c = kafka::base_config(cfg, &format!("{worker}-system"));
        // Assigned, never subscribed: every worker reads every record, nothing is committed.
        c.set("group.id", format!("{topic}-{worker}"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let consumer: StreamConsumer = c.create().map_err(WorkerError::kafka("creating the system consumer"))?;
        let consumer = Arc::new(consumer);
        let ends = catch_up(&consumer, &topic, &apps).await?;
        tracing::info!(message = "applications loaded from system", count = apps.len(), partitions = ends);
        let follower = apps.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    m = consumer.recv() => match m {
                        Ok(m) => follower.apply(m.key(), m.payload()),
                        Err(error) => tracing::warn!(message = "reading system", %error),
                    },
                }
            }
        });
        Ok(apps)
    }
}

/// Assigns every partition of `topic` from the beginning and applies records up to the high
/// watermarks seen at the start.
async fn catch_up(consumer: &Arc<StreamConsumer>, topic: &str, apps: &Apps) -> Result<usize, WorkerError> {
    let timeout = Duration::from_secs(10);
    // Metadata and watermarks are blocking librdkafka calls: off the async threads.
    let (c, t) = (consumer.clone(), topic.to_string());
    let ends = tokio::task::spawn_blocking(move || -> Result<HashMap<i32, i64>, WorkerError> {
        let md = c.fetch_metadata(Some(&t), timeout).map_err(WorkerError::kafka("system metadata"))?;
        let mut ends = HashMap::new();
        for p in md.topics().iter().filter(|t| t.error().is_none()).flat_map(|t| t.partitions()) {
            let (_, high) = c.fetch_watermarks(&t, p.id(), timeout).map_err(WorkerError::kafka("system watermarks"))?;
            ends.insert(p.id(), high);
        }
        Ok(ends)
    })
    .await
    .map_err(|e| WorkerError::Fatal(format!("system loader: {e}")))??;
    if ends.is_empty() {
        return Err(WorkerError::Fatal(format!("topic {topic} does not exist: run `nexxus-worker topics apply`")));
    }
    let mut tpl = TopicPartitionList::new();
    for &p in ends.keys() {
        tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(WorkerError::kafka("system assignment"))?;
    }
    consumer.assign(&tpl).map_err(WorkerError::kafka("assigning system"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let position = consumer.position().map_err(WorkerError::kafka("system position"))?;
        // Positions, not offsets: transaction markers take offsets but carry no record.
        let done = ends.iter().all(|(&p, &end)| {
            end == 0
                || matches!(position.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= end)
        });
        if done {
            return Ok(ends.len());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(WorkerError::Fatal(format!("could not read {topic} to its end within 120 s")));
        }
        if let Ok(result) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            let m = result.map_err(WorkerError::kafka("reading system"))?;
            apps.apply(m.key(), m.payload());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_name_what_is_missing_in_the_reasons_clients_read() {
        let apps = Apps::default();
        apps.insert(Application::from_json(br#"{"id":"a1","schema":{"task":{}}}"#).expect("valid application"));
        assert_eq!(apps.require("nope").map(|a| a.id.clone()), Err(Unknown::Application("nope".into())));
        assert_eq!(apps.require("nope").unwrap_err().to_string(), "unknown application `nope`");
        assert_eq!(apps.require_model("a1", "task").map(|a| a.id.clone()), Ok("a1".into()));
        // Built-in models need no declaration.
        assert!(apps.require_model("a1", "user").is_ok() && apps.require_model("a1", "context").is_ok());
        let ghost = apps.require_model("a1", "ghost").map(drop).unwrap_err();
        assert_eq!(ghost.to_string(), "unknown model `ghost` in application `a1`");
        assert_eq!(apps.require_model("nope", "task").map(drop), Err(Unknown::Application("nope".into())));
    }
}
