//! One session, in three steps: [`prepare`] connects both sides and sets up the publication,
//! the slot and the type catalog; [`launch`] starts streaming and the publisher task; [`finish`]
//! ends the session the way its outcome requires (drain on shutdown, report what the broker
//! confirmed on a failure), reporting every position through the [`Reporter`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::position::Reporter;
use super::publish::PublishLoop;
use super::replicate::{Links, Replicator, Stop, Timing};
use super::{Memory, Observers};
use crate::config::Settings;
use crate::error::{RunError, error_chain};
use crate::lsn::Lsn;
use crate::position_file::PositionFile;
use crate::shutdown::Shutdown;
use crate::sink::{Outlet, Sink, SinkError};
use crate::source::catalog::Catalog;
use crate::source::replication::ReplicationStream;
use crate::source::{Connection, publication, setup};
use crate::transform::{Transform, TransformSettings};
use crate::value::TypeRegistry;

/// Capacity of the forward channel, in events. Small: the in-flight window is the real buffer.
const FORWARD_CHANNEL_CAPACITY: usize = 1024;

/// Runs one session to its end.
pub(super) async fn run(
    settings: &Settings,
    obs: &Observers,
    shutdown: &Shutdown,
    memory: &mut Memory,
) -> Result<(), RunError> {
    let prepared = prepare(settings, obs, memory).await?;
    let mut running = launch(settings, obs, memory, prepared).await?;
    let outcome = running.replicator.run(shutdown).await;
    memory.counted = memory.counted.max(running.replicator.transform.seen());
    finish(settings, memory, running, outcome).await
}

/// The nodes of `rabbitmq.url` as metrics name them.
pub(super) fn node_names(sink: &crate::sink::SinkSettings) -> Vec<String> {
    sink.nodes
        .iter()
        .map(crate::sink::amqp::publisher::node_name)
        .collect()
}

/// Both sides connected and set up; nothing streams yet.
struct Prepared {
    publisher: Outlet,
    broker_watch: AbortOnDrop,
    start: Lsn,
    types: TypeRegistry,
    status_interval: Duration,
    reporter: Reporter,
}

/// A streaming session: the replication task's state and the publisher task.
struct Running {
    replicator: Replicator,
    publisher_task: tokio::task::JoinHandle<Result<Outlet, RunError>>,
    acked: watch::Receiver<Lsn>,
    _broker_watch: AbortOnDrop,
    /// The backfill worker: it ends with the session (its unconfirmed chunk is read again).
    _backfill_worker: AbortOnDrop,
}

async fn prepare(
    settings: &Settings,
    obs: &Observers,
    memory: &mut Memory,
) -> Result<Prepared, RunError> {
    let (source, sink) = (&settings.source, &settings.sink);
    // Bounded: a broker that accepts TCP but never finishes the handshake (or a half-open
    // socket) would otherwise hold the session forever, with no retry and no error.
    let mut publisher = tokio::time::timeout(sink.confirm_timeout, Outlet::connect(sink))
        .await
        .map_err(|_| SinkError::ConnectTimeout {
            waited: sink.confirm_timeout,
        })??;
    // A standby retries every few seconds: say it once, not at every attempt.
    match (obs.is_standby(), publisher.kind()) {
        (true, _) => debug!(destination = %sink.exchange, "connected to RabbitMQ"),
        (false, "stream") => info!(stream = %sink.exchange, "connected to RabbitMQ Streams"),
        (false, _) => info!(exchange = %sink.exchange, "connected to RabbitMQ"),
    }
    crate::health::Health::set(&obs.health.broker_connected, true);
    if publisher.kind() == "exchange" {
        obs.metrics.broker_node(
            &node_names(sink),
            Some(sink.node_in_use.load(std::sync::atomic::Ordering::Relaxed)),
        );
    }
    let broker_watch = AbortOnDrop(tokio::spawn(watch_broker(publisher.state(), obs.clone())));
    let mut conn = Connection::connect(&source.conn, true).await?;
    let system = setup::identify_system(&mut conn).await?;
    let database = system.database.clone();
    publisher.set_origin(
        crate::sink::stream::publishing_id::Origin {
            slot: source.slot.clone(),
            system_id: system.system_id,
            timeline: system.timeline,
            rules: crate::sink::stream::publishing_id::rules_fingerprint(&settings.filter),
        },
        Arc::clone(&obs.metrics),
    );
    publication::ensure_publication(&mut conn, &source.publication, &settings.filter).await?;
    publication::check_rules(
        &mut conn,
        &source.publication,
        &settings.filter,
        &sink.routing_key,
    )
    .await?;
    // What we know we confirmed: this process's memory, and the position file across restarts.
    let mut position_file = settings
        .service
        .state_file
        .as_deref()
        .map(PositionFile::new);
    let mut known = memory.known;
    if let Some(f) = position_file.as_mut() {
        let stored = f
            .load()
            .map_err(|e| RunError::PositionFile(e.to_string()))?;
        known = known.max(stored);
    }
    if !settings.backfill.snapshot.is_empty() {
        super::snapshot::request(&mut conn, settings).await?;
    }
    if source.on_slot_lost == crate::source::OnSlotLost::Resync {
        crate::resync::check_policy(&mut conn, settings).await?;
    }
    // A resync a crash interrupted is finished first; the position the last one accepted is
    // walrelay's own (the state file may be older, e.g. on another machine than the command).
    known = known.max(crate::resync::resume(&mut conn, settings).await?);
    let slot = setup::ensure_slot(
        &mut conn,
        &source.slot,
        &database,
        known,
        source.failover_slot,
    )
    .await?;
    if slot.created && settings.backfill.schema_events {
        // Written into the WAL after the slot's start, so it streams like a change: a
        // `slot_created` control event that survives any crash once the slot exists.
        let content = serde_json::json!({"kind": "slot_created", "slot": source.slot}).to_string();
        conn.simple_query(&format!(
            "SELECT pg_logical_emit_message(true, {}, {})",
            crate::source::setup::quote_literal(crate::backfill::CONTROL_PREFIX),
            crate::source::setup::quote_literal(&content)
        ))
        .await?;
    }
    let types = setup::load_types(&mut conn).await?;
    let mut status_interval = source.status_interval;
    if let Some(timeout) = setup::wal_sender_timeout(&mut conn).await? {
        status_interval = status_interval.min(timeout / 3);
    }
    let start = slot.confirmed_flush;
    memory.confirmed(start);
    Ok(Prepared {
        publisher,
        broker_watch,
        start,
        types,
        status_interval,
        reporter: Reporter::new(position_file, start),
    })
}

async fn launch(
    settings: &Settings,
    obs: &Observers,
    memory: &Memory,
    p: Prepared,
) -> Result<Running, RunError> {
    let (source, sink) = (&settings.source, &settings.sink);
    // Stream on a fresh connection: the setup queries fill a backend's catalog caches with
    // today's catalog, and PostgreSQL 18's decoding can then use those entries for older
    // changes (a table altered since showed its new column types while decoding a change made
    // before them: "cache lookup failed for type"; tests/type_changes.rs). A new walsender
    // starts with empty caches.
    let catalog = Catalog::connect(&source.conn, source.receive_timeout).await?;
    let conn = Connection::connect(&source.conn, true).await?;
    let stream = ReplicationStream::start(conn, &source.slot, p.start, &source.publication).await?;
    info!(slot = %source.slot, start = %p.start, publication = %source.publication, "streaming");
    obs.streaming_started();

    let (tx, rx) = mpsc::channel(FORWARD_CHANNEL_CAPACITY);
    let (acked_tx, acked) = watch::channel(p.start);
    let session = session_token();
    let (chunks_tx, chunks) = mpsc::channel(1);
    let (chunk_ends, ends) = mpsc::unbounded_channel();
    let backfill_worker = AbortOnDrop(tokio::spawn(
        crate::backfill::worker::Worker {
            conn: crate::source::ConnParams {
                // Told apart from the catalog connection in pg_stat_activity.
                application_name: format!("{} backfill", source.conn.application_name),
                ..source.conn.clone()
            },
            slot: source.slot.clone(),
            publication: source.publication.clone(),
            settings: settings.backfill.clone(),
            session: session.clone(),
            chunks: chunks_tx,
            ends,
            acked: acked.clone(),
            metrics: Arc::clone(&obs.metrics),
        }
        .run(),
    ));
    let publisher_task =
        tokio::spawn(PublishLoop::new(p.publisher, rx, acked_tx, p.start, sink, obs).run());
    let transform = Transform::new(
        TransformSettings {
            routing: sink.routing_key.clone(),
            publish_messages: sink.publish_messages,
            filter: Arc::new(settings.filter.clone()),
            session,
            control_prefix: (settings.backfill.control_events || settings.backfill.schema_events)
                .then(|| settings.backfill.control_prefix.clone()),
            backfill_events: settings.backfill.control_events,
            schema_events: settings.backfill.schema_events,
        },
        p.types,
        memory.types_reloaded_at,
        Arc::clone(&obs.metrics),
    )
    .counted(memory.counted);
    let links = Links {
        tx,
        acked: acked.clone(),
        chunks,
        chunk_ends,
    };
    let timing = Timing {
        status_interval: p.status_interval,
        receive_timeout: source.receive_timeout,
    };
    let mut replicator =
        Replicator::new(stream, catalog, transform, p.reporter, links, obs, timing);
    let f = &settings.filter;
    if f.flood.then_backfill || f.rules.iter().any(|r| r.flood_then == Some(true)) {
        replicator.flood_store = Some((settings.backfill.schema.clone(), source.slot.clone()));
    }
    Ok(Running {
        replicator,
        publisher_task,
        acked,
        _broker_watch: p.broker_watch,
        _backfill_worker: backfill_worker,
    })
}

async fn finish(
    settings: &Settings,
    memory: &mut Memory,
    running: Running,
    outcome: Result<Stop, RunError>,
) -> Result<(), RunError> {
    let Running {
        mut replicator,
        publisher_task,
        acked,
        ..
    } = running;
    let result = match outcome {
        Ok(Stop::Shutdown) => {
            let Replicator {
                mut stream,
                catalog,
                tx,
                received,
                mut reporter,
                ..
            } = replicator;
            drop(tx);
            let drained = drain(
                &mut stream,
                &mut reporter,
                publisher_task,
                &acked,
                received,
                settings.service.shutdown_timeout,
                settings.source.status_interval,
            )
            .await;
            let flush = *acked.borrow();
            let final_status = reporter.report(&mut stream, received, flush, false).await;
            stream.close().await;
            catalog.close().await;
            memory.confirmed(flush);
            info!(confirmed = %flush, "shut down cleanly");
            if let Some(publisher) = drained? {
                publisher.close().await;
            }
            return final_status;
        }
        Ok(Stop::PublisherGone) => {
            // What the broker confirmed before the failure is progress: report it, or a
            // session that always fails at the same message would never move the slot.
            report_final(&mut replicator, &acked).await;
            replicator.stream.close().await;
            match publisher_task.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(RunError::Task("publisher stopped without an error".into())),
                Err(e) => Err(RunError::Task(e.to_string())),
            }
        }
        Err(e) => {
            publisher_task.abort();
            // A permanent error (bad data, a rule that cannot apply) leaves the connection
            // usable: report the confirmed progress before stopping.
            if !e.is_transient() {
                report_final(&mut replicator, &acked).await;
            }
            Err(e)
        }
    };
    memory.confirmed(*acked.borrow());
    result
}

/// Best effort, bounded: tells the server the broker-confirmed position before the session
/// ends on an error (the connection may already be unusable; then nothing is lost either).
async fn report_final(replicator: &mut Replicator, acked: &watch::Receiver<Lsn>) {
    let flush = *acked.borrow();
    if flush <= replicator.reporter.reported() {
        return;
    }
    let report =
        replicator
            .reporter
            .report(&mut replicator.stream, replicator.received, flush, false);
    let _ = tokio::time::timeout(Duration::from_secs(2), report).await;
}

/// A token unique to this session, written into its backfill watermarks.
fn session_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        crate::health::now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Aborts a helper task when the session ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows the broker connection's `blocked` and `open` state (RabbitMQ's resource alarms
/// block publishing without closing anything), logging each change once. A closed or lost
/// connection also ends the session through the publisher's signals; this only reports it.
async fn watch_broker(mut state: watch::Receiver<crate::sink::BrokerState>, obs: Observers) {
    let mut blocked = false;
    loop {
        let now = *state.borrow_and_update();
        if now.blocked != blocked {
            blocked = now.blocked;
            obs.broker_blocked(blocked);
            if blocked {
                warn!("RabbitMQ blocked the connection (memory or disk alarm): publishing waits");
            } else {
                info!("RabbitMQ unblocked the connection");
            }
        }
        crate::health::Health::set(&obs.health.broker_connected, now.open);
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Waits (bounded by `timeout`) for the publisher to confirm what is in flight, reporting the
/// confirmed position to the server meanwhile (at least every second), so it never takes the
/// quiet for a dead client. `None` when the time ran out (what is unconfirmed comes back from
/// the slot on the next start) or the publisher failed.
pub(super) async fn drain<S: Sink>(
    stream: &mut ReplicationStream,
    reporter: &mut Reporter,
    mut publisher_task: tokio::task::JoinHandle<Result<S, RunError>>,
    acked: &watch::Receiver<Lsn>,
    received: Lsn,
    timeout: Duration,
    status_interval: Duration,
) -> Result<Option<S>, RunError> {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(status_interval.min(Duration::from_secs(1)));
    loop {
        tokio::select! {
            res = &mut publisher_task => return match res {
                Ok(Ok(p)) => Ok(Some(p)),
                Ok(Err(e)) => { warn!(error = %error_chain(&e), "publisher failed while draining"); Ok(None) }
                Err(e) => Err(RunError::Task(e.to_string())),
            },
            _ = &mut deadline => {
                warn!(timeout_ms = timeout.as_millis() as u64,
                      "shutdown timeout: unconfirmed messages will be replayed on the next start");
                publisher_task.abort();
                return Ok(None);
            }
            _ = tick.tick() => {
                let flush = *acked.borrow();
                reporter.report(stream, received, flush, false).await?;
            }
        }
    }
}
