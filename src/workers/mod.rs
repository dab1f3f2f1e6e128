//! The roles of CONTRACT section 1, one file each, dispatched by one `match`.
//!
//! Every role has the same shape: `connect` (build clients, validate, wait for dependencies),
//! then `run(shutdown)`, a single loop in [`pipeline`] that consumes a batch, hands each record
//! to the role's handler, commits the batch's offsets after the side effects succeeded, and
//! drains when the process token is cancelled.

pub mod aggregation;
pub mod all;
pub mod push_transport;
pub mod sockets_transport;
pub mod track;
pub mod transport_manager;
pub mod write;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::apps::Apps;
use crate::config::{Config, StoreKind};
use crate::error::WorkerError;
use crate::ingress::Ingress;
use crate::pipeline::Pipeline;
use crate::queue::{topic, Queue};
use crate::registry::{Registry, RegistryError};
use crate::store::{MainStore, StoreError};
use crate::telemetry::Health;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    #[value(name = "aggregation")]
    Aggregation,
    #[value(name = "write")]
    Write,
    #[value(name = "transport_manager")]
    TransportManager,
    #[value(name = "track")]
    Track,
    #[value(name = "android_transport")]
    AndroidTransport,
    #[value(name = "ios_transport")]
    IosTransport,
    #[value(name = "sockets_transport")]
    SocketsTransport,
    #[value(name = "all")]
    All,
}

/// One input of a role: the topic (before the prefix) and the consumer group reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub topic: String,
    pub group: String,
}

impl Role {
    pub const WORKERS: [Role; 7] = [
        Role::Aggregation,
        Role::Write,
        Role::TransportManager,
        Role::Track,
        Role::AndroidTransport,
        Role::IosTransport,
        Role::SocketsTransport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Aggregation => "aggregation",
            Role::Write => "write",
            Role::TransportManager => "transport_manager",
            Role::Track => "track",
            Role::AndroidTransport => "android_transport",
            Role::IosTransport => "ios_transport",
            Role::SocketsTransport => "sockets_transport",
            Role::All => "all",
        }
    }

    /// What the role consumes (CONTRACT section 3). Groups are named after the topic; the
    /// sockets broadcast topic and `system` are read by every instance, each in its own group.
    pub fn inputs(self, index: u32) -> Vec<Input> {
        let shared = |t: &str| Input { topic: t.to_string(), group: t.to_string() };
        let mut inputs = match self {
            Role::Aggregation => vec![shared(topic::AGGREGATION)],
            Role::Write => vec![shared(topic::WRITE)],
            Role::TransportManager => vec![shared(topic::TRANSPORT_MANAGER)],
            Role::Track => vec![shared(topic::TRACK)],
            Role::AndroidTransport => vec![shared(topic::ANDROID_TRANSPORT)],
            Role::IosTransport => vec![shared(topic::IOS_TRANSPORT)],
            Role::SocketsTransport => vec![
                shared(&topic::sockets(index)),
                Input {
                    topic: topic::SOCKETS_BROADCAST.to_string(),
                    group: format!("{}-{index}", topic::SOCKETS_BROADCAST),
                },
            ],
            Role::All => Role::WORKERS.iter().flat_map(|r| r.inputs(index)).collect(),
        };
        if self != Role::All {
            inputs.push(Input {
                topic: topic::SYSTEM.to_string(),
                group: format!("{}-{}-{index}", topic::SYSTEM, self.as_str()),
            });
        }
        inputs
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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
            queue: Queue::Kafka,
            shared: Shared::default(),
        }
    }
}

impl WorkerContext {
    /// `<type>-<index>`, as in Telepat: client ids, dead-letter envelopes and logs use it.
    pub fn name(&self) -> String {
        format!("{}-{}", self.role, self.index)
    }
}

/// Runs `ctx.role` until `shutdown` is cancelled, with the HTTP ingress if the process serves
/// one (`-t all`, or `TP_INGRESS=true` beside a single role).
pub async fn run(
    ctx: WorkerContext,
    ingress: Option<Arc<Ingress>>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    match (ctx.role, ingress) {
        (Role::All, ingress) => all::run(&ctx, ingress, shutdown).await,
        (_, Some(ingress)) => {
            let beside = ctx.clone();
            let token = shutdown.clone();
            tokio::spawn(async move {
                if let Err(error) = connect_ingress(&beside, &ingress, &token).await {
                    tracing::error!(message = "the HTTP ingress could not connect; it answers 503", %error);
                }
            });
            run_role(ctx, shutdown).await
        }
        (_, None) => run_role(ctx, shutdown).await,
    }
}

/// The ingress beside a single role: its own producer, applications and store.
async fn connect_ingress(
    ctx: &WorkerContext,
    ingress: &Ingress,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    ctx.health.require(all::INGRESS_CONDITION, "connecting");
    let name = format!("ingress-{}", ctx.name());
    let sink = ctx.queue.sink(&ctx.config, &ctx.health, &name)?;
    let apps = Apps::load_and_follow(&ctx.config, &name, shutdown.clone()).await?;
    let store = connect_store(ctx, shutdown).await?;
    ingress.set_backend(crate::ingress::Backend { sink, apps, store: Some(store) });
    ctx.health.ok(all::INGRESS_CONDITION);
    Ok(())
}

/// Runs one role (not `all`) until `shutdown` is cancelled.
pub async fn run_role(ctx: WorkerContext, shutdown: CancellationToken) -> Result<(), WorkerError> {
    ctx.health.require(&crate::pipeline::running_condition(&ctx.name()), "starting");
    match ctx.role {
        Role::Aggregation => aggregation::run(&ctx, shutdown).await,
        Role::Write => {
            let store = match &ctx.shared.store {
                Some(store) => store.clone(),
                None => connect_store(&ctx, &shutdown).await?,
            };
            write::run(&ctx, Arc::new(store), shutdown).await
        }
        Role::Track => {
            let registry = connect_registry(&ctx, &shutdown).await?;
            track::run(&ctx, Arc::new(registry), shutdown).await
        }
        Role::TransportManager => {
            let registry = connect_registry(&ctx, &shutdown).await?;
            transport_manager::run(&ctx, Arc::new(registry), shutdown).await
        }
        Role::SocketsTransport => {
            // Bad TLS files are a configuration error: exit 64 before connecting to anything.
            let tls = crate::transport::tls::acceptor(&ctx.config.sockets)?;
            let registry = connect_registry(&ctx, &shutdown).await?;
            sockets_transport::run(&ctx, tls, registry, shutdown).await
        }
        Role::IosTransport | Role::AndroidTransport => {
            let push = &ctx.config.push;
            let provider = if ctx.role == Role::IosTransport {
                push_transport::Provider::Apns(crate::transport::push::apns::Apns::new(push.apns_url.clone()))
            } else {
                push_transport::Provider::Fcm(crate::transport::push::fcm::Fcm::new(Some(push.fcm_url.clone())))
            };
            let registry = connect_registry(&ctx, &shutdown).await?;
            push_transport::run(&ctx, provider, registry, shutdown).await
        }
        Role::All => Err(WorkerError::Fatal("run_role(all): `all` is run by workers::all".into())),
    }
}

/// The common start of a role that reads one topic in the group of the same name: applications
/// loaded from `system`, then its producer and pipeline connected.
async fn start(
    ctx: &WorkerContext,
    input: &str,
    shutdown: &CancellationToken,
) -> Result<(Apps, Pipeline), WorkerError> {
    let cfg = &ctx.config;
    let apps = apps_for(ctx, shutdown.clone()).await?;
    let producer = ctx.queue.sink(cfg, &ctx.health, &ctx.name())?;
    let pipeline = Pipeline::connect(cfg, &ctx.health, &ctx.name(), input, &[input], producer, shutdown).await?;
    Ok((apps, pipeline))
}

/// The applications a role works with: the process's shared set under `-t all`, else `system`
/// loaded and followed for this worker.
pub async fn apps_for(ctx: &WorkerContext, shutdown: CancellationToken) -> Result<Apps, WorkerError> {
    match &ctx.shared.apps {
        Some(apps) => Ok(apps.clone()),
        None => Apps::load_and_follow(&ctx.config, &ctx.name(), shutdown).await,
    }
}

/// The main store `TP_MAIN_DB` names: the CQL cluster (retried until reachable) or the SQLite file.
pub async fn connect_store(ctx: &WorkerContext, shutdown: &CancellationToken) -> Result<MainStore, WorkerError> {
    match ctx.config.main_db {
        StoreKind::Scylla => {
            connect(
                ctx,
                shutdown,
                "store:cql",
                || MainStore::connect(&ctx.config),
                |e| matches!(e, StoreError::Unavailable(_)),
            )
            .await
        }
        // A local file that cannot be opened at start (a bad path, permissions, not a database)
        // is the operator's to fix, and retrying does not: exit 64 naming the variable.
        StoreKind::Sqlite => MainStore::open_sqlite(&ctx.config.sqlite_path)
            .await
            .map_err(|e| WorkerError::Usage(format!("TP_SQLITE_PATH {}: {e}", ctx.config.sqlite_path.display()))),
    }
}

/// The registry: the shared one of `-t all`, else Redis (retried until reachable).
pub async fn connect_registry(ctx: &WorkerContext, shutdown: &CancellationToken) -> Result<Registry, WorkerError> {
    // Every registry a role gets enforces the configured bounds on subscriptions.
    let limits = ctx.config.limits;
    if let Some(registry) = &ctx.shared.registry {
        return Ok(registry.clone().with_limits(limits));
    }
    let registry = connect(
        ctx,
        shutdown,
        "registry:redis",
        || Registry::connect(&ctx.config.redis_url),
        |e| matches!(e, RegistryError::Unavailable(_)),
    )
    .await?;
    Ok(registry.with_limits(limits))
}

/// Connects to a dependency, retrying with backoff (readiness condition `condition` false)
/// while it is unreachable: a dependency that starts after the worker is normal in an
/// orchestrated deployment. Errors `transient` rejects stop the worker.
async fn connect<T, E, F, Fut>(
    ctx: &WorkerContext,
    shutdown: &CancellationToken,
    condition: &str,
    attempt: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, WorkerError>
where
    E: std::fmt::Display,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    ctx.health.require(condition, "connecting");
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(client) => {
                ctx.health.ok(condition);
                return Ok(client);
            }
            Err(e) if !transient(&e) => return Err(WorkerError::Fatal(format!("{condition}: {e}"))),
            Err(e) => {
                ctx.health.fail(condition, e.to_string());
                tracing::warn!(message = "dependency not reachable, retrying", condition, error = %e, retry_in_ms = delay.as_millis() as u64);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(WorkerError::Cancelled(format!("{condition} was reachable"))),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_follow_the_contract() {
        let s = Role::SocketsTransport.inputs(3);
        assert_eq!(s[0], Input { topic: "sockets_transport-3".into(), group: "sockets_transport-3".into() });
        assert_eq!(s[1], Input { topic: "sockets_transport".into(), group: "sockets_transport-3".into() });
        assert_eq!(Role::Write.inputs(0)[0], Input { topic: "write".into(), group: "write".into() });
        assert_eq!(Role::Track.inputs(1)[1].group, "system-track-1");
    }
}
