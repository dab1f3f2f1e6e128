//! `-t all`: every role in one process, sharing one queue, one store, one registry and one set
//! of applications. The roles are the same code as when they run alone; only what
//! [`WorkerContext::queue`] and [`WorkerContext::shared`] hold differs.
//!
//! ```text
//! POST /events ─▶ aggregation ─▶ write ─▶ transport_manager ─▶ sockets_transport-<i> / push
//! POST /track  ─▶ track ─▶ registry        (in-process queue, or Kafka when configured)
//! ```
//!
//! Shutdown drains in pipeline order: the HTTP port stops taking requests first (it follows the
//! process token), then the roles keep running until the in-process queue is empty (at most
//! half of `TP_SHUTDOWN_GRACE_MS`), and only then stop, so what the ingress accepted is
//! written and delivered rather than lost with the process's memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::apps::Apps;
use crate::config::QueueKind;
use crate::error::WorkerError;
use crate::ingress::publish::Publisher;
use crate::ingress::{Backend, Ingress};
use crate::queue::{memory::Broker, topic, Queue};
use crate::registry::Registry;
use crate::runtime::{Role, Shared, WorkerContext};
use crate::store::Store;

/// Readiness condition of the ingress: unmet until its routes are live.
pub const INGRESS_CONDITION: &str = "ingress";

/// The roles `-t all` runs, in start order (consumers before the ingress opens).
const ROLES: [Role; 7] = Role::WORKERS;

pub async fn run(
    ctx: &WorkerContext,
    ingress: Option<Arc<Ingress>>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let cfg = &ctx.config;
    if ingress.is_some() {
        ctx.health.require(INGRESS_CONDITION, "connecting");
    }
    let store = ctx.store(&shutdown).await?;
    let registry = if cfg.registry_in_memory {
        Registry::memory().with_limits(cfg.limits)
    } else {
        ctx.registry(&shutdown).await?
    };
    // One set of applications for every role and the ingress: loaded from the store and kept by
    // `PUT /apps` with the in-process queue; over Kafka, one follower of `system` for all.
    let roles_token = CancellationToken::new();
    let (queue, apps) = match cfg.msg_que {
        QueueKind::Memory => {
            let broker = Broker::new(cfg.memory_queue_capacity);
            // Every group is declared before the ingress opens, so nothing produced early is
            // kept for nobody or dropped.
            for role in ROLES {
                for input in role.inputs(ctx.index).iter().filter(|i| i.topic != topic::SYSTEM) {
                    broker.declare(&cfg.topic(&input.topic), &cfg.topic(&input.group));
                }
            }
            let apps = Apps::default();
            let stored = store
                .list_applications()
                .await
                .map_err(|e| WorkerError::Fatal(format!("loading applications: {e}")))?;
            tracing::info!(message = "applications loaded from the store", count = stored.len());
            for app in stored {
                apps.insert(app);
            }
            (Queue::Memory(broker), apps)
        }
        QueueKind::Kafka => {
            (Queue::Kafka, Apps::load_and_follow(cfg, &ctx.name(), &ctx.tasks, roles_token.clone()).await?)
        }
    };
    let shared = Shared { apps: Some(apps.clone()), store: Some(store.clone()), registry: Some(registry) };

    let mut roles = JoinSet::new();
    // Every role counts for readiness from now, before its task has had a chance to run.
    for role in ROLES {
        ctx.health.require(&crate::pipeline::running_condition(&format!("{role}-{}", ctx.index)), "starting");
    }
    for role in ROLES {
        let role_ctx = ctx.for_role(role, queue.clone(), shared.clone());
        let run = super::boxed(role_ctx, roles_token.clone());
        roles.spawn(async move { (role, run.await) });
    }

    if let Some(ingress) = ingress {
        let name = format!("ingress-{}", ctx.index);
        let sink = queue.sink(cfg, &ctx.health, &name)?;
        let publisher = Publisher::connect(&queue, cfg, &ctx.health, &name, shutdown.clone()).await?;
        ingress.set_backend(Backend { sink, publisher, apps, store: Some(store) });
        ctx.health.ok(INGRESS_CONDITION);
    }
    tracing::info!(message = "all roles started", queue = ?cfg.msg_que, store = ?cfg.main_db, registry = if cfg.registry_in_memory { "memory" } else { "redis" });

    let result = tokio::select! {
        () = shutdown.cancelled() => {
            if let Queue::Memory(broker) = &queue {
                drain(broker, cfg.shutdown_grace / 2).await;
            }
            Ok(())
        }
        Some(ended) = roles.join_next() => match ended {
            Ok((role, Ok(()))) => Err(WorkerError::Fatal(format!("the {role} role stopped on its own"))),
            Ok((_, Err(e))) => Err(e),
            Err(e) => Err(WorkerError::Fatal(format!("a role task failed: {e}"))),
        },
    };
    roles_token.cancel();
    while let Some(ended) = roles.join_next().await {
        if let Ok((role, Err(error))) = ended {
            tracing::warn!(message = "role stopped with an error", %role, %error);
        }
    }
    result
}

/// Waits until every record in the in-process queue has been committed by its consumers.
async fn drain(broker: &Broker, bound: Duration) {
    let started = tokio::time::Instant::now();
    while !broker.is_idle() {
        if started.elapsed() >= bound {
            tracing::warn!(
                message = "shutting down with records still in the in-process queue",
                waited_ms = bound.as_millis() as u64
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(message = "in-process queue drained", waited_ms = started.elapsed().as_millis() as u64);
}
