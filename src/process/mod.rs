//! What one process runs for `-t <type>`: a role (the dispatch by `match`), optionally with the
//! HTTP ingress beside it (`TP_INGRESS=true`), or every role at once (`-t all`, [`all`]).

pub mod all;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;
use crate::ingress::publish::Publisher;
use crate::ingress::{Backend, Ingress};
use crate::runtime::{serve, Role, WorkerContext};
use crate::workers::{
    aggregation::Aggregation, push_transport::PushTransport, sockets_transport::SocketsTransport, track::Track,
    transport_manager::TransportManager, write::Write,
};

/// Runs `ctx.role` until `shutdown` is cancelled, with the HTTP ingress if the process serves
/// one; then waits (within the grace period) for the background tasks its workers started.
pub async fn run(
    ctx: WorkerContext,
    ingress: Option<Arc<Ingress>>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let tasks = ctx.tasks.clone();
    let grace = ctx.config.shutdown_grace;
    let result = run_role(ctx, ingress, shutdown).await;
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(message = "background tasks still running at the end of the grace period", tasks = tasks.len());
    }
    result
}

/// [`run`] behind a pointer: `-t all` runs its roles through the function that runs it, and a
/// future cannot contain itself.
fn boxed(
    ctx: WorkerContext,
    shutdown: CancellationToken,
) -> Pin<Box<dyn Future<Output = Result<(), WorkerError>> + Send>> {
    Box::pin(run_role(ctx, None, shutdown))
}

async fn run_role(
    ctx: WorkerContext,
    ingress: Option<Arc<Ingress>>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    if let (Some(ingress), false) = (&ingress, ctx.role == Role::All) {
        let (beside, ingress, token) = (ctx.clone(), ingress.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = connect_ingress(&beside, &ingress, &token).await {
                tracing::error!(message = "the HTTP ingress could not connect; it answers 503", %error);
            }
        });
    }
    match ctx.role {
        Role::All => all::run(&ctx, ingress, shutdown).await,
        Role::Aggregation => serve::<Aggregation>(ctx, shutdown).await,
        Role::Write => serve::<Write>(ctx, shutdown).await,
        Role::Track => serve::<Track>(ctx, shutdown).await,
        Role::TransportManager => serve::<TransportManager>(ctx, shutdown).await,
        Role::SocketsTransport => serve::<SocketsTransport>(ctx, shutdown).await,
        Role::IosTransport | Role::AndroidTransport => serve::<PushTransport>(ctx, shutdown).await,
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
    let publisher = Publisher::connect(&ctx.queue, &ctx.config, &ctx.health, &name, shutdown.clone()).await?;
    let apps = crate::apps::Apps::load_and_follow(&ctx.config, &name, &ctx.tasks, shutdown.clone()).await?;
    let store = ctx.store(shutdown).await?;
    ingress.set_backend(Backend { sink, publisher, apps, store: Some(store) });
    ctx.health.ok(all::INGRESS_CONDITION);
    Ok(())
}
