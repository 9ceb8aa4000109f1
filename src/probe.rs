//! Periodic SQL on an ordinary (non-replication) connection, next to the stream:
//!
//! - samples the slot's retained WAL (`pg_current_wal_lsn() - restart_lsn`), the figure that
//!   tells whether the disk is filling up, and its WAL budget: `safe_wal_size`, the WAL that may
//!   still be written before `max_slot_wal_keep_size` invalidates the slot, with the WAL rate
//!   that turns it into the length of an outage the slot survives; a warning when less than a
//!   fifth of the budget is left, said once until it recovers;
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
use tracing::{debug, info, warn};

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
    let mut budget = Budget::default();
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
                sample_slot(c, &settings.source.slot, &metrics, &mut budget).await?;
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

/// What the probe keeps between samples of the WAL budget.
#[derive(Default)]
struct Budget {
    /// The last sample of the server's WAL position, and when it was taken.
    last: Option<(tokio::time::Instant, i64)>,
    /// WAL written per second, smoothed over samples.
    rate: Option<f64>,
    /// The low-budget warning is out (said again only after the budget recovered).
    low: bool,
}

impl Budget {
    fn rate(&mut self, now: tokio::time::Instant, lsn: i64) -> Option<f64> {
        if let Some((then, before)) = self.last {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 && lsn >= before {
                let r = (lsn - before) as f64 / secs;
                self.rate = Some(self.rate.map_or(r, |old| 0.7 * old + 0.3 * r));
            }
        }
        self.last = Some((now, lsn));
        self.rate
    }
}

async fn sample_slot(
    c: &mut Connection,
    slot: &str,
    metrics: &Metrics,
    budget: &mut Budget,
) -> Result<(), SourceError> {
    let rows = c
        .simple_query(&format!(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, safe_wal_size, \
               (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, \
               pg_size_bytes(current_setting('max_slot_wal_keep_size')) \
             FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ))
        .await?;
    let Some(row) = rows.first() else {
        return Ok(());
    };
    let int = |i: usize| {
        row.get(i)
            .cloned()
            .flatten()
            .and_then(|v| v.parse::<i64>().ok())
    };
    if let Some(v) = int(0) {
        metrics.slot_retained_wal_bytes.set(v);
    }
    let rate = int(2).and_then(|lsn| budget.rate(tokio::time::Instant::now(), lsn));
    // Absent, not zero, when there is no limit: zero would read as "about to be lost".
    let label = [("slot", slot.to_owned())];
    match int(3).filter(|&keep| keep >= 0) {
        Some(keep) => {
            metrics
                .slot_wal_keep_size_bytes
                .get_or_create(&label)
                .set(keep);
        }
        None => {
            metrics.slot_wal_keep_size_bytes.remove(&label);
        }
    }
    let (Some(safe), Some(keep)) = (int(1), int(3).filter(|&keep| keep > 0)) else {
        metrics.slot_safe_wal_bytes.remove(&label);
        return Ok(());
    };
    metrics.slot_safe_wal_bytes.get_or_create(&label).set(safe);
    if low(safe, keep) && !budget.low {
        budget.low = true;
        warn!(
            slot,
            safe_wal_bytes = safe,
            max_slot_wal_keep_size_bytes = keep,
            "the slot's WAL budget is low: {}; past it PostgreSQL invalidates the slot and changes are lost. Bring walrelay's stream up (the log and /readyz say what holds it) or raise max_slot_wal_keep_size",
            survives(safe, rate)
        );
    } else if safe >= keep / 4 && budget.low {
        budget.low = false;
        info!(
            slot,
            safe_wal_bytes = safe,
            "the slot's WAL budget recovered"
        );
    }
    Ok(())
}

/// The slot's WAL budget read once, for `doctor` and `status`: `(safe_wal_size,
/// max_slot_wal_keep_size, WAL bytes per second)`, or `None` when the slot does not exist or
/// the server sets no limit. The rate is the higher of one second's WAL and the average since
/// the statistics were reset (`pg_stat_wal`): a quiet second must not promise a long outage.
pub(crate) async fn budget(
    c: &mut Connection,
    slot: &str,
) -> Result<Option<(i64, i64, Option<f64>)>, SourceError> {
    let query = format!(
        "SELECT s.safe_wal_size, pg_size_bytes(current_setting('max_slot_wal_keep_size')), \
           (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8, \
           (SELECT wal_bytes::float8 / greatest(extract(epoch FROM now() - stats_reset), 1) FROM pg_stat_wal) \
         FROM pg_replication_slots s WHERE s.slot_name = {}",
        quote_literal(slot)
    );
    let read = |rows: Vec<Vec<Option<String>>>| {
        let row = rows.into_iter().next()?;
        let f = |i: usize| row.get(i).cloned().flatten()?.parse::<f64>().ok();
        Some((f(0), f(1)?, f(2)?, f(3)))
    };
    let Some((Some(safe), keep, before, average)) = read(c.simple_query(&query).await?) else {
        return Ok(None);
    };
    if keep <= 0.0 {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = read(c.simple_query(&query).await?).map(|(_, _, lsn, _)| lsn);
    let second = now.map(|lsn| (lsn - before).max(0.0) / started.elapsed().as_secs_f64());
    let rate = match (second, average) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Ok(Some((safe as i64, keep as i64, rate)))
}

/// Under a fifth of the limit left: the log, `status` and `doctor` say the budget is low.
pub(crate) fn low(safe: i64, keep: i64) -> bool {
    safe < keep / 5
}

/// How long an outage a slot with `safe` bytes of WAL budget survives at `rate` bytes of WAL
/// per second: `None` when nothing is written (it survives as long as that lasts).
pub(crate) fn outage(safe: i64, rate: f64) -> Option<Duration> {
    (rate >= 1.0).then(|| Duration::from_secs_f64(safe.max(0) as f64 / rate))
}

/// "an outage of about 2h 10m at 1.3 MB/s of WAL": the budget in words.
pub(crate) fn survives(safe: i64, rate: Option<f64>) -> String {
    let mb = safe.max(0) as f64 / 1e6;
    match rate.and_then(|r| outage(safe, r).map(|d| (r, d))) {
        Some((r, d)) => format!(
            "{mb:.0} MB of WAL left, an outage of about {} at the current {:.2} MB/s of WAL",
            human(d),
            r / 1e6
        ),
        None => format!("{mb:.0} MB of WAL left (no WAL rate measured yet)"),
    }
}

/// A duration as an operator reads it: `3d 4h`, `2h 10m`, `5m 3s`, `40s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match () {
        _ if days > 0 => format!("{days}d {hours}h"),
        _ if hours > 0 => format!("{hours}h {mins}m"),
        _ if mins > 0 => format!("{mins}m {secs}s"),
        _ => format!("{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_in_words() {
        assert_eq!(outage(1_000, 0.0), None);
        assert_eq!(
            outage(10_000_000, 1_000.0),
            Some(Duration::from_secs(10_000))
        );
        assert_eq!(human(Duration::from_secs(10_000)), "2h 46m");
        assert_eq!(human(Duration::from_secs(200_000)), "2d 7h");
        assert_eq!(human(Duration::from_secs(303)), "5m 3s");
        assert_eq!(human(Duration::from_secs(40)), "40s");
        assert_eq!(
            survives(64_000_000, Some(1_000_000.0)),
            "64 MB of WAL left, an outage of about 1m 4s at the current 1.00 MB/s of WAL"
        );
        assert!(survives(64_000_000, None).contains("no WAL rate"));
    }

    #[test]
    fn the_rate_is_smoothed_over_samples() {
        let mut b = Budget::default();
        let t = tokio::time::Instant::now();
        assert_eq!(b.rate(t, 0), None, "one sample is no rate");
        assert_eq!(b.rate(t + Duration::from_secs(10), 10_000), Some(1_000.0));
        let r = b.rate(t + Duration::from_secs(20), 30_000).unwrap();
        assert!((r - 1_300.0).abs() < 1e-6, "{r}");
    }
}
