//! The per-process HTTP endpoint: `/healthz` (the process is alive), `/readyz` (connected and
//! assigned; 503 with the failing conditions otherwise) and `/metrics` (Prometheus text).
//! Later roles (the `-t all` ingress) add routes to the same router.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Health;

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
pub async fn serve(
    host: &str,
    port: u16,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind((host, port)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        if let Err(error) = result {
            tracing::error!(message = "http endpoint failed", %error);
        }
    });
    Ok((addr, task))
}
