//! The HTTP endpoint (`[http] listen`, loopback by default): `/metrics` (Prometheus text),
//! `/healthz` (the process is alive), `/readyz` (healthy in its role: streaming and confirming,
//! or a hot standby waiting for the slot) and `/activez` (the active instance only), with a
//! small JSON body saying why not. Nothing here reads row values or configuration secrets.

use std::sync::Arc;

use crate::shutdown::Shutdown;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tracing::info;

use crate::health::{Health, now_ms};
use crate::metrics::Metrics;

/// What the handlers read.
#[derive(Clone)]
struct State {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves on `listener` (bound by `preflight::check` before anything else happens) until
/// `shutdown` turns true.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    info!(listen = %listener.local_addr()?, "serving /metrics, /healthz, /readyz and /activez");
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/activez", get(activez))
        .with_state(State { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.wait().await;
        })
        .await
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the Prometheus text format
/// (curl, `promtool check metrics`, older scrapers).
async fn metrics_text(
    axum::extract::State(s): axum::extract::State<State>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.metrics.render(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            s.metrics.render_text(),
        )
    }
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"alive\":true}",
    )
}

async fn readyz(axum::extract::State(s): axum::extract::State<State>) -> impl IntoResponse {
    let (code, body) = match s.health.readiness(now_ms()) {
        Ok(role) => (
            StatusCode::OK,
            serde_json::json!({"ready": true, "role": role.as_str(), "reasons": []}),
        ),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "role": "active", "reasons": why}),
        ),
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// 200 only on the instance that holds the slot and streams: the role signal, for alerts and
/// for routing to the active instance.
async fn activez(axum::extract::State(s): axum::extract::State<State>) -> impl IntoResponse {
    let (code, body) = match s.health.activity(now_ms()) {
        Ok(()) => (
            StatusCode::OK,
            serde_json::json!({"active": true, "reasons": []}),
        ),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"active": false, "reasons": why}),
        ),
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// A blocking `GET` of an `http://host:port/path` URL: (status code, body). Used by
/// `walrelay ready` (the container HEALTHCHECK), which must not need curl in the image.
pub(crate) fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not an http:// URL: {url}"),
        )
    };
    let u = url::Url::parse(url).map_err(|_| bad())?;
    if u.scheme() != "http" {
        return Err(bad());
    }
    let host = u.host_str().ok_or_else(bad)?;
    let port = u.port().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
        .next()
        .ok_or_else(bad)?;
    let timeout = std::time::Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {} HTTP/1.0\r\nHost: {host}\r\n\r\n", u.path())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
