//! Sessions: one replication connection plus one publishing channel, run together until
//! shutdown or the first failure; then reconnect with capped exponential backoff.
//!
//! A failure on either side ends the whole session. Unconfirmed messages are dropped with it
//! and come back from the slot, which resumes at the last position we confirmed (at-least-once).
//! RabbitMQ is connected first and the replication connection second, and a broker that stops
//! confirming ends the session: while the broker is down walrelay holds no walsender, so a
//! Postgres shutdown or failover never waits for us.

pub mod publish;
pub mod replicate;
pub mod transform;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::checkpoint::AckTracker;
use crate::config::Settings;
use crate::health::Health;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::position_file::PositionFile;
use crate::sink::{Publisher, SinkError};
use crate::source::catalog::Catalog;
use crate::source::stream::ReplicationStream;
use crate::source::{Connection, SourceError, publication, setup};
use publish::PublishLoop;
use replicate::{Replicator, Stop};
use transform::{Transform, TransformSettings};

/// Capacity of the forward channel, in events. Small: the in-flight window is the real buffer.
const FORWARD_CHANNEL_CAPACITY: usize = 1024;

/// Why walrelay stopped (or a session ended).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("the publisher task failed: {0}")]
    Task(String),
}

impl RunError {
    /// The one place that decides: reconnect and resume, or stop and report.
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Source(e) => e.is_transient(),
            RunError::Sink(e) => e.is_transient(),
            RunError::Task(_) => false,
        }
    }

    /// Another process is streaming from the slot (SQLSTATE 55006 on `START_REPLICATION`).
    pub fn is_slot_busy(&self) -> bool {
        matches!(self, RunError::Source(SourceError::Server(e)) if e.code == "55006")
    }

    /// What an operator should check while walrelay retries this error (none: nothing to do
    /// but wait).
    pub fn hint(&self) -> &'static str {
        match self {
            RunError::Source(SourceError::Connect { .. } | SourceError::ConnectTimeout(_)) => {
                "cannot reach PostgreSQL: check postgres.url's host and port, that the server runs and listens there (listen_addresses), and the network between"
            }
            RunError::Source(SourceError::Silent(_)) => {
                "PostgreSQL stopped answering: check the server and the network path to it"
            }
            RunError::Source(SourceError::Server(e)) if e.code.starts_with("57") => {
                "PostgreSQL is shutting down or restarting: walrelay resumes when it is back"
            }
            RunError::Source(SourceError::Server(e)) if e.code.starts_with("53") => {
                "PostgreSQL is out of a resource (connections, memory, disk): check max_connections and the server's log"
            }
            RunError::Source(SourceError::TypesChanged { .. }) => "",
            RunError::Source(_) => "check the PostgreSQL server's log",
            RunError::Sink(SinkError::Unroutable { .. }) => {
                "bind a queue for that routing key (walrelay doctor lists every unbound key); the stream resumes once the message is routable"
            }
            RunError::Sink(SinkError::Nacked { .. }) => {
                "the queue refused the message: check its length limits and overflow policy"
            }
            RunError::Sink(SinkError::ConnectTimeout { .. }) => {
                "cannot reach RabbitMQ: check rabbitmq.url's host and port, that the broker runs, and the network between"
            }
            RunError::Sink(_) => "check RabbitMQ's state and log (alarms, connections)",
            RunError::Task(_) => "",
        }
    }

    /// Which side failed, for metrics and logs.
    pub fn side(&self) -> &'static str {
        match self {
            RunError::Source(_) => "postgres",
            RunError::Sink(_) => "rabbitmq",
            RunError::Task(_) => "walrelay",
        }
    }
}

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
    counted: transform::Counted,
}

/// Runs sessions until `shutdown` becomes true (Ok) or a permanent error (Err).
/// What a session reports to: metrics and health.
#[derive(Clone)]
pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

pub async fn run(
    settings: &Settings,
    obs: Observers,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let mut memory = Memory::default();
    let mut delay = settings.reconnect_min;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        let result = session(settings, &obs, &mut shutdown, &mut memory).await;
        Health::set(&obs.health.streaming, false);
        Health::set(&obs.health.broker_connected, false);
        obs.metrics.streaming.set(0);
        obs.metrics.in_flight.set(0);
        obs.health.set_oldest_unconfirmed(None);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_slot_busy() => {
                // Hot standby: another instance streams from the slot. Its progress is not
                // ours to question, so forget what we had confirmed ourselves.
                memory.known = None;
                if !obs
                    .health
                    .standby
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    info!(slot = %settings.slot, retry_ms = settings.standby_retry.as_millis() as u64,
                          "slot is active in another process: waiting as standby");
                }
                tokio::select! {
                    _ = tokio::time::sleep(settings.standby_retry) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) if e.is_transient() => {
                let code = match &e {
                    RunError::Sink(SinkError::Unroutable { .. }) => crate::health::RETRY_UNROUTABLE,
                    RunError::Sink(SinkError::Nacked { .. }) => crate::health::RETRY_NACKED,
                    RunError::Sink(_) => crate::health::RETRY_BROKER,
                    _ => crate::health::RETRY_POSTGRES,
                };
                obs.health
                    .retrying
                    .store(code, std::sync::atomic::Ordering::Relaxed);
                if let RunError::Source(SourceError::TypesChanged { at, .. }) = &e {
                    // Never backwards: a later session must not forget an older reload.
                    memory.types_reloaded_at = memory.types_reloaded_at.max(Some(*at));
                }
                obs.metrics.error(e.side(), "transient");
                obs.metrics
                    .reconnects
                    .get_or_create(&[("side", e.side())])
                    .inc();
                if started.elapsed() > settings.reconnect_max {
                    delay = settings.reconnect_min;
                }
                warn!(error = %error_chain(&e), side = e.side(), retry_in_ms = delay.as_millis() as u64,
                      hint = e.hint(), "session ended; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
                delay = (delay * 2).min(settings.reconnect_max);
            }
            Err(e) => {
                obs.metrics.error(e.side(), "permanent");
                error!(error = %error_chain(&e), side = e.side(), "stopping: this needs an operator");
                return Err(e);
            }
        }
    }
}

/// Formats an error with its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

async fn session(
    settings: &Settings,
    obs: &Observers,
    shutdown: &mut watch::Receiver<bool>,
    memory: &mut Memory,
) -> Result<(), RunError> {
    let metrics = &obs.metrics;
    // Bounded: a broker that accepts TCP but never finishes the handshake (or a half-open
    // socket) would otherwise hold the session forever, with no retry and no error.
    let publisher =
        tokio::time::timeout(settings.confirm_timeout, Publisher::connect(&settings.sink))
            .await
            .map_err(|_| SinkError::ConnectTimeout {
                waited: settings.confirm_timeout,
            })??;
    // A standby retries every few seconds: say it once, not at every attempt.
    if obs
        .health
        .standby
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        tracing::debug!(exchange = %settings.sink.exchange, "connected to RabbitMQ");
    } else {
        info!(exchange = %settings.sink.exchange, "connected to RabbitMQ");
    }
    Health::set(&obs.health.broker_connected, true);
    let broker_watch = tokio::spawn(watch_broker(publisher.status(), obs.clone()));
    let _stop_watch = AbortOnDrop(broker_watch);
    let mut conn = Connection::connect(&settings.postgres, true).await?;
    let (database, _) = setup::identify_system(&mut conn).await?;
    publication::ensure_publication(&mut conn, &settings.publication, &settings.filter).await?;
    publication::check_rules(
        &mut conn,
        &settings.publication,
        &settings.filter,
        &settings.routing_key,
    )
    .await?;
    // What we know we confirmed: this process's memory, and the position file across restarts.
    let mut position_file = settings.state_file.as_deref().map(PositionFile::new);
    let mut known = memory.known;
    if let Some(f) = position_file.as_mut() {
        let stored = f
            .load()
            .map_err(|e| SourceError::PositionFile(e.to_string()))?;
        known = match (known, stored) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let slot = setup::ensure_slot(
        &mut conn,
        &settings.slot,
        &database,
        known,
        settings.failover_slot,
    )
    .await?;
    let types = setup::load_types(&mut conn).await?;
    let mut status_interval = settings.status_interval;
    if let Some(timeout) = setup::wal_sender_timeout(&mut conn).await? {
        status_interval = status_interval.min(timeout / 3);
    }
    let start = slot.confirmed_flush;
    memory.known = Some(memory.known.map_or(start, |k| k.max(start)));
    // Stream on a fresh connection: the setup queries above fill this backend's catalog caches
    // with today's catalog, and PostgreSQL 18's decoding can then use those entries for older
    // changes (a table altered since showed its new column types while decoding a change made
    // before them: "cache lookup failed for type"; tests/type_changes.rs). A new walsender
    // starts with empty caches.
    drop(conn);
    let catalog = Catalog::connect(&settings.postgres, settings.receive_timeout).await?;
    let conn = Connection::connect(&settings.postgres, true).await?;
    let stream =
        ReplicationStream::start(conn, &settings.slot, start, &settings.publication).await?;
    info!(slot = %settings.slot, start = %start, publication = %settings.publication, "streaming");
    obs.health.retrying.store(
        crate::health::RETRY_NONE,
        std::sync::atomic::Ordering::Relaxed,
    );
    Health::set(&obs.health.standby, false);
    Health::set(&obs.health.streaming, true);
    obs.health.status_sent();
    metrics.streaming.set(1);

    let (tx, rx) = mpsc::channel(FORWARD_CHANNEL_CAPACITY);
    let (acked_tx, acked_rx) = watch::channel(start);
    let publisher_task = tokio::spawn(
        PublishLoop {
            publisher,
            rx,
            acked: acked_tx,
            tracker: AckTracker::new(start),
            max_in_flight: settings.max_in_flight,
            max_message_bytes: settings.sink.max_message_bytes,
            confirm_timeout: settings.confirm_timeout,
            metrics: Arc::clone(metrics),
            health: Arc::clone(&obs.health),
            batch: settings.batch,
        }
        .run(),
    );
    let transform = Transform::new(
        TransformSettings {
            routing: settings.routing_key.clone(),
            publish_messages: settings.publish_messages,
            filter: Arc::new(settings.filter.clone()),
        },
        types,
        memory.types_reloaded_at,
        Arc::clone(metrics),
    )
    .counted(memory.counted);
    let mut replicator = Replicator {
        stream,
        transform,
        catalog,
        metrics: Arc::clone(metrics),
        health: Arc::clone(&obs.health),
        tx,
        acked: acked_rx.clone(),
        status_interval,
        received: start,
        last_idle: start,
        last_heard: tokio::time::Instant::now(),
        receive_timeout: settings.receive_timeout,
        position_file,
        reported: start,
        pending: VecDeque::new(),
    };
    let outcome = replicator.run(shutdown).await;
    memory.counted = memory.counted.max(replicator.transform.seen());
    let remember = |memory: &mut Memory| {
        let acked = *acked_rx.borrow();
        memory.known = Some(memory.known.map_or(acked, |k| k.max(acked)));
    };
    match outcome {
        Ok(Stop::Shutdown) => {
            let Replicator {
                mut stream,
                catalog,
                tx,
                received,
                mut position_file,
                ..
            } = replicator;
            drop(tx);
            let result = drain(
                &mut stream,
                &mut position_file,
                publisher_task,
                &acked_rx,
                received,
                settings,
            )
            .await;
            let flush = *acked_rx.borrow();
            replicate::write_ahead(&mut position_file, flush)?;
            let final_status = stream.send_status(received, flush, false).await;
            stream.close().await;
            catalog.close().await;
            remember(memory);
            info!(confirmed = %flush, "shut down cleanly");
            if let Some(publisher) = result? {
                publisher.close().await;
            }
            final_status?;
            Ok(())
        }
        Ok(Stop::PublisherGone) => {
            // What the broker confirmed before the failure is progress: report it, or a
            // session that always fails at the same message would never move the slot.
            report_final(&mut replicator, &acked_rx).await;
            replicator.stream.close().await;
            remember(memory);
            match publisher_task.await {
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(_)) => Err(RunError::Task("publisher stopped without an error".into())),
                Err(e) => Err(RunError::Task(e.to_string())),
            }
        }
        Err(e) => {
            publisher_task.abort();
            // A permanent error (bad data, a rule that cannot apply) leaves the connection
            // usable: report the confirmed progress before stopping.
            if !e.is_transient() {
                report_final(&mut replicator, &acked_rx).await;
            }
            remember(memory);
            Err(e.into())
        }
    }
}

/// Best effort, bounded: tells the server the broker-confirmed position before the session
/// ends on an error (the connection may already be unusable; then nothing is lost either).
async fn report_final(replicator: &mut Replicator, acked: &watch::Receiver<Lsn>) {
    let flush = *acked.borrow();
    if flush <= replicator.reported {
        return;
    }
    if replicate::write_ahead(&mut replicator.position_file, flush).is_err() {
        return;
    }
    let send = replicator
        .stream
        .send_status(replicator.received, flush, false);
    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), send).await {
        replicator.reported = flush;
    }
}

/// Aborts a helper task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows the broker connection's `blocked` and `connected` state (RabbitMQ's resource
/// alarms block publishing without closing anything), logging each change once.
async fn watch_broker(status: lapin::ConnectionStatus, obs: Observers) {
    let mut blocked = false;
    loop {
        let now = status.blocked();
        if now != blocked {
            blocked = now;
            Health::set(&obs.health.broker_blocked, now);
            obs.metrics.broker_blocked.set(i64::from(now));
            if now {
                warn!("RabbitMQ blocked the connection (memory or disk alarm): publishing waits");
            } else {
                info!("RabbitMQ unblocked the connection");
            }
        }
        Health::set(&obs.health.broker_connected, status.connected());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (bounded) for the publisher to confirm what is in flight, answering the server meanwhile.
async fn drain(
    stream: &mut ReplicationStream,
    position_file: &mut Option<PositionFile>,
    mut publisher_task: tokio::task::JoinHandle<Result<Publisher, SinkError>>,
    acked: &watch::Receiver<Lsn>,
    received: Lsn,
    settings: &Settings,
) -> Result<Option<Publisher>, RunError> {
    let deadline = tokio::time::sleep(settings.shutdown_timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(settings.status_interval.min(Duration::from_secs(1)));
    loop {
        tokio::select! {
            res = &mut publisher_task => return match res {
                Ok(Ok(p)) => Ok(Some(p)),
                Ok(Err(e)) => { warn!(error = %error_chain(&e), "publisher failed while draining"); Ok(None) }
                Err(e) => Err(RunError::Task(e.to_string())),
            },
            _ = &mut deadline => {
                warn!(timeout_ms = settings.shutdown_timeout.as_millis() as u64,
                      "shutdown timeout: unconfirmed messages will be replayed on the next start");
                publisher_task.abort();
                return Ok(None);
            }
            _ = tick.tick() => {
                let flush = *acked.borrow();
                replicate::write_ahead(position_file, flush)?;
                stream.send_status(received, flush, false).await?;
            }
        }
    }
}
