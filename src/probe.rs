//! Periodic SQL on an ordinary (non-replication) connection, next to the stream:
//!
//! - samples the slot's retained WAL (`pg_current_wal_lsn() - restart_lsn`), the figure that
//!   tells whether the disk is filling up;
//! - optionally emits a heartbeat, a transactional `pg_logical_emit_message` with the prefix
//!   [`crate::transform::heartbeat::PREFIX`] and the emit time as content. It writes WAL in walrelay's own
//!   database, so on a database whose published tables are idle (typical on RDS, where other
//!   databases keep writing) the slot keeps advancing; the replication task recognises it,
//!   never publishes it, and reports emit-to-decode time as the freshness metric.
//!
//! Failures here are logged and retried at the next tick: they never stop the stream.
//! It uses walrelay's own client (the same TLS modes and authentication as the replication
//! connection) rather than a second Postgres driver with its own TLS setup.

use std::sync::Arc;
use std::time::Duration;

use crate::shutdown::Shutdown;
use tracing::{debug, warn};

use crate::config::Settings;
use crate::health::now_ms;
use crate::metrics::Metrics;
use crate::source::setup::quote_literal;
use crate::source::{Connection, SourceError};

/// Runs until shutdown.
pub(crate) async fn run(settings: Settings, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let tick = settings
        .service
        .heartbeat_interval
        .map_or(settings.service.probe_interval, |h| {
            h.min(settings.service.probe_interval)
        });
    let mut conn: Option<Connection> = None;
    let mut last_sample = None::<tokio::time::Instant>;
    let mut last_heartbeat = None::<tokio::time::Instant>;
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait() => break,
        }
        let due = |last: Option<tokio::time::Instant>, every: Duration| {
            last.is_none_or(|t| t.elapsed() + Duration::from_millis(5) >= every)
        };
        let sample = due(last_sample, settings.service.probe_interval);
        let beat = settings
            .service
            .heartbeat_interval
            .is_some_and(|every| due(last_heartbeat, every));
        if !sample && !beat {
            continue;
        }
        let result = async {
            if conn.is_none() {
                conn = Some(Connection::connect(&settings.source.conn, false).await?);
            }
            let c = conn.as_mut().expect("just connected");
            if sample {
                last_sample = Some(tokio::time::Instant::now());
                sample_slot(c, &settings.source.slot, &metrics).await?;
            }
            if beat {
                last_heartbeat = Some(tokio::time::Instant::now());
                c.simple_query(&format!(
                    "SELECT pg_logical_emit_message(true, {}, {})",
                    quote_literal(crate::transform::heartbeat::PREFIX),
                    quote_literal(&(now_ms() * 1000).to_string())
                ))
                .await?;
            }
            Ok::<(), SourceError>(())
        }
        .await;
        match result {
            Ok(()) => warned = false,
            Err(e) => {
                conn = None;
                if !warned {
                    warn!(error = %e, "slot sampling / heartbeat query failed; retrying");
                    warned = true;
                } else {
                    debug!(error = %e, "probe failed again");
                }
            }
        }
    }
    if let Some(c) = conn {
        c.close().await;
    }
}

async fn sample_slot(c: &mut Connection, slot: &str, metrics: &Metrics) -> Result<(), SourceError> {
    let rows = c
        .simple_query(&format!(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await?;
    if let Some(v) = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse::<i64>().ok())
    {
        metrics.slot_retained_wal_bytes.set(v);
    }
    Ok(())
}
