//! `walrelay run` as a library call: the pipeline, the HTTP endpoint, the SQL probe and the
//! periodic progress line, until shutdown or a permanent error. `commands::run` sets up the
//! signals and calls [`run`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{error, info};

use crate::config::Settings;
use crate::health::Health;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::pipeline::{self, Observers, RunError};
use crate::shutdown::Shutdown;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error("HTTP endpoint failed: {0}")]
    Http(#[source] std::io::Error),
    /// A local precondition failed before anything was created (`preflight`).
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Runs until `shutdown` is triggered (Ok) or a permanent error. A failed HTTP endpoint
/// triggers it too: the process stops as a whole.
pub(crate) async fn run(settings: Settings, shutdown: Shutdown) -> Result<(), ServiceError> {
    info!(version = env!("CARGO_PKG_VERSION"), slot = %settings.source.slot, "walrelay starting");
    // Everything that depends only on this machine first: a taken port or an unreadable file
    // must stop walrelay before it creates a slot that would retain WAL with nobody reading.
    let listener = crate::preflight::check(&settings).await?;
    let metrics = Arc::new(Metrics::for_heartbeats(
        settings.service.heartbeat_interval.is_some(),
    ));
    let health = Arc::new(Health::new(
        settings.source.status_interval,
        settings.sink.confirm_timeout,
    ));
    let (http_err_tx, mut http_err_rx) = tokio::sync::mpsc::channel::<std::io::Error>(1);
    if let Some(listener) = listener {
        let listener = crate::http::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&health),
            shutdown.clone(),
        );
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                error!(error = %e, "HTTP endpoint failed; stopping");
                let _ = http_err_tx.try_send(e);
                stop.trigger();
            }
        });
    }
    tokio::spawn(crate::probe::run(
        settings.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    if let Some(every) = settings.service.progress_interval {
        tokio::spawn(progress(every, Arc::clone(&metrics), shutdown.clone()));
    }
    let obs = Observers { metrics, health };
    let result = pipeline::run(&settings, obs, shutdown).await;
    if let Ok(e) = http_err_rx.try_recv() {
        return Err(ServiceError::Http(e));
    }
    Ok(result?)
}

/// Logs one line every `every` while streaming, so an operator reading the log sees walrelay
/// working: events confirmed and transactions received since the last line, lag, position.
async fn progress(every: std::time::Duration, m: Arc<Metrics>, stop: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let (mut events, mut txs) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait() => return,
        }
        let (e, t) = (
            m.progress_events.load(Ordering::Relaxed),
            m.progress_transactions.load(Ordering::Relaxed),
        );
        info!(
            events = e - events,
            transactions = t - txs,
            lag_bytes = m.lag_bytes.get(),
            confirmed_lsn = %Lsn(m.confirmed_lsn.get()),
            streaming = m.streaming.get() == 1,
            interval_ms = every.as_millis() as u64,
            "progress"
        );
        (events, txs) = (e, t);
    }
}
