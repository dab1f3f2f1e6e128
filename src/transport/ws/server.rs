//! The accept loop: plain TCP or TLS, one task per connection, all tracked so shutdown can
//! wait for every connection to close and detach.
//!
//! Connections still in their opening (TLS, upgrade, token) hold one of
//! `TP_SCKT_MAX_HANDSHAKES` permits, taken *before* `accept`: at the bound the loop stops
//! accepting and further clients wait in the kernel's accept queue, so half-open connections
//! cannot take the file descriptors that established ones, Kafka and Redis need. Each
//! opening ends within `TP_SCKT_HANDSHAKE_TIMEOUT_MS`, which frees its permit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::serve;
use super::shared::Shared;
use crate::error::WorkerError;
use crate::telemetry;

pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    handshakes: Arc<Semaphore>,
    handshake_timeout: Duration,
}

impl Server {
    /// Binds `host:port`; a port that cannot be bound is a configuration error (exit 64)
    /// naming `TP_SCKT_PORT`.
    pub async fn bind(
        host: &str,
        port: u16,
        tls: Option<TlsAcceptor>,
        shared: Arc<Shared>,
        limits: Handshakes,
    ) -> Result<Server, WorkerError> {
        let listener = TcpListener::bind((host, port))
            .await
            .map_err(|e| WorkerError::Usage(format!("TP_SCKT_HOST/TP_SCKT_PORT {host}:{port}: cannot listen: {e}")))?;
        Ok(Server {
            listener,
            tls,
            shared,
            tracker: TaskTracker::new(),
            handshakes: Arc::new(Semaphore::new(limits.max.max(1))),
            handshake_timeout: limits.timeout,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The connection tasks, to wait for after shutdown.
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Accepts until `shutdown`, which also closes every connection (1001).
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                p = self.handshakes.clone().acquire_owned() => p,
            };
            // The semaphore is never closed.
            let Ok(permit) = permit else { break };
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(message = "accept failed", error = %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let slot = self.shared.hub.admit();
            let (shared, shutdown, tls) = (self.shared.clone(), shutdown.clone(), self.tls.clone());
            let opening = Opening { deadline: Instant::now() + self.handshake_timeout, permit };
            self.tracker.spawn(connection(tcp, tls, shared, slot, shutdown, opening));
        }
        self.tracker.close();
    }
}

/// The bounds of the openings: how many at once, and how long each may take.
#[derive(Debug, Clone, Copy)]
pub struct Handshakes {
    pub max: usize,
    pub timeout: Duration,
}

/// A connection's opening: its deadline and its handshake permit.
struct Opening {
    deadline: Instant,
    permit: OwnedSemaphorePermit,
}

async fn connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    slot: Option<super::hub::Slot>,
    shutdown: CancellationToken,
    opening: Opening,
) {
    // Boxed so the task holds only the branch in use: the TLS handshake's state is several KiB
    // and a plain connection would otherwise carry that size for its whole life.
    let Opening { deadline, permit } = opening;
    match tls {
        None => Box::pin(serve(tcp, shared, slot, shutdown, deadline, permit)).await,
        Some(acceptor) => Box::pin(tls_connection(tcp, acceptor, shared, slot, shutdown, deadline, permit)).await,
    }
}

async fn tls_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    slot: Option<super::hub::Slot>,
    shutdown: CancellationToken,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
) {
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Box::pin(serve(stream, shared, slot, shutdown, deadline, permit)).await,
        Ok(Err(e)) => tracing::debug!(message = "TLS handshake failed", error = %e),
        Err(_) => {
            telemetry::sockets_handshake_timeout();
            tracing::debug!(message = "TLS handshake timed out")
        }
    }
}
