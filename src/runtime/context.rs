//! What a worker is given (its role, index, configuration, health and queue, and what `-t all`
//! shares between its roles) and how it reaches its dependencies: each connect is retried with
//! backoff while the dependency is unreachable, readiness false meanwhile.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Role;
use crate::apps::Apps;
use crate::config::{Config, StoreKind};
use crate::error::WorkerError;
use crate::model::retry;
use crate::pipeline::Pipeline;
use crate::queue::Queue;
use crate::registry::{Registry, RegistryError};
use crate::store::{MainStore, StoreError};
use crate::telemetry::Health;

/// What every worker of a process shares.
#[derive(Clone)]
pub struct WorkerContext {
    pub config: Arc<Config>,
    pub role: Role,
    pub index: u32,
    pub health: Arc<Health>,
    pub queue: Queue,
    /// Connections the roles of one `-t all` process share instead of each opening its own.
    pub shared: Shared,
    /// Background tasks a worker starts beside its loop (the `system` follower); the process
    /// waits for them when it stops.
    pub tasks: TaskTracker,
}

/// What `-t all` hands to each of its roles; a role started alone finds these empty and
/// connects for itself.
#[derive(Clone, Default)]
pub struct Shared {
    /// The process's applications (one `system` follower, or the store with the in-process queue).
    pub apps: Option<Apps>,
    pub store: Option<MainStore>,
    pub registry: Option<Registry>,
}

impl WorkerContext {
    /// A context for running `role` alone, over Kafka.
    pub fn new(config: Arc<Config>, role: Role, index: u32) -> Self {
        WorkerContext {
            config,
            role,
            index,
            health: Arc::new(Health::new()),
            queue: crate::queue::Queue::Kafka,
            shared: Shared::default(),
            tasks: TaskTracker::new(),
        }
    }

    /// The context of one of the roles a `-t all` process runs.
    pub fn for_role(&self, role: Role, queue: Queue, shared: Shared) -> Self {
        WorkerContext { role, queue, shared, ..self.clone() }
    }

    /// `<type>-<index>`, as in Telepat: client ids, dead-letter envelopes and logs use it.
    pub fn name(&self) -> String {
        format!("{}-{}", self.role, self.index)
    }

    /// The applications a role works with: the process's shared set under `-t all`, else
    /// `system` loaded and followed for this worker.
    pub async fn apps(&self, shutdown: &CancellationToken) -> Result<Apps, WorkerError> {
        match &self.shared.apps {
            Some(apps) => Ok(apps.clone()),
            None => Apps::load_and_follow(&self.config, &self.name(), &self.tasks, shutdown.clone()).await,
        }
    }

    /// The common start of a role that reads one topic in the group of the same name: its
    /// applications, then its producer and pipeline connected.
    pub async fn pipeline(&self, input: &str, shutdown: &CancellationToken) -> Result<(Apps, Pipeline), WorkerError> {
        let apps = self.apps(shutdown).await?;
        let producer = self.queue.sink(&self.config, &self.health, &self.name())?;
        let pipeline =
            Pipeline::connect(&self.config, &self.health, &self.name(), input, &[input], producer, shutdown).await?;
        Ok((apps, pipeline))
    }

    /// The main store `TP_MAIN_DB` names: the shared one of `-t all`, the CQL cluster (retried
    /// until reachable) or the SQLite file.
    pub async fn store(&self, shutdown: &CancellationToken) -> Result<MainStore, WorkerError> {
        if let Some(store) = &self.shared.store {
            return Ok(store.clone());
        }
        match self.config.main_db {
            StoreKind::Scylla => {
                self.dependency(
                    shutdown,
                    "store:cql",
                    || MainStore::connect(&self.config),
                    |e| match e {
                        StoreError::Unavailable(_) => None,
                        e => Some(WorkerError::Fatal(format!("store:cql: {e}"))),
                    },
                )
                .await
            }
            // A local file that cannot be opened at start (a bad path, permissions, not a
            // database) is the operator's to fix, and retrying does not: exit 64 naming the variable.
            StoreKind::Sqlite => {
                MainStore::open_sqlite_with(&self.config.sqlite_path, self.config.sockets.resume.tombstone_retention())
                    .await
                    .map_err(|e| {
                        WorkerError::Usage(format!("TP_SQLITE_PATH {}: {e}", self.config.sqlite_path.display()))
                    })
            }
        }
    }

    /// The registry: the shared one of `-t all`, else Redis (retried until reachable). Every
    /// registry a role gets enforces the configured bounds on subscriptions.
    pub async fn registry(&self, shutdown: &CancellationToken) -> Result<Registry, WorkerError> {
        let limits = self.config.limits;
        if let Some(registry) = &self.shared.registry {
            return Ok(registry.clone().with_limits(limits));
        }
        // An unreadable CA file is the operator's to fix: exit 64 naming the variable.
        let ca = match &self.config.redis_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| WorkerError::Usage(format!("TP_REDIS_CA_FILE {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let registry = self
            .dependency(
                shutdown,
                "registry:redis",
                || Registry::connect_trusting(&self.config.redis_url, ca.as_deref()),
                |e| match e {
                    RegistryError::Unavailable(_) => None,
                    // Wrong credentials or an untrusted certificate: waiting does not fix them.
                    RegistryError::Refused(_) => Some(WorkerError::Unavailable(e.to_string())),
                    e => Some(WorkerError::Fatal(format!("registry:redis: {e}"))),
                },
            )
            .await?;
        Ok(registry.with_limits(limits))
    }

    /// Connects to a dependency, retrying with backoff (readiness condition `condition` false)
    /// while it is unreachable: a dependency that starts after the worker is normal in an
    /// orchestrated deployment. An error `permanent` maps to a [`WorkerError`] stops the worker
    /// with it; a shutdown while waiting is [`WorkerError::Cancelled`].
    async fn dependency<T, E, F, Fut>(
        &self,
        shutdown: &CancellationToken,
        condition: &str,
        attempt: F,
        permanent: impl Fn(&E) -> Option<WorkerError>,
    ) -> Result<T, WorkerError>
    where
        E: std::fmt::Display,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.health.require(condition, "connecting");
        let mut delays = retry::DEPENDENCY_CONNECT.delays();
        loop {
            let delay = delays.next_delay();
            match attempt().await {
                Ok(client) => {
                    self.health.ok(condition);
                    return Ok(client);
                }
                Err(e) => {
                    if let Some(stop) = permanent(&e) {
                        return Err(stop);
                    }
                    self.health.fail(condition, e.to_string());
                    tracing::warn!(message = "dependency not reachable, retrying", condition, error = %e, retry_in_ms = delay.as_millis() as u64);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(WorkerError::Cancelled(format!("{condition} was reachable"))),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}
