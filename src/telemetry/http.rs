//! The per-process HTTP endpoint: `/healthz` (the process is alive), `/readyz` (connected and
//! assigned; 503 with the failing conditions otherwise) and `/metrics` (Prometheus text).
//! Later roles (the `-t all` ingress) add routes to the same router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Health;
use crate::config::HttpLimits;

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

pub fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { health, metrics })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let failing = state.health.failing();
    let ready = state.health.is_ready();
    let body = serde_json::json!({
        "ready": ready,
        "failing": failing.into_iter().map(|(k, v)| serde_json::json!({"condition": k, "reason": v})).collect::<Vec<_>>(),
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// Binds `host:port` and serves until `shutdown`. Binding happens before returning, so a port
/// conflict is reported at start, not later in a background task.
///
/// Every connection is bounded (CONTRACT: nothing a client sends can stop a role): at most
/// `limits.max_connections` are open (beyond, the accept loop waits and the kernel's backlog
/// holds the rest, so descriptors stay for the WebSocket listener and the dependencies), a
/// client has `limits.header_timeout` to send each request's headers (which also closes a
/// kept-alive connection idle that long: hyper starts the timer as soon as it waits for a
/// request), and the routes bound the time and concurrency of a request themselves.
pub async fn serve(
    host: &str,
    port: u16,
    router: Router,
    limits: &HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind((host, port)).await?;
    let addr = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let header_timeout = limits.header_timeout;
    let task = tokio::spawn(async move {
        let connections = TaskTracker::new();
        loop {
            let slot = tokio::select! {
                () = shutdown.cancelled() => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    if let Some(suppressed) = super::gate::allow("http_accept") {
                        tracing::warn!(message = "http accept failed", %error, suppressed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(router.clone());
            let token = shutdown.clone();
            connections.spawn(async move {
                let mut builder = http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = token.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
                    }
                }
                drop(slot);
            });
        }
        connections.close();
        let _ = tokio::time::timeout(DRAIN, connections.wait()).await;
    });
    Ok((addr, task))
}

/// How long an open request may finish after shutdown before its connection is dropped.
const DRAIN: Duration = Duration::from_secs(2);
