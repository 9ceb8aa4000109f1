//! The replication task: reads the slot, decodes, builds events and hands them to the
//! publisher over a bounded channel, while keeping the Postgres feedback path alive.
//!
//! Priorities of the loop (`select!` is `biased`, first branch wins):
//! 1. shutdown;
//! 2. the status timer: a standby status update with the latest broker-confirmed LSN. It fires
//!    even while the forward channel is full, so back-pressure never starves the feedback the
//!    server needs within `wal_sender_timeout`;
//! 3. forwarding a pending item when the channel has room (we stop reading the socket while
//!    anything is pending: TCP back-pressure, bounded memory);
//! 4. reading the next message from the server.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::trace;

use super::position::Reporter;
use crate::error::RunError;
use crate::event::Outbound;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::pgoutput::Message;
use crate::shutdown::Shutdown;
use crate::source::SourceError;
use crate::source::catalog::Catalog;
use crate::source::replication::{ReplMessage, ReplicationStream};
use crate::transform::Transform;

/// Buffered messages the loop takes in a row before it looks at shutdown, the status timer
/// and the publisher's end again.
const BUFFERED_RUN: u32 = 64;

/// How the replication loop ended without error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Shutdown,
    /// The publisher dropped its end of the channel (it failed; its error says why).
    PublisherGone,
}

/// The state of one replication session.
pub(crate) struct Replicator {
    pub(super) stream: ReplicationStream,
    /// The pure stage: decoded messages in, outbound items out.
    pub(super) transform: Transform,
    /// A plain SQL connection for what pgoutput does not say about a relation (its partition
    /// root, its key), read each time pgoutput describes one. Relation messages are rare (once
    /// per relation per session, and after DDL), so the lookup's round trips cost nothing.
    pub(super) catalog: Catalog,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<crate::health::Health>,
    pub(super) tx: mpsc::Sender<Outbound>,
    /// Latest broker-confirmed position, written by the publisher (a back edge that never blocks).
    pub(super) acked: watch::Receiver<Lsn>,
    pub(super) status_interval: Duration,
    /// Highest WAL position received, reported as the `write` position.
    pub(super) received: Lsn,
    /// Last idle position forwarded, so repeated keepalives do not flood the channel.
    pub(super) last_idle: Lsn,
    /// Items decoded but not yet accepted by the channel.
    pub(super) pending: VecDeque<Outbound>,
    /// When the server was last heard from while we were reading (reset while we are not
    /// reading, during back-pressure, so a full channel is never mistaken for a dead link).
    pub(super) last_heard: tokio::time::Instant,
    pub(super) receive_timeout: Duration,
    /// Records each position before reporting it (`service.state_file`).
    pub(super) reporter: Reporter,
    /// Backfill chunks from the worker, handed to the transform before their high mark.
    pub(super) chunks: mpsc::Receiver<crate::backfill::Chunk>,
    /// Where published chunks' end positions go back to the worker.
    pub(super) chunk_ends: mpsc::UnboundedSender<(i64, i64, Lsn)>,
    /// The backfill progress table's schema and the slot, where the backfills that floods ask
    /// for are recorded (`flood.then = "backfill"`); `None` when no table asks.
    pub(super) flood_store: Option<(String, String)>,
}

/// The channels a replicator works with.
pub(crate) struct Links {
    /// Decoded items to the publisher.
    pub tx: mpsc::Sender<Outbound>,
    /// The publisher's confirmed position.
    pub acked: watch::Receiver<Lsn>,
    /// Backfill chunks from the worker.
    pub chunks: mpsc::Receiver<crate::backfill::Chunk>,
    /// Published chunks' end positions, back to the worker.
    pub chunk_ends: mpsc::UnboundedSender<(i64, i64, Lsn)>,
}

/// How often the replicator reports, and how long a quiet server may stay quiet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub status_interval: Duration,
    pub receive_timeout: Duration,
}

impl Replicator {
    /// A replicator reading `stream`, which starts where `reporter` last reported.
    pub(crate) fn new(
        stream: ReplicationStream,
        catalog: Catalog,
        transform: Transform,
        reporter: Reporter,
        links: Links,
        obs: &super::Observers,
        timing: Timing,
    ) -> Replicator {
        let start = reporter.reported();
        Replicator {
            stream,
            transform,
            catalog,
            metrics: Arc::clone(&obs.metrics),
            health: Arc::clone(&obs.health),
            tx: links.tx,
            acked: links.acked,
            status_interval: timing.status_interval,
            received: start,
            last_idle: start,
            pending: VecDeque::new(),
            last_heard: tokio::time::Instant::now(),
            receive_timeout: timing.receive_timeout,
            reporter,
            chunks: links.chunks,
            chunk_ends: links.chunk_ends,
            flood_store: None,
        }
    }

    /// Runs until shutdown, publisher failure or an error.
    pub(crate) async fn run(&mut self, shutdown: &Shutdown) -> Result<Stop, RunError> {
        let mut stop = shutdown.waiter();
        let mut status = tokio::time::interval(self.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffered_run = 0;
        loop {
            if shutdown.is_triggered() {
                return Ok(Stop::Shutdown);
            }
            if let Some(front) = self.pending.pop_front() {
                // The usual case: the publisher has room, so hand the item over without
                // arming a select (this runs for every event).
                let front = match self.tx.try_reserve() {
                    Ok(permit) => {
                        permit.send(front);
                        // What `reserve` would do: yield to the publisher now and then, so
                        // a long run of ready items does not wait for a full channel.
                        tokio::task::coop::consume_budget().await;
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => {
                        return Ok(Stop::PublisherGone);
                    }
                    Err(mpsc::error::TrySendError::Full(())) => front,
                };
                // Waiting for room, not reading the socket: silence from the server proves
                // nothing.
                self.last_heard = tokio::time::Instant::now();
                // Decide first, act after: the reserve future borrows the channel.
                enum Next {
                    Shutdown,
                    Status,
                    Sent,
                    Gone,
                }
                let mut item = Some(front);
                let next = tokio::select! {
                    biased;
                    _ = stop.wait() => Next::Shutdown,
                    _ = status.tick() => Next::Status,
                    permit = self.tx.reserve() => match permit {
                        Ok(permit) => {
                            permit.send(item.take().expect("sent once"));
                            Next::Sent
                        }
                        Err(_) => Next::Gone,
                    },
                };
                if let Some(front) = item {
                    self.pending.push_front(front);
                }
                match next {
                    Next::Shutdown | Next::Sent => {}
                    Next::Status => self.send_status(false).await?,
                    Next::Gone => return Ok(Stop::PublisherGone),
                }
            } else {
                // A message already read (the socket delivers many per read): handled without
                // arming a `select!`, which costs more than the message does. Every
                // `BUFFERED_RUN` messages the full select runs anyway, so the status timer
                // fires on time under a backlog that never leaves the buffer empty.
                if buffered_run < BUFFERED_RUN
                    && let Some(msg) = self.stream.buffered()
                {
                    buffered_run += 1;
                    self.handle(msg?).await?;
                    continue;
                }
                buffered_run = 0;
                enum Next {
                    Shutdown,
                    Status,
                    Gone,
                    Message(Result<ReplMessage, SourceError>),
                }
                let next = tokio::select! {
                    biased;
                    _ = stop.wait() => Next::Shutdown,
                    _ = status.tick() => Next::Status,
                    _ = self.tx.closed() => Next::Gone,
                    msg = self.stream.next() => Next::Message(msg),
                };
                match next {
                    Next::Shutdown => {}
                    Next::Status => {
                        let silent = self.last_heard.elapsed();
                        if silent > self.receive_timeout {
                            return Err(SourceError::Silent(silent).into());
                        }
                        // Quiet for a while: ask the server to answer, so a dead link shows.
                        self.send_status(silent > self.status_interval).await?
                    }
                    Next::Gone => return Ok(Stop::PublisherGone),
                    Next::Message(msg) => {
                        // Once per read from the socket: the messages taken from the buffer
                        // after it arrived with it.
                        self.metrics.touch_server();
                        self.last_heard = tokio::time::Instant::now();
                        self.handle(msg?).await?
                    }
                }
            }
        }
    }

    /// Records the backfills a committed flood asks for, before its end position leaves this
    /// task (it is still in `pending`): the slot can never pass the flood while its backfill
    /// is not recorded, and a replay of the flood asks again (recorded once while active).
    async fn record_flood_backfills(
        &mut self,
        floods: Vec<crate::transform::FloodBackfill>,
    ) -> Result<(), RunError> {
        let Some((schema, slot)) = self.flood_store.clone() else {
            return Ok(());
        };
        // The writes hold this task: report the position first.
        self.send_status(false).await?;
        let limit = self.catalog.limit();
        let record = async {
            let conn = self.catalog.connection().await?;
            crate::backfill::store::ensure(conn, &schema).await?;
            for f in &floods {
                crate::backfill::store::request_once(
                    conn,
                    &schema,
                    &slot,
                    &f.table,
                    f.where_clause.as_deref(),
                    "flood",
                )
                .await?;
                // The condition holds key values: the log names only its kind (it is in the
                // bulk event and in `walrelay backfill --status`).
                let scope = if f.where_clause.is_some() {
                    "the key range it changed"
                } else {
                    "the whole table"
                };
                tracing::info!(table = %f.table, scope,
                    "flood committed: backfilling the rows it touched (flood.then = \"backfill\")");
            }
            Ok::<(), SourceError>(())
        };
        tokio::time::timeout(limit, record)
            .await
            .map_err(|_| SourceError::CatalogTimeout(limit))??;
        Ok(())
    }

    /// Sends a status update reporting the broker-confirmed position as flushed.
    pub(crate) async fn send_status(&mut self, reply_requested: bool) -> Result<(), RunError> {
        let flush = *self.acked.borrow();
        trace!(flush = %flush, write = %self.received, "standby status update");
        self.reporter
            .report(&mut self.stream, self.received, flush, reply_requested)
            .await?;
        self.health.status_sent();
        Ok(())
    }

    async fn handle(&mut self, msg: ReplMessage) -> Result<(), RunError> {
        match msg {
            ReplMessage::Keepalive {
                wal_end,
                reply_requested,
            } => {
                self.metrics.server_wal_end.set(wal_end.0);
                if reply_requested {
                    self.send_status(false).await?;
                }
                // Outside a transaction, everything before `wal_end` has been sent to us, so once
                // the events queued before this point are confirmed, the slot may move here. This
                // keeps an idle slot (or one whose tables are quiet) from holding WAL forever.
                if !self.transform.in_transaction()
                    && wal_end > self.last_idle
                    && wal_end > self.received
                {
                    self.last_idle = wal_end;
                    self.pending.push_back(Outbound::Position(wal_end));
                }
            }
            ReplMessage::XLogData {
                wal_start,
                wal_end,
                data,
            } => {
                self.metrics.server_wal_end.set(wal_end.0);
                if wal_start > self.received {
                    self.received = wal_start;
                }
                let msg = Message::parse(&data).map_err(SourceError::from)?;
                if let Message::Relation(r) = &msg {
                    // The lookup holds this task (bounded by receive_timeout): report the
                    // position first, so the server has fresh feedback while it waits.
                    self.send_status(false).await?;
                    let facts = self.catalog.facts(r.oid).await?;
                    self.transform.learn(r.oid, facts);
                }
                if let Message::Commit(c) = &msg
                    && c.end_lsn > self.received
                {
                    self.received = c.end_lsn;
                }
                if let Message::Message(m) = &msg
                    && m.prefix == crate::backfill::PREFIX
                {
                    // The worker sends a chunk before it writes the chunk's high mark, so the
                    // chunk is here by the time the mark is.
                    while let Ok(chunk) = self.chunks.try_recv() {
                        self.transform.offer_chunk(chunk);
                    }
                }
                self.transform
                    .apply(msg, self.received, &mut self.pending)?;
                for end in self.transform.take_chunk_ends() {
                    // The worker may be gone (the session is ending): nothing to tell then.
                    let _ = self.chunk_ends.send(end);
                }
                let floods = self.transform.take_flood_backfills();
                if !floods.is_empty() {
                    self.record_flood_backfills(floods).await?;
                }
            }
        }
        Ok(())
    }
}
