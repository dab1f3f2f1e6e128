//! What a role is and how one runs, below the roles themselves: the [`Role`] enum and its
//! inputs, the [`WorkerContext`] a worker is given, and the [`Worker`] shape every role has:
//!
//! ```text
//! connect (clients, applications, pipeline; dependencies retried, readiness false meanwhile)
//!   └─ pipeline loop until the shutdown token (the role's Handler hooks)
//!        └─ drain (what the role owns beside the loop: listeners, connections)
//! ```

mod context;
mod role;

use std::future::Future;

use tokio_util::sync::CancellationToken;

pub use context::{Shared, WorkerContext};
pub use role::{Input, Role};

use crate::error::WorkerError;
use crate::pipeline::{running_condition, Handler, Pipeline};

/// A role: a pipeline handler that knows how to connect itself.
pub trait Worker: Handler + Sized + Send {
    /// Builds the role's clients and its connected pipeline for `ctx.role`.
    fn connect(
        ctx: &WorkerContext,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<(Self, Pipeline), WorkerError>> + Send;

    /// After the loop stopped: closes what the role owns beside it, within the grace period.
    fn drain(self, _ctx: &WorkerContext) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs worker `W` for `ctx` until `shutdown` is cancelled: connect, loop, drain.
pub async fn serve<W: Worker>(ctx: WorkerContext, shutdown: CancellationToken) -> Result<(), WorkerError> {
    // Readiness counts this role from now: a role still connecting must not look ready.
    ctx.health.require(&running_condition(&ctx.name()), "starting");
    let (mut worker, pipeline) = W::connect(&ctx, &shutdown).await?;
    let result = pipeline.run(&mut worker, shutdown).await;
    worker.drain(&ctx).await;
    result
}
