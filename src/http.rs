//! The HTTP endpoint (`[http] listen`, loopback by default): `/metrics` (Prometheus text),
//! `/healthz` (the process is alive) and `/readyz` (streaming and confirming, with a small JSON
//! body saying why not). Nothing here reads row values or configuration secrets.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;
use tracing::info;

use crate::health::{Health, now_ms};
use crate::metrics::Metrics;

/// What the handlers read.
#[derive(Clone)]
struct State {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds `addr` (an error names it) and serves until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (http.listen): {e}"),
        )
    })?;
    info!(listen = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(State { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn metrics_text(axum::extract::State(s): axum::extract::State<State>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"alive\":true}",
    )
}

async fn readyz(axum::extract::State(s): axum::extract::State<State>) -> impl IntoResponse {
    let (code, body) = match s.health.readiness(now_ms()) {
        Ok(()) => (
            StatusCode::OK,
            serde_json::json!({"ready": true, "reasons": []}),
        ),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "reasons": why}),
        ),
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
