//! Sessions: one replication connection plus one publishing channel, run together until
//! shutdown or the first failure; then reconnect with capped exponential backoff.
//!
//! A failure on either side ends the whole session. Unconfirmed messages are dropped with it
//! and come back from the slot, which resumes at the last position we confirmed (at-least-once).
//! RabbitMQ is connected first and the replication connection second, and a broker that stops
//! confirming ends the session: while the broker is down walrelay holds no walsender, so a
//! Postgres shutdown or failover never waits for us.

pub(crate) mod position;
pub(crate) mod publish;
pub(crate) mod replicate;
#[cfg(test)]
mod replicate_tests;
mod session;
mod snapshot;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::shutdown::Shutdown;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::Settings;
pub(crate) use crate::error::RunError;
use crate::error::{Decision, error_chain};
use crate::health::Health;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::sink::SinkError;
use crate::sink::amqp::routable;
use crate::source::{OnSlotLost, SourceError};

/// State kept across sessions.
#[derive(Debug, Default)]
struct Memory {
    /// The highest position this process confirmed: a slot that vanishes or moves past it
    /// means changes were skipped, which is reported rather than ignored.
    known: Option<Lsn>,
    /// The commit position of the last transaction whose types were found changed. The
    /// session that reads the catalog again and still finds a mismatch at or before it is
    /// looking at values older than the catalog: it sends them as text rather than retry.
    types_reloaded_at: Option<Lsn>,
    /// How far sessions have counted the filter and flood metrics: the next session replays
    /// what was not confirmed, and counts it only once.
    counted: crate::transform::Counted,
}

impl Memory {
    fn confirmed(&mut self, lsn: Lsn) {
        self.known = Some(self.known.map_or(lsn, |k| k.max(lsn)));
    }
}

/// What a session reports to: metrics and health, always updated together.
#[derive(Clone)]
pub(crate) struct Observers {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Observers {
    /// Streaming started: ready again, no longer a standby or retrying.
    fn streaming_started(&self) {
        self.health
            .retrying
            .store(crate::health::RETRY_NONE, Ordering::Relaxed);
        Health::set(&self.health.standby, false);
        Health::set(&self.health.streaming, true);
        self.health.status_sent();
        self.metrics.streaming.set(1);
    }

    /// A session ended, however it ended: nothing streams and nothing is in flight.
    fn session_ended(&self) {
        Health::set(&self.health.streaming, false);
        Health::set(&self.health.broker_connected, false);
        self.metrics.streaming.set(0);
        self.metrics.in_flight.set(0);
        self.health.set_oldest_unconfirmed(None);
    }

    /// The broker blocked or unblocked the connection (a resource alarm).
    fn broker_blocked(&self, blocked: bool) {
        Health::set(&self.health.broker_blocked, blocked);
        self.metrics.broker_blocked.set(i64::from(blocked));
    }

    /// A session ended on `e`, which walrelay retries; `kind` labels the error metric.
    fn retrying(&self, e: &RunError, kind: &'static str) {
        self.health
            .retrying
            .store(e.retrying_code(), Ordering::Relaxed);
        let side = e.side().label();
        self.metrics.error(side, kind);
        self.metrics
            .reconnects
            .get_or_create(&[("side", side)])
            .inc();
    }

    /// True the first time this process becomes a standby (said once, not every retry).
    fn became_standby(&self) -> bool {
        !self.health.standby.swap(true, Ordering::Relaxed)
    }

    fn is_standby(&self) -> bool {
        self.health.standby.load(Ordering::Relaxed)
    }
}

/// `postgres.on_slot_lost = "resync"`: the stream broke on `e`; record the gap, repair the
/// slot, announce it and backfill, then go on. Said at error level: changes were lost from
/// the stream and consumers are being brought back by backfill.
async fn resync(
    settings: &Settings,
    obs: &Observers,
    memory: &mut Memory,
    e: &RunError,
) -> Result<(), RunError> {
    error!(error = %error_chain(e), policy = "resync",
           "the stream broke: recording the gap, repairing the slot and backfilling the tables");
    let ask = crate::resync::Ask {
        known: memory.known,
        gap_seen: matches!(e, RunError::Source(SourceError::PublicationGap { .. })),
        ..Default::default()
    };
    match crate::resync::resync(settings, &ask).await? {
        crate::resync::Outcome::Done { gap, .. } => {
            obs.metrics.heal.resynced(gap.cause.label());
            if let Some(to) = gap.to {
                memory.confirmed(to);
            }
            error!(resync = gap.id, cause = gap.cause.label(), from = ?gap.from, to = ?gap.to,
                   tables = gap.tables.len(),
                   "resynced: stream_gap announced, the tables are backfilled beside the stream");
            Ok(())
        }
        // The catalog shows nothing to repair: the error stands.
        _ => Err(match e {
            RunError::Source(SourceError::SlotLost {
                slot,
                problem,
                broken,
            }) => SourceError::SlotLost {
                slot: slot.clone(),
                problem: problem.clone(),
                broken: *broken,
            }
            .into(),
            other => SourceError::Setup(format!(
                "resync found nothing to repair after: {}",
                error_chain(other)
            ))
            .into(),
        }),
    }
}

/// Runs sessions until `shutdown` becomes true (Ok) or a permanent error (Err).
pub(crate) async fn run(
    settings: &Settings,
    obs: Observers,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let mut memory = Memory::default();
    let service = &settings.service;
    let mut delay = service.reconnect_min;
    loop {
        if shutdown.is_triggered() {
            return Ok(());
        }
        let started = Instant::now();
        let result = session::run(settings, &obs, &shutdown, &mut memory).await;
        obs.session_ended();
        if settings.sink.stream.is_none() {
            obs.metrics
                .broker_node(&session::node_names(&settings.sink), None);
        }
        let Err(e) = result else {
            return Ok(());
        };
        if settings.source.on_slot_lost == OnSlotLost::Resync && crate::resync::repairs(&e) {
            match resync(settings, &obs, &mut memory, &e).await {
                Ok(()) => {
                    delay = service.reconnect_min;
                    continue;
                }
                // Could not finish now (PostgreSQL went away): the record is resumed by the
                // next session, which the normal retry starts.
                Err(re) if re.decision() == Decision::Reconnect => {
                    obs.retrying(&re, "transient");
                    warn!(error = %error_chain(&re), retry_in_ms = delay.as_millis() as u64,
                          "resync interrupted; the next session finishes it");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait() => {}
                    }
                    delay = (delay * 2).min(service.reconnect_max);
                    continue;
                }
                Err(re) => {
                    obs.metrics.error(re.side().label(), "permanent");
                    error!(error = %error_chain(&re), cause = %error_chain(&e),
                           "stopping: the stream broke and the resync could not repair it");
                    return Err(re);
                }
            }
        }
        let wait = match e.decision() {
            Decision::StandBy => {
                // Hot standby: another instance streams from the slot. Its progress is not
                // ours to question, so forget what we had confirmed ourselves.
                memory.known = None;
                if obs.became_standby() {
                    info!(slot = %settings.source.slot, retry_ms = service.standby_retry.as_millis() as u64,
                          "slot is active in another process: waiting as standby");
                }
                service.standby_retry
            }
            Decision::Reconnect => {
                obs.retrying(&e, "transient");
                if let RunError::Source(SourceError::TypesChanged { at, .. }) = &e {
                    // Never backwards: a later session must not forget an older reload.
                    memory.types_reloaded_at = memory.types_reloaded_at.max(Some(*at));
                }
                if started.elapsed() > service.reconnect_max {
                    delay = service.reconnect_min;
                }
                warn!(error = %error_chain(&e), side = e.side().label(), retry_in_ms = delay.as_millis() as u64,
                      hint = e.hint(), "session ended; retrying");
                let wait = delay;
                delay = (delay * 2).min(service.reconnect_max);
                wait
            }
            Decision::Blocked => {
                // Refused, not broken: said at error level every time, since nothing moves
                // until an operator acts; tried again at the longest backoff, so the stream
                // resumes on its own once they have.
                obs.retrying(&e, "refused");
                error!(error = %error_chain(&e), side = e.side().label(),
                       retry_in_ms = service.reconnect_max.as_millis() as u64,
                       fix = e.hint(), "PostgreSQL refused walrelay's role: retrying until an operator fixes it");
                delay = service.reconnect_min;
                service.reconnect_max
            }
            Decision::Stop => {
                obs.metrics.error(e.side().label(), "permanent");
                error!(error = %error_chain(&e), side = e.side().label(), hint = e.hint(),
                       "stopping: this needs an operator");
                return Err(e);
            }
        };
        match &e {
            // A binding added by the operator is used at once, not at the next retry.
            RunError::Sink(SinkError::Unroutable {
                exchange,
                routing_key,
                ..
            }) => {
                let api = settings.sink.management_api();
                let waited = routable::wait(
                    api.as_ref(),
                    &settings.sink.url.vhost,
                    exchange,
                    routing_key,
                    wait,
                    &shutdown,
                )
                .await;
                if waited == routable::Waited::Bound {
                    info!(exchange = %exchange, "a binding for the unroutable message appeared: publishing again");
                }
            }
            _ => {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => {}
                }
            }
        }
    }
}
