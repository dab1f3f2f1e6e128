//! The accept loop: plain TCP or TLS, one task per connection, all tracked so shutdown can
//! wait for every connection to close and detach.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{serve, Shared, HANDSHAKE_TIMEOUT};
use crate::error::WorkerError;

pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl Server {
    /// Binds `host:port`; a port that cannot be bound is a configuration error (exit 64)
    /// naming `TP_SCKT_PORT`.
    pub async fn bind(
        host: &str,
        port: u16,
        tls: Option<TlsAcceptor>,
        shared: Arc<Shared>,
    ) -> Result<Server, WorkerError> {
        let listener = TcpListener::bind((host, port))
            .await
            .map_err(|e| WorkerError::Usage(format!("TP_SCKT_HOST/TP_SCKT_PORT {host}:{port}: cannot listen: {e}")))?;
        Ok(Server { listener, tls, shared, tracker: TaskTracker::new() })
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
            self.tracker.spawn(connection(tcp, tls, shared, slot, shutdown));
        }
        self.tracker.close();
    }
}

async fn connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    slot: Option<super::hub::Slot>,
    shutdown: CancellationToken,
) {
    // Boxed so the task holds only the branch in use: the TLS handshake's state is several KiB
    // and a plain connection would otherwise carry that size for its whole life.
    match tls {
        None => Box::pin(serve(tcp, shared, slot, shutdown)).await,
        Some(acceptor) => Box::pin(tls_connection(tcp, acceptor, shared, slot, shutdown)).await,
    }
}

async fn tls_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    slot: Option<super::hub::Slot>,
    shutdown: CancellationToken,
) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Box::pin(serve(stream, shared, slot, shutdown)).await,
        Ok(Err(e)) => tracing::debug!(message = "TLS handshake failed", error = %e),
        Err(_) => tracing::debug!(message = "TLS handshake timed out"),
    }
}
