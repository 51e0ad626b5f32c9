//! The HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` (the
//! process answers) and `/readyz` (connected to NATS and every consumer bound,
//! else 503 with a JSON reason).
//!
//! They listen from before the NATS connection, so an orchestrator sees a live
//! but unready process while NATS is unreachable.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use super::Readiness;

#[derive(Clone)]
struct Endpoints {
    handle: PrometheusHandle,
    readiness: Arc<Readiness>,
}

/// Binds `listen` and serves the endpoints until `shutdown`; returns the bound
/// address (the port the system chose when `listen` names port 0).
pub async fn serve(
    listen: SocketAddr,
    handle: PrometheusHandle,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoints { handle, readiness });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(error = %error, "Metrics endpoint stopped");
        }
    });
    Ok(address)
}

async fn metrics_page(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        endpoints.handle.render(),
    )
}

async fn ready(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    match endpoints.readiness.check() {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "ready": true })),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "reason": reason })),
        ),
    }
}
