//! One [`CancellationToken`] per process. Signals cancel it; any worker that fails cancels it
//! too, so a half-dead process never lingers. `main` then gives in-flight work the grace period.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancels `token` on the first SIGINT (Ctrl-C in a terminal) or SIGTERM (Kubernetes, systemd).
/// A second signal means the operator is out of patience: exit at once with 130.
pub fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(message = "shutdown requested, finishing in-flight work");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!(message = "second signal, exiting now");
        std::process::exit(130);
    });
}

/// A child of `supervise` (which sets `NEXXUS_SUPERVISOR_PID`) stops gracefully when its
/// supervisor is gone (SIGKILL, crash): it would otherwise run on as an orphan nobody manages,
/// and a new supervisor would start a second copy of it.
// A handshake between `supervise` and its own children, not configuration (no TP_ variable).
#[allow(clippy::disallowed_methods)]
pub fn spawn_orphan_watch(token: CancellationToken) {
    let Some(supervisor) = std::env::var("NEXXUS_SUPERVISOR_PID").ok().and_then(|p| p.parse::<i32>().ok()) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if nix::unistd::getppid().as_raw() != supervisor {
                tracing::warn!(message = "supervisor gone, shutting down", supervisor);
                token.cancel();
                return;
            }
        }
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        // Without signal handlers the process can still be stopped by SIGKILL; never spin.
        _ => std::future::pending::<()>().await,
    }
}

/// Waits for every tracked task after cancellation, bounded by `grace`. Returns false when the
/// bound was hit and work was abandoned.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    match tokio::time::timeout(grace, tracker.wait()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::error!(
                message = "workers did not finish within the grace period, terminating now",
                grace_ms = grace.as_millis() as u64
            );
            false
        }
    }
}
